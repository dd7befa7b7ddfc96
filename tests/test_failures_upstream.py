"""Failure modes of the backend behind ``/v1``: down, hanging, garbage, error statuses.

Through the app factory with real fake backends. Every failure must leave as the OpenAI error
envelope with the status the SDK maps to the right exception, carry ``X-Request-Id``, never
show a traceback or a backend URL, and give its admission slot back. Fake backends that hang
wait on an ``asyncio.Event`` that the ``release`` fixture (conftest) sets at teardown.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from .conftest import (
    CHAT,
    CHAT_PATH,
    MODEL,
    REQUEST_ID,
    Handler,
    assert_envelope,
    assert_no_address,
    assert_slots_free,
    backend_yaml,
    error_of,
    fake_gateway,
    free_port,
    gateway_yaml,
    openai_client,
)

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
