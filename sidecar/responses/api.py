"""``POST /v1/responses``, ``GET`` and ``DELETE /v1/responses/{id}``.

Routing: a model whose backend declares the ``responses`` capability gets the request as
it came (only the model name mapped, an alias's caps applied) on the ``responses``
admission slot, its answer or stream relayed as is; the backend keeps its own state (one
upstream credential for every token), so the gateway records only which token made each
id, and a ``previous_response_id`` another token made is refused as unknown. Any other
chat model gets the request translated (``translate``) on the ``chat`` slot, the answer
turned into a Response or the Responses stream (``events``), and, with ``store`` (the
default), stored for the calling token.

Errors before a stream starts are OpenAI error envelopes with their status, as on every
``/v1`` route; once it has started, a failure is an ``error`` event and
``response.failed``. A stored response that the storage cannot take is still returned,
marked ``"store": false``; a request that would store while writes are failing is a 503
before the backend is asked.

Token counts go on the access record either way (``usage.tokens.charge``), for the usage
ledger and the key's token limits: the chat ``usage`` of a translated answer, the
Response's ``usage`` (``input_tokens``/``output_tokens``) of a passed-through one (in a
stream, its final event's), estimated and marked when the backend gives none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from ..auth import caller
from ..errors import (
    CapabilityNotSupported,
    GatewayError,
    InvalidRequest,
    NotFound,
    StorageUnavailable,
    StrictJsonError,
    UpstreamError,
)
from ..routing.call import backend_call
from ..routing.router import Route, resolve, upstream_body
from ..routing.upstream import UpstreamCall, clean_message, split_events
from ..storage import RETRY_AFTER_S
from ..typedefs import ACCESS, REGISTRY, REQUEST_ID, RESPONSES, SETTINGS, STORAGE
from ..usage import tokens
from ..wire import strict_json
from ..wire.body import by_size, read_json_object, walk_body
from ..wire.model_name import model_field, stream_field
from .events import StreamTranslator, encode
from .store import ResponseStore
from .translate import (
    MAX_ID_CHARS,
    ResponsesRequest,
    new_id,
    output_from_chat,
    parse_request,
    usage_from_chat,
    valid_unicode,
)

log = logging.getLogger("gateway.responses")

_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


async def create(request: web.Request) -> web.StreamResponse:
    payload = await read_json_object(request)
    model = model_field(payload)
    stream = stream_field(payload)
    record = request[ACCESS]
    record.asked_for(model, stream)
    route = _route(request, model)
    record.backend = route.backend.name
    headers = route.headers()
    try:
        if route.capability == "responses":
            return await _pass_through(request, route, payload, stream, headers)
        parsed = await walk_body(request, parse_request, payload, model, stream)
        return await _translated(request, route, parsed, headers)
    except GatewayError as exc:
        exc.headers.update(headers)
        raise


def _route(request: web.Request, model: str) -> Route:
    """The model's backend with native Responses support, else its chat backend."""
    registry = request.app[REGISTRY].current
    try:
        return resolve(registry, model, "responses")
    except CapabilityNotSupported:
        return resolve(registry, model, "chat")


async def retrieve(request: web.Request) -> web.Response:
    found = await _stored(request).get(*_owned_id(request))
    if found is None:
        raise _not_found("response_id")
    return web.json_response(found.response)


async def delete(request: web.Request) -> web.Response:
    owner, response_id = _owned_id(request)
    if not await _stored(request).delete(owner, response_id):
        raise _not_found("response_id")
    return web.json_response({"id": response_id, "object": "response", "deleted": True})


def _stored(request: web.Request) -> ResponseStore:
    return request.app[RESPONSES]


def _owned_id(request: web.Request) -> tuple[str, str]:
    """The caller's token name and the id asked for (one too long to exist: no id)."""
    owner, _ = caller(request)
    response_id = request.match_info["response_id"]
    return owner or "", response_id if len(response_id) <= MAX_ID_CHARS else ""


