"""Model processes the gateway runs: load on demand, unload when idle, swap within a group.

Rules:

- A backend with a ``process:`` block is a *unit*; its state is ``unloaded``, ``loading``,
  ``loaded``, ``draining`` (being stopped; its requests in flight finish first) or
  ``failed`` (its start or its process failed; retried with backoff).
- Every backend call enters the unit (``BackendCall.__aenter__``, after its admission
  slot): a loaded unit is entered at once (a counter and a clock read); otherwise the
  call waits for it to be loaded, within the backend's wait budget — its
  ``queue.timeout_s`` when it has a queue, else ``process.start_timeout_s`` — less the
  time it already spent in the admission queue. A wait that cannot fit is refused at
  once with 503 and ``Retry-After`` from the unit's *measured* load time (the last load's
  seconds, plus any backoff; during a first load, how long it has taken so far),
  and the load is started anyway so that the retry finds it ready.
- A group is a memory budget (``memory_mb``) or ``exclusive`` (one member loaded). A
  member that does not fit makes room by stopping other members: idle ones first, least
  recently used first, then busy ones; ``pin: true`` members never. A busy member keeps
  serving for the group's ``fairness_s`` (after it was loaded, and after the demand for
  the other arrived) before it is swapped out (its queue is served, requests for it are
  not cut off); then it is drained: new
  requests for it wait (for its next turn), the ones in flight finish (up to
  ``drain_timeout_s``) before its process stops. Requests for the member being loaded
  all wait for that one load and go together: one load serves a whole batch.
- The oldest waiting demand in a group goes first; a later one never jumps it.
- A unit idle (nothing in flight or waiting) for ``ttl_s`` is stopped (``0``: never).
- A crash (the process exits while loaded) or a failed start marks it ``failed``; the
  next request restarts it after a backoff of 0.5 s doubling per consecutive failure, at
  most 30 s; a request that the process served resets the count.
- Each change is published as an event (``events.py``) and counted by the observer
  (the Prometheus metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from ...config.schema import BackendConfig, GatewayConfig, GroupConfig, ProcessConfig
from ...errors import BackendNotReady, GatewayError, NotFound
from ..registry import Backend, RegistryHolder
from . import remote
from .events import EventHub
from .process import ModelProcess, kill_leftovers, model_environment

log = logging.getLogger("gateway.models")

UNLOADED, LOADING, LOADED, DRAINING, FAILED = "unloaded", "loading", "loaded", "draining", "failed"
STATES = (UNLOADED, LOADING, LOADED, DRAINING, FAILED)
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
_PROBE_TIMEOUT_S = 2.0
_PORT = "{port}"

# kind ("load", "ready", "unload", "eviction", "crash", "failed": a start that never got
# ready), backend, seconds (ready), reason (unload)
Observer = Callable[[str, str, float | None, str | None], None]


class Lease:
    """A call running on a loaded unit; ``release()`` is idempotent."""

    __slots__ = ("_released", "_unit")

    def __init__(self, unit: ModelUnit) -> None:
        self._unit = unit
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._unit._leave()


class ModelUnit:
    """One backend whose model server process the gateway runs."""

    def __init__(self, manager: LifecycleManager, backend: Backend) -> None:
        self.manager = manager
        self.name = backend.name
        self.backend = backend
        self.config = backend.config
        self.group: Group = Group(manager, None)
        self.state = UNLOADED
        self.loaded_at: float | None = None  # wall clock, for people
        self.loaded_mono = 0.0
        self.load_started = 0.0
        self.last_used = time.monotonic()
        self.last_load_s: float | None = None
        self.reported_memory_mb: float | None = None
        self.loads = self.crashes = self.evictions = self.failures = self.attempts = 0
        self.retry_at = 0.0
        self.error: str | None = None
        self.active = 0  # calls running on it
        self.waiting = 0  # calls waiting for it to be loaded
        self.waiting_since = 0.0
        self.requested = False  # a load asked for without a waiting call (admin, preload)
        self.evicting = False
        self.stale = False  # its process runs a config that is no longer the current one
        self.retired = False  # a reload removed it: it never loads again
        self.process: ModelProcess | None = None
        self._changed = asyncio.Event()

    # -- the request path ------------------------------------------------------------------

    @property
    def spec(self) -> ProcessConfig:
        assert self.config.process is not None
        return self.config.process

    @property
    def port(self) -> int:
        assert self.config.url is not None
        return self.config.url.port or 0

    async def enter(self, started: float, model: str | None = None) -> Lease:
        """Wait until loaded (within the backend's budget from ``started``); then run."""
        if self.state == LOADED and not self.evicting:
            self.active += 1
            self.last_used = time.monotonic()
            return Lease(self)
        return await self._wait(started)

    def wait_budget(self) -> float:
        queue = self.config.queue
        if queue.max > 0 and queue.timeout_s > 0:
            return queue.timeout_s
        return self.spec.start_timeout_s

    async def _wait(self, started: float) -> Lease:
        now = time.monotonic()
        deadline = started + self.wait_budget()
        estimate = self.estimate_s(now)
        if now >= deadline or (estimate is not None and now + estimate > deadline):
            self.want()
            raise self._not_ready(estimate)
        if self.waiting == 0:
            self.waiting_since = now
        self.waiting += 1
        attempts = self.attempts
        self.group.kick()
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                while not (self.state == LOADED and not self.evicting):
                    if self.retired:
                        raise BackendNotReady(
                            f"backend '{self.name}' was removed from the config; retry",
                            retry_after=1,
                        )
                    # A start tried for this call failed, or the next try is too late.
                    if self.state == FAILED and (
                        self.attempts > attempts or self.retry_at > deadline
                    ):
                        raise self._not_ready(self.estimate_s(time.monotonic()))
                    await self._changed.wait()
        except TimeoutError:
            raise self._not_ready(self.estimate_s(time.monotonic())) from None
        finally:
            self.waiting -= 1
        self.active += 1
        self.last_used = time.monotonic()
        return Lease(self)

    def _leave(self) -> None:
        self.active -= 1
        self.last_used = time.monotonic()
        if self.process is not None and self.process.running:
            self.failures = 0
        if self.evicting or self.group.demand:
            self.changed()

    def want(self) -> None:
        """Ask for a load without waiting for it."""
        if self.state in (UNLOADED, FAILED) or self.evicting:
            if self.waiting == 0 and not self.requested:
                self.waiting_since = time.monotonic()
            self.requested = True
            self.group.kick()

    def estimate_s(self, now: float) -> float | None:
        """Seconds until it could serve, from its measured load time; ``None``: unknown."""
        if self.state == LOADED and not self.evicting:
            return 0.0
        measured = self.last_load_s
        if self.state == LOADING:
            if measured is None:
                return None  # never measured: no reason to turn anyone away early
            return max(0.0, measured - (now - self.load_started))
        if self.state == FAILED:  # its backoff, then a load (if one was ever measured)
            return max(0.0, self.retry_at - now) + (measured or 0.0)
        return measured

    async def next_change(self) -> None:
        """Until its state next changes."""
        await self._changed.wait()

    async def until_loaded(self, attempts: int, budget_s: float) -> None:
        """Wait until it is loaded; a 503 with the estimate when a start tried after
        ``attempts`` fails or ``budget_s`` runs out (an admin's explicit load)."""
        try:
            async with asyncio.timeout(budget_s):
                while not (self.state == LOADED and not self.evicting):
                    if self.state == FAILED and self.attempts > attempts:
                        raise self._not_ready(self.estimate_s(time.monotonic()))
                    await self._changed.wait()
        except TimeoutError:
            raise self._not_ready(self.estimate_s(time.monotonic())) from None

    def _not_ready(self, estimate: float | None) -> BackendNotReady:
        if estimate is None:  # a first load: it has taken this long so far
            loading = self.state == LOADING
            estimate = time.monotonic() - self.load_started if loading else 1.0
        retry = max(1, math.ceil(estimate))
        doing = "failed to start" if self.state == FAILED else "is loading"
        return BackendNotReady(
            f"backend '{self.name}' {doing} its model; retry in about {retry} s",
            retry_after=retry,
            code="model_loading",
            headers={"X-Backend-Used": self.name},
        )

    def changed(self) -> None:
        """Wake whoever waits on this unit or its group."""
        self._changed.set()
        self._changed = asyncio.Event()
        if self.demanding:  # e.g. calls that waited out a drain: their group must load it
            self.group.kick()
        else:
            self.group.wake()

    @property
    def idle(self) -> bool:
        queued = sum(admission.queued for admission in self.backend.admissions.values())
        return self.active == 0 and self.waiting == 0 and queued == 0

    @property
    def occupying(self) -> bool:
        return self.state in (LOADING, LOADED, DRAINING)

    @property
    def demanding(self) -> bool:
        if self.retired:
            return False
        return (self.waiting > 0 or self.requested) and (
            self.state in (UNLOADED, FAILED) and not self.evicting
        )

    def set_state(self, state: str) -> None:
        self.state = state
        self.changed()

    # -- loading and stopping (tasks the group starts) ---------------------------------------

    def begin_load(self) -> None:
        """Mark it loading now (so it is not started twice) and start the process."""
        self.requested = False
        self.attempts += 1
        self.load_started = time.monotonic()
        self.error = None
        self.set_state(LOADING)
        self.manager.publish("load", self)
        self.manager.spawn(self._load())

    async def _load(self) -> None:
        argv = [arg.replace(_PORT, str(self.port)) for arg in self.spec.cmd]
        env = model_environment(self.manager.environ, self.spec.env)
        process = None
        try:
            process = await ModelProcess.start(argv, env, self.manager.log_path(self.name))
            self.process = process
            problem = await self._until_ready(process)
        except OSError as exc:
            problem = f"cannot start its command: {exc.strerror or type(exc).__name__}"
        except asyncio.CancelledError:
            if process is not None:
                await self.manager.stop_process(process, 0.5)
            self.process = None
            self.set_state(UNLOADED)
            raise
        except Exception as exc:  # anything else is a failed start too: backoff, no spin
            log.error("starting the model process of %s failed", self.name, exc_info=exc)
            problem = f"cannot start its command: {type(exc).__name__}"
        if problem is not None:
            if process is not None:
                await self.manager.stop_process(process, self.spec.stop_timeout_s)
            self.process = None
            self._failed(f"failed to start: {problem}", during="start")
            return
        assert process is not None
        self._ready_now()
        self.manager.spawn(self._watch(process))

    def _ready_now(self) -> None:
        now = time.monotonic()
        self.last_load_s = now - self.load_started
        self.loaded_mono = self.last_used = now
        self.loaded_at = time.time()
        self.loads += 1
        self.set_state(LOADED)
        self.manager.publish("ready", self, seconds=round(self.last_load_s, 3))
        if self.stale:  # the config changed while it loaded: its next turn uses the new one
            self.begin_evict("config")

    async def _until_ready(self, process: ModelProcess) -> str | None:
        """Poll ``ready`` until it answers 200; the reason it never did, else ``None``."""
        url = f"http://127.0.0.1:{self.port}{self.spec.ready}"
        deadline = time.monotonic() + self.spec.start_timeout_s
        pause = 0.05
        while time.monotonic() < deadline:
            if not process.running:
                return f"it exited with status {process.process.returncode}"
            try:
                async with (
                    asyncio.timeout(_PROBE_TIMEOUT_S),
                    self.manager.session.get(url, allow_redirects=False) as response,
                ):
                    if response.status == 200:
                        self.reported_memory_mb = _memory(await response.content.read(65536))
                        return None
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            await asyncio.sleep(pause)
            pause = min(0.25, pause * 1.5)
        return f"not ready within {self.spec.start_timeout_s:g} s"

    async def _watch(self, process: ModelProcess) -> None:
        status = await process.wait()
        if self.process is process:  # not stopped by the gateway: a crash
            self.process = None
            await self.manager.stop_process(process, 0)  # what it left in its group, its log
            self.crashes += 1
            self.loaded_at = None
            log.warning("model process of %s exited with status %s", self.name, status)
            self._failed(f"crashed (exit status {status})", during="run")

    def _failed(self, reason: str, during: str) -> None:
        self.failures += 1
        backoff = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self.failures - 1))
        self.retry_at = time.monotonic() + backoff
        self.error = reason
        self.manager._retired.discard(self)
        self.set_state(FAILED)
        self.manager.publish("crash", self, reason=reason, during=during, retry_in_s=backoff)

    def begin_evict(self, reason: str, wanted_by: str | None = None) -> bool:
        """Mark it leaving now (new calls wait for its next turn) and start draining it."""
        if self.evicting or self.state not in (LOADED, DRAINING):
            return False
        self.evicting = True
        if reason == "eviction":
            self.evictions += 1
            self.manager.publish("eviction", self, wanted_by=wanted_by)
        if self.active:
            self.set_state(DRAINING)
        self.manager.spawn(self._drain_and_stop(reason))
        return True

    async def evict(self, reason: str) -> None:
        """Stop it and wait until it is stopped."""
        self.begin_evict(reason)
        while self.evicting:
            await self._changed.wait()

    async def _drain_and_stop(self, reason: str) -> None:
        """Calls in flight finish first (up to ``drain_timeout_s``), then the process stops."""
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.spec.drain_timeout_s):
                    while self.active:
                        await self._changed.wait()
            await self.stop(reason)
        finally:
            self.evicting = False
            self.changed()

    async def stop(self, reason: str) -> None:
        process, self.process = self.process, None
        self.stale = False
        if process is not None:
            await self.manager.stop_process(process, self.spec.stop_timeout_s)
        self.manager._retired.discard(self)
        if self.state != UNLOADED:
            self.loaded_at = None
            self.set_state(UNLOADED)
            self.manager.publish("unload", self, reason=reason)

    def snapshot(self, now: float) -> dict[str, Any]:
        return {
            "backend": self.name,
            "state": self.state,
            "loaded_since": self.loaded_at,
            "idle_s": round(now - self.last_used, 3) if self.state == LOADED else None,
            "in_flight": self.active,
            "waiting": self.waiting,
            "memory_mb": self.spec.memory_mb,
            "reported_memory_mb": self.reported_memory_mb,
            "group": self.spec.group,
            "pinned": self.spec.pin,
            "last_load_s": round(self.last_load_s, 3) if self.last_load_s is not None else None,
            "loads": self.loads,
            "evictions": self.evictions,
            "crashes": self.crashes,
            "error": self.error,
            "pid": self.process.pid if self.process is not None else None,
        }


