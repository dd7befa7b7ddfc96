"""Failure modes a client can meet, through the app factory with real fake backends.

Every failure under ``/v1`` must leave as the OpenAI error envelope with the status the SDK
maps to the right exception, carry ``X-Request-Id``, never show a traceback or a backend
URL, and give its admission slot back. Fake backends are real aiohttp apps on loopback;
those that hang wait on an ``asyncio.Event`` that the ``release`` fixture sets at teardown.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.mock_backends.openai_server import RECEIVED

from .conftest import (
    OTHER_TOKEN,
    TOKEN,
    backend_yaml,
    gateway_yaml,
    mock_backend_yaml,
    openai_client,
    status_of,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MODEL = "fake-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
REQUEST_ID = re.compile(r"req-[0-9a-f]{24}")
CHAT_PATH = "/v1/chat/completions"


# -- helpers -------------------------------------------------------------------------------


@pytest.fixture
async def release(start_mock: Any) -> AsyncIterator[asyncio.Event]:
    """An event fake backends wait on "forever"; set at teardown, before they stop."""
    event = asyncio.Event()
    yield event
    event.set()


async def fake_gateway(
    make_gateway: Any, start_mock: Any, handler: Handler, **fields: Any
) -> tuple[TestClient, TestServer]:
    """A gateway in front of one fake backend ``fake`` serving ``fake-model`` with ``handler``.

    Readiness probes are off, so only the request under test reaches the backend.
    """
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    app.router.add_post("/v1/completions", handler)
    server = await start_mock(app)
    fields.setdefault("models", f"[{MODEL}]")
    fields.setdefault("health", "{readiness: false}")
    gateway = await make_gateway(gateway_yaml(mock_backend_yaml("fake", server, **fields)))
    return gateway, server


def assert_envelope(
    body: Any, *, error_type: str, code: str | None, param: str | None = None
) -> str:
    """Check the OpenAI error envelope exactly; return its message."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == error_type, error
    assert error["code"] == code, error
    assert error["param"] == param, error
    message = error["message"]
    assert isinstance(message, str) and message
    assert "Traceback" not in message and 'File "' not in message
    return message


async def error_of(
    response: aiohttp.ClientResponse,
    status: int,
    *,
    error_type: str = "invalid_request_error",
    code: str | None,
    param: str | None = None,
) -> str:
    """Status, JSON content type, request id and envelope of an error response."""
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == "application/json", text
    assert REQUEST_ID.fullmatch(response.headers.get("X-Request-Id", "")), response.headers
    return assert_envelope(json.loads(text), error_type=error_type, code=code, param=param)


def assert_no_address(text: str, server: TestServer | None = None, port: int | None = None) -> None:
    """Neither the backend's URL nor its address shows in ``text``."""
    assert "http://" not in text and "https://" not in text, text
    assert "127.0.0.1" not in text, text
    if server is not None:
        assert f"{server.host}:{server.port}" not in text, text
        assert str(server.make_url("/v1")) not in text, text
        port = server.port
    if port is not None:
        assert str(port) not in text, text


def sse_data(raw: bytes) -> list[str]:
    """The ``data:`` payloads of a server-sent event stream, in order."""
    frames = raw.decode().replace("\r\n", "\n").split("\n\n")
    return [
        line[len("data:") :].strip()
        for frame in frames
        for line in frame.splitlines()
        if line.startswith("data:")
    ]


