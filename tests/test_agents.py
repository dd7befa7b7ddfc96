"""Agent runs through the gateway: the loop, its budgets, transcripts and replay.

Every gateway comes from the app factory with its agents file written to ``tmp_path``
(``AGENT_SPECS_PATH``) and its tools declared in the YAML as shipped in ``gateway.yaml``.
The model is the fake OpenAI server (``sidecar.mock_backends``) or a small scripted model,
and music is the fake HeartMuLa shim: all real aiohttp servers on loopback.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import ipaddress
import json
import re
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import rfc8785
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.app import create_app
from sidecar.config.loader import load_config
from sidecar.errors import ConfigError
from sidecar.mock_backends import create_mock_app
from sidecar.mock_backends.heartmula import HEARTMULA_RECEIVED, create_heartmula_app
from sidecar.mock_backends.openai_server import RECEIVED
from sidecar.settings import BackendTlsDefaults, ToolsSettings

from .conftest import TOKEN, backend_yaml, free_port, gateway_yaml, make_settings

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_TOOLS: dict[str, Any] = yaml.safe_load((ROOT / "gateway.yaml").read_text())["tools"]
SHIPPED_AGENTS: dict[str, Any] = json.loads((ROOT / "agent_specs.example.json").read_text())[
    "agents"
]
BEARER = {"Authorization": f"Bearer {TOKEN}"}
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
AUDIO_ROUTE = "/ui/heartmula/audio/"
RUN_ID = re.compile(r"^run-[0-9a-f]{24}$")
REPLAY_ID = re.compile(r"^tool-[0-9a-f]{24}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
MUSIC_INPUT = 'Please use heartmula_generate {"prompt": "calm piano", "duration": 2}'
SCRIPTED_RECEIVED = web.AppKey("scripted_received", list[dict[str, Any]])


def jcs_hash(value: Any) -> str:
    """SHA-256 of the RFC 8785 canonical JSON, computed here independently of the gateway."""
    return hashlib.sha256(rfc8785.dumps(value)).hexdigest()


def agent(**fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": "default",
        "system_prompt": "You are a test agent.",
        "tools": ["noop"],
        "max_turns": 3,
        "max_seconds": 60,
        "max_tool_output_chars": 20000,
        "temperature": 0,
        "seed": 7,
    }
    spec.update(fields)
    return spec


def tools_yaml(*names: str) -> str:
    """A ``tools:`` section with the shipped declarations of ``names``."""
    lines = [f"  {name}: {json.dumps(SHIPPED_TOOLS[name])}" for name in names]
    return "tools:\n" + "\n".join(lines) + "\n"


def openai_tool(name: str) -> dict[str, Any]:
    spec = SHIPPED_TOOLS[name]
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": spec["description"],
            "parameters": spec["parameters"],
        },
    }


# -- a scripted model: answers what the test says, records what it was asked ----------------

Script = Callable[[dict[str, Any], int], Awaitable[dict[str, Any]]]


def scripted_model_app(script: Script) -> web.Application:
    """An OpenAI-style chat server whose every answer message comes from ``script``."""
    app = web.Application()
    app[SCRIPTED_RECEIVED] = []

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        received = request.app[SCRIPTED_RECEIVED]
        received.append(body)
        message = await script(body, len(received) - 1)
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        return web.json_response(
            {
                "id": f"chatcmpl-scripted{len(received)}",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model"),
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    async def models(request: web.Request) -> web.Response:
        data = [{"id": "mock-llama", "object": "model", "created": 0, "owned_by": "test"}]
        return web.json_response({"object": "list", "data": data})

    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app


def tool_call_message(name: str, arguments: dict[str, Any], number: int) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": f"call_{number}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
        ],
    }


def always_calls(name: str, arguments: dict[str, Any]) -> Script:
    async def script(body: dict[str, Any], number: int) -> dict[str, Any]:
        return tool_call_message(name, arguments, number)

    return script


# -- the gateway under test -------------------------------------------------------------------


@dataclass(frozen=True)
class AgentEnv:
    gateway: TestClient
    model: TestServer | None
    music: TestServer
    audio_dir: Path
    data_dir: Path

    def model_received(self) -> list[dict[str, Any]]:
        """Every chat request body the model server got, in order."""
        assert self.model is not None
        app = self.model.app
        if SCRIPTED_RECEIVED in app:
            return list(app[SCRIPTED_RECEIVED])
        return [r.body for r in app[RECEIVED] if r.path == "/v1/chat/completions"]

    def music_received(self) -> list[dict[str, Any]]:
        return list(self.music.app[HEARTMULA_RECEIVED])

    def tool_records(self) -> list[dict[str, Any]]:
        """The tool bus's NDJSON log, line by line."""
        path = self.data_dir / "tools" / "invocations.ndjson"
        return [json.loads(line) for line in path.read_text().splitlines()]

    async def run(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        response = await self.gateway.post("/v1/agent/run", json=payload, headers=BEARER)
        return response.status, await response.json()

    async def transcript(self, run_id: str) -> dict[str, Any]:
        response = await self.gateway.get(f"/v1/agent/replay/{run_id}", headers=BEARER)
        assert response.status == 200
        return dict(await response.json())

    async def replay(self, run_id: str) -> dict[str, Any]:
        response = await self.gateway.post(f"/v1/agent/replay/{run_id}", headers=BEARER)
        assert response.status == 200
        return dict(await response.json())


AgentGateway = Callable[..., Awaitable[AgentEnv]]


@pytest.fixture(name="agent_gateway")
async def agent_gateway_fixture(
    make_gateway: Callable[..., Awaitable[TestClient]],
    start_mock: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
) -> AgentGateway:
    """A gateway with a model (alias ``default``), a HeartMuLa shim, tools and agents."""

    async def make(
        agents: dict[str, Any],
        *,
        model_app: web.Application | None = None,
        model_url: str | None = None,
        **overrides: Any,
    ) -> AgentEnv:
        model = None
        if model_url is None:
            model = await start_mock(model_app or create_mock_app())
            model_url = str(model.make_url("/v1"))
        audio_dir = tmp_path / "heartmula" / "audio"
        music = await start_mock(create_heartmula_app(audio_dir))
        config = gateway_yaml(
            backend_yaml(
                "mock",
                model_url,
                **{"class": "mock", "models": "[{id: mock-llama, capabilities: [chat]}]"},
            ),
            backend_yaml(
                "music",
                f"http://{music.host}:{music.port}",
                protocol="heartmula",
                **{"class": "gpu_heavy"},
            ),
            aliases="default: {backend: mock, model: mock-llama}",
        ) + tools_yaml("noop", "calculator", "heartmula_generate")
        agents_path = tmp_path / "agents.json"
        agents_path.write_text(json.dumps({"agents": agents}))
        overrides.setdefault("tools", ToolsSettings(agent_specs_path=agents_path))
        gateway = await make_gateway(config, **overrides)
        return AgentEnv(gateway, model, music, audio_dir, tmp_path / "var")

    return make


# -- the music agent, end to end --------------------------------------------------------------


async def test_music_agent_calls_heartmula_and_its_run_replays(
    agent_gateway: AgentGateway,
) -> None:
    env = await agent_gateway({"music": SHIPPED_AGENTS["music"]}, ui_ip_allowlist=LOOPBACK)
    status, summary = await env.run({"agent": "music", "input": MUSIC_INPUT})
    assert status == 200, summary
    assert (summary["ok"], summary["stop_reason"], summary["agent"]) == (
        True,
        "final_answer",
        "music",
    ), summary
    assert summary["turns"] == 2 and summary["error"] is None
    [call] = summary["tool_calls"]
    assert (call["name"], call["ok"], call["type"]) == ("heartmula_generate", True, "tool")
    assert REPLAY_ID.match(call["replay_id"]), call
    run_id = summary["run_id"]
    assert RUN_ID.match(run_id), run_id

    # What the model and the shim were sent.
    arguments = {"prompt": "calm piano", "duration": 2}
    assert env.music_received() == [arguments]
    first, second = env.model_received()
    assert first["tools"] == [openai_tool("heartmula_generate")]
    assert (first["temperature"], first["seed"]) == (0, 0)
    assert first["messages"] == [
        {"role": "system", "content": SHIPPED_AGENTS["music"]["system_prompt"]},
        {"role": "user", "content": MUSIC_INPUT},
    ]

    # The transcript: each model request's hash and full reply, the tool call's record.
    record = await env.transcript(run_id)
    assert record["run_id"] == run_id and record["stop_reason"] == "final_answer"
    assert [event["type"] for event in record["events"]] == ["model", "tool", "model"]
    model_1, tool, model_2 = record["events"]
    assert model_1["request_hash"] == jcs_hash({**first, "model": "default"})
    assert model_2["request_hash"] == jcs_hash({**second, "model": "default"})
    assert (
        HEX64.match(model_1["request_hash"]) and model_1["request_hash"] != model_2["request_hash"]
    )
    requested = model_1["response"]["choices"][0]["message"]["tool_calls"][0]
    assert requested["function"]["name"] == "heartmula_generate"
    assert json.loads(requested["function"]["arguments"]) == arguments
    assert model_1["response"]["id"].startswith("chatcmpl-") and "usage" in model_1["response"]
    assert tool["name"] == "heartmula_generate" and tool["arguments"] == arguments
    assert tool["ok"] is True and tool["replay_id"] == call["replay_id"]
    assert tool["request_hash"] == jcs_hash(
        {"tool": "heartmula_generate", "version": "1", "arguments": arguments}
    )
    result = tool["result"]
    audio_path = result["audio_path"]
    assert audio_path.startswith(AUDIO_ROUTE) and result["duration"] == 2
    assert "127.0.0.1" not in json.dumps(record["events"][1:])
    # The model heard the tool's result, and answered with it.
    assert second["messages"][-1] == {
        "role": "tool",
        "tool_call_id": requested["id"],
        "content": json.dumps(result, ensure_ascii=False),
    }
    final = model_2["response"]["choices"][0]["message"]["content"]
    assert audio_path in final and summary["output"] == final == record["output"]

    # Stored atomically as run-<24 hex>.json under the data dir.
    runs = env.data_dir / "agent_runs"
    assert sorted(p.name for p in runs.iterdir()) == [f"{run_id}.json"]
    assert json.loads((runs / f"{run_id}.json").read_text()) == record

    # Replay drives the loop from the recording: deterministic, and nothing is called.
    assert await env.replay(run_id) == {"run_id": run_id, "deterministic": True, "events": 3}
    assert len(env.model_received()) == 2 and len(env.music_received()) == 1

    # The audio path serves the song the shim wrote, as a valid WAV.
    response = await env.gateway.get(audio_path)
    assert response.status == 200
    assert response.headers["Content-Type"] == "audio/wav"
    data = await response.read()
    assert data == (env.audio_dir / audio_path.removeprefix(AUDIO_ROUTE)).read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth()) == (1, 2)
        assert reader.getnframes() == 2 * reader.getframerate()

    # The tool call is on the bus's record too.
    response = await env.gateway.get(f"/v1/tools/replay/{call['replay_id']}", headers=BEARER)
    assert response.status == 200
    tool_record = await response.json()
    assert tool_record["tool"] == "heartmula_generate" and tool_record["ok"] is True
    assert tool_record["arguments"] == arguments and tool_record["result"] == result
    assert tool_record["request_hash"] == tool["request_hash"]
    assert tool_record["token"] == "default"


