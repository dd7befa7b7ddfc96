"""``/ui/usage``: tokens per day, per key, per user and per model.

Admins (accounts on) see everyone's; anyone else sees only the rows of their own UI
account (their chats) since the account was created (not those of a deleted account of
the same name). The page is rendered empty and filled from ``/ui/api/usage``
(the same ``since``/``until`` as ``/v1/gateway/usage``), with the chart drawn locally.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from ..errors import NotFound
from ..typedefs import SETTINGS, UI_USER, USAGE
from ..usage.api import parse_query
from .pages import base_context

_PARAMS = frozenset({"since", "until"})
_TABLES = {"days": ("day",), "keys": ("key",), "users": ("user",), "models": ("model",)}
MAX_ROWS = 1000


async def page(request: web.Request) -> web.Response:
    return aiohttp_jinja2.render_template(
        "usage.html", request, {**base_context(request, "ui_usage"), "everyone": _everyone(request)}
    )


async def totals(request: web.Request) -> web.Response:
    ledger = request.app.get(USAGE)
    if ledger is None:
        raise NotFound("The usage ledger is off (GATEWAY_USAGE_ENABLED)", code="usage_off")
    query = parse_query(request.query, _PARAMS)
    everyone = _everyone(request)
    user = None if everyone else request[UI_USER]
    # Rows are kept by user name; an account deleted and made anew has the name but not
    # the old account's usage: only what ran since this account was created is its own.
    found = await asyncio.gather(
        *(
            ledger.totals(
                query.since,
                query.until,
                group_by,
                ui_user=user.username if user is not None else None,
                after=user.created_at if user is not None else None,
                limit=MAX_ROWS,
            )
            for group_by in _TABLES.values()
        )
    )
    body: dict[str, Any] = {
        "scope": "everyone" if everyone else "own",
        "since": query.since,
        "until": query.until,
    }
    body.update(zip(_TABLES, found, strict=True))
    return web.json_response(body)


def _everyone(request: web.Request) -> bool:
    return request.app[SETTINGS].ui.accounts and request[UI_USER].is_admin
