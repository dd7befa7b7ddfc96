"""Anthropic's Messages API (``POST /v1/messages``), translated onto chat completions.

For clients that speak only Anthropic's protocol (the anthropic SDKs, Claude Code). The
token comes as ``x-api-key`` or ``Authorization: Bearer`` (``middleware.bearer``); the
``anthropic-version`` and ``anthropic-beta`` headers are accepted and not required.
Errors leave in Anthropic's shape (``faces``), mid-stream ones as an ``error`` event; a
backend that answers a stream request with a whole JSON reply is a 502 before any event.

Request → chat completions body:

- ``system`` (a string or text blocks) becomes the first, system message.
- ``messages`` (roles ``user``/``assistant``; content a string or blocks): ``text`` as
  text; ``image`` (``base64`` or ``url`` source) as an ``image_url`` part; an assistant's
  ``tool_use`` blocks as its ``tool_calls`` (input as JSON arguments); a user's
  ``tool_result`` blocks as ``tool`` messages (text; images in a result follow in a user
  message). ``thinking`` blocks a client sends back are dropped; other block types are a 400.
- ``tools`` (custom tools: ``name``, ``description``, ``input_schema``) as function tools;
  ``tool_choice`` ``auto``/``any``/``tool``/``none`` as ``auto``/``required``/a named
  function/``none`` (``disable_parallel_tool_use`` as ``parallel_tool_calls: false``).
- ``max_tokens`` (required), ``stop_sequences`` → ``stop``, ``temperature`` (0-1),
  ``top_p``, ``stream``; ``output_config.format`` (a JSON schema) → ``response_format``;
  ``top_k``, ``metadata``, ``thinking`` and other fields are not sent.

Reply: a ``message`` with ``id`` ``msg_…``, ``text`` and ``tool_use`` blocks,
``stop_reason`` (``length`` → ``max_tokens``, tool calls → ``tool_use``, a stop string
the backend names → ``stop_sequence``, else ``end_turn``) and ``usage`` (the backend's
counts, estimated when it gives none). A stream is Anthropic's event sequence:
``message_start``, ``ping``, per block ``content_block_start`` / ``content_block_delta``
(``text_delta``, ``input_json_delta``) / ``content_block_stop``, then ``message_delta``
(stop reason and usage) and ``message_stop``.

``POST /v1/messages/count_tokens`` answers ``{"input_tokens": n}``, an estimate
(``translate.estimate_tokens``), after the same checks as a message.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import secrets
from typing import Any

from aiohttp import web

from ..errors import (
    BackendNotReady,
    GatewayError,
    InvalidRequest,
    UpstreamError,
)
from ..routing.call import backend_call
from ..routing.router import upstream_body
from ..routing.upstream import UpstreamCall
from ..typedefs import ACCESS, REQUEST_ID
from ..usage import tokens
from ..wire.body import read_json_object, walk_body
from ..wire.model_name import check_model_name, stream_field
from . import translate, validation
from .faces import anthropic_error_type

log = logging.getLogger("gateway.api")

MAX_MESSAGES = 10_000
_STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use"}
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_IGNORED_BLOCKS = {"thinking", "redacted_thinking"}


async def messages(request: web.Request) -> web.StreamResponse:
    payload = await read_json_object(request)
    model = check_model_name(_required(payload, "model"))
    stream = stream_field(payload)
    chat = await walk_body(request, to_chat, payload, model)
    route = translate.route_for(request, model, "chat", stream)
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    upstream = upstream_body(chat, route)
    headers = route.headers()
    name = route.backend.name
    try:
        async with backend_call(
            route.backend, "chat", "chat/completions", upstream, request[REQUEST_ID]
        ) as call:
            if stream:
                return await _stream(request, call, headers, model, chat)
            reply = await translate.read_reply(call, name)
            message = from_chat(reply, name, model, chat)
            usage = message["usage"]
            tokens.charge(
                request[ACCESS],
                translate.usage_of(reply),
                lambda: (usage["input_tokens"], usage["output_tokens"]),
            )
            return web.json_response(message, headers=headers)
    except GatewayError as exc:
        exc.headers.update(headers)
        raise


async def count_tokens(request: web.Request) -> web.Response:
    payload = await read_json_object(request)
    model = check_model_name(_required(payload, "model"))
    chat = await walk_body(request, functools.partial(to_chat, count_only=True), payload, model)
    with contextlib.suppress(BackendNotReady):  # routed, but an estimate needs no backend
        translate.route_for(request, model, "chat", False)
    return web.json_response({"input_tokens": translate.estimate_tokens(chat)})


# -- request ------------------------------------------------------------------------------


def _required(payload: dict[str, Any], name: str) -> Any:
    value = payload.get(name)
    if value is None:
        raise InvalidRequest(
            f"{name}: Field required", param=name, code="missing_required_parameter"
        )
    return value


def to_chat(payload: dict[str, Any], model: str, *, count_only: bool = False) -> dict[str, Any]:
    """The chat completions body for an Anthropic Messages request (checked on the way)."""
    chat: dict[str, Any] = {"model": model}
    out: list[dict[str, Any]] = []
    system = payload.get("system")
    if system is not None:
        text = _system_text(system)
        if text:
            out.append({"role": "system", "content": text})
    entries = _required(payload, "messages")
    if not isinstance(entries, list) or not entries:
        raise InvalidRequest("messages: must be a non-empty array", param="messages")
    if len(entries) > MAX_MESSAGES:
        raise InvalidRequest(f"messages: at most {MAX_MESSAGES} messages", param="messages")
    for index, entry in enumerate(entries):
        out.extend(_message(entry, f"messages.{index}"))
    chat["messages"] = out
    tools = payload.get("tools")
    if tools is not None:
        chat["tools"] = _tools(tools)
    choice = payload.get("tool_choice")
    if choice is not None:
        _tool_choice(choice, chat)
    if count_only:
        return chat
    max_tokens = _required(payload, "max_tokens")
    if not _is_int(max_tokens) or max_tokens < 1:
        raise InvalidRequest("max_tokens: must be an integer of at least 1", param="max_tokens")
    chat["max_tokens"] = max_tokens
    stops = payload.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise InvalidRequest(
                "stop_sequences: must be an array of non-empty strings", param="stop_sequences"
            )
        if stops:
            chat["stop"] = stops
    _output_format(payload.get("output_config"), chat)
    for name, high in (("temperature", 1), ("top_p", 1)):
        value = payload.get(name)
        if value is None:
            continue
        if not _is_number(value) or not 0 <= value <= high:
            raise InvalidRequest(f"{name}: must be a number from 0 to {high}", param=name)
        chat[name] = value
    return chat


def _output_format(config: Any, chat: dict[str, Any]) -> None:
    """``output_config.format`` (a JSON schema the reply must follow) as a response format;
    ``effort`` is not sent."""
    if config is None:
        return
    form = config.get("format") if isinstance(config, dict) else None
    if form is None and isinstance(config, dict):
        return
    schema = form.get("schema") if isinstance(form, dict) else None
    if (
        not isinstance(form, dict)
        or form.get("type") != "json_schema"
        or not isinstance(schema, dict)
    ):
        raise InvalidRequest(
            "output_config.format: must be {type: json_schema, schema}",
            param="output_config.format",
        )
    chat["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        texts = []
        for index, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise InvalidRequest(
                    f"system.{index}: must be a text block", param=f"system.{index}"
                )
            texts.append(_string(block, "text", f"system.{index}"))
        return "\n\n".join(texts)
    raise InvalidRequest("system: must be a string or an array of text blocks", param="system")


def _string(block: dict[str, Any], key: str, where: str) -> str:
    value = block.get(key)
    if not isinstance(value, str):
        raise InvalidRequest(f"{where}.{key}: must be a string", param=f"{where}.{key}")
    return value


def _message(entry: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(entry, dict):
        raise InvalidRequest(f"{where}: must be an object", param=where)
    role = entry.get("role")
    if role not in ("user", "assistant"):
        raise InvalidRequest(f"{where}.role: must be 'user' or 'assistant'", param=f"{where}.role")
    content = entry.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise InvalidRequest(
            f"{where}.content: must be a string or an array of content blocks",
            param=f"{where}.content",
        )
    if role == "assistant":
        return [_assistant(content, where)]
    return _user(content, where)


def _assistant(blocks: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        at = f"{where}.content.{index}"
        kind = _block_type(block, at)
        if kind == "text":
            texts.append(_string(block, "text", at))
        elif kind == "tool_use":
            tool_input = block.get("input")
            if not isinstance(tool_input, dict):
                raise InvalidRequest(f"{at}.input: must be an object", param=f"{at}.input")
            calls.append(
                {
                    "id": _string(block, "id", at),
                    "type": "function",
                    "function": {
                        "name": _string(block, "name", at),
                        "arguments": json.dumps(tool_input, ensure_ascii=False),
                    },
                }
            )
        elif kind not in _IGNORED_BLOCKS:
            raise _unsupported(kind, at)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    return message


def _user(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        at = f"{where}.content.{index}"
        kind = _block_type(block, at)
        if kind == "text":
            parts.append({"type": "text", "text": _string(block, "text", at)})
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "tool_result":
            text, images = _tool_result(block, at)
            results.append(
                {"role": "tool", "tool_call_id": _string(block, "tool_use_id", at), "content": text}
            )
            parts.extend(images)
        elif kind not in _IGNORED_BLOCKS:
            raise _unsupported(kind, at)
    out = results
    if parts:
        if all(part["type"] == "text" for part in parts):
            out.append({"role": "user", "content": "\n".join(part["text"] for part in parts)})
        else:
            out.append({"role": "user", "content": parts})
    elif not results:
        out.append({"role": "user", "content": ""})
    return out


def _tool_result(block: dict[str, Any], at: str) -> tuple[str, list[dict[str, Any]]]:
    content = block.get("content")
    prefix = "Error: " if block.get("is_error") is True else ""
    if content is None:
        return prefix, []
    if isinstance(content, str):
        return prefix + content, []
    if not isinstance(content, list):
        raise InvalidRequest(
            f"{at}.content: must be a string or an array of blocks", param=f"{at}.content"
        )
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    for index, inner in enumerate(content):
        where = f"{at}.content.{index}"
        kind = _block_type(inner, where)
        if kind == "text":
            texts.append(_string(inner, "text", where))
        elif kind == "image":
            images.append(_image(inner, where))
        else:
            raise _unsupported(kind, where)
    return prefix + "\n".join(texts), images


def _image(block: dict[str, Any], at: str) -> dict[str, Any]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if isinstance(source, dict) and kind == "base64":
        media_type = _string(source, "media_type", f"{at}.source")
        data = _string(source, "data", f"{at}.source")
        url = f"data:{media_type};base64,{data}"
    elif isinstance(source, dict) and kind == "url":
        url = _string(source, "url", f"{at}.source")
    else:
        raise InvalidRequest(
            f"{at}.source: must be a base64 or url image source", param=f"{at}.source"
        )
    return {"type": "image_url", "image_url": {"url": url}}


def _block_type(block: Any, at: str) -> str:
    kind = block.get("type") if isinstance(block, dict) else None
    if not isinstance(kind, str):
        raise InvalidRequest(f"{at}: must be a content block with a 'type'", param=at)
    return kind


def _unsupported(kind: str, at: str) -> InvalidRequest:
    shown = kind if len(kind) <= 40 and kind.isprintable() else "this"
    return InvalidRequest(
        f"{at}: content blocks of type '{shown}' are not supported by this gateway", param=at
    )


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InvalidRequest("tools: must be an array", param="tools")
    if len(tools) > validation.MAX_TOOLS:
        raise InvalidRequest(f"tools: at most {validation.MAX_TOOLS} tools", param="tools")
    out = []
    for index, tool in enumerate(tools):
        at = f"tools.{index}"
        if not isinstance(tool, dict):
            raise InvalidRequest(f"{at}: must be an object", param=at)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise InvalidRequest(
                f"{at}: only custom tools (name, description, input_schema) are supported",
                param=at,
            )
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise InvalidRequest(
                f"{at}.input_schema: must be an object", param=f"{at}.input_schema"
            )
        function: dict[str, Any] = {"name": _string(tool, "name", at), "parameters": schema}
        description = tool.get("description")
        if isinstance(description, str):
            function["description"] = description
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, chat: dict[str, Any]) -> None:
    found = choice.get("type") if isinstance(choice, dict) else None
    kind = found if isinstance(found, str) else None  # a list or object is no choice
    if kind in _TOOL_CHOICES:
        chat["tool_choice"] = _TOOL_CHOICES[kind]
    elif kind == "tool" and isinstance(choice.get("name"), str):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise InvalidRequest(
            "tool_choice: must be {type: auto | any | none} or {type: tool, name}",
            param="tool_choice",
        )
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        chat["parallel_tool_calls"] = False


# -- reply --------------------------------------------------------------------------------


def message_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


def from_chat(
    reply: dict[str, Any], backend: str, model: str, chat: dict[str, Any]
) -> dict[str, Any]:
    """The Messages API reply for a chat completion."""
    choice = translate.first_choice(reply, backend)
    message = choice.get("message")
    if not isinstance(message, dict):
        raise UpstreamError(f"backend '{backend}' returned a choice without a message")
    content: list[dict[str, Any]] = []
    text = translate.text_of(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise UpstreamError(f"backend '{backend}' returned a malformed tool call")
        content.append(
            {
                "type": "tool_use",
                "id": _tool_id(call.get("id")),
                "name": function["name"],
                "input": translate.tool_arguments(function.get("arguments"), backend),
            }
        )
    reason, sequence = stop_reason(choice, chat, any(b["type"] == "tool_use" for b in content))
    usage = translate.usage_of(reply) or (
        translate.estimate_tokens(chat),
        translate.tokens_for_chars(len(json.dumps(content))),
    )
    return {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
    }


def stop_reason(
    choice: dict[str, Any], chat: dict[str, Any], used_tool: bool
) -> tuple[str, str | None]:
    """Anthropic's ``stop_reason`` (and ``stop_sequence``) for a chat choice."""
    finish = choice.get("finish_reason")
    if used_tool:
        return "tool_use", None
    if isinstance(finish, str) and finish in _STOP_REASONS:
        return _STOP_REASONS[finish], None
    if finish == "content_filter":
        return "refusal", None
    matched = choice.get("stop_reason")  # vLLM names the stop string that ended the text
    if isinstance(matched, str) and matched in (chat.get("stop") or []):
        return "stop_sequence", matched
    return "end_turn", None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _tool_id(value: Any) -> str:
    if isinstance(value, str) and value and len(value) <= 256 and value.isprintable():
        return value
    return f"toolu_{secrets.token_hex(12)}"


