"""Interop through real Caddy: a CORS preflight without a token, ``models.retrieve`` with
an id holding ``/`` and ``:``, and the audio and rerank endpoints with the openai SDK."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import aiohttp
import pytest

from ..conftest import TOKEN
from .stack import GatewayStack

pytestmark = pytest.mark.timeout(120)

ORIGIN = "https://chat.example.com"
CONFIG = """
version: 1
backends:
  mock:
    url: ${MOCK_BACKEND_URL:-http://127.0.0.1:9/v1}
    class: mock
    capabilities: [chat, completions, embeddings, transcriptions, speech, rerank]
    health: {liveness: /healthz, interval_s: 1}
    models:
      - {id: mock-llama, capabilities: [chat, completions]}
      - "org/mock:latest"
      - mock-whisper
      - mock-tts
      - mock-rerank
cors:
  allow_origins: [https://chat.example.com]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    with GatewayStack(tmp_path_factory.mktemp("interop"), CONFIG, TOKEN) as gateway:
        yield gateway


async def test_cors_preflight_and_response_through_caddy(stack: GatewayStack) -> None:
    connector = aiohttp.TCPConnector(ssl=stack.ssl_context())
    async with aiohttp.ClientSession(connector=connector) as session:
        preflight_headers = {
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-lang",
        }
        async with session.options(
            f"{stack.base_url}/v1/chat/completions", headers=preflight_headers
        ) as preflight:
            assert preflight.status == 204
            assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
            assert "authorization" in preflight.headers["Access-Control-Allow-Headers"]
            assert "x-stainless-lang" in preflight.headers["Access-Control-Allow-Headers"]
        async with session.options(
            f"{stack.base_url}/v1/chat/completions",
            headers={**preflight_headers, "Origin": "https://evil.example.com"},
        ) as refused:
            assert refused.status == 401
            assert "Access-Control-Allow-Origin" not in refused.headers
        async with session.get(
            f"{stack.base_url}/v1/models",
            headers={"Origin": ORIGIN, "Authorization": f"Bearer {TOKEN}"},
        ) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
            assert "x-request-id" in response.headers["Access-Control-Expose-Headers"]


async def test_models_retrieve_audio_and_rerank_through_caddy(stack: GatewayStack) -> None:
    audio = bytes(range(256)) * 64
    async with stack.openai() as client:
        model = await client.models.retrieve("org/mock:latest")
        assert model.id == "org/mock:latest"
        assert (await client.models.retrieve("mock-whisper")).model_extra == {
            "capabilities": ["transcriptions"]
        }
        transcript = await client.audio.transcriptions.create(
            model="mock-whisper", file=("a.wav", audio, "audio/wav")
        )
        digest = hashlib.sha256(audio).hexdigest()[:12]
        assert transcript.text == f"Mock transcribe of {len(audio)} bytes ({digest})"
        async with client.audio.speech.with_streaming_response.create(
            model="mock-tts", voice="alloy", input="hi"
        ) as speech:
            wav = b"".join([chunk async for chunk in speech.iter_bytes()])
        assert wav.startswith(b"RIFF") and wav[8:12] == b"WAVE"
        reply = await client.post(
            "/rerank",
            body={"model": "mock-rerank", "query": "llama", "documents": ["a cat", "a llama"]},
            cast_to=object,
        )
    assert isinstance(reply, dict)
    assert [result["index"] for result in reply["results"]] == [1, 0]
