"""The OpenAI-compatible endpoints: models, chat, completions, embeddings.

Each handler follows the gateway's request flow (middleware has already given the
request an id and checked the bearer token): parse and check the body, resolve the model
to a backend, then ``backend_call``: take an admission slot, call the backend, relay the
answer. The slot and the upstream connection are released when the ``async with``
ends, so an error, a client that goes away, or the end of a stream frees them exactly once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..auth import allows_model
from ..errors import GatewayError, UpstreamError, error_envelope
from ..routing.call import backend_call
from ..routing.router import resolve, upstream_body
from ..routing.upstream import UpstreamCall, split_events
from ..typedefs import ACCESS, REGISTRY, REQUEST_ID
from ..wire.body import read_json_object
from . import validation

log = logging.getLogger("gateway.api")

_DONE = b"data: [DONE]\n\n"
_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}

Checker = Callable[[dict[str, Any]], None]


async def list_models(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY].current
    created = int(registry.loaded_at)
    data: list[dict[str, Any]] = []
    seen: set[str] = set()
    for backend in registry.backends.values():
        for model_id in backend.model_ids:
            if model_id not in seen and allows_model(model_id):
                seen.add(model_id)
                data.append(_model_entry(model_id, created, backend.name))
    for alias in registry.config.aliases.values():
        if alias.name not in seen and allows_model(alias.name):
            seen.add(alias.name)
            data.append(_model_entry(alias.name, created, alias.backend))
    return web.json_response({"object": "list", "data": data})


def _model_entry(model_id: str, created: int, owner: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owner}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _relay(request, "chat", "chat/completions", validation.check_chat)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _relay(request, "completions", "completions", validation.check_completion)


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _relay(request, "embeddings", "embeddings", validation.check_embeddings)


async def _relay(
    request: web.Request, capability: str, endpoint: str, check: Checker
) -> web.StreamResponse:
    payload = await read_json_object(request)
    model = validation.require_model(payload)
    stream = validation.stream_flag(payload)
    check(payload)
    record = request[ACCESS]
    record.model = model if len(model) <= 128 else model[:128]
    record.stream = stream
    route = resolve(request.app[REGISTRY].current, model, capability)
    record.backend = route.backend.name
    upstream_payload = upstream_body(payload, route)
    headers = route.headers()
    try:
        async with backend_call(
            route.backend, capability, endpoint, upstream_payload, request[REQUEST_ID]
        ) as call:
            if stream:
                return await _relay_stream(request, call, headers)
            body, parsed = await call.read_json()
            if not isinstance(parsed, dict):
                raise UpstreamError(f"backend '{route.backend.name}' returned an unexpected reply")
            return web.Response(body=body, content_type="application/json", headers=headers)
    except GatewayError as exc:
        exc.headers.update(headers)
        raise


async def _relay_stream(
    request: web.Request, call: UpstreamCall, headers: dict[str, str]
) -> web.StreamResponse:
    content_type = call.response.headers.get("Content-Type", "")
    if not content_type.startswith("text/event-stream"):
        raise UpstreamError(f"backend '{headers['X-Backend-Used']}' did not answer with a stream")
    record = request[ACCESS]
    response = web.StreamResponse(status=200, headers={**_SSE_HEADERS, **headers})
    await response.prepare(request)
    finished = False
    try:
        async for run in call.event_runs():
            record.first_token()
            if b"[DONE]" in run:
                run, finished = _through_done(run)
            await response.write(run)
            record.bytes_out += len(run)
            if finished:
                await response.write_eof()
                await call.finish()  # so the backend connection is reused
                return response
        raise UpstreamError(f"backend '{headers['X-Backend-Used']}' ended the stream early")
    except GatewayError as exc:
        log.warning("stream %s failed: %s", request[REQUEST_ID], exc.message)
        await _end_stream_with_error(response, exc)
    return response


def _through_done(run: bytes) -> tuple[bytes, bool]:
    """The events of ``run`` up to and including ``data: [DONE]``, and whether it is there."""
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
