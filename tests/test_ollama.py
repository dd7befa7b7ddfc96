"""The Ollama face, driven by the official ``ollama`` client library against a real gateway
(app factory) in front of the fake OpenAI backend, which records what it got."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import ollama
import pytest
from aiohttp.test_utils import TestClient, TestServer

from sidecar.mock_backends.openai_server import RECEIVED

from .conftest import TOKEN, dying_mid_stream, fake_gateway, last_body
from .test_admission import MODEL as HELD_MODEL
from .test_admission import HeldBackend, held_gateway, wait_for, wait_for_status

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
AUTH = {"Authorization": f"Bearer {TOKEN}"}


ClientFactory = Callable[..., ollama.AsyncClient]


@pytest.fixture
async def client_for() -> AsyncIterator[ClientFactory]:
    """``client_for(gateway, token=TOKEN)``: an ollama client for the gateway, closed at
    the end."""
    made: list[ollama.AsyncClient] = []

    def make(gateway: TestClient, token: str = TOKEN) -> ollama.AsyncClient:
        client = ollama.AsyncClient(
            host=str(gateway.make_url("")), headers={"Authorization": f"Bearer {token}"}
        )
        made.append(client)
        return client

    yield make
    for client in made:
        await client._client.aclose()


async def test_list_version_and_show(
    default_mock_gateway: tuple[TestClient, TestServer], client_for: ClientFactory
) -> None:
    gateway, _ = default_mock_gateway
    client = client_for(gateway)
    listed = await client.list()
    assert [model.model for model in listed.models] == ["mock-llama", "mock-embed", "default"]
    assert all(model.digest and model.modified_at for model in listed.models)
    version = await gateway.get("/api/version", headers=AUTH)
    assert (await version.json())["version"].count(".") == 2
    chat = await client.show("default")
    assert chat.capabilities == ["completion", "tools"]
    embed = await client.show("mock-embed:latest")
    assert embed.capabilities == ["embedding"]
    with pytest.raises(ollama.ResponseError) as missing:
        await client.show("no-such-model")
    assert missing.value.status_code == 404
    assert "no-such-model" in missing.value.error


async def test_chat_answers_and_maps_options(
    default_mock_gateway: tuple[TestClient, TestServer], client_for: ClientFactory
) -> None:
    gateway, backend = default_mock_gateway
    reply = await client_for(gateway).chat(
        model="default",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello there"},
        ],
        options={
            "temperature": 0.2,
            "top_p": 0.9,
            "seed": 7,
            "num_predict": 64,
            "stop": ["END"],
            "num_ctx": 4096,
            "top_k": 20,
        },
        format="json",
        stream=False,
    )
    assert reply.message.role == "assistant"
    assert reply.message.content == "Mock reply to: hello there"
    assert reply.done is True and reply.done_reason == "stop"
    assert reply.model == "default"
    assert reply.prompt_eval_count and reply.eval_count == 5
    assert reply.total_duration and reply.total_duration >= (reply.eval_duration or 0)
    sent = last_body(backend)
    assert sent["model"] == "mock-llama"
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"},
    ]
    assert sent["temperature"] == 0.2 and sent["top_p"] == 0.9 and sent["seed"] == 7
    assert sent["max_tokens"] == 64 and sent["stop"] == ["END"]
    assert sent["response_format"] == {"type": "json_object"}
    assert "num_ctx" not in sent and "top_k" not in sent and "stream" not in sent


async def test_num_predict_reached_is_done_reason_length(
    default_mock_gateway: tuple[TestClient, TestServer], client_for: ClientFactory
) -> None:
    gateway, _ = default_mock_gateway
    reply = await client_for(gateway).chat(
        model="mock-llama:latest",
        messages=[{"role": "user", "content": "one two three"}],
        options={"num_predict": 2},
        stream=False,
    )
    assert reply.message.content == "Mock reply"
    assert reply.done_reason == "length"


async def test_chat_streams_ndjson_by_default(
    default_mock_gateway: tuple[TestClient, TestServer], client_for: ClientFactory
) -> None:
    gateway, backend = default_mock_gateway
    parts = [
        part
        async for part in await client_for(gateway).chat(
            model="default",
            messages=[{"role": "user", "content": "stream this please"}],
            stream=True,
        )
    ]
    assert len(parts) > 2
    assert all(part.done is False for part in parts[:-1])
    assert "".join(part.message.content or "" for part in parts) == (
        "Mock reply to: stream this please"
    )
    last = parts[-1]
    assert last.done is True and last.done_reason == "stop" and last.eval_count == 6
    assert last.prompt_eval_count and last.total_duration
    sent = last_body(backend)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}

    # No "stream" at all streams too, as Ollama does; each line is one JSON object.
    response = await gateway.post(
        "/api/chat",
        json={"model": "default", "messages": [{"role": "user", "content": "raw"}]},
        headers=AUTH,
    )
    assert response.status == 200
    assert response.content_type == "application/x-ndjson"
    lines = [json.loads(line) for line in (await response.text()).splitlines()]
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]


async def test_tool_round_trip_with_arguments_as_objects(
    default_mock_gateway: tuple[TestClient, TestServer], client_for: ClientFactory
) -> None:
    gateway, backend = default_mock_gateway
    client = client_for(gateway)
    question = {"role": "user", "content": 'use get_weather {"city": "Tokyo"}'}
    first = await client.chat(model="default", messages=[question], tools=[WEATHER], stream=False)
    calls = first.message.tool_calls or []
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == {"city": "Tokyo"}
    second = await client.chat(
        model="default",
        messages=[
            question,
            first.message,
            {"role": "tool", "content": "11 degrees", "tool_name": "get_weather"},
        ],
        tools=[WEATHER],
        stream=False,
    )
    assert second.message.content == "The tool returned: 11 degrees"
    sent = last_body(backend)
    assistant, tool = sent["messages"][1], sent["messages"][2]
    call_id = assistant["tool_calls"][0]["id"]
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Tokyo"}
    assert tool == {"role": "tool", "content": "11 degrees", "tool_call_id": call_id}

    streamed = [
        part
        async for part in await client.chat(
            model="default", messages=[question], tools=[WEATHER], stream=True
        )
    ]
    with_calls = [part for part in streamed if part.message.tool_calls]
    assert len(with_calls) == 1  # the whole call once its arguments are complete
    assert with_calls[0].message.tool_calls[0].function.arguments == {"city": "Tokyo"}  # type: ignore[index]
    assert streamed[-1].done is True


async def test_images_become_image_url_parts(
    default_mock_gateway: tuple[TestClient, TestServer], client_for: ClientFactory
) -> None:
    gateway, backend = default_mock_gateway
    await client_for(gateway).chat(
        model="default",
        messages=[{"role": "user", "content": "what is this?", "images": [PNG]}],
        stream=False,
    )
    assert last_body(backend)["messages"][0]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]


async def test_generate_plain_streamed_and_load(
    default_mock_gateway: tuple[TestClient, TestServer], client_for: ClientFactory
) -> None:
    gateway, backend = default_mock_gateway
    client = client_for(gateway)
    reply = await client.generate(model="default", prompt="why?", system="Be brief.", stream=False)
    assert reply.response == "Mock reply to: why?" and reply.done is True
    assert last_body(backend)["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "why?"},
    ]
    parts = [
        p async for p in await client.generate(model="default", prompt="and now?", stream=True)
    ]
    assert "".join(p.response or "" for p in parts) == "Mock reply to: and now?"
    assert parts[-1].done is True and parts[-1].eval_count
    received = len(backend.app[RECEIVED])
    loaded = await client.generate(model="default", prompt="", stream=False)
    assert loaded.done is True and loaded.done_reason == "load" and loaded.response == ""
    assert len(backend.app[RECEIVED]) == received  # nothing to generate, nothing sent


async def test_embed_and_legacy_embeddings(
    default_mock_gateway: tuple[TestClient, TestServer], client_for: ClientFactory
) -> None:
    gateway, backend = default_mock_gateway
    client = client_for(gateway)
    one = await client.embed(model="mock-embed", input="hello")
    assert len(one.embeddings) == 1 and len(one.embeddings[0]) == 8
    two = await client.embed(model="mock-embed:latest", input=["a", "b"], dimensions=4)
    assert [len(v) for v in two.embeddings] == [4, 4]
    assert two.embeddings[0] != two.embeddings[1]
    assert two.prompt_eval_count == 2
    assert last_body(backend) == {
        "model": "mock-embed",
        "input": ["a", "b"],
        "encoding_format": "float",
        "dimensions": 4,
    }
    legacy = await client.embeddings(model="mock-embed", prompt="hello")
    assert list(legacy.embedding) == list(one.embeddings[0])
    with pytest.raises(ollama.ResponseError) as wrong:
        await client.embed(model="default", input="x")  # a chat model
    assert wrong.value.status_code == 400


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/api/chat", {"messages": [{"role": "user", "content": "x"}]}, 400),
        ("/api/chat", {"model": "default", "messages": []}, 400),
        ("/api/chat", {"model": "default", "messages": [{"role": "robot", "content": "x"}]}, 400),
        ("/api/chat", {"model": "default", "messages": [{"role": "user"}], "stream": "yes"}, 400),
        (
            "/api/chat",
            {"model": "default", "messages": [{"role": "user", "content": "x"}], "options": 3},
            400,
        ),
        (
            "/api/chat",
            {"model": "default", "messages": [{"role": "user", "content": "x"}], "format": "xml"},
            400,
        ),
        ("/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404),
        ("/api/generate", {"model": "default", "prompt": "x", "suffix": "y"}, 400),
        ("/api/generate", {"model": "default", "prompt": 3}, 400),
        ("/api/embed", {"model": "mock-embed", "input": []}, 400),
        ("/api/embed", {"model": "mock-embed", "input": 5}, 400),
        ("/api/show", {}, 400),
    ],
)
async def test_bad_requests_get_ollama_errors(
    default_mock_gateway: tuple[TestClient, TestServer],
    path: str,
    body: dict[str, Any],
    status: int,
) -> None:
    gateway, backend = default_mock_gateway
    response = await gateway.post(path, json=body, headers=AUTH)
    assert response.status == status
    error = await response.json()
    assert set(error) == {"error"} and isinstance(error["error"], str) and error["error"]
    assert not backend.app[RECEIVED]


async def test_the_token_is_required(
    default_mock_gateway: tuple[TestClient, TestServer], client_for: ClientFactory
) -> None:
    gateway, backend = default_mock_gateway
    with pytest.raises(ollama.ResponseError) as refused:
        await client_for(gateway, token="wrong").chat(
            model="default", messages=[{"role": "user", "content": "x"}], stream=False
        )
    assert refused.value.status_code == 401
    assert not backend.app[RECEIVED]


async def test_a_backend_dying_mid_stream_ends_with_an_error_line(
    make_gateway: Any, start_mock: Any, client_for: ClientFactory
) -> None:
    gateway, _ = await fake_gateway(make_gateway, start_mock, dying_mid_stream)
    seen = []
    with pytest.raises(ollama.ResponseError) as failed:
        async for part in await client_for(gateway).chat(
            model="fake-model", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            seen.append(part.message.content)
    assert seen == ["partial "]
    assert "fake" in failed.value.error and "127.0.0.1" not in failed.value.error


async def test_raw_generate_goes_to_text_completions(
    default_mock_gateway: tuple[TestClient, TestServer], client_for: ClientFactory
) -> None:
    gateway, backend = default_mock_gateway
    client = client_for(gateway)
    prompt = "[INST] why? [/INST]"
    reply = await client.generate(
        model="default", prompt=prompt, raw=True, options={"num_predict": 32}, stream=False
    )
    assert reply.response == f"Mock completion of: {prompt}" and reply.done is True
    received = backend.app[RECEIVED][-1]
    assert received.path == "/v1/completions"
    assert received.body == {"model": "mock-llama", "prompt": prompt, "max_tokens": 32}
    parts = [
        p
        async for p in await client.generate(model="default", prompt=prompt, raw=True, stream=True)
    ]
    assert "".join(p.response or "" for p in parts) == f"Mock completion of: {prompt}"
    assert parts[-1].done is True and parts[-1].done_reason == "stop"
    with pytest.raises(ollama.ResponseError) as refused:
        await client.generate(model="default", prompt=prompt, raw=True, system="no", stream=False)
    assert refused.value.status_code == 400


async def test_a_client_hanging_up_mid_stream_frees_the_slot_and_the_backend(
    make_gateway: Any, start_mock: Any
) -> None:
    backend = HeldBackend(endless=True)
    gateway = await held_gateway(make_gateway, start_mock, backend, limits="{chat: 4}")
    body = {"model": HELD_MODEL, "messages": [{"role": "user", "content": "go"}]}
    for round_ in range(1, 4):
        response = await gateway.post("/api/chat", json=body, headers=AUTH)
        assert response.status == 200
        first = json.loads(await response.content.readline())
        assert first["message"]["content"] == "alpha " and first["done"] is False
        response.close()  # drops the connection: the client is gone
        await wait_for_status(gateway, f"stream {round_}'s slot freed", in_flight=0)
        await wait_for(lambda n=round_: backend.cancelled == n, "the backend to be dropped")
    status = await wait_for_status(gateway, "all done", in_flight=0)
    assert status["admitted"] == 3