def tampered(record: dict[str, Any], how: str) -> None:
    if how == "model_request_hash":
        record["events"][0]["request_hash"] = "0" * 64
    elif how == "tool_argument":
        record["events"][1]["arguments"]["prompt"] = "loud drums"
    else:  # the recorded final answer
        record["output"] = "something the model never said"


@pytest.mark.parametrize(
    ("how", "event_index"),
    [("model_request_hash", 0), ("tool_argument", 1), ("output", 3)],
)
async def test_a_tampered_transcript_does_not_replay(
    agent_gateway: AgentGateway, how: str, event_index: int
) -> None:
    env = await agent_gateway({"music": SHIPPED_AGENTS["music"]})
    status, summary = await env.run({"agent": "music", "input": MUSIC_INPUT})
    assert status == 200 and summary["ok"], summary
    run_id = summary["run_id"]
    assert (await env.replay(run_id))["deterministic"] is True

    path = env.data_dir / "agent_runs" / f"{run_id}.json"
    record = json.loads(path.read_text())
    tampered(record, how)
    path.write_text(json.dumps(record))

    outcome = await env.replay(run_id)
    assert outcome["run_id"] == run_id
    assert outcome["deterministic"] is False, outcome
    assert outcome["first_difference"]["event_index"] == event_index, outcome
    assert len(env.model_received()) == 2 and len(env.music_received()) == 1