def _not_found(param: str) -> NotFound:
    return NotFound(
        "No stored response has this id for this token (it may have expired, or was made"
        " with store=false)",
        param=param,
    )


# -- translated onto chat completions ------------------------------------------------------


async def _translated(
    request: web.Request, route: Route, parsed: ResponsesRequest, headers: dict[str, str]
) -> web.StreamResponse:
    store = _stored(request)
    owner = caller(request)[0] or ""
    history: list[dict[str, Any]] = []
    context_size = 0
    if parsed.previous_response_id is not None:
        previous = await store.get(owner, parsed.previous_response_id)
        if previous is None:
            raise _not_found("previous_response_id")
        history, context_size = previous.conversation(), previous.size
    if not history and not parsed.items:
        raise InvalidRequest("'input' holds no message to answer", param="input")
    keep = parsed.store and store.enabled
    if keep:
        limit = store.settings.max_record_bytes
        if context_size + (request.content_length or 0) > limit:
            raise InvalidRequest(
                f"this conversation would be larger than a stored response may be ({limit}"
                " bytes); start a new one, or send store=false",
                param="previous_response_id" if context_size else "input",
            )
        if not request.app[STORAGE].state.writable:
            raise StorageUnavailable(
                "The gateway cannot store responses right now (its storage is failing);"
                " try again later, or send store=false",
                retry_after=RETRY_AFTER_S,
            )
    body = upstream_body(parsed.chat_body(history), route)
    response_id = new_id("resp")
    created_at = int(time.time())

    def build(status: str, output: list[dict[str, Any]], usage: Any = None, **kw: Any) -> Any:
        return parsed.response(response_id, created_at, status, output, usage, **kw)

    async def save(response: dict[str, Any]) -> bool:
        if not keep:
            return False
        record = {"context": history, "input": list(parsed.items), "response": response}
        try:
            stored = await store.put(owner, response_id, created_at, record)
        except StorageUnavailable:
            return False  # reported to the storage monitor; the answer still goes out
        if not stored:
            log.warning("response %s not stored: larger than a record may be", response_id)
        return stored

    async with backend_call(
        route.backend, "chat", "chat/completions", body, request[REQUEST_ID]
    ) as call:
        if parsed.stream:
            return await _translated_stream(
                request, call, StreamTranslator(build), save, headers, body
            )
        raw, answer = await call.read_json()
    reply = await by_size(len(raw), valid_unicode, raw, answer, route.backend.name)
    output, incomplete = output_from_chat(reply, route.backend.name)
    tokens.charge(
        request[ACCESS],
        tokens.counts(reply.get("usage")),
        lambda: _estimated(body, output),
    )
    response = build(
        "incomplete" if incomplete else "completed",
        output,
        usage_from_chat(reply.get("usage")),
        incomplete=incomplete,
    )
    response["store"] = await save(response)
    return web.json_response(response, headers=headers)


async def _start_stream(
    request: web.Request, call: UpstreamCall, headers: dict[str, str]
) -> web.StreamResponse:
    """The client's 200 event stream, once the backend's reply is one (else a 502)."""
    if not call.response.headers.get("Content-Type", "").startswith("text/event-stream"):
        raise UpstreamError(f"backend '{headers['X-Backend-Used']}' did not answer with a stream")
    response = web.StreamResponse(status=200, headers={**_SSE_HEADERS, **headers})
    await response.prepare(request)
    return response


