"""Failure modes of the client's own request under ``/v1``: too large, malformed, unknown.

Bodies over the limit are 413, malformed bodies 400 that never reach the backend, unknown
models, routes and methods 404/405, each as the OpenAI error envelope with its own
``X-Request-Id``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestClient, TestServer

from sidecar.mock_backends.openai_server import RECEIVED

from .conftest import (
    CHAT,
    CHAT_PATH,
    REQUEST_ID,
    error_of,
    gateway_yaml,
    mock_backend_yaml,
    openai_client,
)

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
        ("POST", "/v1/embeddings/extra"),  # /v1/models/{id} is a route now
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


async def test_an_unhandled_error_logs_one_line_whatever_the_path_holds(
    gateway: TestClient,
    auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The diagnostics log names the path of a request that hit a bug: as sent, still
    percent-encoded, so a ``%0A`` in it cannot start a line of the caller's choosing."""
    from sidecar.music import api as music_api

    async def broken(request: Any, name: str) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(music_api, "_stream", broken)
    forged = "a%0A2026-12-03 00:00:00 CRITICAL forged line"
    response = await gateway.get(f"/music/{forged}", headers=auth)
    assert response.status == 500
    assert (await response.json())["error"]["code"] == "internal_error"
    (record,) = [r for r in caplog.records if r.name == "gateway.errors"]
    assert "\n" not in record.getMessage() and "a%0A2026" in record.getMessage()
