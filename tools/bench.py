#!/usr/bin/env python3
"""Benchmark what the gateway costs: fake backend direct vs sidecar alone vs Caddy + sidecar.

The ``streams`` phase is real LLM traffic: many concurrent streams of small events (256
streams of 100 events, 20 ms apart) against a second fake backend directly, through the
sidecar, and through a bare aiohttp relay (``tools/bench_relay.py``, the floor). It reports
time to first token (also apart for the first wave, whose streams each open a new
connection, and the later ones, which reuse them) and the server's CPU time per relayed
event (utime + stime from ``/proc/<pid>/stat`` over the phase, divided by the events the
clients received), and the fake backend's, which shares the servers' core; and the
server's wake-ups per event (its main thread's voluntary context switches: each is the
loop going to sleep with nothing ready and being woken by a later event, on the shared
core mostly by preempting the fake backend). A single run of it swings by tens of ms
on a shared 2-core machine, so it runs in rounds (``--stream-rounds``, default 3), each
measuring direct, the sidecar and the relay in turn; it reports the median of each
figure over the rounds, an added figure as the median of the round-by-round differences
from direct, and the added TTFT p50 of every round.

Bounded load on loopback only (fixed request counts, a warm-up, a time cap per phase).
The load generator is an aiohttp client in this process, pinned to one core; the servers
(fake backend, sidecar, Caddy) are pinned to the other. Prints a table of ratios against
direct and writes the figures as JSON.

    .venv/bin/python tools/bench.py [--requests 2000] [--out var/bench.json]
    .venv/bin/python tools/bench.py --phases streams     # only the streams phase
    .venv/bin/python tools/bench.py --phases cpu         # CPU per request, sidecar vs relay

The ``cpu`` phase sends sequential non-streamed chats (``--cpu-requests``, default 2000)
to the sidecar and to the bare relay and divides each server's CPU time by the requests:
the per-request cost that, times the requests ahead in a burst, sets time to first token.

The ``keys`` phase measures what named API keys add: 100 keys with every limit on (and a
model scope) in the sidecar's keys database; sequential chats alternate between a static
token and one of those keys (``--keys-requests`` each), and the report gives both p50s
and the difference (and the median of each key request minus the static one next to
it, which the machine's changing load cancels out of). It also times the key path alone
in this process (look-up by digest, scope and limit checks, charging the tokens) over
100,000 requests.

    .venv/bin/python tools/bench.py --phases keys
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-" + "x7Qp2mLz9vRt4sWk"
PHASE_CAP_S = 40.0
STREAM_EVENTS = 100  # per stream in the streams phase: role, 98 pieces, stop
STREAM_GAP_MS = 20.0
# The fake answers "Mock reply to: <prompt>", one word per event.
STREAM_WORDS = " ".join(f"w{i}" for i in range(STREAM_EVENTS - 2 - 3))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pin(pid: int, cores: set[int]) -> None:
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(pid, cores)


def status_number(pid: int, field: str) -> int:
    """A number from ``/proc/<pid>/status`` (the main thread's), 0 if it or the process is
    gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_mb(pid: int) -> float:
    return status_number(pid, "VmRSS") / 1024


class Target:
    def __init__(self, name: str, base: str, ssl_context: ssl.SSLContext | bool = False) -> None:
        self.name, self.base, self.ssl = name, base, ssl_context


async def timed_requests(
    target: Target,
    body: dict[str, Any],
    path: str,
    total: int,
    concurrency: int,
    on_sample: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Send ``total`` requests with ``concurrency`` workers; latency per request."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    payload = json.dumps(body).encode()
    deadline = time.monotonic() + PHASE_CAP_S
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=target.ssl)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            for _ in counter:
                if time.monotonic() > deadline:
                    return
                start = time.perf_counter()
                async with session.post(target.base + path, data=payload, headers=headers) as reply:
                    await reply.read()
                    if reply.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - start)
                if on_sample and len(latencies) % 200 == 0:
                    on_sample()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed if elapsed else 0.0,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else 0.0,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99) - 1] if latencies else 0.0,
    }


