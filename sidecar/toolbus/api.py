"""The tool bus over HTTP: list, call, and look up or replay recorded calls."""

from __future__ import annotations

from aiohttp import web

from ..api.body import read_json_object
from ..typedefs import REQUEST_ID, TOKEN, TOOLBUS


def _token(request: web.Request) -> str | None:
    token = request.get(TOKEN)
    return token.name if token is not None else None


async def list_tools(request: web.Request) -> web.Response:
    tools = request.app[TOOLBUS].visible(_token(request))
    data = [
        {
            "name": spec.name,
            "version": spec.version,
            "description": spec.description,
            "parameters": dict(spec.parameters),
        }
        for spec in tools
    ]
    return web.json_response({"object": "list", "data": data})


async def call_tool(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    bus = request.app[TOOLBUS]
    bus.spec(name, _token(request))  # 404/403 before reading the body
    body = await read_json_object(request)
    arguments = body.get("arguments", {})
    call = await bus.invoke(name, arguments, token=_token(request), request_id=request[REQUEST_ID])
    return web.json_response(call.response())


async def get_replay(request: web.Request) -> web.Response:
    record = await request.app[TOOLBUS].recorded(request.match_info["replay_id"])
    return web.json_response(record)


async def replay(request: web.Request) -> web.Response:
    outcome = await request.app[TOOLBUS].replay(
        request.match_info["replay_id"], token=_token(request), request_id=request[REQUEST_ID]
    )
    return web.json_response(outcome)
