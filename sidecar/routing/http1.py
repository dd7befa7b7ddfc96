"""The HTTP/1.1 client under ``upstream``: pooled keep-alive connections to one backend.

Why the gateway has its own: every client request and every streamed event passes
through here, and a general client's layers (request and response objects built per
call, a connector with traces and timers, a stream reader in Python) cost more than the
relay itself. This one does what a backend call needs and nothing else: the response is
parsed by ``httptools`` (the C parser uvicorn uses: llhttp, as in Node), a streamed body
goes to the reader in the pieces the network delivered, and a connection is reused as
soon as its response is complete.

Backends are not trusted:

- a response head is at most ``MAX_HEAD_BYTES`` (64 KiB) and ``MAX_HEADERS`` lines; 1xx
  interim heads are skipped (at most 8), ``101 Switching Protocols`` is an error;
- at most ``HIGH_WATER`` (256 KiB) of body waits for a slow reader: past that the socket
  stops being read until the reader catches up, so memory never grows with the backend;
- ``Accept-Encoding: identity`` is sent and a coded body (gzip, br, ...) is an error:
  nothing is decompressed, so there is no decompression bomb to defuse;
- a connection is reused only after a complete response that allows keep-alive with
  nothing after it, to a request whose bytes had all left the gateway's send buffer
  before its head came (what the kernel holds unread is the backend's); bytes after a
  response (in the same read or later) or on an idle connection close it. Idle
  connections are not reused after ``IDLE_S`` (15 s) and are closed as soon as the
  backend closes them;
- after the head, bytes that are neither body nor chunk framing (trailers, chunk
  extensions) are bounded by ``MAX_HEAD_BYTES`` too, and trailers are not passed on;
- a body must be identity or chunked: any other transfer coding is an error;
- request heads are built from the gateway's own values and refuse CR, LF and NUL.

Failures are the exceptions below (plus ``ssl.SSLError`` from a handshake and
``TimeoutError``), which ``upstream.BackendClient.translate`` turns into gateway errors.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterable, Callable, Sequence

import aiohappyeyeballs
import httptools
from aiohappyeyeballs import AddrInfoType
from multidict import CIMultiDict, CIMultiDictProxy

log = logging.getLogger("gateway.upstream")

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_INTERIM = 8
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
IDLE_S = 15.0
MAX_IDLE = 512


class ConnectFailed(OSError):
    """The TCP connection could not be opened (refused, unreachable, no such host)."""


class Disconnected(ConnectionError):
    """The backend closed or reset the connection before the response was complete.

    ``head_seen`` says whether any of the response had arrived; ``reset`` whether the
    connection was reset rather than closed; ``reused`` whether it had served an earlier
    request (then a drop before the head is most likely a stale keep-alive connection)."""

    def __init__(self, head_seen: bool, cause: BaseException | None) -> None:
        super().__init__("connection closed before the response was complete")
        self.head_seen = head_seen
        self.reset = isinstance(cause, ConnectionResetError)
        self.reused = False
        self.__cause__ = cause


class MalformedResponse(ValueError):
    """The backend's bytes are not an HTTP/1.1 response the gateway accepts."""


class _Trailing(Exception):
    """Raised from the parser when a second response follows a complete one."""


def _default_context() -> ssl.SSLContext:
    global _DEFAULT_SSL
    if _DEFAULT_SSL is None:
        _DEFAULT_SSL = ssl.create_default_context()
    return _DEFAULT_SSL


_DEFAULT_SSL: ssl.SSLContext | None = None


