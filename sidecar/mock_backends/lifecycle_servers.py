"""Fake servers with their own model lifecycle, written from their documented protocols.

- ``create_ollama_lifecycle_app``: Ollama's ``/api/ps`` (the loaded models, their size
  and when they expire), ``/api/generate`` with an empty prompt (loads the model, for
  ``keep_alive``: a duration, seconds, negative = until unloaded, ``0`` = unload now,
  answering ``done_reason`` ``load`` or ``unload``), ``/api/tags``; a request to its
  OpenAI-compatible ``/v1`` endpoints loads its model too and, like Ollama's, ignores a
  ``keep_alive`` in the body: the model then expires after the default 5 minutes.
- ``create_llama_router_app``: llama-server in router mode: ``GET /models`` with each
  model's ``status.value`` (``unloaded``, ``loading``, ``loaded``; ``failed: true`` and an
  ``exit_code`` after a failed start), ``POST /models/load`` and ``/models/unload`` with
  ``{"model": id}`` answering ``{"success": true}``; a chat request loads its model.
- ``create_vllm_sleep_app``: vLLM with ``--enable-sleep-mode``: ``POST /sleep?level=N``,
  ``POST /wake_up``, ``GET /is_sleeping``; a sleeping engine refuses generation with 503
  (``app[SLEEPING][0]`` says whether it sleeps).

Each loads in ``load_delay_s`` and counts its loads in ``app[LOADS]``; chat replies come
from the OpenAI-compatible fake (``openai_server``).
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import json
import re
import time
from typing import Any

from aiohttp import web

from .openai_server import BEHAVIOUR, MockBehaviour, create_mock_app

LOADS = web.AppKey("loads", collections.Counter[str])
LOADED_UNTIL = web.AppKey("loaded", dict[str, float | None])  # model -> expiry (monotonic)
_STATUS = web.AppKey("status", dict[str, dict[str, Any]])
SLEEPING = web.AppKey("sleeping", list[bool])
_DELAY = web.AppKey("delay", float)
_MEMORY = web.AppKey("memory", int)
_FAILING = web.AppKey("failing", frozenset[str])
_TASKS = web.AppKey("tasks", set[asyncio.Task[None]])
_DURATION = re.compile(r"^(-?\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_DEFAULT_KEEP_S = 300.0
_GENERATION = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


def _app(model_ids: tuple[str, ...], load_delay_s: float) -> web.Application:
    app = create_mock_app(MockBehaviour(chat_models=model_ids, embedding_models=()))
    app[LOADS] = collections.Counter()
    app[_DELAY] = load_delay_s
    return app


async def _read(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text='{"error": "invalid JSON"}') from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text='{"error": "body must be an object"}')
    return body


async def _peek(request: web.Request) -> dict[str, Any]:
    """A chat request's body, read without using it up for the handler."""
    if request.method != "POST" or not request.path.startswith("/v1/"):
        return {}
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


# -- Ollama ----------------------------------------------------------------------------------


def create_ollama_lifecycle_app(
    model_ids: tuple[str, ...] = ("llama3.2",), load_delay_s: float = 0.1, memory_mb: int = 2048
) -> web.Application:
    app = _app(model_ids, load_delay_s)
    app[LOADED_UNTIL] = {}
    app[_MEMORY] = memory_mb
    app.middlewares.insert(0, _ollama_chat_loads)
    app.router.add_get("/api/ps", _ollama_ps)
    app.router.add_get("/api/tags", _ollama_tags)
    app.router.add_post("/api/generate", _ollama_generate)
    return app


def _keep_until(value: Any) -> float | bool | None:
    """When a model given this keep_alive expires: a monotonic time, None (never), or
    False (unload now)."""
    if value is None:
        return time.monotonic() + _DEFAULT_KEEP_S
    match = _DURATION.match(str(value).strip())
    if match is None:
        raise web.HTTPBadRequest(text='{"error": "invalid keep_alive"}')
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0:
        return None
    if seconds == 0:
        return False
    return time.monotonic() + seconds