class SleepUnit(ModelUnit):
    """A remote vLLM server in sleep mode: "loaded" is awake, "unloaded" is asleep."""

    @property
    def spec(self) -> ProcessConfig:
        return remote.sleep_spec(self.config)

    async def sync(self) -> None:
        """Start from what the server says (it may be awake already)."""
        try:
            sleeping = await remote.vllm_sleeping(self.backend)
        except Exception as exc:  # unknown until the first request wakes it
            log.warning("cannot ask %s whether it sleeps: %s", self.name, remote.describe(exc))
            return
        if not sleeping and self.state == UNLOADED:
            self.loaded_at = time.time()
            self.loaded_mono = self.last_used = time.monotonic()
            self.set_state(LOADED)

    async def _load(self) -> None:
        try:
            await remote.vllm_wake(self.backend)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(f"failed to wake up: {remote.describe(exc)}", during="start")
            return
        self._ready_now()

    async def stop(self, reason: str) -> None:
        if self.state == UNLOADED:
            return
        if reason != "shutdown":  # the server outlives the gateway: leave it as it is
            try:
                await remote.vllm_sleep(self.backend)
            except Exception as exc:
                log.warning("cannot put %s to sleep: %s", self.name, remote.describe(exc))
        self.loaded_at = None
        self.set_state(UNLOADED)
        self.manager.publish("unload", self, reason=reason)