# -- budgets stop a looping agent -------------------------------------------------------------


async def test_max_turns_stops_an_agent_that_always_calls_a_tool(
    agent_gateway: AgentGateway,
) -> None:
    model_app = scripted_model_app(always_calls("noop", {"again": True}))
    env = await agent_gateway({"looper": agent(max_turns=3)}, model_app=model_app)
    status, summary = await env.run({"agent": "looper", "input": "loop forever"})
    assert status == 200, summary
    assert (summary["ok"], summary["stop_reason"], summary["turns"]) == (False, "max_turns", 3)
    assert summary["output"] is None

    record = await env.transcript(summary["run_id"])
    kinds = [event["type"] for event in record["events"]]
    assert kinds == ["model", "tool"] * 3
    assert all(e["ok"] and e["result"] == {"echo": {"again": True}} for e in record["events"][1::2])
    assert len(env.model_received()) == 3
    phases = [record["phase"] for record in env.tool_records()]
    assert phases == ["started", "finished"] * 3
    assert (await env.replay(summary["run_id"]))["deterministic"] is True


async def test_tool_output_budget_stops_an_agent(agent_gateway: AgentGateway) -> None:
    # Each noop result is 52 characters as JSON; the budget is 100.
    model_app = scripted_model_app(always_calls("noop", {"text": "x" * 30}))
    env = await agent_gateway(
        {"looper": agent(max_turns=10, max_tool_output_chars=100)}, model_app=model_app
    )
    status, summary = await env.run({"agent": "looper", "input": "loop forever"})
    assert status == 200, summary
    assert (summary["ok"], summary["stop_reason"]) == (False, "tool_output_budget"), summary
    assert summary["turns"] == 2

    events = (await env.transcript(summary["run_id"]))["events"]
    assert [event["type"] for event in events] == ["model", "tool", "model", "tool"]
    assert "truncated" not in events[1] and events[3]["truncated"] is True
    # The model only ever saw what fitted in the budget.
    shown = [m["content"] for body in env.model_received() for m in body["messages"][-1:]]
    assert sum(len(c) for c in shown if c and c.startswith('{"echo"')) <= 100
    assert len(env.model_received()) == 2


