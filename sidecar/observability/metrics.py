"""Prometheus metrics for ``/metrics``, on a registry of the app's own (no global state).

Label sets stay bounded: routes are templates (``/v1/tools/{name}``), never raw paths;
backends, capabilities, tools and agents are names from the config, never strings a
client typed. Admission and health numbers are read when scraped, not kept twice.

The event loop's lag is measured by one small task (``LoopLag.run``, started by the app
factory): it asks to wake every ``interval_s`` and records how late it woke. Nothing is
added to a request's path; a scrape reads the last lag and the maximum over the window.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..routing.lifecycle import STATES, LifecycleManager
from ..routing.registry import HealthState, RegistryHolder
from .access_log import AccessRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LOAD_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class LoopLag(Collector):
    """How late the event loop runs a timer: the time any request may have waited for it."""

    def __init__(self, interval_s: float = 0.1, window_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self.window_s = window_s
        self.last_s = 0.0
        self._recent: deque[float] = deque(maxlen=max(1, round(window_s / interval_s)))

    @property
    def max_s(self) -> float:
        """The worst lag over the last ``window_s`` (the last ``window_s / interval_s`` ticks)."""
        return max(self._recent, default=0.0)

    def record(self, lag_s: float) -> None:
        self.last_s = lag_s
        self._recent.append(lag_s)

    async def run(self) -> None:
        """Forever: sleep ``interval_s``, record how much later than asked the loop woke."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.record(max(0.0, loop.time() - due))

    def collect(self) -> Iterator[Metric]:
        last = GaugeMetricFamily(
            "gateway_event_loop_lag_seconds",
            f"How late the event loop ran a {self.interval_s} s timer, last tick.",
        )
        last.add_metric([], self.last_s)
        worst = GaugeMetricFamily(
            "gateway_event_loop_lag_max_seconds",
            f"The worst event-loop lag over the last {self.window_s:g} s.",
        )
        worst.add_metric([], self.max_s)
        yield from (last, worst)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gateway_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gateway_http_request_duration_seconds",
            "Time from request to the end of the response.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "gateway_stream_time_to_first_token_seconds",
            "Time from request to the first streamed event, by backend.",
            ["backend"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tool_calls = Counter(
            "gateway_tool_invocations",
            "Tool bus calls by tool and outcome.",
            ["tool", "ok"],
            registry=self.registry,
        )
        self.tool_duration = Histogram(
            "gateway_tool_duration_seconds",
            "Tool run time.",
            ["tool"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.agent_runs = Counter(
            "gateway_agent_runs",
            "Agent runs by agent and why they stopped.",
            ["agent", "stop_reason"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "gateway_tokens",
            "Tokens by key name, model (a configured name, else other) and kind.",
            ["key", "model", "kind"],
            registry=self.registry,
        )
        self.model_loads = Counter(
            "gateway_model_loads",
            "Model process loads by backend and result (ok: ready; failed: never ready).",
            ["backend", "result"],
            registry=self.registry,
        )
        self.model_load_seconds = Histogram(
            "gateway_model_load_seconds",
            "Time from starting a model process to its first ready answer.",
            ["backend"],
            buckets=_LOAD_BUCKETS,
            registry=self.registry,
        )
        self.model_evictions = Counter(
            "gateway_model_evictions",
            "Models stopped to make room for another in their group.",
            ["backend"],
            registry=self.registry,
        )
        self.model_crashes = Counter(
            "gateway_model_crashes",
            "Model processes that exited on their own while loaded.",
            ["backend"],
            registry=self.registry,
        )
        self.model_unloads = Counter(
            "gateway_model_unloads",
            "Model processes stopped, by reason (ttl, eviction, admin, config, shutdown).",
            ["backend", "reason"],
            registry=self.registry,
        )
        self.loop_lag = LoopLag()
        self.registry.register(self.loop_lag)
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._ttft_children: dict[str, Histogram] = {}
        self._token_children: dict[tuple[str, str], tuple[Counter, Counter]] = {}

    def watch(self, holder: RegistryHolder, reloader: ReloadCounts) -> None:
        """Report backends and reloads from the live objects at scrape time."""
        self.registry.register(_LiveCollector(holder, reloader))

    def observe_request(self, record: AccessRecord, known_backends: Callable[[str], bool]) -> None:
        # The labelled children are looked up once per label set and kept (``labels()``
        # checks and locks on every call); the label sets are bounded, so is this cache.
        key = (record.route, record.method, record.status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(record.route, record.method, str(record.status)),
                self.latency.labels(record.route, record.method),
            )
        children[0].inc()
        children[1].observe(record.elapsed_s())
        if record.ttft_ms is not None and record.backend and known_backends(record.backend):
            ttft = self._ttft_children.get(record.backend)
            if ttft is None:
                ttft = self._ttft_children[record.backend] = self.ttft.labels(record.backend)
            ttft.observe(record.ttft_ms / 1000)

    def observe_tokens(self, key: str, model: str, prompt: int, completion: int) -> None:
        """Count a request's tokens; ``key`` and ``model`` must be bounded names (keys the
        gateway knows, models the config knows or ``other``): the caller's job."""
        children = self._token_children.get((key, model))
        if children is None:
            children = self._token_children[(key, model)] = (
                self.tokens.labels(key, model, "prompt"),
                self.tokens.labels(key, model, "completion"),
            )
        if prompt:
            children[0].inc(prompt)
        if completion:
            children[1].inc(completion)

    def observe_model(
        self, kind: str, backend: str, seconds: float | None, reason: str | None = None
    ) -> None:
        """A lifecycle event (backend names come from the config: bounded labels)."""
        if kind == "ready":
            self.model_loads.labels(backend, "ok").inc()
            if seconds is not None:
                self.model_load_seconds.labels(backend).observe(seconds)
        elif kind == "failed":
            self.model_loads.labels(backend, "failed").inc()
        elif kind == "crash":
            self.model_crashes.labels(backend).inc()
        elif kind == "eviction":
            self.model_evictions.labels(backend).inc()
        elif kind == "unload":
            self.model_unloads.labels(backend, reason or "other").inc()

    def watch_models(self, manager: LifecycleManager) -> None:
        """Each model's state, read from the live manager at scrape time."""
        self.registry.register(_ModelStates(manager))

    def observe_tool(self, tool: str, ok: bool, duration_ms: float) -> None:
        self.tool_calls.labels(tool, "true" if ok else "false").inc()
        self.tool_duration.labels(tool).observe(duration_ms / 1000)

    def observe_agent(self, agent: str, stop_reason: str) -> None:
        self.agent_runs.labels(agent, stop_reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ReloadCounts(Protocol):
    """What the metrics read from the config reloader (``sidecar.reload``, which sits
    beside this layer, not below it)."""

    reloads_ok: int
    reloads_refused: int


class _LiveCollector(Collector):
    def __init__(self, holder: RegistryHolder, reloader: ReloadCounts) -> None:
        self._holder = holder
        self._reloader = reloader

    def collect(self) -> Iterator[Metric]:
        backends = list(self._holder.current.backends.values())
        up = GaugeMetricFamily(
            "gateway_backend_up",
            "1 when the backend is ready (or not yet probed); state is its health state.",
            labels=["backend", "state"],
        )
        in_flight = GaugeMetricFamily(
            "gateway_backend_in_flight",
            "Requests holding a slot.",
            labels=["backend", "capability"],
        )
        queued = GaugeMetricFamily(
            "gateway_backend_queued",
            "Requests waiting for a slot.",
            labels=["backend", "capability"],
        )
        limit = GaugeMetricFamily(
            "gateway_backend_limit",
            "Concurrent requests allowed.",
            labels=["backend", "capability"],
        )
        rejected = CounterMetricFamily(
            "gateway_backend_rejected",
            "Requests refused with 429.",
            labels=["backend", "capability"],
        )
        for backend in backends:
            state = backend.health.state
            ready = state in (HealthState.READY, HealthState.UNKNOWN)
            up.add_metric([backend.name, state], 1.0 if ready else 0.0)
            for capability, admission in backend.admissions.items():
                labels = [backend.name, capability]
                in_flight.add_metric(labels, admission.in_flight)
                queued.add_metric(labels, admission.queued)
                limit.add_metric(labels, admission.limit)
                rejected.add_metric(labels, admission.rejected)
        reloads = CounterMetricFamily(
            "gateway_config_reloads", "Config reloads by outcome.", labels=["result"]
        )
        reloads.add_metric(["ok"], self._reloader.reloads_ok)
        reloads.add_metric(["refused"], self._reloader.reloads_refused)
        yield from (up, in_flight, queued, limit, rejected, reloads)


class _ModelStates(Collector):
    def __init__(self, manager: LifecycleManager) -> None:
        self._manager = manager

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "gateway_model_state",
            "1 for the state each model process backend is in.",
            labels=["backend", "state"],
        )
        for unit in list(self._manager.units.values()):
            for name in STATES:
                state.add_metric([unit.name, name], 1.0 if unit.state == name else 0.0)
        yield state
