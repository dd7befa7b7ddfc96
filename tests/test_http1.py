"""The gateway's own HTTP/1.1 client (``routing/http1.py``) against hostile and broken backends.

Everything goes through real sockets on 127.0.0.1. The ``Pool``/``Response`` tests talk to a
raw ``asyncio`` server that reads the request head and writes crafted bytes, so each
response is exactly what a broken or hostile backend would send; the gateway tests go
through the app factory (``make_gateway``) in front of a real aiohttp fake backend.

Nothing waits on time: every wait is on a condition (``eventually``, events, futures),
bounded so that a broken client fails the test instead of hanging it. A few checks look
inside a ``Connection`` (``_buffered``, ``_paused``, the pool's ``_open`` and ``_idle``):
that is the only way to see how much the client holds and whether it stopped reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import hashlib
import json
import re
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.routing import http1
from sidecar.routing.http1 import (
    HIGH_WATER,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    MAX_INTERIM,
    Connection,
    Disconnected,
    MalformedResponse,
    Pool,
    Response,
)
from sidecar.typedefs import REGISTRY

from .conftest import (
    CHAT,
    CHAT_PATH,
    TOKEN,
    assert_slots_free,
    eventually,
    fake_gateway,
    status_of,
)

WAIT_S = 10.0  # a bound for what should happen almost at once
READ_MAX = 256 * 1024  # asyncio's largest single socket read (selector_events max_size)
wait_for = functools.partial(eventually, attempts=1000, poll_s=0.01)


# -- a raw backend -----------------------------------------------------------------------------


class Peer:
    """One connection accepted by a ``RawBackend``."""

    def __init__(
        self, backend: RawBackend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.backend = backend
        self.reader = reader
        self.writer = writer

    async def request(self) -> bytes:
        """Read one request head (and its Content-Length body); record the head."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        self.backend.heads.append(head)
        length = re.search(rb"(?im)^content-length:\s*(\d+)\r$", head)
        if length:
            await self.reader.readexactly(int(length.group(1)))
        return head

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until_client_closes(self) -> None:
        """Until the client closes its end (EOF or a reset); nothing it sends is kept."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass


PeerHandler = Callable[[Peer], Awaitable[None]]


class RawBackend:
    """An ``asyncio.start_server`` on 127.0.0.1, port 0, running ``handler`` per connection;
    counts the connections it accepted and keeps every request head it read."""

    def __init__(self, handler: PeerHandler) -> None:
        self.handler = handler
        self.accepted = 0
        self.heads: list[bytes] = []
        self.errors: list[BaseException] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pools: list[Pool] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(Peer(self, reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: what several tests make it do
        except asyncio.CancelledError:
            pass  # teardown
        except Exception as exc:
            self.errors.append(exc)
        finally:
            writer.close()

    def pool(self) -> Pool:
        """A client pool for this backend, closed at teardown."""
        pool = Pool("http", "127.0.0.1", self.port, f"127.0.0.1:{self.port}", None, 5.0)
        self._pools.append(pool)
        return pool

    async def close(self) -> None:
        for pool in self._pools:
            pool.close()
        await wait_for(
            lambda: not any(pool._open for pool in self._pools), "the client's connections to close"
        )
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[PeerHandler], Awaitable[RawBackend]]]:
    """``await serve(handler)``: a started ``RawBackend``, closed (with its pools) at teardown."""
    started: list[RawBackend] = []

    async def start(handler: PeerHandler) -> RawBackend:
        backend = RawBackend(handler)
        await backend.start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        await backend.close()
    for backend in started:
        assert not backend.errors, backend.errors


def reply(body: bytes = b"ok", *headers: bytes, status: bytes = b"200 OK") -> bytes:
    """A whole response with a Content-Length body."""
    lines = [b"HTTP/1.1 " + status, *headers, b"Content-Length: %d" % len(body)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(piece), piece) for piece in pieces)


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def answer_once(response: bytes) -> PeerHandler:
    """Read one request, send ``response``, then wait for the client to hang up."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(response)
        await peer.until_client_closes()

    return handler