async def _translated_stream(
    request: web.Request,
    call: UpstreamCall,
    translator: StreamTranslator,
    save: Any,
    headers: dict[str, str],
    body: dict[str, Any],
) -> web.StreamResponse:
    backend = headers["X-Backend-Used"]
    response = await _start_stream(request, call, headers)
    record = request[ACCESS]
    await _write(response, record, translator.start())
    try:
        done = False
        async for data in _chunks(call, backend):
            if data is None:
                done = True
                break
            record.first_token()
            await _write(response, record, translator.feed(data))
        if not done and translator.finish_reason is None:
            raise UpstreamError(f"backend '{backend}' ended the stream early")
        if done:
            await call.finish()  # so the backend connection is reused
        closing = translator.finish()
        final = translator.result()
        final["store"] = await save(final)
        await _write(response, record, closing + translator.completed(final))
    except GatewayError as exc:
        log.warning("stream %s failed: %s", request[REQUEST_ID], exc.message)
        await _write(response, record, translator.failed(exc.message, exc.code))
    finally:  # also when the client went away: what was generated counts
        tokens.charge(
            record, tokens.counts(translator.usage), lambda: _estimated(body, translator.output)
        )
    await response.write_eof()
    return response


async def _chunks(call: UpstreamCall, backend: str) -> AsyncIterator[dict[str, Any] | None]:
    """The chat stream's chunks, parsed; ``None`` for ``[DONE]``. A backend's error event
    (cleaned upstream) or a chunk that is not JSON is an ``UpstreamError``."""
    async for event in call.events():
        data = _data(event)
        if data is None:
            continue
        if data == b"[DONE]":
            yield None
            return
        try:
            chunk = valid_unicode(data, strict_json.loads_reply(data), backend)
        except StrictJsonError:
            raise UpstreamError(
                f"backend '{backend}' sent a stream event that is not JSON"
            ) from None
        if not isinstance(chunk, dict):
            continue
        error = chunk.get("error")
        if error:
            message = error.get("message") if isinstance(error, dict) else None
            cleaned = clean_message(message) if isinstance(message, str) else None
            raise UpstreamError(f"backend '{backend}' failed mid-stream: {cleaned or 'an error'}")
        yield chunk


def _data(event: bytes) -> bytes | None:
    for line in event.splitlines():
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None


def _estimated(body: dict[str, Any], output: Any) -> tuple[int, int]:
    """Counts for a backend that reported none: the request's text and the output's."""
    return tokens.estimate(tokens.prompt_chars(body)), tokens.estimate(tokens.output_chars(output))


async def _write(response: web.StreamResponse, record: Any, data: bytes) -> None:
    if data:
        await response.write(data)
        record.bytes_out += len(data)


# -- passed through to a backend with native support ---------------------------------------


async def _pass_through(
    request: web.Request,
    route: Route,
    payload: dict[str, Any],
    stream: bool,
    headers: dict[str, str],
) -> web.StreamResponse:
    store = _stored(request)
    owner = caller(request)[0] or ""
    previous = payload.get("previous_response_id")
    if previous is not None and not (
        isinstance(previous, str)
        and len(previous) <= MAX_ID_CHARS
        and await store.owns(owner, previous)
    ):
        raise _not_found("previous_response_id")
    body = _capped({**payload, "model": route.upstream_model}, route)

    async def own(response_id: Any) -> None:
        if isinstance(response_id, str) and 0 < len(response_id) <= MAX_ID_CHARS:
            try:
                await store.own(owner, response_id)
            except StorageUnavailable:
                log.warning("could not record the owner of response %s", response_id)

    async with backend_call(
        route.backend, "responses", "responses", body, request[REQUEST_ID]
    ) as call:
        if stream:
            return await _relay_stream(request, call, headers, payload, own)
        raw, parsed = await call.read_json()
        if not isinstance(parsed, dict):
            raise UpstreamError(f"backend '{route.backend.name}' returned an unexpected reply")
        tokens.charge(
            request[ACCESS],
            tokens.counts(parsed.get("usage")),
            lambda: _estimated(payload, parsed.get("output")),
        )
        await own(parsed.get("id"))
        return web.Response(body=raw, content_type="application/json", headers=headers)