async def test_time_budget_stops_an_agent_waiting_on_a_slow_model(
    agent_gateway: AgentGateway,
) -> None:
    gate = asyncio.Event()

    async def slow(body: dict[str, Any], number: int) -> dict[str, Any]:
        async with asyncio.timeout(30):
            await gate.wait()
        return {"role": "assistant", "content": "too late"}

    env = await agent_gateway(
        {"slowpoke": agent(max_seconds=0.5)}, model_app=scripted_model_app(slow)
    )
    try:
        status, summary = await env.run({"agent": "slowpoke", "input": "take your time"})
    finally:
        gate.set()
    assert status == 200, summary
    assert (summary["ok"], summary["stop_reason"]) == (False, "time_budget"), summary
    assert summary["output"] is None and summary["turns"] == 0
    assert len(env.model_received()) == 1
    record = await env.transcript(summary["run_id"])
    assert record["stop_reason"] == "time_budget" and record["events"] == []


# -- the tool allowlist -----------------------------------------------------------------------


async def test_a_tool_outside_the_agents_allowlist_is_refused_and_the_model_told(
    agent_gateway: AgentGateway,
) -> None:
    async def wants_calculator(body: dict[str, Any], number: int) -> dict[str, Any]:
        if body["messages"][-1]["role"] == "tool":
            return {"role": "assistant", "content": "I will do without."}
        return tool_call_message("calculator", {"expression": "6 * 7"}, number)

    env = await agent_gateway(
        {"narrow": agent(tools=["noop"])}, model_app=scripted_model_app(wants_calculator)
    )
    status, summary = await env.run({"agent": "narrow", "input": "what is 6 * 7?"})
    assert status == 200, summary
    assert (summary["ok"], summary["stop_reason"]) == (True, "final_answer"), summary
    assert summary["output"] == "I will do without."
    [refused] = summary["tool_calls"]
    assert (refused["type"], refused["name"], refused["replay_id"]) == (
        "tool_refused",
        "calculator",
        None,
    )

    record = await env.transcript(summary["run_id"])
    assert [event["type"] for event in record["events"]] == ["model", "tool_refused", "model"]
    first, second = env.model_received()
    assert first["tools"] == [openai_tool("noop")]  # only the allowed tool is offered
    told = second["messages"][-1]
    assert told["role"] == "tool" and told["tool_call_id"] == "call_0"
    assert "calculator" in told["content"] and "not available" in told["content"]
    # The bus never ran it: no call was recorded.
    assert env.tool_records() == []
    assert list((env.data_dir / "tools" / "invocations").iterdir()) == []
    assert (await env.replay(summary["run_id"]))["deterministic"] is True


