"""Live reload of ``gateway.yaml``: bad edits are refused, good ones swap in without a hiccup."""

from __future__ import annotations

import asyncio
import functools
import signal
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.mock_backends.openai_server import RECEIVED
from sidecar.typedefs import REGISTRY, RELOADER

from .conftest import (
    TOKEN,
    clean_env,
    gateway_yaml,
    mock_backend_yaml,
    openai_client,
    rewrite,
    status_of,
)
from .conftest import eventually as wait_until_true

ROOT = Path(__file__).resolve().parents[1]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
POLL_S = 0.05
ATTEMPTS = 200  # bounded waits: at most ATTEMPTS x POLL_S seconds, never a pass/fail on time
WAIT_S = 30.0


eventually = functools.partial(wait_until_true, attempts=ATTEMPTS, poll_s=POLL_S)


@dataclass
class Reply:
    status: int
    backend: str | None
    body: dict[str, Any]


async def chat(client: TestClient, model: str, text: str = "hi") -> Reply:
    async with client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": text}]},
        headers=AUTH,
    ) as response:
        return Reply(response.status, response.headers.get("X-Backend-Used"), await response.json())


async def readyz(client: TestClient) -> dict[str, Any]:
    async with client.get("/readyz") as response:
        assert response.status == 200
        return await response.json()


async def admission(client: TestClient, backend: str) -> dict[str, int]:
    """The chat admission numbers of ``backend`` from ``/v1/gateway/status``."""
    stats = await status_of(client, backend, "chat")
    return {key: stats[key] for key in ("limit", "in_flight", "queued", "admitted", "rejected")}


async def model_owners(client: TestClient) -> dict[str, str]:
    async with client.get("/v1/models", headers=AUTH) as response:
        assert response.status == 200
        return {entry["id"]: entry["owned_by"] for entry in (await response.json())["data"]}


class GatedBackend:
    """A fake backend whose chat replies wait until the test opens ``gate``.

    Each request's model is put on ``arrivals`` as soon as the backend has it, so a test
    knows exactly how many requests are in flight.
    """

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.gate = asyncio.Event()
        self.arrivals: asyncio.Queue[str] = asyncio.Queue()
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self._chat)

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        await self.arrivals.put(body["model"])
        await self.gate.wait()
        return web.json_response(
            {
                "id": "chatcmpl-" + "0" * 24,
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.reply},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    async def arrived(self) -> str:
        return await asyncio.wait_for(self.arrivals.get(), WAIT_S)


def gated_yaml(name: str, server: Any, **fields: Any) -> str:
    fields.setdefault("models", "[slow-model]")
    fields.setdefault("health", "{readiness: false}")
    return mock_backend_yaml(name, server, **fields)


# -- a broken edit is refused, the fix is picked up -------------------------------------------


async def test_broken_edit_keeps_serving_then_fix_is_picked_up(
    make_gateway: Any, start_mock: Any, tmp_path: Path
) -> None:
    first, second = await start_mock(), await start_mock()
    config = tmp_path / "gateway.yaml"
    gateway = await make_gateway(
        gateway_yaml(
            mock_backend_yaml("first", first),
            aliases="default: {backend: first, model: mock-llama}",
        ),
        config_poll_s=POLL_S,
    )
    assert (await readyz(gateway))["status"] == "ready"

    broken = gateway_yaml(
        mock_backend_yaml("first", first),
        aliases="default: {backend: second, model: mock-llama}",
    )
    rewrite(config, broken)

    async def degraded() -> bool:
        return (await readyz(gateway))["status"] == "degraded"

    await eventually(degraded, "the broken edit to be refused")
    last_reload = (await readyz(gateway))["config"]["last_reload"]
    assert last_reload["ok"] is False
    # The open /readyz names and counts the refusal; the text stays behind the token.
    assert (last_reload["error"], last_reload["issues"]) == ("config error", 1)

    async with openai_client(gateway) as client:
        reply = await client.chat.completions.with_raw_response.create(
            model="default", messages=[{"role": "user", "content": "still there?"}]
        )
    assert reply.status_code == 200
    assert reply.headers["X-Backend-Used"] == "first"
    assert reply.parse().choices[0].message.content == "Mock reply to: still there?"

    async with gateway.get("/v1/gateway/status", headers=AUTH) as response:
        status = await response.json()
    assert status["config"]["reloads_refused"] == 1
    assert "aliases.default.backend" in status["config"]["last_reload_error"]

    fixed = gateway_yaml(
        mock_backend_yaml("first", first),
        mock_backend_yaml("second", second),
        aliases="""
            default: {backend: second, model: mock-llama}
            extra: {backend: first, model: mock-llama}
        """,
    )
    rewrite(config, fixed)

    async def alias_moved() -> bool:
        return (await model_owners(gateway)).get("default") == "second"

    await eventually(alias_moved, "the fixed config to be loaded")
    ready = await readyz(gateway)
    assert ready["status"] == "ready"
    assert ready["config"]["last_reload"]["ok"] is True
    assert ready["config"]["last_reload"]["error"] is None

    moved = await chat(gateway, "default", "where now?")
    assert (moved.status, moved.backend) == (200, "second")
    assert second.app[RECEIVED][-1].body["messages"][0]["content"] == "where now?"
    extra = await chat(gateway, "extra")
    assert (extra.status, extra.backend) == (200, "first")


async def test_edit_with_an_unknown_yaml_tag_is_refused_and_the_fix_still_loads(
    make_gateway: Any, start_mock: Any, tmp_path: Path
) -> None:
    """A reload that cannot even build the YAML must not stop the watcher."""
    backend = await start_mock()
    config = tmp_path / "gateway.yaml"
    gateway = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend)), config_poll_s=POLL_S
    )
    rewrite(config, "version: 1\nbackends:\n  mock:\n    url: !secret backend_url\n")

    async def degraded() -> bool:
        return (await readyz(gateway))["status"] == "degraded"

    await eventually(degraded, "the edit with an unknown tag to be refused")
    async with gateway.get("/v1/gateway/status", headers=AUTH) as response:
        assert "backends.mock.url" in (await response.json())["config"]["last_reload_error"]

    rewrite(
        config,
        gateway_yaml(
            mock_backend_yaml("mock", backend),
            aliases="default: {backend: mock, model: mock-llama}",
        ),
    )

    async def alias_routes() -> bool:
        return (await chat(gateway, "default")).status == 200

    await eventually(alias_routes, "the fixed config to be loaded")
    ready = await readyz(gateway)
    assert (ready["status"], ready["config"]["last_reload"]["ok"]) == ("ready", True)


