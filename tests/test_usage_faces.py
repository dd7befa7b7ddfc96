"""Token usage and model scope on every face, not only the OpenAI one.

Each face (Anthropic Messages, the Ollama API, the Responses API translated and passed
through, rerank) is driven by its official client (or plain HTTP where none exists) through
the app factory, in front of real fake backends on loopback. The usage ledger writes to a
real SQLite file; a row's counts must be the ones the fake backend computed (its rule: a
word a token of the JSON of the messages it received and of the text it answered; fixed
numbers for the native Responses backend), not zero and not an estimate. A key with a
``tpm`` limit is refused once those real counts are past it; a key limited to one model
sees only it in ``/api/tags`` and gets 403 in each face's own error shape for another.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anthropic
import ollama
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.mock_backends.openai_server import RECEIVED
from sidecar.settings import UsageSettings
from sidecar.typedefs import KEYS

from .conftest import TOKEN, gateway_yaml, mock_backend_yaml, openai_client, usage_rows_for

HELLO = "hello there, how are you today"
NATIVE_PLAIN_USAGE = {"input_tokens": 17, "output_tokens": 5, "total_tokens": 22}
NATIVE_STREAM_USAGE = {"input_tokens": 19, "output_tokens": 7, "total_tokens": 26}


def _native_app() -> web.Application:
    """A backend with its own Responses API: fixed usage, so rows can be checked exactly.
    Its stream's text names the final event type, which must not be taken for it."""

    async def responses(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        reply: dict[str, Any] = {
            "id": "resp_native",
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
                    "content": [
                        {"type": "output_text", "text": "see response.completed", "annotations": []}
                    ],
                }
            ],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": NATIVE_PLAIN_USAGE,
        }
        if not body.get("stream"):
            return web.json_response(reply)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": {**reply, "output": [], "usage": None}},
            {
                "type": "response.output_text.delta",
                "item_id": "msg_n",
                "output_index": 0,
                "content_index": 0,
                "delta": "see response.completed",
            },
            {"type": "response.completed", "response": {**reply, "usage": NATIVE_STREAM_USAGE}},
        ]
        for number, event in enumerate(events):
            event["sequence_number"] = number
            data = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
            await response.write(data.encode())  # one read each: the marker is looked for
        return response

    app = web.Application()
    app.router.add_post("/v1/responses", responses)
    return app


@pytest.fixture
async def stack(
    make_gateway: Any, start_mock: Any, tmp_path: Path
) -> tuple[TestClient, TestServer]:
    backend = await start_mock()
    native = await start_mock(_native_app())
    gateway = await make_gateway(
        gateway_yaml(
            mock_backend_yaml(
                "mock",
                backend,
                capabilities="[chat, completions, embeddings, rerank]",
                models="[{id: mock-llama, capabilities: [chat, completions]},"
                " {id: mock-embed, capabilities: [embeddings]},"
                " {id: mock-rerank, capabilities: [rerank]}]",
                health="{readiness: false}",
            ),
            mock_backend_yaml(
                "native",
                native,
                capabilities="[chat, responses]",
                models="[{id: native-model, capabilities: [chat, responses]}]",
                health="{readiness: false}",
            ),
            aliases="default: {backend: mock, model: mock-llama}",
        ),
        usage=UsageSettings(flush_s=0.02),
    )
    return gateway, backend


def words(text: str) -> int:
    return len(text.split())


def chat_counts(received: dict[str, Any], answer: str) -> tuple[int, int]:
    """The fake backend's usage for a chat call: the words of the JSON of the messages it
    received, and of the text it answered."""
    return words(json.dumps(received["messages"])), words(answer)


def received(backend: TestServer, path: str) -> list[dict[str, Any]]:
    return [item.body for item in backend.app[RECEIVED] if item.path == path]


def counted(row: dict[str, Any]) -> tuple[int, int]:
    assert row["estimated"] == 0, row  # the backend's numbers, not a guess
    assert row["status"] == 200, row
    return row["prompt_tokens"], row["completion_tokens"]


