"""The official openai SDK against the sidecar: what API clients see."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
from aiohttp import web

from sidecar.mock_backends.openai_server import RECEIVED

from .conftest import gateway_yaml, mock_backend_yaml, openai_client


async def test_models_list_shows_backend_models_and_aliases(gateway: Any) -> None:
    async with openai_client(gateway) as client:
        models = await client.models.list()
    ids = [model.id for model in models.data]
    assert ids == ["mock-llama", "mock-embed", "default"]
    assert {model.owned_by for model in models.data} == {"mock"}


async def test_chat_plain(gateway: Any) -> None:
    async with openai_client(gateway) as client:
        reply = await client.chat.completions.with_raw_response.create(
            model="default", messages=[{"role": "user", "content": "hello gateway"}]
        )
    completion = reply.parse()
    assert completion.choices[0].message.content == "Mock reply to: hello gateway"
    assert completion.choices[0].finish_reason == "stop"
    assert reply.headers["X-Backend-Used"] == "mock"
    assert reply.headers["X-Model-Used"] == "mock-llama"
    assert reply.headers["X-Request-Id"].startswith("req-")
    assert len(reply.headers["X-Request-Id"]) == len("req-") + 24


async def test_chat_stream_chunks_arrive_one_by_one(make_gateway: Any, start_mock: Any) -> None:
    """Each chunk reaches the client while the backend still holds back the next one."""
    gates = [asyncio.Event() for _ in range(3)]

    async def gated_chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index, gate in enumerate(gates):
            chunk = {
                "id": "chatcmpl-gated",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "gated",
                "choices": [{"index": 0, "delta": {"content": f"part{index} "}}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await gate.wait()
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", gated_chat)
    backend = await start_mock(app)
    gateway = await make_gateway(
        gateway_yaml(
            mock_backend_yaml("gated", backend, models="[gated]", health="{readiness: false}")
        )
    )
    seen = []
    async with openai_client(gateway) as client:
        stream = await client.chat.completions.create(
            model="gated", messages=[{"role": "user", "content": "go"}], stream=True
        )
        async for chunk in stream:
            seen.append(chunk.choices[0].delta.content)
            # The backend has sent exactly len(seen) chunks; release the next one only now.
            gates[len(seen) - 1].set()
    assert seen == ["part0 ", "part1 ", "part2 "]


async def test_chat_stream_with_usage(gateway: Any) -> None:
    async with openai_client(gateway) as client:
        stream = await client.chat.completions.create(
            model="mock-llama",
            messages=[{"role": "user", "content": "one two three four"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Mock reply to: one two three four"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


async def test_tool_call_round_trip(gateway: Any, start_mock: Any) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": 'What is the weather? get_weather {"city": "Oslo"}'}
    ]
    async with openai_client(gateway) as client:
        first = await client.chat.completions.create(
            model="default", messages=messages, tools=tools, tool_choice="auto"
        )
        call = first.choices[0].message.tool_calls[0]
        assert first.choices[0].finish_reason == "tool_calls"
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Oslo"}
        messages.append(first.choices[0].message.model_dump(exclude_none=True))
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"})
        second = await client.chat.completions.create(
            model="default", messages=messages, tools=tools
        )
    assert second.choices[0].message.content == "The tool returned: sunny, 21C"


async def test_tool_call_streamed_with_forced_choice(gateway: Any) -> None:
    tools = [{"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}}]
    async with openai_client(gateway) as client:
        stream = await client.chat.completions.create(
            model="mock-llama",
            messages=[{"role": "user", "content": "anything"}],
            tools=tools,
            tool_choice={"type": "function", "function": {"name": "noop"}},
            stream=True,
        )
        chunks = [chunk async for chunk in stream]
    fragments = [
        call.function.arguments
        for chunk in chunks
        for call in (chunk.choices[0].delta.tool_calls or [])
        if call.function and call.function.arguments
    ]
    assert json.loads("".join(fragments)) == {}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_unknown_fields_and_tools_reach_the_backend(
    make_gateway: Any, start_mock: Any
) -> None:
    backend = await start_mock()
    gateway = await make_gateway(gateway_yaml(mock_backend_yaml("mock", backend)))
    async with openai_client(gateway) as client:
        await client.chat.completions.create(
            model="mock-llama",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"mirostat": 2, "keep_alive": "5m"},
            seed=7,
        )
    received = backend.app[RECEIVED][-1]
    assert received.body["mirostat"] == 2
    assert received.body["keep_alive"] == "5m"
    assert received.body["seed"] == 7
    # The client's token never goes upstream.
    assert "Authorization" not in received.headers


async def test_completions(gateway: Any) -> None:
    async with openai_client(gateway) as client:
        completion = await client.completions.create(model="mock-llama", prompt="say this")
    assert completion.choices[0].text == "Mock completion of: say this"


async def test_completions_stream(gateway: Any) -> None:
    async with openai_client(gateway) as client:
        stream = await client.completions.create(model="mock-llama", prompt="a b c d", stream=True)
        text = "".join([chunk.choices[0].text async for chunk in stream])
    assert text == "Mock completion of: a b c d"


async def test_embeddings_float_and_base64(gateway: Any) -> None:
    async with openai_client(gateway) as client:
        floats = await client.embeddings.create(
            model="mock-embed", input=["alpha", "beta"], encoding_format="float"
        )
        decoded = await client.embeddings.create(model="mock-embed", input=["alpha", "beta"])
    assert [item.index for item in floats.data] == [0, 1]
    assert len(floats.data[0].embedding) == 8
    assert floats.data[0].embedding != floats.data[1].embedding
    for plain, from_base64 in zip(floats.data, decoded.data, strict=True):
        assert all(
            abs(a - b) < 1e-6 for a, b in zip(plain.embedding, from_base64.embedding, strict=True)
        )


async def test_wrong_capability_is_400(gateway: Any) -> None:
    async with openai_client(gateway) as client:
        try:
            await client.embeddings.create(model="mock-llama", input="x")
        except openai.BadRequestError as exc:
            assert exc.body["code"] == "capability_not_supported"
        else:
            raise AssertionError("expected a 400")