# -- errors -----------------------------------------------------------------------------------


async def test_unknown_agent_is_404(agent_gateway: AgentGateway) -> None:
    env = await agent_gateway({"music": SHIPPED_AGENTS["music"]})
    status, body = await env.run({"agent": "nobody", "input": "hello"})
    assert status == 404, body
    assert body["error"]["code"] == "agent_not_found"
    assert "music" in body["error"]["message"]
    assert env.model_received() == []

    response = await env.gateway.get("/v1/agent/replay/run-" + "0" * 24, headers=BEARER)
    assert response.status == 404
    response = await env.gateway.post("/v1/agent/replay/../../etc/passwd", headers=BEARER)
    assert response.status == 404


@pytest.mark.parametrize(
    "payload",
    [
        {"agent": "music"},
        {"agent": "music", "input": "hi", "messages": [{"role": "user", "content": "hi"}]},
        {"agent": "music", "input": "   "},
        {"agent": "music", "input": 42},
        {"agent": "music", "messages": []},
        {"agent": "music", "messages": "hi"},
        {"agent": "music", "messages": [{"content": "no role"}]},
    ],
)
async def test_bad_input_is_400(agent_gateway: AgentGateway, payload: dict[str, Any]) -> None:
    env = await agent_gateway({"music": SHIPPED_AGENTS["music"]})
    status, body = await env.run(payload)
    assert status == 400, body
    assert body["error"]["type"] == "invalid_request_error"
    assert env.model_received() == []
    assert not (env.data_dir / "agent_runs").exists() or not any(
        (env.data_dir / "agent_runs").iterdir()
    )


