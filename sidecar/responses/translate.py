"""A Responses request checked and turned into a chat completion request, and a chat
completion turned back into a Response object.

What is translated: ``input`` (a string, or items: messages with ``input_text``,
``output_text``, ``refusal`` and ``input_image`` content, ``function_call`` and
``function_call_output``; ``reasoning`` items are dropped), ``instructions`` (a system
message, not carried over by ``previous_response_id``, as the API documents), function
``tools`` and ``tool_choice`` (``allowed_tools`` narrows the tool list), ``temperature``,
``top_p``, ``max_output_tokens`` (``max_tokens``), ``parallel_tool_calls``,
``reasoning.effort``, ``text.format`` (``json_schema``/``json_object`` become
``response_format``) and ``stream`` (with ``stream_options.include_usage``). Anything a
chat backend cannot do (hosted tools, files, ``background``, ``conversation``) is a 400
that names the field, never silently dropped.

Bounds, beyond the body size and strict JSON's nesting limit: ``MAX_INPUT_ITEMS`` input
items, ``MAX_CONTENT_PARTS`` parts per message, ``MAX_TOOLS`` tools, ``MAX_ID_CHARS`` per
id, the metadata limits the API documents (16 keys of 64 characters, values of 512).
Only the known fields of each item are kept, so nothing a client nests inside an item is
stored or sent on. Tool ``parameters`` (a JSON schema) pass through as given.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequest, UpstreamError
from ..usage import tokens

MAX_INPUT_ITEMS = 1000
MAX_CONTENT_PARTS = 100
MAX_TOOLS = 128
MAX_ID_CHARS = 128
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512

_MESSAGE_ROLES = ("user", "assistant", "system", "developer")
_TOOL_CHOICES = ("none", "auto", "required")
_UNSUPPORTED = {
    "background": "background responses",
    "conversation": "conversations",
    "prompt": "prompt templates",
}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


@dataclass(frozen=True)
class ResponsesRequest:
    """A checked request: the items it adds, and everything echoed in the Response."""

    model: str
    stream: bool
    store: bool
    items: tuple[dict[str, Any], ...]
    instructions: str | None
    tools: tuple[dict[str, Any], ...]
    tool_choice: Any
    previous_response_id: str | None
    temperature: float | None
    top_p: float | None
    max_output_tokens: int | None
    parallel_tool_calls: bool
    text_format: dict[str, Any]
    reasoning_effort: str | None
    metadata: dict[str, str]
    user: str | None

    def chat_body(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """The chat completion request for ``history`` (earlier items) plus this request."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": chat_messages(self.instructions, [*history, *self.items]),
        }
        if self.tools:
            tools, choice = _chat_tools(self.tools, self.tool_choice)
            if tools:
                body["tools"] = tools
                body["parallel_tool_calls"] = self.parallel_tool_calls
                if choice is not None:
                    body["tool_choice"] = choice
        for key, value in (
            ("temperature", self.temperature),
            ("top_p", self.top_p),
            ("max_tokens", self.max_output_tokens),
            ("reasoning_effort", self.reasoning_effort),
            ("user", self.user),
        ):
            if value is not None:
                body[key] = value
        response_format = _response_format(self.text_format)
        if response_format is not None:
            body["response_format"] = response_format
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def response(
        self,
        response_id: str,
        created_at: int,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        *,
        error: dict[str, Any] | None = None,
        incomplete: str | None = None,
        stored: bool | None = None,
    ) -> dict[str, Any]:
        """The Response object, as the API returns it, with this request's settings."""
        return {
            "id": response_id,
            "object": "response",
            "created_at": created_at,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "background": False,
            "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "metadata": self.metadata,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": self.parallel_tool_calls,
            "previous_response_id": self.previous_response_id,
            "reasoning": {"effort": self.reasoning_effort, "summary": None},
            "store": self.store if stored is None else stored,
            "temperature": self.temperature,
            "text": {"format": self.text_format},
            "tool_choice": self.tool_choice if self.tool_choice is not None else "auto",
            "tools": list(self.tools),
            "top_p": self.top_p,
            "truncation": "disabled",
            "usage": usage,
            "user": self.user,
        }


