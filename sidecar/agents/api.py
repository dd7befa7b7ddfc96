"""``POST /v1/agent/run`` and the transcript/replay routes."""

from __future__ import annotations

from aiohttp import web

from ..api.body import read_json_object
from ..typedefs import AGENTS, REQUEST_ID, TOKEN


async def run(request: web.Request) -> web.Response:
    token = request.get(TOKEN)
    summary = await request.app[AGENTS].run(
        await read_json_object(request),
        token.name if token is not None else None,
        request[REQUEST_ID],
    )
    return web.json_response(summary)


async def get_run(request: web.Request) -> web.Response:
    return web.json_response(await request.app[AGENTS].recorded(request.match_info["run_id"]))


async def replay(request: web.Request) -> web.Response:
    return web.json_response(await request.app[AGENTS].replay(request.match_info["run_id"]))
