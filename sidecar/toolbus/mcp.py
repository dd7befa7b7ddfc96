"""The tool bus as an MCP server: JSON-RPC 2.0 over one HTTP endpoint (``POST /mcp``).

``tools/list`` and ``tools/call`` use the same registry, checks, limits, hashes and log
as ``/v1/tools``: an MCP client and an OpenAI-style client see the same tools and leave
the same records. Answers are plain ``application/json`` (the streamable HTTP transport
allows it); ``GET`` is 405. A browser's cross-site ``Origin`` is refused. A body that is
not strict JSON (``wire.strict_json``) is a JSON-RPC parse error (-32700) with HTTP 200.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from .. import __version__
from ..auth import caller
from ..errors import BackendOverloaded, Forbidden, GatewayError, StorageUnavailable, StrictJsonError
from ..typedefs import REQUEST_ID, TOOLBUS
from ..wire.body import json_answer, parse_json
from ..wire.origin import same_origin

PROTOCOL_VERSIONS = ("2025-06-18", "2025-03-26", "2024-11-05")
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
SERVER_BUSY = -32000


class _RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def endpoint(request: web.Request) -> web.StreamResponse:
    _check_origin(request)
    try:
        message = await parse_json(await request.read())
    except StrictJsonError as exc:  # NaN, 1e400, lone surrogates, deep nesting
        return _reply(None, error=_RpcError(PARSE_ERROR, f"not valid JSON: {exc.message}"))
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return _reply(None, error=_RpcError(INVALID_REQUEST, "expected one JSON-RPC 2.0 object"))
    method, rpc_id = message.get("method"), message.get("id")
    if "id" not in message:  # a notification (e.g. notifications/initialized): no answer
        return web.Response(status=202)
    if not isinstance(method, str):
        return _reply(rpc_id, error=_RpcError(INVALID_REQUEST, "'method' must be a string"))
    params = message.get("params") or {}
    try:
        if not isinstance(params, dict):
            raise _RpcError(INVALID_PARAMS, "'params' must be an object")
        result = await _dispatch(request, method, params)
    except _RpcError as exc:
        return _reply(rpc_id, error=exc)
    if method == "tools/call":  # a tool's result, maybe megabytes: encoded off the loop
        return await json_answer({"jsonrpc": "2.0", "id": rpc_id, "result": result})
    return _reply(rpc_id, result=result)


async def _dispatch(request: web.Request, method: str, params: dict[str, Any]) -> Any:
    token_name, _ = caller(request)
    bus = request.app[TOOLBUS]
    if method == "initialize":
        asked = params.get("protocolVersion")
        return {
            "protocolVersion": asked if asked in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[0],
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "local-ai-gateway", "version": __version__},
        }
    if method == "ping":
        return {}
    if method == "tools/list":
        tools = [
            {"name": s.name, "description": s.description, "inputSchema": dict(s.parameters)}
            for s in bus.visible(token_name)
        ]
        return {"tools": tools}
    if method == "tools/call":
        return await _call(request, params, token_name)
    raise _RpcError(METHOD_NOT_FOUND, f"unknown method {method!r}")


async def _call(request: web.Request, params: dict[str, Any], token: str | None) -> Any:
    name, arguments = params.get("name"), params.get("arguments", {})
    if not isinstance(name, str):
        raise _RpcError(INVALID_PARAMS, "'name' must be a string")
    try:
        call = await request.app[TOOLBUS].invoke(
            name, arguments, token=token, request_id=request[REQUEST_ID]
        )
    except (BackendOverloaded, StorageUnavailable) as exc:  # try again later
        raise _RpcError(SERVER_BUSY, exc.message) from None
    except GatewayError as exc:  # unknown tool, not allowed, bad arguments
        raise _RpcError(INVALID_PARAMS, exc.message) from None
    outcome = call.result if call.ok else call.error
    text = await asyncio.to_thread(json.dumps, outcome, ensure_ascii=False)  # maybe megabytes
    result: dict[str, Any] = {
        "content": [{"type": "text", "text": text}],
        "isError": not call.ok,
        "_meta": {"replay_id": call.replay_id, "request_hash": call.request_hash},
    }
    if isinstance(outcome, dict):
        result["structuredContent"] = outcome
    return result


def _check_origin(request: web.Request) -> None:
    """Refuse browsers on other sites (DNS rebinding); non-browser clients send none."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    if not same_origin(origin, request):  # scheme, host and port, as Caddy forwarded them
        raise Forbidden("Origin not allowed for /mcp", code="origin_not_allowed")


def _reply(rpc_id: Any, *, result: Any = None, error: _RpcError | None = None) -> web.Response:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": rpc_id}
    if error is not None:
        body["error"] = {"code": error.code, "message": error.message}
    else:
        body["result"] = result
    return web.json_response(body)