def _capped(body: dict[str, Any], route: Route) -> dict[str, Any]:
    """An alias's caps, in the Responses API's terms."""
    alias = route.alias
    if alias is None:
        return body
    if not alias.tools and body.get("tools"):
        raise InvalidRequest(f"model '{alias.name}' does not accept tools", param="tools")
    if alias.max_tokens_cap is not None:
        asked = body.get("max_output_tokens")
        body["max_output_tokens"] = min(
            asked if isinstance(asked, int) and asked > 0 else alias.max_tokens_cap,
            alias.max_tokens_cap,
        )
    if alias.temperature_cap is not None:
        asked = body.get("temperature")
        default = min(1.0, alias.temperature_cap)
        body["temperature"] = min(
            asked if isinstance(asked, int | float) else default, alias.temperature_cap
        )
    return body


async def _relay_stream(
    request: web.Request,
    call: UpstreamCall,
    headers: dict[str, str],
    payload: dict[str, Any],
    own: Callable[[Any], Awaitable[None]],
) -> web.StreamResponse:
    """Relay the events as they come. The counts are in the last event's Response
    (``response.completed``, ``.incomplete`` or ``.failed``): only a run naming one of
    those is parsed (``_final_response``), never every event."""
    response = await _start_stream(request, call, headers)
    record = request[ACCESS]
    final: dict[str, Any] | None = None
    try:
        owned = False
        async for run in call.event_runs():
            record.first_token()
            if not owned and (created := _created_id(run)) is not None:
                owned = True
                await own(created)
            if final is None and any(mark in run for mark in _FINAL_MARKS):
                final = _final_response(run)
            await _write(response, record, run)
    except GatewayError as exc:
        log.warning("stream %s failed: %s", request[REQUEST_ID], exc.message)
        event = {
            "type": "error",
            "sequence_number": 0,
            "code": exc.code,
            "message": exc.message,
            "param": None,
        }
        await _write(response, record, encode(event))
    finally:  # also when the client went away: what was relayed counts
        tokens.charge(
            record,
            tokens.counts(final.get("usage")) if final is not None else None,
            lambda: _relayed_estimate(payload, final, record.bytes_out),
        )
    await response.write_eof()
    return response


_FINAL_TYPES = frozenset({"response.completed", "response.incomplete", "response.failed"})
_FINAL_MARKS = tuple(kind.encode() for kind in _FINAL_TYPES)


def _final_response(run: bytes) -> dict[str, Any] | None:
    """The Response of the run's last event when that is the stream's final one."""
    for event in reversed(split_events(run)):
        data = _data(event)
        if data is None or data == b"[DONE]":
            continue
        try:
            parsed = strict_json.loads_reply(data)
        except StrictJsonError:
            return None
        if not isinstance(parsed, dict) or parsed.get("type") not in _FINAL_TYPES:
            return None
        found = parsed.get("response")
        return found if isinstance(found, dict) else None
    return None


def _relayed_estimate(
    payload: dict[str, Any], final: dict[str, Any] | None, bytes_out: int
) -> tuple[int, int]:
    if final is not None:
        return _estimated(payload, final.get("output"))
    # No final Response (the stream broke): the bytes relayed, as text, bound the output.
    return tokens.estimate(tokens.prompt_chars(payload)), tokens.estimate(bytes_out)


def _created_id(run: bytes) -> str | None:
    """The response id in a ``response.created`` event of ``run``, if there is one."""
    for event in run.split(b"\n\n"):
        data = _data(event)
        if data is None or b"response.created" not in data:
            continue
        try:
            parsed = strict_json.loads_reply(data)
        except StrictJsonError:
            continue
        if isinstance(parsed, dict) and parsed.get("type") == "response.created":
            inner = parsed.get("response")
            found = inner.get("id") if isinstance(inner, dict) else None
            return found if isinstance(found, str) else None
    return None


# -- the store's life ----------------------------------------------------------------------


async def store_lifecycle(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: open the store, prune it in the background, close it at the end."""
    settings = app[SETTINGS]
    store = ResponseStore(settings.responses_db_path, settings.responses, app[STORAGE])
    await store.open()
    app[RESPONSES] = store
    task = asyncio.create_task(store.prune_forever()) if store.enabled else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await store.close()
