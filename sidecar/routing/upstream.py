"""HTTP(S) clients for backends: one connection pool per backend, with its TLS context.

Transport failures are translated here, once, into the gateway's errors, so the API
layer never sees a transport exception and no message carries a backend URL.

Backends are not trusted: redirects are never followed (a 3xx is a 502 that says so);
replies with NaN or Infinity are refused (``wire.strict_json``); one server-sent event is at most
``MAX_SSE_EVENT_BYTES`` (1 MiB), a longer one ends the stream with an error; a backend's
error text reaches the client only as its message, with URLs, paths, tracebacks and
anything that looks like a key removed, at most ``MAX_ERROR_MESSAGE`` (500) characters;
a backend's 429 stays a ``rate_limit_error``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import json
import logging
import math
import os
import re
import socket
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

from yarl import URL

from ..config.schema import BackendConfig
from ..errors import (
    GatewayError,
    StrictJsonError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ..wire import strict_json
from .http1 import ConnectFailed, Disconnected, MalformedResponse, Pool, Response

MAX_UPSTREAM_BODY = 64 * 1024 * 1024
# A JSON reply is parsed whole on the event loop (the C decoder holds the GIL anyway), and
# what it builds can be far larger than its text: 64 MiB of ``[],`` is 22 M lists, 1.7 GB
# and seconds of a blocked loop. Its arrays and objects are counted (brackets in strings
# too: an over-count) before the parse; the limit is far above a real reply's (64 MiB of
# embeddings is a few thousand arrays). Plain values are bounded by ``MAX_UPSTREAM_BODY``
# alone. Below ``_COUNTED_REPLY_BYTES`` nothing is counted.
MAX_REPLY_CONTAINERS = 1_000_000
_COUNTED_REPLY_BYTES = 1024 * 1024
MAX_SSE_EVENT_BYTES = 1024 * 1024
MAX_ERROR_MESSAGE = 500
# Every pattern below runs on at most _CLEANED_CHARS characters and none can backtrack
# over a line or an unbounded run: a hostile backend's error text costs microseconds.
_CLEANED_CHARS = 4 * MAX_ERROR_MESSAGE
_URL = re.compile(r"\b[a-z][a-z0-9+.-]{0,31}://\S+", re.IGNORECASE)
_TRACEBACK = re.compile(
    r"Traceback \(most recent call last\)|^[ \t]*File \"[^\"\n]*\", line \d+", re.M
)
_SECRETS = (
    # key=value / key: value for names that hold secrets
    (
        re.compile(
            r"\b(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|authorization)"
            r"(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|\S+)",
            re.IGNORECASE,
        ),
        r"\1\2<redacted>",
    ),
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE), r"\1 <redacted>"),
    (re.compile(r"\b(?:sk|pk|rk|hf|ghp|gho|xox[abp])[-_][A-Za-z0-9_-]{6,}"), "<redacted>"),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "<redacted>"),
    (re.compile(r"\b[0-9a-fA-F]{32,}\b"), "<redacted>"),
)
# A long run of base64/token characters; redacted when one piece of it looks random
# (model names like "meta-llama/Llama-3.1-8B-Instruct" are short pieces and stay).
_TOKENISH = re.compile(r"[A-Za-z0-9+/_=-]{24,}")
_PIECE = re.compile(r"[A-Za-z0-9+=]{24,}")
_PATH = re.compile(r"(?<![\w.])(?:~|\.{1,2})?(?:/[\w.@+-]+){2,}/?|\b[A-Za-z]:\\[^\s\"']+")
log = logging.getLogger("gateway.upstream")
_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
# ``json.dumps`` with arguments builds an encoder per call; one, made once, does the same.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_TLS_REASONS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the backend requires a client certificate",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the backend refused the handshake",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the backend rejected the client certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the backend does not trust the client certificate's CA",
    "WRONG_VERSION_NUMBER": "the backend does not speak TLS on this port",
}


class ClientGone(Exception):
    """Raised by a relay's ``deliver`` when the client it writes to has gone away."""