@pytest.fixture
async def clients() -> AsyncIterator[dict[str, Callable[..., Any]]]:
    claudes: list[anthropic.AsyncAnthropic] = []
    llamas: list[ollama.AsyncClient] = []

    def anthropic_for(gateway: TestClient, token: str = TOKEN) -> anthropic.AsyncAnthropic:
        client = anthropic.AsyncAnthropic(
            base_url=str(gateway.make_url("")), api_key=token, max_retries=0
        )
        claudes.append(client)
        return client

    def ollama_for(gateway: TestClient, token: str = TOKEN) -> ollama.AsyncClient:
        client = ollama.AsyncClient(
            host=str(gateway.make_url("")), headers={"Authorization": f"Bearer {token}"}
        )
        llamas.append(client)
        return client

    yield {"anthropic": anthropic_for, "ollama": ollama_for}
    for claude in claudes:
        await claude.close()
    for llama in llamas:
        await llama._client.aclose()


async def make_key(gateway: TestClient, name: str, **values: Any) -> str:
    _, secret = await gateway.server.app[KEYS].create(name, values)
    return secret


# -- counts ---------------------------------------------------------------------------------


async def test_anthropic_messages_plain_and_streamed_record_the_backends_usage(
    stack: tuple[TestClient, TestServer], tmp_path: Path, clients: dict[str, Any]
) -> None:
    gateway, backend = stack
    client = clients["anthropic"](gateway)
    message = await client.messages.create(
        model="default", max_tokens=100, messages=[{"role": "user", "content": HELLO}]
    )
    async with client.messages.stream(
        model="default", max_tokens=100, messages=[{"role": "user", "content": HELLO + "!"}]
    ) as stream:
        streamed_text = "".join([text async for text in stream.text_stream])
        final = await stream.get_final_message()
    plain_row, stream_row = await usage_rows_for(tmp_path, 2)
    sent = received(backend, "/v1/chat/completions")
    answer = "".join(block.text for block in message.content if block.type == "text")
    assert counted(plain_row) == chat_counts(sent[0], answer)
    assert counted(stream_row) == chat_counts(sent[1], streamed_text)
    assert sent[1]["stream_options"] == {"include_usage": True}
    # What the client was told is what was recorded.
    assert counted(plain_row) == (message.usage.input_tokens, message.usage.output_tokens)
    assert counted(stream_row)[1] == final.usage.output_tokens
    assert plain_row["endpoint"] == stream_row["endpoint"] == "/v1/messages"
    assert min(counted(plain_row) + counted(stream_row)) > 0


async def test_ollama_chat_plain_streamed_and_embed_record_the_backends_usage(
    stack: tuple[TestClient, TestServer], tmp_path: Path, clients: dict[str, Any]
) -> None:
    gateway, backend = stack
    client = clients["ollama"](gateway)
    plain = await client.chat(
        model="default", messages=[{"role": "user", "content": HELLO}], stream=False
    )
    pieces = [
        part
        async for part in await client.chat(
            model="default", messages=[{"role": "user", "content": HELLO + "?"}], stream=True
        )
    ]
    generated = await client.generate(model="mock-llama", prompt="tell me three words")
    embedded = await client.embed(model="mock-embed", input=["one two", "three four five"])
    chat_row, stream_row, generate_row, embed_row = await usage_rows_for(tmp_path, 4)
    sent = received(backend, "/v1/chat/completions")
    assert counted(chat_row) == chat_counts(sent[0], plain.message.content or "")
    streamed_text = "".join(part.message.content or "" for part in pieces)
    assert counted(stream_row) == chat_counts(sent[1], streamed_text)
    assert counted(generate_row) == chat_counts(sent[2], generated.response)
    assert counted(embed_row) == (5, 0)  # the fake's embedding usage: the inputs' words
    # The Ollama fields the client got are those counts too.
    assert counted(chat_row) == (plain.prompt_eval_count, plain.eval_count)
    assert counted(stream_row) == (pieces[-1].prompt_eval_count, pieces[-1].eval_count)
    assert embedded.prompt_eval_count == 5
    assert [row["endpoint"] for row in (chat_row, stream_row, generate_row, embed_row)] == [
        "/api/chat",
        "/api/chat",
        "/api/generate",
        "/api/embed",
    ]


