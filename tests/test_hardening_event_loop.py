"""Attack: hostile tool calls must not block the event loop (issue 10, item 1).

While hostile calculator expressions go in through every face at once — ``/v1/tools``,
``/mcp`` and an agent whose model asks for them — a prober hits ``/healthz`` in a loop on
the same event loop as the gateway. Numbers that prove it held: every probe answered
within 100 ms (the issue's bound; the max is in the failure message), every hostile call
got a 400, a JSON-RPC error or a failed tool call (never a 500, never a result).

A frozen loop cannot be interrupted from inside it, so the attack test runs under
pytest-timeout's ``thread`` method: a regression such as ``round(5, -10**300)`` computing
forever ends the run with a failure instead of hanging it.

Also here: an agent's ``max_seconds`` includes its tool calls (a tool whose own
``timeout_s`` is 30 s is cut off at the 1 s budget and its slot freed), and the
event-loop lag gauge in ``/metrics`` shows a stall that the test causes on purpose.
"""

from __future__ import annotations

import asyncio
import gc
import json
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from sidecar.settings import ToolsSettings

from .conftest import TOKEN, backend_yaml, gateway_yaml
from .test_agents import SHIPPED_TOOLS, agent

BEARER = {"Authorization": f"Bearer {TOKEN}"}
RELEASE = web.AppKey("release", asyncio.Event)
HEALTHZ_BOUND_S = 0.100  # the number
LOADED_BOX_ALLOWANCE = 5  # a single wall-time outlier on a loaded box, not loop work
BUDGET_S = 1.0
BUDGET_MARGIN_S = 1.0  # the slow tool's own timeout is 30 s: a regression overshoots by far

# Refused before anything is computed: a 400 like any bad argument.
HOSTILE_BAD_INPUT = [
    "-" * 499 + "1",
    "+".join(["1"] * 250),
    "max(*range(10**9))",
    "max(" + ",".join(["10**300"] * 33) + ")",
    "max()",
    "max(1)",
    "round(1, 2, 3)",
    "sqrt()",
    "abs(1, 2)",
    "abs(x=1)",
    "1 << 10**9",
    "factorial(10**6)",
    "sum(range(10**9))",
    "__import__('os').system('true')",
    "().__class__.__mro__",
    "1\x00",
    "\ud800",
]
# Refused while computing, before any operand or result outgrows its bound: a tool error.
HOSTILE_COMPUTED = [
    "round(5, -10**300)",
    "round(5, -10**10)",
    "round(1.5, 10**300)",
    "round(5, 2.5)",
    "10**10**10",
    "9**9**9",
    "(2**1000)**(2**1000)",
    "(10**300)**1000",
    "(10**300)**999",
    "7**999",
    "9" * 499,
    "1e309",
    "10**300*10**300",
    "floor(1e300)**2",
    "(" * 199 + "10**300" + ")" * 199 + "*10",
    "1/0",
    "sqrt(-1)",
]
HOSTILE = HOSTILE_BAD_INPUT + HOSTILE_COMPUTED


def calculator_expressions_app(received: list[str]) -> web.Application:
    """A scripted model: the hostile agent asks for every hostile expression in one turn,
    then answers; the patient agent always asks for the slow tool. Plus the slow tool."""
    app = web.Application()
    release = app[RELEASE] = asyncio.Event()

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        system = body["messages"][0]["content"]
        received.append(system)
        turn = sum(1 for m in body["messages"] if m["role"] == "assistant")
        if system.startswith("hostile") and turn == 0:
            calls = [
                {
                    "id": f"call_{i}",
                    "type": "function",
                    "function": {
                        "name": "calculator",
                        "arguments": json.dumps({"expression": expression}),
                    },
                }
                for i, expression in enumerate(HOSTILE)
            ]
            message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": calls}
        elif system.startswith("patient"):
            call = {"id": f"call_{turn}", "type": "function"}
            call["function"] = {"name": "slow", "arguments": "{}"}
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
        else:
            message = {"role": "assistant", "content": "done"}
        return web.json_response(
            {
                "id": "chatcmpl-x",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model"),
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            }
        )

    async def slow_tool(request: web.Request) -> web.Response:
        async with asyncio.timeout(30):
            await release.wait()
        return web.json_response({"late": True})

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "mock-llama"}]})

    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/tools/slow", slow_tool)
    return app


Gateway = tuple[TestClient, TestServer, list[str]]