def parse_request(payload: dict[str, Any], model: str, stream: bool) -> ResponsesRequest:
    """Check a Responses request body (``model`` and ``stream`` already checked)."""
    for key, what in _UNSUPPORTED.items():
        if payload.get(key) not in (None, False):
            raise InvalidRequest(
                f"{what} ('{key}') are not supported by this gateway's Responses API", param=key
            )
    items = _input_items(payload.get("input"))
    instructions = payload.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("'instructions' must be a string", param="instructions")
    previous = payload.get("previous_response_id")
    if previous is not None:
        previous = _short_text(previous, "previous_response_id")
    store = payload.get("store", True)
    if store is None:
        store = True
    if not isinstance(store, bool):
        raise InvalidRequest("'store' must be a boolean", param="store")
    parallel = payload.get("parallel_tool_calls", True)
    if parallel is None:
        parallel = True
    if not isinstance(parallel, bool):
        raise InvalidRequest("'parallel_tool_calls' must be a boolean", param="parallel_tool_calls")
    tools = _tools(payload.get("tools"))
    choice = _tool_choice(payload.get("tool_choice"))
    max_output = payload.get("max_output_tokens")
    if max_output is not None and (not _is_int(max_output) or max_output < 1):
        raise InvalidRequest(
            "'max_output_tokens' must be a positive integer", param="max_output_tokens"
        )
    user = payload.get("user", payload.get("safety_identifier"))
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("'user' must be a string", param="user")
    return ResponsesRequest(
        model=model,
        stream=stream,
        store=store,
        items=tuple(items),
        instructions=instructions,
        tools=tuple(tools),
        tool_choice=choice,
        previous_response_id=previous,
        temperature=_number(payload, "temperature", 0, 2),
        top_p=_number(payload, "top_p", 0, 1),
        max_output_tokens=max_output,
        parallel_tool_calls=parallel,
        text_format=_text_format(payload.get("text")),
        reasoning_effort=_reasoning_effort(payload.get("reasoning")),
        metadata=_metadata(payload.get("metadata")),
        user=user,
    )


# -- input items ---------------------------------------------------------------------------


def _input_items(value: Any) -> list[dict[str, Any]]:
    if value is None:
        raise InvalidRequest(
            "'input' is required", param="input", code="missing_required_parameter"
        )
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": [_text_part("input_text", value)]}]
    if not isinstance(value, list):
        raise InvalidRequest("'input' must be a string or an array of items", param="input")
    if len(value) > MAX_INPUT_ITEMS:
        raise InvalidRequest(f"'input' may hold at most {MAX_INPUT_ITEMS} items", param="input")
    items = []
    for index, item in enumerate(value):
        normalised = _item(item, f"input[{index}]")
        if normalised is not None:
            items.append(normalised)
    return items


def _item(item: Any, param: str) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        raise InvalidRequest(f"'{param}' must be an object", param=param)
    kind = item.get("type")
    if kind is None and "role" in item:
        kind = "message"
    if kind == "message":
        return _message(item, param)
    if kind == "function_call":
        return {
            "type": "function_call",
            "call_id": _short_text(item.get("call_id"), f"{param}.call_id"),
            "name": _short_text(item.get("name"), f"{param}.name"),
            "arguments": _text(item.get("arguments"), f"{param}.arguments"),
        }
    if kind == "function_call_output":
        return {
            "type": "function_call_output",
            "call_id": _short_text(item.get("call_id"), f"{param}.call_id"),
            "output": _tool_output(item.get("output"), f"{param}.output"),
        }
    if kind == "reasoning":
        return None  # a chat backend gets no earlier reasoning back
    raise InvalidRequest(
        f"'{param}.type' must be message, function_call, function_call_output or reasoning"
        " (other item types are not supported by this gateway)",
        param=f"{param}.type",
    )


