"""Background health checks: each backend probed on its own interval.

Liveness (optional) says the process is up; readiness says it can serve. A backend whose
models are not listed in the YAML has them discovered from ``/models`` on each probe; one
whose models are listed is not asked for ``/models`` (many shims have no such route): its
readiness is its liveness path, else being reachable (any HTTP answer below 500 at its
URL). A probe whose client a reload retired meanwhile is discarded: it never marks the new
backend down. Probes never follow redirects: a 3xx counts as a failed probe. A probe is a
``backend_call`` without an admission slot.

A failure only the admin can fix — TLS verification, a rejected client certificate, a 401
or 403 from the backend — makes the backend ``misconfigured``: requests get a 502 naming
the reason (as they would without health checks), not a 503 "retry shortly".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator

from ..errors import GatewayError
from ..wire.model_name import is_model_name
from .call import backend_call
from .registry import Backend, HealthState, RegistryHolder

log = logging.getLogger("gateway.health")
_PROBE_BODY = 4 * 1024 * 1024
MAX_DISCOVERED = 1024  # models taken from one backend's listing
_REFUSED = (401, 403, 407)  # the backend refuses the gateway's credentials
_PERMANENT_CODES = ("upstream_tls_error",)
Outcome = tuple[str, str | None, str | None]  # state, error, the code requests get


class HealthChecker:
    def __init__(self, holder: RegistryHolder) -> None:
        self._holder = holder
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        while True:
            now = time.monotonic()
            backends = list(self._holder.current.backends.values())
            for backend in backends:
                if not backend.health.probing and backend.health.next_probe_at <= now:
                    self._spawn(backend)
            await asyncio.sleep(_tick(backends))

    def _spawn(self, backend: Backend) -> None:
        backend.health.probing = True
        task = asyncio.create_task(self.probe(backend))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def probe(self, backend: Backend) -> None:
        health = backend.health
        config = backend.config.health
        try:
            state, error, code = await self._check(backend)
        finally:
            health.probing = False
            health.next_probe_at = time.monotonic() + config.interval_s
        current = self._holder.current.get(backend.name)
        if current is None or current.client is not backend.client:
            # A reload retired this client mid-probe: the answer (often "session closed")
            # says nothing about the backend now serving, which may share this health.
            health.next_probe_at = 0.0
            return
        if state != HealthState.READY:
            # Come back sooner while a backend is failing, so a restart is noticed fast.
            retry = min(config.interval_s, 0.5 * 2 ** min(health.consecutive_failures, 6))
            health.next_probe_at = time.monotonic() + retry
        if state != health.state:
            log.info("backend %s is now %s%s", backend.name, state, f" ({error})" if error else "")
        health.state, health.error, health.code = state, error, code
        health.checked_at = time.time()
        health.consecutive_failures = (
            0 if state == HealthState.READY else (health.consecutive_failures + 1)
        )

    async def _check(self, backend: Backend) -> Outcome:
        config = backend.config.health
        client = backend.client
        if backend.config.url is None:
            return HealthState.READY, None, None  # built in: nothing to probe
        models_path = client.url("models").path
        discover = backend.config.models is None and backend.config.protocol == "openai"
        listing: bytes | None = None
        try:
            if config.liveness:
                status, _ = await _probe(backend, config.liveness, config.timeout_s)
                if status >= 300:
                    return _failed(backend, HealthState.DOWN, "liveness", status)
            if config.readiness:
                status, body = await _probe(backend, config.readiness, config.timeout_s)
                if status >= 300:
                    return _failed(backend, HealthState.NOT_READY, "readiness", status)
                listing = body if config.readiness == models_path else None
            elif config.reachability:
                path = backend.config.url.path or "/"
                status, _ = await _probe(backend, path, config.timeout_s)
                if status in _REFUSED or status >= 500 or 300 <= status < 400:
                    return _failed(backend, HealthState.NOT_READY, "its URL", status)
            if discover:
                if listing is None:
                    status, listing = await _probe(backend, models_path, config.timeout_s)
                    listing = listing if status < 300 else None
                discovered = _model_ids(listing) if listing is not None else None
                if discovered is not None:
                    more = len(discovered) > MAX_DISCOVERED
                    discovered = discovered[:MAX_DISCOVERED]
                    if more and discovered != backend.discovered:
                        log.warning(
                            "backend %s lists more models than the %d the gateway routes",
                            backend.name,
                            MAX_DISCOVERED,
                        )
                    backend.discovered = discovered
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = _describe(backend, exc)
            if isinstance(exc, GatewayError) and exc.code in _PERMANENT_CODES:
                return HealthState.MISCONFIGURED, error, exc.code
            return HealthState.DOWN, error, None
        return HealthState.READY, None, None

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _probe(backend: Backend, path: str, timeout_s: float) -> tuple[int, bytes]:
    """GET a health path on the backend's origin (no redirects, no slot): status and body
    (the first 4 MiB); transport failures raise."""
    async with (
        asyncio.timeout(timeout_s),
        backend_call(
            backend,
            None,
            path,
            None,
            "",
            method="GET",
            check_status=False,
            read_timeout_s=timeout_s,
        ) as call,
    ):
        return call.status, await call.read_body(limit=_PROBE_BODY, truncate=True)


def _describe(backend: Backend, exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return "probe timed out"
    translated = backend.client.translate(exc)
    return translated.message if isinstance(translated, GatewayError) else type(exc).__name__


def _failed(backend: Backend, state: str, probe: str, status: int) -> Outcome:
    """The outcome of a probe that got an HTTP error ``status``."""
    if status in _REFUSED:
        error = (
            f"backend '{backend.name}' answered {status} to the {probe} probe: it refuses the"
            " gateway's credentials (check the backend's api_key or basic_auth)"
        )
        return HealthState.MISCONFIGURED, error, "upstream_error"
    return state, f"{probe} answered {status}{_redirect(status)}", None


def _redirect(status: int) -> str:
    return " (a redirect; not followed)" if status < 400 else ""


def _model_ids(body: bytes) -> tuple[str, ...] | None:
    """The model ids of a ``/models`` listing: each a name a request could use
    (``check_model_name``), each once, at most ``MAX_DISCOVERED`` + 1 of them (the probe
    keeps ``MAX_DISCOVERED`` and warns of more). Every
    ``/v1/models`` answer and every route lookup goes over them: a backend listing
    hundreds of thousands would make each of those hold the event loop for seconds."""
    try:
        listing = json.loads(body)
        ids = dict.fromkeys(item["id"] for item in listing["data"] if is_model_name(item.get("id")))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None
    return tuple(ids)[: MAX_DISCOVERED + 1]  # one more: the caller can tell there were more


def _tick(backends: list[Backend]) -> float:
    shortest = min((b.config.health.interval_s for b in backends), default=1.0)
    return min(1.0, max(0.05, shortest / 4))


@contextlib.asynccontextmanager
async def running(checker: HealthChecker) -> AsyncIterator[HealthChecker]:
    task = asyncio.create_task(checker.run())
    try:
        yield checker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await checker.close()
