"""The Anthropic Messages and Ollama faces end to end through real Caddy, with their
official client libraries (``anthropic``, ``ollama``) trusting Caddy's CA.

One stack (``gateway up``: Caddy + sidecar + the fake backend) serves the module; a second
backend, ``gated``, on a fixed loopback port sends one chunk per ``release()``, so the
tests can show each face's stream reaches the client piece by piece through Caddy. Caddy
alone, in front of a sidecar that is not there, answers each face's errors in its shape.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import aiohttp
import anthropic
import ollama
import pytest

from ..conftest import TOKEN
from ..test_anthropic import WEATHER
from ..test_compat_table import MUST_PASS, NEEDS_AUDIO_MODELS, table_of
from .stack import ROOT, GatedBackend, GatewayStack, gated_config
from .test_hardening_connections import BareCaddy, bare_caddy, bare_session

__all__ = ["bare_caddy", "bare_session"]  # Caddy alone, fixtures shared with that module

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, gated_port: int) -> Iterator[GatewayStack]:
    with GatewayStack(tmp_path_factory.mktemp("faces"), gated_config(gated_port), TOKEN) as gateway:
        yield gateway


def anthropic_client(stack: GatewayStack, **kwargs: Any) -> anthropic.AsyncAnthropic:
    kwargs.setdefault("api_key", stack.token)
    return anthropic.AsyncAnthropic(
        base_url=stack.base_url,
        max_retries=0,
        http_client=anthropic.DefaultAsyncHttpxClient(verify=stack.ssl_context()),
        **kwargs,
    )


def ollama_client(stack: GatewayStack, token: str | None = None) -> ollama.AsyncClient:
    return ollama.AsyncClient(
        host=stack.base_url,
        headers={"Authorization": f"Bearer {token or stack.token}"},
        verify=stack.ssl_context(),
    )


# -- Anthropic ------------------------------------------------------------------------------


async def test_anthropic_create_stream_and_tool_round_trip_through_caddy(
    stack: GatewayStack,
) -> None:
    async with anthropic_client(stack) as client:
        message = await client.messages.create(
            model="default",
            max_tokens=64,
            messages=[{"role": "user", "content": "through caddy"}],
        )
        assert message.content[0].text == "Mock reply to: through caddy"  # type: ignore[union-attr]
        assert message.stop_reason == "end_turn"

        async with client.messages.stream(
            model="default",
            max_tokens=64,
            messages=[{"role": "user", "content": "streamed through caddy"}],
        ) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
        assert text == "Mock reply to: streamed through caddy"
        assert final.stop_reason == "end_turn" and final.usage.output_tokens == 6

        question: dict[str, Any] = {"role": "user", "content": 'Weather? {"city": "Oslo"}'}
        first = await client.messages.create(
            model="default",
            max_tokens=64,
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice={"type": "any"},
            messages=[question],
        )
        tool_use = first.content[-1]
        assert tool_use.type == "tool_use" and tool_use.input == {"city": "Oslo"}
        second = await client.messages.create(
            model="default",
            max_tokens=64,
            tools=[WEATHER],  # type: ignore[list-item]
            messages=[
                question,
                {"role": "assistant", "content": first.content},  # type: ignore[typeddict-item]
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": tool_use.id, "content": "sunny"}
                    ],
                },
            ],
        )
        assert second.content[0].text == "The tool returned: sunny"  # type: ignore[union-attr]


async def test_anthropic_errors_through_caddy_are_in_anthropic_shape(stack: GatewayStack) -> None:
    async with anthropic_client(stack, api_key="wrong") as client:
        with pytest.raises(anthropic.AuthenticationError) as refused:
            await client.messages.create(
                model="default", max_tokens=8, messages=[{"role": "user", "content": "x"}]
            )
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    async with anthropic_client(stack) as client:
        with pytest.raises(anthropic.NotFoundError) as missing:
            await client.messages.create(
                model="nope", max_tokens=8, messages=[{"role": "user", "content": "x"}]
            )
    assert missing.value.body["type"] == "error"  # type: ignore[index]


async def test_anthropic_stream_arrives_incrementally_through_caddy(
    stack: GatewayStack, gated: GatedBackend
) -> None:
    seen: list[str] = []
    async with (
        anthropic_client(stack) as client,
        client.messages.stream(
            model="gated", max_tokens=64, messages=[{"role": "user", "content": "go"}]
        ) as stream,
    ):
        async for text in stream.text_stream:
            seen.append(text)
            # Only now may the backend send the next chunk: nothing was buffered on the way.
            assert gated.sent == len(seen)
            gated.release()
    assert seen == ["part0 ", "part1 ", "part2 "]


# -- Ollama ---------------------------------------------------------------------------------


async def test_ollama_list_chat_stream_and_embed_through_caddy(stack: GatewayStack) -> None:
    client = ollama_client(stack)
    try:
        listed = await client.list()
        assert {"mock-llama", "mock-embed", "gated", "default"} <= {
            model.model for model in listed.models
        }
        reply = await client.chat(
            model="default", messages=[{"role": "user", "content": "through caddy"}]
        )
        assert reply.message.content == "Mock reply to: through caddy" and reply.done
        parts = [
            part
            async for part in await client.chat(
                model="default:latest",
                messages=[{"role": "user", "content": "streamed through caddy"}],
                stream=True,
            )
        ]
        assert "".join(p.message.content or "" for p in parts) == (
            "Mock reply to: streamed through caddy"
        )
        assert parts[-1].done is True and parts[-1].done_reason == "stop"
        embedded = await client.embed(model="mock-embed", input=["a", "b"])
        assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 8
    finally:
        await client._client.aclose()


async def test_ollama_needs_the_token_through_caddy(stack: GatewayStack) -> None:
    client = ollama_client(stack, token="wrong")
    try:
        with pytest.raises(ollama.ResponseError) as refused:
            await client.list()
    finally:
        await client._client.aclose()
    assert refused.value.status_code == 401
    assert isinstance(refused.value.error, str) and "token" in refused.value.error.lower()


async def test_ollama_ndjson_arrives_incrementally_through_caddy(
    stack: GatewayStack, gated: GatedBackend
) -> None:
    seen: list[str] = []
    client = ollama_client(stack)
    try:
        async for part in await client.chat(
            model="gated", messages=[{"role": "user", "content": "go"}], stream=True
        ):
            if part.done:
                break
            seen.append(part.message.content or "")
            assert gated.sent == len(seen)
            gated.release()
    finally:
        await client._client.aclose()
    assert seen == ["part0 ", "part1 ", "part2 "]


# -- errors Caddy raises itself, in each face's shape --------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/api/tags", None, 502),
        ("/api/chat", {"model": "m", "messages": []}, 502),
    ],
)
async def test_sidecar_down_on_the_ollama_face_is_an_ollama_error(
    bare_caddy: BareCaddy,
    bare_session: aiohttp.ClientSession,
    path: str,
    body: dict[str, Any] | None,
    status: int,
) -> None:
    method = "GET" if body is None else "POST"
    async with bare_session.request(method, f"{bare_caddy.base_url}{path}", json=body) as response:
        text = await response.text()
        assert response.status == status, text
        assert response.headers["Content-Type"] == "application/json"
    reply = json.loads(text)
    assert set(reply) == {"error"} and isinstance(reply["error"], str) and reply["error"]
    assert "sidecar.sock" not in text and "unix" not in text


@pytest.mark.parametrize(
    ("path", "body", "status", "error_type"),
    [
        ("/v1/messages", {"model": "m"}, 502, "api_error"),
        ("/v1/messages/count_tokens", {"model": "m"}, 502, "api_error"),
    ],
)
async def test_sidecar_down_on_the_anthropic_face_is_an_anthropic_error(
    bare_caddy: BareCaddy,
    bare_session: aiohttp.ClientSession,
    path: str,
    body: dict[str, Any],
    status: int,
    error_type: str,
) -> None:
    async with bare_session.post(f"{bare_caddy.base_url}{path}", json=body) as response:
        text = await response.text()
        assert response.status == status, text
        assert response.headers["Content-Type"] == "application/json"
    reply = json.loads(text)
    assert reply["type"] == "error"
    assert reply["error"]["type"] == error_type and reply["error"]["message"]
    assert "sidecar.sock" not in text and "unix" not in text


# -- the compatibility table over TLS -------------------------------------------------------


def test_compat_table_through_caddy_trusting_its_ca(stack: GatewayStack) -> None:
    """The script's clients and curl verify Caddy's certificate with ``--cafile``."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "compat_table.py"),
            "--base-url",
            stack.base_url,
            "--cafile",
            str(stack.ca_root),
        ],
        env={**os.environ, "GATEWAY_BEARER_TOKEN": stack.token},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    rows = table_of(result.stdout)
    for endpoint, clients in MUST_PASS.items():
        if endpoint in NEEDS_AUDIO_MODELS:  # the stack lists no audio or rerank model
            continue
        for client in clients:
            assert rows[endpoint][client] == "✓", (endpoint, client, result.stdout)
