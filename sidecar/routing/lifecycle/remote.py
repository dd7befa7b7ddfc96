"""Remote servers that load and unload models themselves (``lifecycle:`` on a backend).

The gateway does not run these; it drives their own hooks, through ``backend_call``
(so their TLS, credentials, redirect policy and error cleaning apply), without an
admission slot:

- ``ollama``: ``GET /api/ps`` lists the loaded models (with their size in memory); a
  load is ``POST /api/generate`` with the model, an empty prompt and ``keep_alive`` (the
  backend's ``keep_alive``, else ``-1``: until unloaded); an unload is the same with
  ``keep_alive: 0``. Ollama's OpenAI-compatible endpoints ignore a request's
  ``keep_alive`` (each request leaves the model with Ollama's default, 5 minutes or
  ``OLLAMA_KEEP_ALIVE``), so with a backend ``keep_alive`` set, the gateway sets it again
  through ``/api/generate`` when the last request in flight for a model ends: one small
  call per burst, never while a request for that model runs.
- ``llama-server`` (router mode): ``GET /models`` lists the models with their
  ``status.value`` (``unloaded``, ``loading``, ``loaded``, ``sleeping``, ``downloading``;
  ``failed: true`` after a failed start); ``POST /models/load`` and ``/models/unload``
  with ``{"model": id}``. A load waits until the list says ``loaded``.
- ``vllm-sleep``: ``GET /is_sleeping``, ``POST /wake_up``, ``POST /sleep?level=1`` (the
  server runs with ``--enable-sleep-mode`` and ``VLLM_SERVER_DEV_MODE=1``). One model per
  server, so the backend is a unit like a process (``SleepUnit``): a request for a
  sleeping server waits for its wake-up, within the backend's budget, and it is put back
  to sleep after ``keep_alive`` (seconds, or ``10m``; unset: never) idle.

Ollama and llama-server load a model by themselves when a request names it; the
gateway shows their state, loads and unloads on an admin's word, and publishes those
as events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Callable, Coroutine
from typing import Any

from yarl import URL

from ...config.schema import BackendConfig, ProcessConfig
from ...errors import GatewayError, UpstreamError
from ..call import backend_call
from ..registry import Backend

log = logging.getLogger("gateway.models")

LOADED, LOADING, UNLOADED, FAILED = "loaded", "loading", "unloaded", "failed"
_REQUEST_ID = "gateway-lifecycle"
_POLL_S = 0.1
_MAX_HOOK_BODY = 1024 * 1024  # a hook's answer is a short list: parsed on the event loop
_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_LLAMA_STATES = {"loaded": LOADED, "loading": LOADING, "downloading": LOADING}


def keep_alive_s(value: str | int | None) -> float | None:
    """Seconds of ``keep_alive`` (``10m``, ``3600``, ``1h``); ``None``: unset or forever."""
    if value is None:
        return None
    match = _DURATION.match(str(value))
    if match is None:
        return None
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    return seconds if seconds > 0 and math.isfinite(seconds) else None


async def _json(
    backend: Backend, method: str, path: str, payload: dict[str, Any] | None = None
) -> Any:
    """Call a hook on the backend's origin; its JSON answer (``None`` for an empty body)."""
    assert backend.config.url is not None
    endpoint: str | URL = path
    if method == "POST":
        origin = backend.config.url.origin()
        endpoint = URL(str(origin) + path)  # keeps a query such as ?level=1
    async with backend_call(
        backend,
        None,
        endpoint,
        payload or {},
        _REQUEST_ID,
        method=method,
        read_timeout_s=backend.config.timeouts.read_s,
    ) as call:
        body = await call.read_body(_MAX_HOOK_BODY)
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise UpstreamError(
            f"backend '{backend.name}' answered a lifecycle call with non-JSON"
        ) from None


def _listing(backend: Backend, answer: Any, field: str) -> list[Any]:
    """``answer[field]``, a server's list of models (absent: none); anything else is a 502."""
    if answer is None:
        return []
    if isinstance(answer, dict):
        items = answer.get(field)
        if items is None:
            return []
        if isinstance(items, list):
            return items
    raise UpstreamError(
        f"backend '{backend.name}' answered a lifecycle call with JSON of an unexpected shape"
    )