def chunk(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def start_sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    return response


async def assert_slots_free(gateway: TestClient, admitted: int, capability: str = "chat") -> None:
    """Every slot given back; ``admitted`` proves the request really went through admission."""
    stats = await status_of(gateway, "fake", capability)
    assert stats["in_flight"] == 0, stats
    assert stats["admitted"] == admitted, stats


def free_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- 1. backend down -----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_backend_down_is_502_naming_the_backend_without_its_address(
    make_gateway: Any, auth: dict[str, str], stream: bool
) -> None:
    port = free_port()
    gateway = await make_gateway(
        gateway_yaml(
            backend_yaml(
                "fake",
                f"http://127.0.0.1:{port}/v1",
                **{"class": "mock", "models": f"[{MODEL}]", "health": "{readiness: false}"},
            )
        )
    )
    response = await gateway.post(CHAT_PATH, json={**CHAT, "stream": stream}, headers=auth)
    message = await error_of(response, 502, error_type="api_error", code="upstream_unavailable")
    assert "'fake'" in message
    assert_no_address(message, port=port)
    assert response.headers["X-Backend-Used"] == "fake"
    assert response.headers["X-Model-Used"] == MODEL
    await assert_slots_free(gateway, admitted=1)


# -- 2. backend hanging --------------------------------------------------------------------


async def test_backend_that_never_answers_is_504(
    make_gateway: Any, start_mock: Any, release: asyncio.Event, auth: dict[str, str]
) -> None:
    arrived = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.json_response({})

    gateway, server = await fake_gateway(make_gateway, start_mock, hang, timeouts="{read_s: 0.3}")
    response = await gateway.post(CHAT_PATH, json=CHAT, headers=auth)
    message = await error_of(response, 504, error_type="api_error", code="upstream_timeout")
    assert arrived.is_set()
    assert "'fake'" in message
    assert_no_address(message, server)
    assert response.headers["X-Backend-Used"] == "fake"
    await assert_slots_free(gateway, admitted=1)


async def test_stream_request_to_a_backend_that_never_answers_is_504(
    make_gateway: Any, start_mock: Any, release: asyncio.Event, auth: dict[str, str]
) -> None:
    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    gateway, _ = await fake_gateway(make_gateway, start_mock, hang, timeouts="{read_s: 0.3}")
    response = await gateway.post(CHAT_PATH, json={**CHAT, "stream": True}, headers=auth)
    await error_of(response, 504, error_type="api_error", code="upstream_timeout")
    await assert_slots_free(gateway, admitted=1)


async def test_backend_that_hangs_in_the_middle_of_its_body_is_504(
    make_gateway: Any, start_mock: Any, release: asyncio.Event, auth: dict[str, str]
) -> None:
    async def half_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"id": "chatcmpl-half", "choices": [')
        await release.wait()
        return response

    gateway, _ = await fake_gateway(make_gateway, start_mock, half_body, timeouts="{read_s: 0.3}")
    response = await gateway.post(CHAT_PATH, json=CHAT, headers=auth)
    await error_of(response, 504, error_type="api_error", code="upstream_timeout")
    await assert_slots_free(gateway, admitted=1)


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


# -- 3. garbage from the backend -----------------------------------------------------------


def _reply(body: bytes, content_type: str = "application/json", **headers: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Content-Type": content_type, **headers})

    return handler


async def _short_body(request: web.Request) -> web.StreamResponse:
    """Promise 1000 bytes, send 20, hang up."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = 1000
    await response.prepare(request)
    await response.write(b'{"id": "chatcmpl-cut"')
    assert request.transport is not None
    request.transport.close()
    return response


@pytest.mark.parametrize(
    "handler",
    [
        pytest.param(_reply(b"this is not JSON", "text/plain"), id="plain-text"),
        pytest.param(_reply(b"<html><body>Bad Gateway</body></html>", "text/html"), id="html"),
        pytest.param(_reply(b"[1, 2, 3]"), id="json-list"),
        pytest.param(_reply(b'"just a string"'), id="json-string"),
        pytest.param(_reply(b"null"), id="json-null"),
        pytest.param(_reply(b'{"id": "chatcmpl-x", "choices": ['), id="truncated-json"),
        pytest.param(_reply(b'{"id": "\xff\xfe"}'), id="not-utf8"),
        pytest.param(_reply(b""), id="empty"),
        pytest.param(_reply(b"definitely not gzip", **{"Content-Encoding": "gzip"}), id="bad-gzip"),
        pytest.param(_short_body, id="cut-off-body"),
    ],
)
async def test_backend_garbage_is_502(
    make_gateway: Any, start_mock: Any, auth: dict[str, str], handler: Handler
) -> None:
    gateway, server = await fake_gateway(make_gateway, start_mock, handler)
    response = await gateway.post(CHAT_PATH, json=CHAT, headers=auth)
    message = await error_of(response, 502, error_type="api_error", code="upstream_error")
    assert "'fake'" in message
    assert_no_address(message, server)
    assert response.headers["X-Backend-Used"] == "fake"
    await assert_slots_free(gateway, admitted=1)


async def test_stream_request_answered_with_plain_json_is_502(
    make_gateway: Any, start_mock: Any, auth: dict[str, str]
) -> None:
    gateway, _ = await fake_gateway(make_gateway, start_mock, _reply(b'{"id": "chatcmpl-x"}'))
    response = await gateway.post(CHAT_PATH, json={**CHAT, "stream": True}, headers=auth)
    message = await error_of(response, 502, error_type="api_error", code="upstream_error")
    assert "'fake'" in message
    await assert_slots_free(gateway, admitted=1)


async def test_large_reply_arriving_in_pieces_is_relayed_whole(
    make_gateway: Any, start_mock: Any, auth: dict[str, str]
) -> None:
    """A valid reply bigger than one socket read is not garbage (the counterpart of the above)."""
    reply = {
        "id": "chatcmpl-big",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "word " * 400_000},
                "finish_reason": "stop",
            }
        ],
    }
    body = json.dumps(reply).encode()

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    gateway, _ = await fake_gateway(make_gateway, start_mock, big)
    response = await gateway.post(CHAT_PATH, json=CHAT, headers=auth)
    assert response.status == 200, (await response.text())[:300]
    assert await response.json() == reply
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


# -- 5. backend error statuses -------------------------------------------------------------


def _openai_error(status: int, message: str, **headers: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        envelope = {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
        return web.json_response(envelope, status=status, headers=headers)

    return handler


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("status", [400, 404, 422])
async def test_backend_4xx_is_relayed_with_its_status_and_message(
    make_gateway: Any, start_mock: Any, auth: dict[str, str], status: int, stream: bool
) -> None:
    text = "This model's maximum context length is 4096 tokens"
    gateway, _ = await fake_gateway(make_gateway, start_mock, _openai_error(status, text))
    response = await gateway.post(CHAT_PATH, json={**CHAT, "stream": stream}, headers=auth)
    message = await error_of(response, status, code="upstream_rejected")
    assert text in message
    assert "'fake'" in message
    assert response.headers["X-Backend-Used"] == "fake"
    await assert_slots_free(gateway, admitted=1)


async def test_sdk_sees_a_relayed_400_as_bad_request(make_gateway: Any, start_mock: Any) -> None:
    text = "messages[0].content is too long"
    gateway, _ = await fake_gateway(make_gateway, start_mock, _openai_error(400, text))
    async with openai_client(gateway) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hello"}]
            )
    assert text in caught.value.message
    assert REQUEST_ID.fullmatch(caught.value.response.headers["X-Request-Id"])
    await assert_slots_free(gateway, admitted=1)


@pytest.mark.parametrize("status", [500, 502, 503, 401, 403])
async def test_backend_5xx_and_auth_failures_become_502(
    make_gateway: Any, start_mock: Any, auth: dict[str, str], status: int
) -> None:
    """A backend's 5xx, or its refusal of the gateway's own key, is the gateway's problem."""
    received: list[str] = []

    async def failing(request: web.Request) -> web.Response:
        received.append(request.headers["X-Request-Id"])
        return web.json_response(
            {"error": {"message": "backend exploded", "type": "server_error"}},
            status=status,
            headers={"WWW-Authenticate": 'Bearer realm="backend"'} if status == 401 else None,
        )

    gateway, server = await fake_gateway(make_gateway, start_mock, failing)
    response = await gateway.post(CHAT_PATH, json=CHAT, headers=auth)
    message = await error_of(response, 502, error_type="api_error", code="upstream_error")
    assert "'fake'" in message
    assert_no_address(message, server)
    assert "WWW-Authenticate" not in response.headers
    # The backend saw the same request id the client got back.
    assert received == [response.headers["X-Request-Id"]]
    await assert_slots_free(gateway, admitted=1)


async def test_backend_500_traceback_does_not_reach_the_client(
    make_gateway: Any, start_mock: Any, auth: dict[str, str]
) -> None:
    """errors.py: client-facing messages never carry a traceback or a backend URL."""
    holder: list[TestServer] = []

    async def crashing(request: web.Request) -> web.Response:
        where = holder[0].make_url("/v1/chat/completions")
        body = (
            "Traceback (most recent call last):\n"
            '  File "/srv/llm/server.py", line 42, in chat\n'
            f"    forward({where})\n"
            "RuntimeError: CUDA out of memory\n"
        )
        return web.Response(status=500, text=body, content_type="text/plain")

    gateway, server = await fake_gateway(make_gateway, start_mock, crashing)
    holder.append(server)
    response = await gateway.post(CHAT_PATH, json=CHAT, headers=auth)
    message = await error_of(response, 502, error_type="api_error", code="upstream_error")
    assert "'fake'" in message
    assert_no_address(message, server)
    await assert_slots_free(gateway, admitted=1)


@pytest.mark.parametrize(
    ("sent", "relayed"),
    [
        pytest.param("7", "7", id="seconds"),
        pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", None, id="http-date"),
        pytest.param("soon", None, id="nonsense"),
        pytest.param("\u00b2", None, id="superscript-digit"),
    ],
)
async def test_backend_429_is_relayed_with_retry_after(
    make_gateway: Any, start_mock: Any, auth: dict[str, str], sent: str, relayed: str | None
) -> None:
    gateway, _ = await fake_gateway(
        make_gateway,
        start_mock,
        _openai_error(429, "slow down", **{"Retry-After": sent}),
    )
    response = await gateway.post(CHAT_PATH, json=CHAT, headers=auth)
    assert response.status == 429, await response.text()
    body = await response.json()
    # The SDK maps a 429 to RateLimitError by status; the type is not pinned here.
    message = assert_envelope(body, error_type=body["error"]["type"], code="upstream_rate_limited")
    assert "slow down" in message
    retry_after = response.headers["Retry-After"]
    assert retry_after.isascii() and retry_after.isdigit() and int(retry_after) >= 1
    if relayed is not None:
        assert retry_after == relayed
    assert REQUEST_ID.fullmatch(response.headers["X-Request-Id"])
    await assert_slots_free(gateway, admitted=1)


async def test_sdk_sees_a_relayed_429_as_rate_limit(make_gateway: Any, start_mock: Any) -> None:
    gateway, _ = await fake_gateway(
        make_gateway, start_mock, _openai_error(429, "slow down", **{"Retry-After": "3"})
    )
    async with openai_client(gateway) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hello"}]
            )
    assert caught.value.response.headers["Retry-After"] == "3"
    await assert_slots_free(gateway, admitted=1)


# -- 6. body too large ---------------------------------------------------------------------

LIMIT = 2048


@pytest.fixture
async def small_gateway(make_gateway: Any, start_mock: Any) -> tuple[TestClient, TestServer]:
    """A gateway with a 2 KiB body limit in front of the stock mock backend."""
    backend = await start_mock()
    gateway = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend, health="{readiness: false}")),
        max_body_bytes=LIMIT,
    )
    return gateway, backend


