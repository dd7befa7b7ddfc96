"""The faces other than plain OpenAI chat (Anthropic Messages, Ollama, the Responses API)
against hostile clients and broken backends.

Every gateway is built by the app factory in front of fake backends that are real aiohttp
servers on loopback speaking the chat completions protocol, broken on purpose: error events
a framer does not clean, whole JSON replies to stream requests, chunks of the wrong shape,
usage of the wrong types, lone surrogates, more tool calls than a reply may hold. Clients
send bodies with a wrong type in every field. Nothing may be a 500, break a stream's HTTP
framing, leak a backend's error text uncleaned, or charge a key for zero tokens.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.api import anthropic as anthropic_module
from sidecar.api import ollama as ollama_module
from sidecar.responses import api as responses_api
from sidecar.settings import UsageSettings
from sidecar.wire.body import THREAD_PARSE_BYTES

from .conftest import (
    TOKEN,
    chunk,
    fake_gateway,
    gateway_yaml,
    mock_backend_yaml,
    sse,
    status_of,
    usage_rows_for,
)
from .test_anthropic import parse_sse
from .test_hardening_event_loop import probe_healthz

AUTH = {"Authorization": f"Bearer {TOKEN}", "x-api-key": TOKEN}
MESSAGES = [{"role": "user", "content": "hello"}]
ANTHROPIC_STREAM = {"model": "fake-model", "max_tokens": 16, "messages": MESSAGES, "stream": True}
OLLAMA_CHAT = {"model": "fake-model", "messages": MESSAGES}  # streams unless told not to
RESPONSES_STREAM = {"model": "fake-model", "input": "hello", "stream": True}
SECRET = "sk-abcdef0123456789abcdef"
INTERNAL_PATH = "/srv/models/private/loader.py"
HELD_BOUND_S = 1.0  # a probe held longer by the gateway: work on the loop, not a parse


def streaming(*events: bytes | dict[str, Any]) -> Any:
    """A fake backend's chat stream: each event as given (a dict as one ``data:`` event)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(sse(event) if isinstance(event, dict) else event)
        return response

    return handler


async def refusing(request: web.Request) -> web.Response:
    raise AssertionError("no request may reach the backend")


def ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def assert_anthropic_error(body: Any, error_type: str) -> str:
    assert isinstance(body, dict) and set(body) == {"type", "error"}, body
    assert body["type"] == "error" and body["error"]["type"] == error_type, body
    message = body["error"]["message"]
    assert isinstance(message, str) and message and "Traceback" not in message
    return message


def assert_ollama_error(body: Any) -> str:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    message = body["error"]
    assert isinstance(message, str) and message and "Traceback" not in message
    return message


# -- hostile client bodies ---------------------------------------------------------------------


async def test_a_tool_choice_type_that_is_a_list_or_object_is_a_400_in_anthropic_shape(
    make_gateway: Any, start_mock: Any
) -> None:
    gateway, _ = await fake_gateway(make_gateway, start_mock, refusing)
    for kind in ([], ["auto"], {}, {"type": "auto"}):
        for path, body in (
            ("/v1/messages", {"model": "fake-model", "max_tokens": 5, "messages": MESSAGES}),
            ("/v1/messages/count_tokens", {"model": "fake-model", "messages": MESSAGES}),
        ):
            response = await gateway.post(
                path, json={**body, "tool_choice": {"type": kind}}, headers=AUTH
            )
            assert response.status == 400, await response.text()
            message = assert_anthropic_error(await response.json(), "invalid_request_error")
            assert message.startswith("tool_choice"), message


