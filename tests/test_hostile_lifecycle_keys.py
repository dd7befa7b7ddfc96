"""Hostile inputs and broken backends for model lifecycle, API keys and the usage ledger."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.auth.keys import ApiKey
from sidecar.errors import InvalidRequest
from sidecar.routing.lifecycle.process import ModelProcess
from sidecar.typedefs import KEYS

from .conftest import assert_no_address, eventually
from .test_lifecycle import (
    ADMIN,
    alive,
    chat,
    config,
    models_gateway,
    process_backend,
    server_cmd,
    state_of,
)
from .test_lifecycle_remote import admin_gateway, remote_backend

__all__ = ["admin_gateway", "models_gateway"]

pytestmark = pytest.mark.timeout(120)
wait_for = functools.partial(eventually, attempts=600, poll_s=0.05)
CHAT_BODY = {"model": "mock-llama", "messages": [{"role": "user", "content": "hi"}]}


async def test_a_request_arriving_while_an_unload_drains_is_served_by_the_next_load(
    models_gateway: Any,
) -> None:
    slow_stream = {"chunk_delay_ms": 150, "chunks": 8}
    gateway = await models_gateway(
        config(process_backend("a", "model-a", queue="{max: 8, timeout_s: 20}", server=slow_stream))
    )
    loaded = await gateway.post("/v1/gateway/models/model-a/load", headers=ADMIN)
    assert loaded.status == 200
    stream = await gateway.post(
        "/v1/chat/completions", json=chat("model-a", stream=True), headers=ADMIN
    )
    assert (await stream.content.readline()).startswith(b"data: ")
    unloading = await gateway.post(
        "/v1/gateway/models/model-a/unload", json={"wait": False}, headers=ADMIN
    )
    assert unloading.status == 202

    async def draining() -> bool:
        return (await state_of(gateway, "a"))["state"] == "draining"

    await wait_for(draining, "model-a to drain")
    later = asyncio.create_task(
        gateway.post("/v1/chat/completions", json=chat("model-a"), headers=ADMIN)
    )

    async def waits() -> bool:
        return (await state_of(gateway, "a"))["waiting"] == 1

    await wait_for(waits, "the later request to wait for the next load")
    assert (await stream.read()).rstrip().endswith(b"data: [DONE]")
    response = await later
    assert response.status == 200, await response.text()
    assert (await state_of(gateway, "a"))["loads"] == 2


def garbage_router(listing: str) -> web.Application:
    """A llama-server router whose load hook says yes and whose model list is ``listing``."""

    async def models(request: web.Request) -> web.Response:
        return web.Response(text=listing, content_type="application/json")

    async def act(request: web.Request) -> web.Response:
        return web.json_response({"success": True})

    app = web.Application()
    app.router.add_get("/models", models)
    app.router.add_post("/models/load", act)
    app.router.add_post("/models/unload", act)
    return app


@pytest.mark.parametrize(
    "listing", ["[1, 2]", '{"data": 5}', '"loaded"', "[" * 100_000, '{"data": {"m": 1}}']
)
async def test_a_router_listing_garbage_fails_the_admin_load_cleanly(
    admin_gateway: Any, start_mock: Any, listing: str
) -> None:
    server = await start_mock(garbage_router(listing))
    gateway = await admin_gateway(remote_backend("router", server, "llama-server", "m"))
    for action in ("load", "unload"):
        response = await gateway.post(f"/v1/gateway/models/m/{action}", headers=ADMIN)
        text = await response.text()
        assert response.status in (502, 503), text
        error = json.loads(text)["error"]
        assert error["type"] == "api_error" and "Traceback" not in error["message"], text
        assert_no_address(text, server)
    listed = await gateway.get("/v1/gateway/models", headers=ADMIN)
    assert listed.status == 200
    row = (await listed.json())["data"][0]
    assert row["state"] == "failed" and "cannot read its state" in row["error"]


# A model server that ignores SIGTERM (a slow or stuck shutdown): only SIGKILL stops it.
STUBBORN = """
import http.server, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Ready).serve_forever()
"""


async def test_stopping_the_gateway_during_an_unload_still_kills_the_model_process(
    models_gateway: Any,
) -> None:
    stubborn = [sys.executable, "-c", STUBBORN, "{port}"]
    text = config(process_backend("a", "model-a", stop_timeout_s=3)).replace(
        json.dumps(server_cmd("model-a")), json.dumps(stubborn)
    )
    gateway = await models_gateway(text)
    loaded = await gateway.post("/v1/gateway/models/model-a/load", headers=ADMIN)
    assert loaded.status == 200, await loaded.text()
    pid = (await loaded.json())["pid"]
    try:
        unloading = await gateway.post(
            "/v1/gateway/models/model-a/unload", json={"wait": False}, headers=ADMIN
        )
        assert unloading.status == 202

        async def stopping() -> bool:
            return (await state_of(gateway, "a"))["pid"] is None

        await wait_for(stopping, "the unload to send SIGTERM")
        assert alive(pid)  # it ignores SIGTERM: its 3 s grace runs
        await gateway.close()  # shutdown: every model process is stopped
        assert not alive(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


# -- API keys ---------------------------------------------------------------------------


async def test_a_model_name_cannot_make_a_key_glob_backtrack_for_minutes(
    gateway: TestClient,
) -> None:
    # A glob with several stars and a name of many of the text between them: a plain
    # regex tries every split of the name (here tens of seconds of a blocked event loop).
    _, secret = await gateway.server.app[KEYS].create("globbed", {"models": ["*-*-*-*-*-x"]})
    started = time.monotonic()
    response = await gateway.post(
        "/v1/chat/completions",
        json={**CHAT_BODY, "model": "-" * 200},
        headers={"Authorization": f"Bearer {secret}"},
    )
    elapsed = time.monotonic() - started
    assert response.status == 403, await response.text()
    assert (await response.json())["error"]["code"] == "model_not_allowed"
    assert elapsed < 5, elapsed
    # The glob still means what it says: stars within one path segment, never across.
    assert ApiKey("k", models=("*-*-*-*-*-x",)).allows_model("a-b-c-d-e-x")
    assert ApiKey("k", models=("*-*-*-*-*-x",)).allows_model("-----x")
    assert not ApiKey("k", models=("*-*-*-*-*-x",)).allows_model("a-b-c-d-e/x")
    assert not ApiKey("k", models=("llama*",)).allows_model("llama-box/other")


@pytest.mark.parametrize("path", ["/images/0123456789abcdef.png", "/music/0123456789abcdef.wav"])
async def test_a_non_ascii_link_signature_is_a_403_not_a_500(
    gateway: TestClient, path: str
) -> None:
    response = await gateway.get(f"{path}?expires=99999999999&signature=%C3%A9t%C3%A9")
    text = await response.text()
    assert response.status == 403, text
    assert json.loads(text)["error"]["code"] == "invalid_signature"


async def raw_get(gateway: TestClient, path: str, header: bytes) -> tuple[int, bytes]:
    """``GET path`` with ``header`` sent as raw bytes (no client would encode them so)."""
    reader, writer = await asyncio.open_connection(gateway.server.host, gateway.server.port)
    try:
        writer.write(
            b"GET "
            + path.encode()
            + b" HTTP/1.1\r\nHost: gateway\r\n"
            + header
            + b"\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize(
    "header",
    [
        b"Authorization: Bearer \xff\xfe\xfd",
        b"Authorization: Bearer gw_\xed\xa0\x80",
        b"x-api-key: \xff\xfe",
    ],
)
async def test_a_token_that_is_not_utf8_is_a_401_not_a_500(
    gateway: TestClient, header: bytes
) -> None:
    anthropic = header.startswith(b"x-api-key")
    path = "/v1/messages/count_tokens" if anthropic else "/v1/models"
    status, body = await raw_get(gateway, path, header)
    assert status == 401, body
    answer = json.loads(body)
    if anthropic:  # the face's own error shape
        assert answer["type"] == "error", answer
    assert answer["error"]["type"] == "authentication_error", answer


@pytest.mark.parametrize("name", ["alice\n", "alice\nforged log line", "", "a" * 65, "al ice"])
async def test_a_key_name_outside_its_alphabet_is_refused(gateway: TestClient, name: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await gateway.server.app[KEYS].create(name, {})
    assert refused.value.param == "name"
    assert name not in [key.name for key in await gateway.server.app[KEYS].store.list_keys()]


async def test_a_spawn_that_raises_is_a_failed_start_not_a_hang_or_a_spin(
    models_gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever the spawn raises that is not an OSError (an event loop's own check of the
    # argv or environment, a bug) is a failed start: backoff, not a reload every turn.
    async def broken(*args: Any) -> None:
        raise RuntimeError("the spawn broke")

    monkeypatch.setattr(ModelProcess, "start", broken)
    gateway = await models_gateway(
        config(process_backend("a", "model-a", queue="{max: 8, timeout_s: 30}"))
    )
    started = time.monotonic()
    response = await gateway.post("/v1/chat/completions", json=chat("model-a"), headers=ADMIN)
    body = await response.json()
    assert response.status == 503, body
    assert body["error"]["code"] == "model_loading"
    assert "the spawn broke" not in body["error"]["message"]
    assert time.monotonic() - started < 15  # told now, not at the end of its 30 s budget
    row = await state_of(gateway, "a")
    assert row["state"] == "failed", row
    assert row["error"] == "failed to start: cannot start its command: RuntimeError", row
    metrics = await (await gateway.get("/metrics", headers=ADMIN)).text()
    # One try, then the backoff: not a new spawn every turn of the event loop.
    assert 'gateway_model_loads_total{backend="a",result="failed"} 1.0' in metrics