def _padded_chat(size: int) -> bytes:
    """A valid chat body of exactly ``size`` bytes."""
    base = {"model": "mock-llama", "messages": [{"role": "user", "content": ""}]}
    pad = size - len(json.dumps(base).encode())
    base["messages"][0]["content"] = "a" * pad
    body = json.dumps(base).encode()
    assert len(body) == size
    return body


async def _chunked(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 512):
        yield body[start : start + 512]


@pytest.mark.parametrize("path", [CHAT_PATH, "/v1/completions", "/v1/embeddings"])
@pytest.mark.parametrize("framing", ["content-length", "chunked", "gzip"])
async def test_body_over_the_limit_is_413(
    small_gateway: tuple[TestClient, TestServer],
    auth: dict[str, str],
    path: str,
    framing: str,
) -> None:
    gateway, backend = small_gateway
    body = _padded_chat(2 * LIMIT)
    headers = {**auth, "Content-Type": "application/json"}
    data: Any = body
    if framing == "chunked":
        data = _chunked(body)
    elif framing == "gzip":
        # Small on the wire, over the limit once inflated.
        body = _padded_chat(64 * LIMIT)
        data = gzip.compress(body)
        assert len(data) < LIMIT
        headers["Content-Encoding"] = "gzip"
    response = await gateway.post(path, data=data, headers=headers)
    message = await error_of(response, 413, code="request_too_large")
    assert str(LIMIT) in message or "too large" in message
    assert len(backend.app[RECEIVED]) == 0