class Response:
    """A response whose head has arrived; its body is read with ``readany``/``read``.

    ``close`` returns the connection to the pool when the body was read to its end
    and the backend allows keep-alive; otherwise it closes the connection."""

    __slots__ = ("_conn", "content_length", "headers", "reason", "status")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.status = conn.status
        self.reason = conn.reason
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(conn.headers)
        length = self.headers.get("Content-Length")
        self.content_length = int(length) if length is not None and length.isdigit() else None

    async def readany(self) -> bytes:
        """Whatever body has arrived (waiting for some), or ``b""`` at its end."""
        conn = self._conn
        if not conn.pieces:
            await conn.wait_body()
            if not conn.pieces:
                return b""
        return conn.take(0)

    async def read(self, size: int) -> bytes:
        """At most ``size`` bytes of body (waiting for some), or ``b""`` at its end."""
        conn = self._conn
        if not conn.pieces:
            await conn.wait_body()
            if not conn.pieces:
                return b""
        return conn.take(size)

    def pipe(self, sink: Callable[[bytes], None]) -> asyncio.Future[None]:
        """Push the body into ``sink``, piece by piece as the network delivers it,
        instead of being read: the relay's hot path, with no task woken per piece.
        The future is done when the body ends (or failed, with the reason; an exception
        ``sink`` raises fails it too). ``pause``/``resume`` hold the socket's reading
        while the sink cannot take more."""
        return self._conn.pipe(sink)

    def pause(self) -> None:
        self._conn.pause()

    def resume(self) -> None:
        if self._conn._paused:
            self._conn._resume()

    @property
    def paused(self) -> bool:
        """Whether the socket's reading is held (by ``pause`` or a full buffer)."""
        return self._conn._paused

    def abort(self, exc: BaseException) -> None:
        """Fail the response (a reader or a pipe gets ``exc``) and close the connection."""
        self._conn.fail(exc)

    def close(self) -> None:
        self._conn.finish()


