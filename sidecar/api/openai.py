"""The OpenAI-compatible endpoints: models, chat, completions, embeddings, rerank.

Each handler follows the gateway's request flow (middleware has already given the
request an id and checked the bearer token): parse and check the body, resolve the model
to a backend, then ``backend_call``: take an admission slot, call the backend, relay the
answer. The slot and the upstream connection are released when the ``async with``
ends, so an error, a client that goes away, or the end of a stream frees them exactly once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, TypeVar, cast

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from ..errors import GatewayError, UnknownModel, UpstreamError, error_envelope
from ..observability.access_log import AccessRecord
from ..routing.call import backend_call
from ..routing.registry import Backend, Registry
from ..routing.router import allowed, resolve, upstream_body
from ..routing.upstream import ClientGone, UpstreamCall, split_events
from ..typedefs import ACCESS, REGISTRY, REQUEST_ID
from ..usage import tokens
from ..wire.body import read_json_object
from ..wire.model_name import model_field, stream_field
from . import validation

log = logging.getLogger("gateway.api")

_DONE = b"data: [DONE]\n\n"
_CLIENT_BUFFER = 256 * 1024  # unsent bytes for a client before reading the backend pauses
_T = TypeVar("_T")
_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}

Checker = Callable[[dict[str, Any]], None]


async def list_models(request: web.Request) -> web.Response:
    """Every routed model once by its id (the first backend in file order that serves
    it), as ``backend/model`` too when more than one backend serves it, then the
    aliases; each entry says its ``capabilities``. A key limited to some models sees
    only those."""
    registry = request.app[REGISTRY].current
    entries = _model_entries(registry)
    data = [entry for name, entry in entries.items() if allowed(registry, name)]
    return web.json_response({"object": "list", "data": data})


async def retrieve_model(request: web.Request) -> web.Response:
    """``GET /v1/models/{id}``: one entry of the list; ids may hold ``/`` and ``:``."""
    model = request.match_info["model"]
    registry = request.app[REGISTRY].current
    entry = _model_entries(registry).get(model) if allowed(registry, model) else None
    if entry is None and allowed(registry, model):
        prefix, _, rest = model.partition("/")
        backend = registry.get(prefix)
        if backend is not None and rest and backend.serves(rest):
            entry = _model_entry(
                model, int(registry.loaded_at), backend.name, backend.capabilities(rest)
            )
    if entry is None:
        raise UnknownModel(
            f"The model '{model[:128]}' does not exist or is not routed by this gateway; "
            "GET /v1/models lists what is available",
            param="model",
        )
    return web.json_response(entry)


def _model_entries(registry: Registry) -> dict[str, dict[str, Any]]:
    created = int(registry.loaded_at)
    entries: dict[str, dict[str, Any]] = {}
    servers: dict[str, list[Backend]] = {}
    for backend in registry.backends.values():
        for model_id in backend.model_ids:
            servers.setdefault(model_id, []).append(backend)
    for model_id, backends in servers.items():
        first = backends[0]
        entries[model_id] = _model_entry(
            model_id, created, first.name, first.capabilities(model_id)
        )
    for model_id, backends in servers.items():
        if len(backends) > 1:
            for backend in backends:
                name = f"{backend.name}/{model_id}"
                entries.setdefault(
                    name, _model_entry(name, created, backend.name, backend.capabilities(model_id))
                )
    for alias in registry.config.aliases.values():
        if alias.name not in entries:
            target = registry.get(alias.backend)
            capabilities = target.capabilities(alias.model) if target else frozenset()
            entries[alias.name] = _model_entry(alias.name, created, alias.backend, capabilities)
    return entries


def _model_entry(
    model_id: str, created: int, owner: str, capabilities: frozenset[str]
) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": owner,
        "capabilities": sorted(capabilities),
    }


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _relay(request, "chat", "chat/completions", validation.check_chat)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _relay(request, "completions", "completions", validation.check_completion)


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _relay(request, "embeddings", "embeddings", validation.check_embeddings)


async def rerank(request: web.Request) -> web.StreamResponse:
    """``/v1/rerank`` (and ``/v1/reranking``, llama.cpp's name): the Jina/Cohere shape
    (``{model, query, documents, top_n}`` to ``{results: [{index, relevance_score}]}``),
    passed to ``{url}/rerank``."""
    return await _relay(request, "rerank", "rerank", validation.check_rerank)


async def _relay(
    request: web.Request, capability: str, endpoint: str, check: Checker
) -> web.StreamResponse:
    payload = await read_json_object(request)
    model = model_field(payload)
    stream = stream_field(payload)
    check(payload)
    record = request[ACCESS]
    record.asked_for(model, stream)
    route = resolve(request.app[REGISTRY].current, model, capability)
    record.backend = route.backend.name
    upstream_payload = upstream_body(payload, route)
    strip_usage = stream and _ask_for_usage(upstream_payload, capability)
    headers = route.headers()
    early = _EarlyStream(request, headers, strip_usage) if stream else None
    try:
        async with backend_call(
            route.backend,
            capability,
            endpoint,
            upstream_payload,
            request[REQUEST_ID],
            on_head=early.on_head if early is not None else None,
        ) as call:
            if early is not None:
                return await _relay_stream(request, call, headers, payload, early)
            body, parsed = await call.read_json()
            if not isinstance(parsed, dict):
                raise UpstreamError(f"backend '{route.backend.name}' returned an unexpected reply")
            _count_reply(record, payload, parsed)
            return web.Response(body=body, content_type="application/json", headers=headers)
    except GatewayError as exc:
        started = await early.prepared() if early is not None else None
        if started is not None:  # begun in the head's callback: its 200 is out
            log.warning("stream %s failed: %s", request[REQUEST_ID], exc.message)
            record.stream_failed = True
            await _end_stream_with_error(started[0], exc)
            return started[0]
        exc.headers.update(headers)
        raise
    finally:
        if early is not None and not early.entered:
            early.abandon(record, payload)  # started, but the handler never got to it


def _ask_for_usage(upstream: dict[str, Any], capability: str) -> bool:
    """Ask the backend for the usage chunk (``stream_options.include_usage``); True when
    the client did not ask for it, so the gateway removes it from what the client gets."""
    if capability not in ("chat", "completions"):
        return False
    options = upstream.get("stream_options")
    if options is None:
        upstream["stream_options"] = {"include_usage": True}
        return True
    if not isinstance(options, dict) or options.get("include_usage") is True:
        return False
    upstream["stream_options"] = {**options, "include_usage": True}
    return True


def _count_reply(record: AccessRecord, payload: dict[str, Any], reply: dict[str, Any]) -> None:
    found = tokens.reply_counts(reply)
    if found is None:
        record.prompt_tokens = tokens.estimate(tokens.prompt_chars(payload))
        record.completion_tokens = tokens.estimate(tokens.reply_chars(reply))
        record.usage_estimated = True
    else:
        record.prompt_tokens, record.completion_tokens = found


async def _relay_stream(
    request: web.Request,
    call: UpstreamCall,
    headers: dict[str, str],
    payload: dict[str, Any],
    early: _EarlyStream,
) -> web.StreamResponse:
    """Relay the events as the network delivers them (``UpstreamCall.relay_events``:
    pushed from the read callback straight into the client's connection, see
    ``_EventRelay``), started by ``_EarlyStream`` when it could. The usage chunk is the
    last data event before ``[DONE]``: only that tail is parsed (``tokens.tail_usage``),
    at ``[DONE]``; when the gateway asked for it on the client's behalf, a run holding
    ``[]`` (the chunk's empty ``choices``) is looked at too, so the chunk is removed even
    when it comes alone."""
    early.entered = True
    record = request[ACCESS]
    relay = early.relay
    if relay is not None:
        response = early.response
        assert response is not None  # prepared in the head's callback
    else:
        started = await early.prepared()
        if started is not None:  # prepared in the head's callback (or in a task from there)
            response, writer = started
        else:
            content_type = call.response.headers.get("Content-Type", "")
            if not content_type.startswith("text/event-stream"):
                raise UpstreamError(
                    f"backend '{headers['X-Backend-Used']}' did not answer with a stream"
                )
            response = web.StreamResponse(status=200, headers={**_SSE_HEADERS, **headers})
            prepared = await response.prepare(request)
            assert prepared is not None  # prepared once, here
            writer = prepared
        relay = _EventRelay(request, response, writer, call, early.strip_usage)
    try:
        await call.relay_events(relay.deliver)
        if not relay.finished:
            raise UpstreamError(f"backend '{headers['X-Backend-Used']}' ended the stream early")
        await relay.drained()
        await response.write_eof()
        await call.finish()  # so the backend connection is reused
    except ClientGone:
        pass  # the client went away: nothing left to tell it
    except GatewayError as exc:
        log.warning("stream %s failed: %s", request[REQUEST_ID], exc.message)
        record.stream_failed = True
        await relay.drained()
        await _end_stream_with_error(response, exc)
    finally:
        relay.close()
        _estimate_unless_counted(record, relay, payload)
    return response


def _estimate_unless_counted(
    record: AccessRecord, relay: _EventRelay, payload: dict[str, Any]
) -> None:
    if not relay.counted:  # the backend reported nothing (or the stream broke): estimate
        record.prompt_tokens = tokens.estimate(tokens.prompt_chars(payload))
        record.completion_tokens = tokens.estimate_stream_completion(
            record.bytes_out, relay.event_size
        )
        record.usage_estimated = True


class _EarlyStream:
    """A stream's start from the read callback that completes the backend's response head
    (``backend_call``'s ``on_head``), before the handler's task runs again: on a 200
    event stream the client's response is prepared and the relay started there, so the
    first token does not wait behind the loop's queue (in a burst, every other request's
    work of that turn). Anything else (an error status, a body that is not a stream, a
    client already gone) is left to the handler, as before. aiohttp's ``prepare`` does
    not wait on anything for a stream; if it ever does, it goes on in a task that the
    handler waits for. The app's ``on_response_prepare`` handlers then run in that
    callback, outside the handler's task and its context: they use only the request and
    the response (``middleware.prepare_headers``)."""

    __slots__ = (
        "_headers",
        "_request",
        "_writer",
        "entered",
        "preparing",
        "relay",
        "response",
        "strip_usage",
    )

    def __init__(self, request: web.Request, headers: dict[str, str], strip_usage: bool) -> None:
        self._request = request
        self._headers = headers
        self.strip_usage = strip_usage
        self.entered = False  # the handler took the stream over (``_relay_stream``)
        self.response: web.StreamResponse | None = None
        self._writer: AbstractStreamWriter | None = None
        self.relay: _EventRelay | None = None
        self.preparing: asyncio.Future[AbstractStreamWriter | None] | None = None

    def on_head(self, call: UpstreamCall) -> None:
        if call.status != 200:
            return
        if not call.response.headers.get("Content-Type", "").startswith("text/event-stream"):
            return
        request = self._request
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        response = web.StreamResponse(status=200, headers={**_SSE_HEADERS, **self._headers})
        preparing = response.prepare(request)
        try:
            pending = preparing.send(None)
        except StopIteration as done:
            writer = done.value
        except Exception:  # the client went away under it: the handler finds out
            return
        else:
            self.response = response
            rest = cast("Awaitable[AbstractStreamWriter | None]", _resumed(preparing, pending))
            self.preparing = asyncio.ensure_future(rest)
            return
        assert writer is not None
        self.response, self._writer = response, writer
        relay = self.relay = _EventRelay(request, response, writer, call, self.strip_usage)
        call.start_events(relay.deliver)

    async def prepared(self) -> tuple[web.StreamResponse, AbstractStreamWriter] | None:
        """The client's response and its writer when the head's callback prepared it
        (waiting for the rest of a prepare that went on in a task); None otherwise."""
        if self.response is None:
            return None
        if self.preparing is not None:
            self._writer = await self.preparing
        assert self._writer is not None
        return self.response, self._writer

    def abandon(self, record: AccessRecord, payload: dict[str, Any]) -> None:
        """The handler left before it took the stream over (cancelled, say, as its client
        went away): stop what the head's callback started and count what was sent."""
        if self.preparing is not None and not self.preparing.done():
            self.preparing.cancel()
        if self.relay is not None:
            self.relay.close()
            _estimate_unless_counted(record, self.relay, payload)


@types.coroutine
def _resumed(coro: Coroutine[Any, Any, _T], pending: Any) -> Generator[Any, Any, _T]:
    """The rest of ``coro``, which ran its first step outside a task and stopped on
    ``pending``: the task waits for ``pending``, then drives ``coro`` on."""
    while True:
        try:
            yield pending
        except BaseException as exc:  # thrown into the task while it waited
            try:
                pending = coro.throw(exc)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            continue
        return (yield from coro.__await__())


class _EventRelay:
    """What happens to each run of events on its way to the client, in the event loop's
    read callback: find ``[DONE]`` and the usage chunk, then write the run to the
    client's connection as one HTTP chunk (the response's head was sent by ``prepare``;
    ``write_eof`` ends the chunked body). When the client reads slower than the backend
    writes, reading the backend pauses until the client's buffer drains."""

    __slots__ = (
        "_call",
        "_chunked",
        "_drain",
        "_record",
        "_transport",
        "_writer",
        "counted",
        "event_size",
        "finished",
        "previous",
        "strip_usage",
    )

    def __init__(
        self,
        request: web.Request,
        response: web.StreamResponse,
        writer: AbstractStreamWriter,
        call: UpstreamCall,
        strip_usage: bool,
    ) -> None:
        self._record = request[ACCESS]
        self._transport = request.transport
        self._writer = writer
        self._call = call
        self._chunked = response.headers.get("Transfer-Encoding") == "chunked"
        self._drain: asyncio.Task[None] | None = None
        self.strip_usage = strip_usage
        self.finished = self.counted = False
        self.previous = b""
        self.event_size = 0

    def deliver(self, run: bytes) -> bool:
        record = self._record
        if record.ttft_ms is None:
            record.first_token()
        if b"[DONE]" in run:
            run, self.finished = _through_done(run)
            if not self.counted:
                run, found, self.event_size = tokens.tail_usage(run, self.strip_usage)
                if found is None and not self.event_size and self.previous:
                    _, found, self.event_size = tokens.tail_usage(self.previous, False)
                self.counted = _counted(record, found)
        elif self.strip_usage and b"[]" in run and not self.counted:
            run, found, _ = tokens.tail_usage(run, True)
            self.counted = _counted(record, found)
        if run:
            self._write(run)
            record.bytes_out += len(run)
            self.previous = run
        return self.finished

    def _write(self, run: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ClientGone
        transport.write(b"%x\r\n%b\r\n" % (len(run), run) if self._chunked else run)
        if self._drain is None and transport.get_write_buffer_size() > _CLIENT_BUFFER:
            self._call.response.pause()
            self._drain = asyncio.get_running_loop().create_task(self._resume_when_drained())

    async def _resume_when_drained(self) -> None:
        try:
            await self._writer.drain()
        except ConnectionError:
            pass  # the client went away: its handler ends on its next write
        finally:
            self._drain = None
            self._call.response.resume()

    async def drained(self) -> None:
        """Until what was written has left for the client (before the body ends)."""
        if self._drain is not None:
            await asyncio.shield(self._drain)

    def close(self) -> None:
        if self._drain is not None:
            self._drain.cancel()


def _counted(record: AccessRecord, found: tuple[int, int] | None) -> bool:
    if found is None:
        return False
    record.prompt_tokens, record.completion_tokens = found
    return True


def _through_done(run: bytes) -> tuple[bytes, bool]:
    """The events of ``run`` up to and including ``data: [DONE]``, and whether it is there."""
    if run == _DONE or (run.endswith(b"\n\n" + _DONE) and run.count(b"[DONE]") == 1):
        return run, True  # the usual end: [DONE] last, once, an event of its own
    kept = []
    for event in split_events(run):
        kept.append(event)
        if event.startswith((b"data: [DONE]", b"data:[DONE]")):
            return b"".join(kept), True
    return run, False


async def _end_stream_with_error(response: web.StreamResponse, exc: GatewayError) -> None:
    envelope = error_envelope(exc.message, exc.error_type, exc.param, exc.code)
    frame = b"data: " + json.dumps(envelope).encode() + b"\n\n"
    await response.write(frame + _DONE)