def answer_each(*responses: bytes) -> PeerHandler:
    """Answer requests on one connection in turn with ``responses`` (cycling)."""

    async def handler(peer: Peer) -> None:
        index = 0
        while True:
            try:
                await peer.request()
            except asyncio.IncompleteReadError:
                return  # the client closed the connection
            await peer.send(responses[index % len(responses)])
            index += 1

    return handler


async def read_all(response: Response) -> bytes:
    pieces = []
    async with asyncio.timeout(WAIT_S):
        while piece := await response.readany():
            pieces.append(piece)
    return b"".join(pieces)


async def get(pool: Pool, target: str = "/") -> Response:
    async with asyncio.timeout(WAIT_S):
        return await pool.request("GET", target, {}, None)


def the_connection(pool: Pool) -> Connection:
    """The pool's one open connection."""
    (conn,) = pool._open
    return conn


# -- 1. the response head's size -----------------------------------------------------------


@pytest.mark.parametrize("shape", ["long-header-lines", "one-endless-value"])
async def test_a_head_over_max_head_bytes_fails_and_reading_stops_there(
    serve: Any, monkeypatch: pytest.MonkeyPatch, shape: str
) -> None:
    """The client reads at most MAX_HEAD_BYTES of head plus the one read that crossed it,
    then fails and hangs up: the backend cannot make it hold an endless head."""
    reads: list[int] = []

    class Counting(Connection):
        def data_received(self, data: bytes) -> None:
            reads.append(len(data))
            super().data_received(data)

    monkeypatch.setattr(http1, "Connection", Counting)
    total = 32 * 1024 * 1024
    written = 0
    finished = asyncio.Event()

    async def endless_head(peer: Peer) -> None:
        nonlocal written
        await peer.request()
        peer.writer.write(
            b"HTTP/1.1 200 OK\r\n" + (b"X-Pad: " if shape == "one-endless-value" else b"")
        )
        try:
            line = 0
            while written < total:
                if shape == "long-header-lines":  # 8 KiB lines: too few to pass MAX_HEADERS
                    piece = b"X-Pad-%d: %b\r\n" % (line, b"a" * 8000)
                    line += 1
                else:
                    piece = b"a" * 65536
                await peer.send(piece)
                written += len(piece)
            await peer.until_client_closes()
        finally:
            finished.set()

    backend = await serve(endless_head)
    with pytest.raises(MalformedResponse, match="head too large"):
        await get(backend.pool())
    assert sum(reads) - reads[-1] <= MAX_HEAD_BYTES, reads
    assert sum(reads) <= MAX_HEAD_BYTES + READ_MAX, reads
    # The client hung up: the backend's writes failed long before it wrote everything.
    await asyncio.wait_for(finished.wait(), WAIT_S)
    assert written < total


@pytest.mark.parametrize(
    ("count", "accepted"),
    [pytest.param(MAX_HEADERS, True, id="max"), pytest.param(MAX_HEADERS + 1, False, id="max+1")],
)
async def test_more_than_max_headers_lines_fail(serve: Any, count: int, accepted: bool) -> None:
    headers = [b"X-H-%d: v" % n for n in range(count - 1)]  # Content-Length is one more
    backend = await serve(answer_once(reply(b"body", *headers)))
    pool = backend.pool()
    if accepted:
        response = await get(pool)
        assert len(response.headers) == count
        assert await read_all(response) == b"body"
        response.close()
    else:
        with pytest.raises(MalformedResponse, match="too many response headers"):
            await get(pool)


# -- 2. status lines and interim responses -------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n", id="letters-in-status"),
        pytest.param(b"HTTP/1.1\r\nContent-Length: 0\r\n\r\n", id="no-status"),
        pytest.param(b"ICY 200 OK\r\nContent-Length: 0\r\n\r\n", id="not-http"),
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", id="ssh-banner"),
        pytest.param(b"\x15\x03\x03\x00\x02\x02\x46", id="tls-alert"),
        pytest.param(b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n", id="header-without-colon"),
    ],
)
async def test_an_invalid_status_line_or_head_is_malformed(serve: Any, head: bytes) -> None:
    backend = await serve(answer_once(head))
    with pytest.raises(MalformedResponse):
        await get(backend.pool())