async def timed_streams(target: Target, total: int, concurrency: int) -> dict[str, Any]:
    """Streaming chat: time to first token and the mean gap between chunks."""
    ttfts: list[float] = []
    gaps: list[float] = []
    counter = iter(range(total))
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    body = json.dumps(
        {
            "model": "mock-llama",
            "stream": True,
            "messages": [{"role": "user", "content": "a b c d e f g h"}],
        }
    ).encode()
    deadline = time.monotonic() + PHASE_CAP_S
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=target.ssl)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for _ in counter:
                if time.monotonic() > deadline:
                    return
                start = time.perf_counter()
                stamps = []
                async with session.post(
                    target.base + "/v1/chat/completions", data=body, headers=headers
                ) as reply:
                    async for line in reply.content:
                        if line.startswith(b"data: {"):
                            stamps.append(time.perf_counter())
                if stamps:
                    ttfts.append(stamps[0] - start)
                    if len(stamps) > 1:
                        gaps.append((stamps[-1] - stamps[0]) / (len(stamps) - 1))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {
        "streams": len(ttfts),
        "ttft_p50_ms": 1000 * statistics.median(ttfts) if ttfts else 0.0,
        "chunk_gap_ms": 1000 * statistics.mean(gaps) if gaps else 0.0,
    }