class UpstreamCall:
    """One request to a backend, open until the caller closes it (a stream stays open)."""

    def __init__(self, client: BackendClient, response: Response, read_s: float) -> None:
        self._client = client
        self.response = response
        self.read_s = read_s
        self._closed = False
        self._deadline: _ReadDeadline | None = None
        self._rest: asyncio.Future[None] | None = None
        self._events: _EventsRun | None = None

    @property
    def status(self) -> int:
        return self.response.status

    async def read_body(self, limit: int = MAX_UPSTREAM_BODY, truncate: bool = False) -> bytes:
        """The whole body (to EOF, within the read timeout and the size cap); with
        ``truncate``, a longer body is cut at ``limit`` instead of being an error."""
        try:
            async with asyncio.timeout(self.read_s):
                return await _read_capped(self.response, limit, truncate)
        except OverflowError:
            raise UpstreamError(f"backend '{self._client.name}' sent an oversized reply") from None
        except (TimeoutError, OSError, ValueError) as exc:
            raise self._client.translate(exc) from None

    async def read_json(self) -> tuple[bytes, Any]:
        """The whole body and its parsed JSON; garbage or a cut-off body is a 502."""
        body = await self.read_body()
        if (
            len(body) > _COUNTED_REPLY_BYTES
            and body.count(b"[") + body.count(b"{") > MAX_REPLY_CONTAINERS
        ):
            raise UpstreamError(
                f"backend '{self._client.name}' returned a reply with more arrays and objects"
                " than the gateway parses",
                code="upstream_reply_too_complex",
            )
        try:
            return body, strict_json.loads_reply(body)
        except StrictJsonError as exc:
            raise UpstreamError(
                f"backend '{self._client.name}' returned a response that is not JSON"
                f" the gateway accepts ({exc.message})"
            ) from None

    async def events(self) -> AsyncIterator[bytes]:
        """Server-sent events one by one, each as its raw bytes ending in a blank line
        (``event_runs`` split up)."""
        async for run in self.event_runs():
            for event in split_events(run):
                yield event

    async def event_runs(self) -> AsyncIterator[bytes]:
        """Server-sent events as they arrive: each item is one or more whole events back
        to back (what one network read completed), each ending in a blank line.

        The first event may take the read timeout (prompt processing); later ones the
        stream-idle timeout. Ends at EOF; transport failures raise gateway errors, and so
        does an event longer than ``MAX_SSE_EVENT_BYTES`` (never buffered past that).
        An error event the backend sends mid-stream has its message cleaned; blank lines
        between events are dropped (``EventFramer``). One read per network piece and no
        timer per read (``_ReadDeadline``); ``relay_events`` is the same without a read.
        """
        response = self.response
        framer = EventFramer(self._too_large)
        deadline = self._deadline = _ReadDeadline()
        wait = self.read_s
        idle = self._client.config.timeouts.stream_idle_s
        while True:
            deadline.start(wait)
            try:
                piece = await response.readany()
            except asyncio.CancelledError:
                if deadline.expired():
                    raise self._client.translate(TimeoutError(), streaming=True) from None
                raise
            except (OSError, ValueError) as exc:
                raise self._client.translate(exc, streaming=True) from None
            finally:
                deadline.stop()
            wait = idle
            if not piece:  # EOF: an unterminated last event still counts
                rest = framer.end()
                if rest:
                    yield rest
                return
            run = framer.feed(piece)
            if run:
                yield run
            if framer.error is not None:
                raise framer.error

    def start_events(self, deliver: Callable[[bytes], bool]) -> None:
        """Start ``relay_events`` here and now, without waiting: from the read callback
        that completed the response head (``BackendClient.post``'s ``on_head``), events
        flow to ``deliver`` before the caller's task runs again. ``relay_events`` then
        waits for that run; ``close`` stops it if nobody does."""
        if self._events is None:
            self._events = _EventsRun(self, deliver)

    def stop_events(self) -> None:
        """End a run ``start_events`` began with the call: its timer, and its pipe's
        outcome taken (``_EventsRun.stop``)."""
        if self._events is not None:
            self._events.stop()

    async def relay_events(self, deliver: Callable[[bytes], bool]) -> None:
        """``event_runs`` pushed instead of pulled: the stream relay's hot path.

        ``deliver`` gets each run of whole events from the event loop's read callback,
        as the network delivers it (no task is woken per event, nothing is awaited per
        event), and must not block; it returns True after the last event it wants: this
        returns then, and the rest of the body is dropped as it comes (``finish`` waits
        for its end, so the connection can be reused). What ``deliver`` raises ends the
        relay and is raised here as it is. The same timeouts, limits and cleaning as
        ``event_runs``; otherwise returns at the end of the body, after an unterminated
        last event. A run ``start_events`` began is waited for (with its ``deliver``).
        """
        run = self._events
        if run is None:
            run = self._events = _EventsRun(self, deliver)
        await run.wait()

    async def finish(self, timeout_s: float = 0.5) -> None:
        """After the last event: wait briefly for the end of the body, so the connection
        goes back to the pool instead of being closed (a little is read, nothing kept)."""
        rest, self._rest = self._rest, None
        if rest is not None and rest.done():
            if not rest.cancelled():
                rest.exception()  # retrieved: a failed end only means no reuse
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout_s):
                if rest is not None:
                    await rest  # after ``relay_events``: the body goes on being dropped
                else:
                    await _read_capped(self.response, 64 * 1024, truncate=True)

    def _too_large(self) -> UpstreamError:
        return UpstreamError(
            f"backend '{self._client.name}' sent a stream event larger than"
            f" {MAX_SSE_EVENT_BYTES} bytes",
            code="upstream_event_too_large",
        )

    async def chunks(self, size: int = 64 * 1024) -> AsyncIterator[bytes]:
        """The body in pieces of at most ``size`` bytes (a download), each within the read
        timeout; transport failures raise gateway errors."""
        response = self.response
        while True:
            try:
                async with asyncio.timeout(self.read_s):
                    chunk = await response.read(size)
            except (TimeoutError, OSError, ValueError) as exc:
                raise self._client.translate(exc, streaming=True) from None
            if not chunk:
                return
            yield chunk

    async def raise_for_status(self) -> None:
        """Relay a backend's 4xx with its message; a 5xx (or its auth failure) is a 502.

        Only the message is passed on (``error.message`` or ``detail`` from JSON, else
        plain text), cleaned by ``clean_message``: a backend's error page, traceback,
        paths or keys never reach the client. A 3xx is a 502: redirects are not followed.
        """
        if self.status < 300:
            return
        name = self._client.name
        if self.status < 400:
            log.warning("backend %s answered %d (a redirect; not followed)", name, self.status)
            raise UpstreamError(
                f"backend '{name}' answered with a redirect ({self.status}); the gateway does"
                " not follow redirects",
                code="upstream_redirect",
            )
        try:
            async with asyncio.timeout(self.read_s):
                body = await _read_capped(self.response, 64 * 1024, truncate=True)
        except (TimeoutError, OSError, ValueError):
            body = b""
        detail = _upstream_message(body)
        if self.status >= 500 or self.status in (401, 403, 407):
            log.warning("backend %s answered %d", name, self.status)
            suffix = f": {detail}" if detail and self.status >= 500 else ""
            raise UpstreamError(f"backend '{name}' answered {self.status}{suffix}")
        message = detail or self.response.reason or "error"
        if self.status == 429:
            raise UpstreamRateLimited(
                429,
                f"backend '{name}' is rate limiting: {message}",
                code="upstream_rate_limited",
                retry_after=_retry_after(self.response.headers.get("Retry-After")),
            )
        raise UpstreamStatusError(self.status, f"backend '{name}': {message}")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._deadline is not None:
                self._deadline.close()
            self.stop_events()
            self._events = None  # the run points back here: no cycle is left to collect
            self.response.close()
            self._client._call_done()


