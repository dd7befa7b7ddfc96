"""The gateway's HTTP/1.1 client and stream relay where timing, addresses and reuse meet.

Timeouts (a stalled stream, a slow client, an unanswered connect), a name with several
addresses, stale keep-alive connections (plain and HTTPS), header and framing edge
cases, a request queued across a reload, and TLS wording. Everything runs on 127.0.0.0/8. The
``Pool`` tests talk to ``test_http1``'s raw backend; the others go through the app
factory (``make_gateway``).

Waits are on conditions and bounded. Four tests are about time itself and say where: a
stalled stream must end after ``stream_idle_s`` rather than ``read_s``, and a slow first
token must not end it before ``read_s``; a client that
reads nothing for longer than ``stream_idle_s`` must not make its backend idle; a name
with an unanswering first address must not take the whole connect timeout.

An unanswered connect is made on loopback with a listening socket whose accept queue is
full (``listen(0)`` and never ``accept``): Linux drops further SYNs, so a connect to it
neither completes nor fails, as with a host that drops packets.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.mock_backends import create_mock_app
from sidecar.routing.http1 import Connection, Disconnected, MalformedResponse, Pool, resolve
from sidecar.typedefs import REGISTRY, RELOADER

from . import test_http1
from .certs import issue, make_pki
from .conftest import (
    CHAT,
    CHAT_PATH,
    MODEL,
    TOKEN,
    assert_envelope,
    assert_no_address,
    assert_slots_free,
    backend_yaml,
    error_of,
    fake_gateway,
    gateway_yaml,
    mock_backend_yaml,
    status_of,
)
from .test_failures_streaming import chunk, sse, sse_data, start_sse
from .test_http1 import (
    WAIT_S,
    Peer,
    PeerHandler,
    RawBackend,
    StreamingBackend,
    answer_once,
    raw_stream_client,
    read_all,
    reply,
)

serve = test_http1.serve  # the raw backend's fixture, shared with test_http1
wait_for = test_http1.wait_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}
COMPLETION = json.dumps(
    {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()


def reset(peer: Peer) -> None:
    """Drop the peer's connection with a RST (``SO_LINGER`` 0), not a FIN."""
    sock = peer.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.writer.transport.abort()


def backend_connections(gateway: TestClient, name: str = "fake") -> set[Connection]:
    backend = gateway.app[REGISTRY].current.get(name)
    assert backend is not None
    connections: set[Connection] = backend.client.pool._open
    return connections


Unanswered = Callable[..., Awaitable[int]]


@pytest.fixture
async def unanswered() -> AsyncIterator[Unanswered]:
    """``await unanswered(host, port=0)``: a port on ``host`` where a connect is never
    answered (a listener with a full accept queue); its sockets are closed at teardown."""
    loop = asyncio.get_running_loop()
    sockets: list[socket.socket] = []

    async def make(host: str, port: int = 0) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sockets.append(listener)
        # A given port may still be held by an earlier test's closed connections
        # (TIME_WAIT), which would refuse the bind without this.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(0)
        address = listener.getsockname()
        for _ in range(64):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(probe)
            probe.setblocking(False)
            try:
                # A loopback connect the kernel takes completes at once; the bound only
                # decides that this one was not taken.
                await asyncio.wait_for(loop.sock_connect(probe, address), 0.25)
            except TimeoutError:
                return int(address[1])  # unanswered: the accept queue is full
        raise AssertionError("the accept queue never filled")

    yield make
    for sock in sockets:
        sock.close()


# -- 1. the stream-idle timeout applies from the first event on ----------------------------


async def test_a_stream_that_stalls_after_its_first_event_ends_after_stream_idle_s(
    make_gateway: Any, start_mock: Any, release: asyncio.Event
) -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        response = await start_sse(request)
        await response.write(sse(chunk("first ")))
        await release.wait()
        return response

    gateway, server = await fake_gateway(
        make_gateway, start_mock, stall, timeouts="{read_s: 10, stream_idle_s: 0.3}"
    )
    response = await gateway.post(CHAT_PATH, json={**CHAT, "stream": True}, headers=AUTH)
    assert response.status == 200
    # About time by design: read_s is 10 s, so an end within 3 s is the idle timeout's.
    try:
        async with asyncio.timeout(3):
            raw = await response.read()
    except TimeoutError:
        pytest.fail("the stalled stream was not ended within 3 s (stream_idle_s 0.3, read_s 10)")
    data = sse_data(raw)
    assert len(data) == 3, data
    assert json.loads(data[0]) == chunk("first ")
    message = assert_envelope(json.loads(data[1]), error_type="api_error", code="upstream_timeout")
    assert message == "backend 'fake' stream went idle within the configured timeout"
    assert_no_address(message, server)
    assert data[2] == "[DONE]"
    await assert_slots_free(gateway, admitted=1)


