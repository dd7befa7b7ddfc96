"""Token counts of one request: from the backend's ``usage``, or estimated.

A JSON reply carries ``usage`` in its body. A stream carries it in one extra chunk when
the request said ``stream_options: {"include_usage": true}``: the last data event before
``data: [DONE]``, with ``"choices": []``. The gateway asks for that chunk on every
stream and removes it again when the client did not ask for it, so a client sees exactly
what it asked for. Only that tail is ever parsed (``tail_usage``), never every event.

When a backend reports nothing, the counts are estimated (about four characters a
token) and the record says so (``usage_estimated``).
"""

from __future__ import annotations

import json
from typing import Any

from ..routing.upstream import split_events

CHARS_PER_TOKEN = 4
MAX_COUNT = 2**31 - 1  # a backend's number beyond this is nonsense, not a count
_DONE_PREFIXES = (b"data: [DONE]", b"data:[DONE]")


def counts(usage: Any) -> tuple[int, int] | None:
    """``(prompt_tokens, completion_tokens)`` from a ``usage`` object, or None when it is
    not one (absent, null, or without a whole non-negative ``prompt_tokens``)."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens", 0)
    if completion is None:
        completion = 0
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    if not (_count(prompt) and _count(completion)):
        return None
    return prompt, completion


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT


def reply_counts(reply: dict[str, Any]) -> tuple[int, int] | None:
    return counts(reply.get("usage"))


def tail_usage(run: bytes, strip: bool) -> tuple[bytes, tuple[int, int] | None, int]:
    """Look at the last data event of ``run`` (``data: [DONE]`` aside) for ``usage``.

    Returns the run to relay (without that event when ``strip`` and its ``choices`` are
    empty: the chunk the gateway asked for on the client's behalf), the counts found,
    and the size of the event looked at (0 when the run had no data event).
    """
    events = split_events(run)
    for index in range(len(events) - 1, -1, -1):
        event = events[index]
        if event.startswith(_DONE_PREFIXES):
            continue
        data = _data_line(event)
        if data is None:
            continue
        try:
            chunk = json.loads(data)
        except (ValueError, RecursionError):
            return run, None, len(event)
        if not isinstance(chunk, dict):
            return run, None, len(event)
        found = counts(chunk.get("usage"))
        if found is not None and strip and chunk.get("choices") == []:
            return b"".join(events[:index] + events[index + 1 :]), found, len(event)
        return run, found, len(event)
    return run, None, 0


def _data_line(event: bytes) -> bytes | None:
    for line in event.splitlines():
        if line.startswith(b"data:"):
            return line[5:]
    return None


def estimate(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN) if chars > 0 else 0


def prompt_chars(payload: dict[str, Any]) -> int:
    """Characters of what the model reads: messages' text, a prompt, an embedding input."""
    total = 0
    messages = payload.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                total += _text_chars(message.get("content"))
    for field in ("prompt", "input"):
        total += _text_chars(payload.get(field))
    return total


def reply_chars(reply: dict[str, Any]) -> int:
    """Characters of the generated text in a JSON reply (chat message or completion)."""
    total = 0
    choices = reply.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            message = choice.get("message")
            if isinstance(message, dict):
                total += _text_chars(message.get("content"))
                tool_calls = message.get("tool_calls")
                if isinstance(tool_calls, list):
                    total += len(json.dumps(tool_calls))
            total += _text_chars(choice.get("text"))
    return total


def _text_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        total = 0
        for part in value:
            if isinstance(part, str):
                total += len(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                total += len(part["text"])
        return total
    return 0


def estimate_stream_completion(bytes_out: int, event_size: int) -> int:
    """Tokens of a stream that reported none: servers send about one token per event, and
    the last data event's size stands for an event's (less the role and the stop chunks)."""
    if event_size <= 0:
        return estimate(bytes_out)
    return max(0, bytes_out // event_size - 2)