async def _ollama_load(app: web.Application, model: str, keep: float | None) -> None:
    if model not in app[LOADED_UNTIL] or _expired(app[LOADED_UNTIL][model]):
        await asyncio.sleep(app[_DELAY])
        app[LOADS][model] += 1
    app[LOADED_UNTIL][model] = keep


def _expired(expiry: float | None) -> bool:
    return expiry is not None and expiry <= time.monotonic()


@web.middleware
async def _ollama_chat_loads(request: web.Request, handler: Any) -> web.StreamResponse:
    body = await _peek(request)
    model = body.get("model")
    if isinstance(model, str) and model in _models(request):
        await _ollama_load(request.app, model, None)  # loaded while it answers
    response: web.StreamResponse = await handler(request)
    if isinstance(model, str) and model in _models(request):
        request.app[LOADED_UNTIL][model] = _keep_until(None)  # the default, whatever was asked
    return response


def _models(request: web.Request) -> tuple[str, ...]:
    return request.app[BEHAVIOUR].chat_models


async def _ollama_generate(request: web.Request) -> web.Response:
    body = await _read(request)
    model = body.get("model")
    if model not in _models(request):
        return web.json_response({"error": f"model '{model}' not found"}, status=404)
    if body.get("prompt"):
        return web.json_response({"error": "this fake only loads and unloads"}, status=400)
    keep = _keep_until(body.get("keep_alive"))
    created = datetime.datetime.now(datetime.UTC).isoformat()
    answer = {"model": model, "created_at": created, "response": "", "done": True}
    if keep is False:
        request.app[LOADED_UNTIL].pop(model, None)
        return web.json_response({**answer, "done_reason": "unload"})
    await _ollama_load(request.app, model, keep)
    return web.json_response({**answer, "done_reason": "load"})


async def _ollama_ps(request: web.Request) -> web.Response:
    size = request.app[_MEMORY] * 1_048_576
    models = []
    for model, expiry in list(request.app[LOADED_UNTIL].items()):
        if _expired(expiry):
            del request.app[LOADED_UNTIL][model]
            continue
        left = 365 * 86400.0 if expiry is None else expiry - time.monotonic()
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=left)
        models.append(
            {
                "name": model,
                "model": model,
                "size": size,
                "size_vram": size,
                "digest": "0" * 64,
                "expires_at": expires.isoformat(),
                "details": {"format": "gguf", "family": "llama"},
            }
        )
    return web.json_response({"models": models})


async def _ollama_tags(request: web.Request) -> web.Response:
    models = [{"name": m, "model": m, "size": 0} for m in _models(request)]
    return web.json_response({"models": models})


# -- llama-server, router mode -----------------------------------------------------------------


def create_llama_router_app(
    model_ids: tuple[str, ...] = ("ggml-org/gemma-3-4b-it-GGUF:Q4_K_M",),
    load_delay_s: float = 0.1,
    failing: frozenset[str] = frozenset(),
) -> web.Application:
    """``failing``: models whose start fails (exit code 1) like a bad GGUF file."""
    app = _app(model_ids, load_delay_s)
    app[_STATUS] = {model: {"value": "unloaded"} for model in model_ids}
    app[_FAILING] = failing
    app[_TASKS] = set()
    app.middlewares.insert(0, _llama_chat_loads)
    app.router.add_get("/models", _llama_models)
    app.router.add_post("/models/load", _llama_load)
    app.router.add_post("/models/unload", _llama_unload)
    app.on_cleanup.append(_cancel_tasks)
    return app


async def _cancel_tasks(app: web.Application) -> None:
    for task in app[_TASKS]:
        task.cancel()
    await asyncio.gather(*app[_TASKS], return_exceptions=True)


