"""``/v1/responses`` end to end through real Caddy (``gateway up``) with the openai SDK:
plain, streamed (each event arrives while the backend holds back the next chunk), a
function tool round trip and ``previous_response_id``, and the per-token store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from aiohttp import web

from ..conftest import OTHER_TOKEN, TOKEN
from .stack import GatewayStack, free_port

pytestmark = pytest.mark.timeout(120)

WEATHER_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def _config(gated_port: int) -> str:
    return f"""
version: 1
backends:
  mock:
    url: ${{MOCK_BACKEND_URL:-http://127.0.0.1:9/v1}}
    class: mock
    health: {{readiness: false}}
    models:
      - {{id: mock-llama, capabilities: [chat, completions]}}
  gated:
    url: http://127.0.0.1:{gated_port}/v1
    capabilities: [chat]
    health: {{readiness: false}}
    models: [gated]
aliases:
  default: {{backend: mock, model: mock-llama}}
"""


@pytest.fixture(scope="module")
def gated_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, gated_port: int) -> Iterator[GatewayStack]:
    gateway = GatewayStack(
        tmp_path_factory.mktemp("responses-e2e"),
        _config(gated_port),
        TOKEN,
        GATEWAY_BEARER_TOKENS=f"other:{OTHER_TOKEN}",
    ).start()
    try:
        yield gateway
    finally:
        gateway.stop()


class GatedChat:
    """A chat backend whose stream sends its next chunk only on ``release()``."""

    def __init__(self) -> None:
        self.sent = 0
        self.gate = asyncio.Event()

    def release(self) -> None:
        self.gate.set()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index in range(3):
            chunk = {
                "id": "chatcmpl-gated",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "gated",
                "choices": [{"index": 0, "delta": {"content": f"part{index} "}}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.sent += 1
            await self.gate.wait()
            self.gate.clear()
        await response.write(b"data: [DONE]\n\n")
        return response


@pytest.fixture
async def gated(aiohttp_server: Any, gated_port: int) -> AsyncIterator[GatedChat]:
    backend = GatedChat()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", backend.chat)
    await aiohttp_server(app, port=gated_port)
    yield backend
    backend.release()


async def test_plain_tool_round_trip_and_previous_response_id_through_caddy(
    stack: GatewayStack,
) -> None:
    async with stack.openai() as client:
        plain = await client.responses.with_raw_response.create(
            model="default", input="through caddy"
        )
        assert plain.parse().output_text == "Mock reply to: through caddy"
        assert plain.headers["X-Backend-Used"] == "mock"
        first = await client.responses.create(
            model="default",
            input="What is the weather in Lyon?",
            tools=[WEATHER_TOOL],
            tool_choice="required",
        )
        [call] = first.output
        assert call.type == "function_call" and call.name == "get_weather"
        second = await client.responses.create(
            model="default",
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "rain"}],
        )
        assert second.output_text == "The tool returned: rain"
        third = await client.responses.create(
            model="default", previous_response_id=second.id, input="thanks"
        )
        assert third.output_text == "Mock reply to: thanks"
        stored = await client.responses.retrieve(third.id)
        assert stored.previous_response_id == second.id
        assert stored.output_text == third.output_text
    other = openai.AsyncOpenAI(
        base_url=f"{stack.base_url}/v1",
        api_key=OTHER_TOKEN,
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(verify=stack.ssl_context()),
    )
    async with other:
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(third.id)


async def test_streamed_events_arrive_one_by_one_through_caddy(
    stack: GatewayStack, gated: GatedChat
) -> None:
    deltas: list[str] = []
    types: list[str] = []
    async with stack.openai() as client:
        stream = await client.responses.create(model="gated", input="go", stream=True)
        async for event in stream:
            types.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
                # Only now may the backend send its next chunk: nothing was buffered.
                assert gated.sent == len(deltas)
                gated.release()
            if event.type == "response.completed":
                completed = event.response
    assert deltas == ["part0 ", "part1 ", "part2 "]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert completed.output_text == "part0 part1 part2 "