class RemoteHooks:
    """Per-model state, load and unload of a server that manages its own models."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @property
    def config(self) -> BackendConfig:
        return self.backend.config

    async def states(self) -> dict[str, dict[str, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    async def load(self, model: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def unload(self, model: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def models(self) -> list[str]:
        return [model.id for model in self.config.models or ()]


class OllamaHooks(RemoteHooks):
    async def states(self) -> dict[str, dict[str, Any]]:
        listing = await _json(self.backend, "GET", "/api/ps")
        loaded: dict[str, dict[str, Any]] = {}
        for item in _listing(self.backend, listing, "models"):
            if isinstance(item, dict):
                for key in ("name", "model"):
                    if isinstance(item.get(key), str):
                        loaded[item[key]] = item
        rows = {}
        for model in self.models():
            item = loaded.get(model) or loaded.get(f"{model}:latest")
            size = item.get("size_vram") or item.get("size") if item else None
            rows[model] = {
                "state": LOADED if item else UNLOADED,
                "memory_mb": round(size / 1_048_576) if isinstance(size, int) else None,
                "expires_at": item.get("expires_at") if item else None,
            }
        return rows

    async def load(self, model: str) -> None:
        keep_alive = self.config.keep_alive if self.config.keep_alive is not None else -1
        payload = {"model": model, "prompt": "", "stream": False, "keep_alive": keep_alive}
        await _json(self.backend, "POST", "/api/generate", payload)

    async def unload(self, model: str) -> None:
        payload = {"model": model, "prompt": "", "stream": False, "keep_alive": 0}
        await _json(self.backend, "POST", "/api/generate", payload)


class LlamaRouterHooks(RemoteHooks):
    async def states(self) -> dict[str, dict[str, Any]]:
        listing = await _json(self.backend, "GET", "/models")
        found: dict[str, str] = {}
        for item in _listing(self.backend, listing, "data"):
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                status = item.get("status")
                status = status if isinstance(status, dict) else {}
                value = str(status.get("value"))
                state = FAILED if status.get("failed") else _LLAMA_STATES.get(value, UNLOADED)
                found[item["id"]] = state
        return {model: {"state": found.get(model, UNLOADED)} for model in self.models()}

    async def load(self, model: str) -> None:
        await _json(self.backend, "POST", "/models/load", {"model": model})
        await self._until(model, LOADED)

    async def unload(self, model: str) -> None:
        await _json(self.backend, "POST", "/models/unload", {"model": model})
        await self._until(model, UNLOADED)

    async def _until(self, model: str, wanted: str) -> None:
        while True:
            state = (await self.states()).get(model, {}).get("state")
            if state == wanted:
                return
            if state == FAILED:
                raise UpstreamError(f"backend '{self.backend.name}' failed to load '{model}'")
            await asyncio.sleep(_POLL_S)


class _KeepAliveLease:
    __slots__ = ("_keeper", "_model", "_released")

    def __init__(self, keeper: OllamaKeepAlive, model: str | None) -> None:
        self._keeper = keeper
        self._model = model
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._keeper.leave(self._model)


class OllamaKeepAlive:
    """An Ollama backend's ``Backend.lifecycle``: counts the calls per model and, when a
    model's last one ends, sets its ``keep_alive`` again (see the module's rules)."""

    def __init__(
        self, hooks: OllamaHooks, spawn: Callable[[Coroutine[Any, Any, None]], None]
    ) -> None:
        self.hooks = hooks
        self._spawn = spawn
        self.in_flight: dict[str, int] = {}
        self._refreshing: set[str] = set()
        self._again: set[str] = set()
        self.refreshes = 0

    async def enter(self, started: float, model: str | None) -> _KeepAliveLease:
        if isinstance(model, str):
            self.in_flight[model] = self.in_flight.get(model, 0) + 1
        return _KeepAliveLease(self, model)

    def leave(self, model: str | None) -> None:
        if not isinstance(model, str):
            return
        left = self.in_flight.get(model, 1) - 1
        if left > 0:
            self.in_flight[model] = left
            return
        self.in_flight.pop(model, None)
        if model in self._refreshing:
            self._again.add(model)  # ended after the refresh was sent: once more
        else:
            self._refreshing.add(model)
            self._spawn(self._refresh(model))

    async def _refresh(self, model: str) -> None:
        try:
            while True:
                self._again.discard(model)
                try:
                    await self.hooks.load(model)
                    self.refreshes += 1
                except (GatewayError, TimeoutError) as exc:
                    log.warning(
                        "keep_alive for %s on %s: %s", model, self.hooks.backend.name, describe(exc)
                    )
                    return
                if model not in self._again or self.in_flight.get(model):
                    return
        finally:
            self._refreshing.discard(model)


def remote_hooks(backend: Backend) -> RemoteHooks | None:
    kind = backend.config.lifecycle
    if kind == "ollama":
        return OllamaHooks(backend)
    if kind == "llama-server":
        return LlamaRouterHooks(backend)
    return None


async def vllm_sleeping(backend: Backend) -> bool:
    answer = await _json(backend, "GET", "/is_sleeping")
    return bool(isinstance(answer, dict) and answer.get("is_sleeping"))


async def vllm_wake(backend: Backend) -> None:
    await _json(backend, "POST", "/wake_up")
    started = time.monotonic()
    while await vllm_sleeping(backend):
        if time.monotonic() - started > backend.config.timeouts.read_s:
            raise UpstreamError(f"backend '{backend.name}' did not wake up")
        await asyncio.sleep(_POLL_S)


async def vllm_sleep(backend: Backend) -> None:
    await _json(backend, "POST", "/sleep?level=1")


def sleep_spec(config: BackendConfig) -> ProcessConfig:
    """What a vLLM sleep backend's unit goes by, in a process spec's terms."""
    return ProcessConfig(
        cmd=(),
        start_timeout_s=config.timeouts.read_s,
        ttl_s=keep_alive_s(config.keep_alive) or 0.0,
        drain_timeout_s=config.timeouts.read_s,
        stop_timeout_s=config.timeouts.read_s,
    )


def describe(exc: BaseException) -> str:
    return exc.message if isinstance(exc, GatewayError) else type(exc).__name__