async def _llama_start(app: web.Application, model: str) -> None:
    status = app[_STATUS]
    status[model] = {"value": "loading", "args": ["llama-server", "--model", model]}
    await asyncio.sleep(app[_DELAY])
    if model in app[_FAILING]:
        status[model] = {"value": "unloaded", "failed": True, "exit_code": 1}
        return
    status[model] = {"value": "loaded", "args": ["llama-server", "--model", model]}
    app[LOADS][model] += 1


@web.middleware
async def _llama_chat_loads(request: web.Request, handler: Any) -> web.StreamResponse:
    model = (await _peek(request)).get("model")
    status = request.app[_STATUS]
    if isinstance(model, str) and model in status and status[model]["value"] != "loaded":
        await _llama_start(request.app, model)
        if status[model]["value"] != "loaded":
            error = {"code": 503, "message": "model failed to load", "type": "unavailable_error"}
            return web.json_response({"error": error}, status=503)
    response: web.StreamResponse = await handler(request)
    return response


async def _llama_models(request: web.Request) -> web.Response:
    data = [
        {"id": model, "path": f"/models/{model}.gguf", "status": status}
        for model, status in request.app[_STATUS].items()
    ]
    return web.json_response({"data": data})


def _llama_model(request: web.Request, body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or model not in request.app[_STATUS]:
        error = {"code": 404, "message": "model not found", "type": "not_found_error"}
        raise web.HTTPNotFound(text=_json(error), content_type="application/json")
    return model


def _json(error: dict[str, Any]) -> str:
    return json.dumps({"error": error})


async def _llama_load(request: web.Request) -> web.Response:
    model = _llama_model(request, await _read(request))
    if request.app[_STATUS][model]["value"] not in ("loaded", "loading"):
        task = asyncio.create_task(_llama_start(request.app, model))
        request.app[_TASKS].add(task)
        task.add_done_callback(request.app[_TASKS].discard)
    return web.json_response({"success": True})


async def _llama_unload(request: web.Request) -> web.Response:
    model = _llama_model(request, await _read(request))
    request.app[_STATUS][model] = {"value": "unloaded"}
    return web.json_response({"success": True})


# -- vLLM, sleep mode ------------------------------------------------------------------------


def create_vllm_sleep_app(
    model_ids: tuple[str, ...] = ("Qwen/Qwen2.5-0.5B-Instruct",),
    load_delay_s: float = 0.1,
    sleeping: bool = False,
) -> web.Application:
    app = _app(model_ids, load_delay_s)
    app[SLEEPING] = [sleeping]
    app.middlewares.insert(0, _vllm_refuses_while_asleep)
    app.router.add_post("/sleep", _vllm_sleep)
    app.router.add_post("/wake_up", _vllm_wake_up)
    app.router.add_get("/is_sleeping", _vllm_is_sleeping)
    app.router.add_get("/health", _vllm_health)
    return app


@web.middleware
async def _vllm_refuses_while_asleep(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.app[SLEEPING][0] and request.path in _GENERATION:
        error = {"message": "the engine is sleeping", "type": "ServiceUnavailable", "code": 503}
        return web.json_response({"error": error}, status=503)
    response: web.StreamResponse = await handler(request)
    return response


async def _vllm_sleep(request: web.Request) -> web.Response:
    level = request.query.get("level", "1")
    if level not in ("1", "2"):
        return web.json_response({"error": "level must be 1 or 2"}, status=400)
    request.app[SLEEPING][0] = True
    return web.Response(status=200)


async def _vllm_wake_up(request: web.Request) -> web.Response:
    if request.app[SLEEPING][0]:
        await asyncio.sleep(request.app[_DELAY])
        request.app[SLEEPING][0] = False
        request.app[LOADS]["wake_up"] += 1
    return web.Response(status=200)


async def _vllm_is_sleeping(request: web.Request) -> web.Response:
    return web.json_response({"is_sleeping": request.app[SLEEPING][0]})


async def _vllm_health(request: web.Request) -> web.Response:
    return web.Response(status=200)
