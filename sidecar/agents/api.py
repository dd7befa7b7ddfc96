"""``POST /v1/agent/run`` and the transcript/replay routes.

A run is read or replayed only by the token name that started it, or an admin token
(``GATEWAY_ADMIN_TOKENS``); any other token gets the 404 an unknown run id gets.
"""

from __future__ import annotations

from aiohttp import web

from ..typedefs import AGENTS, REQUEST_ID, TOKEN
from ..wire.body import read_json_object


async def run(request: web.Request) -> web.Response:
    token = request.get(TOKEN)
    summary = await request.app[AGENTS].run(
        await read_json_object(request),
        token.name if token is not None else None,
        request[REQUEST_ID],
    )
    return web.json_response(summary)


def _caller(request: web.Request) -> tuple[str | None, bool]:
    token = request.get(TOKEN)
    return (token.name, token.admin) if token is not None else (None, False)


async def get_run(request: web.Request) -> web.Response:
    name, admin = _caller(request)
    run_id = request.match_info["run_id"]
    return web.json_response(await request.app[AGENTS].recorded(run_id, token=name, admin=admin))


async def replay(request: web.Request) -> web.Response:
    name, admin = _caller(request)
    run_id = request.match_info["run_id"]
    return web.json_response(await request.app[AGENTS].replay(run_id, token=name, admin=admin))