async def test_readyz_never_pairs_the_new_config_with_the_old_outcome(
    make_gateway: Any, start_mock: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Swapping a config in and recording that the reload worked happen in one step: no
    request can see the new config served while ``/readyz`` still says "degraded" from the
    refused edit before it. The gateway's state is noted at every hop to a thread (the
    awaits a reload makes), where a request could slip in between."""
    backend = await start_mock()
    config = tmp_path / "gateway.yaml"
    gateway = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend)), config_poll_s=POLL_S
    )
    app = gateway.server.app
    seen: list[tuple[str, bool]] = []
    to_thread = asyncio.to_thread

    async def noting(func: Any, /, *args: Any, **kwargs: Any) -> Any:
        seen.append((app[REGISTRY].current.config.digest, app[RELOADER].last.ok))
        return await to_thread(func, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", noting)
    rewrite(config, "version: 1\nbackends: {}\naliases: {default: {backend: nowhere}}\n")

    async def refused() -> bool:
        return (await readyz(gateway))["config"]["last_reload"]["ok"] is False

    await eventually(refused, "the broken edit to be refused")
    old_digest = app[REGISTRY].current.config.digest
    rewrite(
        config,
        gateway_yaml(
            mock_backend_yaml("mock", backend),
            aliases="default: {backend: mock, model: mock-llama}",
        ),
    )

    async def reloaded() -> bool:
        return (await readyz(gateway))["config"]["last_reload"]["ok"] is True

    await eventually(reloaded, "the fixed config to be loaded")
    new_digest = app[REGISTRY].current.config.digest
    assert new_digest != old_digest
    assert any(digest == old_digest for digest, _ in seen)  # the hops were seen
    assert (new_digest, False) not in seen


# -- requests in flight survive a reload ------------------------------------------------------


async def test_request_in_flight_survives_removal_of_its_backend(
    make_gateway: Any, start_mock: Any, tmp_path: Path
) -> None:
    slow = GatedBackend("from the slow backend")
    slow_server = await start_mock(slow.app)
    fresh = await start_mock()
    config = tmp_path / "gateway.yaml"
    gateway = await make_gateway(
        gateway_yaml(
            gated_yaml("slow", slow_server),
            aliases="default: {backend: slow, model: slow-model}",
        ),
        config_poll_s=POLL_S,
    )
    in_flight = asyncio.create_task(chat(gateway, "default"))
    try:
        assert await slow.arrived() == "slow-model"
        rewrite(
            config,
            gateway_yaml(
                mock_backend_yaml("fresh", fresh),
                aliases="default: {backend: fresh, model: mock-llama}",
            ),
        )

        async def swapped() -> bool:
            return (await model_owners(gateway)).get("default") == "fresh"

        await eventually(swapped, "the reload that removes the slow backend")
        new = await chat(gateway, "default", "after the swap")
        assert (new.status, new.backend) == (200, "fresh")
        assert new.body["choices"][0]["message"]["content"] == "Mock reply to: after the swap"
        assert not in_flight.done()
        # The removed backend's session stays open for the request still using it.
        (retired,) = gateway.server.app[REGISTRY].retired
        assert not retired.closed
    finally:
        slow.gate.set()
    old = await in_flight
    assert (old.status, old.backend) == (200, "slow")
    assert old.body["choices"][0]["message"]["content"] == "from the slow backend"

    async def retired_session_closed() -> bool:
        return retired.closed

    await eventually(retired_session_closed, "the removed backend's session to close")
    async with gateway.get("/v1/gateway/status", headers=AUTH) as response:
        backends = (await response.json())["backends"]
    assert [backend["name"] for backend in backends] == ["fresh"]


async def test_request_in_flight_survives_a_new_url_for_its_backend(
    make_gateway: Any, start_mock: Any, tmp_path: Path
) -> None:
    old_host = GatedBackend("from the old host")
    old_server = await start_mock(old_host.app)
    new_server = await start_mock()
    config = tmp_path / "gateway.yaml"
    gateway = await make_gateway(
        gateway_yaml(gated_yaml("llm", old_server, models="[mock-llama]")),
        config_poll_s=POLL_S,
    )
    in_flight = asyncio.create_task(chat(gateway, "mock-llama"))
    try:
        await old_host.arrived()
        rewrite(config, gateway_yaml(mock_backend_yaml("llm", new_server, limits="{chat: 5}")))

        async def swapped() -> bool:
            return (await status_of(gateway, "llm", "chat"))["limit"] == 5

        await eventually(swapped, "the reload that moves the backend")
        # The same backend's admission counter still holds the request in flight.
        assert (await status_of(gateway, "llm", "chat"))["in_flight"] == 1
        new = await chat(gateway, "mock-llama", "to the new host")
        assert (new.status, new.backend) == (200, "llm")
        assert new.body["choices"][0]["message"]["content"] == "Mock reply to: to the new host"
        assert not in_flight.done()
    finally:
        old_host.gate.set()
    old = await in_flight
    assert (old.status, old.backend) == (200, "llm")
    assert old.body["choices"][0]["message"]["content"] == "from the old host"
    numbers = await admission(gateway, "llm")
    assert (numbers["in_flight"], numbers["admitted"]) == (0, 2)


# -- limits --------------------------------------------------------------------------------


async def test_reloaded_limits_apply_and_admission_counts_stay_right(
    make_gateway: Any, start_mock: Any, tmp_path: Path
) -> None:
    backend = GatedBackend("done")
    server = await start_mock(backend.app)
    config = tmp_path / "gateway.yaml"
    gateway = await make_gateway(
        gateway_yaml(gated_yaml("gpu", server, limits="{chat: 1}")), config_poll_s=POLL_S
    )
    tasks: list[asyncio.Task[Reply]] = []
    try:
        tasks.append(asyncio.create_task(chat(gateway, "slow-model")))
        await backend.arrived()
        refused = await chat(gateway, "slow-model")
        assert refused.status == 429
        assert refused.body["error"]["code"] == "backend_overloaded"

        rewrite(config, gateway_yaml(gated_yaml("gpu", server, limits="{chat: 2}")))

        async def raised() -> bool:
            return (await status_of(gateway, "gpu", "chat"))["limit"] == 2

        await eventually(raised, "the raised limit to be loaded")
        assert await admission(gateway, "gpu") == {
            "limit": 2,
            "in_flight": 1,
            "queued": 0,
            "admitted": 1,
            "rejected": 1,
        }

        tasks.append(asyncio.create_task(chat(gateway, "slow-model")))
        await backend.arrived()
        assert (await chat(gateway, "slow-model")).status == 429
        assert await admission(gateway, "gpu") == {
            "limit": 2,
            "in_flight": 2,
            "queued": 0,
            "admitted": 2,
            "rejected": 2,
        }

        # Lowered below what is running: running requests keep their slots, new ones are refused.
        rewrite(config, gateway_yaml(gated_yaml("gpu", server, limits="{chat: 1}")))

        async def lowered() -> bool:
            return (await status_of(gateway, "gpu", "chat"))["limit"] == 1

        await eventually(lowered, "the lowered limit to be loaded")
        assert (await status_of(gateway, "gpu", "chat"))["in_flight"] == 2
        assert (await chat(gateway, "slow-model")).status == 429
    finally:
        backend.gate.set()
    replies = await asyncio.gather(*tasks)
    assert [reply.status for reply in replies] == [200, 200]
    assert await admission(gateway, "gpu") == {
        "limit": 1,
        "in_flight": 0,
        "queued": 0,
        "admitted": 2,
        "rejected": 3,
    }
    assert (await chat(gateway, "slow-model")).status == 200


async def test_raised_limit_admits_a_queued_request(
    make_gateway: Any, start_mock: Any, tmp_path: Path
) -> None:
    backend = GatedBackend("done")
    server = await start_mock(backend.app)
    config = tmp_path / "gateway.yaml"
    queue = "{max: 4, timeout_s: 60}"
    gateway = await make_gateway(
        gateway_yaml(gated_yaml("gpu", server, limits="{chat: 1}", queue=queue)),
        config_poll_s=POLL_S,
    )
    tasks: list[asyncio.Task[Reply]] = []
    try:
        tasks.append(asyncio.create_task(chat(gateway, "slow-model")))
        await backend.arrived()
        tasks.append(asyncio.create_task(chat(gateway, "slow-model")))

        async def queued() -> bool:
            return (await status_of(gateway, "gpu", "chat"))["queued"] == 1

        await eventually(queued, "the second request to queue")
        rewrite(config, gateway_yaml(gated_yaml("gpu", server, limits="{chat: 2}", queue=queue)))
        # The queued request reaches the backend while the first one still holds its slot.
        await backend.arrived()
        numbers = await admission(gateway, "gpu")
        assert (numbers["limit"], numbers["in_flight"], numbers["queued"]) == (2, 2, 0)
    finally:
        backend.gate.set()
    assert [reply.status for reply in await asyncio.gather(*tasks)] == [200, 200]
    assert (await status_of(gateway, "gpu", "chat"))["in_flight"] == 0


# -- the real process: unix socket, SIGHUP, SIGTERM --------------------------------------------


def serve_env(tmp_path: Path, config: Path, socket_path: Path) -> dict[str, str]:
    return clean_env(
        GATEWAY_SOCKET=str(socket_path),
        GATEWAY_CONFIG=str(config),
        GATEWAY_CONFIG_POLL_S="0",
        GATEWAY_BEARER_TOKEN=TOKEN,
        GATEWAY_DATA_DIR=str(tmp_path / "var"),
    )


async def serve(env: dict[str, str], stdout: Any, stderr: Any) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", "serve", cwd=ROOT, env=env, stdout=stdout, stderr=stderr
    )


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
        await process.wait()


async def test_serve_on_a_unix_socket_reloads_on_sighup(start_mock: Any, tmp_path: Path) -> None:
    backend = await start_mock()
    config = tmp_path / "gateway.yaml"
    config.write_text(gateway_yaml(mock_backend_yaml("mock", backend)))
    socket_path = tmp_path / "run" / "gw.sock"
    env = serve_env(tmp_path, config, socket_path)
    log_path = tmp_path / "serve.log"

    def log() -> str:
        return log_path.read_text(errors="replace")

    with log_path.open("wb") as log_file:
        process = await serve(env, asyncio.subprocess.DEVNULL, log_file)
        try:
            connector = aiohttp.UnixConnector(path=str(socket_path))
            async with aiohttp.ClientSession(connector=connector) as session:

                async def chat_status(model: str) -> int:
                    async with session.post(
                        "http://gateway/v1/chat/completions",
                        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                        headers=AUTH,
                    ) as response:
                        await response.read()
                        return response.status

                async def healthy() -> bool:
                    assert process.returncode is None, log()
                    try:
                        async with session.get("http://gateway/healthz") as response:
                            return response.status == 200
                    except (aiohttp.ClientConnectionError, FileNotFoundError):
                        return False

                await eventually(healthy, "the gateway to listen on its socket")
                assert stat.S_IMODE(socket_path.stat().st_mode) == 0o660
                assert await chat_status("mock-llama") == 200
                assert await chat_status("fast") == 404

                rewrite(
                    config,
                    gateway_yaml(
                        mock_backend_yaml("mock", backend),
                        aliases="fast: {backend: mock, model: mock-llama}",
                    ),
                )
                process.send_signal(signal.SIGHUP)

                async def alias_works() -> bool:
                    return await chat_status("fast") == 200

                await eventually(alias_works, "the SIGHUP reload to add the alias")
                assert backend.app[RECEIVED][-1].body["model"] == "mock-llama"

                # A second gateway must not take over the live socket.
                second = await serve(env, asyncio.subprocess.PIPE, asyncio.subprocess.PIPE)
                try:
                    _, second_err = await asyncio.wait_for(second.communicate(), WAIT_S)
                finally:
                    await stop(second)
                assert second.returncode != 0
                assert b"already listening" in second_err
                assert await healthy()

            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), WAIT_S) == 0, log()
        finally:
            await stop(process)
    assert "Traceback" not in log()
