"""The tool bus over HTTP: list, call, and look up or replay recorded calls.

A record is read or replayed only by the token name that made it, or by a token named in
``GATEWAY_ADMIN_TOKENS``; any other token gets the 404 an unknown id gets.
"""

from __future__ import annotations

from aiohttp import web

from ..auth import caller
from ..typedefs import REQUEST_ID, TOOLBUS
from ..wire.body import json_answer, read_json_object


async def list_tools(request: web.Request) -> web.Response:
    tools = request.app[TOOLBUS].visible(caller(request)[0])
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
    token, _ = caller(request)
    bus.spec(name, token)  # 404/403 before reading the body
    body = await read_json_object(request)
    arguments = body.get("arguments", {})
    call = await bus.invoke(name, arguments, token=token, request_id=request[REQUEST_ID])
    return await json_answer(call.response())


async def get_replay(request: web.Request) -> web.Response:
    """A record, for the token that made it (or an admin token); 404 for anyone else."""
    token, admin = caller(request)
    record = await request.app[TOOLBUS].recorded(
        request.match_info["replay_id"], token=token, admin=admin
    )
    return await json_answer(record)


async def replay(request: web.Request) -> web.Response:
    token, admin = caller(request)
    outcome = await request.app[TOOLBUS].replay(
        request.match_info["replay_id"], token=token, request_id=request[REQUEST_ID], admin=admin
    )
    return await json_answer(outcome)