@pytest.fixture(name="hostile_gateway")
async def hostile_gateway_fixture(
    make_gateway: Callable[..., Awaitable[TestClient]],
    start_mock: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
) -> AsyncIterator[Gateway]:
    received: list[str] = []
    model = await start_mock(calculator_expressions_app(received))
    tools = {
        "calculator": {**SHIPPED_TOOLS["calculator"], "concurrency": 64},
        "slow": {
            "version": "1",
            "parameters": {"type": "object"},
            "http": {"backend": "mock", "path": "/tools/slow"},
            "timeout_s": 30,
            "concurrency": 1,
        },
    }
    config = gateway_yaml(
        backend_yaml(
            "mock",
            str(model.make_url("/v1")),
            **{"class": "mock", "models": "[{id: mock-llama, capabilities: [chat]}]"},
        ),
        aliases="default: {backend: mock, model: mock-llama}",
    ) + yaml.safe_dump({"tools": tools})
    agents = {
        "hostile": agent(
            system_prompt="hostile agent", tools=["calculator"], max_turns=2, max_seconds=60
        ),
        "patient": agent(
            system_prompt="patient agent", tools=["slow"], max_turns=5, max_seconds=BUDGET_S
        ),
    }
    agents_path = tmp_path / "agents.json"
    agents_path.write_text(json.dumps({"agents": agents}))
    gateway = await make_gateway(config, tools=ToolsSettings(agent_specs_path=agents_path))
    yield gateway, model, received
    model.app[RELEASE].set()


# -- the attack -----------------------------------------------------------------------------


async def attack_tools(client: TestClient, outcomes: list[str]) -> None:
    for expression in HOSTILE:
        response = await client.post(
            "/v1/tools/calculator",
            json={"arguments": {"expression": expression}},
            headers=BEARER,
        )
        body = await response.json()
        if expression in HOSTILE_BAD_INPUT:
            assert response.status == 400, (expression, response.status, body)
            assert set(body) == {"error"} and body["error"]["message"], body
            outcomes.append("400")
        else:
            assert response.status == 200, (expression, response.status, body)
            assert body["ok"] is False, (expression, body)
            assert body["error"]["type"] == "calculation_error", body
            outcomes.append("tool_error")


async def attack_mcp(client: TestClient, outcomes: list[str]) -> None:
    for number, expression in enumerate(HOSTILE):
        message = {
            "jsonrpc": "2.0",
            "id": number,
            "method": "tools/call",
            "params": {"name": "calculator", "arguments": {"expression": expression}},
        }
        response = await client.post("/mcp", json=message, headers=BEARER)
        assert response.status == 200, (expression, response.status)
        body = await response.json()
        if expression in HOSTILE_BAD_INPUT:
            assert body["error"]["code"] in (-32602, -32700), (expression, body)
            outcomes.append("rpc_error")
        else:
            assert body["result"]["isError"] is True, (expression, body)
            outcomes.append("tool_error")


async def attack_agent(client: TestClient, outcomes: list[str]) -> None:
    response = await client.post(
        "/v1/agent/run", json={"agent": "hostile", "input": "compute these"}, headers=BEARER
    )
    assert response.status == 200
    summary = await response.json()
    assert (summary["ok"], summary["stop_reason"]) == (True, "final_answer"), summary
    calls = summary["tool_calls"]
    assert len(calls) == len(HOSTILE), summary
    for call in calls:
        assert call["name"] == "calculator" and call["ok"] is False, call
        outcomes.append("agent_tool_error")


def run_delay_s() -> float:
    """How long this thread has waited for a CPU (Linux schedstat): the machine's load."""
    try:
        with open("/proc/thread-self/schedstat") as stats:
            return int(stats.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0  # no schedstat: every wait counts against the gateway (stricter)


@dataclass
class Probes:
    wall_s: list[float] = field(default_factory=list)
    held_s: list[float] = field(default_factory=list)


async def probe_healthz(client: TestClient, done: asyncio.Event, minimum: int) -> Probes:
    """Probe until the attack is over and at least ``minimum`` probes were taken.

    Each probe records its wall time and how much of it the event loop's thread was held
    by the process itself: the wall time less the time the kernel kept the thread waiting
    for a CPU. A loaded CI box stretches the first; only work (or a blocking call) on the
    loop stretches the second.
    """
    loop = asyncio.get_running_loop()
    probes = Probes()
    while not done.is_set() or len(probes.wall_s) < minimum:
        started, delay = loop.time(), run_delay_s()
        response = await client.get("/healthz")
        await response.read()
        wall = loop.time() - started
        probes.wall_s.append(wall)
        probes.held_s.append(wall - (run_delay_s() - delay))
        assert response.status == 200
        await asyncio.sleep(0.005)  # pacing, not waiting: leave the loop to the attack
    return probes


@pytest.mark.timeout(120, method="thread")
async def test_hostile_tool_calls_never_block_healthz(hostile_gateway: Gateway) -> None:
    client, _, _ = hostile_gateway
    done = asyncio.Event()
    prober = asyncio.create_task(probe_healthz(client, done, minimum=100))
    outcomes: list[str] = []
    # This process also holds every earlier test's heap, which the real sidecar does not
    # (``gateway serve`` freezes its start-up heap): one full collection walking it took
    # 150 ms, measured on the loop. Park it, as serve does, so only the attack is measured.
    gc.collect()
    gc.freeze()
    clock = time.perf_counter()
    try:
        for _ in range(2):
            await asyncio.gather(
                attack_tools(client, outcomes),
                attack_mcp(client, outcomes),
                attack_agent(client, outcomes),
                attack_tools(client, outcomes),
            )
    finally:
        done.set()
        probes = await prober
        gc.unfreeze()
    attack_s = time.perf_counter() - clock

    # Every hostile call was answered as bad input or a failed computation, never a 500.
    assert len(outcomes) == 2 * 4 * len(HOSTILE), len(outcomes)
    assert outcomes.count("400") == 2 * 2 * len(HOSTILE_BAD_INPUT)
    assert outcomes.count("rpc_error") == 2 * len(HOSTILE_BAD_INPUT)
    wall, held = probes.wall_s, probes.held_s
    summary = (
        f"{len(wall)} probes during {len(outcomes)} hostile calls in {attack_s:.2f} s: "
        f"wall p50 {statistics.median(wall) * 1000:.1f} ms, max {max(wall) * 1000:.1f} ms; "
        f"held by the gateway: max {max(held) * 1000:.1f} ms"
    )
    print(summary)
    # Every probe answered within the 100 ms, not counting the time the kernel
    # gave the CPU to other processes (load-independent)...
    assert max(held) < HEALTHZ_BOUND_S, summary
    # ...and in wall time too, allowing a loaded 2-core box to stretch a few outliers.
    assert statistics.median(wall) < HEALTHZ_BOUND_S / 10, summary
    assert sorted(wall)[int(len(wall) * 0.95)] < HEALTHZ_BOUND_S, summary
    assert max(wall) < LOADED_BOX_ALLOWANCE * HEALTHZ_BOUND_S, summary


async def test_bad_argument_shapes_are_400_or_rpc_errors(hostile_gateway: Gateway) -> None:
    client, _, _ = hostile_gateway
    shapes: list[Any] = [None, [], "1+1", 5, {"expression": 5}, {"expression": None}, {}]
    statuses = []
    for arguments in shapes:
        response = await client.post(
            "/v1/tools/calculator", json={"arguments": arguments}, headers=BEARER
        )
        body = await response.json()
        statuses.append(response.status)
        assert body["error"]["code"] == "invalid_arguments", body
        assert body["error"]["param"] == "arguments", body
        message = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "calculator", "arguments": arguments},
        }
        rpc = await (await client.post("/mcp", json=message, headers=BEARER)).json()
        assert rpc["error"]["code"] == -32602, rpc
    assert statuses == [400] * len(shapes)