def wakeups(pid: int) -> int:
    """Voluntary context switches of a process's main thread so far (0 if it is gone)."""
    return status_number(pid, "voluntary_ctxt_switches")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed_event_streams(
    target: Target,
    total: int,
    concurrency: int,
    server_pid: int | None,
    model: str,
    backend_pid: int | None = None,
) -> dict[str, Any]:
    """Many concurrent streams of small events: TTFT and server CPU per relayed event.

    The first ``concurrency`` streams (the first wave) each open a new connection; the
    rest reuse them. Their TTFT medians are reported apart, since the two cost the
    server differently."""
    first_wave: list[float] = []
    later: list[float] = []
    events = 0
    errors = 0
    counter = iter(range(total))
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    body = json.dumps(
        {
            "model": model,
            "stream": True,
            "messages": [{"role": "user", "content": STREAM_WORDS}],
        }
    ).encode()
    deadline = time.monotonic() + PHASE_CAP_S
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=target.ssl)
    timeout = aiohttp.ClientTimeout(total=PHASE_CAP_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal events, errors
            for index in counter:
                if time.monotonic() > deadline:
                    return
                start = time.perf_counter()
                first = 0.0
                seen = 0
                try:
                    async with session.post(
                        target.base + "/v1/chat/completions", data=body, headers=headers
                    ) as reply:
                        async for line in reply.content:
                            if line.startswith(b"data: {"):
                                seen += 1
                                if seen == 1:
                                    first = time.perf_counter()
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                events += seen
                if seen == STREAM_EVENTS:
                    (first_wave if index < concurrency else later).append(first - start)
                else:
                    errors += 1

        cpu_before = cpu_seconds(server_pid) if server_pid else 0.0
        wakeups_before = wakeups(server_pid) if server_pid else 0
        backend_before = cpu_seconds(backend_pid) if backend_pid else 0.0
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(server_pid) - cpu_before if server_pid else 0.0
        woke = wakeups(server_pid) - wakeups_before if server_pid else 0
        backend_cpu = cpu_seconds(backend_pid) - backend_before if backend_pid else 0.0
    ttfts = sorted(first_wave + later)
    return {
        "streams": len(ttfts),
        "errors": errors,
        "events": events,
        "elapsed_s": elapsed,
        "ttft_p50_ms": 1000 * statistics.median(ttfts) if ttfts else 0.0,
        "ttft_p99_ms": 1000 * ttfts[max(0, int(len(ttfts) * 0.99) - 1)] if ttfts else 0.0,
        "ttft_p50_first_wave_ms": 1000 * statistics.median(first_wave) if first_wave else 0.0,
        "ttft_p50_later_ms": 1000 * statistics.median(later) if later else 0.0,
        "cpu_s": cpu,
        "cpu_us_per_event": 1e6 * cpu / events if server_pid and events else 0.0,
        "wakeups_per_event": woke / events if server_pid and events else 0.0,
        "backend_cpu_us_per_event": 1e6 * backend_cpu / events if backend_pid and events else 0.0,
    }


def wait_http(url: str, ssl_context: ssl.SSLContext | bool, timeout: float = 30.0) -> float:
    start = time.perf_counter()

    async def probe() -> None:
        async with aiohttp.ClientSession() as session:
            while time.perf_counter() - start < timeout:
                try:
                    async with session.get(url, ssl=ssl_context) as reply:
                        if reply.status == 200:
                            return
                except (aiohttp.ClientError, OSError):
                    pass
                await asyncio.sleep(0.02)
            raise RuntimeError(f"{url} did not become ready")

    asyncio.run(probe())
    return time.perf_counter() - start


class Servers:
    """The fake backend, a TCP sidecar, and Caddy + a socket sidecar via ``gateway up``."""

    def __init__(self, workdir: Path, latency_ms: float) -> None:
        self.workdir = workdir
        self.latency_ms = latency_ms
        self.procs: list[subprocess.Popen[bytes]] = []
        self.backend_port = free_port()
        self.sidecar_port = free_port()
        self.site_port = free_port()
        self.ready_s = 0.0
        self.sidecar_pid = 0
        self.stream_backend_port = free_port()
        self.relay_port = free_port()
        self.relay_pid = 0
        self.stream_backend_pid = 0
        self.keys: list[str] = []

    def _spawn(self, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"proc{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        pin(proc.pid, {0})
        self.procs.append(proc)
        return proc

    def start(self, with_caddy: bool = True) -> None:
        env = {**os.environ, "GATEWAY_BEARER_TOKEN": TOKEN, "GATEWAY_ACCESS_LOG": "true"}
        python = sys.executable
        self._spawn(
            [
                python,
                "-m",
                "sidecar",
                "mock-backends",
                "--port",
                str(self.backend_port),
                "--latency-ms",
                str(self.latency_ms),
                "--chunk-delay-ms",
                "5",
                "--chunks",
                "8",
            ],
            env,
        )
        wait_http(f"http://127.0.0.1:{self.backend_port}/healthz", False)
        self.stream_backend_pid = self._spawn(
            [
                python,
                "-m",
                "sidecar",
                "mock-backends",
                "--port",
                str(self.stream_backend_port),
                "--latency-ms",
                "0",
                "--chunk-delay-ms",
                str(STREAM_GAP_MS),
                "--chunks",
                str(STREAM_EVENTS - 2),
            ],
            env,
        ).pid
        wait_http(f"http://127.0.0.1:{self.stream_backend_port}/healthz", False)
        relay = self._spawn(
            [
                python,
                str(ROOT / "tools" / "bench_relay.py"),
                "--port",
                str(self.relay_port),
                "--backend",
                f"http://127.0.0.1:{self.stream_backend_port}",
            ],
            env,
        )
        self.relay_pid = relay.pid
        wait_http(f"http://127.0.0.1:{self.relay_port}/readyz", False)
        config = self.workdir / "gateway.yaml"
        config.write_text(
            f"""version: 1
backends:
  mock:
    url: http://127.0.0.1:{self.backend_port}/v1
    class: mock
    limits: {{chat: 256, embeddings: 256, completions: 256}}
    health: {{liveness: /healthz, readiness: /readyz}}
    models:
      - {{id: mock-llama, capabilities: [chat, completions]}}
      - {{id: mock-embed, capabilities: [embeddings]}}
  mockstream:
    url: http://127.0.0.1:{self.stream_backend_port}/v1
    class: mock
    limits: {{chat: 512}}
    health: {{liveness: /healthz, readiness: /readyz}}
    models:
      - {{id: mock-llama, capabilities: [chat]}}
"""
        )
        sidecar_env = {
            **env,
            "GATEWAY_CONFIG": str(config),
            "GATEWAY_DATA_DIR": str(self.workdir / "tcp"),
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(self.sidecar_port),
        }
        proc = self._spawn([python, "-m", "sidecar", "serve"], sidecar_env)
        self.sidecar_pid = proc.pid
        self.ready_s = wait_http(f"http://127.0.0.1:{self.sidecar_port}/readyz", False)
        if not with_caddy:
            return
        up_env = {
            **env,
            "GATEWAY_CONFIG": str(config),
            "GATEWAY_DATA_DIR": str(self.workdir / "up"),
            "GATEWAY_SITE": f"https://127.0.0.1:{self.site_port}",
        }
        up = self._spawn([python, "-m", "sidecar", "up"], up_env)
        deadline = time.monotonic() + 45
        ca = self.ca_root
        while not ca.exists() and time.monotonic() < deadline and up.poll() is None:
            time.sleep(0.05)
        wait_http(
            f"https://127.0.0.1:{self.site_port}/readyz", ssl.create_default_context(cafile=str(ca))
        )
        for child in _children(up.pid):
            pin(child, {0})

    @property
    def ca_root(self) -> Path:
        return self.workdir / "up" / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


KEY_COUNT = 100
KEY_LIMITS = {
    "rpm": 1_000_000,
    "tpm": 10**9,
    "tokens_per_day": 10**11,
    "concurrency": 10_000,
    "models": ["mock*"],
}


def make_keys(data_dir: Path) -> list[str]:
    """``KEY_COUNT`` keys with every limit on (never reached), in the sidecar's database."""
    from sidecar.auth.keys import KeyDatabase

    database = KeyDatabase(data_dir / "keys.sqlite3")
    try:
        return [database.create(f"bench-{i}", dict(KEY_LIMITS))[1] for i in range(KEY_COUNT)]
    finally:
        database.close()


async def run_keys(servers: Servers, args: argparse.Namespace) -> dict[str, Any]:
    """Sequential chats, alternating a static token and a limited key: p50 of each."""
    base = f"http://127.0.0.1:{servers.sidecar_port}/v1/chat/completions"
    body = json.dumps(
        {"model": "mockstream/mock-llama", "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    secret = servers.keys[KEY_COUNT // 2]
    samples: dict[str, list[float]] = {"static token": [], "API key": []}
    errors = 0
    auth = {"static token": TOKEN, "API key": secret}
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for round_ in range(args.warmup + args.keys_requests):
            for name in ("static token", "API key") if round_ % 2 else ("API key", "static token"):
                headers = {"Authorization": f"Bearer {auth[name]}"}
                headers["Content-Type"] = "application/json"
                start = time.perf_counter()
                async with session.post(base, data=body, headers=headers) as reply:
                    await reply.read()
                    errors += reply.status != 200
                if round_ >= args.warmup:
                    samples[name].append(time.perf_counter() - start)
    results: dict[str, Any] = {
        name: {"requests": len(s), "p50_ms": 1000 * statistics.median(s)}
        for name, s in samples.items()
    }
    results["added_p50_ms"] = results["API key"]["p50_ms"] - results["static token"]["p50_ms"]
    # Each key request against the static one next to it: drift in the machine's load
    # cancels out of the median of these differences.
    pairs = zip(samples["API key"], samples["static token"], strict=True)
    results["paired_difference_p50_ms"] = 1000 * statistics.median(a - b for a, b in pairs)
    results["errors"] = errors
    results["in_process_us"] = key_path_in_process()
    return results


def key_path_in_process(iterations: int = 100_000) -> dict[str, float]:
    """The key path alone: what the bearer middleware does for a limited key."""
    from sidecar.auth import scope
    from sidecar.auth.bearer import TokenSet
    from sidecar.auth.keys import ApiKey, digest_of
    from sidecar.auth.limits import LocalLimiter
    from sidecar.settings import BearerToken

    secrets_ = [f"gw_bench-secret-{i:04d}-xxxxxxxxxxxxxxxxxxxxxxxxxxxx" for i in range(KEY_COUNT)]
    tokens = TokenSet((BearerToken("default", TOKEN),))
    limits = {k: v for k, v in KEY_LIMITS.items() if k != "models"}
    tokens.use_keys(
        (ApiKey(f"k{i}", models=("mock*",), **limits), digest_of(s))  # type: ignore[arg-type]
        for i, s in enumerate(secrets_)
    )
    limiter = LocalLimiter()
    header = f"Bearer {secrets_[KEY_COUNT // 2]}"
    timings = []
    for _ in range(iterations):
        start = time.perf_counter_ns()
        key = tokens.identify(header)
        ticket = limiter.admit(key)
        bound = scope.bind(key)
        scope.require_model("mockstream/mock-llama")
        scope.unbind(bound)
        limiter.done(ticket, 42)
        timings.append(time.perf_counter_ns() - start)
    timings.sort()
    return {
        "p50": timings[len(timings) // 2] / 1000,
        "p99": timings[int(len(timings) * 0.99)] / 1000,
    }


def report_keys(results: dict[str, Any]) -> str:
    lines = [f"keys ({KEY_COUNT} keys, every limit on)  p50 c1 (ms)"]
    for name in ("static token", "API key"):
        lines.append(f"{name:<34}  {results[name]['p50_ms']:.3f}")
    lines.append(f"{'added by the key':<34}  {results['added_p50_ms']:+.3f}")
    paired = results["paired_difference_p50_ms"]
    lines.append(f"{'median of paired differences':<34}  {paired:+.3f}")
    inside = results["in_process_us"]
    lines.append(
        f"key path in process: p50 {inside['p50']:.1f} µs, p99 {inside['p99']:.1f} µs;"
        f" non-200 answers: {results['errors']}"
    )
    return "\n".join(lines)


async def run_phases(servers: Servers, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if "keys" in args.phases:
        results["keys"] = await run_keys(servers, args)
    if "cpu" in args.phases:
        results["cpu"] = await run_cpu(servers, args)
    if "streams" in args.phases:
        results["streams"] = await run_streams(servers, args)
    if "requests" in args.phases:
        results.update(await run_requests(servers, args))
    return results


async def run_requests(servers: Servers, args: argparse.Namespace) -> dict[str, Any]:
    targets = [
        Target("direct", f"http://127.0.0.1:{servers.backend_port}"),
        Target("sidecar", f"http://127.0.0.1:{servers.sidecar_port}"),
        Target(
            "caddy+sidecar",
            f"https://127.0.0.1:{servers.site_port}",
            ssl.create_default_context(cafile=str(servers.ca_root)),
        ),
    ]
    chat = {"model": "mock-llama", "messages": [{"role": "user", "content": "benchmark me"}]}
    embed = {"model": "mock-embed", "input": ["benchmark me"], "encoding_format": "float"}
    rss: list[float] = []

    def sample() -> None:
        rss.append(rss_mb(servers.sidecar_pid))

    results: dict[str, Any] = {}
    for target in targets:
        await timed_requests(target, chat, "/v1/chat/completions", args.warmup, 32)
        on_sample = sample if target.name == "sidecar" else None
        results[target.name] = {
            "chat_c32": await timed_requests(
                target, chat, "/v1/chat/completions", args.requests, 32, on_sample
            ),
            "chat_c1": await timed_requests(target, chat, "/v1/chat/completions", args.serial, 1),
            "stream_c32": await timed_streams(target, args.streams, 32),
            "embeddings_c32": await timed_requests(
                target, embed, "/v1/embeddings", args.requests, 32, on_sample
            ),
        }
    sample()
    half = rss[len(rss) // 2 :] or [0.0]
    results["sidecar_memory"] = {
        "peak_rss_mb": max(rss or [0.0]),
        "rss_growth_last_half_pct": 100 * (half[-1] - half[0]) / half[0] if half[0] else 0.0,
        "samples": len(rss),
    }
    return results


# The TTFT figures reported as differences from direct's in the same round.
ADDED_KEYS = ("ttft_p50_ms", "ttft_p50_first_wave_ms", "ttft_p50_later_ms")


async def run_streams(servers: Servers, args: argparse.Namespace) -> dict[str, Any]:
    """The streams phase against the stream backend directly, the sidecar and the relay,
    in ``--stream-rounds`` interleaved rounds: the figures of each target are the medians
    over the rounds, and each added figure the median of the round-by-round differences
    from direct (the machine's drift between rounds falls out of those)."""
    targets = [
        (Target("direct", f"http://127.0.0.1:{servers.stream_backend_port}"), None),
        (Target("sidecar", f"http://127.0.0.1:{servers.sidecar_port}"), servers.sidecar_pid),
        (Target("bare relay", f"http://127.0.0.1:{servers.relay_port}"), servers.relay_pid),
    ]
    rounds: list[dict[str, dict[str, Any]]] = []
    for _ in range(args.stream_rounds):
        measured: dict[str, dict[str, Any]] = {}
        for target, pid in targets:
            # The sidecar names the stream backend's model by backend/model.
            model = "mockstream/mock-llama" if target.name == "sidecar" else "mock-llama"
            warm = args.stream_concurrency  # the servers' upstream connections, opened
            await timed_event_streams(target, warm, warm, pid, model)
            measured[target.name] = await timed_event_streams(
                target,
                args.stream_requests,
                args.stream_concurrency,
                pid,
                model,
                servers.stream_backend_pid,
            )
        direct = measured["direct"]
        for figures in measured.values():
            for key in ADDED_KEYS:
                figures["added_" + key] = figures[key] - direct[key]
        rounds.append(measured)
    results: dict[str, Any] = {
        name: {key: statistics.median(one[name][key] for one in rounds) for key in rounds[0][name]}
        for name in rounds[0]
    }
    results["rounds"] = rounds
    return results


async def run_cpu(servers: Servers, args: argparse.Namespace) -> dict[str, Any]:
    """Server CPU time per sequential non-streamed chat, sidecar and bare relay."""
    targets = [
        (Target("sidecar", f"http://127.0.0.1:{servers.sidecar_port}"), servers.sidecar_pid),
        (Target("bare relay", f"http://127.0.0.1:{servers.relay_port}"), servers.relay_pid),
    ]
    results: dict[str, Any] = {}
    for target, pid in targets:
        model = "mockstream/mock-llama" if target.name == "sidecar" else "mock-llama"
        chat = {"model": model, "messages": [{"role": "user", "content": "benchmark me"}]}
        await timed_requests(target, chat, "/v1/chat/completions", args.warmup, 1)
        before = cpu_seconds(pid)
        run = await timed_requests(target, chat, "/v1/chat/completions", args.cpu_requests, 1)
        run["cpu_us_per_request"] = 1e6 * (cpu_seconds(pid) - before) / max(1, run["requests"])
        results[target.name] = run
    return results


def report_cpu(results: dict[str, Any]) -> str:
    lines = ["cpu (sequential chats)  CPU/request (µs)  p50 c1 (ms)  errors"]
    for name in ("sidecar", "bare relay"):
        r = results[name]
        lines.append(
            f"{name:<23}  {r['cpu_us_per_request']:<16.0f}  {r['p50_ms']:<11.2f}  {r['errors']}"
        )
    return "\n".join(lines)


def report_streams(results: dict[str, Any], concurrency: int) -> str:
    rounds = results["rounds"]
    rows = [
        (
            f"streams ({len(rounds)} round{'s' if len(rounds) != 1 else ''})",
            f"TTFT p50 c{concurrency} (+ms)",
            "wave 1 / later p50 (+ms)",
            "TTFT p99 (ms)",
            "CPU/event (µs)",
            "ratio",
            "wake-ups/event",
            "backend CPU/event (µs)",
            "errors",
        )
    ]
    relay_cpu = results["bare relay"]["cpu_us_per_event"]
    for name in ("direct", "sidecar", "bare relay"):
        r = results[name]
        cpu = r["cpu_us_per_event"]
        rows.append(
            (
                name,
                f"{r['ttft_p50_ms']:.1f} ({r['added_ttft_p50_ms']:+.1f})",
                f"{r['added_ttft_p50_first_wave_ms']:+.0f} / {r['added_ttft_p50_later_ms']:+.0f}",
                f"{r['ttft_p99_ms']:.1f}",
                f"{cpu:.1f}" if name != "direct" else "-",
                f"{cpu / relay_cpu:.2f}" if name != "direct" and relay_cpu else "-",
                f"{r['wakeups_per_event']:.2f}" if name != "direct" else "-",
                f"{r['backend_cpu_us_per_event']:.1f}",
                f"{sum(one[name]['errors'] for one in rounds)}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.append("medians over the rounds; added TTFT p50 round by round:")
    for name in ("sidecar", "bare relay"):
        each = ", ".join(f"{one[name]['added_ttft_p50_ms']:+.1f}" for one in rounds)
        lines.append(f"  {name}: {each} ms")
    return "\n".join(lines)


def report(results: dict[str, Any], servers: Servers) -> str:
    direct = results["direct"]
    rows = [
        (
            "target",
            "chat rps c32",
            "ratio",
            "p50 c1 (+ms)",
            "p99 c1 (+ms)",
            "TTFT c32 (+ms)",
            "chunk gap (+ms)",
            "embed rps",
            "ratio",
        )
    ]
    for name in ("direct", "sidecar", "caddy+sidecar"):
        r = results[name]

        def added(phase: str, key: str, digits: int, r: dict[str, Any] = r) -> str:
            value, base = r[phase][key], direct[phase][key]
            return f"{value:.{digits}f} ({value - base:+.{digits}f})"

        rows.append(
            (
                name,
                f"{r['chat_c32']['rps']:.0f}",
                f"{r['chat_c32']['rps'] / direct['chat_c32']['rps']:.2f}",
                added("chat_c1", "p50_ms", 2),
                added("chat_c1", "p99_ms", 2),
                added("stream_c32", "ttft_p50_ms", 1),
                added("stream_c32", "chunk_gap_ms", 2),
                f"{r['embeddings_c32']['rps']:.0f}",
                f"{r['embeddings_c32']['rps'] / direct['embeddings_c32']['rps']:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    memory = results["sidecar_memory"]
    lines.append(
        f"sidecar: ready in {servers.ready_s:.2f} s, peak RSS {memory['peak_rss_mb']:.1f} MB, "
        f"RSS growth over the last half {memory['rss_growth_last_half_pct']:+.1f}%"
    )
    errors = sum(
        results[n][k].get("errors", 0)
        for n in ("direct", "sidecar", "caddy+sidecar")
        for k in ("chat_c32", "chat_c1", "embeddings_c32")
    )
    lines.append(f"non-200 answers: {errors}")
    return "\n".join(lines)


def _commit() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        return done.stdout.strip()
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="per c32 phase (default 2000)")
    parser.add_argument("--serial", type=int, default=300, help="requests at concurrency 1")
    parser.add_argument("--streams", type=int, default=500, help="streams at concurrency 32")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="fake backend latency")
    parser.add_argument(
        "--phases",
        default="requests,streams",
        help="comma-separated: requests (the chat/embeddings table), streams, cpu, ledger, keys",
    )
    parser.add_argument("--keys-requests", type=int, default=3000, help="keys phase, per caller")
    parser.add_argument("--cpu-requests", type=int, default=2000, help="cpu phase, per target")
    parser.add_argument("--stream-requests", type=int, default=768, help="streams phase total")
    parser.add_argument("--stream-concurrency", type=int, default=256)
    parser.add_argument(
        "--stream-rounds", type=int, default=3, help="streams phase rounds (median reported)"
    )
    parser.add_argument("--ledger-rows", type=int, default=100_000, help="ledger phase calls")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench.json")
    args = parser.parse_args()
    args.phases = set(args.phases.split(","))
    if args.stream_rounds < 1:
        parser.error("--stream-rounds must be at least 1")
    if "ledger" in args.phases:  # in-process, no servers: tools/bench_ledger.py
        from bench_ledger import report as report_ledger
        from bench_ledger import run as run_ledger

        print(report_ledger(run_ledger(args.ledger_rows)))
        args.phases.discard("ledger")
        if not args.phases:
            return 0
    pin(0, {1})
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as workdir:
        servers = Servers(Path(workdir), args.latency_ms)
        if "keys" in args.phases:
            servers.keys = make_keys(Path(workdir) / "tcp")
        try:
            servers.start(with_caddy="requests" in args.phases)
            results = asyncio.run(run_phases(servers, args))
        finally:
            servers.stop()
    results["meta"] = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "load_generator": "aiohttp client (this process, pinned to core 1); servers on core 0",
        "sidecar_ready_s": servers.ready_s,
        "args": {k: str(v) for k, v in vars(args).items()},
        "commit": _commit(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    if "requests" in args.phases:
        print(report(results, servers))
    if "cpu" in args.phases:
        print(report_cpu(results["cpu"]))
    if "keys" in args.phases:
        print(report_keys(results["keys"]))
    if "streams" in args.phases:
        print(report_streams(results["streams"], args.stream_concurrency))
    print(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