class BackendClient:
    """The connection pool for one backend (``http1.Pool``), closed once idle after a
    reload retired it. No cookies are kept: one pool serves every client."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.name = config.name
        https = config.url is not None and config.url.scheme == "https"
        self._ssl = config.ssl_context if https else None
        self._pool: Pool | None = None
        self._active = 0
        self._retired = False
        self._closing: asyncio.Task[None] | None = None
        self._is_closed = False
        self._headers = dict(_JSON_HEADERS)
        self._urls: dict[str, URL] = {}
        self._targets: dict[URL, str] = {}
        if config.api_key:
            self._headers["Authorization"] = f"Bearer {config.api_key}"
        elif config.basic_auth:
            user, password = config.basic_auth
            pair = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {pair}"

    @property
    def pool(self) -> Pool:
        if self._pool is None or self._pool.closed:
            # After a reload retired and closed this client, a request admitted before
            # the reload (it waited for a slot) still goes out; it closes again after.
            self._is_closed = False
            url = self.config.url
            if url is None or url.host is None:
                raise ValueError(f"backend '{self.name}' is built in and has no URL")
            self._pool = Pool(
                url.scheme,
                url.host,
                url.port or (443 if url.scheme == "https" else 80),
                url.host_port_subcomponent or url.host,
                self._ssl,
                self.config.timeouts.connect_s,
            )
        return self._pool

    def url(self, endpoint: str) -> URL:
        url = self._urls.get(endpoint)
        if url is None:
            if self.config.url is None:
                raise ValueError(f"backend '{self.name}' is built in and has no URL")
            url = self.config.url / endpoint
            if len(self._urls) < 64:  # a handful of endpoints; joining costs per request
                self._urls[endpoint] = url
        return url

    async def post(
        self,
        endpoint: str | URL,
        payload: dict[str, Any],
        request_id: str,
        read_timeout_s: float | None = None,
        on_head: Callable[[UpstreamCall], None] | None = None,
    ) -> UpstreamCall:
        """Send a JSON request and wait (up to the read timeout) for the response head.

        ``endpoint`` is relative to the backend's URL, or a full URL on its origin;
        ``read_timeout_s`` overrides the backend's read timeout for this call (music
        generation takes about as long as the audio). ``on_head`` gets the call (the one
        this returns) in the read callback that completes the head, whatever its status,
        before this returns (``http1.Pool.request``): a stream relay starts there.
        """
        body = _COMPACT_JSON.encode(payload).encode()
        headers = {**self._headers, "X-Request-Id": request_id}
        return await self._open("POST", endpoint, body, headers, read_timeout_s, on_head)

    async def send(
        self,
        endpoint: str | URL,
        body: bytes | AsyncIterable[bytes],
        content_type: str,
        request_id: str,
        read_timeout_s: float | None = None,
    ) -> UpstreamCall:
        """Send a body that is not JSON (a multipart upload, streamed when ``body`` is an
        async iterable) and wait for the response head, which may be anything (audio)."""
        headers = {
            **self._headers,
            "Content-Type": content_type,
            "Accept": "*/*",
            "X-Request-Id": request_id,
        }
        return await self._open("POST", endpoint, body, headers, read_timeout_s)

    async def get(
        self,
        path: str,
        request_id: str | None = None,
        headers: dict[str, str] | None = None,
        read_timeout_s: float | None = None,
    ) -> UpstreamCall:
        """GET ``path`` on the backend's origin and wait for the response head; the body
        is read from the call (``read_body``, ``chunks``) and the call closed by the caller.
        Only the backend's credentials go along, no JSON headers."""
        auth = self._headers.get("Authorization")
        sent = {"Authorization": auth} if auth else {}
        if request_id:
            sent["X-Request-Id"] = request_id
        sent.update(headers or {})
        return await self._open("GET", self.url("").with_path(path), None, sent, read_timeout_s)

    async def _open(
        self,
        method: str,
        endpoint: str | URL,
        body: bytes | AsyncIterable[bytes] | None,
        headers: dict[str, str],
        read_timeout_s: float | None,
        on_head: Callable[[UpstreamCall], None] | None = None,
    ) -> UpstreamCall:
        read_s = read_timeout_s or self.config.timeouts.read_s
        target = self._target(endpoint if isinstance(endpoint, URL) else self.url(endpoint))
        early: list[UpstreamCall] = []
        self._active += 1
        try:
            async with asyncio.timeout(read_s) as deadline:
                head_hook = None
                if on_head is not None:

                    def head_hook(response: Response) -> None:
                        deadline.reschedule(None)  # the head is here: the read timeout is met
                        call = UpstreamCall(self, response, read_s)
                        early.append(call)
                        on_head(call)

                response = await self.pool.request(method, target, headers, body, head_hook)
        except BaseException as exc:
            if early:
                early[0].stop_events()
            self._call_done()
            if isinstance(exc, TimeoutError | OSError | ValueError):
                raise self.translate(exc, before_head=True) from None
            raise
        return early[0] if early else UpstreamCall(self, response, read_s)

    def _target(self, url: URL) -> str:
        """The request target (path and query) of ``url``, which must be on the
        backend's origin."""
        target = self._targets.get(url)
        if target is None:
            base = self.config.url
            if base is None or url.origin() != base.origin():
                raise UpstreamError(f"backend '{self.name}': a request outside its origin")
            target = url.raw_path_qs
            if len(self._targets) < 64:
                self._targets[url] = target
        return target

    def translate(
        self, exc: BaseException, *, streaming: bool = False, before_head: bool = False
    ) -> GatewayError:
        """A transport failure as the gateway error the client should see."""
        name = self.name
        if isinstance(exc, GatewayError):
            return exc  # translated already (a probe's failure keeps its reason)
        tls_reason = _tls_reason(exc)
        if (
            tls_reason is None
            and self._ssl is not None
            and isinstance(exc, Disconnected)
            and not exc.head_seen
            and not exc.reused
        ):
            # Python TLS servers (asyncio, uvicorn) check a client certificate only after
            # the TLS 1.3 handshake completed on our side, then drop the connection
            # without an alert: a reset or a close before any response byte is all we see.
            tls_reason = (
                "the backend closed the connection after the handshake without answering;"
                " it most likely rejected the client certificate"
                if self.config.tls.client_cert is not None
                else "the backend reset the connection after the handshake; it may require a "
                "client certificate or not trust the one sent"
            )
        if tls_reason is not None:
            return UpstreamUnavailable(
                f"TLS failure talking to backend '{name}': {tls_reason}", code="upstream_tls_error"
            )
        if isinstance(exc, TimeoutError):
            phase = "stream went idle" if streaming else "did not answer"
            return UpstreamTimeout(f"backend '{name}' {phase} within the configured timeout")
        if isinstance(exc, ConnectFailed):
            return UpstreamUnavailable(f"cannot connect to backend '{name}': {_os_reason(exc)}")
        if isinstance(exc, Disconnected):
            if exc.reset:
                return UpstreamError(f"backend '{name}' reset the connection")
            return UpstreamError(f"backend '{name}' closed the connection mid-response")
        if isinstance(exc, ConnectionResetError):
            return UpstreamError(f"backend '{name}' reset the connection")
        if isinstance(exc, MalformedResponse):
            return UpstreamError(f"backend '{name}' sent a malformed response")
        if isinstance(exc, ValueError):
            return UpstreamError(f"backend '{name}' sent a malformed stream")
        return UpstreamError(f"backend '{name}' failed: {type(exc).__name__}")

    def _call_done(self) -> None:
        self._active -= 1
        if self._retired and self._active == 0:
            self._close_soon()

    def retire(self) -> None:
        """Close the pool once the requests still using it have finished."""
        self._retired = True
        if self._active == 0:
            self._close_soon()

    def _close_soon(self) -> None:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self.close())

    @property
    def closed(self) -> bool:
        return self._is_closed

    async def close(self) -> None:
        self._is_closed = True
        self._closing = None
        if self._pool is not None:
            self._pool.close()


