"""Fake audio and rerank endpoints of an OpenAI-compatible server, added to the mock app.

- ``POST /v1/audio/transcriptions`` and ``/v1/audio/translations`` (multipart, as
  faster-whisper servers, whisper.cpp and vLLM take it): the "transcript" names the size
  and a hash of the uploaded bytes, in ``json``, ``text``, ``verbose_json``, ``srt`` or
  ``vtt``; ``stream=true`` answers ``transcript.text.delta`` / ``transcript.text.done``
  events.
- ``POST /v1/audio/speech``: a real WAV (16-bit mono, 16 kHz; a tone whose pitch comes
  from the input's hash, 50 ms per character, at most 10 s), sent in ``chunks`` pieces
  (``pcm``: the samples without the header).
- ``POST /v1/rerank`` (also ``/v1/reranking``, as llama.cpp names it): the Jina/Cohere
  shape; a document's score is the share of the query's words it contains.

Every request is recorded in ``app[RECEIVED]``; an upload as its fields plus the file's
name, size and SHA-256 (never its bytes).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import struct
from typing import Any

from aiohttp import BodyPartReader, web

from .openai_server import BEHAVIOUR, RECEIVED, Received, error_response, sse

_RATE = 16_000
_WORD = re.compile(r"\w+")


def add_audio_routes(app: web.Application) -> None:
    app.router.add_post("/v1/audio/transcriptions", _transcribe)
    app.router.add_post("/v1/audio/translations", _transcribe)
    app.router.add_post("/v1/audio/speech", _speech)
    app.router.add_post("/v1/rerank", _rerank)
    app.router.add_post("/v1/reranking", _rerank)


async def _transcribe(request: web.Request) -> web.StreamResponse:
    behaviour = request.app[BEHAVIOUR]
    fields: dict[str, Any] = {}
    digest, size, filename = hashlib.sha256(), 0, None
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or part.name is None:
            return error_response(400, "unexpected multipart part")
        if part.filename is not None:
            filename = part.filename
            while chunk := await part.read_chunk(64 * 1024):
                digest.update(chunk)
                size += len(chunk)
        else:
            value = (await part.read()).decode()
            if part.name.endswith("[]"):
                fields.setdefault(part.name, []).append(value)
            else:
                fields[part.name] = value
    record = {**fields, "file": {"filename": filename, "size": size, "sha256": digest.hexdigest()}}
    request.app[RECEIVED].append(Received(request.path, record, dict(request.headers)))
    if filename is None:
        return error_response(400, "a file is required")
    if fields.get("model") not in behaviour.transcription_models:
        return error_response(404, f"model {fields.get('model')!r} not found")
    task = "translate" if request.path.endswith("translations") else "transcribe"
    text = f"Mock {task} of {size} bytes ({digest.hexdigest()[:12]})"
    if fields.get("stream") == "true":
        return await _stream_transcript(request, text)
    response_format = fields.get("response_format", "json")
    if response_format == "text":
        return web.Response(text=text)
    if response_format in ("srt", "vtt"):
        head = "WEBVTT\n\n" if response_format == "vtt" else "1\n"
        return web.Response(text=f"{head}00:00:00.000 --> 00:00:01.000\n{text}\n")
    if response_format == "verbose_json":
        return web.json_response(
            {"task": task, "language": fields.get("language", "en"), "duration": 1.0, "text": text}
        )
    return web.json_response({"text": text, "usage": {"type": "duration", "seconds": 1}})


async def _stream_transcript(request: web.Request, text: str) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for word in text.split(" "):
        await response.write(sse({"type": "transcript.text.delta", "delta": word + " "}))
    await response.write(sse({"type": "transcript.text.done", "text": text}))
    return response


async def _speech(request: web.Request) -> web.StreamResponse:
    behaviour = request.app[BEHAVIOUR]
    body = await request.json()
    request.app[RECEIVED].append(Received(request.path, body, dict(request.headers)))
    if body.get("model") not in behaviour.speech_models:
        return error_response(404, f"model {body.get('model')!r} not found")
    text = body.get("input")
    if not isinstance(text, str) or not text:
        return error_response(400, "input is required")
    samples = speech_samples(text)
    pcm = body.get("response_format") == "pcm"
    audio = samples if pcm else wav_header(len(samples)) + samples
    response = web.StreamResponse(headers={"Content-Type": "audio/pcm" if pcm else "audio/wav"})
    response.content_length = len(audio)
    await response.prepare(request)
    step = max(1, math.ceil(len(audio) / max(1, behaviour.chunks)))
    for start in range(0, len(audio), step):
        await response.write(audio[start : start + step])
        if behaviour.chunk_delay_ms:
            await asyncio.sleep(behaviour.chunk_delay_ms / 1000)
    return response


def speech_samples(text: str) -> bytes:
    """16-bit mono samples: a tone set by the text's hash, 50 ms per character (max 10 s)."""
    pitch = 200 + hashlib.sha256(text.encode()).digest()[0] * 2
    count = min(len(text) * _RATE // 20, 10 * _RATE)
    values = (int(8000 * math.sin(2 * math.pi * pitch * i / _RATE)) for i in range(count))
    return struct.pack(f"<{count}h", *values)


def wav_header(data_bytes: int) -> bytes:
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, _RATE, _RATE * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


async def _rerank(request: web.Request) -> web.Response:
    behaviour = request.app[BEHAVIOUR]
    body = await request.json()
    request.app[RECEIVED].append(Received(request.path, body, dict(request.headers)))
    if body.get("model") not in behaviour.rerank_models:
        return error_response(404, f"model {body.get('model')!r} not found")
    query, documents = body.get("query"), body.get("documents")
    if not isinstance(query, str) or not isinstance(documents, list) or not documents:
        return error_response(400, "query and documents are required")
    wanted = set(_WORD.findall(query.lower()))
    results = []
    for index, document in enumerate(documents):
        text = document if isinstance(document, str) else json.dumps(document)
        words = set(_WORD.findall(text.lower()))
        score = len(wanted & words) / len(wanted) if wanted else 0.0
        result: dict[str, Any] = {"index": index, "relevance_score": round(score, 6)}
        if body.get("return_documents"):
            result["document"] = {"text": text}
        results.append(result)
    results.sort(key=lambda item: (-item["relevance_score"], item["index"]))
    top_n = body.get("top_n")
    if isinstance(top_n, int) and top_n > 0:
        results = results[:top_n]
    tokens = len(query.split()) + sum(len(str(d).split()) for d in documents)
    return web.json_response(
        {
            "id": "rerank-" + hashlib.sha256(json.dumps(body).encode()).hexdigest()[:24],
            "model": body["model"],
            "results": results,
            "usage": {"total_tokens": tokens},
        }
    )
