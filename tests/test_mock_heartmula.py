"""The fake HeartMuLa shim speaks the contract: real WAVs, its JSON, ranges, 422 and 503."""

from __future__ import annotations

import io
import struct
import wave
from pathlib import Path
from typing import Any

import pytest

from sidecar.mock_backends.heartmula import (
    HEARTMULA_RECEIVED,
    create_heartmula_app,
    make_wav,
    set_loaded,
)

GENERATIONS = "/v1/music/generations"
SONG = {
    "prompt": "a calm piano piece",
    "lyrics": "[Verse]\nquiet rain\n[Chorus]\nsleep again",
    "tags": "piano,calm",
    "duration": 2,
}


def wav_fields(data: bytes) -> dict[str, Any]:
    """The header fields of a canonical 44-byte-header PCM WAV, after checking its layout."""
    riff, riff_size, wave_id, fmt_id, fmt_size = struct.unpack("<4sI4s4sI", data[:20])
    assert (riff, wave_id, fmt_id, fmt_size) == (b"RIFF", b"WAVE", b"fmt ", 16)
    fmt, channels, rate, byte_rate, align, bits = struct.unpack("<HHIIHH", data[20:36])
    data_id, data_size = struct.unpack("<4sI", data[36:44])
    assert data_id == b"data"
    assert riff_size == len(data) - 8 and data_size == len(data) - 44
    assert (byte_rate, align) == (rate * channels * bits // 8, channels * bits // 8)
    return {"format": fmt, "channels": channels, "rate": rate, "bits": bits, "size": data_size}


def test_make_wav_is_valid_pcm() -> None:
    audio = make_wav("a calm piano piece", 3, sample_rate=8000)
    assert wav_fields(audio) == {
        "format": 1,
        "channels": 1,
        "rate": 8000,
        "bits": 16,
        "size": 3 * 8000 * 2,
    }
    with wave.open(io.BytesIO(audio)) as reader:
        assert (reader.getnframes(), reader.getframerate()) == (24000, 8000)
        frames = reader.readframes(24000)
    samples = struct.unpack(f"<{len(frames) // 2}h", frames)
    assert max(samples) > 5000 and min(samples) < -5000  # audible tones, not silence


def test_make_wav_is_deterministic_and_follows_the_prompt() -> None:
    first = make_wav("rock ballad", 60)
    assert first == make_wav("rock ballad", 60)
    assert wav_fields(first)["size"] == 60 * 8000 * 2
    assert make_wav("jazz trio", 60)[44:] != first[44:]
    assert wav_fields(make_wav("rock ballad", 1, sample_rate=48000))["rate"] == 48000


async def test_generation_answers_the_contract_and_serves_the_wav(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_heartmula_app(tmp_path))
    response = await client.post(GENERATIONS, json=SONG)
    assert response.status == 200
    song = await response.json()
    assert set(song) == {"id", "status", "audio_url", "duration", "prompt"}
    assert song["status"] == "completed" and song["duration"] == 2
    assert song["prompt"] == SONG["prompt"]
    assert song["audio_url"] == f"/audio/{song['id']}.wav"
    assert len(song["id"]) == 24 and int(song["id"], 16) >= 0
    assert [p.name for p in tmp_path.iterdir()] == [f"{song['id']}.wav"]
    assert list(client.server.app[HEARTMULA_RECEIVED]) == [SONG]

    served = await client.get(song["audio_url"])
    assert served.status == 200 and served.headers["Content-Type"] == "audio/wav"
    audio = await served.read()
    assert audio == (tmp_path / f"{song['id']}.wav").read_bytes()
    assert wav_fields(audio)["size"] == 2 * 8000 * 2

    again = await (await client.post(GENERATIONS, json=SONG)).json()
    assert again == song
    assert await (await client.get(again["audio_url"])).read() == audio
    other = await (await client.post(GENERATIONS, json={**SONG, "style": "jazz"})).json()
    assert other["id"] != song["id"]
    assert (tmp_path / f"{other['id']}.wav").read_bytes()[44:] != audio[44:]


async def test_range_request_returns_the_slice(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(create_heartmula_app(tmp_path))
    song = await (await client.post(GENERATIONS, json=SONG)).json()
    audio = (tmp_path / f"{song['id']}.wav").read_bytes()
    response = await client.get(song["audio_url"], headers={"Range": "bytes=100-299"})
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes 100-299/{len(audio)}"
    assert response.headers["Content-Type"] == "audio/wav"
    assert await response.read() == audio[100:300]


async def test_bad_audio_names_are_404(aiohttp_client: Any, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("not audio")
    (tmp_path / "ABCDEF0123456789ABCDEF01.wav").write_bytes(make_wav("x", 1))
    client = await aiohttp_client(create_heartmula_app(tmp_path))
    for name in (
        "secret.txt",
        "ABCDEF0123456789ABCDEF01.wav",  # upper-case hex is not an id
        "0123456789abcdef01234567.wav",  # well formed, never generated
        "0123456789abcdef01234567.wav.part",
        "..%2Fsecret.txt",
    ):
        response = await client.get(f"/audio/{name}")
        assert response.status == 404, name


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("duration", 0),
        ("duration", 301),
        ("duration", "30"),
        ("duration", 2.5),
        ("duration", True),
        ("tags", ["piano", "calm"]),
        ("temperature", "hot"),
        ("top_k", 1.5),
    ],
)
async def test_bad_input_is_422(
    aiohttp_client: Any, tmp_path: Path, field: str, value: Any
) -> None:
    client = await aiohttp_client(create_heartmula_app(tmp_path))
    response = await client.post(GENERATIONS, json={**SONG, field: value})
    assert response.status == 422
    (problem,) = (await response.json())["detail"]
    assert problem["loc"] == ["body", field]
    assert list(tmp_path.iterdir()) == []


async def test_not_loaded_is_503_until_set_loaded(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(create_heartmula_app(tmp_path, loaded=False))
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 503
    response = await client.post(GENERATIONS, json=SONG)
    assert response.status == 503 and "detail" in await response.json()
    assert list(tmp_path.iterdir()) == []

    set_loaded(client.server.app, True)
    assert (await client.get("/readyz")).status == 200
    assert (await client.post(GENERATIONS, json={})).status == 200
    assert len(list(tmp_path.glob("*.wav"))) == 1
