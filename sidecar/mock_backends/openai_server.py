"""An OpenAI-compatible fake model server with deterministic answers.

Chat replies echo the last user message (one that starts with ``mock-reply:`` is answered
with the rest of it, verbatim, so a test can choose the reply; cut to ``max_tokens`` words,
finishing with ``length``); streams come in ``chunks`` pieces; a tool call
is made when tools are offered and ``tool_choice`` asks for one (``required`` or a named
function) or the last user message names an offered tool; embeddings are derived from a
hash of the input. Every request body it receives is kept in ``app[RECEIVED]`` so tests
can assert what the gateway sent upstream.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import json
import math
import re
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class MockBehaviour:
    chat_models: tuple[str, ...] = ("mock-llama",)
    embedding_models: tuple[str, ...] = ("mock-embed",)
    transcription_models: tuple[str, ...] = ("mock-whisper",)
    speech_models: tuple[str, ...] = ("mock-tts",)
    rerank_models: tuple[str, ...] = ("mock-rerank",)
    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    chunks: int = 4
    embedding_dim: int = 8
    report_usage: bool = True  # False: no ``usage`` in replies, no usage chunk in streams


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


BEHAVIOUR = web.AppKey("behaviour", MockBehaviour)
RECEIVED = web.AppKey("received", collections.deque[Received])  # the latest 1,000

_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def create_mock_app(behaviour: MockBehaviour | None = None) -> web.Application:
    app = web.Application()
    app[BEHAVIOUR] = behaviour or MockBehaviour()
    app[RECEIVED] = collections.deque(maxlen=1000)
    app.middlewares.append(_bad_input_is_400)
    app.router.add_get("/healthz", _ok)
    app.router.add_get("/readyz", _ok)
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_post("/v1/embeddings", _embeddings)
    from .audio import add_audio_routes  # audio uses this module's helpers

    add_audio_routes(app)
    return app


@web.middleware
async def _bad_input_is_400(request: web.Request, handler: Any) -> web.StreamResponse:
    """Odd but well-formed JSON gets a 400 like a real server's, not a crash."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
        return error_response(400, f"cannot handle this request: {type(exc).__name__}")


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _models(request: web.Request) -> web.Response:
    behaviour = request.app[BEHAVIOUR]
    ids = (
        behaviour.chat_models
        + behaviour.embedding_models
        + behaviour.transcription_models
        + behaviour.speech_models
        + behaviour.rerank_models
    )
    data = [{"id": i, "object": "model", "created": 0, "owned_by": "mock"} for i in ids]
    return web.json_response({"object": "list", "data": data})


async def _receive(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = await request.json()
    except ValueError:
        return error_response(400, "invalid JSON")
    if not isinstance(body, dict):
        return error_response(400, "body must be an object")
    request.app[RECEIVED].append(Received(request.path, body, dict(request.headers)))
    latency = request.app[BEHAVIOUR].latency_ms
    if latency:
        await asyncio.sleep(latency / 1000)
    return body


def sse(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def error_response(status: int, message: str) -> web.Response:
    envelope = {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    }
    return web.json_response(envelope, status=status)


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await _receive(request)
    if isinstance(body, web.Response):
        return body
    behaviour = request.app[BEHAVIOUR]
    model = body.get("model")
    if model not in behaviour.chat_models:
        return error_response(404, f"model {model!r} not found")
    messages = body.get("messages") or []
    tool_call = _tool_call_for(body, messages)
    reply = None if tool_call else _reply_text(messages)
    finish = "tool_calls" if tool_call else "stop"
    limit = body.get("max_tokens")
    if reply and isinstance(limit, int) and 0 < limit < len(reply.split()):
        reply, finish = " ".join(reply.split()[:limit]), "length"  # a word a token
    completion_id = (
        "chatcmpl-" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:24]
    )
    usage = _usage(json.dumps(messages), reply or json.dumps(tool_call))
    if body.get("stream"):
        return await _stream_chat(request, body, completion_id, reply, tool_call, usage, finish)
    message: dict[str, Any] = {"role": "assistant", "content": reply}
    if tool_call:
        message["tool_calls"] = [tool_call]
    return web.json_response(
        _with_usage(
            request,
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": finish,
                    }
                ],
            },
            usage,
        )
    )