async def test_responses_translated_and_passed_through_record_the_backends_usage(
    stack: tuple[TestClient, TestServer], tmp_path: Path
) -> None:
    gateway, backend = stack
    async with openai_client(gateway) as client:
        plain = await client.responses.create(model="default", input=HELLO)
        stream = await client.responses.create(model="default", input=HELLO + ".", stream=True)
        events = [event async for event in stream]
        native = await client.responses.create(model="native-model", input="hi")
        native_stream = await client.responses.create(model="native-model", input="hi", stream=True)
        native_events = [event async for event in native_stream]
    rows = await usage_rows_for(tmp_path, 4)
    sent = received(backend, "/v1/chat/completions")
    assert counted(rows[0]) == chat_counts(sent[0], plain.output_text)
    final = events[-1].response  # type: ignore[union-attr]
    assert counted(rows[1]) == chat_counts(sent[1], final.output_text)
    assert plain.usage is not None and final.usage is not None
    assert counted(rows[0]) == (plain.usage.input_tokens, plain.usage.output_tokens)
    assert counted(rows[1]) == (final.usage.input_tokens, final.usage.output_tokens)
    assert native.usage is not None and native.usage.input_tokens == 17
    assert counted(rows[2]) == (17, 5)
    assert native_events[-1].type == "response.completed"
    assert counted(rows[3]) == (19, 7)
    assert [row["backend"] for row in rows] == ["mock", "mock", "native", "native"]


async def test_rerank_records_the_backends_usage(
    stack: tuple[TestClient, TestServer], tmp_path: Path, auth: dict[str, str]
) -> None:
    gateway, _ = stack
    body = {
        "model": "mock-rerank",
        "query": "red apples",
        "documents": ["green pears", "red apples are sweet", "blue sky"],
    }
    response = await gateway.post("/v1/rerank", json=body, headers=auth)
    assert response.status == 200, await response.text()
    reply = await response.json()
    [row] = await usage_rows_for(tmp_path, 1)
    assert counted(row) == (2 + 2 + 4 + 2, 0)  # the fake's total_tokens: query and documents
    assert reply["usage"]["total_tokens"] == row["prompt_tokens"]


async def test_a_backend_without_usage_is_estimated_and_marked_on_every_face(
    make_gateway: Any, start_mock: Any, tmp_path: Path, clients: dict[str, Any]
) -> None:
    backend = await start_mock(report_usage=False)
    gateway = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend, health="{readiness: false}")),
        usage=UsageSettings(flush_s=0.02),
    )
    messages = [{"role": "user", "content": HELLO}]
    client = clients["anthropic"](gateway)
    await client.messages.create(model="mock-llama", max_tokens=50, messages=messages)  # type: ignore[arg-type]
    async with client.messages.stream(
        model="mock-llama",
        max_tokens=50,
        messages=messages,  # type: ignore[arg-type]
    ) as stream:
        await stream.get_final_message()
    olla = clients["ollama"](gateway)
    await olla.chat(model="mock-llama", messages=messages, stream=False)
    async for _ in await olla.chat(model="mock-llama", messages=messages, stream=True):
        pass
    async with openai_client(gateway) as sdk:
        await sdk.responses.create(model="mock-llama", input=HELLO)
        async for _ in await sdk.responses.create(model="mock-llama", input=HELLO, stream=True):
            pass
    rows = await usage_rows_for(tmp_path, 6)
    for row in rows:
        assert row["status"] == 200 and row["estimated"] == 1, row
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0, row


# -- limits ---------------------------------------------------------------------------------


