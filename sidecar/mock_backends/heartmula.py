"""A fake HeartMuLa music server: the HTTP shim LAN setups run around the HeartMuLa models.

``POST /v1/music/generations`` answers synchronously with a real PCM WAV written into
``audio_dir`` and served from ``GET /audio/<id>.wav`` (Range requests work, as a player
needs). The song is a sequence of tones drawn from a hash of the prompt, lyrics, style
and tags, so the same request always gives the same id and the same bytes. Validation
errors come back as FastAPI does them (422, ``{"detail": [...]}``), and until the model
is "loaded" (see ``set_loaded``) generations and ``/readyz`` answer 503. Every request
body it receives is kept (the latest 1,000) under ``app[HEARTMULA_RECEIVED]`` so tests can
assert what the gateway sent upstream.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import math
import os
import re
import struct
import sys
import tempfile
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

HEARTMULA_RECEIVED = web.AppKey("heartmula_received", collections.deque[dict[str, Any]])

MIN_DURATION = 1
MAX_DURATION = 300
DEFAULT_DURATION = 30
NOTE_SECONDS = 0.25

_AUDIO_NAME = re.compile(r"[0-9a-f]{24}\.wav")
# A major pentatonic scale over two octaves from A3, in semitones: pleasant in any order.
_SCALE_SEMITONES = (0, 2, 4, 7, 9, 12, 14, 16, 19, 21)
_BASE_HZ = 220.0
_AMPLITUDE = 0.3 * 32767
_FADE_SECONDS = 0.005  # ramps at each note's ends, so the tones join without clicks


def make_wav(prompt: str, duration_s: float, sample_rate: int = 8000) -> bytes:
    """A valid 16-bit mono PCM WAV of ``duration_s`` seconds, the same bytes for the same
    arguments.

    The song is a loop of 32 notes of a quarter second each, note ``i`` taken from byte
    ``i`` of ``sha256(prompt)``. Each distinct note is synthesised once and then copied,
    so a minute of audio costs a few thousand ``math.sin`` calls, not one per sample.
    """
    if sample_rate < 1:
        raise ValueError(f"sample rate must be positive, got {sample_rate}")
    if duration_s < 0 or not math.isfinite(duration_s):
        raise ValueError(f"duration must be a non-negative number, got {duration_s}")
    total = round(duration_s * sample_rate)
    data_size = total * 2
    if 36 + data_size > 0xFFFFFFFF:
        raise ValueError(f"{duration_s} s at {sample_rate} Hz does not fit in a WAV file")
    digest = hashlib.sha256(prompt.encode()).digest()
    note_length = max(1, round(NOTE_SECONDS * sample_rate))
    tones: dict[int, array[int]] = {}
    samples: array[int] = array("h")
    for index in range(math.ceil(total / note_length)):
        degree = digest[index % len(digest)] % len(_SCALE_SEMITONES)
        if degree not in tones:
            tones[degree] = _tone(degree, note_length, sample_rate)
        samples.extend(tones[degree][: total - len(samples)])
    if sys.byteorder == "big":
        samples.byteswap()
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_size,
        b"WAVE",
        b"fmt ",
        16,  # size of the PCM fmt chunk
        1,  # WAVE_FORMAT_PCM
        1,  # channels
        sample_rate,
        sample_rate * 2,  # byte rate
        2,  # block align
        16,  # bits per sample
        b"data",
        data_size,
    )
    return header + samples.tobytes()


def _tone(degree: int, length: int, sample_rate: int) -> array[int]:
    frequency = _BASE_HZ * 2 ** (_SCALE_SEMITONES[degree] / 12)
    step = 2 * math.pi * frequency / sample_rate
    fade = max(1, round(_FADE_SECONDS * sample_rate))
    return array(
        "h",
        (
            int(_AMPLITUDE * min(1.0, i / fade, (length - 1 - i) / fade) * math.sin(step * i))
            for i in range(length)
        ),
    )


@dataclass(frozen=True)
class _ShimSettings:
    audio_dir: Path
    latency_ms: float
    sample_rate: int


@dataclass
class _Readiness:
    """Mutable so a test can flip it after start-up, when the app's state is frozen."""

    loaded: bool


_SETTINGS = web.AppKey("heartmula_settings", _ShimSettings)
_READINESS = web.AppKey("heartmula_readiness", _Readiness)


def create_heartmula_app(
    audio_dir: Path, latency_ms: float = 0.0, loaded: bool = True, sample_rate: int = 8000
) -> web.Application:
    """A fake HeartMuLa shim keeping its songs in ``audio_dir`` (created on first write).

    ``sample_rate`` is the fake's, not the real model's 48 kHz: tests stay small and fast.
    """
    app = web.Application()
    app[_SETTINGS] = _ShimSettings(Path(audio_dir), latency_ms, sample_rate)
    app[_READINESS] = _Readiness(loaded)
    app[HEARTMULA_RECEIVED] = collections.deque(maxlen=1000)
    app.router.add_post("/v1/music/generations", _generations, name="generations")
    app.router.add_get("/audio/{filename}", _audio, name="audio")
    app.router.add_get("/healthz", _healthz, name="healthz")
    app.router.add_get("/readyz", _readyz, name="readyz")
    return app


