"""The admin UI's keys page and its JSON API: list, create (the key shown once), edit
scopes and limits, revoke, rotate.

Admin-only like the users page (``require_admin``: accounts on, an admin session), behind
the same guard (``UI_IP_ALLOWLIST``, CSRF and same origin on every change). A key is in a
response body only when it is made or rotated, never in a list; changes apply to the
running gateway at once.
"""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from ..auth.keys import ENDPOINTS, check_name
from ..errors import Conflict, InvalidRequest, NotFound
from ..typedefs import KEYS, TOKENS
from ..wire.body import read_json_object
from .pages import base_context, require_admin

_FIELDS = (
    "models",
    "endpoints",
    "tools",
    "rpm",
    "tpm",
    "tokens_per_day",
    "concurrency",
    "expires_days",
    "admin",
)


async def page(request: web.Request) -> web.Response:
    require_admin(request)
    context = {**base_context(request, "ui_admin_keys"), "endpoints": list(ENDPOINTS)}
    return aiohttp_jinja2.render_template("admin_keys.html", request, context)


async def list_keys(request: web.Request) -> web.Response:
    require_admin(request)
    keys = await request.app[KEYS].store.list_keys()
    return web.json_response({"data": [key.public() for key in keys]})


async def create_key(request: web.Request) -> web.Response:
    require_admin(request)
    body = await read_json_object(request)
    name = check_name(body.get("name"))
    if name in request.app[TOKENS].static_names:
        raise InvalidRequest(
            f"'{name}' is the name of a static token; pick another name", param="name"
        )
    try:
        key, secret = await request.app[KEYS].create(name, _values(body))
    except KeyError:
        raise Conflict(f"a key named '{name}' exists; revoke or rotate it") from None
    return web.json_response({"key": key.public(), "secret": secret}, status=201)


async def update_key(request: web.Request) -> web.Response:
    require_admin(request)
    body = await read_json_object(request)
    key = await request.app[KEYS].update(request.match_info["name"], _values(body))
    if key is None:
        raise NotFound("No active key with that name", code="key_not_found")
    return web.json_response({"key": key.public()})


async def revoke_key(request: web.Request) -> web.Response:
    require_admin(request)
    await _optional_body(request)
    if not await request.app[KEYS].revoke(request.match_info["name"]):
        raise NotFound("No active key with that name", code="key_not_found")
    return web.Response(status=204)


async def rotate_key(request: web.Request) -> web.Response:
    require_admin(request)
    await _optional_body(request)
    secret = await request.app[KEYS].rotate(request.match_info["name"])
    if secret is None:
        raise NotFound("No active key with that name", code="key_not_found")
    return web.json_response({"secret": secret})


async def _optional_body(request: web.Request) -> None:
    """Revoke and rotate need no body; one that is sent is still strict JSON, as on every
    route (a bad one is a 400, not ignored)."""
    if request.body_exists:
        await read_json_object(request)


def _values(body: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(body) - {"name", *_FIELDS})
    if unknown:
        raise InvalidRequest(f"unknown field '{unknown[0][:64]}'", param=unknown[0][:64])
    return {field: body[field] for field in _FIELDS if field in body}
