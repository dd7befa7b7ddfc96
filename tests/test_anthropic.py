"""The Anthropic Messages face, driven by the official ``anthropic`` SDK against a real
gateway (app factory) in front of the fake OpenAI backend, which records what it got."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic
import pytest
from aiohttp.test_utils import TestClient, TestServer

from sidecar.mock_backends.openai_server import RECEIVED

from .conftest import TOKEN, dying_mid_stream, fake_gateway, last_body
from .test_admission import MODEL as HELD_MODEL
from .test_admission import HeldBackend, held_gateway, wait_for, wait_for_status

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


ClientFactory = Callable[..., anthropic.AsyncAnthropic]


@pytest.fixture
async def client_for() -> AsyncIterator[ClientFactory]:
    """``client_for(gateway, **kwargs)``: an SDK client for the gateway, closed at the end."""
    made: list[anthropic.AsyncAnthropic] = []

    def make(gateway: TestClient, **kwargs: Any) -> anthropic.AsyncAnthropic:
        kwargs.setdefault("api_key", TOKEN)
        client = anthropic.AsyncAnthropic(
            base_url=str(gateway.make_url("")), max_retries=0, **kwargs
        )
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def test_create_answers_a_message_and_sends_chat_upstream(
    default_mock_gateway: tuple[TestClient, TestServer], client_for: ClientFactory
) -> None:
    gateway, backend = default_mock_gateway
    client = client_for(gateway)
    raw = await client.messages.with_raw_response.create(
        model="default",
        max_tokens=64,
        system=[{"type": "text", "text": "Be brief."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
        stop_sequences=["END"],
        metadata={"user_id": "someone"},
        output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}},
        # Older clients (and Claude Code) still send sampling parameters.
        extra_body={"temperature": 0.5, "top_k": 5},
    )
    message = await raw.parse()
    assert raw.headers["X-Backend-Used"] == "mock"
    assert message.id.startswith("msg_") and message.type == "message"
    assert message.role == "assistant" and message.model == "default"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Mock reply to: hello there"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    sent = last_body(backend)
    assert sent["model"] == "mock-llama"
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"},
    ]
    assert sent["max_tokens"] == 64 and sent["stop"] == ["END"] and sent["temperature"] == 0.5
    assert "top_k" not in sent and "metadata" not in sent and "stream" not in sent
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": {"type": "object"}},
    }


async def test_x_api_key_and_version_headers_are_accepted_and_optional(
    default_mock_gateway: tuple[TestClient, TestServer],
) -> None:
    gateway, _ = default_mock_gateway
    body = {"model": "default", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    for headers in (
        {"x-api-key": TOKEN},
        {"Authorization": f"Bearer {TOKEN}"},
        {"x-api-key": TOKEN, "anthropic-version": "2023-06-01", "anthropic-beta": "x-2025"},
    ):
        response = await gateway.post("/v1/messages", json=body, headers=headers)
        assert response.status == 200, await response.text()
        assert (await response.json())["type"] == "message"


async def test_max_tokens_reached_is_the_max_tokens_stop_reason(
    default_mock_gateway: tuple[TestClient, TestServer], client_for: ClientFactory
) -> None:
    gateway, _ = default_mock_gateway
    message = await client_for(gateway).messages.create(
        model="default",
        max_tokens=2,
        messages=[{"role": "user", "content": "one two three four"}],
    )
    assert message.stop_reason == "max_tokens"
    assert message.content[0].text == "Mock reply"  # type: ignore[union-attr]


async def test_stream_follows_anthropic_event_sequence(
    default_mock_gateway: tuple[TestClient, TestServer], client_for: ClientFactory
) -> None:
    gateway, backend = default_mock_gateway
    client = client_for(gateway)
    async with client.messages.stream(
        model="default",
        max_tokens=64,
        messages=[{"role": "user", "content": "stream this please"}],
    ) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert len(pieces) > 1
    assert "".join(pieces) == "Mock reply to: stream this please"
    assert final.stop_reason == "end_turn"
    sent = last_body(backend)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    # The backend's usage (a word a token in the fake) is what message_delta reports.
    assert final.usage.output_tokens == 6

    response = await gateway.post(
        "/v1/messages",
        json={
            "model": "default",
            "max_tokens": 64,
            "stream": True,
            "messages": [{"role": "user", "content": "raw events"}],
        },
        headers={"x-api-key": TOKEN},
    )
    assert response.status == 200
    assert response.content_type == "text/event-stream"
    events = parse_sse(await response.text())
    kinds = [kind for kind, _ in events]
    assert kinds[:3] == ["message_start", "ping", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[3:-3]) == {"content_block_delta"}
    for kind, data in events:
        assert data["type"] == kind
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 5  # "Mock reply to: raw events"


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


async def test_tool_round_trip(
    default_mock_gateway: tuple[TestClient, TestServer], client_for: ClientFactory
) -> None:
    gateway, backend = default_mock_gateway
    client = client_for(gateway)
    question: dict[str, Any] = {"role": "user", "content": 'Weather? {"city": "Oslo"}'}
    first = await client.messages.create(
        model="default",
        max_tokens=256,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "any"},
        messages=[question],
    )
    assert first.stop_reason == "tool_use"
    tool_use = first.content[-1]
    assert tool_use.type == "tool_use"
    assert tool_use.name == "get_weather" and tool_use.input == {"city": "Oslo"}
    sent = last_body(backend)
    assert sent["tool_choice"] == "required"
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["input_schema"],
                "description": "The weather in a city",
            },
        }
    ]

    second = await client.messages.create(
        model="default",
        max_tokens=256,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[
            question,
            {"role": "assistant", "content": first.content},  # type: ignore[typeddict-item]
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": tool_use.id, "content": "11 C, rain"}
                ],
            },
        ],
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == "The tool returned: 11 C, rain"  # type: ignore[union-attr]
    sent = last_body(backend)
    assistant, tool = sent["messages"][1], sent["messages"][2]
    assert assistant["role"] == "assistant"
    assert assistant["tool_calls"][0]["id"] == tool_use.id
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert tool == {"role": "tool", "tool_call_id": tool_use.id, "content": "11 C, rain"}


async def test_streamed_tool_use_arrives_as_input_json_deltas(
    default_mock_gateway: tuple[TestClient, TestServer], client_for: ClientFactory
) -> None:
    gateway, _ = default_mock_gateway
    client = client_for(gateway)
    async with client.messages.stream(
        model="default",
        max_tokens=256,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": 'Weather? {"city": "Bergen"}'}],
    ) as stream:
        kinds = []
        partial = []
        async for event in stream:
            kinds.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                partial.append(event.delta.partial_json)
        final = await stream.get_final_message()
    assert len(partial) == 2  # the fake sends the arguments in two halves
    assert json.loads("".join(partial)) == {"city": "Bergen"}
    assert final.stop_reason == "tool_use"
    block = final.content[0]
    assert block.type == "tool_use" and block.input == {"city": "Bergen"}
    assert block.name == "get_weather"


async def test_images_become_image_url_parts(
    default_mock_gateway: tuple[TestClient, TestServer], client_for: ClientFactory
) -> None:
    gateway, backend = default_mock_gateway
    await client_for(gateway).messages.create(
        model="default",
        max_tokens=16,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                    {"type": "text", "text": "what is this?"},
                ],
            }
        ],
    )
    parts = last_body(backend)["messages"][0]["content"]
    assert parts == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
        {"type": "text", "text": "what is this?"},
    ]


async def test_count_tokens_estimates(
    default_mock_gateway: tuple[TestClient, TestServer], client_for: ClientFactory
) -> None:
    gateway, _ = default_mock_gateway
    client = client_for(gateway)
    short = await client.messages.count_tokens(
        model="default", messages=[{"role": "user", "content": "hi"}]
    )
    long = await client.messages.count_tokens(
        model="default",
        system="You are a careful assistant. " * 20,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "hi " * 200}],
    )
    assert 0 < short.input_tokens < long.input_tokens
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.count_tokens(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5}, "model"),
        ({"model": "default", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": "default", "max_tokens": 5, "messages": []}, "messages"),
        (
            {"model": "default", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]},
            "max_tokens",
        ),
        (
            {"model": "default", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
            "messages.0.role",
        ),
        (
            {
                "model": "default",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}],
            },
            "messages.0.content.0",
        ),
        (
            {
                "model": "default",
                "max_tokens": 5,
                "temperature": 1.5,
                "messages": [{"role": "user", "content": "x"}],
            },
            "temperature",
        ),
        (
            {
                "model": "default",
                "max_tokens": 5,
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
                "messages": [{"role": "user", "content": "x"}],
            },
            "tools.0",
        ),
        (
            {
                "model": "default",
                "max_tokens": 5,
                "tool_choice": {"type": "sometimes"},
                "messages": [{"role": "user", "content": "x"}],
            },
            "tool_choice",
        ),
    ],
)
async def test_bad_requests_are_400_in_anthropic_shape(
    default_mock_gateway: tuple[TestClient, TestServer], body: dict[str, Any], param: str
) -> None:
    gateway, backend = default_mock_gateway
    response = await gateway.post("/v1/messages", json=body, headers={"x-api-key": TOKEN})
    assert response.status == 400
    error = await response.json()
    assert set(error) == {"type", "error"} and error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"].startswith(param)
    assert not backend.app[RECEIVED]


async def test_sdk_sees_anthropic_errors(
    default_mock_gateway: tuple[TestClient, TestServer], client_for: ClientFactory
) -> None:
    gateway, _ = default_mock_gateway
    with pytest.raises(anthropic.NotFoundError) as not_found:
        await client_for(gateway).messages.create(
            model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert not_found.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError):
        await client_for(gateway, api_key="wrong").messages.create(
            model="default", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    response = await gateway.post(
        "/v1/messages", data=b'{"model": NaN}', headers={"x-api-key": TOKEN}
    )
    assert response.status == 400
    assert (await response.json())["error"]["type"] == "invalid_request_error"


async def test_a_backend_dying_mid_stream_is_an_error_event(
    make_gateway: Any, start_mock: Any, client_for: ClientFactory
) -> None:
    gateway, _ = await fake_gateway(make_gateway, start_mock, dying_mid_stream)
    client = client_for(gateway)
    seen = []
    with pytest.raises(anthropic.APIStatusError) as failed:
        async with client.messages.stream(
            model="fake-model", max_tokens=16, messages=[{"role": "user", "content": "x"}]
        ) as stream:
            async for text in stream.text_stream:
                seen.append(text)
    assert seen == ["partial "]
    assert "fake" in str(failed.value) and "127.0.0.1" not in str(failed.value)
    response = await gateway.post(
        "/v1/messages",
        json={
            "model": "fake-model",
            "max_tokens": 16,
            "stream": True,
            "messages": [{"role": "user", "content": "x"}],
        },
        headers={"x-api-key": TOKEN},
    )
    events = parse_sse(await response.text())
    assert [kind for kind, _ in events][-2:] == ["content_block_stop", "error"]
    assert events[-1][1]["error"]["type"] == "api_error"


async def test_tool_results_with_errors_and_images_and_thinking_blocks(
    default_mock_gateway: tuple[TestClient, TestServer], client_for: ClientFactory
) -> None:
    gateway, backend = default_mock_gateway
    image = {"type": "image", "source": {"type": "url", "url": "https://x.test/shot.png"}}
    await client_for(gateway).messages.create(
        model="default",
        max_tokens=16,
        messages=[
            {"role": "user", "content": "look"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "Taking two."},
                    {"type": "tool_use", "id": "call_a", "name": "shot", "input": {}},
                    {"type": "tool_use", "id": "call_b", "name": "shot", "input": {"n": 2}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "call_a",
                        "content": "boom",
                        "is_error": True,
                    },
                    {
                        "type": "tool_result",
                        "tool_use_id": "call_b",
                        "content": [{"type": "text", "text": "here"}, image],
                    },
                    {"type": "text", "text": "and?"},
                ],
            },
        ],
    )
    messages = last_body(backend)["messages"]
    assert messages[1]["content"] == "Taking two."
    assert [call["id"] for call in messages[1]["tool_calls"]] == ["call_a", "call_b"]
    assert messages[2:] == [
        {"role": "tool", "tool_call_id": "call_a", "content": "Error: boom"},
        {"role": "tool", "tool_call_id": "call_b", "content": "here"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "https://x.test/shot.png"}},
                {"type": "text", "text": "and?"},
            ],
        },
    ]


async def test_a_client_hanging_up_mid_stream_frees_the_slot_and_the_backend(
    make_gateway: Any, start_mock: Any
) -> None:
    backend = HeldBackend(endless=True)
    gateway = await held_gateway(make_gateway, start_mock, backend, limits="{chat: 4}")
    body = {
        "model": HELD_MODEL,
        "max_tokens": 16,
        "stream": True,
        "messages": [{"role": "user", "content": "go"}],
    }
    for round_ in range(1, 4):
        response = await gateway.post("/v1/messages", json=body, headers={"x-api-key": TOKEN})
        assert response.status == 200
        seen = b""
        while b"content_block_delta" not in seen:  # the first text has come through
            seen += await response.content.readany()
        response.close()  # drops the connection: the client is gone
        await wait_for_status(gateway, f"stream {round_}'s slot freed", in_flight=0)
        await wait_for(lambda n=round_: backend.cancelled == n, "the backend to be dropped")
    status = await wait_for_status(gateway, "all done", in_flight=0)
    assert status["admitted"] == 3
