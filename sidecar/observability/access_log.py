"""One JSON line per request: who, what route, how it went. Never a token or a prompt."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

access_log = logging.getLogger("gateway.access")


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
    stream: bool = False
    ttft_ms: float | None = None
    bytes_out: int = 0
    token: str | None = None

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
            "stream": self.stream,
            "ttft_ms": self.ttft_ms,
            "bytes_out": self.bytes_out,
            "client_ip": self.client_ip,
            "token_name": self.token,
        }
        access_log.info(json.dumps(line, separators=(",", ":")))