# -- an agent's time budget includes its tools ----------------------------------------------


async def test_max_seconds_cuts_off_a_slow_tool(hostile_gateway: Gateway) -> None:
    client, _, received = hostile_gateway
    durations = []
    for _ in range(2):  # the second run proves the first freed the tool's only slot
        clock = time.perf_counter()
        response = await client.post(
            "/v1/agent/run", json={"agent": "patient", "input": "wait"}, headers=BEARER
        )
        durations.append(time.perf_counter() - clock)
        assert response.status == 200
        summary = await response.json()
        assert (summary["ok"], summary["stop_reason"]) == (False, "time_budget"), summary
        assert "tool 'slow'" in summary["error"], summary
        record = await (
            await client.get(f"/v1/agent/replay/{summary['run_id']}", headers=BEARER)
        ).json()
        cut_off = record["cut_off"]
        assert (cut_off["during"], cut_off["name"], cut_off["turn"]) == ("tool", "slow", 0)
        assert BUDGET_S <= cut_off["after_s"] < BUDGET_S + BUDGET_MARGIN_S, cut_off
        # Nothing of the cut-off call in the events: only the model's turn that asked for it.
        assert [event["type"] for event in record["events"]] == ["model"]
        replay = await (
            await client.post(f"/v1/agent/replay/{summary['run_id']}", headers=BEARER)
        ).json()
        assert replay["deterministic"] is True, replay
    assert received == ["patient agent", "patient agent"]
    assert max(durations) < BUDGET_S + BUDGET_MARGIN_S, durations


# -- the lag gauge ----------------------------------------------------------------------------


async def lag_samples(client: TestClient) -> dict[str, float]:
    response = await client.get("/metrics", headers=BEARER)
    assert response.status == 200
    samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            if sample.name.startswith("gateway_event_loop_lag"):
                samples[sample.name] = sample.value
    return samples


async def test_the_lag_gauge_shows_a_stalled_loop(hostile_gateway: Gateway) -> None:
    client, _, _ = hostile_gateway
    before = await lag_samples(client)
    assert set(before) == {"gateway_event_loop_lag_seconds", "gateway_event_loop_lag_max_seconds"}
    assert 0 <= before["gateway_event_loop_lag_seconds"] < 1, before

    time.sleep(0.4)  # the fault: block the (shared) event loop on purpose for 0.4 s
    observed: dict[str, float] = {}

    async def stall_seen() -> bool:
        observed.update(await lag_samples(client))
        return observed["gateway_event_loop_lag_max_seconds"] >= 0.3

    deadline = asyncio.get_running_loop().time() + 10
    while not await stall_seen():
        assert asyncio.get_running_loop().time() < deadline, observed
        await asyncio.sleep(0.05)
    assert observed["gateway_event_loop_lag_max_seconds"] < 5, observed


async def test_the_suite_runs_on_the_loop_gateway_serve_runs_on() -> None:
    """uvloop's (``cli.new_serving_loop``): a suite that fell back to asyncio's loop
    would not test the loop the gateway runs on."""
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
