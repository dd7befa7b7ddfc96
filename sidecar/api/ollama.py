"""The Ollama face (``/api/...``), for apps that speak only Ollama's API.

Under the same bearer token as ``/v1`` (``middleware.bearer``); errors are Ollama's
``{"error": "..."}`` (``faces``). Models are the gateway's names (as ``/v1/models`` lists
them); a ``name:latest`` the gateway does not know is tried as ``name``.

- ``GET /api/version``: ``{"version"}``, the Ollama API version this face follows
  (``OLLAMA_API_VERSION``).
- ``GET /api/tags``: every chat or embeddings model and alias the calling key may use
  (as ``/v1/models``), with placeholder size, digest and details (the gateway has no
  model files).
- ``POST /api/show``: details and ``capabilities`` (``completion`` and ``tools`` for chat,
  ``embedding``) of one model; a model the key may not use is a 403, as on every route.
- ``POST /api/chat`` and ``POST /api/generate``: translated onto chat completions and
  routed like ``/v1/chat/completions``. ``messages`` keep their roles; ``images``
  (base64) become ``image_url`` parts; an assistant's ``tool_calls`` (arguments as
  objects) get ids, and a ``tool`` message is matched to the call it answers by
  ``tool_name`` (else in order). ``options``: ``temperature``, ``top_p``, ``seed``,
  ``stop``, ``presence_penalty``, ``frequency_penalty``, and ``num_predict`` (when
  positive) as ``max_tokens``; other options are not sent. ``format``: ``"json"`` as a
  JSON-object response format, a schema as a JSON-schema one. ``generate`` sends
  ``system`` and ``prompt`` (with its ``images``) as two messages; an empty prompt only
  checks the model is routed (``done_reason`` ``load``, or ``unload`` with
  ``keep_alive: 0``); ``suffix`` (fill-in-the-middle) is refused. A ``raw`` prompt is
  already templated: it goes to ``/v1/completions`` as is (the model needs the
  ``completions`` capability).
- ``POST /api/embed`` (and the older ``/api/embeddings``): onto ``/v1/embeddings``.

A request holds at most ``MAX_MESSAGES`` messages and ``MAX_IMAGES`` images in all (each
image becomes a data URL part on the event loop: a body of a million tiny ones held it
for seconds).

``stream`` defaults to true, as in Ollama: NDJSON (``application/x-ndjson``), one object
per line, content as it comes, tool calls in one line once their arguments are whole,
then a last line with ``done: true``, ``done_reason``, ``prompt_eval_count`` /
``eval_count`` (the backend's usage, or estimates) and durations in nanoseconds. An error
mid-stream is a last line ``{"error": "..."}``; so is a backend that sends more than
``MAX_TOOL_CALLS`` tool calls or ``MAX_HELD_BYTES`` of their arguments (held until the
end). A backend that answers a stream request with a whole JSON reply is a 502. The
counts a reply states are the ones the usage ledger records and the key's token limits
charge (``usage.tokens.charge``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ..auth import allows_model
from ..auth.scope import current as current_key
from ..auth.scope import require_endpoint
from ..errors import (
    BackendNotReady,
    CapabilityNotSupported,
    GatewayError,
    InvalidRequest,
    UpstreamError,
)
from ..routing.call import backend_call
from ..routing.router import upstream_body
from ..routing.upstream import MAX_UPSTREAM_BODY, UpstreamCall
from ..typedefs import ACCESS, REGISTRY, REQUEST_ID
from ..usage import tokens
from ..wire.body import read_json_object
from ..wire.model_name import check_model_name, stream_field
from . import translate, validation

log = logging.getLogger("gateway.api")

OLLAMA_API_VERSION = "0.12.0"
MAX_MESSAGES = 10_000  # in one request, as the Anthropic face allows
MAX_IMAGES = 500  # in one request: each becomes a data URL part, on the event loop
MAX_TOOL_CALLS = 128  # in one streamed reply, as the Responses API's stream allows
MAX_HELD_BYTES = MAX_UPSTREAM_BODY  # tool call arguments held until a stream ends
NDJSON = "application/x-ndjson"
_ROLES = {"system", "user", "assistant", "tool"}
_PASSED_OPTIONS = ("temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty")
_DETAILS = {
    "parent_model": "",
    "format": "",
    "family": "",
    "families": [],
    "parameter_size": "",
    "quantization_level": "",
}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": OLLAMA_API_VERSION})


async def tags(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY].current
    modified = datetime.fromtimestamp(registry.loaded_at, UTC).isoformat().replace("+00:00", "Z")
    names: list[str] = []
    for backend in registry.backends.values():
        for model_id in backend.model_ids:
            if any(backend.supports(model_id, c) for c in ("chat", "embeddings")):
                names.append(model_id)
    names.extend(registry.config.aliases)
    names = [name for name in names if allows_model(name)]  # a key sees only its models
    models = [
        {
            "name": name,
            "model": name,
            "modified_at": modified,
            "size": 0,
            "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": _DETAILS,
        }
        for name in dict.fromkeys(names)
    ]
    return web.json_response({"models": models})


async def show(request: web.Request) -> web.Response:
    payload = await read_json_object(request)
    model = check_model_name(payload.get("model") or payload.get("name"))
    registry = request.app[REGISTRY].current
    capabilities: list[str] = []
    unsupported: GatewayError | None = None
    for capability, names in (("chat", ["completion", "tools"]), ("embeddings", ["embedding"])):
        try:
            translate.resolve_latest(registry, model, capability)
        except BackendNotReady:
            pass  # known and routed, only not ready right now
        except CapabilityNotSupported as exc:
            unsupported = exc
            continue
        capabilities.extend(names)
    if not capabilities and unsupported is not None:
        raise unsupported
    return web.json_response(
        {
            "modelfile": "",
            "parameters": "",
            "template": "",
            "details": _DETAILS,
            "model_info": {},
            "capabilities": capabilities,
            "modified_at": datetime.fromtimestamp(registry.loaded_at, UTC)
            .isoformat()
            .replace("+00:00", "Z"),
        }
    )


# -- chat and generate --------------------------------------------------------------------


async def chat(request: web.Request) -> web.StreamResponse:
    started = time.monotonic_ns()
    payload = await read_json_object(request)
    model = check_model_name(payload.get("model"))
    stream = stream_field(payload, default=True)
    body = {"model": model, "messages": _messages(payload.get("messages"))}
    _options(payload, body)
    validation.check_chat(body)
    return await _run_chat(request, model, body, stream, started, "message")


async def generate(request: web.Request) -> web.StreamResponse:
    started = time.monotonic_ns()
    payload = await read_json_object(request)
    model = check_model_name(payload.get("model"))
    stream = stream_field(payload, default=True)
    prompt = payload.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise InvalidRequest("'prompt' must be a string", param="prompt")
    if payload.get("suffix"):
        raise InvalidRequest(
            "'suffix' (fill-in-the-middle) is not supported by this gateway", param="suffix"
        )
    if not prompt and not payload.get("images"):
        translate.route_for(request, model, "chat", stream, latest=True)
        reason = "unload" if payload.get("keep_alive") in (0, "0", "0s") else "load"
        return web.json_response(
            {
                "model": model,
                "created_at": _now(),
                "response": "",
                "done": True,
                "done_reason": reason,
            }
        )
    if payload.get("raw") is True:
        return await _raw(request, payload, model, prompt or "", stream, started)
    messages: list[dict[str, Any]] = []
    system = payload.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise InvalidRequest("'system' must be a string", param="system")
        if system:
            messages.append({"role": "system", "content": system})
    user = {"role": "user", "content": prompt or "", "images": payload.get("images")}
    messages.append(_message(user, 0, "images", []))
    body = {"model": model, "messages": messages}
    _options(payload, body)
    validation.check_chat(body)
    return await _run_chat(request, model, body, stream, started, "response")


async def _raw(
    request: web.Request,
    payload: dict[str, Any],
    model: str,
    prompt: str,
    stream: bool,
    started: int,
) -> web.StreamResponse:
    """``raw`` generate: the prompt is already templated, so it goes to the text completions
    endpoint as is (no chat template applied twice) — and a key must be allowed that
    endpoint, as it must for ``/v1/completions``."""
    key = current_key()
    if key is not None:
        require_endpoint(key, "/v1/completions")
    for name in ("images", "format", "system"):
        if payload.get(name):
            raise InvalidRequest(f"'{name}' cannot be combined with 'raw'", param=name)
    body: dict[str, Any] = {"model": model, "prompt": prompt}
    _options(payload, body)
    validation.check_completion(body)
    return await _run_chat(request, model, body, stream, started, "response", completion=True)


def _messages(messages: Any) -> list[dict[str, Any]]:
    if messages is None:
        raise InvalidRequest("'messages' is required", param="messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise InvalidRequest(f"'messages' may hold at most {MAX_MESSAGES}", param="messages")
    images = sum(
        len(message["images"])
        for message in messages
        if isinstance(message, dict) and isinstance(message.get("images"), list)
    )
    if images > MAX_IMAGES:
        raise InvalidRequest(
            f"'messages' may hold at most {MAX_IMAGES} images in all", param="messages"
        )
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (tool name, call id) asked for and not answered
    for index, message in enumerate(messages):
        out.append(_message(message, index, f"messages[{index}].images", pending))
    return out


def _message(
    message: Any, index: int, images_param: str, pending: list[tuple[str, str]]
) -> dict[str, Any]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise InvalidRequest(f"'{where}' must be an object", param=where)
    role = message.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        raise InvalidRequest(
            f"'{where}.role' must be one of {', '.join(sorted(_ROLES))}", param=f"{where}.role"
        )
    content = message.get("content")
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise InvalidRequest(f"'{where}.content' must be a string", param=f"{where}.content")
    out: dict[str, Any] = {"role": role, "content": content}
    images = message.get("images")
    if images:
        if isinstance(images, list) and len(images) > MAX_IMAGES:
            raise InvalidRequest(
                f"'{images_param}' may hold at most {MAX_IMAGES} images", param=images_param
            )
        if not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
            raise InvalidRequest(
                f"'{images_param}' must be an array of base64 images", param=images_param
            )
        parts: list[dict[str, Any]] = [{"type": "text", "text": content}] if content else []
        parts.extend(
            {"type": "image_url", "image_url": {"url": _data_url(image, images_param)}}
            for image in images
        )
        out["content"] = parts
    calls = message.get("tool_calls")
    if role == "assistant" and calls:
        out["tool_calls"] = _tool_calls(calls, index, pending)
    if role == "tool":
        out["tool_call_id"] = _answered(message.get("tool_name"), index, pending)
    return out


def _data_url(image: str, param: str) -> str:
    if image.startswith("data:"):
        return image
    try:
        head = base64.b64decode(image[:24], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"'{param}' must hold base64 images", param=param) from None
    return f"data:{translate.image_media_type(head)};base64,{image}"


def _tool_calls(calls: Any, index: int, pending: list[tuple[str, str]]) -> list[dict[str, Any]]:
    where = f"messages[{index}].tool_calls"
    if not isinstance(calls, list):
        raise InvalidRequest(f"'{where}' must be an array", param=where)
    out = []
    for position, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(function, dict) or not isinstance(name, str):
            raise InvalidRequest(
                f"'{where}[{position}]' must be {{function: {{name, arguments}}}}", param=where
            )
        arguments = function.get("arguments")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict | str):
            raise InvalidRequest(f"'{where}[{position}].function.arguments' must be an object")
        given = call.get("id")
        call_id = given if isinstance(given, str) and given else f"call_{index}_{position}"
        pending.append((name, call_id))
        out.append(
            {
                "id": call_id,
                "type": "function",
                "function": {
                    "name": name,
                    "arguments": arguments
                    if isinstance(arguments, str)
                    else json.dumps(arguments, ensure_ascii=False),
                },
            }
        )
    return out


def _answered(name: Any, index: int, pending: list[tuple[str, str]]) -> str:
    """The id of the call a tool message answers: the first unanswered one of that name."""
    for position, (asked, call_id) in enumerate(pending):
        if not isinstance(name, str) or asked == name:
            del pending[position]
            return call_id
    return f"call_{index}_result"


def _options(payload: dict[str, Any], body: dict[str, Any]) -> None:
    options = payload.get("options")
    if options is not None:
        if not isinstance(options, dict):
            raise InvalidRequest("'options' must be an object", param="options")
        for name in _PASSED_OPTIONS:
            if options.get(name) is not None:
                body[name] = options[name]
        predict = options.get("num_predict")
        if predict is not None:
            if not isinstance(predict, int) or isinstance(predict, bool):
                raise InvalidRequest("'options.num_predict' must be an integer", param="options")
            if predict > 0:
                body["max_tokens"] = predict
    if "tools" in payload and payload["tools"] is not None:
        body["tools"] = payload["tools"]
    form = payload.get("format")
    if form == "json":
        body["response_format"] = {"type": "json_object"}
    elif isinstance(form, dict):
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": form},
        }
    elif form not in (None, ""):
        raise InvalidRequest("'format' must be \"json\" or a JSON schema", param="format")


class _Timing:
    def __init__(self, started: int) -> None:
        self.started = started
        self.first: int | None = None

    def token(self) -> None:
        if self.first is None:
            self.first = time.monotonic_ns()

    def stats(self, counts: tuple[int, int]) -> dict[str, Any]:
        now = time.monotonic_ns()
        first = self.first or now
        return {
            "total_duration": now - self.started,
            "load_duration": 0,
            "prompt_eval_count": counts[0],
            "prompt_eval_duration": first - self.started,
            "eval_count": counts[1],
            "eval_duration": now - first,
        }


async def _run_chat(
    request: web.Request,
    model: str,
    body: dict[str, Any],
    stream: bool,
    started: int,
    field: str,
    *,
    completion: bool = False,
) -> web.StreamResponse:
    """Route ``body`` like a chat completion (or, with ``completion``, a text completion);
    answer as ``/api/chat`` (``field`` is ``message``) or ``/api/generate`` (``response``)."""
    capability, endpoint = (
        ("completions", "completions") if completion else ("chat", "chat/completions")
    )
    route = translate.route_for(request, model, capability, stream, latest=True)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    upstream = upstream_body(body, route)
    headers = route.headers()
    name = route.backend.name
    timing = _Timing(started)
    try:
        async with backend_call(
            route.backend, capability, endpoint, upstream, request[REQUEST_ID]
        ) as call:
            if stream:
                return await _stream(request, call, headers, model, body, field, timing)
            reply = await translate.read_reply(call, name)
            timing.token()
            choice = translate.first_choice(reply, name)
            message = {"content": choice.get("text")} if completion else choice.get("message")
            if not isinstance(message, dict):
                raise UpstreamError(f"backend '{name}' returned a choice without a message")
            text = translate.text_of(message.get("content"))
            calls = _reply_calls(message.get("tool_calls"), name)
            counts = tokens.charge(
                request[ACCESS],
                translate.usage_of(reply),
                lambda: (_estimate(body), tokens.estimate(len(text))),
            )
            out: dict[str, Any] = {"model": model, "created_at": _now()}
            out.update(_content(field, text, calls, _thinking(message)))
            out.update({"done": True, "done_reason": _done_reason(choice.get("finish_reason"))})
            out.update(timing.stats(counts))
            return web.json_response(out, headers=headers)
    except GatewayError as exc:
        exc.headers.update(headers)
        raise


def _estimate(body: dict[str, Any]) -> int:
    if "prompt" in body:
        return max(1, translate.tokens_for_chars(len(body["prompt"])))
    return translate.estimate_tokens(body)


def _content(
    field: str, text: str, calls: list[dict[str, Any]], thinking: str | None
) -> dict[str, Any]:
    if field == "response":
        out: dict[str, Any] = {"response": text}
        if thinking:
            out["thinking"] = thinking
        return out
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = calls
    return {"message": message}


def _thinking(message: dict[str, Any]) -> str | None:
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _done_reason(finish: Any) -> str:
    return "length" if finish == "length" else "stop"


def _reply_calls(calls: Any, backend: str) -> list[dict[str, Any]]:
    out = []
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise UpstreamError(f"backend '{backend}' returned a malformed tool call")
        out.append(
            {
                "function": {
                    "name": function["name"],
                    "arguments": translate.tool_arguments(function.get("arguments"), backend),
                }
            }
        )
    return out


def _line(data: dict[str, Any]) -> bytes:
    """One NDJSON line: UTF-8, or ``\\uXXXX`` escapes when the backend's text holds a
    lone surrogate UTF-8 cannot carry (as the whole JSON reply escapes it)."""
    text = json.dumps(data, ensure_ascii=False)
    try:
        return text.encode() + b"\n"
    except UnicodeEncodeError:
        return json.dumps(data).encode() + b"\n"


async def _stream(
    request: web.Request,
    call: UpstreamCall,
    headers: dict[str, str],
    model: str,
    body: dict[str, Any],
    field: str,
    timing: _Timing,
) -> web.StreamResponse:
    record = request[ACCESS]
    backend = headers["X-Backend-Used"]
    translate.require_stream(call, backend)  # else a 502 before any event
    response = web.StreamResponse(
        status=200, headers={"Content-Type": NDJSON, "Cache-Control": "no-cache", **headers}
    )
    await response.prepare(request)
    calls = _Calls(backend)
    finish: str | None = None
    usage: tuple[int, int] | None = None
    chars = 0
    try:
        async for chunk in translate.chat_chunks(call, backend):
            usage = translate.usage_of(chunk) or usage
            delta, reason = translate.delta_of(chunk)
            finish = reason or finish
            pieces = delta.get("tool_calls")
            for piece in pieces if isinstance(pieces, list) else []:
                if isinstance(piece, dict):
                    chars += calls.gather(piece)
            text = delta.get("content")
            thinking = _thinking(delta)
            if (isinstance(text, str) and text) or thinking:
                timing.token()
                record.first_token()
                text = text if isinstance(text, str) else ""
                chars += len(text) + len(thinking or "")
                line: dict[str, Any] = {"model": model, "created_at": _now()}
                line.update(_content(field, text, [], thinking))
                line["done"] = False
                await _write(response, record, _line(line))
        if calls.held:
            timing.token()
            record.first_token()
            done_calls = calls.whole()
            line = {"model": model, "created_at": _now()}
            line.update(_content(field, "", done_calls, None))
            line["done"] = False
            await _write(response, record, _line(line))
    except GatewayError as exc:
        log.warning("stream %s failed: %s", request[REQUEST_ID], exc.message)
        await _write(response, record, _line({"error": exc.message}))
        return response
    finally:  # also when the client went away: what was generated counts
        tokens.charge(record, usage, lambda: (_estimate(body), tokens.estimate(chars)))
    counts = record.prompt_tokens, record.completion_tokens
    last: dict[str, Any] = {"model": model, "created_at": _now()}
    last.update(_content(field, "", [], None))
    last.update({"done": True, "done_reason": _done_reason(finish)})
    last.update(timing.stats(counts))
    await _write(response, record, _line(last))
    await response.write_eof()
    return response


class _Call:
    __slots__ = ("name", "pieces")

    def __init__(self) -> None:
        self.name = ""
        self.pieces: list[str] = []  # the arguments as they came, joined once at the end


class _Calls:
    """The streamed tool calls being assembled, by index, until the stream ends (Ollama
    sends each call whole). Arguments are held as pieces (joined once, never copied per
    delta), at most ``MAX_TOOL_CALLS`` calls and ``MAX_HELD_BYTES`` of arguments: a
    backend that sends more ends the stream with an error line (``UpstreamError``)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.held: dict[int, _Call] = {}
        self.size = 0

    def gather(self, piece: dict[str, Any]) -> int:
        """Add one tool call delta; the characters of arguments it added."""
        position = piece.get("index", 0)
        if not isinstance(position, int):
            position = 0
        call = self.held.get(position)
        if call is None:
            if len(self.held) >= MAX_TOOL_CALLS:
                raise UpstreamError(
                    f"backend '{self.backend}' sent more than {MAX_TOOL_CALLS} tool calls"
                    " in one reply"
                )
            call = self.held[position] = _Call()
        function = piece.get("function")
        if not isinstance(function, dict):
            return 0
        name, arguments = function.get("name"), function.get("arguments")
        if isinstance(name, str) and not call.name:
            call.name = name
        if not isinstance(arguments, str) or not arguments:
            return 0
        self.size += len(arguments.encode("utf-8", "surrogatepass"))  # lone ones pass
        if self.size > MAX_HELD_BYTES:
            raise UpstreamError(
                f"backend '{self.backend}' sent tool call arguments larger than"
                f" {MAX_HELD_BYTES // (1024 * 1024)} MiB, the most the gateway holds"
            )
        call.pieces.append(arguments)
        return len(arguments)

    def whole(self) -> list[dict[str, Any]]:
        """The calls in index order, arguments parsed (``translate.tool_arguments``)."""
        return [
            {
                "function": {
                    "name": call.name,
                    "arguments": translate.tool_arguments("".join(call.pieces), self.backend),
                }
            }
            for _, call in sorted(self.held.items())
        ]


