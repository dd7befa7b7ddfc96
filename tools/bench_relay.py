#!/usr/bin/env python3
"""The floor for ``tools/bench.py``'s streams phase: a bare aiohttp relay, no gateway.

POST /v1/chat/completions is forwarded to the backend and its reply relayed chunk by
chunk; nothing is checked, logged or counted. It runs on uvloop, as ``gateway serve``
does. Loopback only.

    python tools/bench_relay.py --port 8001 --backend http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
from aiohttp import web


def create_relay(backend: str) -> web.Application:
    async def start(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"Content-Type": "application/json"}
        url = backend + "/v1/chat/completions"
        async with request.app["session"].post(url, data=body, headers=headers) as upstream:
            response = web.StreamResponse(
                status=upstream.status,
                headers={"Content-Type": upstream.headers.get("Content-Type", "")},
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            return response

    async def ready(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_post("/v1/chat/completions", relay)
    app.router.add_get("/readyz", ready)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True)
    args = parser.parse_args()
    try:  # the gateway's loop (``gateway serve``), so the floor is measured on the same one
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - Windows
        loop = asyncio.new_event_loop()
    app = create_relay(args.backend)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, backlog=2048, loop=loop)