async def test_a_tpm_key_is_refused_once_real_counts_pass_its_limit_on_each_face(
    stack: tuple[TestClient, TestServer], tmp_path: Path, clients: dict[str, Any]
) -> None:
    gateway, _ = stack
    limit = 8
    messages = [{"role": "user", "content": HELLO}]

    claude = clients["anthropic"](gateway, await make_key(gateway, "claude", tpm=limit))
    first = await claude.messages.create(model="default", max_tokens=50, messages=messages)  # type: ignore[arg-type]
    assert first.usage.input_tokens + first.usage.output_tokens > limit
    with pytest.raises(anthropic.RateLimitError) as refused:
        await claude.messages.create(model="default", max_tokens=50, messages=messages)  # type: ignore[arg-type]
    error = refused.value.body
    assert isinstance(error, dict) and error["type"] == "error"
    assert error["error"]["type"] == "rate_limit_error"
    assert refused.value.response.headers["Retry-After"]

    llama = clients["ollama"](gateway, await make_key(gateway, "llama", tpm=limit))
    reply = await llama.chat(model="default", messages=messages, stream=False)
    assert (reply.prompt_eval_count or 0) + (reply.eval_count or 0) > limit
    with pytest.raises(ollama.ResponseError) as limited:
        await llama.chat(model="default", messages=messages, stream=False)
    assert limited.value.status_code == 429
    assert "tokens per minute" in limited.value.error

    secret = await make_key(gateway, "responder", tpm=limit)
    async with openai_client(gateway, secret) as sdk:
        made = await sdk.responses.create(model="native-model", input="hi")
        assert made.usage is not None and made.usage.total_tokens > limit
        with pytest.raises(openai.RateLimitError):
            await sdk.responses.create(model="native-model", input="hi")

    rows = await usage_rows_for(tmp_path, 6)
    by_key: dict[str, list[int]] = {}
    for row in rows:
        by_key.setdefault(row["key"], []).append(row["status"])
    assert by_key == {"claude": [200, 429], "llama": [200, 429], "responder": [200, 429]}


# -- scope ----------------------------------------------------------------------------------


async def test_a_key_limited_to_one_model_sees_and_uses_only_it_on_every_face(
    stack: tuple[TestClient, TestServer], clients: dict[str, Any]
) -> None:
    gateway, _ = stack
    secret = await make_key(gateway, "narrow", models=["mock-llama"])
    olla = clients["ollama"](gateway, secret)
    listed = [model.model for model in (await olla.list()).models]
    assert listed == ["mock-llama"]
    everything = {model.model for model in (await clients["ollama"](gateway).list()).models}
    assert everything == {"mock-llama", "mock-embed", "default", "native-model"}

    assert (await olla.show("mock-llama")).capabilities
    reply = await olla.chat(model="mock-llama:latest", messages=[{"role": "user", "content": "x"}])
    assert reply.message.content  # ``:latest`` of an allowed model stays allowed
    for call in (
        lambda: olla.show("default"),
        lambda: olla.chat(model="default", messages=[{"role": "user", "content": "x"}]),
        lambda: olla.chat(model="default:latest", messages=[{"role": "user", "content": "x"}]),
        lambda: olla.generate(model="default", prompt="x"),
        lambda: olla.embed(model="mock-embed", input="x"),
    ):
        with pytest.raises(ollama.ResponseError) as refused:
            await call()
        assert refused.value.status_code == 403
        assert "may not use model" in refused.value.error

    shown = await gateway.post(
        "/api/show", json={"model": "default"}, headers={"Authorization": f"Bearer {secret}"}
    )
    assert shown.status == 403
    assert list(await shown.json()) == ["error"]  # Ollama's shape, nothing else

    claude = clients["anthropic"](gateway, secret)
    await claude.messages.create(
        model="mock-llama", max_tokens=20, messages=[{"role": "user", "content": "x"}]
    )
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        await claude.messages.create(
            model="default", max_tokens=20, messages=[{"role": "user", "content": "x"}]
        )
    body = denied.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "permission_error"
    assert "'default'" in body["error"]["message"]

    async with openai_client(gateway, secret) as sdk:
        with pytest.raises(openai.PermissionDeniedError):
            await sdk.responses.create(model="native-model", input="x")
    rerank = await gateway.post(
        "/v1/rerank",
        json={"model": "mock-rerank", "query": "q", "documents": ["a"]},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert rerank.status == 403
    assert (await rerank.json())["error"]["code"] == "model_not_allowed"