class Group:
    """Members sharing a budget, and the one task that decides which loads, in order."""

    def __init__(self, manager: LifecycleManager, config: GroupConfig | None) -> None:
        self.manager = manager
        self.config = config
        self.members: list[ModelUnit] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def demand(self) -> bool:
        return self._task is not None and not self._task.done()

    def wake(self) -> None:
        self._wake.set()

    def cancel(self) -> None:
        """Stop its deciding task (the manager is closing)."""
        if self._task is not None:
            self._task.cancel()

    def kick(self) -> None:
        self._wake.set()
        if (self._task is None or self._task.done()) and not self.manager.closed:
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self.manager.closed:
            self._wake.clear()
            wake_at = self._step(time.monotonic())
            if wake_at is None:
                return
            try:
                async with asyncio.timeout_at(_loop_time(wake_at)):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _step(self, now: float) -> float | None:
        """Start what can start; when to look again (``None``: nothing is wanted)."""
        demand = sorted((u for u in self.members if u.demanding), key=lambda u: u.waiting_since)
        if not demand:
            return None
        wake_at = now + 1.0
        for unit in demand:
            if unit.state == FAILED and unit.retry_at > now:
                wake_at = min(wake_at, unit.retry_at)
                continue
            plan = self._plan(unit, now)
            if plan == "load":
                unit.begin_load()
                continue
            if isinstance(plan, float):
                wake_at = min(wake_at, plan)
            break  # the oldest demand waits for room; a later one never jumps it
        return wake_at

    def _fits(self, unit: ModelUnit, others: Iterable[ModelUnit]) -> bool:
        config = self.config
        if config is None:
            return True
        held = [other for other in others if other is not unit]
        if config.exclusive and held:
            return False
        if config.memory_mb is None:
            return True
        used = sum(other.spec.memory_mb for other in held)
        return used + unit.spec.memory_mb <= config.memory_mb

    def _plan(self, unit: ModelUnit, now: float) -> str | float | None:
        """``"load"``; a time to look again (fairness); ``None``: wait for a change."""
        occupying = [m for m in self.members if m is not unit and m.occupying]
        if self._fits(unit, occupying):
            return "load"
        staying = [m for m in occupying if not m.evicting]
        if self._fits(unit, staying) or any(m.state == LOADING for m in staying):
            return None  # room is being made, or a load must finish first
        candidates = [m for m in staying if m.state == LOADED and not m.spec.pin]
        idle = sorted((m for m in candidates if m.idle), key=lambda m: m.last_used)
        busy = sorted((m for m in candidates if not m.idle), key=lambda m: m.last_used)
        chosen: list[ModelUnit] = []
        for member in idle + busy:
            if self._fits(unit, [m for m in staying if m not in chosen]):
                break
            chosen.append(member)
        if not self._fits(unit, [m for m in staying if m not in chosen]):
            return None
        # A busy member serves its queue for the fairness window after it was loaded and
        # after this demand arrived, whichever is later; an idle one goes at once.
        fairness = self.config.fairness_s if self.config is not None else 0.0
        turn_ends = max(
            (max(m.loaded_mono, unit.waiting_since) + fairness for m in chosen if not m.idle),
            default=now,
        )
        if turn_ends > now:
            return turn_ends
        for member in chosen:
            member.begin_evict("eviction", wanted_by=unit.name)
        return None


