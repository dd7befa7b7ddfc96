"""Health, readiness and the admin-facing status of backends and limits.

``/healthz`` and ``/readyz`` are open (Caddy and probes call them without a token) and
never reveal backend URLs, file paths or a refused config's error text (only "config
error" and a count of issues); ``/v1/gateway/status`` needs the bearer token.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from aiohttp import web

from .. import __version__
from ..observability.client_ip import address_allowed
from ..observability.metrics import CONTENT_TYPE
from ..routing.registry import Backend
from ..typedefs import CLIENT_IP, METRICS, REGISTRY, RELOADER, SETTINGS, STORAGE, TOKENS


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY].current
    last = request.app[RELOADER].last
    backends = registry.backends.values()
    routable = sum(1 for backend in backends if backend.health.routable)
    storage = await asyncio.to_thread(request.app[STORAGE].snapshot)
    return web.json_response(
        {
            "status": "ready" if last.ok and storage["writable"] else "degraded",
            "version": __version__,
            "config": {
                "digest": registry.config.digest[:12],
                "loaded_at": round(registry.loaded_at, 3),
                # Open route: a refusal is named and counted; its text (paths, values)
                # stays behind the token in /v1/gateway/status.
                "last_reload": {**last.public(), "error": None if last.ok else "config error"},
            },
            "backends": {"total": len(registry.backends), "routable": routable},
            "storage": storage,
        }
    )


async def gateway_status(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY].current
    reloader = request.app[RELOADER]
    return web.json_response(
        {
            "object": "gateway.status",
            "version": __version__,
            "config": {
                "digest": registry.config.digest[:12],
                "loaded_at": round(registry.loaded_at, 3),
                "reloads_ok": reloader.reloads_ok,
                "reloads_refused": reloader.reloads_refused,
                "last_reload_error": reloader.last.error,
                "last_reload": reloader.last.public(),
            },
            "backends": [_backend_status(backend) for backend in registry.backends.values()],
        }
    )


def _backend_status(backend: Backend) -> dict[str, Any]:
    health = backend.health
    return {
        "name": backend.name,
        "class": backend.config.backend_class,
        "protocol": backend.config.protocol,
        "health": {
            "state": health.state,
            "checked_at": health.checked_at,
            "error": health.error,
            "consecutive_failures": health.consecutive_failures,
        },
        "models": list(backend.model_ids),
        "capabilities": {
            capability: dataclasses.asdict(admission.stats())
            for capability, admission in backend.admissions.items()
        },
    }


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text; for METRICS_ALLOWLIST addresses, or with the bearer token."""
    settings = request.app[SETTINGS]
    if not address_allowed(request[CLIENT_IP], settings.metrics_allowlist):
        request.app[TOKENS].authenticate(request.headers.get("Authorization"), path="/metrics")
    body = await asyncio.to_thread(request.app[METRICS].render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
