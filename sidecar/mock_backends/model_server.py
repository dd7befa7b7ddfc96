"""A fake model server for the gateway to start and stop: ``gateway mock-backends --kind
model-server``.

It behaves like llama-server while it loads a model: ``/health`` answers 503 until
``ready_delay_s`` after start, then 200 with its ``memory_mb`` (the size it reports for
its "model") and its pid; every other path answers 503 until then. Once ready it is the
OpenAI-compatible fake (``openai_server``) serving ``model_ids``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from aiohttp import web

from .openai_server import MockBehaviour, create_mock_app

READY_AT = web.AppKey("ready_at", float)
MEMORY_MB = web.AppKey("memory_mb", float)


def create_model_server_app(
    model_ids: tuple[str, ...] = ("mock-llama",),
    ready_delay_s: float = 0.5,
    memory_mb: float = 1000.0,
    chunk_delay_ms: float = 20.0,
    chunks: int = 4,
) -> web.Application:
    behaviour = MockBehaviour(
        chat_models=model_ids, embedding_models=(), chunk_delay_ms=chunk_delay_ms, chunks=chunks
    )
    app = create_mock_app(behaviour)
    app[READY_AT] = time.monotonic() + ready_delay_s
    app[MEMORY_MB] = memory_mb
    app.middlewares.insert(0, _loading)
    app.router.add_get("/health", _health)
    return app


def _ready(request: web.Request) -> bool:
    return time.monotonic() >= request.app[READY_AT]


@web.middleware
async def _loading(request: web.Request, handler: Any) -> web.StreamResponse:
    if not _ready(request) and request.path != "/health":
        error = {"code": 503, "message": "Loading model", "type": "unavailable_error"}
        return web.json_response({"error": error}, status=503)
    response: web.StreamResponse = await handler(request)
    return response


async def _health(request: web.Request) -> web.Response:
    if not _ready(request):
        error = {"code": 503, "message": "Loading model", "type": "unavailable_error"}
        return web.json_response({"error": error}, status=503)
    body = {"status": "ok", "memory_mb": request.app[MEMORY_MB], "pid": os.getpid()}
    return web.json_response(body)