async def test_101_switching_protocols_is_malformed(serve: Any) -> None:
    upgrade = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        + b"\x81\x05hello"
    )
    backend = await serve(answer_once(upgrade))
    with pytest.raises(MalformedResponse, match="informational"):
        await get(backend.pool())


@pytest.mark.parametrize(
    ("interim", "accepted"),
    [
        pytest.param(1, True, id="one"),
        pytest.param(MAX_INTERIM, True, id="max"),
        pytest.param(MAX_INTERIM + 1, False, id="max+1"),
    ],
)
async def test_interim_100_continue_heads_are_skipped_up_to_max_interim(
    serve: Any, interim: int, accepted: bool
) -> None:
    continues = b"HTTP/1.1 100 Continue\r\nX-Interim: yes\r\n\r\n" * interim
    backend = await serve(answer_once(continues + reply(b"final", status=b"201 Created")))
    pool = backend.pool()
    if not accepted:
        with pytest.raises(MalformedResponse, match="informational"):
            await get(pool)
        return
    response = await get(pool)
    assert (response.status, response.reason) == (201, "Created")
    assert "X-Interim" not in response.headers  # the interim head's headers are dropped
    assert await read_all(response) == b"final"
    response.close()


# -- 3. content codings and the request head ---------------------------------------------------


@pytest.mark.parametrize("coding", [b"gzip", b"GZip", b"br", b"deflate", b"gzip, identity"])
async def test_a_coded_body_is_refused_not_decompressed(serve: Any, coding: bytes) -> None:
    body = gzip.compress(b'{"ok": true}' * 1000)
    backend = await serve(answer_once(reply(body, b"Content-Encoding: " + coding)))
    with pytest.raises(MalformedResponse, match="coded"):
        await get(backend.pool())


async def test_an_identity_body_is_read_as_sent_and_the_request_head_is_minimal(
    serve: Any,
) -> None:
    body = gzip.compress(b"looks compressed, is not declared so")
    backend = await serve(answer_once(reply(body, b"Content-Encoding: identity")))
    pool = backend.pool()
    response = await get(pool, "/v1/models?x=1")
    assert await read_all(response) == body  # bytes as sent: nothing decompressed
    response.close()
    (head,) = backend.heads
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "GET /v1/models?x=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{backend.port}" in lines
    assert "Accept-Encoding: identity" in lines
    assert not any(line.lower().startswith("user-agent:") for line in lines), lines
    assert sum(line.lower().startswith("accept-encoding:") for line in lines) == 1


async def test_a_transfer_coded_body_is_refused_too(serve: Any) -> None:
    coded = gzip.compress(b'{"ok": true}')
    response = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        + chunked(coded)
        + b"0\r\n\r\n"
    )
    backend = await serve(answer_once(response))
    pool = backend.pool()
    with pytest.raises(MalformedResponse):
        got = await get(pool)
        got.close()


# -- 4. a backend that hangs up ------------------------------------------------------------


async def test_a_body_shorter_than_its_content_length_is_disconnected_after_the_head(
    serve: Any,
) -> None:
    async def short(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 20)

    backend = await serve(short)  # the handler returns: the server closes the connection
    response = await get(backend.pool())
    got = b""
    with pytest.raises(Disconnected) as caught:
        async with asyncio.timeout(WAIT_S):
            while piece := await response.readany():
                got += piece
    assert got == b"x" * 20
    assert caught.value.head_seen is True
    assert caught.value.reset is False
    response.close()


@pytest.mark.parametrize(
    ("sent", "head_seen"),
    [pytest.param(b"", False, id="nothing"), pytest.param(b"HTTP/1.1 200 O", True, id="half-head")],
)
async def test_a_close_before_the_head_is_disconnected(
    serve: Any, sent: bytes, head_seen: bool
) -> None:
    async def hang_up(peer: Peer) -> None:
        await peer.request()
        await peer.send(sent)

    backend = await serve(hang_up)
    with pytest.raises(Disconnected) as caught:
        await get(backend.pool())
    assert caught.value.head_seen is head_seen
    assert caught.value.reset is False