class Connection(asyncio.Protocol):
    """One keep-alive connection to a backend and the response it is receiving."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._active = False
        # The response being received:
        self._head: asyncio.Future[None] | None = None
        self._head_done = False
        self._head_bytes = 0
        self._interim = 0
        self._framed = False  # Content-Length or chunked: EOF before the end is an error
        self._progress = False  # body or chunk framing seen in this read
        self._quiet = 0  # bytes read since the last body or chunk framing
        self._complete = False
        self._reusable = False
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.pieces: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._sink: Callable[[bytes], None] | None = None
        self._piped: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False
        self._on_head: Callable[[Response], None] | None = None
        self._response: Response | None = None

    # -- the request -------------------------------------------------------------------

    async def send(
        self,
        head: bytes,
        body: bytes | AsyncIterable[bytes] | None,
        on_head: Callable[[Response], None] | None = None,
    ) -> Response:
        """Write the request and wait for the response head. ``on_head`` (see
        ``Pool.request``) gets the response in the read callback that completes its head."""
        transport = self.transport
        assert transport is not None
        self._start()
        self._on_head = on_head
        head_future = self._head = self._loop.create_future()
        if body is None or isinstance(body, bytes):
            transport.write(head + body if body else head)
        else:
            transport.write(head)
            await self._send_chunked(transport, body)
        await head_future
        return self._response or Response(self)

    async def _send_chunked(self, transport: asyncio.Transport, body: AsyncIterable[bytes]) -> None:
        async for piece in body:
            if self._error is not None or self._head_done:
                break  # the backend answered (or failed) before the upload ended
            if piece:
                transport.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                if self._write_paused:
                    self._drain = self._loop.create_future()
                    await self._drain
        else:
            transport.write(b"0\r\n\r\n")
            return
        self._reusable = False  # the upload did not end: this connection is spent

    def _start(self) -> None:
        self._active = True
        self._head_done = self._complete = self._reusable = self._framed = False
        self._head_bytes = self._interim = self._quiet = 0
        self.status = 0
        self.reason = ""
        self.headers = CIMultiDict()
        self._response = None

    # -- reading the body --------------------------------------------------------------

    async def wait_body(self) -> None:
        """Until some body has arrived, the body ended, or the connection failed."""
        while not self.pieces:
            if self._error is not None:
                raise self._error
            if self._complete:
                return
            if self._paused:
                self._resume()
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def take(self, size: int) -> bytes:
        """Up to ``size`` buffered bytes (everything buffered when ``size`` is 0)."""
        pieces = self.pieces
        if len(pieces) == 1 and (size == 0 or len(pieces[0]) <= size):
            data = pieces.popleft()
        elif size == 0:
            data = b"".join(pieces)
            pieces.clear()
        else:
            parts = []
            left = size
            while pieces and left > 0:
                piece = pieces.popleft()
                if len(piece) > left:
                    pieces.appendleft(piece[left:])
                    piece = piece[:left]
                parts.append(piece)
                left -= len(piece)
            data = b"".join(parts)
        self._buffered -= len(data)
        if self._paused and self._buffered < LOW_WATER:
            self._resume()
        return data

    def pipe(self, sink: Callable[[bytes], None]) -> asyncio.Future[None]:
        done = self._piped = self._loop.create_future()
        if self.pieces:
            data = self.take(0)
            try:
                sink(data)
            except Exception as exc:
                self.fail(exc)
        self._sink = sink
        if self._paused:
            self._resume()
        self._wake()
        return done

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        self._paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def finish(self) -> None:
        """The caller is done with the response: reuse the connection or close it."""
        if not self._active:
            return
        self._active = False
        self.pieces.clear()
        self._buffered = 0
        self._sink = None
        piped = self._piped
        if piped is not None:
            if not piped.done():
                piped.cancel()
            elif not piped.cancelled():
                piped.exception()  # seen: the caller stopped listening, nothing to report
        self._piped = None
        if self._complete and self._reusable and self._error is None and not self.closed:
            if self._paused:  # closed unread past the high-water mark
                self._resume()
            self._pool.release(self)
        else:
            self.close()

    def close(self) -> None:
        self.closed = True
        self._active = False
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        if not self._active or self._complete:
            # Bytes nobody asked for (on an idle connection, or after a complete
            # response): the connection's framing cannot be trusted any more. The
            # complete response stays readable; the connection is not reused.
            self._spent()
            return
        self._progress = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__  # what a callback (or the pipe's sink) raised
            if isinstance(cause, _Trailing):
                self._spent()  # a second response after this one, in the same read
            else:
                self.fail(cause if isinstance(cause, Exception) else MalformedResponse())
            return
        except httptools.HttpParserError as exc:
            self.fail(MalformedResponse(str(exc)[:120]))
            return
        if not self._head_done:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self.fail(MalformedResponse("response head too large"))
        elif self._progress:
            self._quiet = 0
        else:
            # Bytes that are neither body nor a chunk's framing (an endless trailer or
            # chunk extension, which the parser would otherwise buffer): bounded too.
            self._quiet += len(data)
            if self._quiet > MAX_HEAD_BYTES:
                self.fail(MalformedResponse("response trailer too large"))

    def _spent(self) -> None:
        self._reusable = False
        if not self._active:
            self.close()
        elif self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost says what it meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._active and not self._complete and self._error is None:
            if self._head_done and not self._framed and exc is None:
                self._complete = True  # a body delimited by the connection's (clean) end
                self._wake()
            else:
                self.fail(Disconnected(self._head_done or self._head_bytes > 0, exc))
        elif self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._pool.forget(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            raise _Trailing

    def on_chunk_header(self) -> None:
        self._progress = True

    def on_chunk_complete(self) -> None:
        self._progress = True

    def on_status(self, status: bytes) -> None:
        self.reason = status[:200].decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:
            return  # a chunked body's trailer: not passed on
        if len(self.headers) >= MAX_HEADERS:
            raise MalformedResponse("too many response headers")
        self.headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            if status == 101 or self._interim >= MAX_INTERIM:
                raise MalformedResponse("unexpected informational response")
            self._interim += 1
            self.headers = CIMultiDict()
            return
        headers = self.headers
        coding = ",".join(headers.getall("Content-Encoding", ())).strip().lower()
        if coding not in ("identity", ""):
            raise MalformedResponse(f"a body coded {coding[:32]!r}, which was not asked for")
        transfer = ",".join(headers.getall("Transfer-Encoding", ())).strip().lower()
        if transfer not in ("", "chunked"):
            raise MalformedResponse(f"a body sent as {transfer[:32]!r}, which was not asked for")
        self.status = status
        self._framed = "Content-Length" in headers or transfer == "chunked"
        # A backend that answers before the request's body is out (what is left of it still
        # in the send buffer) would read that rest as the next request: never reused.
        unsent = self.transport is not None and self.transport.get_write_buffer_size() > 0
        self._reusable = self._parser.should_keep_alive() and not unsent
        self._head_done = True
        head = self._head
        if head is not None and not head.done():
            head.set_result(None)
            on_head, self._on_head = self._on_head, None
            if on_head is not None:
                response = self._response = Response(self)
                try:
                    on_head(response)
                except Exception:  # the caller's; the response is still read as usual
                    log.exception("a response head's callback failed")

    def on_body(self, body: bytes) -> None:
        self._progress = True
        sink = self._sink
        if sink is not None:
            sink(body)
            return
        self.pieces.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        if self._waiter is not None:
            self._wake()

    def on_message_complete(self) -> None:
        if not self._head_done:
            return  # the end of an interim (1xx) response
        self._progress = True
        self._complete = True
        self._wake()

    # -- failure ---------------------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        head = self._head
        if head is not None and not head.done():
            head.set_exception(exc)
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        piped = self._piped
        if piped is not None and not piped.done():
            if self._error is not None:
                piped.set_exception(self._error)
            elif self._complete:
                piped.set_result(None)


async def resolve(loop: asyncio.AbstractEventLoop, host: str, port: int) -> Sequence[AddrInfoType]:
    """``host``'s addresses for a TCP connect: an IP literal at once, a name by the
    resolver (``getaddrinfo`` blocks: the loop runs it on a worker thread)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [_scoped(info) for info in infos]
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]