_BOUNDARY = re.compile(rb"\n\r?\n")  # the blank line that ends an event
_BLANK_START = (b"", b"\n", b"\r")  # a piece that starts with a blank line, or none


def split_events(run: bytes) -> list[bytes]:
    """The events in a run from ``UpstreamCall.event_runs``, each with its blank line."""
    events, start = [], 0
    for match in _BOUNDARY.finditer(run):
        events.append(run[start : match.end()])
        start = match.end()
    if start < len(run):
        events.append(run[start:])
    return events


class EventFramer:
    """Whole server-sent events out of network pieces, for ``event_runs`` and
    ``relay_events``.

    ``feed`` returns the events a piece completed, back to back, as the slice of the
    piece that holds them when it can (no copy, no JSON parsing); blank lines between
    events are dropped and a backend's error event is cleaned (``_checked``). An event
    longer than ``MAX_SSE_EVENT_BYTES`` is never buffered past that: ``error`` is set
    (after the events before it were returned) and the stream must end.
    """

    __slots__ = ("_pending", "_pending_size", "_tail", "_too_large", "error")

    def __init__(self, too_large: Callable[[], GatewayError]) -> None:
        self._pending: list[bytes] = []  # an event still incomplete, in pieces
        self._pending_size = 0
        self._tail = b""  # the last two bytes pending: a boundary may straddle pieces
        self._too_large = too_large
        self.error: GatewayError | None = None

    def feed(self, piece: bytes) -> bytes:
        limit = MAX_SSE_EVENT_BYTES
        pending = self._pending
        if not pending and piece[:1] not in _BLANK_START:
            # The usual piece: exactly one whole event (one token), relayed as it is.
            match = _BOUNDARY.search(piece)
            if match is not None and match.end() == len(piece) and match.start() <= limit:
                return piece if b'"error"' not in piece else _checked(piece)
        if pending:
            tail = self._tail + piece
            if _BOUNDARY.search(tail) is None:
                pending.append(piece)
                self._pending_size += len(piece)
                self._tail = tail[-2:]
                if self._pending_size > limit + 2:
                    self.error = self._too_large()
                return b""
            pending.append(piece)
            piece = b"".join(pending)
            self._pending = []
        start, end = 0, len(piece)
        first = -1  # where the current run of back-to-back events starts
        runs: list[bytes] = []
        while start < end:
            if piece.startswith(b"\n", start) or piece.startswith(b"\r\n", start):
                if first >= 0:  # a blank line between events: not relayed
                    runs.append(piece[first:start])
                    first = -1
                start += 1 if piece[start] == 10 else 2
                continue
            match = _BOUNDARY.search(piece, start)
            if match is None:
                break
            if match.start() - start > limit:
                self.error = self._too_large()  # after the events before it
                break
            if first < 0:
                first = start
            start = match.end()
        if first >= 0:
            runs.append(piece if first == 0 and start == end else piece[first:start])
        if start < end and self.error is None:
            rest = piece[start:]
            self._pending, self._pending_size, self._tail = [rest], len(rest), rest[-2:]
            if len(rest) > limit + 2:
                self.error = self._too_large()
        if not runs:
            return b""
        return _checked(runs[0] if len(runs) == 1 else b"".join(runs))

    def end(self) -> bytes:
        """At the end of the body: an unterminated last event, completed, or ``b""``."""
        rest = b"".join(self._pending).lstrip(b"\r\n")
        self._pending = []
        return _checked(rest + b"\n") if rest else b""