async def test_a_reset_before_the_head_is_a_reset(serve: Any) -> None:
    async def reset(peer: Peer) -> None:
        await peer.request()
        sock = peer.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    backend = await serve(reset)  # closing with SO_LINGER 0 sends a RST
    with pytest.raises(Disconnected) as caught:
        await get(backend.pool())
    assert caught.value.reset is True
    assert caught.value.head_seen is False


async def test_a_body_without_length_or_chunking_ends_with_the_connection(serve: Any) -> None:
    parts = [b"first part, ", b"second part, ", b"last part"]

    async def close_delimited(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        for part in parts:
            await peer.send(part)

    backend = await serve(close_delimited)
    pool = backend.pool()
    response = await get(pool)
    assert response.content_length is None
    assert await read_all(response) == b"".join(parts)  # complete, not an error
    response.close()
    assert not pool._idle  # a connection whose end was the body's end is not reused


# -- 5. keep-alive: reused only after a clean, complete response ---------------------------


async def test_sequential_requests_share_one_connection(serve: Any) -> None:
    backend = await serve(answer_each(reply(b"one"), reply(b"two")))
    pool = backend.pool()
    for expected in (b"one", b"two", b"one"):
        response = await get(pool)
        assert await read_all(response) == expected
        response.close()
    assert backend.accepted == 1
    assert len(backend.heads) == 3


async def test_a_response_with_connection_close_is_not_reused(serve: Any) -> None:
    """The backend keeps its end open: the client alone must decide not to reuse."""
    hung_up = asyncio.Event()

    async def says_close(peer: Peer) -> None:
        await peer.request()
        await peer.send(reply(b"bye", b"Connection: close"))
        await peer.until_client_closes()
        hung_up.set()

    backend = await serve(says_close)
    pool = backend.pool()
    for _ in range(2):
        response = await get(pool)
        assert await read_all(response) == b"bye"
        response.close()
    assert backend.accepted == 2
    await asyncio.wait_for(hung_up.wait(), WAIT_S)  # and the client closed the first one


async def test_an_answer_before_the_request_body_was_sent_is_not_reused(serve: Any) -> None:
    """A backend that answers (keep-alive) before it read the request's body: the rest of
    the body, still in the client's send buffer, would reach the backend as the start of
    the next request, whose answer would then be for bytes a client chose. The connection
    is not reused."""

    async def answers_early(peer: Peer) -> None:
        head = await peer.reader.readuntil(b"\r\n\r\n")  # the head only, never the body
        peer.backend.heads.append(head)
        await peer.send(reply(b"early"))
        await peer.until_client_closes()

    backend = await serve(answers_early)
    pool = backend.pool()
    body = b"x" * (32 * 1024 * 1024)  # more than loopback's socket buffers hold
    async with asyncio.timeout(WAIT_S):
        response = await pool.request("POST", "/", {"Content-Type": "text/plain"}, body)
    assert await read_all(response) == b"early"
    response.close()
    assert not pool._idle  # before: pooled, with megabytes of the body still to go out
    response = await get(pool)
    assert await read_all(response) == b"early"
    response.close()
    assert backend.accepted == 2


async def test_bytes_on_an_idle_connection_close_it(serve: Any) -> None:
    """A second, unsolicited response after the first was read and the connection pooled:
    the pooled connection is closed and the next request goes over a new one."""
    pooled = asyncio.Event()
    unsolicited = reply(b"smuggled", status=b"404 Not Found")

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(reply(b"first"))
        if peer.backend.accepted == 1:
            await pooled.wait()
            await peer.send(unsolicited)
        await peer.until_client_closes()

    backend = await serve(handler)
    pool = backend.pool()
    response = await get(pool)
    assert await read_all(response) == b"first"
    response.close()
    (conn,) = pool._idle
    pooled.set()
    await wait_for(lambda: conn.closed, "the pooled connection to be closed")
    response = await get(pool)
    assert response.status == 200
    assert await read_all(response) == b"first"
    response.close()
    assert backend.accepted == 2


async def test_a_second_response_in_the_same_packet_does_not_change_the_first(
    serve: Any,
) -> None:
    extra = reply(b"smuggled", b"X-Smuggled: yes", status=b"404 Not Found")

    async def two_at_once(peer: Peer) -> None:
        await peer.request()
        await peer.send(reply(b"first") + extra)  # one write: one read on loopback
        await peer.until_client_closes()

    backend = await serve(two_at_once)
    pool = backend.pool()
    response = await get(pool)
    status, headers = response.status, dict(response.headers)
    body = await read_all(response)
    response.close()
    assert (status, body) == (200, b"first"), (status, body)
    assert "X-Smuggled" not in headers
    assert not pool._idle  # never reused after bytes nobody asked for


async def test_bytes_after_a_complete_response_not_yet_read_leave_it_readable(
    serve: Any,
) -> None:
    send_more = asyncio.Event()

    async def then_junk(peer: Peer) -> None:
        await peer.request()
        await peer.send(reply(b"first"))
        await send_more.wait()
        await peer.send(reply(b"smuggled", status=b"404 Not Found"))
        await peer.until_client_closes()

    backend = await serve(then_junk)
    pool = backend.pool()
    response = await get(pool)
    conn = the_connection(pool)
    await wait_for(lambda: conn._complete, "the first response to arrive whole")
    send_more.set()
    await wait_for(lambda: conn.closed, "the client to drop the connection")
    assert await read_all(response) == b"first"
    response.close()
    assert not pool._idle


# -- 6. a backend that closes an idle connection ---------------------------------------------


async def test_an_idle_connection_the_backend_closed_is_not_reused(serve: Any) -> None:
    pooled = asyncio.Event()

    async def closes_when_idle(peer: Peer) -> None:
        await peer.request()
        await peer.send(reply(b"ok"))
        if peer.backend.accepted == 1:
            await pooled.wait()  # then return: the server closes the connection
        else:
            await peer.until_client_closes()

    backend = await serve(closes_when_idle)
    pool = backend.pool()
    response = await get(pool)
    assert await read_all(response) == b"ok"
    response.close()
    (conn,) = pool._idle
    pooled.set()
    await wait_for(lambda: conn.closed, "the client to see the backend close")
    response = await get(pool)
    assert await read_all(response) == b"ok"
    response.close()
    assert backend.accepted == 2


async def test_a_connection_idle_longer_than_idle_s_is_not_reused(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "IDLE_S", 0.05)
    backend = await serve(answer_each(reply(b"ok")))
    pool = backend.pool()
    response = await get(pool)
    assert await read_all(response) == b"ok"
    response.close()
    (conn,) = pool._idle
    await wait_for(
        lambda: time.monotonic() - conn.idle_since > http1.IDLE_S, "the connection to age"
    )
    response = await get(pool)
    assert await read_all(response) == b"ok"
    response.close()
    assert backend.accepted == 2


# -- 7. backpressure -------------------------------------------------------------------------


async def test_a_reader_that_does_not_read_stops_the_socket_and_memory_stays_bounded(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    peak = [0]

    class Measured(Connection):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            peak[0] = max(peak[0], self._buffered)

    monkeypatch.setattr(http1, "Connection", Measured)
    mib = 1024 * 1024
    count = 64
    sent_hash = hashlib.sha256()
    state: dict[str, Any] = {"sent": 0, "draining": False, "done": False, "writer": None}

    async def big_stream(peer: Peer) -> None:
        await peer.request()
        # A small send buffer: the kernel holds little, so the block comes soon.
        sock = peer.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
        state["writer"] = peer.writer
        peer.writer.write(CHUNKED_HEAD)
        for index in range(count):
            piece = index.to_bytes(4, "big") * (mib // 4)
            sent_hash.update(piece)
            peer.writer.write(chunked(piece))
            state["draining"] = True
            await peer.writer.drain()
            state["draining"] = False
            state["sent"] += len(piece)
        await peer.send(b"0\r\n\r\n")
        state["done"] = True
        await peer.until_client_closes()

    backend = await serve(big_stream)
    pool = backend.pool()
    response = await get(pool)
    conn = the_connection(pool)

    def backend_blocked() -> bool:
        writer = state["writer"]
        return (
            writer is not None
            and state["draining"]
            and writer.transport.get_write_buffer_size() > 64 * 1024  # the kernel's is full
            and conn._paused
            and conn.transport is not None
            and not conn.transport.is_reading()
        )

    await wait_for(backend_blocked, "the backend's writes to block on a paused client")
    assert not state["done"] and state["sent"] < count * mib
    assert conn._buffered <= HIGH_WATER + READ_MAX
    # Now read: the client resumes, the backend unblocks, every byte arrives in order.
    got_hash = hashlib.sha256()
    size = 0
    async with asyncio.timeout(WAIT_S * 3):
        while piece := await response.read(mib):
            got_hash.update(piece)
            size += len(piece)
    assert size == count * mib
    assert got_hash.digest() == sent_hash.digest()
    assert state["done"]
    assert 0 < peak[0] <= HIGH_WATER + READ_MAX, peak
    response.close()


async def test_a_response_closed_unread_past_high_water_leaves_a_working_pool(
    serve: Any,
) -> None:
    rest = asyncio.Event()

    async def handler(peer: Peer) -> None:
        while True:
            try:
                head = await peer.request()
            except asyncio.IncompleteReadError:
                return
            if head.startswith(b"GET /big "):
                peer.writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (HIGH_WATER + 1024)
                )
                await peer.send(b"a" * HIGH_WATER)
                await rest.wait()
                await peer.send(b"b" * 1024)  # crosses HIGH_WATER and ends the body at once
            else:
                await peer.send(reply(b"small"))

    backend = await serve(handler)
    pool = backend.pool()
    response = await get(pool, "/big")
    conn = the_connection(pool)
    await wait_for(lambda: conn._buffered == HIGH_WATER, "the body up to HIGH_WATER")
    rest.set()
    await wait_for(lambda: conn._complete, "the whole body")
    assert conn._paused
    response.close()  # unread (a redirect or an error page the gateway does not read)
    try:
        async with asyncio.timeout(2):
            response = await pool.request("GET", "/small", {}, None)
            assert await response.readany() == b"small"
        response.close()
    except TimeoutError:
        pytest.fail("the request after an unread, paused response never got its answer")


async def test_an_endless_trailer_is_not_buffered(serve: Any) -> None:
    total = 32 * 1024 * 1024
    written = 0

    async def endless_trailer(peer: Peer) -> None:
        nonlocal written
        await peer.request()
        await peer.send(CHUNKED_HEAD + chunked(b"hello") + b"0\r\nX-Trailer: ")
        while written < total:
            await peer.send(b"a" * 65536)
            written += 65536
        await peer.send(b"\r\n\r\n")
        await peer.until_client_closes()

    backend = await serve(endless_trailer)
    response = await get(backend.pool())
    with pytest.raises(MalformedResponse):
        await read_all(response)
    response.close()
    assert written < total


# -- 8. request head injection -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        pytest.param("/", {"X-A": "v\r\nX-Injected: 1"}, id="crlf-in-value"),
        pytest.param("/", {"X-A": "v\nX-Injected: 1"}, id="lf-in-value"),
        pytest.param("/", {"X-A": "v\rX-Injected: 1"}, id="cr-in-value"),
        pytest.param("/", {"X-A": "v\0"}, id="nul-in-value"),
        pytest.param("/", {"X-A\r\nX-Injected": "1"}, id="crlf-in-name"),
        pytest.param("/a\r\nX-Injected:1", {}, id="crlf-in-target"),
        pytest.param("/a b", {}, id="space-in-target"),
    ],
)
async def test_forbidden_characters_in_the_request_head_raise_before_anything_is_sent(
    serve: Any, target: str, headers: dict[str, str]
) -> None:
    backend = await serve(answer_each(reply(b"ok")))
    pool = backend.pool()
    with pytest.raises(ValueError, match=r"forbidden character|space"):
        await pool.request("POST", target, headers, b"{}")
    # Nothing went out: the next (clean) request is the first the backend ever sees.
    response = await get(pool, "/clean")
    assert await read_all(response) == b"ok"
    response.close()
    assert backend.accepted == 1
    assert len(backend.heads) == 1 and backend.heads[0].startswith(b"GET /clean HTTP/1.1\r\n")
    assert b"Injected" not in backend.heads[0]