async def test_a_role_that_is_a_list_or_object_is_a_400_in_ollama_shape(
    make_gateway: Any, start_mock: Any
) -> None:
    gateway, _ = await fake_gateway(make_gateway, start_mock, refusing)
    for role in ([], ["user"], {}, {"role": "user"}):
        messages = [{"role": "user", "content": "x"}, {"role": role, "content": "y"}]
        response = await gateway.post(
            "/api/chat", json={"model": "fake-model", "messages": messages}, headers=AUTH
        )
        assert response.status == 400, await response.text()
        assert "messages[1].role" in assert_ollama_error(await response.json())


ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    1.5,
    10**30,
    "",
    "x",
    [],
    [1],
    ["x"],
    [[]],
    [{}],
    {},
    {"type": []},
    {"a": {}},
]
IMAGE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB"
VALID_BODIES: dict[str, dict[str, Any]] = {
    "/v1/messages": {
        "model": "default",
        "max_tokens": 5,
        "system": [{"type": "text", "text": "s"}],
        "stop_sequences": ["x"],
        "temperature": 0.5,
        "output_config": {"format": {"type": "json_schema", "schema": {}}},
        "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hi"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": IMAGE},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "a"},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "is_error": True,
                        "content": [{"type": "text", "text": "r"}],
                    }
                ],
            },
        ],
    },
    "/v1/messages/count_tokens": {
        "model": "default",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "f", "input_schema": {}}],
        "tool_choice": {"type": "any"},
    },
    "/api/chat": {
        "model": "default",
        "stream": False,
        "options": {"temperature": 0.5, "num_predict": 5, "stop": ["x"], "seed": 1},
        "format": {"type": "object"},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "messages": [
            {"role": "user", "content": "hi", "images": [IMAGE]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}],
            },
            {"role": "tool", "content": "r", "tool_name": "f"},
        ],
    },
    "/api/generate": {
        "model": "default",
        "stream": False,
        "prompt": "hi",
        "system": "s",
        "images": [IMAGE],
        "options": {"num_predict": 5},
        "keep_alive": "5m",
    },
    "/api/embed": {"model": "mock-embed", "input": ["a"], "dimensions": 4},
    "/api/embeddings": {"model": "mock-embed", "prompt": "a"},
    "/api/show": {"model": "default"},
    "/v1/responses": {
        "model": "default",
        "instructions": "i",
        "store": False,
        "temperature": 0.5,
        "max_output_tokens": 5,
        "metadata": {"k": "v"},
        "text": {"format": {"type": "json_schema", "name": "n", "schema": {}}},
        "reasoning": {"effort": "low"},
        "tools": [{"type": "function", "name": "f", "parameters": {}}],
        "tool_choice": {
            "type": "allowed_tools",
            "mode": "auto",
            "tools": [{"type": "function", "name": "f"}],
        },
        "input": [
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "hi"},
                    {"type": "input_image", "image_url": f"data:image/png;base64,{IMAGE}"},
                ],
            },
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {
                "type": "function_call_output",
                "call_id": "c",
                "output": [{"type": "input_text", "text": "r"}],
            },
        ],
    },
}