class _EventsRun:
    """One ``relay_events``: the framer, the timeouts and the sink the response's body is
    piped into, set up at once (``start_events`` may do it from a read callback); ``wait``
    is the part that awaits the end."""

    __slots__ = ("_call", "_deliver", "_ended", "_framer", "_loop", "_piped", "_stopped", "_watch")

    def __init__(self, call: UpstreamCall, deliver: Callable[[bytes], bool]) -> None:
        self._call = call
        self._deliver = deliver
        self._framer = EventFramer(call._too_large)
        loop = self._loop = asyncio.get_running_loop()
        self._ended: asyncio.Future[None] = loop.create_future()  # last wanted event, or the end
        self._stopped = False
        timeouts = call._client.config.timeouts
        self._watch = _IdleWatch(loop, call.response, call.read_s, timeouts.stream_idle_s)
        # Last: piping delivers what is buffered already.
        self._piped = call.response.pipe(self._sink)
        self._piped.add_done_callback(self._body_ended)

    def _sink(self, piece: bytes) -> None:
        if self._stopped:
            return
        watch = self._watch
        watch.seen = True
        watch.last = self._loop.time()
        framer = self._framer
        run = framer.feed(piece)
        if run and self._deliver(run):
            self._stopped = True
            self._ended.set_result(None)
            return
        if framer.error is not None:
            raise framer.error

    def _body_ended(self, piped: asyncio.Future[None]) -> None:
        if not self._ended.done():
            self._ended.set_result(None)

    def stop(self) -> None:
        """The call is over: no timer left, and the pipe's outcome taken (a failure
        there only means the connection is not reused)."""
        self._watch.close()
        piped = self._piped
        if not piped.done():
            piped.cancel()
        elif not piped.cancelled():
            piped.exception()

    async def wait(self) -> None:
        call = self._call
        piped = self._piped
        try:
            await self._ended
            if self._stopped:
                call._rest = piped  # the body's end, which ``finish`` waits for
                return
            piped.result()
        except (TimeoutError, OSError, ValueError) as exc:
            raise call._client.translate(exc, streaming=True) from None
        finally:
            self._watch.close()
            if not piped.done() and not self._stopped:
                piped.cancel()
        rest = self._framer.end()
        if rest:
            self._deliver(rest)