# -- stream -------------------------------------------------------------------------------


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: ".encode() + json.dumps(data).encode() + b"\n\n"


class _Blocks:
    """The content blocks of a streamed message as chunks open and close them."""

    def __init__(self) -> None:
        self.index = -1
        self.kind: str | None = None  # of the open block
        self.tool_index: int | None = None  # the chat tool call the open block belongs to
        self.used_tool = False
        self.output_chars = 0

    def close(self) -> bytes:
        if self.kind is None:
            return b""
        self.kind = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def open(self, block: dict[str, Any]) -> bytes:
        out = self.close()
        self.index += 1
        self.kind = block["type"]
        return out + _event(
            "content_block_start",
            {"type": "content_block_start", "index": self.index, "content_block": block},
        )

    def text(self, text: str) -> bytes:
        out = b"" if self.kind == "text" else self.open({"type": "text", "text": ""})
        self.output_chars += len(text)
        delta = {"type": "text_delta", "text": text}
        return out + _event(
            "content_block_delta",
            {"type": "content_block_delta", "index": self.index, "delta": delta},
        )

    def tool(self, call: dict[str, Any]) -> bytes:
        out = b""
        position = call.get("index", 0)
        found = call.get("function")
        function: dict[str, Any] = found if isinstance(found, dict) else {}
        if self.kind != "tool_use" or (position != self.tool_index):
            name = function.get("name")
            block = {
                "type": "tool_use",
                "id": _tool_id(call.get("id")),
                "name": name if isinstance(name, str) else "",
                "input": {},
            }
            out = self.open(block)
            self.tool_index = position
            self.used_tool = True
        pieces = function.get("arguments")
        if isinstance(pieces, str) and pieces:
            self.output_chars += len(pieces)
            delta = {"type": "input_json_delta", "partial_json": pieces}
            out += _event(
                "content_block_delta",
                {"type": "content_block_delta", "index": self.index, "delta": delta},
            )
        return out


