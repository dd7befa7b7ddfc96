#!/usr/bin/env python3
"""Soak the sidecar: many mixed requests, and check its memory stays flat.

Starts the fake backend and a TCP sidecar (loopback only), then sends ``--requests``
(default 20,000) requests in a fixed mix — chat (plain and streamed), completions,
embeddings, model lists, tool calls, agent runs, images, hostile bodies and unknown
routes — at ``--concurrency`` workers. The sidecar's RSS is sampled as the run goes;
the verdict compares the first and last samples of the second half. Exit status 1 if
RSS grew by more than ``--max-growth-pct`` (default 5 %) over the second half, or if any
request got a 5xx or an answer that was not what its kind expects.

    .venv/bin/python tools/soak.py [--requests 20000] [--concurrency 16] [--out var/soak.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ROOT, TOKEN, Servers, pin, rss_mb, wait_http

AGENTS = {
    "agents": {
        "calc": {
            "model": "mock-llama",
            "system_prompt": "Use the calculator.",
            "tools": ["calculator", "noop"],
            "max_turns": 4,
            "max_seconds": 30,
            "temperature": 0,
            "seed": 0,
        }
    }
}

CONFIG = """version: 1
backends:
  mock:
    url: http://127.0.0.1:{port}/v1
    class: mock
    limits: {{chat: 64, embeddings: 64, completions: 64}}
    health: {{liveness: /healthz, readiness: /readyz}}
    models:
      - {{id: mock-llama, capabilities: [chat, completions]}}
      - {{id: mock-embed, capabilities: [embeddings]}}
tools:
  noop:
    version: "1"
    parameters: {{type: object, additionalProperties: true}}
    builtin: noop
    concurrency: 64
  calculator:
    version: "1"
    parameters:
      type: object
      properties: {{expression: {{type: string, maxLength: 500}}}}
      required: [expression]
      additionalProperties: false
    builtin: calculator
    concurrency: 64
"""

# (kind, method, path, body, acceptable statuses); the mix repeats in this order.
MIX: list[tuple[str, str, str, Any, frozenset[int]]] = [
    ("chat", "POST", "/v1/chat/completions",
     {"model": "mock-llama", "messages": [{"role": "user", "content": "soak"}]}, frozenset({200})),
    ("chat_stream", "POST", "/v1/chat/completions",
     {"model": "mock-llama", "stream": True, "messages": [{"role": "user", "content": "s"}]},
     frozenset({200})),
    ("completions", "POST", "/v1/completions",
     {"model": "mock-llama", "prompt": "soak"}, frozenset({200})),
    ("embeddings", "POST", "/v1/embeddings",
     {"model": "mock-embed", "input": ["soak"]}, frozenset({200})),
    ("models", "GET", "/v1/models", None, frozenset({200})),
    ("tool_calc", "POST", "/v1/tools/calculator",
     {"arguments": {"expression": "(2 + 3) * 7 - 1"}}, frozenset({200})),
    ("tool_noop", "POST", "/v1/tools/noop", {"arguments": {"text": "x" * 200}}, frozenset({200})),
    ("tool_hostile", "POST", "/v1/tools/calculator",
     {"arguments": {"expression": "round(5, -10**300)"}}, frozenset({200, 400})),
    ("agent", "POST", "/v1/agent/run",
     {"agent": "calc", "input": "use the calculator for 6*7"}, frozenset({200})),
    ("images", "POST", "/v1/images/generations",
     {"prompt": "a soak test", "response_format": "url"}, frozenset({200})),
    ("bad_json", "POST", "/v1/chat/completions", b'{"model": NaN', frozenset({400})),
    ("unknown", "GET", "/v1/nothing-here", None, frozenset({404})),
    ("chat", "POST", "/v1/chat/completions",
     {"model": "mock-llama", "messages": [{"role": "user", "content": "soak again"}]},
     frozenset({200})),
]  # fmt: skip


class Sidecar(Servers):
    """The fake backend and one TCP sidecar (no Caddy): the sidecar's memory is the point."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, latency_ms=0.0)

    def start(self) -> None:
        env = {**os.environ, "GATEWAY_BEARER_TOKEN": TOKEN, "GATEWAY_ACCESS_LOG": "false"}
        python = sys.executable
        mock = ["mock-backends", "--port", str(self.backend_port), "--chunk-delay-ms", "1"]
        self._spawn([python, "-m", "sidecar", *mock, "--chunks", "8"], env)
        wait_http(f"http://127.0.0.1:{self.backend_port}/healthz", False)
        config = self.workdir / "gateway.yaml"
        config.write_text(CONFIG.format(port=self.backend_port))
        agents = self.workdir / "agents.json"
        agents.write_text(json.dumps(AGENTS))
        sidecar_env = {
            **env,
            "GATEWAY_CONFIG": str(config),
            "GATEWAY_DATA_DIR": str(self.workdir / "data"),
            "AGENT_SPECS_PATH": str(agents),
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(self.sidecar_port),
        }
        self.sidecar_pid = self._spawn([python, "-m", "sidecar", "serve"], sidecar_env).pid
        self.ready_s = wait_http(f"http://127.0.0.1:{self.sidecar_port}/readyz", False)