# -- 9. Response.pipe ----------------------------------------------------------------------------


async def test_pipe_pushes_each_piece_in_order_as_it_arrives(serve: Any) -> None:
    pieces = [b"alpha ", b"beta ", b"gamma ", b"delta"]
    received: list[bytes] = []
    arrived = asyncio.Event()

    async def drip(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD)
        for piece in pieces:
            arrived.clear()
            await peer.send(chunked(piece))
            await arrived.wait()  # the next piece only once the sink has this one
        await peer.send(b"0\r\n\r\n")
        await peer.until_client_closes()

    backend = await serve(drip)
    pool = backend.pool()
    response = await get(pool)
    conn = the_connection(pool)
    seen_before_end: list[bool] = []

    def sink(data: bytes) -> None:
        received.append(data)
        seen_before_end.append(not conn._complete)
        arrived.set()

    done = response.pipe(sink)
    await asyncio.wait_for(done, WAIT_S)
    assert b"".join(received) == b"".join(pieces)
    assert len(received) >= len(pieces)  # one push per network piece, none held back
    assert all(seen_before_end)
    response.close()
    assert pool._idle  # a complete piped body leaves the connection reusable


@pytest.mark.parametrize("when", ["already-buffered", "from-the-network"])
async def test_an_exception_in_the_sink_fails_the_pipe_with_it_and_closes(
    serve: Any, when: str
) -> None:
    piped = asyncio.Event()
    hung_up = asyncio.Event()

    async def stream(peer: Peer) -> None:
        await peer.request()
        if when == "already-buffered":
            await peer.send(CHUNKED_HEAD + chunked(b"first"))
        else:
            await peer.send(CHUNKED_HEAD)
            await piped.wait()
            await peer.send(chunked(b"first"))
        await peer.until_client_closes()
        hung_up.set()

    backend = await serve(stream)
    pool = backend.pool()
    response = await get(pool)
    conn = the_connection(pool)
    if when == "already-buffered":
        await wait_for(lambda: conn.pieces, "the first piece to be buffered")
    boom = RuntimeError("the sink broke")

    def sink(data: bytes) -> None:
        raise boom

    done = response.pipe(sink)
    piped.set()
    with pytest.raises(RuntimeError) as caught:
        await asyncio.wait_for(done, WAIT_S)
    assert caught.value is boom
    assert conn.closed
    await asyncio.wait_for(hung_up.wait(), WAIT_S)  # the backend saw the connection close
    response.close()
    assert not pool._idle


