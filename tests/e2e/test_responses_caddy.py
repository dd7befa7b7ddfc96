"""``/v1/responses`` end to end through real Caddy (``gateway up``) with the openai SDK:
plain, streamed (each event arrives while the backend holds back the next chunk), a
function tool round trip and ``previous_response_id``, and the per-token store."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from ..conftest import OTHER_TOKEN, TOKEN
from .stack import GatedBackend, GatewayStack, gated_config

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


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, gated_port: int) -> Iterator[GatewayStack]:
    with GatewayStack(
        tmp_path_factory.mktemp("responses-e2e"),
        gated_config(gated_port, mock_health="{readiness: false}", mock_embed=False),
        TOKEN,
        GATEWAY_BEARER_TOKENS=f"other:{OTHER_TOKEN}",
    ) as gateway:
        yield gateway


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
    async with stack.openai(api_key=OTHER_TOKEN) as other:
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(third.id)


async def test_streamed_events_arrive_one_by_one_through_caddy(
    stack: GatewayStack, gated: GatedBackend
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