async def test_a_model_backend_that_is_down_fails_the_run_not_the_request(
    agent_gateway: AgentGateway,
) -> None:
    port = free_port()
    env = await agent_gateway(
        {"music": SHIPPED_AGENTS["music"]}, model_url=f"http://127.0.0.1:{port}/v1"
    )
    status, summary = await env.run({"agent": "music", "input": MUSIC_INPUT})
    assert status == 200, summary
    assert (summary["ok"], summary["stop_reason"]) == (False, "model_error"), summary
    assert summary["error"] and str(port) not in summary["error"]
    assert summary["turns"] == 0 and summary["tool_calls"] == []
    record = await env.transcript(summary["run_id"])
    assert record["stop_reason"] == "model_error" and record["events"] == []
    assert env.music_received() == []


async def test_the_model_is_offered_the_agents_tools_with_its_temperature_and_seed(
    agent_gateway: AgentGateway,
) -> None:
    spec = agent(tools=["calculator", "noop"], temperature=0, seed=42)
    env = await agent_gateway({"mathy": spec})
    status, summary = await env.run(
        {"agent": "mathy", "input": 'Please use calculator {"expression": "(2 + 3) * 4"}'}
    )
    assert status == 200 and summary["ok"], summary
    first, second = env.model_received()
    for body in (first, second):
        assert body["model"] == "mock-llama"
        assert body["tools"] == [openai_tool("calculator"), openai_tool("noop")]
        assert body["temperature"] == 0 and body["seed"] == 42
        assert body["messages"][0] == {"role": "system", "content": spec["system_prompt"]}
    assert "20" in second["messages"][-1]["content"]
    [call] = summary["tool_calls"]
    assert (call["name"], call["ok"]) == ("calculator", True)


async def test_messages_input_appends_the_callers_system_prompt_to_the_agents(
    agent_gateway: AgentGateway,
) -> None:
    env = await agent_gateway({"chatty": agent(tools=[])})
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"},
    ]
    status, summary = await env.run({"agent": "chatty", "messages": messages})
    assert status == 200, summary
    assert (summary["ok"], summary["output"]) == (True, "Mock reply to: hello there")
    [body] = env.model_received()
    assert body["messages"] == [
        {"role": "system", "content": "You are a test agent.\n\nBe brief."},
        {"role": "user", "content": "hello there"},
    ]
    assert "tools" not in body


async def test_a_music_backend_that_is_down_is_a_failed_tool_call_the_model_hears(
    agent_gateway: AgentGateway,
) -> None:
    env = await agent_gateway({"music": SHIPPED_AGENTS["music"]})
    await env.music.close()
    status, summary = await env.run({"agent": "music", "input": MUSIC_INPUT})
    assert status == 200, summary
    assert (summary["ok"], summary["stop_reason"]) == (True, "final_answer"), summary
    [call] = summary["tool_calls"]
    assert (call["name"], call["ok"]) == ("heartmula_generate", False)
    assert REPLAY_ID.match(call["replay_id"])  # a failed call is recorded too

    record = await env.transcript(summary["run_id"])
    tool = record["events"][1]
    # Refused by readiness once a probe has seen it down, or failing to connect before.
    assert tool["ok"] is False
    assert tool["error"]["type"] in ("backend_not_ready", "upstream_unavailable"), tool
    told = json.loads(env.model_received()[1]["messages"][-1]["content"])
    assert told == {"error": tool["error"]}
    assert str(env.music.port) not in json.dumps(record)
    assert (await env.replay(summary["run_id"]))["deterministic"] is True


async def test_a_run_whose_model_sent_arguments_that_are_not_json_replays(
    agent_gateway: AgentGateway,
) -> None:
    async def sloppy(body: dict[str, Any], number: int) -> dict[str, Any]:
        if body["messages"][-1]["role"] == "tool":
            return {"role": "assistant", "content": "sorry"}
        message = tool_call_message("noop", {}, number)
        message["tool_calls"][0]["function"]["arguments"] = '{"half": '
        return message

    env = await agent_gateway({"sloppy": agent()}, model_app=scripted_model_app(sloppy))
    status, summary = await env.run({"agent": "sloppy", "input": "call noop badly"})
    assert status == 200, summary
    assert (summary["ok"], summary["stop_reason"], summary["turns"]) == (True, "final_answer", 2)
    [call] = summary["tool_calls"]
    assert (call["name"], call["ok"], call["replay_id"]) == ("noop", False, None)
    told = env.model_received()[1]["messages"][-1]
    assert told["role"] == "tool" and "not valid JSON" in told["content"]
    assert env.tool_records() == []

    # The recording holds everything the loop needs to run again the same way.
    outcome = await env.replay(summary["run_id"])
    assert outcome["deterministic"] is True, outcome


