"""Model processes the gateway runs: real fake model servers (``gateway mock-backends
--kind model-server``) started, waited for, swapped, unloaded, restarted and killed.

Every wait is on a condition (the state the admin API shows, a process gone); the fake
servers take a fraction of a second to get ready, so each test stays short.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from sidecar.config.loader import parse_config
from sidecar.errors import ConfigError, RateLimited
from sidecar.routing.lifecycle.events import MAX_SUBSCRIBERS, QUEUE_EVENTS, EventHub
from sidecar.settings import BackendTlsDefaults, parse_bearer_tokens
from sidecar.typedefs import REGISTRY, RELOADER, SETTINGS

from .conftest import OTHER_TOKEN, ROOT, TOKEN, clean_env, eventually, free_port

pytestmark = pytest.mark.timeout(120)
wait_for = functools.partial(eventually, attempts=600, poll_s=0.05)
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
USER = {"Authorization": f"Bearer {OTHER_TOKEN}"}


def server_cmd(model: str, ready_s: float = 0.3, memory_mb: int = 1000, **flags: Any) -> list[str]:
    argv = [sys.executable, "-m", "sidecar", "mock-backends", "--kind", "model-server"]
    argv += ["--port", "{port}", "--model", model, "--ready-delay-s", str(ready_s)]
    argv += ["--memory-mb", str(memory_mb)]
    for flag, value in flags.items():
        argv += [f"--{flag.replace('_', '-')}", str(value)]
    return argv


def process_backend(
    name: str,
    model: str,
    *,
    ready_s: float = 0.3,
    memory_mb: int = 1000,
    queue: str = "{max: 32, timeout_s: 60}",
    server: dict[str, Any] | None = None,
    **process: Any,
) -> str:
    """A backend the gateway runs, in ``gateway.yaml`` text."""
    spec = {"cmd": server_cmd(model, ready_s, memory_mb, **(server or {})), **process}
    if "group" in process:
        spec.setdefault("memory_mb", memory_mb)
    lines = [
        f"  {name}:",
        "    url: http://127.0.0.1:{port}/v1",
        "    class: mock",
        f"    models: [{{id: {json.dumps(model)}, capabilities: [chat, completions]}}]",
        f"    queue: {queue}",
        f"    process: {json.dumps(spec)}",
    ]
    return "\n".join(lines)


def config(*backends: str, groups: str = "") -> str:
    text = "version: 1\nbackends:\n" + "\n".join(backends) + "\n"
    if groups:
        text += "groups:\n" + groups + "\n"
    return text


@pytest.fixture
async def models_gateway(make_gateway: Any) -> Any:
    """A gateway whose ``default`` token is an admin (the lifecycle API needs one)."""

    async def make(text: str) -> TestClient:
        tokens = parse_bearer_tokens(TOKEN, f"other:{OTHER_TOKEN}", "default")
        return await make_gateway(text, bearer_tokens=tokens)

    return make


def chat(model: str, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


async def states(gateway: TestClient) -> dict[str, dict[str, Any]]:
    response = await gateway.get("/v1/gateway/models", headers=ADMIN)
    assert response.status == 200, await response.text()
    return {row["backend"]: row for row in (await response.json())["data"]}


async def state_of(gateway: TestClient, backend: str) -> dict[str, Any]:
    return (await states(gateway))[backend]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


async def ask(gateway: TestClient, model: str) -> tuple[int, Any, Any]:
    response = await gateway.post("/v1/chat/completions", json=chat(model), headers=ADMIN)
    return response.status, await response.json(), response.headers


async def test_first_request_waits_for_the_load_and_succeeds(
    models_gateway: Any, tmp_path: Path
) -> None:
    gateway = await models_gateway(config(process_backend("a", "org/model-a:q4", ready_s=0.5)))
    before = await state_of(gateway, "a")
    assert before["state"] == "unloaded" and before["pid"] is None
    status, body, _ = await ask(gateway, "org/model-a:q4")
    assert status == 200, body
    assert body["choices"][0]["message"]["content"]
    after = await state_of(gateway, "a")
    assert after["state"] == "loaded"
    assert after["id"] == "org/model-a:q4"
    assert after["last_load_s"] >= 0.5  # measured: at least the server's own ready delay
    assert after["reported_memory_mb"] == 1000
    assert after["loads"] == 1 and alive(after["pid"])
    assert after["loaded_since"] is not None and after["idle_s"] is not None
    # Its output is kept in its own log under the data dir.
    log = tmp_path / "var" / "models" / "a.log"
    await wait_for(lambda: log.exists() and log.stat().st_size > 0, "the model's log")
    # A second request goes straight to the loaded process: no second load.
    status, _, _ = await ask(gateway, "org/model-a:q4")
    assert status == 200
    assert (await state_of(gateway, "a"))["loads"] == 1
    metrics = await (await gateway.get("/metrics", headers=ADMIN)).text()
    assert 'gateway_model_loads_total{backend="a",result="ok"} 1.0' in metrics
    assert 'gateway_model_state{backend="a",state="loaded"} 1.0' in metrics


async def test_an_idle_model_is_unloaded_after_its_ttl_and_its_process_is_gone(
    models_gateway: Any,
) -> None:
    gateway = await models_gateway(config(process_backend("a", "model-a", ttl_s=0.5)))
    assert (await ask(gateway, "model-a"))[0] == 200
    pid = (await state_of(gateway, "a"))["pid"]
    assert alive(pid)

    async def unloaded() -> bool:
        return (await state_of(gateway, "a"))["state"] == "unloaded"

    await wait_for(unloaded, "the TTL to unload the model")
    assert not alive(pid)
    assert (await state_of(gateway, "a"))["pid"] is None
    # The next request loads it again.
    assert (await ask(gateway, "model-a"))[0] == 200
    assert (await state_of(gateway, "a"))["loads"] == 2


GPU0 = "  gpu0: {memory_mb: 10000, fairness_s: 0}"


async def test_members_that_do_not_fit_swap_after_the_stream_in_flight_finishes(
    models_gateway: Any,
) -> None:
    slow_stream = {"chunk_delay_ms": 150, "chunks": 8}
    gateway = await models_gateway(
        config(
            process_backend("a", "model-a", memory_mb=6000, group="gpu0", server=slow_stream),
            process_backend("b", "model-b", memory_mb=6000, group="gpu0"),
            groups=GPU0,
        )
    )
    assert (await ask(gateway, "model-a"))[0] == 200
    pid_a = (await state_of(gateway, "a"))["pid"]
    stream = await gateway.post(
        "/v1/chat/completions", json=chat("model-a", stream=True), headers=ADMIN
    )
    assert stream.status == 200
    first = await stream.content.readline()
    assert first.startswith(b"data: ")
    other = asyncio.create_task(ask(gateway, "model-b"))

    async def draining() -> bool:
        return (await state_of(gateway, "a"))["state"] == "draining"

    await wait_for(draining, "model-a to drain for model-b")
    assert alive(pid_a)  # the stream in flight keeps its process
    assert (await state_of(gateway, "b"))["state"] == "unloaded"  # not both at once
    rest = await stream.read()
    assert rest.rstrip().endswith(b"data: [DONE]")  # the whole stream, uncut
    status, body, _ = await other
    assert status == 200, body
    rows = await states(gateway)
    assert rows["a"]["state"] == "unloaded" and rows["a"]["evictions"] == 1
    assert rows["b"]["state"] == "loaded"
    assert not alive(pid_a)


async def test_a_pinned_member_stays_while_the_others_swap(models_gateway: Any) -> None:
    gateway = await models_gateway(
        config(
            process_backend("p", "model-p", memory_mb=4000, group="gpu0", pin=True),
            process_backend("a", "model-a", memory_mb=6000, group="gpu0"),
            process_backend("b", "model-b", memory_mb=6000, group="gpu0"),
            groups="  gpu0: {memory_mb: 10000}",
        )
    )
    for model in ("model-p", "model-a"):
        assert (await ask(gateway, model))[0] == 200
    pinned = (await state_of(gateway, "p"))["pid"]
    assert (await ask(gateway, "model-b"))[0] == 200
    rows = await states(gateway)
    assert rows["b"]["state"] == "loaded"
    assert rows["a"]["state"] == "unloaded" and rows["a"]["evictions"] == 1
    assert rows["p"]["state"] == "loaded" and rows["p"]["pid"] == pinned and alive(pinned)
    assert rows["p"]["evictions"] == 0


async def test_a_crashed_model_is_restarted_by_the_next_request(models_gateway: Any) -> None:
    gateway = await models_gateway(config(process_backend("a", "model-a")))
    assert (await ask(gateway, "model-a"))[0] == 200
    pid = (await state_of(gateway, "a"))["pid"]
    os.kill(pid, signal.SIGKILL)

    async def failed() -> bool:
        row = await state_of(gateway, "a")
        return row["state"] == "failed" and row["crashes"] == 1

    await wait_for(failed, "the crash to be noticed")
    assert "crashed" in (await state_of(gateway, "a"))["error"]
    status, body, _ = await ask(gateway, "model-a")
    assert status == 200, body
    row = await state_of(gateway, "a")
    assert row["state"] == "loaded" and row["loads"] == 2
    assert row["pid"] != pid and alive(row["pid"])
    metrics = await (await gateway.get("/metrics", headers=ADMIN)).text()
    assert 'gateway_model_crashes_total{backend="a"} 1.0' in metrics


async def test_a_queue_deadline_shorter_than_the_load_gets_503_with_the_measured_time(
    models_gateway: Any,
) -> None:
    gateway = await models_gateway(
        config(
            process_backend("slow", "slow-model", ready_s=2.5, queue="{max: 8, timeout_s: 0.5}"),
            process_backend("quick", "quick-model", ready_s=0.1, queue="{max: 8, timeout_s: 0.5}"),
        )
    )
    measured = {}
    for backend in ("slow", "quick"):
        loaded = await gateway.post(f"/v1/gateway/models/{backend}/load", headers=ADMIN)
        assert loaded.status == 200, await loaded.text()
        measured[backend] = (await loaded.json())["last_load_s"]
        unloaded = await gateway.post(f"/v1/gateway/models/{backend}/unload", headers=ADMIN)
        assert (await unloaded.json())["state"] == "unloaded"
    assert measured["slow"] >= 2.5
    status, body, headers = await ask(gateway, "slow-model")
    assert status == 503, body
    assert body["error"]["code"] == "model_loading"
    retry_after = int(headers["Retry-After"])
    # From this model's measured load time, not a constant: the slow one says so.
    assert retry_after == math.ceil(measured["slow"])
    assert retry_after >= 3

    # The refused request started the load anyway, so the retry finds it ready.
    async def loaded() -> bool:
        return (await state_of(gateway, "slow"))["state"] == "loaded"

    await wait_for(loaded, "the slow model to load for the retry")
    assert (await ask(gateway, "slow-model"))[0] == 200


async def test_alternating_requests_for_two_exclusive_models_are_batched_not_thrashed(
    models_gateway: Any,
) -> None:
    gateway = await models_gateway(
        config(
            process_backend("a", "model-a", ready_s=0.2, group="gpu"),
            process_backend("b", "model-b", ready_s=0.2, group="gpu"),
            groups="  gpu: {exclusive: true, fairness_s: 1.0}",
        )
    )
    workers, rounds = 6, 4

    async def client(index: int) -> list[int]:
        codes = []
        for turn in range(rounds):
            model = ("model-a", "model-b")[(index + turn) % 2]
            codes.append((await ask(gateway, model))[0])
        return codes

    results = await asyncio.gather(*(client(i) for i in range(workers)))
    assert all(code == 200 for codes in results for code in codes), results
    rows = await states(gateway)
    loads = rows["a"]["loads"] + rows["b"]["loads"]
    # 24 requests, each wanting the model the other half of the clients just used:
    # swapping per request would be ~24 loads; batched, each load serves a whole batch.
    assert loads <= rounds + 2, loads
    assert not (rows["a"]["state"] == "loaded" and rows["b"]["state"] == "loaded")


async def test_stopping_the_gateway_stops_every_model_process(models_gateway: Any) -> None:
    gateway = await models_gateway(
        config(process_backend("a", "model-a"), process_backend("b", "model-b"))
    )
    for model in ("model-a", "model-b"):
        assert (await ask(gateway, model))[0] == 200
    pids = [row["pid"] for row in (await states(gateway)).values()]
    assert all(alive(pid) for pid in pids)
    await gateway.close()
    assert not any(alive(pid) for pid in pids)


async def test_the_admin_api_loads_unloads_and_streams_events(models_gateway: Any) -> None:
    gateway = await models_gateway(config(process_backend("a", "org/model:7b")))
    for path in ("/v1/gateway/models", "/v1/gateway/events"):
        refused = await gateway.get(path, headers=USER)
        assert refused.status == 403
        assert (await refused.json())["error"]["type"] == "permission_error"
    refused = await gateway.post("/v1/gateway/models/org/model:7b/load", headers=USER)
    assert refused.status == 403
    missing = await gateway.post("/v1/gateway/models/no/such:model/load", headers=ADMIN)
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "model_not_found"

    events = await gateway.get("/v1/gateway/events", headers=ADMIN)
    assert events.status == 200
    assert events.headers["Content-Type"].startswith("text/event-stream")
    loaded = await gateway.post("/v1/gateway/models/org/model:7b/load", headers=ADMIN)
    assert loaded.status == 200
    body = await loaded.json()
    assert body["id"] == "org/model:7b" and body["state"] == "loaded"
    unloaded = await gateway.post("/v1/gateway/models/org/model:7b/unload", headers=ADMIN)
    assert (await unloaded.json())["state"] == "unloaded"
    seen: list[dict[str, Any]] = []
    while len(seen) < 3:
        line = await asyncio.wait_for(events.content.readline(), 30)
        if line.startswith(b"data: "):
            seen.append(json.loads(line[6:]))
    assert [event["type"] for event in seen] == ["load", "ready", "unload"]
    assert all(event["backend"] == "a" for event in seen)
    assert seen[1]["seconds"] > 0 and seen[2]["reason"] == "admin"
    assert seen[0]["models"] == ["org/model:7b"]
    events.close()


def serve_env(tmp_path: Path, port: int, config_path: Path) -> dict[str, str]:
    """The environment of a ``gateway serve`` on ``port`` with admin token ``default``."""
    return clean_env(
        GATEWAY_HOST="127.0.0.1",
        GATEWAY_PORT=str(port),
        GATEWAY_CONFIG=str(config_path),
        GATEWAY_CONFIG_POLL_S="0",
        GATEWAY_BEARER_TOKEN=TOKEN,
        GATEWAY_ADMIN_TOKENS="default",
        GATEWAY_DATA_DIR=str(tmp_path / "var"),
        IMAGES_BACKEND="off",
    )


async def test_kill_9_of_the_gateway_leaves_no_model_process(tmp_path: Path) -> None:
    port = free_port()
    config_path = tmp_path / "gateway.yaml"
    config_path.write_text(config(process_backend("a", "model-a")))
    env = serve_env(tmp_path, port, config_path)
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        serve = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar", "serve", cwd=ROOT, env=env, stdout=log, stderr=log
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def listening() -> bool:
                assert serve.returncode is None, log_path.read_text()
                try:
                    async with session.get(f"{base}/healthz") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_for(listening, "gateway serve to listen")
            async with session.post(
                f"{base}/v1/chat/completions", json=chat("model-a"), headers=ADMIN
            ) as response:
                assert response.status == 200, await response.text()
            async with session.get(f"{base}/v1/gateway/models", headers=ADMIN) as response:
                pid = (await response.json())["data"][0]["pid"]
        assert alive(pid)
        serve.kill()  # SIGKILL: no cleanup runs in the gateway
        await serve.wait()
        # Gone within 5 s: the kernel kills it when its parent dies.
        await eventually(lambda: not alive(pid), "the model process to die", attempts=100)
    finally:
        if serve.returncode is None:
            serve.kill()
            await serve.wait()


def config_issues(text: str) -> set[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text.encode(), Path("/etc/gateway/gateway.yaml"), {}, BackendTlsDefaults())
    return {(issue.path, issue.message) for issue in caught.value.issues}


def test_a_model_that_cannot_fit_is_a_clear_config_error() -> None:
    issues = config_issues(
        config(
            process_backend("big", "big", memory_mb=30000, group="gpu0"),
            process_backend("p", "p", memory_mb=8000, group="gpu1", pin=True),
            process_backend("q", "q", memory_mb=8000, group="gpu1"),
            process_backend("lost", "lost", group="nowhere"),
            groups="  gpu0: {memory_mb: 24000}\n  gpu1: {memory_mb: 12000}\n  odd: {}",
        )
    )
    assert ("backends.big.process.memory_mb", "30000 MB cannot fit in group 'gpu0' (24000 MB)") in (
        issues
    )
    assert (
        "backends.q.process.memory_mb",
        "8000 MB does not fit in group 'gpu1' (12000 MB, 8000 MB of it pinned)",
    ) in issues
    assert (
        "backends.lost.process.group",
        "no group named 'nowhere' (known: gpu0, gpu1, odd)",
    ) in issues
    assert ("groups.odd", "needs memory_mb or exclusive: true") in issues


def test_port_placeholders_and_a_loopback_url_are_required() -> None:
    text = config(process_backend("a", "a")).replace("127.0.0.1:{port}", "10.0.0.5:{port}")
    issues = config_issues(text)
    assert any(path == "backends.a.url" and "loopback" in message for path, message in issues)
    text = config(process_backend("a", "a")).replace("127.0.0.1:{port}", "127.0.0.1:8080")
    issues = config_issues(text)
    assert any(path == "backends.a.url" and "{port}" in message for path, message in issues)
    text = config(process_backend("a", "a")).replace('"--port", "{port}", ', "")
    assert ("backends.a.process.cmd", "must pass {port} (the port the gateway picks)") in (
        config_issues(text)
    )
    text = config(process_backend("a", "a")).replace("    models: [", "    nomodels: [")
    issues = config_issues(text)
    assert ("backends.a.models", "a backend with process: must list its models") in issues


def test_a_slow_event_subscriber_is_dropped_without_blocking_anyone() -> None:
    async def run() -> None:
        hub = EventHub()
        slow, quick = hub.subscribe(), hub.subscribe()
        for _ in range(QUEUE_EVENTS):
            hub.publish("load", "a")
            assert await quick.next(1) is not None
        assert not slow.dropped
        hub.publish("ready", "a")  # one more than the slow one can hold
        assert slow.dropped and slow.ended and not quick.dropped
        assert (await quick.next(1) or {})["type"] == "ready"
        for _ in range(MAX_SUBSCRIBERS - 1):
            hub.subscribe()
        with pytest.raises(RateLimited):
            hub.subscribe()
        hub.close()
        assert await quick.next(1) is None and quick.ended

    asyncio.run(run())


async def test_a_model_that_fails_to_start_is_a_503_not_a_hang(models_gateway: Any) -> None:
    failing = [sys.executable, "-c", "import sys; sys.exit(3)", "{port}"]
    text = config(process_backend("a", "model-a")).replace(
        json.dumps(server_cmd("model-a")), json.dumps(failing)
    )
    gateway = await models_gateway(text)
    status, body, headers = await ask(gateway, "model-a")
    assert status == 503, body
    assert body["error"]["message"] == "backend 'a' failed to start its model; retry in about 1 s"
    assert int(headers["Retry-After"]) >= 1
    row = await state_of(gateway, "a")
    assert row["state"] == "failed"
    assert row["error"] == "failed to start: it exited with status 3"
    metrics = await (await gateway.get("/metrics", headers=ADMIN)).text()
    assert 'gateway_model_loads_total{backend="a",result="failed"} 1.0' in metrics


async def test_a_reload_keeps_a_running_model_and_its_port(models_gateway: Any) -> None:
    gateway = await models_gateway(
        config(process_backend("a", "model-a"), process_backend("b", "model-b"))
    )
    assert (await ask(gateway, "model-a"))[0] == 200
    before = await state_of(gateway, "a")
    app = gateway.server.app
    port = app[REGISTRY].current.backends["a"].config.url.port
    # Another backend changes; model-a's process and port stay as they are.
    changed = config(process_backend("a", "model-a"), process_backend("b", "model-c"))
    app[SETTINGS].config_path.write_text(changed)
    outcome = await app[RELOADER].reload("test")
    assert outcome.ok, outcome.error
    assert app[REGISTRY].current.backends["a"].config.url.port == port
    after = await state_of(gateway, "a")
    assert after["state"] == "loaded" and after["pid"] == before["pid"] and alive(after["pid"])
    assert (await ask(gateway, "model-a"))[0] == 200
    assert (await state_of(gateway, "a"))["loads"] == 1
    assert (await ask(gateway, "model-c"))[0] == 200


def test_lifecycle_keys_are_checked() -> None:
    text = config(process_backend("a", "a")).replace(
        "    process:", "    lifecycle: ollama\n    keep_alive: 5m\n    process:"
    )
    issues = config_issues(text)
    assert ("backends.a.lifecycle", "process: and lifecycle: exclude each other") in issues
    plain = "version: 1\nbackends:\n  r:\n    url: http://10.0.0.2:8000/v1\n    keep_alive: 5m\n"
    assert ("backends.r.keep_alive", "needs lifecycle: ollama or vllm-sleep") in config_issues(
        plain
    )
    odd = plain.replace("keep_alive: 5m", "lifecycle: sleepy")
    issues = config_issues(odd)
    assert any(path == "backends.r.lifecycle" and "unsupported" in msg for path, msg in issues)


async def test_requests_arriving_during_a_first_load_wait_for_that_same_load(
    models_gateway: Any,
) -> None:
    gateway = await models_gateway(config(process_backend("a", "model-a", ready_s=1.0)))
    first = asyncio.create_task(ask(gateway, "model-a"))

    async def loading() -> bool:
        return (await state_of(gateway, "a"))["state"] == "loading"

    await wait_for(loading, "the first load to begin")
    later = await asyncio.gather(*(ask(gateway, "model-a") for _ in range(4)))
    assert [status for status, _, _ in [await first, *later]] == [200] * 5
    assert (await state_of(gateway, "a"))["loads"] == 1


async def test_a_busy_member_serves_its_queue_for_the_fairness_window_before_a_swap(
    models_gateway: Any,
) -> None:
    slow_stream = {"chunk_delay_ms": 200, "chunks": 10}
    gateway = await models_gateway(
        config(
            process_backend("a", "model-a", group="gpu", server=slow_stream),
            process_backend("b", "model-b", group="gpu"),
            groups="  gpu: {exclusive: true, fairness_s: 5}",
        )
    )
    assert (await ask(gateway, "model-a"))[0] == 200
    stream = await gateway.post(
        "/v1/chat/completions", json=chat("model-a", stream=True), headers=ADMIN
    )
    assert (await stream.content.readline()).startswith(b"data: ")
    other = asyncio.create_task(ask(gateway, "model-b"))

    async def b_waits() -> bool:
        return (await state_of(gateway, "b"))["waiting"] == 1

    await wait_for(b_waits, "the request for model-b to wait")
    # model-a is busy and within its window: a new request for it is served by it now,
    # not sent to wait for model-a's next turn.
    assert (await ask(gateway, "model-a"))[0] == 200
    assert (await state_of(gateway, "a"))["loads"] == 1
    assert (await stream.read()).rstrip().endswith(b"data: [DONE]")
    assert (await other)[0] == 200
    rows = await states(gateway)
    assert rows["a"]["evictions"] == 1 and rows["b"]["state"] == "loaded"


async def test_load_and_unload_can_answer_before_they_are_done(models_gateway: Any) -> None:
    gateway = await models_gateway(config(process_backend("a", "model-a", ready_s=0.5)))
    path = "/v1/gateway/models/model-a"
    bad = await gateway.post(f"{path}/load", json={"wait": "no"}, headers=ADMIN)
    assert bad.status == 400 and (await bad.json())["error"]["param"] == "wait"
    started = await gateway.post(f"{path}/load", json={"wait": False}, headers=ADMIN)
    assert started.status == 202
    assert (await started.json())["state"] in ("unloaded", "loading")

    async def state_is(wanted: str) -> bool:
        return (await state_of(gateway, "a"))["state"] == wanted

    await wait_for(functools.partial(state_is, "loaded"), "the load started by the admin")
    stopping = await gateway.post(f"{path}/unload", json={"wait": False}, headers=ADMIN)
    assert stopping.status == 202
    await wait_for(functools.partial(state_is, "unloaded"), "the unload started by the admin")


async def test_an_unload_asked_while_the_model_loads_waits_for_the_load_then_stops_it(
    models_gateway: Any,
) -> None:
    # Two seconds of loading: time enough, even on a loaded machine, to ask while it loads.
    gateway = await models_gateway(config(process_backend("a", "model-a", ready_s=2.0)))
    path = "/v1/gateway/models/model-a"
    started = await gateway.post(f"{path}/load", json={"wait": False}, headers=ADMIN)
    assert started.status == 202

    async def loading() -> bool:
        row = await state_of(gateway, "a")
        return row["state"] == "loading" and row["pid"] is not None

    await wait_for(loading, "the model's process to start loading")
    pid = (await state_of(gateway, "a"))["pid"]
    stopped = await gateway.post(f"{path}/unload", headers=ADMIN)
    assert stopped.status == 200, await stopped.text()
    assert (await stopped.json())["state"] == "unloaded"
    row = await state_of(gateway, "a")
    assert row["state"] == "unloaded" and row["loads"] == 1 and row["pid"] is None
    assert not alive(pid)


async def test_a_reload_that_removes_a_loading_model_leaves_no_process(
    models_gateway: Any,
) -> None:
    gateway = await models_gateway(
        config(process_backend("a", "model-a", ready_s=1.5), process_backend("b", "model-b"))
    )
    waiting = asyncio.create_task(ask(gateway, "model-a"))
    pid = None

    async def started() -> bool:
        nonlocal pid
        row = await state_of(gateway, "a")
        pid = row["pid"]
        return row["state"] == "loading" and pid is not None

    await wait_for(started, "model-a's process to start")
    assert pid is not None
    app = gateway.server.app
    app[SETTINGS].config_path.write_text(config(process_backend("b", "model-b")))
    assert (await app[RELOADER].reload("test")).ok
    status, body, _ = await waiting
    assert status == 503, body
    assert "removed from the config" in body["error"]["message"]
    await wait_for(lambda: not alive(pid), "the removed model's process to stop")
    assert "a" not in await states(gateway)
    assert (await ask(gateway, "model-b"))[0] == 200
