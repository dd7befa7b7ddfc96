"""Models as clients ask for them: ``models.retrieve`` with ids holding ``/`` and ``:``,
per-model capabilities for discovered models (an embeddings model is not offered for chat),
and ``backend/model`` names when two backends serve the same id."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestClient

from .conftest import TOKEN, eventually, gateway_yaml, mock_backend_yaml, openai_client

SLASHED = "meta-llama/Llama-3.1-8B-Instruct"
COLONED = "qwen3:8b"


async def _models(gateway: TestClient) -> dict[str, dict[str, Any]]:
    response = await gateway.get("/v1/models", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status == 200
    return {entry["id"]: entry for entry in (await response.json())["data"]}


async def _discovered(gateway: TestClient, *ids: str) -> None:
    async def listed() -> bool:
        return set(ids) <= set(await _models(gateway))

    await eventually(listed, f"discovery of {ids}")


async def test_models_retrieve_with_the_sdk(make_gateway: Any, start_mock: Any) -> None:
    backend = await start_mock(chat_models=("mock-llama", SLASHED, COLONED))
    models = f"[mock-llama, {SLASHED}, '{COLONED}', {{id: bge-m3, capabilities: [embeddings]}}]"
    gateway = await make_gateway(
        gateway_yaml(
            mock_backend_yaml("mock", backend, models=models),
            aliases="default: {backend: mock, model: mock-llama}",
        )
    )
    async with openai_client(gateway) as client:
        for model in ("mock-llama", SLASHED, COLONED, "default", "bge-m3", f"mock/{SLASHED}"):
            found = await client.models.retrieve(model)
            assert found.id == model
            assert found.object == "model"
            assert found.owned_by == "mock"
        assert (await client.models.retrieve("bge-m3")).model_extra == {
            "capabilities": ["embeddings"]
        }
        listed = [model.id for model in (await client.models.list()).data]
        assert listed == ["mock-llama", SLASHED, COLONED, "bge-m3", "default"]
        with pytest.raises(openai.NotFoundError) as missing:
            await client.models.retrieve("no/such:model")
    assert missing.value.code == "model_not_found"
    body = missing.value.body
    assert isinstance(body, dict) and body["param"] == "model"


async def test_discovered_models_get_capabilities_by_name(
    make_gateway: Any, start_mock: Any, auth: dict[str, str]
) -> None:
    backend = await start_mock(embedding_models=("nomic-embed-text",))
    gateway = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend, models="null", health="{interval_s: 1}"))
    )
    await _discovered(gateway, "mock-llama", "nomic-embed-text")

    models = await _models(gateway)
    assert models["nomic-embed-text"]["capabilities"] == ["embeddings"]
    assert models["mock-llama"]["capabilities"] == ["chat", "completions", "embeddings"]
    chat = {"model": "nomic-embed-text", "messages": [{"role": "user", "content": "hi"}]}
    response = await gateway.post("/v1/chat/completions", json=chat, headers=auth)
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "capability_not_supported"
    embed = {"model": "nomic-embed-text", "input": "hello"}
    response = await gateway.post("/v1/embeddings", json=embed, headers=auth)
    assert response.status == 200, await response.text()


async def test_model_capabilities_in_the_yaml_come_first(
    make_gateway: Any, start_mock: Any, auth: dict[str, str]
) -> None:
    backend = await start_mock(embedding_models=("nomic-embed-text",))
    gateway = await make_gateway(
        gateway_yaml(
            mock_backend_yaml(
                "mock",
                backend,
                models="null",
                health="{interval_s: 1}",
                model_capabilities="{'MOCK-*': [chat], '*embed*': [embeddings, chat]}",
            )
        )
    )
    await _discovered(gateway, "mock-llama", "nomic-embed-text")

    models = await _models(gateway)
    assert models["mock-llama"]["capabilities"] == ["chat"]
    assert models["nomic-embed-text"]["capabilities"] == ["chat", "embeddings"]
    prompt = {"model": "mock-llama", "prompt": "hi"}
    response = await gateway.post("/v1/completions", json=prompt, headers=auth)
    assert response.status == 400


async def test_a_model_two_backends_serve_is_listed_and_routable_per_backend(
    make_gateway: Any, start_mock: Any
) -> None:
    first, second = await start_mock(), await start_mock()
    gateway = await make_gateway(
        gateway_yaml(mock_backend_yaml("a", first), mock_backend_yaml("b", second))
    )
    models = await _models(gateway)
    assert {"mock-llama", "a/mock-llama", "b/mock-llama"} <= set(models)
    assert models["b/mock-llama"]["owned_by"] == "b"
    assert models["mock-llama"]["owned_by"] == "a"
    async with openai_client(gateway) as client:
        reply = await client.chat.completions.with_raw_response.create(
            model="b/mock-llama", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.headers["X-Backend-Used"] == "b"
        assert (await client.models.retrieve("b/mock-llama")).owned_by == "b"