def set_loaded(app: web.Application, loaded: bool) -> None:
    """Mark the model loaded or not: generations and ``/readyz`` answer 503 while it is not."""
    app[_READINESS].loaded = loaded


# --- request validation, in FastAPI's 422 shape ----------------------------------------


@dataclass(frozen=True)
class _SongRequest:
    prompt: str | None
    lyrics: str | None
    style: str | None
    tags: str | None
    duration: int
    temperature: float
    top_k: int
    top_p: float | None

    def song_id(self) -> str:
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:24]

    def song_seed(self) -> str:
        """What the music is made from: the words, not the sampling knobs."""
        return json.dumps([self.prompt, self.lyrics, self.style, self.tags])


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class _Field:
    default: Any
    check: Callable[[Any], bool]
    kind: str  # pydantic's error type
    message: str


_TEXT = ("string_type", "Input should be a valid string")
_INTEGER = ("int_type", "Input should be a valid integer")
_NUMBER = ("float_type", "Input should be a valid number")
# Every field is optional; an explicit null means the default, as the shim's model has it.
_FIELDS = {
    "prompt": _Field(None, _is_text, *_TEXT),
    "lyrics": _Field(None, _is_text, *_TEXT),
    "style": _Field(None, _is_text, *_TEXT),
    "tags": _Field(None, _is_text, *_TEXT),
    "duration": _Field(DEFAULT_DURATION, _is_int, *_INTEGER),
    "temperature": _Field(1.0, _is_number, *_NUMBER),
    "top_k": _Field(50, _is_int, *_INTEGER),
    "top_p": _Field(None, _is_number, *_NUMBER),
}


def _problem(kind: str, name: str, message: str, value: Any) -> dict[str, Any]:
    return {"type": kind, "loc": ["body", name], "msg": message, "input": value}


def _parse_song_request(body: dict[str, Any]) -> tuple[_SongRequest | None, list[dict[str, Any]]]:
    """The request with defaults filled in, or every problem found in it."""
    values: dict[str, Any] = {}
    problems = []
    for name, field in _FIELDS.items():
        value = body.get(name)
        value = field.default if value is None else value
        if value is not None and not field.check(value):
            problems.append(_problem(field.kind, name, field.message, value))
        values[name] = value
    duration = values["duration"]
    if _is_int(duration) and not MIN_DURATION <= duration <= MAX_DURATION:
        message = f"Input should be from {MIN_DURATION} to {MAX_DURATION} seconds"
        problems.append(_problem("value_error", "duration", message, duration))
    if problems:
        return None, problems
    # 1 and 1.0 are the same temperature, so they must make the same id.
    for name in ("temperature", "top_p"):
        if values[name] is not None:
            values[name] = float(values[name])
    return _SongRequest(**values), []


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    """The body as a JSON object (an empty body counts as ``{}``: every field is optional)."""
    text = await request.text()
    if not text.strip():
        return {}
    try:
        body = json.loads(text)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


# --- handlers --------------------------------------------------------------------------


def _write_song(audio_dir: Path, song_id: str, seed: str, duration: int, rate: int) -> None:
    """Write ``<id>.wav`` atomically: a reader sees the whole file or none of it."""
    audio = make_wav(seed, duration, rate)
    audio_dir.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=audio_dir, prefix=f".{song_id}.", suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(audio)
        os.replace(temporary, audio_dir / f"{song_id}.wav")
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


async def _generations(request: web.Request) -> web.Response:
    body = await _json_object(request)
    if body is None:
        problem = {"type": "json_invalid", "loc": ["body"], "msg": "body must be a JSON object"}
        return web.json_response({"detail": [problem]}, status=422)
    request.app[HEARTMULA_RECEIVED].append(body)
    song, problems = _parse_song_request(body)
    if song is None:
        return web.json_response({"detail": problems}, status=422)
    if not request.app[_READINESS].loaded:
        return web.json_response({"detail": "model is not loaded yet"}, status=503)
    settings = request.app[_SETTINGS]
    if settings.latency_ms > 0:
        await asyncio.sleep(settings.latency_ms / 1000)
    song_id = song.song_id()
    try:
        await asyncio.to_thread(
            _write_song,
            settings.audio_dir,
            song_id,
            song.song_seed(),
            song.duration,
            settings.sample_rate,
        )
    except OSError as error:
        return web.json_response({"detail": f"generation failed: {error}"}, status=500)
    return web.json_response(
        {
            "id": song_id,
            "status": "completed",
            "audio_url": f"/audio/{song_id}.wav",
            "duration": song.duration,
            "prompt": song.prompt,
        }
    )


async def _audio(request: web.Request) -> web.StreamResponse:
    filename = request.match_info["filename"]
    if not _AUDIO_NAME.fullmatch(filename):
        raise web.HTTPNotFound()
    path = request.app[_SETTINGS].audio_dir / filename
    return web.FileResponse(path, headers={"Content-Type": "audio/wav"})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    if request.app[_READINESS].loaded:
        return web.json_response({"status": "ok"})
    return web.json_response({"status": "loading"}, status=503)
