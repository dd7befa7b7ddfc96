"""Token counts of one request: from the backend's ``usage``, or estimated.

A JSON reply carries ``usage`` in its body. A stream carries it in one extra chunk when
the request said ``stream_options: {"include_usage": true}``: the last data event before
``data: [DONE]``, with ``"choices": []``. The gateway asks for that chunk on every
stream and removes it again when the client did not ask for it, so a client sees exactly
what it asked for. Only that tail is ever parsed (``tail_usage``), never every event.

When a backend reports nothing, the counts are estimated (about four characters a
token) and the record says so (``usage_estimated``).

Every face fills the access record the same way (``charge``): the OpenAI relay, the
Anthropic and Ollama faces, the Responses API (translated and passed through), rerank,
and audio replies that carry a ``usage``. ``counts`` reads the names each protocol uses:
``prompt_tokens``/``completion_tokens`` (chat), ``input_tokens``/``output_tokens`` (the
Responses API, audio), and a lone ``total_tokens`` (a reranker's: all of it is input).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..observability.access_log import AccessRecord
from ..routing.upstream import split_events

CHARS_PER_TOKEN = 4
MAX_COUNT = 2**31 - 1  # a backend's number beyond this is nonsense, not a count
_DONE_PREFIXES = (b"data: [DONE]", b"data:[DONE]")


def counts(usage: Any) -> tuple[int, int] | None:
    """``(prompt_tokens, completion_tokens)`` from a ``usage`` object, or None when it is
    not one (absent, null, or without a whole non-negative input count)."""
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" in usage:
        prompt, completion = usage["prompt_tokens"], usage.get("completion_tokens")
    elif "input_tokens" in usage:  # the Responses API's names
        prompt, completion = usage["input_tokens"], usage.get("output_tokens")
    elif "total_tokens" in usage:  # a reranker's (Jina's) one count: all of it read
        prompt, completion = usage["total_tokens"], 0
    else:
        return None
    if completion is None:
        completion = 0
    if not (_count(prompt) and _count(completion)):
        return None
    return prompt, completion


def charge(
    record: AccessRecord,
    found: tuple[int, int] | None,
    estimated: Callable[[], tuple[int, int]],
) -> tuple[int, int]:
    """Put a request's counts on its access record (the ledger's row and the key's token
    limits read them there): the backend's when it gave them, else ``estimated()`` (only
    called then), marked ``usage_estimated``. Returns the counts put there."""
    if found is None:
        found = estimated()
        record.usage_estimated = True
    record.prompt_tokens, record.completion_tokens = found
    return found


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
    """Characters of what the model reads: messages' text, a prompt, an embedding input,
    Responses ``instructions`` and ``input`` items, a rerank ``query`` and ``documents``."""
    total = 0
    messages = payload.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                total += _text_chars(message.get("content"))
    for field in ("prompt", "input", "instructions", "query", "documents"):
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


def _text_chars(value: Any, depth: int = 0) -> int:
    """Text in a string, or in a list of strings and parts (``text``, or an item's
    ``content`` one level down, as Responses input items hold it)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        total = 0
        for part in value:
            if isinstance(part, str):
                total += len(part)
            elif isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    total += len(part["text"])
                elif depth == 0 and "content" in part:
                    total += _text_chars(part["content"], 1)
        return total
    return 0


def output_chars(output: Any) -> int:
    """Characters of a Response's ``output`` items: message text, function call arguments."""
    total = 0
    for item in output if isinstance(output, list) else []:
        if not isinstance(item, dict):
            continue
        total += _text_chars(item.get("content"))
        arguments = item.get("arguments")
        if isinstance(arguments, str):
            total += len(arguments)
    return total


def estimate_stream_completion(bytes_out: int, event_size: int) -> int:
    """Tokens of a stream that reported none: servers send about one token per event, and
    the last data event's size stands for an event's (less the role and the stop chunks)."""
    if event_size <= 0:
        return estimate(bytes_out)
    return max(0, bytes_out // event_size - 2)