async def test_a_first_token_slower_than_stream_idle_s_is_waited_for_up_to_read_s(
    make_gateway: Any, start_mock: Any
) -> None:
    async def slow_first(request: web.Request) -> web.StreamResponse:
        response = await start_sse(request)
        # About time by design: a long prompt's prefill, longer than stream_idle_s (0.2 s)
        # and well within read_s (10 s). The stream's one timer first fires at 0.2 s.
        await asyncio.sleep(0.6)
        await response.write(sse(chunk("late ")) + b"data: [DONE]\n\n")
        return response

    gateway, _ = await fake_gateway(
        make_gateway, start_mock, slow_first, timeouts="{read_s: 10, stream_idle_s: 0.2}"
    )
    response = await gateway.post(CHAT_PATH, json={**CHAT, "stream": True}, headers=AUTH)
    assert response.status == 200
    async with asyncio.timeout(WAIT_S):
        data = sse_data(await response.read())
    assert [json.loads(data[0]), data[1]] == [chunk("late "), "[DONE]"], data
    await assert_slots_free(gateway, admitted=1)


# -- 2. a slow client does not make the backend look idle ----------------------------------


async def test_a_client_reading_slower_than_the_backend_writes_is_not_an_idle_backend(
    make_gateway: Any, start_mock: Any
) -> None:
    events = StreamingBackend(size=32 * 1024, count=512)  # 16 MiB: more than the buffers hold
    gateway, _ = await fake_gateway(
        make_gateway, start_mock, events.chat, timeouts="{read_s: 0.5, stream_idle_s: 0.3}"
    )
    loop = asyncio.get_running_loop()
    client = await raw_stream_client(gateway, close=True)
    try:

        def relay_holds_the_backend() -> bool:
            return events.writing and any(
                conn._paused and conn.transport is not None and not conn.transport.is_reading()
                for conn in backend_connections(gateway)
            )

        await wait_for(relay_holds_the_backend, "the relay to stop reading the backend")
        # About time by design: the client reads nothing for over three stream_idle_s
        # periods; no condition to wait on, the point is that this much time passes.
        await asyncio.sleep(1.0)
        assert not events.finished

        received = bytearray()
        async with asyncio.timeout(WAIT_S):
            while piece := await loop.sock_recv(client, 1024 * 1024):
                received += piece
    finally:
        client.close()
    answer_head, _, chunked_body = bytes(received).partition(b"\r\n\r\n")
    assert answer_head.startswith(b"HTTP/1.1 200 "), answer_head[:200]
    assert b"Transfer-Encoding: chunked" in answer_head
    data = sse_data(dechunk(chunked_body))
    assert b"stream went idle" not in chunked_body
    assert all(not item.startswith('{"error"') for item in data[-3:]), data[-3:]
    assert len(data) == events.count + 1 and data[-1] == "[DONE]", (len(data), data[-3:])
    assert events.finished


def dechunk(body: bytes) -> bytes:
    """A whole chunked HTTP/1.1 body, decoded."""
    pieces, at = [], 0
    while True:
        line_end = body.index(b"\r\n", at)
        size = int(body[at:line_end], 16)
        if size == 0:
            return b"".join(pieces)
        pieces.append(body[line_end + 2 : line_end + 2 + size])
        at = line_end + 2 + size + 2


# -- 3. a connect timeout is a timeout ----------------------------------------------------


async def test_a_connect_that_is_never_answered_is_a_504_timeout(
    make_gateway: Any, unanswered: Unanswered
) -> None:
    port = await unanswered("127.0.0.1")
    gateway = await make_gateway(
        gateway_yaml(
            backend_yaml(
                "fake",
                f"http://127.0.0.1:{port}/v1",
                models=f"[{MODEL}]",
                health="{readiness: false}",
                timeouts="{connect_s: 0.5}",
            )
        )
    )
    async with asyncio.timeout(WAIT_S):
        response = await gateway.post(CHAT_PATH, json=CHAT, headers=AUTH)
        message = await error_of(response, 504, error_type="api_error", code="upstream_timeout")
    assert message == "backend 'fake' did not answer within the configured timeout"
    assert_no_address(message, port=port)