def _message(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _MESSAGE_ROLES:
        raise InvalidRequest(
            f"'{param}.role' must be one of {', '.join(_MESSAGE_ROLES)}", param=f"{param}.role"
        )
    content = item.get("content")
    if isinstance(content, str):
        kind = "output_text" if role == "assistant" else "input_text"
        return {"type": "message", "role": role, "content": [_text_part(kind, content)]}
    if not isinstance(content, list):
        raise InvalidRequest(
            f"'{param}.content' must be a string or an array of parts", param=f"{param}.content"
        )
    if len(content) > MAX_CONTENT_PARTS:
        raise InvalidRequest(
            f"'{param}.content' may hold at most {MAX_CONTENT_PARTS} parts",
            param=f"{param}.content",
        )
    parts = [_part(part, f"{param}.content[{index}]") for index, part in enumerate(content)]
    return {"type": "message", "role": role, "content": parts}


def _part(part: Any, param: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text") and isinstance(part, dict):
        return _text_part(kind, _text(part.get("text"), f"{param}.text"))
    if kind == "refusal" and isinstance(part, dict):
        return {"type": "refusal", "refusal": _text(part.get("refusal"), f"{param}.refusal")}
    if kind == "input_image" and isinstance(part, dict):
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise InvalidRequest(
                f"'{param}.image_url' must be a URL or a data: URL (file ids are not supported)",
                param=f"{param}.image_url",
            )
        detail = part.get("detail")
        if detail is not None and detail not in ("auto", "low", "high", "original"):
            raise InvalidRequest(
                f"'{param}.detail' must be auto, low, high or original", param=f"{param}.detail"
            )
        return {"type": "input_image", "image_url": url, "detail": detail or "auto"}
    raise InvalidRequest(
        f"'{param}' must be an input_text, output_text, refusal or input_image part",
        param=param,
    )


def _text_part(kind: str, text: str) -> dict[str, Any]:
    if kind == "output_text":
        return {"type": "output_text", "text": text, "annotations": []}
    return {"type": kind, "text": text}


def _tool_output(value: Any, param: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) <= MAX_CONTENT_PARTS:
        texts = []
        for index, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "input_text":
                raise InvalidRequest(
                    f"'{param}[{index}]' must be an input_text part", param=f"{param}[{index}]"
                )
            texts.append(_text(part.get("text"), f"{param}[{index}].text"))
        return "".join(texts)
    raise InvalidRequest(f"'{param}' must be a string or input_text parts", param=param)


def chat_messages(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Checked items as chat messages; consecutive function calls share one assistant turn."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in items:
        kind = item["type"]
        if kind == "message":
            messages.append(_chat_message(item))
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(
                {"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]}
            )
    return messages


def _chat_message(item: dict[str, Any]) -> dict[str, Any]:
    role = "system" if item["role"] == "developer" else item["role"]
    parts = item["content"]
    if role == "user" and any(part["type"] == "input_image" for part in parts):
        content: Any = [
            {"type": "image_url", "image_url": {"url": p["image_url"], "detail": p["detail"]}}
            if p["type"] == "input_image"
            else {"type": "text", "text": _part_text(p)}
            for p in parts
        ]
    else:
        content = "\n".join(_part_text(p) for p in parts if p["type"] != "input_image")
    return {"role": role, "content": content}


def _part_text(part: dict[str, Any]) -> str:
    return str(part.get("text", part.get("refusal", "")))


# -- tools and formats ---------------------------------------------------------------------


def _tools(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequest("'tools' must be an array", param="tools")
    if len(value) > MAX_TOOLS:
        raise InvalidRequest(f"'tools' may list at most {MAX_TOOLS} tools", param="tools")
    tools = []
    for index, tool in enumerate(value):
        param = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise InvalidRequest(
                f"'{param}' must be a function tool (hosted and custom tools need a backend"
                " with the responses capability)",
                param=param,
            )
        parameters = tool.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidRequest(f"'{param}.parameters' must be an object", param=param)
        description = tool.get("description")
        if description is not None and not isinstance(description, str):
            raise InvalidRequest(f"'{param}.description' must be a string", param=param)
        strict = tool.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise InvalidRequest(f"'{param}.strict' must be a boolean", param=param)
        tools.append(
            {
                "type": "function",
                "name": _short_text(tool.get("name"), f"{param}.name"),
                "description": description,
                "parameters": parameters,
                "strict": strict,
            }
        )
    return tools


def _tool_choice(value: Any) -> Any:
    if value is None or (isinstance(value, str) and value in _TOOL_CHOICES):
        return value
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "function" and isinstance(value, dict):
        return {"type": "function", "name": _short_text(value.get("name"), "tool_choice.name")}
    if kind == "allowed_tools" and isinstance(value, dict):
        mode = value.get("mode", "auto")
        allowed = value.get("tools")
        if mode not in ("auto", "required") or not isinstance(allowed, list):
            raise InvalidRequest(
                "'tool_choice' allowed_tools needs a mode (auto or required) and a tools list",
                param="tool_choice",
            )
        names = []
        for tool in allowed[:MAX_TOOLS]:
            if not isinstance(tool, dict) or tool.get("type") != "function":
                raise InvalidRequest(
                    "'tool_choice' allowed_tools may name function tools only",
                    param="tool_choice",
                )
            names.append(_short_text(tool.get("name"), "tool_choice.tools.name"))
        return {
            "type": "allowed_tools",
            "mode": mode,
            "tools": [{"type": "function", "name": name} for name in names],
        }
    raise InvalidRequest(
        "'tool_choice' must be none, auto, required, a function, or allowed_tools",
        param="tool_choice",
    )


def _chat_tools(tools: tuple[dict[str, Any], ...], choice: Any) -> tuple[list[dict[str, Any]], Any]:
    allowed = None
    if isinstance(choice, dict) and choice["type"] == "allowed_tools":
        allowed = {tool["name"] for tool in choice["tools"]}
        choice = choice["mode"]
    elif isinstance(choice, dict):
        choice = {"type": "function", "function": {"name": choice["name"]}}
    chat_tools = []
    for tool in tools:
        if allowed is not None and tool["name"] not in allowed:
            continue
        function: dict[str, Any] = {"name": tool["name"]}
        for key in ("description", "parameters", "strict"):
            if tool[key] is not None:
                function[key] = tool[key]
        chat_tools.append({"type": "function", "function": function})
    return chat_tools, choice


def _text_format(value: Any) -> dict[str, Any]:
    if value is None:
        return {"type": "text"}
    spec = value.get("format") if isinstance(value, dict) else None
    if not isinstance(value, dict) or (spec is not None and not isinstance(spec, dict)):
        raise InvalidRequest("'text' must be an object with a 'format' object", param="text")
    if spec is None or spec.get("type") == "text":
        return {"type": "text"}
    if spec.get("type") == "json_object":
        return {"type": "json_object"}
    if spec.get("type") == "json_schema":
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest("'text.format.schema' must be an object", param="text")
        name = _short_text(spec.get("name", "response"), "text.format.name")
        strict = spec.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise InvalidRequest("'text.format.strict' must be a boolean", param="text")
        description = spec.get("description")
        if description is not None and not isinstance(description, str):
            raise InvalidRequest("'text.format.description' must be a string", param="text")
        return {
            "type": "json_schema",
            "name": name,
            "schema": schema,
            "strict": strict,
            "description": description,
        }
    raise InvalidRequest(
        "'text.format.type' must be text, json_object or json_schema", param="text"
    )


def _response_format(text_format: dict[str, Any]) -> dict[str, Any] | None:
    if text_format["type"] == "json_object":
        return {"type": "json_object"}
    if text_format["type"] != "json_schema":
        return None
    schema: dict[str, Any] = {"name": text_format["name"], "schema": text_format["schema"]}
    for key in ("strict", "description"):
        if text_format[key] is not None:
            schema[key] = text_format[key]
    return {"type": "json_schema", "json_schema": schema}


def _reasoning_effort(value: Any) -> str | None:
    if value is None:
        return None
    effort = value.get("effort") if isinstance(value, dict) else None
    if not isinstance(value, dict) or (effort is not None and not isinstance(effort, str)):
        raise InvalidRequest("'reasoning' must be an object with an 'effort'", param="reasoning")
    return _short_text(effort, "reasoning.effort") if effort is not None else None


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_METADATA_KEYS:
        raise InvalidRequest(
            f"'metadata' must be an object of at most {MAX_METADATA_KEYS} keys", param="metadata"
        )
    for key, item in value.items():
        if (
            len(key) > MAX_METADATA_KEY_CHARS
            or not isinstance(item, str)
            or len(item) > MAX_METADATA_VALUE_CHARS
        ):
            raise InvalidRequest(
                f"'metadata' keys are at most {MAX_METADATA_KEY_CHARS} characters and values"
                f" strings of at most {MAX_METADATA_VALUE_CHARS}",
                param="metadata",
            )
    return dict(value)


# -- the chat completion back as a Response ------------------------------------------------


def output_from_chat(reply: Any, backend: str) -> tuple[list[dict[str, Any]], str | None]:
    """The output items of a chat completion, and why it is incomplete (None: it is not)."""
    choices = reply.get("choices") if isinstance(reply, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise UpstreamError(f"backend '{backend}' returned an unexpected reply")
    output: list[dict[str, Any]] = []
    text = _reply_text(message.get("content"))
    refusal = message.get("refusal")
    if text or isinstance(refusal, str):
        content = []
        if text:
            content.append(_text_part("output_text", text))
        if isinstance(refusal, str) and refusal:
            content.append({"type": "refusal", "refusal": refusal})
        output.append(message_item(new_id("msg"), content, "completed"))
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise UpstreamError(f"backend '{backend}' returned a malformed tool call")
        call_id = call.get("id") if isinstance(call.get("id"), str) else None
        output.append(
            function_call_item(
                new_id("fc"),
                call_id or new_id("call"),
                function["name"],
                arguments_text(function.get("arguments")),
                "completed",
            )
        )
    return output, incomplete_reason(choice.get("finish_reason") if choice else None)


def _reply_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def arguments_text(value: Any) -> str:
    """Tool call arguments as the JSON text the API carries (some servers send an object)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False)


def incomplete_reason(finish_reason: Any) -> str | None:
    if finish_reason == "length":
        return "max_output_tokens"
    if finish_reason == "content_filter":
        return "content_filter"
    return None


def message_item(item_id: str, content: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def usage_from_chat(usage: Any) -> dict[str, Any] | None:
    """A chat ``usage`` as the Responses one (None when the backend sent none, or none
    ``tokens.counts`` takes: a usage of strings or floats is no count of zero tokens, and
    the ledger estimates instead)."""
    found = tokens.counts(usage)
    if found is None or not isinstance(usage, dict):
        return None
    prompt, completion = found
    total = _count(usage.get("total_tokens")) or prompt + completion
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    cached = _count(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0
    reasoning = (
        _count(completion_details.get("reasoning_tokens"))
        if isinstance(completion_details, dict)
        else 0
    )
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": total,
    }


def _count(value: Any) -> int:
    return value if _is_int(value) and 0 <= value <= tokens.MAX_COUNT else 0


# -- a backend's text as valid Unicode ------------------------------------------------------

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_unicode(raw: bytes, value: Any, backend: str) -> Any:
    """``value``, a backend's JSON parsed from ``raw``, with every lone UTF-16 surrogate in
    its strings replaced by U+FFFD: a reply carries them as ``\\uD800`` escapes (the
    reply parser lets them through), and a Response holding one could be neither streamed
    as UTF-8 nor sent on as the history of the next turn. ``value`` itself (a C-speed look
    at ``raw``) when ``raw`` escapes no surrogate."""
    if b"\\" not in raw or _SURROGATE_ESCAPE.search(raw) is None:
        return value
    try:
        return _replace_surrogates(value)
    except RecursionError:
        raise UpstreamError(f"backend '{backend}' returned JSON nested too deeply") from None


def _replace_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    return value


# -- small checks --------------------------------------------------------------------------


def _short_text(value: Any, param: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
        raise InvalidRequest(
            f"'{param}' must be a non-empty string of at most {MAX_ID_CHARS} characters",
            param=param,
        )
    return value


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"'{param}' must be a string", param=param)
    return value


def _number(payload: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be a number from {low} to {high}", param=name)
    return float(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