async def test_body_exactly_at_the_limit_is_accepted(
    small_gateway: tuple[TestClient, TestServer], auth: dict[str, str]
) -> None:
    gateway, backend = small_gateway
    headers = {**auth, "Content-Type": "application/json"}
    for data in (_padded_chat(LIMIT), _chunked(_padded_chat(LIMIT))):
        response = await gateway.post(CHAT_PATH, data=data, headers=headers)
        assert response.status == 200, await response.text()
    assert len(backend.app[RECEIVED]) == 2


# -- 7. malformed requests -----------------------------------------------------------------


def _chat(**fields: Any) -> bytes:
    return json.dumps({**CHAT, "model": "mock-llama", **fields}).encode()


def _without(key: str) -> bytes:
    body = {**CHAT, "model": "mock-llama"}
    del body[key]
    return json.dumps(body).encode()


BAD_REQUESTS = [
    # (path, raw body, param, code)
    pytest.param(CHAT_PATH, b'{"model": ', None, "invalid_json", id="bad-json"),
    pytest.param(CHAT_PATH, b"", None, "invalid_json", id="empty-body"),
    pytest.param(CHAT_PATH, b"[]", None, "invalid_json", id="json-list"),
    pytest.param(CHAT_PATH, b'"chat"', None, "invalid_json", id="json-string"),
    pytest.param(CHAT_PATH, b"null", None, "invalid_json", id="json-null"),
    pytest.param(CHAT_PATH, b"[" * 100_000, None, "invalid_json", id="deeply-nested"),
    pytest.param(CHAT_PATH, b'{"model": "\xff"}', None, "invalid_json", id="not-utf8"),
    pytest.param(
        CHAT_PATH, _without("model"), "model", "missing_required_parameter", id="no-model"
    ),
    pytest.param(CHAT_PATH, _chat(model=5), "model", "invalid_request", id="model-int"),
    pytest.param(CHAT_PATH, _chat(model=""), "model", "invalid_request", id="model-empty"),
    pytest.param(CHAT_PATH, _chat(model=["a"]), "model", "invalid_request", id="model-list"),
    pytest.param(
        CHAT_PATH, _without("messages"), "messages", "missing_required_parameter", id="no-messages"
    ),
    pytest.param(CHAT_PATH, _chat(messages="hi"), "messages", "invalid_request", id="messages-str"),
    pytest.param(CHAT_PATH, _chat(messages=[]), "messages", "invalid_request", id="messages-empty"),
    pytest.param(
        CHAT_PATH, _chat(messages=["hi"]), "messages[0]", "invalid_request", id="message-str"
    ),
    pytest.param(
        CHAT_PATH,
        _chat(messages=[{"role": {"name": "user"}, "content": "hi"}]),
        "messages[0].role",
        "invalid_request",
        id="role-dict",
    ),
    pytest.param(
        CHAT_PATH,
        _chat(messages=[{"role": "robot", "content": "hi"}]),
        "messages[0].role",
        "invalid_request",
        id="role-unknown",
    ),
    pytest.param(
        CHAT_PATH,
        _chat(messages=[{"role": "user", "content": {"text": "hi"}}]),
        "messages[0].content",
        "invalid_request",
        id="content-dict",
    ),
    pytest.param(CHAT_PATH, _chat(stream="yes"), "stream", "invalid_request", id="stream-str"),
    pytest.param(CHAT_PATH, _chat(stream=1), "stream", "invalid_request", id="stream-int"),
    pytest.param(CHAT_PATH, _chat(temperature=3), "temperature", "invalid_request", id="temp-3"),
    pytest.param(
        CHAT_PATH, _chat(temperature=-0.5), "temperature", "invalid_request", id="temp-negative"
    ),
    pytest.param(
        CHAT_PATH, _chat(temperature="hot"), "temperature", "invalid_request", id="temp-str"
    ),
    pytest.param(
        CHAT_PATH,
        b'{"model": "mock-llama", "messages": [{"role": "user", "content": "hi"}],'
        b' "temperature": NaN}',
        "temperature",
        "invalid_json",  # NaN is not JSON: refused by the strict parser, before validation
        id="temp-nan",
    ),
    pytest.param(CHAT_PATH, _chat(top_p=1.5), "top_p", "invalid_request", id="top-p"),
    pytest.param(CHAT_PATH, _chat(max_tokens=0), "max_tokens", "invalid_request", id="max-tok-0"),
    pytest.param(
        CHAT_PATH, _chat(max_tokens=1.5), "max_tokens", "invalid_request", id="max-tok-float"
    ),
    pytest.param(CHAT_PATH, _chat(n=True), "n", "invalid_request", id="n-bool"),
    pytest.param(CHAT_PATH, _chat(stop=[1, 2]), "stop", "invalid_request", id="stop-ints"),
    pytest.param(CHAT_PATH, _chat(tools="all"), "tools", "invalid_request", id="tools-str"),
    pytest.param(
        CHAT_PATH, _chat(tools=[{"type": "function"}]), "tools[0]", "invalid_request", id="tool-0"
    ),
    pytest.param(
        CHAT_PATH,
        _chat(tool_choice={"type": "function"}),
        "tool_choice",
        "invalid_request",
        id="tool-choice-names-nothing",
    ),
    pytest.param(
        CHAT_PATH,
        _chat(tool_choice={"type": "function", "function": {}}),
        "tool_choice",
        "invalid_request",
        id="tool-choice-function-without-name",
    ),
    pytest.param(
        CHAT_PATH, _chat(tool_choice="always"), "tool_choice", "invalid_request", id="tc-word"
    ),
    pytest.param(
        CHAT_PATH, _chat(stream_options="yes"), "stream_options", "invalid_request", id="stream-opt"
    ),
    pytest.param(
        "/v1/completions",
        json.dumps({"model": "mock-llama"}).encode(),
        "prompt",
        "missing_required_parameter",
        id="completion-no-prompt",
    ),
    pytest.param(
        "/v1/completions",
        json.dumps({"model": "mock-llama", "prompt": {"text": "x"}}).encode(),
        "prompt",
        "invalid_request",
        id="completion-prompt-dict",
    ),
    pytest.param(
        "/v1/embeddings",
        json.dumps({"model": "mock-embed", "input": []}).encode(),
        "input",
        "invalid_request",
        id="embeddings-empty-input",
    ),
    pytest.param(
        "/v1/embeddings",
        json.dumps({"model": "mock-embed", "input": "x", "encoding_format": "hex"}).encode(),
        "encoding_format",
        "invalid_request",
        id="embeddings-format",
    ),
    pytest.param(
        "/v1/embeddings",
        json.dumps({"model": "mock-embed", "input": "x", "stream": True}).encode(),
        "stream",
        "invalid_request",
        id="embeddings-stream",
    ),
]