def one_value_replaced(body: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every value in ``body``, at any depth (its keys and indexes)."""
    items = body.items() if isinstance(body, dict) else enumerate(body)
    for key, value in items:
        yield (*path, key)
        if isinstance(value, dict | list):
            yield from one_value_replaced(value, (*path, key))


def replaced(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    copy = json.loads(json.dumps(body))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy


async def test_a_wrong_type_anywhere_in_a_face_body_is_never_a_500(
    default_mock_gateway: tuple[TestClient, TestServer],
) -> None:
    """Each face's full request, then every value in it (at any depth) replaced by each of
    a set of wrong types: a 400 in the face's shape, or an answer; never a 500."""
    gateway, _ = default_mock_gateway
    failures = []
    for path, body in VALID_BODIES.items():
        response = await gateway.post(path, json=body, headers=AUTH)
        assert response.status == 200, (path, await response.text())
        for where in one_value_replaced(body):
            for value in ODD_VALUES:
                response = await gateway.post(path, json=replaced(body, where, value), headers=AUTH)
                text = await response.text()
                if response.status >= 500 or "Traceback" in text:
                    failures.append((path, where, value, response.status, text[:200]))
    assert not failures, failures


@pytest.mark.parametrize(
    "data",
    [
        b'{"model": "fake-model", "max_tokens": NaN}',
        b'{"model": "fake-model", "max_tokens": 1e309}',
        b'{"model": "fake-model", "stream": "true", "max_tokens": 5, "messages": []}',
        b'{"model": "fake-\xff\xfe"}',
        b'{"model": "fake-model", "messages": ' + b"[" * 65 + b"]" * 65 + b"}",
    ],
    ids=["nan", "overflow", "stream-string", "not-utf8", "deep"],
)
async def test_malformed_bodies_are_a_400_in_each_faces_shape(
    make_gateway: Any, start_mock: Any, data: bytes
) -> None:
    gateway, _ = await fake_gateway(make_gateway, start_mock, refusing)
    headers = {**AUTH, "Content-Type": "application/json"}
    response = await gateway.post("/v1/messages", data=data, headers=headers)
    assert response.status == 400
    assert_anthropic_error(await response.json(), "invalid_request_error")
    for path in ("/api/chat", "/api/generate"):
        response = await gateway.post(path, data=data, headers=headers)
        assert response.status == 400
        assert_ollama_error(await response.json())
    response = await gateway.post("/v1/responses", data=data, headers=headers)
    assert response.status == 400
    assert response.content_type == "application/json"
    assert "error" in await response.json()


# -- broken backends: replies and streams ------------------------------------------------------


async def test_an_embedding_index_that_is_not_an_integer_is_a_502(
    make_gateway: Any, start_mock: Any
) -> None:
    """Indexes of mixed types cannot be sorted: the backend's fault, a 502, not a 500."""

    async def embeddings(request: web.Request) -> web.Response:
        data = [{"index": "0", "embedding": [0.1]}, {"index": 1, "embedding": [0.2]}]
        return web.json_response({"data": data})

    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    server = await start_mock(app)
    gateway = await make_gateway(
        gateway_yaml(
            mock_backend_yaml(
                "fake",
                server,
                models="[{id: emb, capabilities: [embeddings]}]",
                health="{readiness: false}",
            )
        )
    )
    response = await gateway.post(
        "/api/embed", json={"model": "emb", "input": ["a", "b"]}, headers=AUTH
    )
    assert response.status == 502, await response.text()
    assert "malformed index" in assert_ollama_error(await response.json())


async def test_tool_calls_that_are_not_a_list_in_an_ollama_stream_are_skipped(
    make_gateway: Any, start_mock: Any
) -> None:
    """A number where the tool call list goes: ignored, as the other faces ignore it; the
    NDJSON stream ends with its done line, its HTTP framing intact."""
    handler = streaming(
        chunk("hi"),
        chunk(delta={"tool_calls": 5}),
        chunk(delta={"tool_calls": True}),
        chunk(finish="stop"),
        b"data: [DONE]\n\n",
    )
    gateway, _ = await fake_gateway(make_gateway, start_mock, handler)
    response = await gateway.post("/api/chat", json=OLLAMA_CHAT, headers=AUTH)
    lines = ndjson(await response.text())
    assert response.status == 200
    assert [line["message"]["content"] for line in lines[:-1]] == ["hi"]
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"


async def test_a_json_reply_to_a_stream_request_is_a_502_before_any_event(
    make_gateway: Any, start_mock: Any
) -> None:
    """Asked to stream, the backend sends a whole JSON reply: each face answers a 502 in
    its own shape (no 200 and no event), as the Responses API does; the slot is free."""

    async def whole(request: web.Request) -> web.Response:
        return web.json_response({"object": "chat.completion", "choices": []})

    gateway, _ = await fake_gateway(
        make_gateway,
        start_mock,
        whole,
        models="[{id: fake-model, capabilities: [chat, completions]}]",
    )
    response = await gateway.post("/v1/messages", json=ANTHROPIC_STREAM, headers=AUTH)
    assert response.status == 502
    assert response.content_type == "application/json"
    message = assert_anthropic_error(await response.json(), "api_error")
    assert "'fake' did not answer with a stream" in message
    for path, body in (
        ("/api/chat", OLLAMA_CHAT),
        ("/api/generate", {"model": "fake-model", "prompt": "x"}),
        ("/api/generate", {"model": "fake-model", "prompt": "x", "raw": True}),
    ):
        response = await gateway.post(path, json=body, headers=AUTH)
        assert response.status == 502, (path, body)
        assert response.content_type == "application/json"
        assert "did not answer with a stream" in assert_ollama_error(await response.json())
    assert (await status_of(gateway, "fake", "chat"))["in_flight"] == 0
    assert (await status_of(gateway, "fake", "completions"))["in_flight"] == 0


UNCLEAN = {"message": f"load failed in {INTERNAL_PATH} with api_key={SECRET}"}
# Error events the stream framer does not clean: the error on a second ``data:`` line of an
# event, and the key written with a JSON escape (it is "error" once parsed).
HIDDEN_ERRORS = [
    b"data: "
    + json.dumps(chunk("")).encode()
    + b"\ndata: "
    + json.dumps({"error": UNCLEAN}).encode()
    + b"\n\n",
    b'data: {"\\u0065rror": ' + json.dumps(UNCLEAN).encode() + b"}\n\n",
]


@pytest.mark.parametrize("event", HIDDEN_ERRORS, ids=["second-data-line", "escaped-key"])
async def test_a_backends_error_text_is_cleaned_however_the_event_hides_it(
    make_gateway: Any, start_mock: Any, event: bytes
) -> None:
    gateway, _ = await fake_gateway(make_gateway, start_mock, streaming(chunk("hi"), event))
    response = await gateway.post("/v1/messages", json=ANTHROPIC_STREAM, headers=AUTH)
    events = parse_sse(await response.text())
    assert events[-1][0] == "error"
    anthropic_message = assert_anthropic_error(events[-1][1], "api_error")
    response = await gateway.post("/api/chat", json=OLLAMA_CHAT, headers=AUTH)
    ollama_message = assert_ollama_error(ndjson(await response.text())[-1])
    response = await gateway.post("/v1/responses", json=RESPONSES_STREAM, headers=AUTH)
    text = await response.text()
    for message in (anthropic_message, ollama_message):
        assert "load failed in" in message, message  # the message, cleaned
    for shown in (anthropic_message, ollama_message, text):
        assert SECRET not in shown and "abcdef0123456789" not in shown, shown
        assert INTERNAL_PATH not in shown and "/srv/models" not in shown, shown


async def test_a_translated_stream_whose_usage_has_odd_types_is_estimated(
    make_gateway: Any, start_mock: Any, tmp_path: Path
) -> None:
    """Counts of the wrong types (strings, floats) are no counts: the Responses stream, like
    every face, charges the estimate and marks it, instead of charging zero tokens; the
    Response says it has no usage rather than zero."""
    odd_usage = {"prompt_tokens": "12", "completion_tokens": 3.5, "total_tokens": "15"}

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            message = {"role": "assistant", "content": "hello there friend"}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return web.json_response({"choices": [choice], "usage": odd_usage})
        return await streaming(
            chunk("hello there friend", finish="stop"),
            {"id": "x", "choices": [], "usage": odd_usage},
            b"data: [DONE]\n\n",
        )(request)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = await start_mock(app)
    gateway = await make_gateway(
        gateway_yaml(
            mock_backend_yaml("fake", server, models="[fake-model]", health="{readiness: false}")
        ),
        usage=UsageSettings(flush_s=0.02),
    )
    response = await gateway.post("/v1/responses", json=RESPONSES_STREAM, headers=AUTH)
    events = [
        json.loads(line[6:])
        for line in (await response.text()).splitlines()
        if line[:6] == "data: "
    ]
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["usage"] is None
    response = await gateway.post(
        "/v1/responses", json={**RESPONSES_STREAM, "stream": False}, headers=AUTH
    )
    assert (await response.json())["usage"] is None
    for path, body in (("/v1/messages", ANTHROPIC_STREAM), ("/api/chat", OLLAMA_CHAT)):
        assert (await gateway.post(path, json=body, headers=AUTH)).status == 200
    rows = await usage_rows_for(tmp_path, 4)
    for row in rows:
        assert row["status"] == 200 and row["estimated"] == 1, row
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0, row


def tool_call(index: int, arguments: str, name: str | None = "f") -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": arguments}
    if name is not None:
        function["name"] = name
    return chunk(delta={"tool_calls": [{"index": index, "function": function}]})


async def test_an_ollama_stream_holds_at_most_max_tool_calls(
    make_gateway: Any, start_mock: Any
) -> None:
    """Tool calls are held until the stream ends: a backend that opens more than
    ``MAX_TOOL_CALLS`` ends the stream with an error line, not an unbounded hold."""
    calls = [tool_call(index, "{}") for index in range(200)]  # MAX_TOOL_CALLS is 128
    handler = streaming(*calls, chunk(finish="tool_calls"), b"data: [DONE]\n\n")
    gateway, _ = await fake_gateway(make_gateway, start_mock, handler)
    response = await gateway.post("/api/chat", json=OLLAMA_CHAT, headers=AUTH)
    lines = ndjson(await response.text())
    assert "tool calls" in assert_ollama_error(lines[-1])
    assert not any("tool_calls" in line.get("message", {}) for line in lines)
    assert (await status_of(gateway, "fake", "chat"))["in_flight"] == 0


async def test_an_ollama_stream_holds_at_most_max_held_bytes_of_arguments(
    make_gateway: Any, start_mock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Arguments past ``MAX_HELD_BYTES`` (64 MiB in production) end the stream with an
    error line, as the Responses stream does."""
    monkeypatch.setattr(ollama_module, "MAX_HELD_BYTES", 1024 * 1024, raising=False)
    piece = "x" * (64 * 1024)
    pieces = [tool_call(0, '{"a": "')] + [tool_call(0, piece, None) for _ in range(32)]
    handler = streaming(
        *pieces, tool_call(0, '"}', None), chunk(finish="tool_calls"), b"data: [DONE]\n\n"
    )
    gateway, _ = await fake_gateway(make_gateway, start_mock, handler)
    response = await gateway.post("/api/chat", json=OLLAMA_CHAT, headers=AUTH)
    lines = ndjson(await response.text())
    assert "larger than 1 MiB" in assert_ollama_error(lines[-1])
    assert not any("tool_calls" in line.get("message", {}) for line in lines)


async def test_a_lone_surrogate_in_streamed_ollama_tool_arguments_ends_with_an_error_line(
    make_gateway: Any, start_mock: Any
) -> None:
    """Held tool call arguments are counted in bytes as they come: a lone surrogate (which
    UTF-8 cannot encode) must not break the count, so the stream ends with the error line
    its arguments earn (they are no JSON object a client can use), never cut short."""
    arguments = json.dumps('{"a": "\ud800"}')  # the JSON text of the escape, as sent
    call = '{"index":0,"function":{"name":"f","arguments":' + arguments + "}}"
    delta = '{"choices":[{"index":0,"delta":{"tool_calls":[' + call + "]}}]}"
    handler = streaming(
        b"data: " + delta.encode() + b"\n\n", chunk(finish="tool_calls"), b"data: [DONE]\n\n"
    )
    gateway, _ = await fake_gateway(make_gateway, start_mock, handler)
    response = await gateway.post("/api/chat", json=OLLAMA_CHAT, headers=AUTH)
    assert response.status == 200
    lines = ndjson(await response.text())  # before: the body ended early, unreadable
    assert "error" in lines[-1], lines


async def test_a_lone_surrogate_from_the_backend_neither_breaks_a_stream_nor_a_conversation(
    make_gateway: Any, start_mock: Any
) -> None:
    """A backend's ``\\ud800`` (JSON allows the escape; UTF-8 cannot carry it): the Ollama
    and Responses streams still end properly, and a stored Response holding it can be
    continued with ``previous_response_id`` (it is U+FFFD there)."""
    delta = b'{"choices":[{"index":0,"delta":{"content":"a\\ud800b"},"finish_reason":null}]}'
    message = b'{"role":"assistant","content":"a\\ud800b"}'
    whole = b'{"choices":[{"index":0,"message":' + message + b',"finish_reason":"stop"}]}'

    async def handler(request: web.Request) -> web.StreamResponse:
        if not (await request.json()).get("stream"):
            return web.Response(body=whole, content_type="application/json")
        return await streaming(
            b"data: " + delta + b"\n\n", chunk(finish="stop"), b"data: [DONE]\n\n"
        )(request)

    gateway, _ = await fake_gateway(make_gateway, start_mock, handler)
    response = await gateway.post("/api/chat", json=OLLAMA_CHAT, headers=AUTH)
    lines = ndjson(await response.text())
    assert lines[0]["message"]["content"] == "a\ud800b"  # escaped, as the whole reply is
    assert lines[-1]["done"] is True
    response = await gateway.post("/v1/responses", json=RESPONSES_STREAM, headers=AUTH)
    text = await response.text()
    assert response.status == 200
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "response.completed"
    streamed = events[-1]["response"]
    assert streamed["output"][0]["content"][0]["text"] == "a\ufffdb"
    first = await gateway.post(
        "/v1/responses", json={**RESPONSES_STREAM, "stream": False}, headers=AUTH
    )
    made = await first.json()
    assert made["output"][0]["content"][0]["text"] == "a\ufffdb"
    for previous in (made["id"], streamed["id"]):
        again = await gateway.post(
            "/v1/responses",
            json={"model": "fake-model", "input": "more", "previous_response_id": previous},
            headers=AUTH,
        )
        assert again.status == 200, await again.text()


ODD_CHUNKS: list[Any] = [
    {"choices": 5},
    {"choices": [5]},
    {"choices": [{"delta": 5}]},
    {"choices": [{"delta": {"content": 5}}]},
    {"choices": [{"delta": {"content": ["x"]}}]},
    {"choices": [{"delta": {"tool_calls": 5}}]},
    {"choices": [{"delta": {"tool_calls": {"a": 1}}}]},
    {"choices": [{"delta": {"tool_calls": [5]}}]},
    {"choices": [{"delta": {"tool_calls": [{"index": "a", "function": {"name": "f"}}]}}]},
    {"choices": [{"delta": {"tool_calls": [{"index": [], "function": 5}]}}]},
    {"choices": [{"delta": {"tool_calls": [{"index": {}, "id": 5, "function": {"name": 5}}]}}]},
    {"choices": [{"delta": {"tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}}]},
    {"choices": [{"delta": {"tool_calls": [{"index": True, "function": {"arguments": [1]}}]}}]},
    {"choices": [{"delta": {}, "finish_reason": 5}]},
    {"choices": [{"delta": {}, "finish_reason": []}]},
    {"choices": [{"delta": {}, "finish_reason": "stop", "stop_reason": []}]},
    {"choices": [{"delta": {"reasoning_content": 5, "reasoning": []}}]},
    {"choices": [{"text": 5}]},
    {"usage": 5},
    {"usage": {"prompt_tokens": -1}},
    {"usage": {"prompt_tokens": 10**40, "completion_tokens": True}},
    {"usage": {"input_tokens": "x", "prompt_tokens_details": 5, "completion_tokens_details": []}},
    {"error": 5},
    {"error": []},
    {"error": {"message": 5}},
    {"error": {"message": ["x"]}},
    5,
    "x",
    [],
    None,
]
STREAMS = [
    ("/v1/messages", ANTHROPIC_STREAM),
    ("/api/chat", OLLAMA_CHAT),
    ("/api/generate", {"model": "fake-model", "prompt": "x", "raw": True}),
    ("/v1/responses", RESPONSES_STREAM),
]


async def test_chunks_of_odd_shapes_never_break_a_translated_stream(
    make_gateway: Any, start_mock: Any
) -> None:
    """One chunk of a wrong shape amid a good stream, on every translated face: the stream
    goes on or ends with the face's error, its HTTP framing intact; never a 500."""
    sent: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        odd = b"data: " + json.dumps(sent["odd"]).encode() + b"\n\n"
        return await streaming(chunk("hi"), odd, chunk(finish="stop"), b"data: [DONE]\n\n")(request)

    gateway, _ = await fake_gateway(
        make_gateway,
        start_mock,
        handler,
        models="[{id: fake-model, capabilities: [chat, completions]}]",
    )
    failures = []
    for odd in ODD_CHUNKS:
        sent["odd"] = odd
        for path, body in STREAMS:
            response = await gateway.post(path, json=body, headers=AUTH)
            text = await response.text()
            if response.status != 200 or "Internal error" in text or "HTTP/1.1" in text:
                failures.append((path, odd, response.status, text[-300:]))
    assert not failures, failures
    assert (await status_of(gateway, "fake", "chat"))["in_flight"] == 0


ODD_REPLIES: list[Any] = [
    {"choices": 5},
    {"choices": [5]},
    {"choices": [{"message": 5}]},
    {"choices": [{"message": {"content": 5}}]},
    {"choices": [{"message": {"content": [5, {"text": 5}]}}]},
    {"choices": [{"message": {"content": "x", "tool_calls": 5}}]},
    {"choices": [{"message": {"content": "x", "tool_calls": [5]}}]},
    {
        "choices": [
            {"message": {"tool_calls": [{"id": 5, "function": {"name": "f", "arguments": 5}}]}}
        ]
    },
    {"choices": [{"message": {"tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}}]},
    {"choices": [{"message": {"content": "x", "refusal": 5}, "finish_reason": []}]},
    {
        "choices": [{"message": {"content": "x"}, "stop_reason": {}}],
        "usage": {"prompt_tokens": "x"},
    },
    {"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens_details": 5}},
    {"choices": [{"text": 5}]},
    [],
    5,
    "x",
    None,
]


async def test_whole_replies_of_odd_shapes_are_answers_or_502s(
    make_gateway: Any, start_mock: Any
) -> None:
    sent: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(sent["odd"])

    gateway, _ = await fake_gateway(
        make_gateway,
        start_mock,
        handler,
        models="[{id: fake-model, capabilities: [chat, completions]}]",
    )
    failures = []
    for odd in ODD_REPLIES:
        sent["odd"] = odd
        for path, body in STREAMS:
            response = await gateway.post(path, json={**body, "stream": False}, headers=AUTH)
            text = await response.text()
            if response.status not in (200, 502) or "Internal error" in text:
                failures.append((path, odd, response.status, text[-300:]))
    assert not failures, failures


# -- work a body can cause on the event loop ---------------------------------------------------


async def test_an_ollama_request_with_more_than_max_images_is_a_400(
    make_gateway: Any, start_mock: Any
) -> None:
    gateway, _ = await fake_gateway(make_gateway, start_mock, refusing)
    images = [IMAGE] * 501  # MAX_IMAGES is 500
    for path, body in (
        ("/api/generate", {"model": "fake-model", "prompt": "x", "images": images}),
        ("/api/chat", {"model": "fake-model", "messages": [{"role": "user", "images": images}]}),
        (
            "/api/chat",
            {
                "model": "fake-model",
                "messages": [{"role": "user", "images": [IMAGE]}] * len(images),
            },
        ),
    ):
        response = await gateway.post(path, json=body, headers=AUTH)
        assert response.status == 400, await response.text()
        assert "images" in assert_ollama_error(await response.json())
    messages = [{"role": "user", "content": "x"}] * 10_001  # MAX_MESSAGES is 10,000
    response = await gateway.post(
        "/api/chat", json={"model": "fake-model", "messages": messages}, headers=AUTH
    )
    assert response.status == 400
    assert "messages" in assert_ollama_error(await response.json())


@pytest.mark.timeout(120, method="thread")
async def test_a_body_of_a_million_tiny_ollama_images_does_not_hold_the_loop(
    make_gateway: Any, start_mock: Any
) -> None:
    """An 8 MiB body can hold a million four-character images: each was turned into a data
    URL part on the event loop (seconds of work). Probes of ``/healthz`` meanwhile must not
    be held past ``HELD_BOUND_S`` by the gateway (the strict parse of such a body alone,
    which holds the GIL, is a fraction of that)."""
    gateway, _ = await fake_gateway(make_gateway, start_mock, refusing)
    images = ["AAAA"] * (7 * 1024 * 1024 // 8)  # 7 MiB of JSON
    body = json.dumps({"model": "fake-model", "prompt": "x", "images": images}).encode()
    done = asyncio.Event()
    prober = asyncio.create_task(probe_healthz(gateway, done, minimum=20))
    gc.collect()
    gc.freeze()
    try:
        headers = {**AUTH, "Content-Type": "application/json"}
        response = await gateway.post("/api/generate", data=io.BytesIO(body), headers=headers)
        text = await response.text()
    finally:
        done.set()
        probes = await prober
        gc.unfreeze()
    held = max(probes.held_s)
    print(f"{len(probes.held_s)} probes; the longest held by the gateway {held * 1000:.0f} ms")
    assert held < HELD_BOUND_S, f"the loop was held {held:.2f} s"
    assert response.status == 400, text


async def test_a_large_body_is_translated_off_the_event_loop(
    default_mock_gateway: tuple[TestClient, TestServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A translated face walks every content block of a body: 300,000 Anthropic blocks took
    150 ms. A body over ``THREAD_PARSE_BYTES`` is walked in a worker thread, as it is
    parsed; a small one stays on the loop (a thread hop would cost it more)."""
    gateway, _ = default_mock_gateway
    loop_thread = threading.get_ident()
    walked: list[tuple[str, bool]] = []

    def spy(module: Any, name: str) -> None:
        real = getattr(module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            walked.append((name, threading.get_ident() == loop_thread))
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    spy(anthropic_module, "to_chat")
    spy(responses_api, "parse_request")
    blocks = [{"type": "text", "text": "a"}] * (THREAD_PARSE_BYTES // 20)
    large = {
        "model": "mock-llama",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": blocks}],
    }
    small = {"model": "mock-llama", "max_tokens": 5, "messages": MESSAGES}
    big_input = [{"role": "user", "content": [{"type": "input_text", "text": "a" * 70_000}]}]
    for path, body, name in (
        ("/v1/messages", large, "to_chat"),
        ("/v1/messages/count_tokens", large, "to_chat"),
        ("/v1/responses", {"model": "mock-llama", "input": big_input}, "parse_request"),
    ):
        walked.clear()
        response = await gateway.post(path, json=body, headers=AUTH)
        assert response.status == 200, (path, await response.text())
        assert walked == [(name, False)], (path, walked)  # before: on the loop's thread
    walked.clear()
    response = await gateway.post("/v1/messages", json=small, headers=AUTH)
    assert response.status == 200, await response.text()
    assert walked == [("to_chat", True)]
