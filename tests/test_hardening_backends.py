"""Hardening item 8: backends are not trusted.

Each test is a misbehaving model server — a real aiohttp server on loopback — and a number
that proves the gateway held: requests that reached a redirect's target (0), bytes a
backend managed to push into one endless server-sent event before the gateway hung up
(bounded), secrets and paths that reached the client (0), a 429 that stayed a rate limit,
and responses that carried a ``Server`` header (0).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Any

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.routing.upstream import MAX_ERROR_MESSAGE, MAX_SSE_EVENT_BYTES

from .conftest import TOKEN, GatewayFactory, backend_yaml, gateway_yaml, openai_client
from .conftest import eventually as wait_until_true

BEARER = {"Authorization": f"Bearer {TOKEN}"}
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
NO_PROBES = "{readiness: false}"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
POLL_S = 0.02
ATTEMPTS = 500  # bounded waits (at most ATTEMPTS x POLL_S), never a pass/fail on time

Starter = Callable[..., Awaitable[TestServer]]


def origin(server: TestServer) -> str:
    return f"http://{server.host}:{server.port}"


def llm_yaml(name: str, server: TestServer, **fields: str) -> str:
    fields.setdefault("class", "mock")
    fields.setdefault("models", "[{id: m, capabilities: [chat, completions, embeddings]}]")
    fields.setdefault("health", NO_PROBES)
    return backend_yaml(name, f"{origin(server)}/v1", **fields)


eventually = functools.partial(wait_until_true, attempts=ATTEMPTS, poll_s=POLL_S)


async def backend_status(client: TestClient, name: str) -> dict[str, Any]:
    response = await client.get("/v1/gateway/status", headers=BEARER)
    body = await response.json()
    return next(b for b in body["backends"] if b["name"] == name)


# -- redirects ------------------------------------------------------------------------------


async def test_redirects_are_never_followed_by_any_client(
    make_gateway: GatewayFactory, aiohttp_server: Starter
) -> None:
    """Chat, stream, embeddings, images, music, its audio, an http tool and a probe all meet
    a backend that answers every request with a redirect to a second server."""
    target_hits: list[str] = []

    async def target(request: web.Request) -> web.Response:
        target_hits.append(request.path)
        return web.json_response({"data": [{"id": "m"}], "status": "ok"})

    target_app = web.Application()
    target_app.router.add_route("*", "/{tail:.*}", target)
    target_server = await aiohttp_server(target_app)
    secret_location = f"{origin(target_server)}/internal-only/admin?key=s3cr3t"
    redirected: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        redirected.append(request.path)
        return web.Response(status=307, headers={"Location": secret_location})

    hostile_app = web.Application()
    hostile_app.router.add_route("*", "/{tail:.*}", redirect)
    hostile = await aiohttp_server(hostile_app)
    tool = {"version": "1", "http": {"backend": "llm", "path": "/tools/x"}}
    config = (
        gateway_yaml(
            llm_yaml("llm", hostile),
            backend_yaml("pics", origin(hostile), protocol="openai_images", health=NO_PROBES),
            backend_yaml("music", origin(hostile), protocol="heartmula", health=NO_PROBES),
            # Probed: its readiness path (/v1/models) redirects too.
            llm_yaml("probed", hostile, models="[{id: p, capabilities: [chat]}]", health="{}"),
        )
        + f"tools: {json.dumps({'remote': tool})}\n"
    )
    client = await make_gateway(config, ui_ip_allowlist=LOOPBACK)

    calls = [
        ("/v1/chat/completions", CHAT),
        ("/v1/chat/completions", {**CHAT, "stream": True}),
        ("/v1/embeddings", {"model": "m", "input": "hi"}),
        ("/v1/images/generations", {"model": "pics", "prompt": "a cat", "size": "64x64"}),
        ("/v1/music/generations", {"prompt": "calm piano", "duration": 2}),
    ]
    answered = 0
    for path, payload in calls:
        response = await client.post(path, json=payload, headers=BEARER)
        text = await response.text()
        assert response.status == 502, (path, text)
        error = json.loads(text)["error"]
        assert error["code"] == "upstream_redirect", (path, error)
        assert "redirect" in error["message"], error
        assert "internal-only" not in text and "s3cr3t" not in text, text
        answered += 1
    audio = await client.get("/ui/heartmula/audio/song.wav")
    audio_text = await audio.text()
    assert audio.status == 502 and "upstream_redirect" in audio_text, audio_text
    assert "s3cr3t" not in audio_text
    response = await client.post("/v1/tools/remote", json={"arguments": {}}, headers=BEARER)
    outcome = await response.json()
    assert response.status == 200 and outcome["ok"] is False, outcome
    assert "redirect" in outcome["error"]["message"] and "s3cr3t" not in json.dumps(outcome)

    async def probe_failed() -> bool:
        health = (await backend_status(client, "probed"))["health"]
        return health["checked_at"] is not None and health["state"] != "ready"

    await eventually(probe_failed, "the redirecting readiness probe to fail")
    health = (await backend_status(client, "probed"))["health"]
    assert "redirect" in health["error"], health
    assert answered == len(calls)
    assert len(redirected) >= len(calls) + 3  # every call reached the hostile server ...
    assert target_hits == []  # ... and not one request followed it to the target


# -- one server-sent event is capped --------------------------------------------------------


class Flood:
    """A chat backend that streams one event of ``size`` bytes in 64 KiB writes, then a
    normal event and [DONE]; it records how many bytes the gateway let it write."""

    def __init__(self, size: int, *, newline: bool) -> None:
        self.size = size
        self.newline = newline
        self.sent = 0
        self.done = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.chat)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = b"a" * 65536
        try:
            await response.write(b"data: ")
            while self.sent < self.size:
                await response.write(chunk)
                self.sent += len(chunk)
            if self.newline:
                await response.write(b"\n\n")
            await response.write(b'data: {"choices": []}\n\ndata: [DONE]\n\n')
        except (ConnectionError, RuntimeError):
            pass  # the gateway hung up, as it should
        finally:
            self.done.set()
        return response


@pytest.mark.parametrize(
    ("size", "newline"),
    [(10 * 1024 * 1024, True), (512 * 1024 * 1024, False)],
    ids=["one-10MB-event", "endless-line"],
)
async def test_one_huge_event_ends_the_stream_with_an_error_and_done(
    make_gateway: GatewayFactory, aiohttp_server: Starter, size: int, newline: bool
) -> None:
    flood = Flood(size, newline=newline)
    server = await aiohttp_server(flood.app)
    client = await make_gateway(gateway_yaml(llm_yaml("llm", server)))
    response = await client.post(
        "/v1/chat/completions", json={**CHAT, "stream": True}, headers=BEARER
    )
    assert response.status == 200
    received = await response.read()
    assert len(received) < 64 * 1024, len(received)  # not one byte of the flood was relayed
    events = [e for e in received.decode().split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "data: [DONE]", events
    error = json.loads(events[-2][6:])["error"]
    assert error["code"] == "upstream_event_too_large", error
    await asyncio.wait_for(flood.done.wait(), 30)
    # The gateway read at most the cap (plus socket buffers) and then hung up: the
    # endless backend was stopped far short of what it meant to send.
    assert flood.sent < 64 * 1024 * 1024, flood.sent
    if not newline:
        assert flood.sent < size
    stats = (await backend_status(client, "llm"))["capabilities"]["chat"]
    assert stats["in_flight"] == 0, stats


async def test_an_event_just_under_the_cap_is_relayed_whole(
    make_gateway: GatewayFactory, aiohttp_server: Starter
) -> None:
    """The cap is a cap, not a smaller limit: 900 KiB of content in one event passes."""
    content = "x" * (900 * 1024)

    async def chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        event = {"choices": [{"index": 0, "delta": {"content": content}}]}
        await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app)
    client = await make_gateway(gateway_yaml(llm_yaml("llm", server)))
    response = await client.post(
        "/v1/chat/completions", json={**CHAT, "stream": True}, headers=BEARER
    )
    received = await response.read()
    assert len(content) < MAX_SSE_EVENT_BYTES < len(received) + MAX_SSE_EVENT_BYTES
    assert content.encode() in received and received.endswith(b"data: [DONE]\n\n")


# -- error text ------------------------------------------------------------------------------

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/llm/venv/lib/python3.11/site-packages/server.py", line 88, in handle\n'
    "    load(key='sk-live-9f8e7d6c5b4a39281706f5e4d3c2b1a0')\n"
    '  File "/srv/llm/models/loader.py", line 12, in load\n'
    "    raise RuntimeError(msg)\n"
    "RuntimeError: CUDA out of memory while loading /srv/llm/models/llama-70b.gguf\n"
)
LEAKS = (
    "Traceback",
    'File "',
    "/srv/",
    "/etc/",
    "/home/",
    "sk-live",
    "9f8e7d6c5b4a",
    "hunter2",
    "eyJhbGci",
    "0123456789abcdef0123456789abcdef",
    "<html",
    "10.1.2.3",
)
ERROR_REPLIES = [
    pytest.param(500, "text/plain", TRACEBACK, 502, "CUDA out of memory", id="500-traceback"),
    pytest.param(
        400,
        "application/json",
        json.dumps(
            {
                "error": {
                    "message": "context too long; config at /etc/llm/keys.toml, "
                    "password=hunter2, key 0123456789abcdef0123456789abcdef, "
                    "see http://10.1.2.3:8000/debug",
                    "type": "invalid_request_error",
                }
            }
        ),
        400,
        "context too long",
        id="400-json-with-secrets",
    ),
    pytest.param(
        422,
        "application/json",
        json.dumps(
            {
                "detail": "Authorization Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9."
                "c2lnbmF0dXJlLXNpZ25hdHVyZQ rejected for /home/llm/app"
            }
        ),
        422,
        "rejected",
        id="422-fastapi-detail",
    ),
    pytest.param(
        503,
        "text/html",
        "<html><body><h1>503</h1><pre>" + TRACEBACK + "</pre></body></html>",
        502,
        "503",
        id="503-html-page",
    ),
    pytest.param(
        400, "text/plain", "model overloaded " + "blah " * 5000, 400, "overloaded", id="400-25KB"
    ),
]


@pytest.mark.parametrize(("status", "content_type", "text", "expected", "kept"), ERROR_REPLIES)
async def test_a_backends_error_text_reaches_the_client_only_as_a_clean_message(
    make_gateway: GatewayFactory,
    aiohttp_server: Starter,
    status: int,
    content_type: str,
    text: str,
    expected: int,
    kept: str,
) -> None:
    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=status, text=text, content_type=content_type)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", fail)
    server = await aiohttp_server(app)
    client = await make_gateway(gateway_yaml(llm_yaml("llm", server)))
    for stream in (False, True):
        response = await client.post(
            "/v1/chat/completions", json={**CHAT, "stream": stream}, headers=BEARER
        )
        body = await response.text()
        assert response.status == expected, body
        message = json.loads(body)["error"]["message"]
        assert kept in message, message
        leaked = [leak for leak in LEAKS if leak in body]
        assert leaked == [], (leaked, body)
        assert len(message) <= MAX_ERROR_MESSAGE + 40, len(message)  # + "backend 'llm': "


@pytest.mark.parametrize(
    "text",
    ["a." * 512 * 1024, "\n" * 64 * 1024 + "ValueError: the end", 'File "' * 100_000],
    ids=["dotted-1MiB", "newlines-64KiB", "file-quotes-600KB"],
)
async def test_error_text_built_to_make_regexes_backtrack_is_cleaned_at_once(
    make_gateway: GatewayFactory, aiohttp_server: Starter, text: str
) -> None:
    """Text shaped to make URL or traceback patterns backtrack (seconds per 16 KB before,
    hours per MiB): the gateway answers with a capped message, and the loop keeps
    answering ``/healthz`` meanwhile (the suite's timeout fails a stalled loop)."""
    body = json.dumps({"error": {"message": text}})

    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=500, text=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", fail)
    server = await aiohttp_server(app)
    client = await make_gateway(gateway_yaml(llm_yaml("llm", server)))
    replies = await asyncio.gather(
        *(client.post("/v1/chat/completions", json=CHAT, headers=BEARER) for _ in range(4)),
        client.get("/healthz"),
    )
    *errors, health = replies
    assert health.status == 200
    for response in errors:
        message = (await response.json())["error"]["message"]
        assert response.status == 502 and len(message) <= MAX_ERROR_MESSAGE + 40, message


# -- 429 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("7", "7"), ("99999999", "3600"), ("9" * 5000, "3600"), ("soon", "1")],
)
async def test_a_backends_429_stays_a_rate_limit_error(
    make_gateway: GatewayFactory, aiohttp_server: Starter, retry_after: str, expected: str
) -> None:
    async def limited(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": {"message": "quota exhausted", "type": "rate_limit_error"}},
            status=429,
            headers={"Retry-After": retry_after},
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", limited)
    server = await aiohttp_server(app)
    client = await make_gateway(gateway_yaml(llm_yaml("llm", server)))
    response = await client.post("/v1/chat/completions", json=CHAT, headers=BEARER)
    error = (await response.json())["error"]
    assert response.status == 429
    assert (error["type"], error["code"]) == ("rate_limit_error", "upstream_rate_limited")
    assert "quota exhausted" in error["message"]
    assert response.headers["Retry-After"] == expected
    async with openai_client(client) as sdk:
        with pytest.raises(openai.RateLimitError):
            await sdk.chat.completions.create(**CHAT)  # type: ignore[call-overload]


# -- no Server header ------------------------------------------------------------------------


async def test_no_response_carries_a_server_header(
    make_gateway: GatewayFactory, aiohttp_server: Starter, start_mock: Starter
) -> None:
    """Successes, errors, streams, the UI, /mcp and the audio proxy (whose backend sends
    its own Server header): not one response names a server."""

    async def audio(request: web.Request) -> web.Response:
        return web.Response(body=b"RIFF0000WAVE", headers={"Server": "LeakyBackend/9.9"})

    music_app = web.Application()
    music_app.router.add_get("/audio/{name}", audio)
    music = await aiohttp_server(music_app)
    llm = await start_mock()
    config = gateway_yaml(
        backend_yaml(
            "mock",
            str(llm.make_url("/v1")),
            **{"class": "mock", "models": "[{id: m, capabilities: [chat, embeddings]}]"},
        ),
        backend_yaml("music", origin(music), protocol="heartmula", health=NO_PROBES),
    )
    client = await make_gateway(config, ui_ip_allowlist=LOOPBACK)
    rpc = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    requests: list[tuple[str, str, dict[str, str], Any]] = [
        ("GET", "/healthz", {}, None),
        ("GET", "/readyz", {}, None),
        ("GET", "/v1/models", BEARER, None),
        ("GET", "/v1/models", {}, None),  # 401
        ("GET", "/v1/nothing", BEARER, None),  # 404
        ("DELETE", "/v1/models", BEARER, None),  # 405
        ("POST", "/v1/chat/completions", BEARER, CHAT),
        ("POST", "/v1/chat/completions", BEARER, {**CHAT, "stream": True}),
        ("POST", "/v1/chat/completions", BEARER, {"model": 5}),  # 400
        ("POST", "/mcp", BEARER, rpc),
        ("GET", "/ui", {}, None),
        ("GET", "/ui/heartmula/audio/song.wav", {}, None),
        ("GET", "/openapi.json", {}, None),
    ]
    statuses = []
    for method, path, headers, payload in requests:
        response = await client.request(method, path, headers=headers, json=payload)
        await response.read()
        statuses.append(response.status)
        assert "Server" not in response.headers, (path, response.headers.get("Server"))
    assert {200, 400, 401, 404, 405} <= set(statuses), statuses
    assert len(statuses) == 13

    # And on the wire, for a plain request.
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    head = raw.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 200") and b"\r\nserver:" not in head, head


async def test_an_error_event_mid_stream_is_cleaned_too(
    make_gateway: GatewayFactory, aiohttp_server: Starter
) -> None:
    """vLLM and others report a failure inside the stream: only a clean message passes."""
    failure = {"error": {"message": TRACEBACK, "type": "InternalServerError", "code": 500}}
    frames = [
        {"choices": [{"index": 0, "delta": {"content": "partial"}}], "error": None},
        failure,
    ]

    async def chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for frame in frames:
            await response.write(b"data: " + json.dumps(frame).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app)
    client = await make_gateway(gateway_yaml(llm_yaml("llm", server)))
    response = await client.post(
        "/v1/chat/completions", json={**CHAT, "stream": True}, headers=BEARER
    )
    received = (await response.read()).decode()
    events = [e[6:] for e in received.split("\n\n") if e.startswith("data: ")]
    assert len(events) == 3 and events[-1] == "[DONE]", events
    assert json.loads(events[0]) == frames[0]  # a normal chunk passes untouched
    error = json.loads(events[1])["error"]
    assert error["message"].startswith("RuntimeError: CUDA out of memory"), error
    assert (error["type"], error["code"]) == ("InternalServerError", None)
    assert [leak for leak in LEAKS if leak in received] == [], received
