"""Failure modes of a streamed reply: a stream that goes idle, a backend dying mid-stream.

The client must see an SSE error event then ``data: [DONE]`` (or the SDK an ``APIError``),
never a backend address, and the admission slot must come back. Fake backends that hang
wait on an ``asyncio.Event`` that the ``release`` fixture (conftest) sets at teardown.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest
from aiohttp import web

from .conftest import (
    CHAT,
    CHAT_PATH,
    MODEL,
    REQUEST_ID,
    Handler,
    assert_envelope,
    assert_no_address,
    assert_slots_free,
    chunk,
    fake_gateway,
    openai_client,
    sse,
)

# -- helpers -------------------------------------------------------------------------------


def sse_data(raw: bytes) -> list[str]:
    """The ``data:`` payloads of a server-sent event stream, in order."""
    frames = raw.decode().replace("\r\n", "\n").split("\n\n")
    return [
        line[len("data:") :].strip()
        for frame in frames
        for line in frame.splitlines()
        if line.startswith("data:")
    ]


async def start_sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    return response


# -- 2. a stream that goes idle ------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "timeouts"),
    [
        pytest.param(["first "], "{read_s: 5, stream_idle_s: 0.3}", id="idle-after-first-chunk"),
        pytest.param([], "{read_s: 0.3, stream_idle_s: 5}", id="no-first-chunk"),
    ],
)
async def test_stream_that_goes_idle_ends_with_an_error_event_and_done(
    make_gateway: Any,
    start_mock: Any,
    release: asyncio.Event,
    auth: dict[str, str],
    sent: list[str],
    timeouts: str,
) -> None:
    async def idle(request: web.Request) -> web.StreamResponse:
        response = await start_sse(request)
        for part in sent:
            await response.write(sse(chunk(part)))
        await release.wait()
        return response

    gateway, server = await fake_gateway(make_gateway, start_mock, idle, timeouts=timeouts)
    response = await gateway.post(CHAT_PATH, json={**CHAT, "stream": True}, headers=auth)
    assert response.status == 200
    assert response.content_type == "text/event-stream"
    assert response.headers["X-Backend-Used"] == "fake"
    assert REQUEST_ID.fullmatch(response.headers["X-Request-Id"])
    data = sse_data(await response.read())
    assert len(data) == len(sent) + 2, data
    assert [json.loads(item) for item in data[: len(sent)]] == [chunk(p) for p in sent]
    message = assert_envelope(json.loads(data[-2]), error_type="api_error", code="upstream_timeout")
    assert "'fake'" in message
    assert_no_address(message, server)
    assert data[-1] == "[DONE]"
    await assert_slots_free(gateway, admitted=1)


# -- 4. backend dying mid-stream -----------------------------------------------------------

PARTS = ["Hello ", "there "]


async def _abort_after_chunks(request: web.Request) -> web.StreamResponse:
    response = await start_sse(request)
    for part in PARTS:
        await response.write(sse(chunk(part)))
    assert request.transport is not None
    request.transport.close()
    return response


async def _raise_after_chunks(request: web.Request) -> web.StreamResponse:
    response = await start_sse(request)
    for part in PARTS:
        await response.write(sse(chunk(part)))
    raise RuntimeError("backend crashed mid-stream")


async def _eof_without_done(request: web.Request) -> web.StreamResponse:
    response = await start_sse(request)
    for part in PARTS:
        await response.write(sse(chunk(part)))
    await response.write_eof()
    return response


MID_STREAM_DEATHS = [
    pytest.param(_abort_after_chunks, id="connection-aborted"),
    pytest.param(_raise_after_chunks, id="handler-raised"),
    pytest.param(_eof_without_done, id="clean-eof-without-done"),
]


@pytest.mark.parametrize("handler", MID_STREAM_DEATHS)
async def test_backend_dying_mid_stream_ends_with_error_event_and_done(
    make_gateway: Any, start_mock: Any, auth: dict[str, str], handler: Handler
) -> None:
    gateway, server = await fake_gateway(make_gateway, start_mock, handler)
    response = await gateway.post(CHAT_PATH, json={**CHAT, "stream": True}, headers=auth)
    assert response.status == 200
    assert response.content_type == "text/event-stream"
    assert response.headers["X-Backend-Used"] == "fake"
    assert REQUEST_ID.fullmatch(response.headers["X-Request-Id"])
    data = sse_data(await response.read())
    assert [json.loads(item) for item in data[: len(PARTS)]] == [chunk(p) for p in PARTS]
    assert len(data) == len(PARTS) + 2, data
    message = assert_envelope(json.loads(data[-2]), error_type="api_error", code="upstream_error")
    assert "'fake'" in message
    assert_no_address(message, server)
    assert data[-1] == "[DONE]"
    await assert_slots_free(gateway, admitted=1)


@pytest.mark.parametrize("handler", MID_STREAM_DEATHS)
async def test_sdk_raises_api_error_when_the_stream_breaks(
    make_gateway: Any, start_mock: Any, handler: Handler
) -> None:
    gateway, _ = await fake_gateway(make_gateway, start_mock, handler)
    seen: list[str | None] = []
    async with openai_client(gateway) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}], stream=True
        )
        with pytest.raises(openai.APIError) as caught:
            async for item in stream:
                seen.append(item.choices[0].delta.content)
    assert seen == PARTS
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "upstream_error"
    assert "'fake'" in caught.value.message
    await assert_slots_free(gateway, admitted=1)


async def test_sdk_raises_api_error_when_the_stream_goes_idle(
    make_gateway: Any, start_mock: Any, release: asyncio.Event
) -> None:
    async def idle(request: web.Request) -> web.StreamResponse:
        response = await start_sse(request)
        await response.write(sse(chunk("first ")))
        await release.wait()
        return response

    gateway, _ = await fake_gateway(
        make_gateway, start_mock, idle, timeouts="{read_s: 5, stream_idle_s: 0.3}"
    )
    seen: list[str | None] = []
    async with openai_client(gateway) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}], stream=True
        )
        with pytest.raises(openai.APIError) as caught:
            async for item in stream:
                seen.append(item.choices[0].delta.content)
    assert seen == ["first "]
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "upstream_timeout"
    await assert_slots_free(gateway, admitted=1)