async def _stream_chat(
    request: web.Request,
    body: dict[str, Any],
    completion_id: str,
    reply: str | None,
    tool_call: dict[str, Any] | None,
    usage: dict[str, int],
    finish: str = "stop",
) -> web.StreamResponse:
    behaviour = request.app[BEHAVIOUR]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    base = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body["model"],
    }

    async def send(delta: dict[str, Any], finish: str | None = None) -> None:
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        await response.write(sse(chunk))
        if behaviour.chunk_delay_ms:
            await asyncio.sleep(behaviour.chunk_delay_ms / 1000)

    await send({"role": "assistant", "content": ""})
    if tool_call:
        arguments = tool_call["function"]["arguments"]
        half = len(arguments) // 2
        head = {
            "index": 0,
            "id": tool_call["id"],
            "type": "function",
            "function": {"name": tool_call["function"]["name"], "arguments": arguments[:half]},
        }
        await send({"tool_calls": [head]})
        await send({"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]})
        await send({}, "tool_calls")
    else:
        for piece in split_chunks(reply or "", behaviour.chunks):
            await send({"content": piece})
        await send({}, finish)
    if _wants_usage(request, body):
        await response.write(sse({**base, "choices": [], "usage": usage}))
    await response.write(b"data: [DONE]\n\n")
    return response


async def _completions(request: web.Request) -> web.StreamResponse:
    body = await _receive(request)
    if isinstance(body, web.Response):
        return body
    behaviour = request.app[BEHAVIOUR]
    if body.get("model") not in behaviour.chat_models:
        return error_response(404, f"model {body.get('model')!r} not found")
    prompt = body.get("prompt")
    prompt_text = prompt if isinstance(prompt, str) else json.dumps(prompt)
    text = f"Mock completion of: {prompt_text}"
    base = {
        "id": "cmpl-" + hashlib.sha256(prompt_text.encode()).hexdigest()[:24],
        "object": "text_completion",
        "created": int(time.time()),
        "model": body["model"],
    }
    if not body.get("stream"):
        return web.json_response(
            _with_usage(
                request,
                {
                    **base,
                    "choices": [
                        {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
                    ],
                },
                _usage(prompt_text, text),
            )
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for piece in split_chunks(text, behaviour.chunks):
        chunk = {
            **base,
            "choices": [{"index": 0, "text": piece, "finish_reason": None, "logprobs": None}],
        }
        await response.write(sse(chunk))
        if behaviour.chunk_delay_ms:
            await asyncio.sleep(behaviour.chunk_delay_ms / 1000)
    final = {
        **base,
        "choices": [{"index": 0, "text": "", "finish_reason": "stop", "logprobs": None}],
    }
    tail = sse(final)
    if _wants_usage(request, body):
        tail += sse({**base, "choices": [], "usage": _usage(prompt_text, text)})
    await response.write(tail + b"data: [DONE]\n\n")
    return response


async def _embeddings(request: web.Request) -> web.Response:
    body = await _receive(request)
    if isinstance(body, web.Response):
        return body
    behaviour = request.app[BEHAVIOUR]
    if body.get("model") not in behaviour.embedding_models:
        return error_response(404, f"model {body.get('model')!r} not found")
    value = body.get("input")
    inputs = [value] if isinstance(value, str) or (value and isinstance(value[0], int)) else value
    dim = body.get("dimensions") or behaviour.embedding_dim
    if not isinstance(dim, int) or not 1 <= dim <= 4096:
        return error_response(400, "dimensions must be from 1 to 4096")
    data = []
    for index, item in enumerate(inputs or []):
        vector = embed(item if isinstance(item, str) else json.dumps(item), dim)
        if body.get("encoding_format") == "base64":
            encoded: Any = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
        else:
            encoded = vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(len(str(item).split()) for item in inputs or [])
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def embed(text: str, dim: int) -> list[float]:
    """A unit vector determined by the text alone."""
    raw = b""
    counter = 0
    while len(raw) < dim * 4:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [(b / 127.5) - 1.0 for b in raw[:dim]]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def split_chunks(text: str, count: int) -> list[str]:
    """``text`` cut into ``count`` pieces on word boundaries (fewer for short text)."""
    words = re.findall(r"\S+\s*", text)
    if not words:
        return [text]
    count = max(1, min(count, len(words)))
    size = math.ceil(len(words) / count)
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]


def _last_text(messages: list[Any], role: str) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == role:
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return content or ""
    return ""


REPLY_VERBATIM = "mock-reply:"


def _reply_text(messages: list[Any]) -> str:
    last = messages[-1] if messages else {}
    if isinstance(last, dict) and last.get("role") == "tool":
        return f"The tool returned: {last.get('content')}"
    asked = _last_text(messages, "user")
    if asked.startswith(REPLY_VERBATIM):
        return asked[len(REPLY_VERBATIM) :].lstrip(" \n")
    return f"Mock reply to: {asked}"


def _tool_call_for(body: dict[str, Any], messages: list[Any]) -> dict[str, Any] | None:
    tools = [
        t["function"] for t in body.get("tools") or [] if isinstance(t, dict) and "function" in t
    ]
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none":
        return None
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
        return None
    text = _last_text(messages, "user")
    chosen = None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        chosen = next((t for t in tools if t.get("name") == name), None)
    elif choice == "required":
        chosen = tools[0]
    else:
        chosen = next((t for t in tools if t.get("name") and t["name"] in text), None)
    if chosen is None:
        return None
    arguments = _arguments(text, chosen.get("parameters") or {})
    digest = hashlib.sha256(f"{chosen['name']}:{arguments}".encode()).hexdigest()[:24]
    return {
        "id": f"call_{digest}",
        "type": "function",
        "function": {"name": chosen["name"], "arguments": arguments},
    }


def _arguments(text: str, schema: dict[str, Any]) -> str:
    """A JSON object in the prompt if there is one, else values made from the schema."""
    match = _JSON_OBJECT.search(text)
    if match:
        try:
            parsed = json.loads(match.group(0))
            if isinstance(parsed, dict):
                return json.dumps(parsed)
        except ValueError:
            pass
    samples = {
        "string": "mock",
        "integer": 1,
        "number": 1.0,
        "boolean": True,
        "array": [],
        "object": {},
    }
    arguments = {}
    for name, spec in (schema.get("properties") or {}).items():
        if not isinstance(spec, dict):
            continue
        if spec.get("enum"):
            arguments[name] = spec["enum"][0]
        else:
            arguments[name] = samples.get(str(spec.get("type")), "mock")
    return json.dumps(arguments)


def _wants_usage(request: web.Request, body: dict[str, Any]) -> bool:
    """``stream_options.include_usage`` asked for the usage chunk (and this fake reports it)."""
    options = body.get("stream_options")
    asked = isinstance(options, dict) and options.get("include_usage") is True
    return asked and request.app[BEHAVIOUR].report_usage


def _with_usage(
    request: web.Request, reply: dict[str, Any], usage: dict[str, int]
) -> dict[str, Any]:
    return {**reply, "usage": usage} if request.app[BEHAVIOUR].report_usage else reply


def _usage(prompt: str, completion: str) -> dict[str, int]:
    prompt_tokens, completion_tokens = len(prompt.split()), len(completion.split())
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
