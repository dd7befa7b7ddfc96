"""What the faces that translate onto chat completions share (Anthropic Messages, Ollama).

Such a face checks its own request shape, builds a chat completions body from it, and
then takes the same path as ``POST /v1/chat/completions``: ``resolve`` the model,
``upstream_body`` (an alias's caps apply), one ``backend_call`` (admission, no redirects,
sanitised backend errors). The backend's answer is read here: a whole reply as strict
JSON, or a stream as parsed chunks, so a face only maps fields.

Rules for the stream reader (``chat_chunks``): only ``data:`` lines are read, one JSON
object each (strict JSON; an event is at most ``MAX_SSE_EVENT_BYTES``, as for the relay);
``data: [DONE]`` ends it; a backend's error event is raised as an ``UpstreamError`` with
its cleaned message; a stream that ends without ``[DONE]`` and without a finish reason is
an error ("ended the stream early"). Token counts the backend does not report are
estimated (``estimate_tokens``: about four characters a token); either way a face puts
the counts it answers with on the access record (``usage.tokens.charge``), so the usage
ledger and the key's token limits see every face alike.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ..errors import Forbidden, StrictJsonError, UnknownModel, UpstreamError
from ..routing.registry import Registry
from ..routing.router import Route, resolve
from ..routing.upstream import UpstreamCall, clean_message, split_events
from ..typedefs import ACCESS, REGISTRY
from ..usage import tokens
from ..wire import strict_json

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
CHARS_PER_TOKEN = tokens.CHARS_PER_TOKEN


def route_for(
    request: web.Request, model: str, capability: str, stream: bool, *, latest: bool = False
) -> Route:
    """Resolve ``model`` for ``capability`` and note it in the access record. With
    ``latest``, an Ollama-style ``name:latest`` the gateway does not know is tried as
    ``name``."""
    record = request[ACCESS]
    record.asked_for(model, stream)
    registry = request.app[REGISTRY].current
    if latest:
        route = resolve_latest(registry, model, capability)
    else:
        route = resolve(registry, model, capability)
    record.backend = route.backend.name
    return route


def resolve_latest(registry: Registry, model: str, capability: str) -> Route:
    """``resolve``; a ``name:latest`` the gateway does not know is tried as ``name`` (also
    when the key's scope names only ``name``; the 403 stays when neither is allowed)."""
    try:
        return resolve(registry, model, capability)
    except (UnknownModel, Forbidden) as exc:
        if not (model.endswith(":latest") and len(model) > len(":latest")):
            raise
        if isinstance(exc, Forbidden) and _known(registry, model):
            raise
        try:
            return resolve(registry, model.removesuffix(":latest"), capability)
        except Forbidden:
            if isinstance(exc, Forbidden):
                raise exc from None  # the model asked for, not the one tried
            raise


def _known(registry: Registry, model: str) -> bool:
    return model in registry.config.aliases or any(
        backend.serves(model) for backend in registry.backends.values()
    )


async def read_reply(call: UpstreamCall, backend: str) -> dict[str, Any]:
    """The backend's whole JSON reply, which must be an object."""
    _, reply = await call.read_json()
    if not isinstance(reply, dict):
        raise UpstreamError(f"backend '{backend}' returned an unexpected reply")
    return reply


def first_choice(reply: dict[str, Any], backend: str) -> dict[str, Any]:
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamError(f"backend '{backend}' returned a reply without choices")
    return choices[0]


def require_stream(call: UpstreamCall, backend: str) -> None:
    """Raise a 502 unless the backend's reply is an event stream: a face calls it before it
    starts its own stream, so a whole JSON reply to a stream request is an error response
    in the face's shape, not a 200 that fails at once."""
    content_type = call.response.headers.get("Content-Type", "")
    if not content_type.startswith("text/event-stream"):
        raise UpstreamError(f"backend '{backend}' did not answer with a stream")


async def chat_chunks(call: UpstreamCall, backend: str) -> AsyncIterator[dict[str, Any]]:
    """The chat completion chunks of a streamed reply, parsed, until ``[DONE]``."""
    require_stream(call, backend)
    finished = False
    async for run in call.event_runs():
        for event in split_events(run):
            for line in event.splitlines():
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    await call.finish()  # so the backend connection is reused
                    return
                chunk = _parse_chunk(data, backend)
                error = chunk.get("error")
                if error:
                    raise _mid_stream_error(error, backend)
                choices = chunk.get("choices")
                if isinstance(choices, list) and choices and isinstance(choices[0], dict):
                    finished = finished or bool(choices[0].get("finish_reason"))
                yield chunk
    if not finished:
        raise UpstreamError(f"backend '{backend}' ended the stream early")


def _mid_stream_error(error: Any, backend: str) -> UpstreamError:
    """A backend's error event as the gateway's error: only its message, cleaned here
    (``clean_message``), whatever the event framer cleaned or missed (an error on a later
    ``data:`` line of an event, a key spelled with an escape)."""
    message = error.get("message") if isinstance(error, dict) else error
    cleaned = clean_message(message) if isinstance(message, str) else None
    if cleaned is None:
        return UpstreamError(f"backend '{backend}' reported an error mid-stream")
    return UpstreamError(f"backend '{backend}' reported an error mid-stream: {cleaned}")


def _parse_chunk(data: bytes, backend: str) -> dict[str, Any]:
    try:
        chunk = strict_json.loads_reply(data)
    except StrictJsonError:
        chunk = None
    if not isinstance(chunk, dict):
        raise UpstreamError(f"backend '{backend}' sent a stream event that is not a JSON object")
    return chunk


def delta_of(chunk: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The first choice's delta and finish reason (an empty delta for a usage chunk; a
    text completion chunk's ``text`` as the delta's ``content``)."""
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return {}, None
    choice = choices[0]
    delta = choice.get("delta")
    if delta is None and isinstance(choice.get("text"), str):
        delta = {"content": choice["text"]}
    finish = choice.get("finish_reason")
    return (delta if isinstance(delta, dict) else {}), (finish if isinstance(finish, str) else None)


def usage_of(reply: dict[str, Any]) -> tuple[int, int] | None:
    """``(prompt_tokens, completion_tokens)`` when the backend reported them."""
    return tokens.counts(reply.get("usage"))


def text_of(content: Any) -> str:
    """The text of a chat ``content`` (a string or text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def estimate_tokens(chat: dict[str, Any]) -> int:
    """A rough input token count for a chat body: its text at ~4 characters a token, a
    few tokens per message, the tools' JSON, and a flat 256 per image."""
    chars = 0
    count = 0
    for message in chat.get("messages") or []:
        count += 4
        content = message.get("content")
        chars += len(text_of(content))
        if isinstance(content, list):
            count += 256 * sum(
                1 for part in content if isinstance(part, dict) and part.get("type") == "image_url"
            )
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            chars += len(function.get("name") or "") + len(function.get("arguments") or "")
    if chat.get("tools"):
        chars += len(json.dumps(chat["tools"]))
    return max(1, count + tokens.estimate(chars))


def tokens_for_chars(chars: int) -> int:
    return tokens.estimate(chars)


def image_media_type(data: bytes) -> str:
    """The image type from its leading bytes (PNG when unknown: the model decides)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/png"


def tool_arguments(arguments: Any, backend: str) -> dict[str, Any]:
    """A tool call's arguments as an object: both faces hand them to clients parsed, and
    a backend's string that is not a JSON object is the backend's fault (502)."""
    if isinstance(arguments, dict):
        return arguments
    if arguments in (None, ""):
        return {}
    try:
        parsed = strict_json.loads(arguments) if isinstance(arguments, str) else None
    except StrictJsonError:
        parsed = None
    if not isinstance(parsed, dict):
        raise UpstreamError(
            f"backend '{backend}' returned tool arguments that are not a JSON object"
        )
    return parsed
