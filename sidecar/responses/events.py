"""A chat completion stream turned into the Responses stream events, as they arrive.

The sequence, as the API documents it: ``response.created``, ``response.in_progress``;
for text ``response.output_item.added`` (a message), ``response.content_part.added``,
``response.output_text.delta``..., ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``; for each tool call
``response.output_item.added`` (a function_call), ``response.function_call_arguments.delta``
..., ``response.function_call_arguments.done``, ``response.output_item.done``; then
``response.completed`` (or ``response.incomplete`` when the output hit its limit) with the
whole Response and its usage. A backend that fails mid-stream ends it with ``error`` and
``response.failed``. Every event carries ``sequence_number`` and the indexes and ids the
API gives it. A text message is closed when a tool call starts; tool calls are closed in
order at the end.

Bounds: the text and tool call arguments held for the final Response are at most
``MAX_HELD_BYTES`` (64 MiB, the cap of a non-streamed answer) together, and a stream has
at most ``MAX_TOOL_CALLS`` (128) tool calls; a backend that sends more ends the stream
with ``error`` and ``response.failed`` (``feed`` raises ``UpstreamError`` before any of
that chunk's events).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..errors import UpstreamError
from ..routing.upstream import MAX_UPSTREAM_BODY
from .translate import (
    arguments_text,
    function_call_item,
    incomplete_reason,
    message_item,
    new_id,
    usage_from_chat,
)

# Builds the Response object for a status, output and usage (``ResponsesRequest.response``
# with the id and creation time bound).
ResponseBuilder = Callable[..., dict[str, Any]]
MAX_HELD_BYTES = MAX_UPSTREAM_BODY
MAX_TOOL_CALLS = 128


def encode(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


class _ToolCall:
    __slots__ = ("arguments", "call_id", "item_id", "name", "output_index")

    def __init__(self, output_index: int, call_id: str, name: str) -> None:
        self.output_index = output_index
        self.item_id = new_id("fc")
        self.call_id = call_id
        self.name = name
        self.arguments: list[str] = []


class StreamTranslator:
    """Feed it chat chunks (parsed JSON); it returns the encoded Responses events."""

    def __init__(self, build: ResponseBuilder) -> None:
        self._build = build
        self._sequence = 0
        self._output: list[dict[str, Any] | None] = []  # None: an item still open
        self._message_index: int | None = None
        self._message_id = ""
        self._text: list[str] = []
        self._calls: dict[int, _ToolCall] = {}
        self._held = 0
        self.finish_reason: Any = None
        self.usage: dict[str, Any] | None = None
        self.final: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return encode(event)

    def start(self) -> bytes:
        response = self._build("in_progress", [])
        return self._event("response.created", response=response) + self._event(
            "response.in_progress", response=response
        )

    def feed(self, chunk: dict[str, Any]) -> bytes:
        events: list[bytes] = []
        usage = usage_from_chat(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        choices = chunk.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict):
            return b""
        delta = choice.get("delta")
        if isinstance(delta, dict):
            self._admit(delta)
            content = delta.get("content")
            if isinstance(content, str) and content:
                events.append(self._text_delta(content))
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else []:
                if isinstance(call, dict):
                    events.append(self._call_delta(call))
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
        return b"".join(events)

    def _admit(self, delta: dict[str, Any]) -> None:
        """Refuse a delta that would hold too much or open too many tool calls."""
        content = delta.get("content")
        size = len(content.encode()) if isinstance(content, str) else 0
        calls = delta.get("tool_calls")
        opened: set[Any] = set()
        for call in calls if isinstance(calls, list) else []:
            if not isinstance(call, dict):
                continue
            index = call.get("index")
            if not isinstance(index, int) or index not in self._calls:
                opened.add(index if isinstance(index, int) else object())
            function = call.get("function")
            if isinstance(function, dict):
                size += len(arguments_text(function.get("arguments")).encode())
        if len(self._calls) + len(opened) > MAX_TOOL_CALLS:
            raise UpstreamError(
                f"the backend sent more than {MAX_TOOL_CALLS} tool calls in one response"
            )
        if self._held + size > MAX_HELD_BYTES:
            raise UpstreamError(
                f"the backend's answer is larger than {MAX_HELD_BYTES // (1024 * 1024)} MiB,"
                " the most the gateway holds for one response"
            )
        self._held += size

    def _text_delta(self, text: str) -> bytes:
        opened = b""
        if self._message_index is None:
            self._message_index = len(self._output)
            self._message_id = new_id("msg")
            self._output.append(None)
            opened = self._event(
                "response.output_item.added",
                output_index=self._message_index,
                item=message_item(self._message_id, [], "in_progress"),
            ) + self._event(
                "response.content_part.added",
                item_id=self._message_id,
                output_index=self._message_index,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": []},
            )
        self._text.append(text)
        return opened + self._event(
            "response.output_text.delta",
            item_id=self._message_id,
            output_index=self._message_index,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _call_delta(self, call: dict[str, Any]) -> bytes:
        index = call.get("index", len(self._calls))
        raw = call.get("function")
        function: dict[str, Any] = raw if isinstance(raw, dict) else {}
        events = b""
        state = self._calls.get(index) if isinstance(index, int) else None
        if state is None:
            events += self._close_message()
            call_id = call.get("id") if isinstance(call.get("id"), str) else None
            name = function.get("name")
            name = name if isinstance(name, str) else ""
            state = _ToolCall(len(self._output), call_id or new_id("call"), name)
            self._calls[index if isinstance(index, int) else -len(self._calls) - 1] = state
            self._output.append(None)
            events += self._event(
                "response.output_item.added",
                output_index=state.output_index,
                item=function_call_item(
                    state.item_id, state.call_id, state.name, "", "in_progress"
                ),
            )
        elif isinstance(function.get("name"), str) and not state.name:
            state.name = function["name"]
        piece = arguments_text(function.get("arguments"))
        if piece:
            state.arguments.append(piece)
            events += self._event(
                "response.function_call_arguments.delta",
                item_id=state.item_id,
                output_index=state.output_index,
                delta=piece,
            )
        return events

    def _close_message(self) -> bytes:
        index = self._message_index
        if index is None:
            return b""
        self._message_index = None
        text = "".join(self._text)
        self._text = []
        part = {"type": "output_text", "text": text, "annotations": []}
        item = message_item(self._message_id, [part], "completed")
        self._output[index] = item
        return (
            self._event(
                "response.output_text.done",
                item_id=self._message_id,
                output_index=index,
                content_index=0,
                text=text,
                logprobs=[],
            )
            + self._event(
                "response.content_part.done",
                item_id=self._message_id,
                output_index=index,
                content_index=0,
                part=part,
            )
            + self._event("response.output_item.done", output_index=index, item=item)
        )

    def finish(self) -> bytes:
        """Close what is open; the caller then sends ``completed(...)``."""
        events = self._close_message()
        for state in sorted(self._calls.values(), key=lambda s: s.output_index):
            arguments = "".join(state.arguments)
            item = function_call_item(
                state.item_id, state.call_id, state.name, arguments, "completed"
            )
            self._output[state.output_index] = item
            events += self._event(
                "response.function_call_arguments.done",
                item_id=state.item_id,
                output_index=state.output_index,
                name=state.name,
                arguments=arguments,
            )
            events += self._event(
                "response.output_item.done", output_index=state.output_index, item=item
            )
        self._calls = {}
        return events

    @property
    def output(self) -> list[dict[str, Any]]:
        return [item for item in self._output if item is not None]

    @property
    def incomplete(self) -> str | None:
        return incomplete_reason(self.finish_reason)

    def completed(self, response: dict[str, Any]) -> bytes:
        """The last event, for the Response ``finish`` ended with (see ``result``)."""
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return self._event(kind, response=response)

    def result(self, stored: bool | None = None) -> dict[str, Any]:
        """The finished Response (``finish`` first)."""
        reason = self.incomplete
        return self._build(
            "incomplete" if reason else "completed",
            self.output,
            self.usage,
            incomplete=reason,
            stored=stored,
        )

    def failed(self, message: str, code: str | None) -> bytes:
        """``error`` and ``response.failed``: the backend failed mid-stream."""
        response = self._build(
            "failed",
            [item for item in self._output if item is not None],
            self.usage,
            error={"code": "server_error", "message": message},
            stored=False,
        )
        return self._event("error", code=code, message=message, param=None) + self._event(
            "response.failed", response=response
        )
