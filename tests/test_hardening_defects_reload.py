"""The open ``/readyz`` after a refused reload: "config error" and a count, nothing else.

Attack: an admin's broken edit names private paths, a secret-looking value and key
paths; an unauthenticated LAN client reads ``/readyz`` (and tries ``/v1/gateway/status``).
The number that proves it held: the issue count the open route shows equals the issues
behind the token, while not one of the leaked strings appears in the open answer.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sidecar.typedefs import RELOADER

from .conftest import TOKEN, gateway_yaml, mock_backend_yaml, rewrite

AUTH = {"Authorization": f"Bearer {TOKEN}"}
POLL_S = 0.05
ATTEMPTS = 600  # bounded: at most ATTEMPTS x POLL_S seconds, never a pass/fail on time

SECRET_HOST = "hunter2-db.internal"
PRIVATE_CERT = "/etc/gateway/private/client-secret.pem"


def broken_yaml(backend: Any) -> str:
    """Three problems, each of whose messages names something private."""
    return gateway_yaml(
        mock_backend_yaml("mock", backend, tls=f"{{client_cert: {PRIVATE_CERT}}}"),
        aliases=f"""
            default: {{backend: {SECRET_HOST}, model: mock-llama}}
            other: {{backend: mock, model: mock-llama, password: sk-live-0123456789}}
        """,
    )


async def test_open_readyz_counts_the_issues_and_leaks_no_path_or_text(
    make_gateway: Any, start_mock: Any, tmp_path: Path
) -> None:
    backend = await start_mock()
    config = tmp_path / "gateway.yaml"
    gateway = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend)), config_poll_s=POLL_S
    )
    rewrite(config, broken_yaml(backend))

    reloader = gateway.server.app[RELOADER]
    for _ in range(ATTEMPTS):
        if reloader.reloads_refused:
            break
        await asyncio.sleep(POLL_S)
    assert reloader.reloads_refused == 1

    async with gateway.get("/readyz") as response:
        assert response.status == 200
        open_text = await response.text()
        ready = await response.json()
    async with gateway.get("/v1/gateway/status") as response:
        assert response.status == 401
        unauthenticated = await response.text()
    async with gateway.get("/v1/gateway/status", headers=AUTH) as response:
        assert response.status == 200
        status = (await response.json())["config"]

    # Behind the token: the full text, three issues.
    secret_bits = [
        str(tmp_path),
        "gateway.yaml",
        SECRET_HOST,
        PRIVATE_CERT,
        "client-secret",
        "aliases.default.backend",
        "backends.mock.tls.client_cert",
        "aliases.other.password",
    ]
    for bit in secret_bits:
        assert bit in status["last_reload_error"], bit
    assert status["last_reload"]["issues"] == 3
    assert status["reloads_refused"] == 1

    # Open: degraded, "config error", the same count, and none of the above.
    assert ready["status"] == "degraded"
    assert ready["config"]["last_reload"] == {
        "ok": False,
        "at": ready["config"]["last_reload"]["at"],
        "reason": "file changed",
        "error": "config error",
        "issues": 3,
    }
    never = [*secret_bits, "sk-live-0123456789"]
    leaked = [bit for bit in never if bit in open_text or bit in unauthenticated]
    assert leaked == []
    assert "/" not in open_text.replace("file changed", "")  # not even a path separator

    # The good file brings it back: ready, no error, zero issues.
    rewrite(config, gateway_yaml(mock_backend_yaml("mock", backend)) + "# fixed\n")
    for _ in range(ATTEMPTS):
        if reloader.last.ok:
            break
        await asyncio.sleep(POLL_S)
    async with gateway.get("/readyz") as response:
        last = (await response.json())["config"]["last_reload"]
    assert (last["ok"], last["error"], last["issues"]) == (True, None, 0)