def _scoped(info: AddrInfoType) -> AddrInfoType:
    """A link-local IPv6 address with its scope written into the host (``fe80::1%4``):
    uvloop's ``sock_connect`` resolves the address again from host and port alone, and
    would drop the scope id, which such an address cannot be reached without (an mDNS
    ``.local`` name, an ``/etc/hosts`` entry with a zone)."""
    family, kind, proto, canonical, address = info
    if family == socket.AF_INET6 and len(address) == 4 and address[3] and "%" not in address[0]:
        return family, kind, proto, canonical, (f"{address[0]}%{address[3]}", *address[1:])
    return info


async def open_socket(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    """A connected socket to ``host``: with several addresses, the next is tried after
    250 ms (happy eyeballs, ``aiohappyeyeballs``), so one that drops packets (a broken
    IPv6 route) does not take the whole connect timeout. Done here rather than by the
    loop's ``create_connection``, which on uvloop (the gateway's loop) has no such
    fallback."""
    infos = await resolve(loop, host, port)
    return await aiohappyeyeballs.start_connection(
        infos, happy_eyeballs_delay=0.25, interleave=1, loop=loop
    )


class Pool:
    """Keep-alive connections to one origin (``scheme://host:port``)."""

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int,
        authority: str,
        ssl_context: ssl.SSLContext | None,
        connect_s: float,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self._host = host
        self._port = port
        self._authority = authority
        self._ssl = (
            ssl_context
            if ssl_context is not None
            else (_default_context() if scheme == "https" else None)
        )
        self._connect_s = connect_s
        self._idle: collections.deque[Connection] = collections.deque()
        self._open: set[Connection] = set()
        self._closed = False

    async def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | AsyncIterable[bytes] | None,
        on_head: Callable[[Response], None] | None = None,
    ) -> Response:
        """Send one request (on an idle connection when there is one) and wait for the
        response head. ``target`` is the path and query; ``Host`` is added here.

        ``on_head`` gets the response (the same object this returns) from the read
        callback that completes its head, before the waiting caller runs again: a stream
        can start to flow to its client in that callback, ahead of the loop's queue. It
        must not block; what it raises is logged and the response is read as usual."""
        head = _request_head(method, target, self._authority, headers, body)
        conn = self._take_idle()
        if conn is not None:
            try:
                return await conn.send(head, body, on_head)
            except Disconnected as exc:
                conn.close()
                exc.reused = True
                # A keep-alive connection the backend dropped just as it was reused: a
                # request that is safe to repeat goes again, once, on a new connection.
                if exc.head_seen or method not in ("GET", "HEAD"):
                    raise
            except BaseException:
                conn.close()
                raise
        conn = await self._connect()
        try:
            return await conn.send(head, body, on_head)
        except BaseException:
            conn.close()
            raise

    def _take_idle(self) -> Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if time.monotonic() - conn.idle_since > IDLE_S:
                # Idle too long: the backend may have dropped it without a word. Every
                # connection before it in the deque is older still.
                conn.close()
                while idle:
                    idle.popleft().close()
                return None
            return conn
        return None

    async def _connect(self) -> Connection:
        if self._closed:
            raise ConnectFailed("the backend's client is closed")
        loop = self.loop
        try:
            async with asyncio.timeout(self._connect_s):
                sock = await open_socket(loop, self._host, self._port)
                try:
                    _, conn = await loop.create_connection(
                        lambda: Connection(self),
                        sock=sock,
                        ssl=self._ssl,
                        server_hostname=self._host if self._ssl is not None else None,
                        ssl_handshake_timeout=self._connect_s if self._ssl is not None else None,
                    )
                except BaseException:
                    sock.close()
                    raise
        except (ssl.SSLError, TimeoutError):
            raise
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as exc:
            if self._ssl is not None:  # dropped during the handshake
                raise Disconnected(False, exc) from exc
            raise ConnectFailed(exc.errno, exc.strerror) from exc
        except OSError as exc:
            raise ConnectFailed(exc.errno, exc.strerror) from exc
        except RuntimeError as exc:  # how uvloop reports some connect failures
            raise ConnectFailed(str(exc)[:120]) from exc
        self._open.add(conn)
        return conn

    def release(self, conn: Connection) -> None:
        if self._closed or len(self._idle) >= MAX_IDLE:
            conn.close()
            return
        now = time.monotonic()
        conn.idle_since = now
        self._idle.append(conn)
        oldest = self._idle[0]
        while oldest.closed or now - oldest.idle_since > IDLE_S:
            self._idle.popleft().close()
            if not self._idle:
                break
            oldest = self._idle[0]

    def forget(self, conn: Connection) -> None:
        self._open.discard(conn)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close every connection, idle or busy (at shutdown or after a reload)."""
        self._closed = True
        self._idle.clear()
        for conn in list(self._open):
            conn.close()


def _request_head(
    method: str,
    target: str,
    authority: str,
    headers: dict[str, str],
    body: bytes | AsyncIterable[bytes] | None,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {authority}", "Accept-Encoding: identity"]
    for name, value in headers.items():
        lines.append(f"{name}: {value}")
    if isinstance(body, bytes):
        lines.append(f"Content-Length: {len(body)}")
    elif body is not None:
        lines.append("Transfer-Encoding: chunked")
    text = "\r\n".join(lines)
    breaks = len(lines) - 1  # the separators' own CR LF; any other is an injection
    if text.count("\n") != breaks or text.count("\r") != breaks or "\0" in text:
        raise ValueError("a request line or header holds a forbidden character")
    if " " in target:
        raise ValueError("a request target holds a space")
    return (text + "\r\n\r\n").encode()