class LifecycleManager:
    """Every unit of the serving config, their groups, the idle timer and the events."""

    def __init__(
        self,
        holder: RegistryHolder,
        data_dir: Path,
        environ: Mapping[str, str],
        observer: Observer | None = None,
    ) -> None:
        self.holder = holder
        self.data_dir = data_dir
        self.environ = environ
        self.observer = observer
        self.hub = EventHub()
        self.units: dict[str, ModelUnit] = {}
        self.remote: dict[str, remote.RemoteHooks] = {}
        self.groups: dict[str, Group] = {}
        self.closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping: set[asyncio.Future[None]] = set()  # process stops close waits for
        self._session: aiohttp.ClientSession | None = None
        self._preload: list[ModelUnit] = []
        self._retired: set[ModelUnit] = set()  # dropped by a reload, maybe still running
        self._remote_loads: dict[tuple[str, str], float] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0),
                timeout=aiohttp.ClientTimeout(total=_PROBE_TIMEOUT_S),
                trust_env=False,
            )
        return self._session

    def log_path(self, backend: str) -> Path:
        return self.data_dir / "models" / f"{backend}.log"

    def publish(self, kind: str, unit: ModelUnit, **detail: Any) -> None:
        self.hub.publish(kind, unit.name, models=_model_ids(unit.config), **detail)
        if self.observer is not None:
            counted = "failed" if detail.get("during") == "start" else kind
            self.observer(counted, unit.name, detail.get("seconds"), detail.get("reason"))
        log.info("model %s: %s %s", unit.name, kind, detail or "")

    async def stop_process(self, process: ModelProcess, grace_s: float) -> None:
        """Stop ``process`` (SIGTERM, SIGKILL after ``grace_s``) to the end even when the
        caller is cancelled (``close`` cancels the tasks, then waits for these stops)."""
        stopping = asyncio.ensure_future(process.stop(grace_s))
        self._stopping.add(stopping)
        stopping.add_done_callback(self._stopping.discard)
        await asyncio.shield(stopping)

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("model lifecycle task failed", exc_info=task.exception())

    # -- following the config ------------------------------------------------------------------

    def configure(self, config: GatewayConfig | None = None) -> None:
        """Attach units to the serving registry's backends (called right after each swap)."""
        registry = self.holder.current
        groups = registry.config.groups
        seen = set()
        self.remote = {}
        for backend in registry.backends.values():
            hooks = remote.remote_hooks(backend)
            if hooks is not None:
                self.remote[backend.name] = hooks
            if isinstance(hooks, remote.OllamaHooks) and backend.config.keep_alive is not None:
                backend.lifecycle = remote.OllamaKeepAlive(hooks, self.spawn)
            sleeps = backend.config.lifecycle == "vllm-sleep"
            if backend.config.process is None and not sleeps:
                continue
            seen.add(backend.name)
            unit = self.units.get(backend.name)
            if unit is not None and isinstance(unit, SleepUnit) != sleeps:
                self._retire(unit)
                unit = None
            if unit is None:
                unit = ModelUnit(self, backend) if not sleeps else SleepUnit(self, backend)
                self.units[backend.name] = unit
                if isinstance(unit, SleepUnit):
                    self.spawn(unit.sync())
                elif unit.spec.preload:
                    self._preload.append(unit)
            elif unit.config.process != backend.config.process or unit.config.url != (
                backend.config.url
            ):
                unit.stale = unit.state in (LOADING, LOADED, DRAINING)
                unit.begin_evict("config")
            unit.backend, unit.config = backend, backend.config
            backend.lifecycle = unit
        for name in [name for name in self.units if name not in seen]:
            self._retire(self.units.pop(name))
        members: dict[str, list[ModelUnit]] = {}
        for unit in self.units.values():
            key = unit.spec.group or f"\0{unit.name}"  # ungrouped: a group of one
            members.setdefault(key, []).append(unit)
        for key, units in members.items():
            group = self.groups.get(key) or Group(self, None)
            group.config = groups.get(key)
            group.members = units
            self.groups[key] = group
            for unit in units:
                unit.group = group
            group.kick()
        for key in [key for key in self.groups if key not in members]:
            del self.groups[key]

    def _retire(self, unit: ModelUnit) -> None:
        """A unit the config no longer has: stopped now, or as soon as its load ends."""
        unit.retired = True
        unit.stale = unit.state in (LOADING, LOADED, DRAINING)
        if unit.stale:
            self._retired.add(unit)
            unit.begin_evict("config")
        unit.changed()  # its waiting calls learn it is gone

    async def start(self) -> None:
        # Before any model starts (their ports): groups a killed gateway left running.
        killed = await asyncio.to_thread(kill_leftovers, self.data_dir / "models")
        if killed:
            log.warning("killed %d model processes left over by a previous gateway", killed)
        self._preload = []
        self.configure()
        self._start_preloads()
        self.spawn(self._idle_timer())

    def reconfigure(self, config: GatewayConfig) -> None:
        self._preload = []
        self.configure(config)
        self._start_preloads()

    def _start_preloads(self) -> None:
        for unit in self._preload:
            unit.want()
        self._preload = []

    async def _idle_timer(self) -> None:
        """Stop units idle for their ``ttl_s``."""
        while True:
            ttls = [u.spec.ttl_s for u in self.units.values() if u.spec.ttl_s > 0]
            await asyncio.sleep(min(1.0, max(0.05, min(ttls, default=4.0) / 4)))
            now = time.monotonic()
            for unit in list(self.units.values()):
                ttl = unit.spec.ttl_s
                if (
                    ttl > 0
                    and unit.state == LOADED
                    and not unit.evicting
                    and unit.idle
                    and now - unit.last_used >= ttl
                ):
                    unit.begin_evict("ttl")

    async def close(self) -> None:
        """Stop every model process: SIGTERM, then SIGKILL after its stop_timeout_s."""
        self.closed = True
        for group in self.groups.values():
            group.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._stopping, return_exceptions=True)  # cut short above
        units = [*self.units.values(), *self._retired]
        await asyncio.gather(*(unit.stop("shutdown") for unit in units), return_exceptions=True)
        self.hub.close()
        if self._session is not None:
            await self._session.close()

    # -- what the API shows and does -------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """The units' models (what the gateway knows without asking anyone)."""
        now = time.monotonic()
        rows = []
        for unit in self.units.values():
            snapshot = unit.snapshot(now)
            kind = "vllm-sleep" if isinstance(unit, SleepUnit) else "process"
            for model in _model_ids(unit.config):
                rows.append({"id": model, **snapshot, "lifecycle": kind})
        return rows

    async def rows(self) -> list[dict[str, Any]]:
        """Every model: the units', then each remote server's, as the server says now."""
        found = await asyncio.gather(*(self._remote_rows(h) for h in self.remote.values()))
        return self.models() + [row for rows in found for row in rows]

    async def row(self, model: str) -> dict[str, Any] | None:
        """The row of ``model`` as ``rows`` lists it (by its id, ``backend/model`` or its
        backend's name), or ``None``."""
        for row in await self.rows():
            if model in (row["id"], row["backend"], f"{row['backend']}/{row['id']}"):
                return row
        return None

    async def _remote_rows(self, hooks: remote.RemoteHooks) -> list[dict[str, Any]]:
        error = None
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT_S * 2):
                states = await hooks.states()
        except Exception as exc:
            states, error = {}, f"cannot read its state: {remote.describe(exc)}"
        rows = []
        for model in hooks.models():
            state = states.get(model, {})
            rows.append(
                {
                    "id": model,
                    "backend": hooks.backend.name,
                    "lifecycle": hooks.config.lifecycle,
                    "state": state.get("state", FAILED if error else UNLOADED),
                    "loaded_since": None,
                    "idle_s": None,
                    "memory_mb": state.get("memory_mb"),
                    "group": None,
                    "last_load_s": self._remote_loads.get((hooks.backend.name, model)),
                    "error": error,
                }
            )
        return rows

    def find(self, model: str) -> ModelUnit | tuple[remote.RemoteHooks, str]:
        """What serves ``model`` (a listed model id, ``backend/model``, or a backend)."""
        for unit in self.units.values():
            if model in _model_ids(unit.config):
                return unit
        for hooks in self.remote.values():
            if model in hooks.models():
                return hooks, model
        prefix, _, rest = model.partition("/")
        for name in (prefix, model):
            found = self.units.get(name)
            if found is not None and (name == model or rest in _model_ids(found.config)):
                return found
            hooks_found = self.remote.get(prefix)
            if hooks_found is not None and rest in hooks_found.models():
                return hooks_found, rest
        raise NotFound(f"no model the gateway loads is named '{model}'", code="model_not_found")

    async def load(self, target: ModelUnit | tuple[remote.RemoteHooks, str]) -> None:
        """Load it now (waiting for room in its group); 503 if it cannot within its budget."""
        if isinstance(target, tuple):
            await self._remote_load(*target)
            return
        unit = target
        attempts = unit.attempts
        unit.want()
        budget = unit.spec.start_timeout_s + unit.spec.drain_timeout_s
        budget += unit.group.config.fairness_s if unit.group.config is not None else 0
        await unit.until_loaded(attempts, budget)

    def start_load(self, target: ModelUnit | tuple[remote.RemoteHooks, str]) -> None:
        """Begin a load without waiting for it (the events tell how it went)."""
        if isinstance(target, tuple):
            self.spawn(_quietly(self._remote_load(*target)))
        else:
            target.want()

    def start_unload(self, target: ModelUnit | tuple[remote.RemoteHooks, str]) -> None:
        """Begin an unload without waiting for it."""
        self.spawn(_quietly(self.unload(target)))

    async def _remote_load(self, hooks: remote.RemoteHooks, model: str) -> None:
        name = hooks.backend.name
        started = time.monotonic()
        self.hub.publish("load", name, models=[model])
        try:
            async with asyncio.timeout(hooks.config.timeouts.read_s):
                await hooks.load(model)
        except TimeoutError:
            self.hub.publish("crash", name, models=[model], reason="load timed out", during="start")
            raise BackendNotReady(f"backend '{name}' did not load '{model}' in time") from None
        except GatewayError as exc:
            self.hub.publish("crash", name, models=[model], reason=exc.message, during="start")
            raise
        seconds = round(time.monotonic() - started, 3)
        self._remote_loads[(name, model)] = seconds
        self.hub.publish("ready", name, models=[model], seconds=seconds)
        if self.observer is not None:
            self.observer("ready", name, seconds, None)

    async def unload(self, target: ModelUnit | tuple[remote.RemoteHooks, str]) -> None:
        """Stop it (calls in flight finish first, up to its drain_timeout_s)."""
        if isinstance(target, tuple):
            hooks, model = target
            async with asyncio.timeout(hooks.config.timeouts.read_s):
                await hooks.unload(model)
            self.hub.publish("unload", hooks.backend.name, models=[model], reason="admin")
            if self.observer is not None:
                self.observer("unload", hooks.backend.name, None, "admin")
            return
        unit = target
        unit.requested = False
        async with asyncio.timeout(unit.spec.start_timeout_s + unit.spec.drain_timeout_s + 30):
            while unit.state == LOADING or unit.evicting:
                await unit.next_change()
            if unit.state in (LOADED, DRAINING):
                await unit.evict("admin")
            elif unit.state == FAILED:
                unit.set_state(UNLOADED)


async def _quietly(action: Coroutine[Any, Any, None]) -> None:
    """An admin's action nobody waits for: its failure is an event and a log line."""
    try:
        await action
    except (GatewayError, TimeoutError) as exc:
        log.warning("model lifecycle action failed: %s", remote.describe(exc))


def _model_ids(config: BackendConfig) -> list[str]:
    return [model.id for model in config.models or ()]


def _memory(body: bytes) -> float | None:
    """``memory_mb`` from a ready answer's JSON, when the server reports it."""
    try:
        value = json.loads(body).get("memory_mb")
    except (ValueError, AttributeError, RecursionError):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _loop_time(monotonic_deadline: float) -> float:
    """A ``time.monotonic()`` deadline on the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())