async def _write(response: web.StreamResponse, record: Any, data: bytes) -> None:
    await response.write(data)
    record.bytes_out += len(data)


# -- embeddings ---------------------------------------------------------------------------


async def embed(request: web.Request) -> web.Response:
    started = time.monotonic_ns()
    payload = await read_json_object(request)
    model = check_model_name(payload.get("model"))
    value = payload.get("input")
    if isinstance(value, str):
        inputs = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        inputs = value
    else:
        raise InvalidRequest(
            "'input' must be a string or a non-empty array of strings", param="input"
        )
    dimensions = payload.get("dimensions")
    vectors, prompt_tokens = await _embeddings(request, model, inputs, dimensions)
    return web.json_response(
        {
            "model": model,
            "embeddings": vectors,
            "total_duration": time.monotonic_ns() - started,
            "load_duration": 0,
            "prompt_eval_count": prompt_tokens,
        }
    )


async def embeddings(request: web.Request) -> web.Response:
    """The older single-prompt endpoint: ``{"embedding": [...]}``."""
    payload = await read_json_object(request)
    model = check_model_name(payload.get("model"))
    prompt = payload.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise InvalidRequest("'prompt' must be a string", param="prompt")
    if not prompt:
        translate.route_for(request, model, "embeddings", False, latest=True)
        return web.json_response({"embedding": []})
    vectors, _ = await _embeddings(request, model, [prompt], None)
    return web.json_response({"embedding": vectors[0]})


