"""Shape checks for OpenAI request bodies, before anything is routed.

Only what the gateway relies on, or what would otherwise surface as a confusing backend
error, is checked; unknown fields pass through to the backend untouched.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidRequest
from ..wire.body import required_field

_ROLES = {"system", "user", "assistant", "tool", "developer", "function"}
_TOOL_CHOICES = {"none", "auto", "required"}
MAX_TOOLS = 128


def check_chat(payload: dict[str, Any]) -> None:
    messages = required_field(payload, "messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"'{param}' must be an object", param=param)
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise InvalidRequest(
                f"'{param}.role' must be one of {', '.join(sorted(_ROLES))}", param=f"{param}.role"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequest(
                f"'{param}.content' must be a string or an array of parts", param=f"{param}.content"
            )
    _check_sampling(payload)
    _check_tools(payload)
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object", param="stream_options")


def check_completion(payload: dict[str, Any]) -> None:
    prompt = required_field(payload, "prompt")
    if not _text_or_tokens(prompt):
        raise InvalidRequest(
            "'prompt' must be a string, an array of strings, or token arrays", param="prompt"
        )
    _check_sampling(payload)


def check_embeddings(payload: dict[str, Any]) -> None:
    value = required_field(payload, "input")
    if not _text_or_tokens(value) or value in ("", []):
        raise InvalidRequest(
            "'input' must be a non-empty string, array of strings, or token arrays", param="input"
        )
    encoding = payload.get("encoding_format")
    if encoding is not None and encoding not in ("float", "base64"):
        raise InvalidRequest(
            "'encoding_format' must be 'float' or 'base64'", param="encoding_format"
        )
    dimensions = payload.get("dimensions")
    if dimensions is not None and (not _is_int(dimensions) or dimensions < 1):
        raise InvalidRequest("'dimensions' must be a positive integer", param="dimensions")
    if payload.get("stream"):
        raise InvalidRequest("embeddings cannot be streamed", param="stream")


def check_speech(payload: dict[str, Any]) -> None:
    text = required_field(payload, "input")
    if not isinstance(text, str) or not text:
        raise InvalidRequest("'input' must be a non-empty string", param="input")
    speed = payload.get("speed")
    if speed is not None and (not _is_number(speed) or not 0.25 <= speed <= 4.0):
        raise InvalidRequest("'speed' must be a number from 0.25 to 4.0", param="speed")
    voice = payload.get("voice")
    if voice is not None and not isinstance(voice, str | dict):
        raise InvalidRequest("'voice' must be a string or an object", param="voice")


def check_rerank(payload: dict[str, Any]) -> None:
    """The Jina/Cohere shape: ``query``, ``documents`` (text or objects), ``top_n``."""
    query = required_field(payload, "query")
    if not isinstance(query, str) or not query:
        raise InvalidRequest("'query' must be a non-empty string", param="query")
    documents = required_field(payload, "documents")
    if (
        not isinstance(documents, list)
        or not documents
        or not all(isinstance(item, str | dict) for item in documents)
    ):
        raise InvalidRequest(
            "'documents' must be a non-empty array of strings or objects", param="documents"
        )
    top_n = payload.get("top_n")
    if top_n is not None and (not _is_int(top_n) or top_n < 1):
        raise InvalidRequest("'top_n' must be a positive integer", param="top_n")
    flag = payload.get("return_documents")
    if flag is not None and not isinstance(flag, bool):
        raise InvalidRequest("'return_documents' must be a boolean", param="return_documents")
    if payload.get("stream"):
        raise InvalidRequest("rerank cannot be streamed", param="stream")


def _check_sampling(payload: dict[str, Any]) -> None:
    for name, low, high in (("temperature", 0, 2), ("top_p", 0, 1)):
        value = payload.get(name)
        if value is not None and (not _is_number(value) or not low <= value <= high):
            raise InvalidRequest(f"'{name}' must be a number from {low} to {high}", param=name)
    for name in ("max_tokens", "max_completion_tokens", "n", "seed"):
        value = payload.get(name)
        if value is not None and not _is_int(value):
            raise InvalidRequest(f"'{name}' must be an integer", param=name)
    for name in ("max_tokens", "max_completion_tokens", "n"):
        value = payload.get(name)
        if value is not None and value < 1:
            raise InvalidRequest(f"'{name}' must be at least 1", param=name)
    stop = payload.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise InvalidRequest("'stop' must be a string or an array of strings", param="stop")


def _check_tools(payload: dict[str, Any]) -> None:
    """Tools pass through: each must be an object with a string ``type`` (a function tool
    also a ``function.name``); other types (``custom``, built-ins) are the backend's to
    judge. ``tool_choice`` is a string or an object with a ``type`` (``function``,
    ``custom``, ``allowed_tools``...)."""
    tools = payload.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise InvalidRequest("'tools' must be an array", param="tools")
        if len(tools) > MAX_TOOLS:
            raise InvalidRequest(f"'tools' may list at most {MAX_TOOLS} tools", param="tools")
        for index, tool in enumerate(tools):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if not isinstance(kind, str) or not kind:
                raise InvalidRequest(
                    f"'tools[{index}]' must be an object with a 'type'", param=f"tools[{index}]"
                )
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            if kind == "function" and not isinstance(name, str):
                raise InvalidRequest(
                    f"'tools[{index}]' must be a function tool with a 'function.name' "
                    "(and 'parameters', if any, an object)",
                    param=f"tools[{index}]",
                )
    choice = payload.get("tool_choice")
    if choice is None or (isinstance(choice, str) and choice in _TOOL_CHOICES):
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    function = choice.get("function") if isinstance(choice, dict) else None
    named = isinstance(function, dict) and isinstance(function.get("name"), str)
    if not (named or (isinstance(kind, str) and kind and kind != "function")):
        raise InvalidRequest(
            "'tool_choice' must be 'none', 'auto', 'required', a named function or "
            "an object with a 'type'",
            param="tool_choice",
        )


def _text_or_tokens(value: Any) -> bool:
    if isinstance(value, str):
        return True
    if not isinstance(value, list):
        return False
    if all(isinstance(item, str) for item in value):
        return True
    if all(_is_int(item) for item in value):
        return True
    return all(isinstance(item, list) and all(_is_int(t) for t in item) for item in value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
