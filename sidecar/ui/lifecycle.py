"""The model lifecycle on the status page: each model's state, and Load / Unload for admins.

``/ui/api/status`` carries ``models``: everyone sees each model the gateway loads on
demand with its backend and state (``unloaded``, ``loading``, ``loaded``, ``draining``,
``failed``), from what the gateway knows itself; an admin also sees since when it is
loaded, how long it has been idle, its memory, group, last load time and last error,
and the models of remote servers with load hooks (asked at most every poll, within the
lifecycle's probe timeout).

``POST /ui/api/models/{id}/load`` and ``.../unload`` (admin only: accounts on, an admin
session; behind the UI guard, so CSRF and same origin apply) start the action and answer
202 with the model's row at once; the page's polling shows how it goes. A body, when
sent, must be strict JSON: an empty object. An unknown model is a 404.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import Forbidden, InvalidRequest, NotFound
from ..typedefs import MODELS, SETTINGS, UI_USER
from ..wire.body import read_json_object

# What a user who is not an admin sees of a model.
PUBLIC_FIELDS = ("id", "backend", "state")
ADMIN_FIELDS = (
    *PUBLIC_FIELDS,
    "lifecycle",
    "loaded_since",
    "idle_s",
    "memory_mb",
    "reported_memory_mb",
    "group",
    "pinned",
    "last_load_s",
    "in_flight",
    "waiting",
    "error",
)


async def states(request: web.Request, admin: bool) -> list[dict[str, Any]]:
    """The models for ``/ui/api/status``: states for everyone, the rest for admins."""
    manager = request.app[MODELS]
    if not admin:  # what the gateway knows itself: a poll never makes it ask a server
        return [{field: row.get(field) for field in PUBLIC_FIELDS} for row in manager.models()]
    return [{field: row.get(field) for field in ADMIN_FIELDS} for row in await manager.rows()]


async def load(request: web.Request) -> web.Response:
    target = await _target(request)
    request.app[MODELS].start_load(target)
    return await _answer(request)


async def unload(request: web.Request) -> web.Response:
    target = await _target(request)
    request.app[MODELS].start_unload(target)
    return await _answer(request)


async def _target(request: web.Request) -> Any:
    if not request.app[SETTINGS].ui.accounts or not request[UI_USER].is_admin:
        raise Forbidden("Only admins load and unload models", code="admin_only")
    if request.body_exists and await read_json_object(request):
        raise InvalidRequest("this action takes no options; send {} or no body")
    return request.app[MODELS].find(request.match_info["id"])


async def _answer(request: web.Request) -> web.Response:
    model = request.match_info["id"]
    row = await request.app[MODELS].row(model)
    if row is None:
        raise NotFound(f"no model the gateway loads is named '{model}'", code="model_not_found")
    return web.json_response({field: row.get(field) for field in ADMIN_FIELDS}, status=202)
