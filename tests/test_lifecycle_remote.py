"""Remote servers with their own lifecycle (``lifecycle:``): fakes of Ollama, llama-server's
router mode and vLLM's sleep mode, written from their documented hooks, driven through
their state changes by the gateway's admin API and by requests."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sidecar.mock_backends import (
    create_llama_router_app,
    create_ollama_lifecycle_app,
    create_vllm_sleep_app,
)
from sidecar.mock_backends.lifecycle_servers import LOADED_UNTIL, LOADS, SLEEPING
from sidecar.mock_backends.openai_server import RECEIVED
from sidecar.settings import parse_bearer_tokens

from .conftest import OTHER_TOKEN, TOKEN, eventually

pytestmark = pytest.mark.timeout(60)
wait_for = functools.partial(eventually, attempts=400, poll_s=0.05)
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def remote_backend(name: str, server: TestServer, lifecycle: str, *models: str, **more: str) -> str:
    listed = ", ".join(json.dumps(model) for model in models)
    lines = [
        f"  {name}:",
        f"    url: {server.make_url('/v1')}",
        "    class: mock",
        f"    lifecycle: {lifecycle}",
        f"    models: [{listed}]",
    ]
    lines += [f"    {key}: {value}" for key, value in more.items()]
    return "version: 1\nbackends:\n" + "\n".join(lines) + "\n"


@pytest.fixture
async def admin_gateway(make_gateway: Any) -> Any:
    async def make(text: str) -> TestClient:
        tokens = parse_bearer_tokens(TOKEN, f"other:{OTHER_TOKEN}", "default")
        return await make_gateway(text, bearer_tokens=tokens)

    return make


async def rows(gateway: TestClient) -> dict[str, dict[str, Any]]:
    response = await gateway.get("/v1/gateway/models", headers=ADMIN)
    assert response.status == 200, await response.text()
    return {row["id"]: row for row in (await response.json())["data"]}


async def post(gateway: TestClient, path: str) -> tuple[int, Any]:
    response = await gateway.post(path, headers=ADMIN)
    return response.status, await response.json()


async def chat(gateway: TestClient, model: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    response = await gateway.post("/v1/chat/completions", json=body, headers=ADMIN)
    await response.read()
    return response.status


async def event_types(events: Any, count: int) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    while len(seen) < count:
        line = await asyncio.wait_for(events.content.readline(), 20)
        if line.startswith(b"data: "):
            seen.append(json.loads(line[6:]))
    return seen


async def test_ollama_models_load_unload_and_keep_alive_through_its_api(
    admin_gateway: Any, start_mock: Any
) -> None:
    fake = create_ollama_lifecycle_app(("llama3.2", "qwen2.5:7b"), load_delay_s=0.2)
    server = await start_mock(fake)
    gateway = await admin_gateway(
        remote_backend("ollama", server, "ollama", "llama3.2", "qwen2.5:7b", keep_alive="10m")
    )
    before = await rows(gateway)
    assert {row["state"] for row in before.values()} == {"unloaded"}
    assert before["llama3.2"]["lifecycle"] == "ollama"
    events = await gateway.get("/v1/gateway/events", headers=ADMIN)

    status, body = await post(gateway, "/v1/gateway/models/llama3.2/load")
    assert status == 200, body
    assert body["state"] == "loaded" and body["memory_mb"] == 2048
    assert body["last_load_s"] >= 0.2
    assert fake[LOADS]["llama3.2"] == 1
    # Ollama loads a model a request names; its /v1 endpoints ignore keep_alive and leave
    # the model with the default 5 minutes, so the gateway sets the backend's 10 minutes
    # again through /api/generate once the request is over.
    assert await chat(gateway, "qwen2.5:7b") == 200
    sent = [r for r in fake[RECEIVED] if r.path == "/v1/chat/completions"][-1]
    assert "keep_alive" not in sent.body

    def kept_for_10_minutes() -> bool:
        until = fake[LOADED_UNTIL].get("qwen2.5:7b")
        return until is not None and until - time.monotonic() > 500

    await wait_for(kept_for_10_minutes, "the keep_alive to be set again")
    assert (await rows(gateway))["qwen2.5:7b"]["state"] == "loaded"
    assert fake[LOADS]["qwen2.5:7b"] == 1  # set again, not loaded again

    status, body = await post(gateway, "/v1/gateway/models/ollama/llama3.2/unload")
    assert status == 200 and body["state"] == "unloaded"
    now = await rows(gateway)
    assert now["llama3.2"]["state"] == "unloaded" and now["qwen2.5:7b"]["state"] == "loaded"
    seen = await event_types(events, 3)
    assert [(e["type"], e["models"]) for e in seen] == [
        ("load", ["llama3.2"]),
        ("ready", ["llama3.2"]),
        ("unload", ["llama3.2"]),
    ]
    events.close()


async def test_llama_server_router_models_go_through_loading_to_loaded_and_back(
    admin_gateway: Any, start_mock: Any
) -> None:
    good, bad = "ggml-org/gemma-3-4b-it-GGUF:Q4_K_M", "broken/model-GGUF:Q8_0"
    fake = create_llama_router_app((good, bad), load_delay_s=0.3, failing=frozenset({bad}))
    server = await start_mock(fake)
    gateway = await admin_gateway(remote_backend("router", server, "llama-server", good, bad))
    assert (await rows(gateway))[good]["state"] == "unloaded"
    loading = asyncio.create_task(post(gateway, f"/v1/gateway/models/{good}/load"))

    async def seen_loading() -> bool:
        return (await rows(gateway))[good]["state"] == "loading"

    await wait_for(seen_loading, "the router to report loading")
    status, body = await loading
    assert status == 200 and body["state"] == "loaded", body
    assert fake[LOADS][good] == 1
    assert await chat(gateway, good) == 200
    assert fake[LOADS][good] == 1  # served by the loaded model, not loaded again
    status, body = await post(gateway, f"/v1/gateway/models/{good}/unload")
    assert status == 200 and body["state"] == "unloaded"
    # A model that fails to start: the router says failed, the admin gets an error.
    status, body = await post(gateway, f"/v1/gateway/models/{bad}/load")
    assert status == 502, body
    assert "failed to load" in body["error"]["message"]
    assert (await rows(gateway))[bad]["state"] == "failed"


async def test_vllm_sleep_mode_wakes_for_a_request_and_sleeps_when_idle(
    admin_gateway: Any, start_mock: Any
) -> None:
    fake = create_vllm_sleep_app(("qwen-small",), load_delay_s=0.3, sleeping=True)
    server = await start_mock(fake)
    gateway = await admin_gateway(
        remote_backend(
            "vllm",
            server,
            "vllm-sleep",
            "qwen-small",
            keep_alive="1s",
            queue="{max: 8, timeout_s: 20}",
        )
    )

    async def state(wanted: str) -> bool:
        return (await rows(gateway))["qwen-small"]["state"] == wanted

    assert await state("unloaded")  # asleep: what /is_sleeping says
    # A request for the sleeping engine waits for its wake-up, then is served.
    assert await chat(gateway, "qwen-small") == 200
    assert fake[LOADS]["wake_up"] == 1
    row = (await rows(gateway))["qwen-small"]
    assert row["state"] == "loaded" and row["last_load_s"] >= 0.3
    # Idle for its keep_alive: put back to sleep.
    await wait_for(functools.partial(state, "unloaded"), "the engine to be put to sleep")
    assert fake[SLEEPING][0]
    # The admin can wake it and put it to sleep.
    status, body = await post(gateway, "/v1/gateway/models/qwen-small/load")
    assert status == 200 and body["state"] == "loaded"
    assert fake[LOADS]["wake_up"] == 2
    status, body = await post(gateway, "/v1/gateway/models/qwen-small/unload")
    assert status == 200 and body["state"] == "unloaded"
