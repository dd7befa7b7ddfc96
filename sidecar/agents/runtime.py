"""The agent loop: ask the model, run the tools it asks for, repeat, within budgets.

The loop is written once and driven two ways: live (the model through the gateway's own
router, tools through the tool bus) and in replay (the recorded model answers and tool
results, with every regenerated model request hashed and compared to the recording).

Budgets: ``max_seconds`` is one wall-clock deadline over the whole loop, model calls,
tool admission and tool runs included. Whatever is running when it passes is cancelled
(a subprocess tool's process group is killed) and the run ends ``time_budget`` with
``cut_off`` in its transcript saying what was cut (the model at turn n, or which tool).

The agent's system prompt always comes first: a caller's system messages cannot replace
it; their text is appended to it (one system message, the agent's prompt, then theirs).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..config.schema import AgentSpec, ToolSpec
from ..errors import BadModelReply, GatewayError, InvalidRequest, ReplayDiverged
from ..toolbus.hashing import canonical_hash
from ..wire import strict_json
from ..wire.body import by_size

_NOT_RUN = ("tool_refused", "tool_rejected")
ModelCall = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
ToolRun = Callable[[str, Any], Awaitable[dict[str, Any]]]


@dataclass
class RunResult:
    ok: bool
    stop_reason: str
    output: str | None
    events: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    cut_off: dict[str, Any] | None = None


def openai_tools(specs: list[ToolSpec]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": spec.name,
                "description": spec.description,
                "parameters": dict(spec.parameters),
            },
        }
        for spec in specs
    ]


def initial_messages(spec: AgentSpec, payload: dict[str, Any]) -> list[dict[str, Any]]:
    messages = payload.get("messages")
    if messages is None:
        messages = [{"role": "user", "content": payload["input"]}]
    messages = [dict(message) for message in messages]
    if not spec.system_prompt:
        return messages
    callers = [_system_text(m) for m in messages if m.get("role") == "system"]
    system = "\n\n".join([spec.system_prompt, *(text for text in callers if text)])
    return [{"role": "system", "content": system}] + [
        m for m in messages if m.get("role") != "system"
    ]


def _system_text(message: dict[str, Any]) -> str:
    """A caller's system message as text (a string or a list of text parts)."""
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "\n".join(part["text"] for part in content)
    raise InvalidRequest("a system message's content must be text", param="messages")


async def run_loop(
    spec: AgentSpec,
    tools: list[dict[str, Any]],
    messages: list[dict[str, Any]],
    model: ModelCall,
    run_tool: ToolRun,
) -> RunResult:
    """The loop itself; ``model`` and ``run_tool`` decide whether it is live or replayed."""
    result = RunResult(ok=False, stop_reason="max_turns", output=None)
    output_budget = spec.max_tool_output_chars
    running: dict[str, Any] = {}  # what the deadline would cut off right now
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(spec.max_seconds):
            for turn in range(spec.max_turns):
                body = _model_request(spec, tools, messages)
                # Off the loop: RFC 8785 is pure Python and the messages can be megabytes.
                request_hash = await asyncio.to_thread(canonical_hash, body)
                running = {"during": "model", "turn": turn}
                answer = await model(body)
                reply = await asyncio.to_thread(_model_reply, answer)
                result.events.append(
                    {"type": "model", "turn": turn, "request_hash": request_hash, "response": reply}
                )
                message = _first_message(reply)
                messages.append(_assistant_message(message))
                calls = message.get("tool_calls") or []
                if not calls:
                    result.ok, result.stop_reason = True, "final_answer"
                    result.output = message.get("content")
                    return result
                for call in calls:
                    running = {"during": "tool", "turn": turn, **_call_names(call)}
                    content, event = await _tool_turn(spec, call, run_tool)
                    if len(content) > output_budget:
                        content = content[:output_budget]
                        event["truncated"] = True
                    output_budget -= len(content)
                    result.events.append(event)
                    messages.append(
                        {"role": "tool", "tool_call_id": call.get("id", ""), "content": content}
                    )
                    if output_budget <= 0:
                        result.stop_reason = "tool_output_budget"
                        return result
    except TimeoutError:
        result.stop_reason = "time_budget"
        result.cut_off = {**running, "after_s": round(loop.time() - started, 3)}
        what = f"tool {running.get('name')!r}" if running.get("during") == "tool" else "the model"
        result.error = f"the {spec.max_seconds:g} s budget ran out while waiting for {what}"
    except GatewayError as exc:
        result.stop_reason, result.error = "model_error", exc.message
    return result


def _model_request(
    spec: AgentSpec, tools: list[dict[str, Any]], messages: list[dict[str, Any]]
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": spec.model,
        "messages": [dict(m) for m in messages],
        "temperature": spec.temperature,
    }
    if spec.seed is not None:
        body["seed"] = spec.seed
    if tools:
        body["tools"] = tools
    return body