async def _stream(
    request: web.Request,
    call: UpstreamCall,
    headers: dict[str, str],
    model: str,
    chat: dict[str, Any],
) -> web.StreamResponse:
    record = request[ACCESS]
    backend = headers["X-Backend-Used"]
    translate.require_stream(call, backend)  # else a 502 before any event
    response = web.StreamResponse(status=200, headers={**translate.SSE_HEADERS, **headers})
    await response.prepare(request)
    estimate = translate.estimate_tokens(chat)
    start = {
        "type": "message_start",
        "message": {
            "id": message_id(),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": estimate, "output_tokens": 0},
        },
    }
    await _write(
        response, record, _event("message_start", start) + _event("ping", {"type": "ping"})
    )
    blocks = _Blocks()
    choice: dict[str, Any] = {}
    usage: tuple[int, int] | None = None
    try:
        async for chunk in translate.chat_chunks(call, backend):
            usage = translate.usage_of(chunk) or usage
            delta, finish = translate.delta_of(chunk)
            if finish:
                choice = {"finish_reason": finish, **_choice_extra(chunk)}
            out = b""
            text = delta.get("content")
            if isinstance(text, str) and text:
                out += blocks.text(text)
            calls = delta.get("tool_calls")
            for tool_call in calls if isinstance(calls, list) else []:
                if isinstance(tool_call, dict):
                    out += blocks.tool(tool_call)
            if out:
                record.first_token()
                await _write(response, record, out)
    except GatewayError as exc:
        log.warning("stream %s failed: %s", request[REQUEST_ID], exc.message)
        error = {
            "type": "error",
            "error": {"type": anthropic_error_type(exc.status), "message": exc.message},
        }
        await _write(response, record, blocks.close() + _event("error", error))
        return response
    finally:  # also when the client went away: what was generated counts
        tokens.charge(record, usage, lambda: (estimate, tokens.estimate(blocks.output_chars)))
    reason, sequence = stop_reason(choice, chat, blocks.used_tool)
    input_tokens, output_tokens = record.prompt_tokens, record.completion_tokens
    final = {
        "type": "message_delta",
        "delta": {"stop_reason": reason, "stop_sequence": sequence},
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }
    await _write(
        response,
        record,
        blocks.close()
        + _event("message_delta", final)
        + _event("message_stop", {"type": "message_stop"}),
    )
    await response.write_eof()
    return response


def _choice_extra(chunk: dict[str, Any]) -> dict[str, Any]:
    choice = chunk["choices"][0]
    matched = choice.get("stop_reason")
    return {"stop_reason": matched} if isinstance(matched, str) else {}


async def _write(response: web.StreamResponse, record: Any, data: bytes) -> None:
    await response.write(data)
    record.bytes_out += len(data)
