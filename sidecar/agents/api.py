"""``POST /v1/agent/run`` and the transcript/replay routes.

A run is read or replayed only by the token name that started it, or an admin token
(``GATEWAY_ADMIN_TOKENS``); any other token gets the 404 an unknown run id gets.
"""

from __future__ import annotations

from aiohttp import web

from ..auth import caller
from ..typedefs import AGENTS, REQUEST_ID
from ..wire.body import read_json_object


async def run(request: web.Request) -> web.Response:
    token, _ = caller(request)
    summary = await request.app[AGENTS].run(
        await read_json_object(request), token, request[REQUEST_ID]
    )
    return web.json_response(summary)


async def get_run(request: web.Request) -> web.Response:
    name, admin = caller(request)
    run_id = request.match_info["run_id"]
    return web.json_response(await request.app[AGENTS].recorded(run_id, token=name, admin=admin))


async def replay(request: web.Request) -> web.Response:
    name, admin = caller(request)
    run_id = request.match_info["run_id"]
    return web.json_response(await request.app[AGENTS].replay(run_id, token=name, admin=admin))
