#!/usr/bin/env python3
"""What the usage ledger costs a request, measured in-process (``tools/bench.py --phases
ledger`` runs this; it needs no servers).

- ``add``: the whole per-request step at the end of a request (queue one row, count the
  tokens in ``gateway_tokens_total``), timed one call at a time over ``--rows`` calls
  spread over 100 key names, on the repository's ``gateway.yaml`` models.
- ``write``: the writer thread's cost per row (SQLite, batches of 500, roll-ups
  included): off the request path, but CPU the sidecar spends.
- ``stream tail``: parsing a stream's usage chunk at ``[DONE]`` (once per stream), and
  the one check per network read that finds a usage chunk arriving alone.

    .venv/bin/python tools/bench_ledger.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sidecar.config.loader import load_config  # noqa: E402
from sidecar.observability.access_log import AccessRecord  # noqa: E402
from sidecar.observability.metrics import GatewayMetrics  # noqa: E402
from sidecar.routing.registry import RegistryHolder, build_registry  # noqa: E402
from sidecar.settings import BackendTlsDefaults, UsageSettings  # noqa: E402
from sidecar.usage import tokens  # noqa: E402
from sidecar.usage.ledger import BATCH_ROWS, UsageLedger  # noqa: E402
from sidecar.usage.store import SqliteUsageStore  # noqa: E402

KEYS = [f"key-{n:03d}" for n in range(100)]


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    samples_ns.sort()
    return {
        "p50_us": samples_ns[len(samples_ns) // 2] / 1000,
        "p99_us": samples_ns[int(len(samples_ns) * 0.99)] / 1000,
        "mean_us": statistics.fmean(samples_ns) / 1000,
    }


def run(rows: int) -> dict[str, Any]:
    config = load_config(ROOT / "gateway.yaml", {}, BackendTlsDefaults())
    registry, _ = build_registry(config)
    holder = RegistryHolder(registry)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gateway-ledger-bench-") as workdir:
        store = SqliteUsageStore(Path(workdir) / "usage.sqlite3")
        # A period longer than the run: the writer never competes with the timed calls.
        ledger = UsageLedger(store, UsageSettings(flush_s=3600, queue_max=rows), GatewayMetrics())
        ledger.start(holder)
        records = []
        for n in range(rows):
            record = AccessRecord(f"req-{n:024x}", "POST", "/v1/chat/completions", "127.0.0.1")
            record.status, record.backend, record.model = 200, "mock", "mock-llama"
            record.prompt_tokens, record.completion_tokens, record.ttft_ms = 42, 17, 12.5
            records.append(record)
        samples = []
        clock = time.perf_counter_ns
        for n, record in enumerate(records):
            key = KEYS[n % len(KEYS)]
            start = clock()
            ledger.add(record, key)
            samples.append(clock() - start)
        results["add"] = {**_percentiles(samples), "calls": rows, "dropped": ledger.dropped}
        ledger.stop()  # writes what is still queued
        results["add"]["written"] = ledger.written
        # The writer's own cost: batches of BATCH_ROWS into a fresh file, roll-ups included.
        store = SqliteUsageStore(Path(workdir) / "write.sqlite3")
        store.open()
        batch = [_row(record, KEYS[n % len(KEYS)]) for n, record in enumerate(records)]
        started = time.perf_counter()
        for offset in range(0, len(batch), BATCH_ROWS):
            store.write(batch[offset : offset + BATCH_ROWS])
        elapsed = time.perf_counter() - started
        store.close()
        results["write"] = {"rows": len(batch), "us_per_row": 1e6 * elapsed / max(1, len(batch))}

    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "mock-llama"}
    last = json.dumps({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    usage = json.dumps(
        {**chunk, "choices": [], "usage": {"prompt_tokens": 42, "completion_tokens": 17}}
    )
    tail = f"data: {last}\n\ndata: {usage}\n\ndata: [DONE]\n\n".encode()
    event = f"data: {last}\n\n".encode()
    samples = []
    for _ in range(20_000):
        start = time.perf_counter_ns()
        tokens.tail_usage(tail, True)
        samples.append(time.perf_counter_ns() - start)
    results["stream_tail"] = _percentiles(samples)
    results["per_read_check_ns"] = _ns(lambda: b"[]" in event)
    results["done_check_ns"] = _ns(lambda: b"[DONE]" in event)  # what every read did already
    return results


def _ns(check: Any) -> float:
    """ns per call of ``check`` (best of 5 rounds), less the cost of calling at all."""
    rounds = 200_000

    def best(work: Any) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter_ns()
            for _ in range(rounds):
                work()
            times.append(time.perf_counter_ns() - start)
        return min(times) / rounds

    return max(0.0, best(check) - best(lambda: None))


def _row(record: AccessRecord, key: str) -> tuple[Any, ...]:
    return (
        time.time(),
        key,
        None,
        record.route,
        record.backend,
        record.model,
        record.status,
        record.prompt_tokens,
        record.completion_tokens,
        False,
        False,
        0.012,
        record.ttft_ms,
        record.request_id,
    )


def report(results: dict[str, Any]) -> str:
    add, write, tail = results["add"], results["write"], results["stream_tail"]
    return "\n".join(
        [
            "ledger (in-process)           p50 (µs)  p99 (µs)  mean (µs)",
            f"add, per request              {add['p50_us']:<8.2f}  {add['p99_us']:<8.2f}"
            f"  {add['mean_us']:.2f}",
            f"usage chunk at [DONE]         {tail['p50_us']:<8.2f}  {tail['p99_us']:<8.2f}"
            f"  {tail['mean_us']:.2f}",
            f"writer thread, per row        {write['us_per_row']:.2f} µs ({write['rows']} rows)",
            f"check per network read        {results['per_read_check_ns']:.0f} ns"
            f" (the [DONE] check every read already makes: {results['done_check_ns']:.0f} ns;"
            " only streams whose usage the client did not ask for)",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    print(report(run(args.rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
