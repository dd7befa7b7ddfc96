"""The usage ledger: one row per request, queued in memory, written by a thread.

The request path only appends a tuple to a bounded in-memory queue (``add``, called
when the access record is finished); it never waits for the disk. A writer thread
wakes every ``flush_s`` (or as soon as ``BATCH_ROWS`` rows wait), writes what is queued
in one transaction, and prunes past the retention once an hour. A full queue
(``queue_max`` rows: the disk is stuck or too slow) drops the new row and counts it
(``gateway_usage_dropped_total``); a batch that fails to write (disk full, read-only)
goes back to the queue to be tried again, and the storage monitor is told, so
``/readyz`` says ``degraded`` until writes work.

Rows are kept for requests that carry an API key and for UI chat messages (which name
the UI user); health checks, metrics scrapes, UI pages and reading the ledger itself
(``NOT_USAGE``) are not usage.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..errors import StorageUnavailable
from ..observability.access_log import AccessRecord
from ..observability.metrics import GatewayMetrics
from ..routing.registry import RegistryHolder
from ..settings import UsageSettings
from ..storage import RETRY_AFTER_S, StorageMonitor, error_kind
from .store import Row, UsageStore

log = logging.getLogger("gateway.usage")
BATCH_ROWS = 500  # rows that wake the writer before its period is up
PRUNE_EVERY_S = 3600.0
UI_KEY_LABEL = "(ui)"  # the key label of UI chat rows in gateway_tokens_total
NOT_USAGE = frozenset({"/v1/gateway/usage", "/v1/gateway/usage/me"})  # route templates


class UsageLedger:
    def __init__(
        self,
        store: UsageStore,
        settings: UsageSettings,
        metrics: GatewayMetrics | None = None,
        storage: StorageMonitor | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.storage = storage
        self.queue_max = settings.queue_max
        self.dropped = 0
        self.written = 0
        self.write_failures = 0
        self._queue: deque[Row] = deque()
        self._holder: RegistryHolder | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pruned_at = 0.0
        if metrics is not None:
            metrics.registry.register(_LedgerCollector(self))

    # -- the request path -----------------------------------------------------------------

    def add(self, record: AccessRecord, key: str | None) -> None:
        """Queue ``record`` (finished) as a usage row; never blocks, never raises."""
        user = record.ui_user
        if (key is None and user is None) or record.route in NOT_USAGE:
            return
        queue = self._queue
        if len(queue) >= self.queue_max:
            self.dropped += 1
        else:
            queue.append(
                (
                    time.time(),
                    key,
                    user,
                    record.route,
                    record.backend,
                    record.model,
                    record.status,
                    record.prompt_tokens,
                    record.completion_tokens,
                    record.usage_estimated,
                    record.stream_failed,
                    record.elapsed_s(),
                    record.ttft_ms,
                    record.request_id,
                )
            )
            if len(queue) == BATCH_ROWS:
                self._wake.set()
        if (record.prompt_tokens or record.completion_tokens) and self.metrics is not None:
            self.metrics.observe_tokens(
                key or UI_KEY_LABEL,
                self._model_label(record.model),
                record.prompt_tokens,
                record.completion_tokens,
            )

    def _model_label(self, model: str | None) -> str:
        """The model as a metric label: a name the config knows, else ``other``."""
        holder = self._holder
        if model is None or holder is None:
            return "other"
        registry = holder.current
        if model in registry.config.aliases:
            return model
        prefix, sep, rest = model.partition("/")
        backend = registry.backends.get(prefix) if sep else None
        if backend is not None and backend.serves(rest):
            return model
        for backend in registry.backends.values():
            if backend.serves(model):
                return model
        return "other"

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- life cycle (blocking: call from a thread) ------------------------------------------

    def start(self, holder: RegistryHolder | None = None) -> None:
        """Open the store, prune once, and start the writer thread."""
        self._holder = holder
        self.store.open()
        self._prune()
        self._thread = threading.Thread(target=self._run, name="usage-ledger", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the writer, write what is still queued, close the store."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            self.flush()
        finally:
            self.store.close()

    def flush(self) -> int:
        """Write every queued row now; the number written (0 when the write failed)."""
        with self._write_lock:
            rows: list[Row] = []
            queue = self._queue
            while queue:
                rows.append(queue.popleft())
            if not rows:
                return 0
            try:
                self.store.write(rows)
            except (sqlite3.Error, OSError) as exc:
                self.write_failures += 1
                # Back to the front, in order, to be tried again; new rows still have
                # ``queue_max`` as their bound, so the queue cannot grow past it twice.
                queue.extendleft(reversed(rows))
                while len(queue) > self.queue_max:
                    queue.pop()
                    self.dropped += 1
                kind = error_kind(exc)
                if self.storage is not None and kind != "database_busy":
                    self.storage.failed(exc, "usage ledger")  # the disk: /readyz degraded
                else:  # another process holds the database: not the disk's fault
                    log.warning("writing usage failed (%s); trying again", kind)
                return 0
            self.written += len(rows)
            return len(rows)

    def _run(self) -> None:
        interval = self.settings.flush_s
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            try:
                self.flush()
                if time.time() - self._pruned_at >= PRUNE_EVERY_S:
                    self._prune()
            except Exception:  # the writer must outlive anything a batch meets
                log.exception("usage ledger writer failed; retrying")
                self._stop.wait(interval)

    def _prune(self) -> None:
        now = time.time()
        self._pruned_at = now
        with self._write_lock:
            try:
                removed = self.store.prune(
                    now, self.settings.retention_days, self.settings.rollup_days
                )
            except (sqlite3.Error, OSError) as exc:
                log.warning("pruning usage failed: %s", type(exc).__name__)
                return
        if removed:
            log.info("pruned %d usage rows past their retention", removed)

    # -- reading ------------------------------------------------------------------------

    async def totals(
        self,
        since: str,
        until: str,
        group_by: Sequence[str],
        *,
        key: str | None = None,
        ui_user: str | None = None,
        after: float | None = None,
        limit: int = 10_000,
    ) -> list[dict[str, Any]]:
        def query() -> list[dict[str, Any]]:
            return self.store.totals(
                since, until, group_by, key=key, ui_user=ui_user, after=after, limit=limit
            )

        try:
            return await asyncio.to_thread(query)
        except (sqlite3.Error, OSError) as exc:
            log.warning("reading usage failed: %s", type(exc).__name__)
            raise StorageUnavailable(
                "The usage ledger cannot be read right now; try again later",
                retry_after=RETRY_AFTER_S,
            ) from None


class _LedgerCollector(Collector):
    def __init__(self, ledger: UsageLedger) -> None:
        self._ledger = ledger

    def collect(self) -> Iterator[Metric]:
        ledger = self._ledger
        dropped = CounterMetricFamily(
            "gateway_usage_dropped", "Usage rows dropped because the ledger's queue was full."
        )
        dropped.add_metric([], ledger.dropped)
        failures = CounterMetricFamily(
            "gateway_usage_write_failures", "Ledger batches that could not be written."
        )
        failures.add_metric([], ledger.write_failures)
        queued = GaugeMetricFamily("gateway_usage_queued", "Usage rows waiting to be written.")
        queued.add_metric([], ledger.queued)
        yield from (dropped, failures, queued)