# -- 10, 11. the gateway between a backend and a client that stops reading or leaves -----------


def _event(size: int, index: int) -> bytes:
    content = f"{index:08d}" + "x" * size
    chunk = {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


class StreamingBackend:
    """A fake backend whose chat stream writes ``count`` events of ``size`` bytes as fast
    as its connection takes them; records how far it got and how its handler ended."""

    def __init__(self, size: int, count: int) -> None:
        self.size = size
        self.count = count
        self.sent = 0
        self.writing = False
        self.transport: asyncio.Transport | None = None
        self.ended = asyncio.Event()
        self.ended_by: BaseException | None = None
        self.finished = False

    async def chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.transport = request.transport
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        try:
            await response.prepare(request)
            for index in range(self.count):
                self.writing = True
                await response.write(_event(self.size, index))
                self.writing = False
                self.sent += 1
                await asyncio.sleep(0)  # a yield, so a fast stream does not starve the loop
            await response.write(b"data: [DONE]\n\n")
            self.finished = True
            return response
        except BaseException as exc:
            self.ended_by = exc
            raise
        finally:
            self.ended.set()


def _backend_connections(gateway: TestClient) -> set[Connection]:
    backend = gateway.app[REGISTRY].current.get("fake")
    assert backend is not None
    connections: set[Connection] = backend.client.pool._open
    return connections


async def _slots_free(gateway: TestClient) -> None:
    async def none_in_flight() -> bool:
        return bool((await status_of(gateway, "fake", "chat"))["in_flight"] == 0)

    await wait_for(none_in_flight, "the admission slot to be given back")
    await assert_slots_free(gateway, admitted=1)


async def raw_stream_client(gateway: TestClient, *, close: bool = False) -> socket.socket:
    """A raw socket with a small receive buffer that has sent a streamed chat to
    ``gateway`` and read nothing yet: the caller decides when (and whether) to read."""
    loop = asyncio.get_running_loop()
    body = json.dumps({**CHAT, "stream": True}).encode()
    connection = "Connection: close\r\n" if close else ""
    head = (
        f"POST {CHAT_PATH} HTTP/1.1\r\nHost: {gateway.host}:{gateway.port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{connection}\r\n"
    ).encode()
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    client.setblocking(False)
    try:
        async with asyncio.timeout(WAIT_S):
            await loop.sock_connect(client, (gateway.host, gateway.port))
            await loop.sock_sendall(client, head + body)
    except BaseException:
        client.close()
        raise
    return client


async def test_a_client_that_stops_reading_pauses_the_backend_then_leaving_frees_all(
    make_gateway: Any, start_mock: Any
) -> None:
    events = StreamingBackend(size=64 * 1024, count=1024)  # 64 MiB if nothing pushed back
    gateway, _ = await fake_gateway(make_gateway, start_mock, events.chat)
    loop = asyncio.get_running_loop()
    client = await raw_stream_client(gateway)
    try:
        async with asyncio.timeout(WAIT_S):
            answer = b""
            while b"\r\n\r\n" not in answer:  # the head, a byte at a time; then stop reading
                byte = await loop.sock_recv(client, 1)
                assert byte, answer
                answer += byte
        assert answer.startswith(b"HTTP/1.1 200 "), answer

        def gateway_paused_the_backend() -> bool:
            transport = events.transport
            return (
                transport is not None
                and events.writing
                and transport.get_write_buffer_size() > 64 * 1024  # its kernel buffer is full
                and any(
                    conn._paused and conn.transport is not None and not conn.transport.is_reading()
                    for conn in _backend_connections(gateway)
                )
            )

        await wait_for(gateway_paused_the_backend, "the gateway to stop reading the backend")
        assert not events.finished and events.sent < events.count
    finally:
        client.close()
    # The client left: the gateway drops the backend's stream and gives its slot back.
    await asyncio.wait_for(events.ended.wait(), WAIT_S)
    assert not events.finished
    assert isinstance(events.ended_by, asyncio.CancelledError | ConnectionError), events.ended_by
    await _slots_free(gateway)
    await wait_for(lambda: not _backend_connections(gateway), "the backend connection to close")


async def test_a_client_leaving_mid_stream_ends_the_backends_stream(
    make_gateway: Any, start_mock: Any
) -> None:
    """Unlike test_admission's held streams, this backend is writing when the client goes."""
    events = StreamingBackend(size=512, count=1_000_000)
    gateway, _ = await fake_gateway(make_gateway, start_mock, events.chat)
    response = await gateway.post(
        CHAT_PATH, json={**CHAT, "stream": True}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    try:
        assert response.status == 200
        async with asyncio.timeout(WAIT_S):
            for index in range(3):
                event = await response.content.readuntil(b"\n\n")
                assert event == _event(events.size, index)
        await wait_for(lambda: events.sent > 3, "the backend to be streaming")
    finally:
        response.close()  # drops the connection mid-stream
    await asyncio.wait_for(events.ended.wait(), WAIT_S)
    assert not events.finished
    assert isinstance(events.ended_by, asyncio.CancelledError | ConnectionError), events.ended_by
    await _slots_free(gateway)
    await wait_for(lambda: not _backend_connections(gateway), "the backend connection to close")