class _IdleWatch:
    """``relay_events``' timeouts with one timer per stream: the first event within the
    read timeout, each later one within the stream-idle timeout. The relay sets ``seen``
    and ``last`` per piece (attribute stores). The timer is armed once, for the earlier of
    the two timeouts, and re-arms itself for the deadline that applies when it fires (so
    it never fires late) until a wait overruns; then it fails the response with
    ``TimeoutError``. While the relay holds the backend's socket (its client reads slower
    than the backend writes) the backend is not idle."""

    __slots__ = ("_first_s", "_handle", "_idle_s", "_loop", "_response", "last", "seen")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        response: Response,
        first_s: float,
        idle_s: float,
    ) -> None:
        self._loop = loop
        self._response = response
        self._first_s = first_s
        self._idle_s = idle_s
        self.last = loop.time()
        self.seen = False
        self._handle: asyncio.TimerHandle | None = loop.call_at(
            self.last + min(first_s, idle_s), self._check
        )

    def _check(self) -> None:
        now = self._loop.time()
        if self._response.paused:
            self.last = now  # held by the relay, not idle: count from when it resumes
        # Before the first event, ``last`` is when the stream started.
        at = self.last + (self._idle_s if self.seen else self._first_s)
        if now < at:
            self._handle = self._loop.call_at(at, self._check)
        else:
            self._handle = None
            self._response.abort(TimeoutError())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _checked(run: bytes) -> bytes:
    """A run with every backend error event in it cleaned (``_clean_error_event``)."""
    if b'"error"' not in run:
        return run
    return b"".join(_clean_error_event(event) for event in split_events(run))


