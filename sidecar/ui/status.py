"""``/ui/status``: the backends' health for everyone, the rest for admins.

The page polls ``GET /ui/api/status`` every few seconds (no CDN, no long-lived
connection to hold). Everyone who may use the UI sees each backend's name and health
state; an admin (accounts on, ``is_admin``) also sees per capability what is in flight
against the limit and queued, each backend's last probe error, and the config's last
reload result (its error text included, as ``/v1/gateway/status`` shows it behind the
token). With accounts off there is no admin, so the page shows health only. The models
the gateway loads on demand come with their states (``ui.lifecycle``).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from ..routing.registry import Backend
from ..typedefs import REGISTRY, RELOADER, SETTINGS, UI_USER
from . import lifecycle
from .pages import model_choices


def is_admin(request: web.Request) -> bool:
    return request.app[SETTINGS].ui.accounts and request[UI_USER].is_admin


async def status(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY].current
    admin = is_admin(request)
    backends = [_backend(backend, admin) for backend in registry.backends.values()]
    answer: dict[str, Any] = {"admin": admin, "at": round(time.time(), 3), "backends": backends}
    answer["models"] = await lifecycle.states(request, admin)
    if admin:
        last = request.app[RELOADER].last
        answer["config"] = {
            "digest": registry.config.digest[:12],
            "loaded_at": round(registry.loaded_at, 3),
            "last_reload": {**last.public(), "error": last.error},
        }
    return web.json_response(answer)


def _backend(backend: Backend, admin: bool) -> dict[str, Any]:
    health = backend.health
    entry: dict[str, Any] = {"name": backend.name, "health": health.state}
    if admin:
        entry["checked_at"] = health.checked_at
        entry["last_error"] = health.error
        entry["capabilities"] = {
            capability: {
                "in_flight": stats.in_flight,
                "limit": stats.limit,
                "queued": stats.queued,
                "queue_max": stats.queue_max,
            }
            for capability, stats in (
                (name, admission.stats()) for name, admission in backend.admissions.items()
            )
        }
    return entry


async def models(request: web.Request) -> web.Response:
    """The chat picker's models, each with whether its backend is up now."""
    return web.json_response({"data": model_choices(request)})