def _storable(value: Any) -> Any:
    """``value`` if the transcript can hold it as UTF-8 JSON; else ValueError.

    ``json.loads`` accepts lone surrogates (``"\\ud800"``) and ``NaN``; a transcript
    cannot be written with them, so a model that sends them is refused, not recorded.
    """
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, RecursionError):
        raise ValueError("not JSON") from None
    return value  # UnicodeEncodeError and NaN's ValueError are ValueErrors already


def _model_reply(reply: Any) -> Any:
    try:
        return _storable(reply)
    except ValueError:
        raise BadModelReply("the model sent text or numbers that are not valid JSON") from None


def _first_message(reply: dict[str, Any]) -> dict[str, Any]:
    try:
        message = reply["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise BadModelReply("the model's reply has no choices[0].message") from None
    if not isinstance(message, dict):
        raise BadModelReply("the model's message is not an object")
    calls = message.get("tool_calls")
    if calls is not None and (
        not isinstance(calls, list) or not all(isinstance(call, dict) for call in calls)
    ):
        raise BadModelReply("the model's tool_calls is not a list of objects")
    return message


def _call_names(call: Any) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return {"tool_call_id": call.get("id") if isinstance(call, dict) else None, "name": name}


def _assistant_message(message: dict[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        kept["tool_calls"] = message["tool_calls"]
    return kept


async def _tool_turn(spec: AgentSpec, call: Any, run_tool: ToolRun) -> tuple[str, dict[str, Any]]:
    """Run one requested tool call; the content for the model and the transcript event."""
    function = call.get("function") if isinstance(call, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    raw = function.get("arguments", "{}") if isinstance(function, dict) else "{}"
    event: dict[str, Any] = {"type": "tool", "tool_call_id": call.get("id"), "name": name}
    if name not in spec.tools:
        event.update(type="tool_refused", reason="not in this agent's tool allowlist")
        return json.dumps({"error": f"tool {name!r} is not available to this agent"}), event
    try:
        size = len(raw) if isinstance(raw, str) else 0
        arguments = await by_size(size, _parsed_arguments, raw)
    except ValueError:
        event.update(
            type="tool_rejected",
            ok=False,
            error={"type": "invalid_arguments", "message": "not JSON"},
        )
        return json.dumps({"error": "the arguments were not valid JSON"}), event
    event["arguments"] = arguments
    outcome = await run_tool(name, arguments)
    event.update(outcome)
    shown = outcome.get("result") if outcome.get("ok") else {"error": outcome.get("error")}
    return json.dumps(shown, ensure_ascii=False), event


def _parsed_arguments(raw: Any) -> Any:
    """A tool call's arguments (JSON text, or a value already), if a transcript can hold
    them; else ValueError (``StrictJsonError`` is one)."""
    return _storable(strict_json.loads(raw) if isinstance(raw, str) else raw)


def transcript(
    run_id: str,
    spec: AgentSpec,
    messages: list[dict[str, Any]],
    result: RunResult,
    started: float,
    duration_ms: float,
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "agent": spec.name,
        "spec": asdict(spec),
        "input": messages,
        "started": round(started, 3),
        "duration_ms": round(duration_ms, 3),
        "ok": result.ok,
        "stop_reason": result.stop_reason,
        "output": result.output,
        "error": result.error,
        "cut_off": result.cut_off,
        "events": result.events,
    }


def recorded_driver(recorded: dict[str, Any]) -> tuple[ModelCall, ToolRun]:
    """Model and tool functions that answer from a transcript and check each request."""
    events = recorded["events"]
    position = 0

    def next_event(kinds: tuple[str, ...]) -> tuple[int, dict[str, Any]]:
        nonlocal position
        # Refused and rejected tool calls never ran, so nothing is asked for them.
        while position < len(events) and events[position]["type"] in _NOT_RUN:
            position += 1
        if position >= len(events) or events[position]["type"] not in kinds:
            raise ReplayDiverged(position, {"expected": "end of the recording", "got": kinds[0]})
        index, position = position, position + 1
        return index, events[index]

    async def model(body: dict[str, Any]) -> dict[str, Any]:
        index, event = next_event(("model",))
        actual = await asyncio.to_thread(canonical_hash, body)
        if actual != event["request_hash"]:
            raise ReplayDiverged(
                index, {"recorded_request_hash": event["request_hash"], "replayed": actual}
            )
        response: dict[str, Any] = event["response"]
        return response

    async def run_tool(name: str, arguments: Any) -> dict[str, Any]:
        index, event = next_event(("tool",))
        if event.get("name") != name or event.get("arguments") != arguments:
            raise ReplayDiverged(
                index,
                {
                    "recorded": {"name": event.get("name"), "arguments": event.get("arguments")},
                    "replayed": {"name": name, "arguments": arguments},
                },
            )
        return {
            key: event[key]
            for key in ("ok", "result", "error", "request_hash", "replay_id")
            if key in event
        }

    return model, run_tool