@pytest.mark.parametrize(
    "message",
    [
        {"role": "assistant", "content": None, "tool_calls": ["not a call"]},
        {"role": "assistant", "content": None, "tool_calls": {"id": "x"}},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "x", "function": "noop"}]},
        "not a message",
    ],
    ids=["call-is-a-string", "calls-is-an-object", "function-is-a-string", "message-is-a-string"],
)
async def test_a_malformed_model_reply_fails_the_run_not_the_request(
    agent_gateway: AgentGateway, message: Any
) -> None:
    async def broken(body: dict[str, Any], number: int) -> Any:
        return message

    env = await agent_gateway({"looper": agent()}, model_app=scripted_model_app(broken))
    status, summary = await env.run({"agent": "looper", "input": "hello"})
    assert status == 200, summary
    assert summary["ok"] is False, summary
    # Whatever stopped it (a model error, or the turns spent on refused calls), it was not
    # a final answer, and the transcript says so.
    assert summary["stop_reason"] != "final_answer" and summary["output"] is None, summary
    assert env.tool_records() == []
    record = await env.transcript(summary["run_id"])
    assert (record["ok"], record["stop_reason"]) == (False, summary["stop_reason"])


# -- config -----------------------------------------------------------------------------------


def test_an_agent_naming_an_unconfigured_tool_is_refused_at_load(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        gateway_yaml(
            backend_yaml("mock", "http://127.0.0.1:9/v1", **{"class": "mock"}),
            aliases="default: {backend: mock, model: mock-llama}",
        )
        + tools_yaml("noop", "heartmula_generate")
    )
    agents = tmp_path / "agents.json"
    bad = {"model": "default", "tools": ["heartmula_generate", "sing", "noop"]}
    agents.write_text(json.dumps({"agents": {"good": agent(), "music": bad}}))

    with pytest.raises(ConfigError) as caught:
        load_config(config, {}, BackendTlsDefaults(), agents_path=agents)
    paths = [issue.path for issue in caught.value.issues]
    assert paths == ["agents.music.tools[1]"], caught.value.render()
    assert "sing" in caught.value.issues[0].message
    assert "agents.music.tools[1]" in str(caught.value)

    # The same agents with every tool configured load.
    agents.write_text(
        json.dumps({"agents": {"good": agent(), "music": {**bad, "tools": ["noop"]}}})
    )
    loaded = load_config(config, {}, BackendTlsDefaults(), agents_path=agents)
    assert sorted(loaded.agents) == ["good", "music"]
    assert loaded.agents["music"].tools == ("noop",)


async def test_a_gateway_with_such_an_agents_file_does_not_start(tmp_path: Path) -> None:
    agents = tmp_path / "agents.json"
    agents.write_text(json.dumps({"agents": {"music": {"model": "default", "tools": ["sing"]}}}))
    config = tmp_path / "gateway.yaml"
    config.write_text(
        gateway_yaml(backend_yaml("mock", "http://127.0.0.1:9/v1", **{"class": "mock"}))
        + tools_yaml("noop")
    )
    settings = make_settings(config, tmp_path / "var", tools=ToolsSettings(agent_specs_path=agents))
    runner = web.AppRunner(create_app(settings))
    try:
        with pytest.raises(ConfigError, match=r"agents\.music\.tools\[0\]"):
            await runner.setup()
    finally:
        await runner.cleanup()
