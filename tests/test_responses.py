"""``/v1/responses`` through the official openai SDK: translated onto chat completions for
a backend without native support, passed through for one that declares ``responses``,
stored per token for ``previous_response_id`` and ``GET /v1/responses/{id}``."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from aiohttp import web

from sidecar.mock_backends.openai_server import RECEIVED

from .conftest import (
    OTHER_TOKEN,
    TOKEN,
    assert_envelope,
    chunk,
    gateway_on,
    gateway_yaml,
    mock_backend_yaml,
    openai_client,
    sse,
    status_of,
)

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture
async def mocked(make_gateway: Any, start_mock: Any) -> tuple[Any, Any]:
    """A gateway in front of the stock mock (chat only), and that mock."""
    backend = await start_mock()
    gateway = await make_gateway(
        gateway_yaml(
            mock_backend_yaml("mock", backend, health="{readiness: false}"),
            aliases="default: {backend: mock, model: mock-llama}",
        )
    )
    return gateway, backend


def _chat_bodies(backend: Any) -> list[dict[str, Any]]:
    return [r.body for r in backend.app[RECEIVED] if r.path == "/v1/chat/completions"]


async def test_plain_response_is_translated_onto_chat(mocked: tuple[Any, Any]) -> None:
    gateway, backend = mocked
    async with openai_client(gateway) as client:
        raw = await client.responses.with_raw_response.create(
            model="default",
            input="hello responses",
            instructions="Be brief.",
            temperature=0.5,
            top_p=0.9,
            max_output_tokens=64,
            metadata={"purpose": "test"},
        )
    response = raw.parse()
    assert raw.headers["X-Backend-Used"] == "mock"
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.model == "default"
    assert response.output_text == "Mock reply to: hello responses"
    [message] = response.output
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.status == "completed"
    assert response.usage is not None
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.instructions == "Be brief."
    assert response.metadata == {"purpose": "test"}
    [sent] = _chat_bodies(backend)
    assert sent["model"] == "mock-llama"
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello responses"},
    ]
    assert sent["temperature"] == 0.5 and sent["top_p"] == 0.9 and sent["max_tokens"] == 64
    assert "stream" not in sent


async def test_input_items_become_chat_messages(mocked: tuple[Any, Any]) -> None:
    gateway, backend = mocked
    async with openai_client(gateway) as client:
        response = await client.responses.create(
            model="mock-llama",
            input=[
                {"role": "developer", "content": "Answer in English."},
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hi"}],
                },
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "hello", "annotations": []}],
                },
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what is this?"},
                        {
                            "type": "input_image",
                            "image_url": "data:image/png;base64,iVBORw0KGgo=",
                            "detail": "low",
                        },
                    ],
                },
            ],
        )
    assert response.output_text.strip() == "Mock reply to: what is this?"
    [sent] = _chat_bodies(backend)
    assert sent["messages"] == [
        {"role": "system", "content": "Answer in English."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
                },
            ],
        },
    ]


async def test_streamed_response_follows_the_documented_event_sequence(
    mocked: tuple[Any, Any],
) -> None:
    gateway, backend = mocked
    async with openai_client(gateway) as client:
        stream = await client.responses.create(
            model="default", input="one two three four five six", stream=True
        )
        events = [event async for event in stream]
    types = [event.type for event in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1  # the mock streams in several pieces
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "Mock reply to: one two three four five six"
    assert "".join(d.delta for d in deltas) == text
    item_id = events[2].item.id  # type: ignore[union-attr]
    assert {d.item_id for d in deltas} == {item_id}
    assert {(d.output_index, d.content_index) for d in deltas} == {(0, 0)}
    assert events[-4].text == text  # type: ignore[union-attr]
    completed = events[-1].response  # type: ignore[union-attr]
    assert completed.status == "completed"
    assert completed.output_text == text
    assert completed.output[0].id == item_id
    assert completed.usage is not None and completed.usage.output_tokens > 0
    [sent] = _chat_bodies(backend)
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    # The stored response is the one the stream completed with.
    async with openai_client(gateway) as client:
        stored = await client.responses.retrieve(completed.id)
    assert stored.output_text == text
    assert stored.usage == completed.usage


async def test_function_tool_round_trip_with_previous_response_id(
    mocked: tuple[Any, Any],
) -> None:
    gateway, backend = mocked
    async with openai_client(gateway) as client:
        first = await client.responses.create(
            model="default",
            input="What is the weather in Paris?",
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            tool_choice="required",
        )
        [call] = first.output
        assert call.type == "function_call"
        assert call.name == "get_weather"
        assert call.call_id.startswith("call_")
        assert json.loads(call.arguments) == {"city": "mock"}
        second = await client.responses.create(
            model="default",
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
        )
    assert second.output_text == "The tool returned: sunny"
    assert second.previous_response_id == first.id
    first_sent, second_sent = _chat_bodies(backend)
    assert first_sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": WEATHER_TOOL["parameters"],
            },
        }
    ]
    assert first_sent["tool_choice"] == "required"
    assert second_sent["messages"] == [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"},
    ]


async def test_streamed_function_call_arguments(mocked: tuple[Any, Any]) -> None:
    gateway, _ = mocked
    async with openai_client(gateway) as client:
        stream = await client.responses.create(
            model="default",
            input='weather please {"city": "Oslo"}',
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            tool_choice={"type": "function", "name": "get_weather"},
            stream=True,
        )
        events = [event async for event in stream]
    types = [event.type for event in events]
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) == 2  # the mock sends the arguments in two halves
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = events[2].item  # type: ignore[union-attr]
    assert added.type == "function_call" and added.name == "get_weather"
    done = events[5]
    assert json.loads(done.arguments) == {"city": "Oslo"}  # type: ignore[union-attr]
    assert "".join(d.delta for d in deltas) == done.arguments  # type: ignore[union-attr]
    [item] = events[-1].response.output  # type: ignore[union-attr]
    assert item.type == "function_call" and item.call_id == added.call_id
    assert item.arguments == done.arguments  # type: ignore[union-attr]


async def test_previous_response_id_rebuilds_the_conversation(mocked: tuple[Any, Any]) -> None:
    gateway, backend = mocked
    async with openai_client(gateway) as client:
        first = await client.responses.create(
            model="default", input="My name is Ada.", instructions="first instructions"
        )
        second = await client.responses.create(
            model="default", input="What is my name?", previous_response_id=first.id
        )
        third = await client.responses.create(
            model="default", input="And again?", previous_response_id=second.id
        )
    assert third.output_text == "Mock reply to: And again?"
    sent = _chat_bodies(backend)
    # Instructions are not carried over (as the API documents); everything else is.
    assert sent[2]["messages"] == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Mock reply to: My name is Ada."},
        {"role": "user", "content": "What is my name?"},
        {"role": "assistant", "content": "Mock reply to: What is my name?"},
        {"role": "user", "content": "And again?"},
    ]


async def test_stored_responses_belong_to_their_token(mocked: tuple[Any, Any]) -> None:
    gateway, _ = mocked
    async with openai_client(gateway) as mine, openai_client(gateway, OTHER_TOKEN) as theirs:
        made = await mine.responses.create(model="default", input="private")
        fetched = await mine.responses.retrieve(made.id)
        assert fetched.model_dump() == made.model_dump()
        with pytest.raises(openai.NotFoundError):
            await theirs.responses.retrieve(made.id)
        with pytest.raises(openai.NotFoundError):
            await theirs.responses.create(
                model="default", input="steal", previous_response_id=made.id
            )
        with pytest.raises(openai.NotFoundError):
            await theirs.responses.delete(made.id)
        await mine.responses.retrieve(made.id)  # still there after their delete
        await mine.responses.delete(made.id)
        with pytest.raises(openai.NotFoundError):
            await mine.responses.retrieve(made.id)
    # The other token's 404 is the one an unknown id gets: nothing tells them apart.
    headers = {"Authorization": f"Bearer {OTHER_TOKEN}"}
    theirs_404 = await gateway.get(f"/v1/responses/{made.id}", headers=headers)
    unknown_404 = await gateway.get("/v1/responses/resp_unknown", headers=headers)
    long_404 = await gateway.delete("/v1/responses/" + "r" * 5000, headers=headers)
    assert theirs_404.status == unknown_404.status == long_404.status == 404
    assert await theirs_404.json() == await unknown_404.json() == await long_404.json()
    assert_envelope(
        await unknown_404.json(),
        error_type="invalid_request_error",
        code="not_found",
        param="response_id",
    )


async def test_store_false_keeps_nothing(mocked: tuple[Any, Any]) -> None:
    gateway, _ = mocked
    async with openai_client(gateway) as client:
        response = await client.responses.create(model="default", input="forget", store=False)
        assert response.model_extra is not None and response.model_extra["store"] is False
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(response.id)
        with pytest.raises(openai.NotFoundError) as caught:
            await client.responses.create(
                model="default", input="again", previous_response_id=response.id
            )
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]


async def test_text_format_json_schema_becomes_response_format(mocked: tuple[Any, Any]) -> None:
    gateway, backend = mocked
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    async with openai_client(gateway) as client:
        response = await client.responses.create(
            model="default",
            input="give x",
            text={
                "format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
            },
        )
    assert response.text is not None and response.text.format.type == "json_schema"
    [sent] = _chat_bodies(backend)
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": schema, "strict": True},
    }


async def test_allowed_tools_narrow_the_tool_list(mocked: tuple[Any, Any]) -> None:
    gateway, backend = mocked
    other = {**WEATHER_TOOL, "name": "get_time"}
    async with openai_client(gateway) as client:
        await client.responses.create(
            model="default",
            input="hi",
            tools=[WEATHER_TOOL, other],  # type: ignore[list-item]
            tool_choice={
                "type": "allowed_tools",
                "mode": "auto",
                "tools": [{"type": "function", "name": "get_time"}],
            },
        )
    [sent] = _chat_bodies(backend)
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["get_time"]
    assert sent["tool_choice"] == "auto"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "default"}, "input"),
        ({"model": "default", "input": 5}, "input"),
        ({"model": "default", "input": []}, "input"),
        ({"model": "default", "input": [{"type": "reasoning", "summary": []}]}, "input"),
        ({"model": "default", "input": [{"type": "file_search_call"}]}, "input[0].type"),
        ({"model": "default", "input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
        (
            {"model": "default", "input": [{"role": "user", "content": [{"type": "x"}]}]},
            "input[0].content[0]",
        ),
        ({"model": "default", "input": [{"role": "user", "content": 1}]}, "input[0].content"),
        (
            {"model": "default", "input": [{"type": "function_call_output", "output": "x"}]},
            "input[0].call_id",
        ),
        ({"model": "default", "input": ["x"] * 1001}, "input"),
        ({"model": "default", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"model": "default", "input": "x", "tools": [WEATHER_TOOL] * 129}, "tools"),
        ({"model": "default", "input": "x", "tool_choice": {"type": "mcp"}}, "tool_choice"),
        ({"model": "default", "input": "x", "temperature": 3}, "temperature"),
        ({"model": "default", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "default", "input": "x", "background": True}, "background"),
        ({"model": "default", "input": "x", "store": "yes"}, "store"),
        ({"model": "default", "input": "x", "stream": 0}, "stream"),
        ({"model": "default", "input": "x", "text": {"format": {"type": "yaml"}}}, "text"),
        ({"model": "default", "input": "x", "metadata": {"k": "v" * 513}}, "metadata"),
        (
            {"model": "default", "input": "x", "previous_response_id": "r" * 129},
            "previous_response_id",
        ),
        ({"input": "x"}, "model"),
    ],
)
async def test_bad_requests_are_400_envelopes(
    mocked: tuple[Any, Any], auth: dict[str, str], body: dict[str, Any], param: str
) -> None:
    gateway, backend = mocked
    response = await gateway.post("/v1/responses", json=body, headers=auth)
    assert response.status == 400
    code = (
        "missing_required_parameter"
        if param in ("model",) or body.keys() == {"model"}
        else "invalid_request"
    )
    assert_envelope(
        await response.json(), error_type="invalid_request_error", code=code, param=param
    )
    assert _chat_bodies(backend) == []


async def test_unknown_model_and_missing_token(
    mocked: tuple[Any, Any], auth: dict[str, str]
) -> None:
    gateway, _ = mocked
    response = await gateway.post(
        "/v1/responses", json={"model": "nope", "input": "x"}, headers=auth
    )
    assert response.status == 404
    assert_envelope(
        await response.json(),
        error_type="invalid_request_error",
        code="model_not_found",
        param="model",
    )
    response = await gateway.post("/v1/responses", json={"model": "default", "input": "x"})
    assert response.status == 401
    response = await gateway.get("/v1/responses/resp_x")
    assert response.status == 401


# -- failures from the backend ---------------------------------------------------------------


@pytest.mark.parametrize("ending", ["error_event", "cut", "aborted"])
async def test_backend_failing_mid_stream_ends_with_response_failed(
    make_gateway: Any, start_mock: Any, ending: str
) -> None:
    async def failing(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(
            sse(chunk(delta={"role": "assistant", "content": "partial "}, model="fake"))
        )
        if ending == "error_event":
            error = {
                "error": {"message": "out of memory at /srv/model.bin", "type": "server_error"}
            }
            await response.write(f"data: {json.dumps(error)}\n\n".encode())
        if ending == "aborted" and request.transport is not None:
            request.transport.close()
        return response  # ends without [DONE] or a finish_reason

    gateway = await gateway_on(make_gateway, start_mock, failing)
    async with openai_client(gateway) as client:
        stream = await client.responses.create(model="fake", input="go", stream=True)
        events = [event async for event in stream]
        types = [event.type for event in events]
        assert types == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "error",
            "response.failed",
        ]
        failed = events[-1].response  # type: ignore[union-attr]
        assert failed.status == "failed"
        assert failed.error is not None and failed.error.code == "server_error"
        assert "/srv" not in failed.error.message
        assert [event.sequence_number for event in events] == list(range(len(events)))
        # A failed response is not stored.
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(failed.id)
    assert (await status_of(gateway, "fake", "chat"))["in_flight"] == 0


async def test_backend_error_before_the_stream_is_an_envelope(
    make_gateway: Any, start_mock: Any, auth: dict[str, str]
) -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "context too long"}}, status=400)

    gateway = await gateway_on(make_gateway, start_mock, broken)
    for stream in (False, True):
        response = await gateway.post(
            "/v1/responses", json={"model": "fake", "input": "x", "stream": stream}, headers=auth
        )
        assert response.status == 400
        message = assert_envelope(
            await response.json(), error_type="invalid_request_error", code="upstream_rejected"
        )
        assert "context too long" in message


@pytest.mark.parametrize("capabilities", ["[chat]", "[chat, responses]"])
async def test_a_stream_answered_with_json_is_a_502_before_any_event(
    make_gateway: Any, start_mock: Any, auth: dict[str, str], capabilities: str
) -> None:
    """Asked to stream, the backend sends a whole JSON reply: the client gets a 502
    envelope naming the backend (no 200, no event), and the slot is released."""

    async def whole(request: web.Request) -> web.Response:
        return web.json_response({"object": "chat.completion", "choices": []})

    gateway = await gateway_on(make_gateway, start_mock, whole, capabilities=capabilities)
    response = await gateway.post(
        "/v1/responses", json={"model": "fake", "input": "x", "stream": True}, headers=auth
    )
    assert response.status == 502
    assert not response.headers["Content-Type"].startswith("text/event-stream")
    message = assert_envelope(await response.json(), error_type="api_error", code="upstream_error")
    assert "'fake' did not answer with a stream" in message
    capability = "responses" if "responses" in capabilities else "chat"
    assert (await status_of(gateway, "fake", capability))["in_flight"] == 0


async def test_length_limit_makes_an_incomplete_response(
    make_gateway: Any, start_mock: Any
) -> None:
    async def cut_short(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "fake",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "cut"},
                            "finish_reason": "length",
                        }
                    ],
                    "usage": usage,
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(sse(chunk("cut", model="fake")))
        await response.write(sse(chunk(finish="length", model="fake")))
        usage_chunk = {"id": "x", "object": "chat.completion.chunk", "choices": [], "usage": usage}
        await response.write(f"data: {json.dumps(usage_chunk)}\n\ndata: [DONE]\n\n".encode())
        return response

    gateway = await gateway_on(make_gateway, start_mock, cut_short)
    async with openai_client(gateway) as client:
        plain = await client.responses.create(model="fake", input="x", max_output_tokens=2)
        stream = await client.responses.create(model="fake", input="x", stream=True)
        events = [event async for event in stream]
    assert plain.status == "incomplete"
    assert plain.incomplete_details is not None
    assert plain.incomplete_details.reason == "max_output_tokens"
    assert events[-1].type == "response.incomplete"
    final = events[-1].response  # type: ignore[union-attr]
    assert final.status == "incomplete" and final.output_text == "cut"
    assert final.usage is not None and final.usage.total_tokens == 5


# -- backends with native Responses support ----------------------------------------------------


async def test_backend_with_the_responses_capability_gets_the_request_untouched(
    make_gateway: Any, start_mock: Any
) -> None:
    received: list[dict[str, Any]] = []

    async def native(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        received.append(body)
        reply = {
            "id": "resp_native1",
            "object": "response",
            "created_at": 1,
            "status": "completed",
            "model": body["model"],
            "output": [
                {
                    "id": "msg_n",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "native", "annotations": []}],
                }
            ],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        }
        if not body.get("stream"):
            return web.json_response(reply)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for number, event in enumerate(
            [
                {
                    "type": "response.created",
                    "response": {**reply, "status": "in_progress", "output": []},
                },
                {"type": "response.completed", "response": reply},
            ]
        ):
            event["sequence_number"] = number
            await response.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
        return response

    gateway = await gateway_on(
        make_gateway,
        start_mock,
        native,
        capabilities="[chat, responses]",
        models="[{id: native-model, capabilities: [chat, responses]}]",
    )
    hosted_tools = [{"type": "web_search"}]
    async with openai_client(gateway) as client:
        plain = await client.responses.with_raw_response.create(
            model="fake/native-model",
            input="hi",
            tools=hosted_tools,  # type: ignore[list-item]
            extra_body={"vendor_option": {"keep": True}},
        )
        stream = await client.responses.create(model="native-model", input="hi", stream=True)
        events = [event async for event in stream]
    assert plain.parse().output_text == "native"
    assert plain.headers["X-Backend-Used"] == "fake"
    assert received[0] == {
        "model": "native-model",
        "input": "hi",
        "tools": hosted_tools,
        "vendor_option": {"keep": True},
    }
    assert [event.type for event in events] == ["response.created", "response.completed"]
    assert received[1]["stream"] is True
    # The gateway stored nothing: the backend keeps its own state.
    async with openai_client(gateway) as client:
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve("resp_native1")


async def test_a_model_without_the_capability_on_that_backend_is_translated(
    make_gateway: Any, start_mock: Any
) -> None:
    seen: list[str] = []

    async def both(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response(
            {
                "id": "chatcmpl-x",
                "object": "chat.completion",
                "created": 0,
                "model": "fake",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
            }
        )

    gateway = await gateway_on(
        make_gateway,
        start_mock,
        both,
        capabilities="[chat, responses]",
        models="[{id: chat-only, capabilities: [chat]}]",
    )
    async with openai_client(gateway) as client:
        response = await client.responses.create(model="chat-only", input="x")
    assert response.output_text == "ok"
    assert response.usage is None
    assert seen == ["/v1/chat/completions"]


async def test_responses_capability_is_opt_in(make_gateway: Any, start_mock: Any) -> None:
    """A backend that lists no capabilities gets chat, completions and embeddings only."""
    backend = await start_mock()
    gateway = await make_gateway(
        gateway_yaml(
            mock_backend_yaml("mock", backend, models="[mock-llama]", health="{readiness: false}")
        )
    )
    async with openai_client(gateway) as client:
        response = await client.responses.create(model="mock-llama", input="x")
    assert response.output_text == "Mock reply to: x"
    assert [r.path for r in backend.app[RECEIVED]] == ["/v1/chat/completions"]


async def test_other_token_cannot_continue_but_can_start(mocked: tuple[Any, Any]) -> None:
    gateway, _ = mocked
    async with openai_client(gateway, TOKEN) as mine, openai_client(gateway, OTHER_TOKEN) as theirs:
        a = await mine.responses.create(model="default", input="a")
        b = await theirs.responses.create(model="default", input="b")
        await theirs.responses.retrieve(b.id)
        with pytest.raises(openai.NotFoundError):
            await mine.responses.retrieve(b.id)
        await mine.responses.retrieve(a.id)


async def test_alias_caps_apply_in_both_directions(make_gateway: Any, start_mock: Any) -> None:
    """An alias's token and temperature caps hold on the translated and the native path."""
    received: list[tuple[str, dict[str, Any]]] = []

    async def both(request: web.Request) -> web.Response:
        body = await request.json()
        received.append((request.path, body))
        if request.path.endswith("/responses"):
            return web.json_response({"id": "resp_n", "object": "response", "output": []})
        message = {"role": "assistant", "content": "ok"}
        return web.json_response(
            {"id": "c", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", both)
    app.router.add_post("/v1/responses", both)
    server = await start_mock(app)
    gateway = await make_gateway(
        gateway_yaml(
            mock_backend_yaml(
                "fake",
                server,
                capabilities="[chat, responses]",
                models="[{id: native, capabilities: [chat, responses]},"
                " {id: plain, capabilities: [chat]}]",
                health="{readiness: false}",
            ),
            aliases="""
            capped-native: {backend: fake, model: native, max_tokens_cap: 10, temperature_cap: 0.5}
            capped-plain: {backend: fake, model: plain, max_tokens_cap: 10, tools: false}
            """,
        )
    )
    async with openai_client(gateway) as client:
        await client.responses.create(
            model="capped-native", input="x", max_output_tokens=500, temperature=1.5
        )
        await client.responses.create(
            model="capped-plain", input="x", reasoning={"effort": "low"}, parallel_tool_calls=False
        )
        with pytest.raises(openai.BadRequestError) as caught:
            await client.responses.create(
                model="capped-plain",
                input="x",
                tools=[WEATHER_TOOL],  # type: ignore[list-item]
            )
    assert caught.value.body["param"] == "tools"  # type: ignore[index]
    (native_path, native), (plain_path, plain) = received
    assert native_path == "/v1/responses"
    assert native["model"] == "native"
    assert native["max_output_tokens"] == 10 and native["temperature"] == 0.5
    assert plain_path == "/v1/chat/completions"
    assert plain["model"] == "plain" and plain["max_tokens"] == 10
    assert plain["reasoning_effort"] == "low"
    assert "parallel_tool_calls" not in plain  # only sent along with tools


async def test_output_items_sent_back_as_input_continue_without_storage(
    mocked: tuple[Any, Any],
) -> None:
    """The stateless pattern: ``input`` = earlier input + ``response.output`` + results."""
    gateway, backend = mocked
    async with openai_client(gateway) as client:
        question: list[Any] = [{"role": "user", "content": "Weather in Rome?"}]
        first = await client.responses.create(
            model="default",
            input=question,
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            tool_choice="required",
            store=False,
        )
        [call] = first.output
        assert call.type == "function_call"
        history = [
            *question,
            *[item.model_dump(exclude_none=True) for item in first.output],
            {"type": "function_call_output", "call_id": call.call_id, "output": "hot"},
        ]
        second = await client.responses.create(model="default", input=history, store=False)
    assert second.output_text == "The tool returned: hot"
    sent = _chat_bodies(backend)[1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == call.call_id


async def test_native_stream_that_breaks_ends_with_an_error_event(
    make_gateway: Any, start_mock: Any
) -> None:
    async def breaking(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        created = {
            "type": "response.created",
            "sequence_number": 0,
            "response": {
                "id": "resp_n",
                "object": "response",
                "status": "in_progress",
                "output": [],
                "model": "native",
                "created_at": 0,
                "parallel_tool_calls": True,
                "tool_choice": "auto",
                "tools": [],
            },
        }
        await response.write(f"event: response.created\ndata: {json.dumps(created)}\n\n".encode())
        assert request.transport is not None
        request.transport.close()
        return response

    gateway = await gateway_on(
        make_gateway, start_mock, breaking, capabilities="[chat, responses]", models="[native]"
    )
    async with openai_client(gateway) as client:
        stream = await client.responses.create(model="native", input="x", stream=True)
        events = [event async for event in stream]
    assert [event.type for event in events] == ["response.created", "error"]
    error = events[-1]
    assert error.code == "upstream_error"  # type: ignore[union-attr]
    assert "'fake'" in error.message  # type: ignore[union-attr]
    assert (await status_of(gateway, "fake", "responses"))["in_flight"] == 0


async def test_the_sdk_stream_helper_accumulates_the_events(mocked: tuple[Any, Any]) -> None:
    """``responses.stream()`` rebuilds the Response from the events alone: every event
    must point at the item and part it belongs to."""
    gateway, _ = mocked
    async with openai_client(gateway) as client:
        async with client.responses.stream(
            model="default", input="count the words in this"
        ) as stream:
            texts = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            final = await stream.get_final_response()
        assert "".join(texts) == final.output_text == "Mock reply to: count the words in this"
        async with client.responses.stream(
            model="default",
            input='call it {"city": "Bern"}',
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            tool_choice="required",
        ) as stream:
            done = [e async for e in stream if e.type == "response.function_call_arguments.done"]
            final = await stream.get_final_response()
    [call] = final.output
    assert call.type == "function_call"
    assert json.loads(call.arguments) == {"city": "Bern"}
    assert done[0].arguments == call.arguments