class _ReadDeadline:
    """A read timeout for a stream without a timer per read.

    ``start(wait)`` before each read sets the deadline; one timer per stream checks it
    and re-arms itself while reads keep arriving in time. When a read overruns, the
    task is cancelled and ``expired()`` says the cancellation was the timeout (as
    ``asyncio.timeout`` does). Only a read is ever interrupted: between reads the
    timer does nothing, so the consumer's own awaits are never cut short.
    """

    __slots__ = ("_at", "_fired", "_handle", "_loop", "_reading", "_task")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._at = 0.0
        self._reading = False
        self._handle: asyncio.TimerHandle | None = None
        self._fired = False

    def start(self, wait: float) -> None:
        self._at = at = self._loop.time() + wait
        self._reading = True
        handle = self._handle
        if handle is None or handle.when() > at:
            if handle is not None:
                handle.cancel()
            self._handle = self._loop.call_at(at, self._check)

    def stop(self) -> None:
        self._reading = False

    def expired(self) -> bool:
        """Whether this cancellation is the timeout's (and no one else's)."""
        if not self._fired or self._task is None:
            return False
        self._fired = False
        return self._task.uncancel() == 0

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        if not self._reading:
            return  # the next read arms a new timer
        if self._loop.time() < self._at:
            self._handle = self._loop.call_at(self._at, self._check)
        elif self._task is not None:
            self._fired = True
            self._task.cancel()


async def _read_capped(response: Response, limit: int, truncate: bool = False) -> bytes:
    """Read to EOF; past ``limit`` bytes raise ``OverflowError`` (or stop, if truncating)."""
    pieces: list[bytes] = []
    size = 0
    while piece := await response.readany():
        size += len(piece)
        pieces.append(piece)
        if size > limit:
            if truncate:
                break
            raise OverflowError
    return b"".join(pieces)[:limit] if truncate else b"".join(pieces)


