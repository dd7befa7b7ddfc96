"""A stream starts in the read callback that completes the backend's response head.

On a 200 event stream the client's response is prepared and its first events relayed
from that callback, before the handler's task runs again (in a burst, the loop's queue
holds every other request's work of that turn). These tests hold the handler's task
right after the head and show the first event reaching the client anyway, then the
stream finishing as before; and a prepare that waits (an ``on_response_prepare``
handler that awaits) finishing in a task the handler waits for.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.app import create_app
from sidecar.routing.upstream import UpstreamCall
from sidecar.settings import UsageSettings

from .conftest import (
    CHAT,
    CHAT_PATH,
    MODEL,
    assert_slots_free,
    chunk,
    eventually,
    fake_gateway,
    gateway_yaml,
    make_settings,
    mock_backend_yaml,
    sse,
    usage_rows_for,
)

BOUND_S = 20.0  # a bound on waiting for a condition, never a pause


def held_backend(more: asyncio.Event) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Sends the first chunk with its head, the rest once ``more`` is set."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(sse(chunk("first ")))
        await more.wait()
        await response.write(sse(chunk("second")))
        await response.write(b"data: [DONE]\n\n")
        return response

    return handler


def park_after_head(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold every handler at the first thing its task does after the head (the status
    check) until ``held`` is set; ``parked`` is set when one gets there."""
    held = asyncio.Event()
    parked = asyncio.Event()
    check_status = UpstreamCall.raise_for_status

    async def hold(self: UpstreamCall) -> None:
        parked.set()
        await held.wait()
        await check_status(self)

    monkeypatch.setattr(UpstreamCall, "raise_for_status", hold)
    return held, parked


def events(raw: bytes) -> list[str]:
    return [
        line[len("data: ") :]
        for frame in raw.decode().split("\n\n")
        for line in frame.splitlines()
        if line.startswith("data: ")
    ]


async def test_the_first_event_reaches_the_client_while_the_handler_waits(
    make_gateway: Any,
    start_mock: Any,
    auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held, parked = park_after_head(monkeypatch)
    more = asyncio.Event()
    gateway, _ = await fake_gateway(make_gateway, start_mock, held_backend(more))
    try:
        async with asyncio.timeout(BOUND_S):
            response = await gateway.post(CHAT_PATH, json={**CHAT, "stream": True}, headers=auth)
            assert response.status == 200
            assert response.headers["X-Backend-Used"] == "fake"
            first = await response.content.readuntil(b"\n\n")
        assert parked.is_set()  # the handler is held right after the head
        assert events(first) == [json.dumps(chunk("first "))]
    finally:
        held.set()
        more.set()
    async with asyncio.timeout(BOUND_S):
        rest = await response.read()
    assert events(rest) == [json.dumps(chunk("second")), "[DONE]"]
    await assert_slots_free(gateway, admitted=1)


async def test_a_prepare_that_waits_is_finished_in_a_task(
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    start_mock: Any,
    tmp_path: Path,
    auth: dict[str, str],
) -> None:
    more = asyncio.Event()
    more.set()
    backend = web.Application()
    backend.router.add_post("/v1/chat/completions", held_backend(more))
    server = await start_mock(backend)
    config = tmp_path / "gateway.yaml"
    config.write_text(
        gateway_yaml(
            mock_backend_yaml("fake", server, models=f"[{MODEL}]", health="{readiness: false}")
        )
    )
    app = create_app(make_settings(config, tmp_path / "var"))
    began_in: list[asyncio.Task[Any] | None] = []

    async def waits(request: web.Request, response: web.StreamResponse) -> None:
        if request.path != CHAT_PATH:
            return
        began_in.append(asyncio.current_task())
        await asyncio.sleep(0)  # a real wait: prepare cannot finish in one step
        response.headers["X-Prepared-After-A-Wait"] = "yes"

    app.on_response_prepare.append(waits)
    gateway = await aiohttp_client(app)
    async with asyncio.timeout(BOUND_S):
        response = await gateway.post(CHAT_PATH, json={**CHAT, "stream": True}, headers=auth)
        body = await response.read()
    assert response.status == 200
    assert response.headers["X-Prepared-After-A-Wait"] == "yes"
    assert began_in == [None]  # begun once, in the head's read callback (no task)
    assert events(body) == [json.dumps(chunk("first ")), json.dumps(chunk("second")), "[DONE]"]
    await assert_slots_free(gateway, admitted=1)


async def test_an_error_status_is_left_to_the_handler(
    make_gateway: Any,
    start_mock: Any,
    auth: dict[str, str],
) -> None:
    async def refuses(request: web.Request) -> web.Response:
        body = {"error": {"message": "no", "type": "invalid_request_error"}}
        # A stream's type with an error's status: not started early, relayed as an error.
        return web.Response(
            body=json.dumps(body).encode(),
            status=400,
            headers={"Content-Type": "text/event-stream"},
        )

    gateway, _ = await fake_gateway(make_gateway, start_mock, refuses)
    async with asyncio.timeout(BOUND_S):
        response = await gateway.post(CHAT_PATH, json={**CHAT, "stream": True}, headers=auth)
        body = await response.json()
    assert response.status == 400
    assert body["error"]["type"] == "invalid_request_error"
    await assert_slots_free(gateway, admitted=1)


async def test_a_handler_cancelled_after_the_head_counts_what_was_sent(
    make_gateway: Any,
    start_mock: Any,
    auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The client goes away while its handler waits right after the head: aiohttp
    cancels the handler before it took the stream over. What the head's callback began
    is stopped, the slot comes back, and the usage row estimates what was sent."""
    held, parked = park_after_head(monkeypatch)
    more = asyncio.Event()
    backend = web.Application()
    backend.router.add_post("/v1/chat/completions", held_backend(more))
    server = await start_mock(backend)
    gateway = await make_gateway(
        gateway_yaml(
            mock_backend_yaml("fake", server, models=f"[{MODEL}]", health="{readiness: false}")
        ),
        usage=UsageSettings(flush_s=0.02),
    )
    try:
        async with asyncio.timeout(BOUND_S):
            response = await gateway.post(CHAT_PATH, json={**CHAT, "stream": True}, headers=auth)
            first = await response.content.readuntil(b"\n\n")
        assert events(first) == [json.dumps(chunk("first "))]
        await eventually(parked.is_set, "the handler parked after the head")
        response.close()  # the client goes away
        (row,) = await usage_rows_for(tmp_path, 1)
        assert row["status"] == 200
        assert row["estimated"] == 1 and row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
        await assert_slots_free(gateway, admitted=1)
    finally:
        held.set()
        more.set()
