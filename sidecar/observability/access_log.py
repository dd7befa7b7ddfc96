"""One JSON line per request: who, what route, how it went. Never a token or a prompt."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

access_log = logging.getLogger("gateway.access")
_LINE_JSON = json.JSONEncoder(separators=(",", ":"))  # made once, not per line
# A model name is logged as the caller sent it, cut to this many characters.
LOGGED_MODEL_CHARS = 128


@dataclass
class AccessRecord:
    """Filled in by the middleware and the handlers as the request goes."""

    request_id: str
    method: str
    route: str
    client_ip: str
    started: float = field(default_factory=time.perf_counter)
    status: int = 0
    backend: str | None = None
    model: str | None = None
    user: str | None = None  # the UI's user (accounts off: the shared "local" user)
    stream: bool = False
    ttft_ms: float | None = None
    bytes_out: int = 0
    token: str | None = None
    # What the usage ledger records (and token limits charge): the backend's ``usage``
    # counts, 0 when unknown; ``usage_estimated`` when they were guessed from text length.
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_estimated: bool = False
    ui_user: str | None = None  # the UI account a UI request ran as
    stream_failed: bool = False  # a stream that began (200) and ended with an error event

    def asked_for(self, model: str, stream: bool = False) -> None:
        """The model the caller named (cut to ``LOGGED_MODEL_CHARS``) and whether the
        reply streams: every face notes them here before it routes."""
        self.model = model[:LOGGED_MODEL_CHARS]
        self.stream = stream

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    def first_token(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = round((time.perf_counter() - self.started) * 1000, 2)

    def emit(self) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        line = {
            "ts": round(time.time(), 3),
            "request_id": self.request_id,
            "method": self.method,
            "route": self.route,
            "status": self.status,
            "duration_ms": round((time.perf_counter() - self.started) * 1000, 2),
            "backend": self.backend,
            "model": self.model,
            "user": self.user,
            "stream": self.stream,
            "ttft_ms": self.ttft_ms,
            "bytes_out": self.bytes_out,
            "client_ip": self.client_ip,
            "token_name": self.token,
        }
        text = _LINE_JSON.encode(line)
        handlers = access_log.handlers
        if len(handlers) == 1 and type(handlers[0]) is BatchedLineWriter:
            # What ``gateway serve`` sets up: the line is the whole record, so it goes to
            # the writer without a LogRecord (most of this method's cost otherwise).
            handlers[0].append(text)
            return
        # ``handle(makeRecord(...))`` is ``info()`` without ``findCaller``'s stack walk
        # (the caller is always this line): the same record to the same handlers.
        access_log.handle(
            access_log.makeRecord(
                access_log.name, logging.INFO, __file__, 0, text, (), None, "emit"
            )
        )


class BatchedLineWriter(logging.Handler):
    """Writes formatted records to a stream in batches, from a thread.

    The event loop only appends a string to a list (no lock hand-off, no syscall per
    request); the thread wakes every ``interval_s`` and writes what has accumulated, so
    a slow terminal or a full pipe never stalls a request.
    """

    def __init__(self, stream: TextIO, interval_s: float = 0.2) -> None:
        super().__init__()
        self._stream = stream
        self._interval_s = interval_s
        self._lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record))
        except Exception:
            self.handleError(record)

    def append(self, line: str) -> None:
        """A line already formatted (the access log's JSON), written as it is."""
        self._lines.append(line)

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        if lines:
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()
        super().close()
