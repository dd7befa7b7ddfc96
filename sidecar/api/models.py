"""The model lifecycle for admins: what is loaded, load and unload, and a live event feed.

Every route needs an admin token (``GATEWAY_ADMIN_TOKENS``; 403 otherwise).
``GET /v1/gateway/models`` lists each model the gateway loads on demand with its
backend's state; ``POST /v1/gateway/models/{id}/load`` and ``.../unload`` act on the
backend serving ``id`` (a listed model id, which may hold ``/`` and ``:``, or a backend
name) and answer once it is done; with the optional body ``{"wait": false}`` they answer
202 at once and the events tell the rest. ``GET /v1/gateway/events`` is a server-sent event
stream: ``load``, ``ready``, ``unload``, ``eviction`` and ``crash``, each a JSON object
in ``data`` with its type as the SSE ``event``; a comment line every
``HEARTBEAT_S`` keeps proxies from closing an idle stream. A subscriber that falls
behind is dropped (``routing.lifecycle.events``), never waited for.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..auth import caller
from ..errors import Forbidden, InvalidRequest, NotFound
from ..routing.lifecycle import LifecycleManager
from ..typedefs import MODELS
from ..wire.body import read_json_object

HEARTBEAT_S = 15.0


def _admin(request: web.Request) -> None:
    if not caller(request)[1]:
        raise Forbidden("the model lifecycle needs an admin token (GATEWAY_ADMIN_TOKENS)")


async def list_models(request: web.Request) -> web.Response:
    _admin(request)
    rows = await request.app[MODELS].rows()
    return web.json_response({"object": "list", "data": rows})


async def load(request: web.Request) -> web.Response:
    return await _act(request, "load")


async def unload(request: web.Request) -> web.Response:
    return await _act(request, "unload")


async def _act(request: web.Request, action: str) -> web.Response:
    """Load or unload the backend serving ``id``; at once (202) with ``{"wait": false}``."""
    wait = await _wait(request)
    _admin(request)
    manager = request.app[MODELS]
    model = request.match_info["id"]
    target = manager.find(model)
    if not wait:
        (manager.start_load if action == "load" else manager.start_unload)(target)
        return web.json_response(await _row(manager, model), status=202)
    await (manager.load if action == "load" else manager.unload)(target)
    return web.json_response(await _row(manager, model))


async def _wait(request: web.Request) -> bool:
    """The optional body's ``wait`` (default true); a body must be strict JSON."""
    if not request.body_exists:
        return True
    options = await read_json_object(request)
    wait = options.get("wait", True)
    if not isinstance(wait, bool):
        raise InvalidRequest("wait must be true or false", param="wait")
    return wait


async def _row(manager: LifecycleManager, model: str) -> dict[str, Any]:
    row = await manager.row(model)
    if row is None:
        raise NotFound(f"no model the gateway loads is named '{model}'", code="model_not_found")
    return {"object": "gateway.model", **row}


async def events(request: web.Request) -> web.StreamResponse:
    _admin(request)
    subscriber = request.app[MODELS].hub.subscribe()
    try:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        await response.write(b": model lifecycle events\n\n")
        while not subscriber.ended:
            event = await subscriber.next(HEARTBEAT_S)
            if subscriber.dropped:
                break
            if event is None:
                await response.write(b": keep-alive\n\n")
                continue
            data = json.dumps(event, separators=(",", ":"))
            await response.write(
                f"id: {event['id']}\nevent: {event['type']}\ndata: {data}\n\n".encode()
            )
        return response
    finally:
        subscriber.close()