@pytest.fixture
async def mock_gateway(make_gateway: Any, start_mock: Any) -> tuple[TestClient, TestServer]:
    """A gateway in front of the stock mock backend, kept so tests can see what reached it."""
    backend = await start_mock()
    gateway = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend, health="{readiness: false}"))
    )
    return gateway, backend


@pytest.mark.parametrize(("path", "body", "param", "code"), BAD_REQUESTS)
async def test_malformed_request_is_400_and_never_reaches_the_backend(
    mock_gateway: tuple[TestClient, TestServer],
    auth: dict[str, str],
    path: str,
    body: bytes,
    param: str | None,
    code: str,
) -> None:
    gateway, backend = mock_gateway
    response = await gateway.post(
        path, data=body, headers={**auth, "Content-Type": "application/json"}
    )
    await error_of(response, 400, code=code, param=param)
    assert len(backend.app[RECEIVED]) == 0


# -- 8. unknown models, routes and methods -------------------------------------------------


@pytest.mark.parametrize("model", ["no-such-model", "nope/mock-llama", "mock/no-such-model"])
async def test_unknown_model_is_404(
    mock_gateway: tuple[TestClient, TestServer], auth: dict[str, str], model: str
) -> None:
    gateway, backend = mock_gateway
    response = await gateway.post(CHAT_PATH, json={**CHAT, "model": model}, headers=auth)
    message = await error_of(response, 404, code="model_not_found", param="model")
    assert model in message
    assert len(backend.app[RECEIVED]) == 0