# -- 4. a name with several addresses does not wait out the first ----------------------------


async def test_a_name_whose_first_address_never_answers_falls_over_to_the_next(
    unanswered: Unanswered, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(reply(b"ok"))
            await writer.drain()
            await reader.read()  # until the client closes
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.2", 0)
    pool = None
    try:
        port = server.sockets[0].getsockname()[1]
        await unanswered("127.0.0.1", port)  # the first address, on the same port
        loop = asyncio.get_running_loop()
        resolve = loop.getaddrinfo

        async def both_addresses(host: Any, *args: Any, **kwargs: Any) -> Any:
            if host != "dual.test":
                return await resolve(host, *args, **kwargs)
            return [
                (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port)),
                (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.2", port)),
            ]

        monkeypatch.setattr(loop, "getaddrinfo", both_addresses)
        pool = Pool("http", "dual.test", port, f"dual.test:{port}", None, 3.0)
        # About time by design: connect_s is 3 s; the next address is tried after 0.25 s.
        try:
            async with asyncio.timeout(1.5):
                response = await pool.request("GET", "/", {}, None)
        except TimeoutError:
            pytest.fail("no answer within 1.5 s: the second address was not tried in time")
        assert response.status == 200
        assert await read_all(response) == b"ok"
        response.close()
    finally:
        if pool is not None:
            pool.close()
        server.close()
        await server.wait_closed()


# -- 5. a stale keep-alive connection --------------------------------------------------------


def reset_on_the_second_request(answer: bytes) -> PeerHandler:
    """Answer a connection's first request with ``answer``; when a second arrives on it,
    reset the connection before any byte of an answer (a keep-alive connection the backend
    dropped just as the client reused it, made deterministic)."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer)
        await peer.request()
        reset(peer)

    return handler


async def test_a_get_on_a_stale_connection_is_retried_once_and_a_post_is_not(
    serve: Callable[[PeerHandler], Awaitable[RawBackend]],
) -> None:
    backend = await serve(reset_on_the_second_request(reply(b"ok")))
    pool = backend.pool()
    async with asyncio.timeout(WAIT_S):
        first = await pool.request("GET", "/one", {}, None)
        assert await read_all(first) == b"ok"
        first.close()
        assert len(pool._idle) == 1  # kept alive, for the next request

        again = await pool.request("GET", "/two", {}, None)  # dropped, then sent again
        assert again.status == 200
        assert await read_all(again) == b"ok"
        again.close()
    assert backend.accepted == 2
    assert [head.split(b" ", 2)[:2] for head in backend.heads] == [
        [b"GET", b"/one"],
        [b"GET", b"/two"],
        [b"GET", b"/two"],
    ]

    # A POST is not safe to repeat: it fails and goes out once.
    with pytest.raises(Disconnected) as failure:
        async with asyncio.timeout(WAIT_S):
            await pool.request("POST", "/three", {}, b"{}")
    assert not failure.value.head_seen
    assert failure.value.reused
    assert backend.accepted == 2
    assert [head.split(b" ", 1)[0] for head in backend.heads].count(b"POST") == 1


class TlsRawBackend(RawBackend):
    """``test_http1``'s raw backend behind TLS."""

    def __init__(self, handler: PeerHandler, context: ssl.SSLContext) -> None:
        super().__init__(handler)
        self.context = context

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]


async def test_a_post_on_a_dropped_https_keepalive_connection_is_not_a_tls_error(
    make_gateway: Any, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "certs")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server.cert_path, pki.server.key_path)

    answer = reply(COMPLETION, b"Content-Type: application/json")
    backend = TlsRawBackend(reset_on_the_second_request(answer), context)
    await backend.start()
    try:
        gateway = await make_gateway(
            gateway_yaml(
                backend_yaml(
                    "secure",
                    f"https://127.0.0.1:{backend.port}/v1",
                    models=f"[{MODEL}]",
                    health="{readiness: false}",
                    tls="{ca_bundle: certs/ca.pem}",
                )
            )
        )
        async with asyncio.timeout(WAIT_S):
            response = await gateway.post(CHAT_PATH, json=CHAT, headers=AUTH)
            assert response.status == 200, await response.text()
            assert (await response.json())["choices"][0]["message"]["content"] == "ok"
            response = await gateway.post(CHAT_PATH, json=CHAT, headers=AUTH)
            message = await error_of(response, 502, error_type="api_error", code="upstream_error")
        assert message == "backend 'secure' reset the connection"
        assert backend.accepted == 1  # one connection, reused; the POST was not sent again
        assert len(backend.heads) == 2
        assert not backend.errors, backend.errors
    finally:
        await backend.close()