def _upstream_message(body: bytes) -> str | None:
    """The backend's error message: ``error.message`` / ``error`` / ``detail`` from JSON
    (FastAPI's too), else plain text (never an HTML page), cleaned by ``clean_message``."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        text = body.decode("utf-8", "replace").strip()
        return clean_message(text) if text and not text.startswith("<") else None
    if not isinstance(parsed, dict):
        return None
    error = parsed.get("error", parsed.get("detail"))
    if isinstance(error, dict):
        error = error.get("message")
    if not isinstance(error, str) or not error.strip():
        return None
    return clean_message(error)


def _clean_error_event(event: bytes) -> bytes:
    """A backend's ``data: {"error": ...}`` event with only a cleaned message, type and code."""
    for line in event.splitlines():
        if not line.startswith(b"data:"):
            continue
        try:
            parsed = json.loads(line[5:])
        except (ValueError, RecursionError):
            return event
        if not isinstance(parsed, dict) or not parsed.get("error"):
            return event  # no error here (some backends send "error": null in every chunk)
        error = parsed["error"]
        details = error if isinstance(error, dict) else {"message": error}
        message = details.get("message")
        cleaned: dict[str, Any] = {
            "message": (clean_message(message) if isinstance(message, str) else None)
            or "the backend reported an error",
            "type": _short(details.get("type")) or "api_error",
            "param": None,
            "code": _short(details.get("code")),
        }
        return b"data: " + json.dumps({"error": cleaned}).encode() + b"\n\n"
    return event


def _short(value: Any) -> str | None:
    """A type or code worth passing on: a short identifier, nothing else."""
    if isinstance(value, str) and len(value) <= 64 and value.replace("_", "").isalnum():
        return value
    return None


def clean_message(text: str) -> str | None:
    """A backend's error text fit for a client: no traceback (only its last line, the
    error itself), no URL, filesystem path or anything that looks like a key or password,
    no control characters, at most ``MAX_ERROR_MESSAGE`` characters."""
    if "Traceback (most recent call last)" in text or _TRACEBACK.search(text[:_CLEANED_CHARS]):
        last = text.rstrip()
        last = last[last.rfind("\n") + 1 :].strip()[:_CLEANED_CHARS]
        text = "" if _TRACEBACK.search(last) else last
    text = text[:_CLEANED_CHARS]
    text = _URL.sub("<url>", text)
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    text = _TOKENISH.sub(_redact_random, text)
    text = _PATH.sub("<path>", text)
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    if len(text) > MAX_ERROR_MESSAGE:
        text = text[: MAX_ERROR_MESSAGE - 1] + "…"
    return text or None


def _redact_random(match: re.Match[str]) -> str:
    for piece in _PIECE.findall(match.group(0)):
        if any(c.isdigit() for c in piece) and any(c.isalpha() for c in piece):
            return "<redacted>"
    return match.group(0)


def _retry_after(value: str | None) -> int:
    """Seconds from a Retry-After header (delta or HTTP date), within 1..3600."""
    seconds = 1
    if value:
        value = value.strip()
        if value.isascii() and value.isdigit():
            seconds = int(value) if len(value) <= 6 else 3600
        else:
            with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
                when = email.utils.parsedate_to_datetime(value)
                seconds = math.ceil(when.timestamp() - time.time())
    return min(max(seconds, 1), 3600)


def _tls_reason(exc: BaseException) -> str | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return _ssl_reason(seen)
        seen = seen.__cause__ or seen.__context__
    return None


# OpenSSL's verify codes, in words that name no host or address (its own messages
# quote the name or IP the certificate did not match).
_VERIFY_REASONS = {
    9: "the certificate is not yet valid",
    10: "the certificate has expired",
    18: "the certificate is self-signed and not trusted",
    19: "the certificate chain has a self-signed certificate that is not trusted",
    20: "the certificate's issuer is not trusted (see the backend's tls.ca_bundle)",
    21: "the certificate's issuer is not trusted (see the backend's tls.ca_bundle)",
    23: "the certificate has been revoked",
    62: "the certificate does not name the backend's host",
    64: "the certificate does not name the backend's IP address",
}
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = _VERIFY_REASONS.get(exc.verify_code)
        if reason is None:
            reason = _QUOTED.sub("<name>", str(exc.verify_message or "unknown reason"))
        return f"certificate verify failed: {reason}"
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        return _TLS_REASONS.get(reason, reason.replace("_", " ").lower())
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def _os_reason(exc: OSError) -> str:
    cause = exc.__cause__
    if isinstance(cause, socket.gaierror):
        return "its host name does not resolve"
    if isinstance(cause, OSError) and cause.errno and cause.errno > 0:
        return os.strerror(cause.errno).lower()
    if exc.errno and exc.errno > 0:
        return os.strerror(exc.errno).lower()
    return "connection failed"