async def test_sdk_sees_an_unknown_model_as_not_found(gateway: TestClient) -> None:
    async with openai_client(gateway) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "hello"}]
            )
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/nope"),
        ("POST", "/v1/chat/completion"),
        ("GET", "/v1"),
        ("GET", "/v1/"),
        ("POST", "/v1/models/extra"),
    ],
)
async def test_unknown_route_under_v1_is_404_envelope(
    gateway: TestClient, auth: dict[str, str], method: str, path: str
) -> None:
    response = await gateway.request(method, path, headers=auth)
    await error_of(response, 404, code="not_found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", CHAT_PATH, {"POST"}),
        ("PUT", "/v1/embeddings", {"POST"}),
        ("DELETE", "/v1/models", {"GET", "HEAD"}),
        ("POST", "/v1/gateway/status", {"GET", "HEAD"}),
    ],
)
async def test_wrong_method_is_405_envelope(
    gateway: TestClient, auth: dict[str, str], method: str, path: str, allowed: set[str]
) -> None:
    response = await gateway.request(method, path, headers=auth)
    await error_of(response, 405, code="method_not_allowed")
    assert set(response.headers["Allow"].replace(" ", "").split(",")) == allowed


# -- 9. authentication ---------------------------------------------------------------------


def v1_routes(gateway: TestClient) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves under /v1, from its router."""
    found = []
    for route in gateway.server.app.router.routes():
        resource = route.resource
        if resource is None:
            continue
        path = resource.canonical
        if path == "/v1" or path.startswith("/v1/"):
            method = "GET" if route.method == "*" else route.method
            found.append((method, re.sub(r"\{[^}]*\}", "x", path)))
    return found


BAD_CREDENTIALS = [
    pytest.param({}, "missing_api_key", id="missing"),
    pytest.param({"Authorization": "Bearer wrong-token-0123456789"}, "invalid_api_key", id="wrong"),
    pytest.param({"Authorization": f"Bearer {TOKEN}x"}, "invalid_api_key", id="token-plus-one"),
    pytest.param({"Authorization": f"Bearer {TOKEN[:-1]}"}, "invalid_api_key", id="token-prefix"),
    pytest.param({"Authorization": f"Basic {TOKEN}"}, "invalid_api_key", id="basic-scheme"),
    pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, "invalid_api_key", id="basic-xxx"),
    pytest.param({"Authorization": "Bearer"}, "invalid_api_key", id="bearer-no-token"),
    pytest.param({"Authorization": "Bearer    "}, "invalid_api_key", id="bearer-blank"),
    pytest.param({"Authorization": TOKEN}, "invalid_api_key", id="token-without-scheme"),
]


@pytest.mark.parametrize(("headers", "code"), BAD_CREDENTIALS)
async def test_every_v1_route_needs_a_valid_bearer_token(
    mock_gateway: tuple[TestClient, TestServer], headers: dict[str, str], code: str
) -> None:
    gateway, backend = mock_gateway
    routes = v1_routes(gateway)
    assert ("POST", CHAT_PATH) in routes and ("GET", "/v1/gateway/status") in routes
    for method, path in routes:
        response = await gateway.request(
            method, path, headers=headers, json={**CHAT, "model": "mock-llama"}
        )
        assert response.status == 401, (method, path, await response.text())
        challenge = response.headers.get("WWW-Authenticate", "")
        assert challenge.startswith("Bearer"), (method, path, response.headers)
        assert REQUEST_ID.fullmatch(response.headers.get("X-Request-Id", ""))
        if method != "HEAD":
            await error_of(response, 401, error_type="authentication_error", code=code)
    assert len(backend.app[RECEIVED]) == 0


async def test_second_configured_token_is_accepted(gateway: TestClient) -> None:
    """The 401s above are about the token, not about the requests themselves."""
    for token in (TOKEN, OTHER_TOKEN):
        response = await gateway.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
        assert response.status == 200


async def _raw_status(gateway: TestClient, target: str) -> tuple[int, bytes]:
    """Send a request line the client library would normalise, exactly as written."""
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        reply = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(
    "target",
    [
        "//v1/models",
        "/./v1/models",
        "/x/../v1/models",
        "/v1/./models",
        "/v1//models",
        "/%761/models",
        "/v1%2Fmodels",
        "/V1/models",
        "/v1/models/",
        "/v1/x/../gateway/status",
    ],
)
async def test_path_spellings_never_reach_a_v1_handler_without_a_token(
    gateway: TestClient, target: str
) -> None:
    status, body = await _raw_status(gateway, target)
    assert status in (401, 404), (target, status, body)
    assert_envelope(
        json.loads(body),
        error_type="authentication_error" if status == 401 else "invalid_request_error",
        code="missing_api_key" if status == 401 else "not_found",
    )


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_health_endpoints_are_open_and_do_not_reveal_backends(
    make_gateway: Any, start_mock: Any, path: str
) -> None:
    backend = await start_mock()
    gateway = await make_gateway(gateway_yaml(mock_backend_yaml("mock", backend)))
    response = await gateway.get(path)
    assert response.status == 200
    text = await response.text()
    assert f"{backend.host}:{backend.port}" not in text
    assert "http://" not in text and "https://" not in text
    head = await gateway.head(path)
    assert head.status == 200


# -- 10. request id ------------------------------------------------------------------------


async def test_every_error_response_carries_its_own_request_id(
    small_gateway: tuple[TestClient, TestServer], auth: dict[str, str]
) -> None:
    gateway, _ = small_gateway
    json_headers = {**auth, "Content-Type": "application/json"}
    too_large = b"x" * (2 * LIMIT)
    requests: list[tuple[int, Callable[[], Awaitable[aiohttp.ClientResponse]]]] = [
        (401, lambda: gateway.post(CHAT_PATH, json=CHAT)),
        (400, lambda: gateway.post(CHAT_PATH, data=b"{", headers=json_headers)),
        (404, lambda: gateway.post(CHAT_PATH, json={**CHAT, "model": "nope"}, headers=auth)),
        (404, lambda: gateway.get("/v1/nope", headers=auth)),
        (405, lambda: gateway.get(CHAT_PATH, headers=auth)),
        (413, lambda: gateway.post(CHAT_PATH, data=too_large, headers=json_headers)),
    ]
    seen = set()
    for status, send in requests:
        response = await send()
        assert response.status == status, await response.text()
        request_id = response.headers.get("X-Request-Id", "")
        assert REQUEST_ID.fullmatch(request_id), (status, response.headers)
        seen.add(request_id)
    assert len(seen) == len(requests)
