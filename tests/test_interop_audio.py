"""Audio and rerank through the gateway with the openai SDK: uploads streamed to the
backend within the body limit, speech streamed back chunk by chunk, rerank in the
Jina/Cohere shape; each admitted like chat under its own capability."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.mock_backends.audio import speech_samples, wav_header
from sidecar.mock_backends.openai_server import RECEIVED

from .conftest import TOKEN, gateway_yaml, mock_backend_yaml, openai_client, status_of

CAPABILITIES = "[chat, completions, embeddings, transcriptions, speech, rerank]"
MODELS = (
    "[{id: mock-llama, capabilities: [chat, completions]}, mock-whisper, mock-tts, mock-rerank]"
)
AUDIO = bytes(range(256)) * 1024  # 256 KiB of "audio"
WAIT_S = 20  # a bound on waiting for a condition, never a pass/fail on time


@pytest.fixture
async def audio_gateway(make_gateway: Any, start_mock: Any) -> tuple[TestClient, TestServer]:
    backend = await start_mock()
    gateway = await make_gateway(
        gateway_yaml(
            mock_backend_yaml(
                "mock",
                backend,
                capabilities=CAPABILITIES,
                models=MODELS,
                health="{readiness: false}",
            ),
            aliases="whisper: {backend: mock, model: mock-whisper}",
        )
    )
    return gateway, backend


def _transcript(size: int, data: bytes, task: str = "transcribe") -> str:
    return f"Mock {task} of {size} bytes ({hashlib.sha256(data).hexdigest()[:12]})"


async def test_transcription_with_the_sdk_reaches_the_backend_whole(
    audio_gateway: tuple[TestClient, TestServer],
) -> None:
    gateway, backend = audio_gateway
    async with openai_client(gateway) as client:
        reply = await client.audio.transcriptions.with_raw_response.create(
            model="whisper", file=("talk.wav", AUDIO, "audio/wav"), language="en"
        )
        text = await client.audio.transcriptions.create(
            model="mock-whisper", file=("talk.wav", AUDIO), response_format="text"
        )
    assert reply.parse().text == _transcript(len(AUDIO), AUDIO)
    assert reply.headers["X-Backend-Used"] == "mock"
    assert reply.headers["X-Model-Used"] == "mock-whisper"
    assert text.strip() == _transcript(len(AUDIO), AUDIO)
    form = aiohttp.FormData()  # the SDK's translations.create is deprecated
    form.add_field("model", "mock-whisper")
    form.add_field("file", AUDIO, filename="talk.wav")
    translated = await gateway.post(
        "/v1/audio/translations", data=form, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert (await translated.json())["text"] == _transcript(len(AUDIO), AUDIO, "translate")
    sent = backend.app[RECEIVED][0]
    assert sent.path == "/v1/audio/transcriptions"
    assert sent.body["model"] == "mock-whisper"  # the alias resolved
    assert sent.body["language"] == "en"
    assert sent.body["file"]["filename"] == "talk.wav"
    assert sent.body["file"]["size"] == len(AUDIO)
    stats = await status_of(gateway, "mock", "transcriptions")
    assert stats["admitted"] == 3 and stats["in_flight"] == 0


async def test_streamed_transcription_relays_the_events(
    audio_gateway: tuple[TestClient, TestServer],
) -> None:
    gateway, _ = audio_gateway
    async with openai_client(gateway) as client:
        stream = await client.audio.transcriptions.create(
            model="mock-whisper", file=("a.wav", AUDIO), stream=True
        )
        events = [event async for event in stream]
    assert events[-1].type == "transcript.text.done"
    assert events[-1].text == _transcript(len(AUDIO), AUDIO)
    assert {event.type for event in events[:-1]} == {"transcript.text.delta"}


async def test_a_file_before_the_model_field_is_accepted(
    audio_gateway: tuple[TestClient, TestServer], auth: dict[str, str]
) -> None:
    gateway, backend = audio_gateway
    form = aiohttp.FormData()
    form.add_field("file", AUDIO, filename='../odd"name.wav', content_type="audio/wav")
    form.add_field("model", "mock-whisper")
    form.add_field("timestamp_granularities[]", "word")
    form.add_field("timestamp_granularities[]", "segment")
    response = await gateway.post("/v1/audio/transcriptions", data=form, headers=auth)
    assert response.status == 200, await response.text()
    assert (await response.json())["text"] == _transcript(len(AUDIO), AUDIO)
    sent = backend.app[RECEIVED][-1].body
    assert sent["timestamp_granularities[]"] == ["word", "segment"]
    assert sent["file"]["filename"].endswith("name.wav")
    assert '"' not in sent["file"]["filename"] and "/" not in sent["file"]["filename"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_an_upload_over_the_body_limit_is_413(
    make_gateway: Any, start_mock: Any, auth: dict[str, str], chunked: bool
) -> None:
    backend = await start_mock()
    gateway = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend, capabilities=CAPABILITIES, models=MODELS)),
        max_body_bytes=64 * 1024,
    )
    form = aiohttp.FormData()
    form.add_field("model", "mock-whisper")
    form.add_field("file", AUDIO, filename="big.wav")
    body = form()
    if chunked:
        encoded = bytearray()

        class Sink:
            async def write(self, data: bytes) -> None:
                encoded.extend(data)

        await body.write(Sink())  # type: ignore[arg-type]

        async def pieces() -> AsyncIterator[bytes]:
            for start in range(0, len(encoded), 8192):
                yield bytes(encoded[start : start + 8192])

        response = await gateway.post(
            "/v1/audio/transcriptions",
            data=pieces(),
            headers={**auth, "Content-Type": body.content_type},
        )
    else:
        response = await gateway.post("/v1/audio/transcriptions", data=body, headers=auth)
    assert response.status == 413, await response.text()
    error = (await response.json())["error"]
    assert error["code"] == "request_too_large"
    received = [r for r in backend.app[RECEIVED] if r.path.startswith("/v1/audio")]
    assert all(r.body["file"]["size"] < len(AUDIO) for r in received)
    stats = await status_of(gateway, "mock", "transcriptions")
    assert stats["in_flight"] == 0


async def test_the_upload_is_streamed_not_held(
    make_gateway: Any, aiohttp_server: Any, auth: dict[str, str]
) -> None:
    """The backend sees the file's first bytes before the client has sent the rest: the
    client waits for that, so a gateway that buffered the upload would never finish."""
    first_bytes = asyncio.Event()

    async def transcribe(request: web.Request) -> web.Response:
        reader = await request.multipart()
        size = 0
        while (part := await reader.next()) is not None:
            assert isinstance(part, aiohttp.BodyPartReader)
            while chunk := await part.read_chunk(4096):
                if part.filename is not None:
                    size += len(chunk)
                    first_bytes.set()
        return web.json_response({"text": f"{size} bytes"})

    app = web.Application()
    app.router.add_post("/v1/audio/transcriptions", transcribe)
    server = await aiohttp_server(app)
    gateway = await make_gateway(
        gateway_yaml(
            mock_backend_yaml(
                "shim",
                server,
                capabilities="[transcriptions]",
                models="[shim-whisper]",
                health="{readiness: false}",
            )
        )
    )
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nshim-whisper\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()

    # The multipart readers look one piece ahead for the boundary, so the first part of
    # the file is a few pieces long; the rest follows only once the backend has bytes.
    async def slow_client() -> AsyncIterator[bytes]:
        yield head + AUDIO[: 3 * 65536]
        await asyncio.wait_for(first_bytes.wait(), WAIT_S)
        yield AUDIO[3 * 65536 :]
        yield f"\r\n--{boundary}--\r\n".encode()

    response = await gateway.post(
        "/v1/audio/transcriptions",
        data=slow_client(),
        headers={**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status == 200, await response.text()
    assert (await response.json())["text"] == f"{len(AUDIO)} bytes"


async def test_speech_with_the_sdk_streams_the_audio(
    audio_gateway: tuple[TestClient, TestServer],
) -> None:
    gateway, backend = audio_gateway
    text = "hello from the gateway"
    async with (
        openai_client(gateway) as client,
        client.audio.speech.with_streaming_response.create(
            model="mock-tts", voice="alloy", input=text, response_format="wav"
        ) as response,
    ):
        assert response.headers["Content-Type"] == "audio/wav"
        assert response.headers["X-Backend-Used"] == "mock"
        audio = b"".join([chunk async for chunk in response.iter_bytes()])
    samples = speech_samples(text)
    assert audio == wav_header(len(samples)) + samples
    assert backend.app[RECEIVED][-1].body["voice"] == "alloy"


async def test_speech_arrives_chunk_by_chunk(
    make_gateway: Any, aiohttp_server: Any, auth: dict[str, str]
) -> None:
    """The backend sends its second chunk only after the client got the first."""
    client_got_first = asyncio.Event()

    async def speak(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        await response.prepare(request)
        await response.write(b"ID3-first-chunk")
        await asyncio.wait_for(client_got_first.wait(), WAIT_S)
        await response.write(b"-second-chunk")
        return response

    app = web.Application()
    app.router.add_post("/v1/audio/speech", speak)
    server = await aiohttp_server(app)
    gateway = await make_gateway(
        gateway_yaml(
            mock_backend_yaml(
                "shim",
                server,
                capabilities="[speech]",
                models="[shim-voice]",
                health="{readiness: false}",
            )
        )
    )
    response = await gateway.post(
        "/v1/audio/speech", json={"model": "shim-voice", "input": "hi"}, headers=auth
    )
    assert response.status == 200
    assert response.headers["Content-Type"] == "audio/mpeg"
    first = await asyncio.wait_for(response.content.readany(), WAIT_S)
    assert first == b"ID3-first-chunk"
    client_got_first.set()
    assert await response.content.read() == b"-second-chunk"


@pytest.mark.parametrize("path", ["/v1/rerank", "/v1/reranking"])
async def test_rerank_in_the_jina_cohere_shape(
    audio_gateway: tuple[TestClient, TestServer], auth: dict[str, str], path: str
) -> None:
    gateway, backend = audio_gateway
    body = {
        "model": "mock-rerank",
        "query": "llama camelid",
        "documents": ["a panda bear", "the llama is a camelid", "a camel"],
        "top_n": 2,
    }
    response = await gateway.post(path, json=body, headers=auth)
    assert response.status == 200, await response.text()
    results = (await response.json())["results"]
    assert [r["index"] for r in results] == [1, 0]
    assert results[0]["relevance_score"] == 1.0
    assert backend.app[RECEIVED][-1].path == "/v1/rerank"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/rerank", {"model": "mock-rerank", "documents": ["a"]}, "query"),
        ("/v1/rerank", {"model": "mock-rerank", "query": "q", "documents": []}, "documents"),
        (
            "/v1/rerank",
            {"model": "mock-rerank", "query": "q", "documents": ["a"], "top_n": 0},
            "top_n",
        ),
        ("/v1/audio/speech", {"model": "mock-tts", "input": ""}, "input"),
        ("/v1/audio/speech", {"model": "mock-tts", "input": "x", "speed": 9}, "speed"),
        ("/v1/audio/speech", {"model": "mock-llama", "input": "x"}, "model"),
        ("/v1/rerank", {"model": "mock-whisper", "query": "q", "documents": ["a"]}, "model"),
    ],
)
async def test_bad_requests_are_400_in_the_openai_envelope(
    audio_gateway: tuple[TestClient, TestServer],
    auth: dict[str, str],
    path: str,
    body: dict[str, Any],
    param: str,
) -> None:
    gateway, _ = audio_gateway
    response = await gateway.post(path, json=body, headers=auth)
    assert response.status == 400, await response.text()
    assert (await response.json())["error"]["param"] == param


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": "mock-whisper"}, "file"),
        ({"file": AUDIO[:10]}, "model"),
        ({"model": "mock-llama", "file": AUDIO[:10]}, "model"),
    ],
)
async def test_bad_uploads_are_400(
    audio_gateway: tuple[TestClient, TestServer],
    auth: dict[str, str],
    fields: dict[str, Any],
    param: str,
) -> None:
    gateway, _ = audio_gateway
    form = aiohttp.FormData()
    for name, value in fields.items():
        if isinstance(value, bytes):
            form.add_field(name, value, filename="a.wav")
        else:
            form.add_field(name, value)
    response = await gateway.post("/v1/audio/transcriptions", data=form, headers=auth)
    assert response.status == 400, await response.text()
    assert (await response.json())["error"]["param"] == param
    response = await gateway.post(
        "/v1/audio/transcriptions", json={"model": "mock-whisper"}, headers=auth
    )
    assert response.status == 400


async def test_the_sdk_maps_a_missing_capability_to_bad_request(
    audio_gateway: tuple[TestClient, TestServer],
) -> None:
    gateway, _ = audio_gateway
    async with openai_client(gateway) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.audio.speech.create(model="mock-whisper", voice="alloy", input="hi")
    assert refused.value.code == "capability_not_supported"
    assert TOKEN not in str(refused.value)