# -- 6. a second Content-Encoding header -------------------------------------------------------


async def test_a_second_content_encoding_header_is_refused(
    serve: Callable[[PeerHandler], Awaitable[RawBackend]],
) -> None:
    coded = gzip.compress(b'{"a": 1}')
    backend = await serve(
        answer_once(reply(coded, b"Content-Encoding: identity", b"Content-Encoding: gzip"))
    )
    pool = backend.pool()
    with pytest.raises(MalformedResponse, match="gzip"):
        async with asyncio.timeout(WAIT_S):
            await pool.request("GET", "/", {}, None)


# -- 7. a reset in a body delimited by the connection's end ------------------------------------


async def test_a_reset_in_a_close_delimited_body_is_an_error_not_its_end(
    serve: Callable[[PeerHandler], Awaitable[RawBackend]],
) -> None:
    go = asyncio.Event()

    async def reset_mid_body(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
        await peer.send(b"A" * 1000)
        await go.wait()
        reset(peer)

    backend = await serve(reset_mid_body)
    pool = backend.pool()
    async with asyncio.timeout(WAIT_S):
        response = await pool.request("GET", "/", {}, None)
        assert response.content_length is None
        received = b""
        while len(received) < 1000:
            piece = await response.readany()
            assert piece, received
            received += piece
        go.set()
        with pytest.raises(Disconnected) as failure:
            await response.readany()
    assert failure.value.reset
    response.close()


# -- 8. [DONE] ends a stream only as an event of its own ---------------------------------------


async def test_done_inside_another_event_does_not_end_the_stream(
    make_gateway: Any, start_mock: Any
) -> None:
    runs = [
        b"data: partial\ndata: [DONE]\n\n",  # one event whose second line is [DONE]
        sse(chunk("whole")) + b"data: [DONE]\n\n",  # an event, then [DONE] on its own
    ]

    async def one_run(request: web.Request) -> web.StreamResponse:
        response = await start_sse(request)
        await response.write(runs[int((await request.json())["messages"][0]["content"])])
        return response

    gateway, _ = await fake_gateway(make_gateway, start_mock, one_run)

    def ask(index: int) -> dict[str, Any]:
        return {**CHAT, "stream": True, "messages": [{"role": "user", "content": str(index)}]}

    async with asyncio.timeout(WAIT_S):
        response = await gateway.post(CHAT_PATH, json=ask(0), headers=AUTH)
        assert response.status == 200
        early = sse_data(await response.read())
        response = await gateway.post(CHAT_PATH, json=ask(1), headers=AUTH)
        assert response.status == 200
        whole = sse_data(await response.read())

    assert early[:2] == ["partial", "[DONE]"] and len(early) == 4, early
    message = assert_envelope(json.loads(early[2]), error_type="api_error", code="upstream_error")
    assert message == "backend 'fake' ended the stream early"
    assert early[3] == "[DONE]"
    assert whole == [json.dumps(chunk("whole")), "[DONE]"]


# -- 9. a request admitted before a reload ------------------------------------------------------


async def test_a_request_queued_across_a_reload_still_reaches_the_backend(
    make_gateway: Any, start_mock: Any, tmp_path: Path
) -> None:
    hold = asyncio.Event()
    arrived: list[str] = []

    async def chat(request: web.Request) -> web.Response:
        arrived.append((await request.json())["messages"][0]["content"])
        if len(arrived) == 1:
            await hold.wait()
        return web.Response(body=COMPLETION, content_type="application/json")

    app = web.Application()
    app.router.add_post(CHAT_PATH, chat)
    server = await start_mock(app)

    def config(connect_s: int) -> str:
        return gateway_yaml(
            mock_backend_yaml(
                "fake",
                server,
                models=f"[{MODEL}]",
                health="{readiness: false}",
                limits="{chat: 1}",
                queue="{max: 1, timeout_s: 30}",
                timeouts=f"{{connect_s: {connect_s}}}",
            )
        )

    def ask(text: str) -> Awaitable[Any]:
        payload = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
        return asyncio.ensure_future(gateway.post(CHAT_PATH, json=payload, headers=AUTH))

    gateway = await make_gateway(config(5))
    app_state = gateway.server.app
    old_client = app_state[REGISTRY].current.get("fake").client
    first = ask("first")
    try:
        await wait_for(lambda: arrived == ["first"], "the first request to hold the slot")
        second = ask("second")

        async def second_queued() -> bool:
            return bool((await status_of(gateway, "fake", "chat"))["queued"] == 1)

        await wait_for(second_queued, "the second request to wait for the slot")
        # A new connect timeout is a new connection key: the client is replaced and retired.
        (tmp_path / "gateway.yaml").write_text(config(4))
        outcome = await app_state[RELOADER].reload("test")
        assert outcome.ok, outcome
        assert app_state[REGISTRY].current.get("fake").client is not old_client
    finally:
        hold.set()
    async with asyncio.timeout(WAIT_S):
        answers = await asyncio.gather(first, second)
        for response in answers:
            assert response.status == 200, await response.text()
    assert arrived == ["first", "second"]
    await wait_for(lambda: old_client.closed, "the retired client to close once idle")


async def test_a_name_for_a_link_local_address_keeps_its_scope_through_the_connect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvloop's ``sock_connect`` resolves an address again from host and port alone: a
    link-local address resolved from a name (an mDNS ``.local`` host) must carry its scope
    in the host, or the connect fails with EINVAL. Nothing is sent anywhere: the scoped
    host is parsed back numerically, which is what that second resolution does."""
    loop = asyncio.get_running_loop()
    scope = 4

    async def link_local(host: Any, port: Any, **kwargs: Any) -> Any:
        assert host == "gpu-box.local"
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::fc:ff:fe00:1", port, 0, scope)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.9", port)),
        ]

    monkeypatch.setattr(loop, "getaddrinfo", link_local)
    first, second = await resolve(loop, "gpu-box.local", 8000)
    host, port = first[4][:2]
    assert host == f"fe80::fc:ff:fe00:1%{scope}"
    again = socket.getaddrinfo(
        host, port, socket.AF_INET6, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST
    )
    assert again[0][4] == ("fe80::fc:ff:fe00:1", 8000, 0, scope)
    assert second[4] == ("127.0.0.9", 8000)  # other addresses pass through as they are


# -- 10. a certificate verify failure names no host or address --------------------------------


async def _tls_failure(
    make_gateway: Any, aiohttp_server: Any, cert: Any, ca_bundle: str
) -> tuple[str, Any]:
    """A chat through a gateway that trusts ``ca_bundle`` to a fake backend serving HTTPS
    with ``cert``: the 502's message (a TLS error) and the backend's server."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert.cert_path, cert.key_path)
    server = await aiohttp_server(create_mock_app(), ssl=context)
    gateway = await make_gateway(
        gateway_yaml(
            backend_yaml(
                "secure",
                str(server.make_url("/v1")),
                models="[mock-llama]",
                health="{readiness: false}",
                tls=f"{{ca_bundle: {ca_bundle}}}",
            )
        )
    )
    async with asyncio.timeout(WAIT_S):
        response = await gateway.post(CHAT_PATH, json={**CHAT, "model": "mock-llama"}, headers=AUTH)
        message = await error_of(response, 502, error_type="api_error", code="upstream_tls_error")
    return message, server


async def test_a_certificate_for_another_name_fails_without_quoting_the_address(
    make_gateway: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "certs")
    other = issue(pki.ca, tmp_path / "certs", "other", server=True, hosts=("other.example",))
    message, server = await _tls_failure(make_gateway, aiohttp_server, other, "certs/ca.pem")
    assert message.startswith("TLS failure talking to backend 'secure': certificate verify failed")
    assert_no_address(message, server)
    reason = message.partition("certificate verify failed")[2]
    assert "other.example" not in reason
    assert not re.search(r"'[^' ]*'|\"[^\" ]*\"", reason), reason  # no quoted name at all


async def test_an_untrusted_issuer_points_at_the_backends_ca_bundle(
    make_gateway: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "certs")
    # Not the CA that signed the server's certificate.
    message, _ = await _tls_failure(make_gateway, aiohttp_server, pki.server, "certs/wrong-ca.pem")
    assert message == (
        "TLS failure talking to backend 'secure': certificate verify failed: the certificate's"
        " issuer is not trusted (see the backend's tls.ca_bundle)"
    )