async def _embeddings(
    request: web.Request, model: str, inputs: list[str], dimensions: Any
) -> tuple[list[list[float]], int]:
    body: dict[str, Any] = {"model": model, "input": inputs, "encoding_format": "float"}
    if dimensions is not None:
        body["dimensions"] = dimensions
    validation.check_embeddings(body)
    route = translate.route_for(request, model, "embeddings", False, latest=True)
    headers = route.headers()
    name = route.backend.name
    try:
        async with backend_call(
            route.backend,
            "embeddings",
            "embeddings",
            upstream_body(body, route),
            request[REQUEST_ID],
        ) as call:
            reply = await translate.read_reply(call, name)
    except GatewayError as exc:
        exc.headers.update(headers)
        raise
    data = reply.get("data")
    if not isinstance(data, list) or len(data) != len(inputs):
        raise UpstreamError(f"backend '{name}' returned a reply without one embedding per input")
    ordered = sorted(data, key=lambda item: _embedding_index(item, name))
    vectors = []
    for item in ordered:
        vector = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(vector, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in vector
        ):
            raise UpstreamError(f"backend '{name}' returned an embedding that is not numbers")
        vectors.append(vector)
    prompt, _ = tokens.charge(
        request[ACCESS],
        translate.usage_of(reply),
        lambda: (sum(tokens.estimate(len(text)) for text in inputs), 0),
    )
    return vectors, prompt


def _embedding_index(item: Any, backend: str) -> int:
    """Where an embedding goes (0 when absent or null); an index that is not an integer is the
    backend's fault (502), not one to sort strings and numbers by."""
    index = item.get("index") if isinstance(item, dict) else None
    if index is None:
        return 0
    if not isinstance(index, int) or isinstance(index, bool):
        raise UpstreamError(f"backend '{backend}' returned an embedding with a malformed index")
    return index