async def soak(base: str, pid: int, total: int, concurrency: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    bodies = [body if isinstance(body, bytes) else json.dumps(body).encode() for *_, body, _ in MIX]
    counter = iter(range(total))
    outcomes: Counter[str] = Counter()
    unexpected: Counter[str] = Counter()
    rss: list[tuple[int, float]] = []
    done = 0
    sample_every = max(1, total // 80)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal done
            for n in counter:
                kind, method, path, _, ok = MIX[n % len(MIX)]
                body = bodies[n % len(MIX)] if method == "POST" else None
                try:
                    async with session.request(
                        method, base + path, data=body, headers=headers
                    ) as reply:
                        await reply.read()
                        status = reply.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    unexpected[f"{kind}: {type(exc).__name__}"] += 1
                    continue
                outcomes[f"{kind} {status}"] += 1
                if status not in ok:
                    unexpected[f"{kind} {status}"] += 1
                done += 1
                if done % sample_every == 0:
                    rss.append((done, rss_mb(pid)))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    rss.append((done, rss_mb(pid)))
    second_half = [mb for n, mb in rss if n >= total // 2] or [0.0]
    growth = 100 * (second_half[-1] - second_half[0]) / second_half[0] if second_half[0] else 0.0
    return {
        "requests": done,
        "seconds": round(elapsed, 1),
        "rps": round(done / elapsed, 1) if elapsed else 0.0,
        "outcomes": dict(sorted(outcomes.items())),
        "unexpected": dict(unexpected),
        "rss_mb": {"first": rss[0][1], "half": second_half[0], "last": second_half[-1]},
        "rss_growth_second_half_pct": round(growth, 2),
        "rss_samples": [[n, round(mb, 2)] for n, mb in rss],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-growth-pct", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "soak.json")
    args = parser.parse_args()
    pin(0, {1})
    with tempfile.TemporaryDirectory(prefix="gateway-soak-") as workdir:
        sidecar = Sidecar(Path(workdir))
        try:
            sidecar.start()
            base = f"http://127.0.0.1:{sidecar.sidecar_port}"
            results = asyncio.run(soak(base, sidecar.sidecar_pid, args.requests, args.concurrency))
        finally:
            sidecar.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    rss = results["rss_mb"]
    print(f"{results['requests']} requests in {results['seconds']} s ({results['rps']} rps)")
    for outcome, count in results["outcomes"].items():
        print(f"  {outcome:24} {count}")
    print(
        f"sidecar RSS: {rss['first']:.1f} MB at the first sample, {rss['half']:.1f} MB at half "
        f"time, {rss['last']:.1f} MB at the end: {results['rss_growth_second_half_pct']:+.2f}% "
        f"over the second half (limit {args.max_growth_pct:+.1f}%)"
    )
    if results["unexpected"]:
        print(f"unexpected answers: {results['unexpected']}")
    flat = results["rss_growth_second_half_pct"] <= args.max_growth_pct
    return 0 if flat and not results["unexpected"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
