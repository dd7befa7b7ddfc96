"""Running and replaying agents for the API: specs from the config, live drivers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ..config.schema import AgentSpec
from ..errors import GatewayError, InvalidRequest, NotFound, ReplayDiverged
from ..routing.registry import RegistryHolder
from ..routing.router import complete, resolve
from ..toolbus.bus import ToolBus
from ..toolbus.hashing import new_id
from .runtime import (
    ModelCall,
    ToolRun,
    initial_messages,
    openai_tools,
    recorded_driver,
    run_loop,
    transcript,
)
from .transcripts import RunStore


class AgentRunner:
    def __init__(
        self,
        registry: RegistryHolder,
        bus: ToolBus,
        runs: RunStore,
        observer: Callable[[str, str], None] | None = None,
    ) -> None:
        self._observer = observer
        self._registry = registry
        self._bus = bus
        self._runs = runs

    def spec(self, name: Any) -> AgentSpec:
        agents = self._registry.current.config.agents
        spec = agents.get(name) if isinstance(name, str) else None
        if spec is None:
            known = ", ".join(sorted(agents)) or "none configured (AGENT_SPECS_PATH)"
            raise NotFound(f"No agent named {name!r}; known: {known}", code="agent_not_found")
        return spec

    async def run(
        self, payload: dict[str, Any], token: str | None, request_id: str
    ) -> dict[str, Any]:
        spec = self.spec(payload.get("agent"))
        _check_input(payload)
        messages = initial_messages(spec, payload)
        run_id = new_id("run")
        tools = openai_tools(
            [self._bus.spec(name, token) for name in spec.tools if self._visible(name, token)]
        )
        started, clock = time.time(), time.perf_counter()
        result = await run_loop(
            spec,
            tools,
            [dict(m) for m in messages],
            self._model(request_id),
            self._tools(token, request_id),
        )
        record = transcript(
            run_id, spec, messages, result, started, (time.perf_counter() - clock) * 1000
        )
        record["tools"] = tools
        record["token"] = token  # who may read and replay it
        await asyncio.to_thread(self._runs.save, record)
        if self._observer is not None:
            self._observer(spec.name, result.stop_reason)
        return _summary(record)

    async def recorded(self, run_id: str, *, token: str | None, admin: bool) -> dict[str, Any]:
        """A transcript, for the token name that started the run or an admin; else 404."""
        record = await asyncio.to_thread(self._runs.get, run_id)
        if record is None or not (admin or (token is not None and record.get("token") == token)):
            raise NotFound(f"No agent run '{run_id}'", code="run_not_found")
        return record

    async def replay(self, run_id: str, *, token: str | None, admin: bool) -> dict[str, Any]:
        """Re-run the loop on the recorded answers; deterministic when every request matches."""
        record = await self.recorded(run_id, token=token, admin=admin)
        spec = AgentSpec(**{**record["spec"], "tools": tuple(record["spec"]["tools"])})
        model, run_tool = recorded_driver(record)
        try:
            result = await run_loop(
                spec, record.get("tools", []), [dict(m) for m in record["input"]], model, run_tool
            )
        except ReplayDiverged as exc:
            ended_early = record["stop_reason"] in ("time_budget", "model_error")
            if ended_early and exc.detail.get("expected") == "end of the recording":
                return {"run_id": run_id, "deterministic": True, "events": len(record["events"])}
            return {
                "run_id": run_id,
                "deterministic": False,
                "first_difference": {"event_index": exc.event_index, **exc.detail},
            }
        same = (result.stop_reason, result.output) == (record["stop_reason"], record["output"])
        response: dict[str, Any] = {
            "run_id": run_id,
            "deterministic": same,
            "events": len(result.events),
        }
        if not same:
            response["first_difference"] = {
                "event_index": len(result.events),
                "recorded": {"stop_reason": record["stop_reason"], "output": record["output"]},
                "replayed": {"stop_reason": result.stop_reason, "output": result.output},
            }
        return response

    def _visible(self, name: str, token: str | None) -> bool:
        return any(spec.name == name for spec in self._bus.visible(token))

    def _model(self, request_id: str) -> ModelCall:
        async def call(body: dict[str, Any]) -> dict[str, Any]:
            route = resolve(self._registry.current, body["model"], "chat")
            reply = await complete(route, "chat/completions", body, request_id)
            if not isinstance(reply, dict):
                raise InvalidRequest("the model's reply is not a JSON object")
            return reply

        return call

    def _tools(self, token: str | None, request_id: str) -> ToolRun:
        async def run(name: str, arguments: Any) -> dict[str, Any]:
            try:
                call = await self._bus.invoke(name, arguments, token=token, request_id=request_id)
            except GatewayError as exc:  # refused by the bus: the model hears why
                return {"ok": False, "error": {"type": exc.code or "error", "message": exc.message}}
            return {
                key: value
                for key, value in call.response().items()
                if key in ("ok", "result", "error", "request_hash", "replay_id")
            }

        return run


def _check_input(payload: dict[str, Any]) -> None:
    has_input, has_messages = "input" in payload, "messages" in payload
    if has_input == has_messages:
        raise InvalidRequest("send exactly one of 'input' (text) or 'messages'", param="input")
    if has_input and (not isinstance(payload["input"], str) or not payload["input"].strip()):
        raise InvalidRequest("'input' must be a non-empty string", param="input")
    if has_messages:
        messages = payload["messages"]
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)
        ):
            raise InvalidRequest(
                "'messages' must be a non-empty array of messages", param="messages"
            )


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    tool_events = [e for e in record["events"] if e["type"].startswith("tool")]
    return {
        "run_id": record["run_id"],
        "agent": record["agent"],
        "ok": record["ok"],
        "stop_reason": record["stop_reason"],
        "output": record["output"],
        "error": record["error"],
        "turns": sum(1 for e in record["events"] if e["type"] == "model"),
        "tool_calls": [
            {k: e.get(k) for k in ("name", "ok", "replay_id", "request_hash", "type")}
            for e in tool_events
        ],
        "duration_ms": record["duration_ms"],
    }
