"""Music through the gateway: generations, the audio route, limits and the long timeout.

Every gateway comes from the app factory; the music backend is the fake HeartMuLa shim
(``sidecar.mock_backends.heartmula``) or a small gated shim, each a real aiohttp server on
loopback, so the gateway's routing, admission and HTTP client run for real.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import ipaddress
import json
import re
import struct
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from sidecar.mock_backends.heartmula import (
    HEARTMULA_RECEIVED,
    create_heartmula_app,
    make_wav,
    set_loaded,
)
from sidecar.settings import ToolsSettings
from sidecar.typedefs import KEYS

from .conftest import TOKEN, backend_yaml, eventually, gateway_yaml, mock_backend_yaml, status_of

GENERATIONS = "/v1/music/generations"
AUDIO_ROUTE = "/ui/heartmula/audio/"
SONG_NAME = re.compile(r"^[0-9a-f]{24}\.wav$")
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
BEARER = {"Authorization": f"Bearer {TOKEN}"}
POLL_ROUNDS = 1000  # x 10 ms: a bound for conditions that should hold almost at once
SONG = {
    "prompt": "a calm piano piece",
    "lyrics": "[Verse]\nquiet rain\n[Chorus]\nsleep again",
    "style": "ambient",
    "tags": "piano,calm",
    "duration": 2,
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.9,
}


def origin(server: TestServer) -> str:
    return f"http://{server.host}:{server.port}"


@dataclass(frozen=True)
class MusicSetup:
    gateway: TestClient
    fake: TestServer
    audio_dir: Path

    def received(self) -> list[dict[str, Any]]:
        return list(self.fake.app[HEARTMULA_RECEIVED])


MusicGateway = Callable[..., Awaitable[MusicSetup]]


@pytest.fixture(name="music_gateway")
async def music_gateway_fixture(
    make_gateway: Callable[..., Awaitable[TestClient]],
    start_mock: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
) -> MusicGateway:
    """A gateway in front of a fake HeartMuLa shim, declared in YAML or by the shorthand."""

    async def make(
        how: str = "yaml",
        *,
        fake_app: web.Application | None = None,
        backend_fields: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> MusicSetup:
        audio_dir = tmp_path / "heartmula" / "audio"
        fake = await start_mock(fake_app or create_heartmula_app(audio_dir))
        if how == "yaml":
            fields = {"protocol": "heartmula", **(backend_fields or {})}
            config = gateway_yaml(backend_yaml("music", origin(fake), **fields))
        else:  # HEARTMULA_BASE_URL: the YAML has only a chat backend
            chat = await start_mock()
            config = gateway_yaml(mock_backend_yaml("mock", chat))
            overrides["tools"] = ToolsSettings(heartmula_base_url=origin(fake))
        gateway = await make_gateway(config, **overrides)
        return MusicSetup(gateway, fake, audio_dir)

    return make


async def generate(gateway: TestClient, payload: Any) -> tuple[int, Any, bytes]:
    response = await gateway.post(GENERATIONS, json=payload, headers=BEARER)
    raw = await response.read()
    body = json.loads(raw) if raw else None
    return response.status, body, raw


def wav_details(data: bytes) -> tuple[int, int, int, int]:
    """Channels, sample width, rate and frames of a PCM WAV, read by the stdlib."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", data[:16]
    assert data[12:16] == b"fmt " and struct.unpack("<H", data[20:22])[0] == 1  # PCM
    with wave.open(io.BytesIO(data)) as reader:
        frames = reader.readframes(reader.getnframes())
        assert len(frames) == reader.getnframes() * reader.getsampwidth() * reader.getnchannels()
        return (
            reader.getnchannels(),
            reader.getsampwidth(),
            reader.getframerate(),
            reader.getnframes(),
        )


wait_for = functools.partial(eventually, attempts=POLL_ROUNDS, poll_s=0.01)


def port_pattern(port: int) -> re.Pattern[str]:
    """``port`` as a number of its own (``:8123``, ``"port": 8123``), not digits inside
    another number or a hex id."""
    return re.compile(rf"(?<![0-9A-Za-z]){port}(?![0-9A-Za-z])")


# -- generation -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["yaml", "shorthand"])
async def test_generation_answers_with_the_gateway_audio_path(
    music_gateway: MusicGateway, how: str
) -> None:
    setup = await music_gateway(how)
    response = await setup.gateway.post(GENERATIONS, json=SONG, headers=BEARER)
    raw = await response.read()
    assert response.status == 200, raw
    body = json.loads(raw)
    assert response.headers["X-Backend-Used"] == "music"

    name = body["audio_url"].removeprefix(AUDIO_ROUTE)
    assert body["audio_url"].startswith(AUDIO_ROUTE) and SONG_NAME.match(name), body
    assert name == f"{body['id']}.wav"
    assert body["status"] == "completed"
    assert (body["duration"], body["prompt"]) == (2, SONG["prompt"])
    # The upstream's URL, host and port never reach the client. The port is looked for as
    # a number of its own: the song's id and the request id are random hex that may hold
    # its digits.
    text = raw.replace(AUDIO_ROUTE.encode(), b"").decode()
    for leak in (origin(setup.fake), "/audio/" + name, "http"):
        assert leak not in text, leak
    port = port_pattern(setup.fake.port)
    assert not port.search(text), text
    assert not port.search(json.dumps(dict(response.headers))), response.headers

    # The fake got every field as sent (no model, nothing added), and wrote the song.
    assert setup.received() == [SONG]
    assert (setup.audio_dir / name).is_file()


async def test_tags_given_as_a_list_are_joined(music_gateway: MusicGateway) -> None:
    setup = await music_gateway()
    status, body, _ = await generate(
        setup.gateway, {"prompt": "folk", "tags": ["guitar", "warm"], "duration": 1}
    )
    assert status == 200, body
    assert setup.received() == [{"prompt": "folk", "tags": "guitar,warm", "duration": 1}]


async def test_duration_defaults_to_30_seconds(music_gateway: MusicGateway) -> None:
    setup = await music_gateway()
    status, body, _ = await generate(setup.gateway, {"prompt": "a default song"})
    assert status == 200, body
    assert body["duration"] == 30
    assert setup.received() == [{"prompt": "a default song", "duration": 30}]


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"duration": 0}, "duration"),
        ({"duration": 301}, "duration"),
        ({"duration": -5}, "duration"),
        ({"duration": "30"}, "duration"),
        ({"duration": True}, "duration"),
        ({"duration": 2.5}, "duration"),
        ({"temperature": 5.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": False}, "top_k"),
        ({"tags": ["piano", 3]}, "tags"),
        ({"prompt": 42}, "prompt"),
        ({"lyrics": "la " * 3000}, "lyrics"),
    ],
)
async def test_invalid_requests_are_400_and_never_reach_the_backend(
    music_gateway: MusicGateway, payload: dict[str, Any], param: str
) -> None:
    setup = await music_gateway()
    status, body, _ = await generate(setup.gateway, {"prompt": "x", **payload})
    assert status == 400, body
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param
    assert setup.received() == []


async def test_music_needs_a_bearer_token(music_gateway: MusicGateway) -> None:
    setup = await music_gateway()
    response = await setup.gateway.post(GENERATIONS, json={"prompt": "x", "duration": 1})
    assert response.status == 401
    assert setup.received() == []


async def test_a_backend_still_loading_is_not_ready(
    music_gateway: MusicGateway, tmp_path: Path
) -> None:
    fake_app = create_heartmula_app(tmp_path / "heartmula" / "audio", loaded=False)
    setup = await music_gateway(fake_app=fake_app, backend_fields={"health": "{interval_s: 0.2}"})
    payload = {"prompt": "not yet", "duration": 1}

    # Before the first probe the shim's own 503 comes back as a 502; after it, readiness
    # refuses the request with a 503 and Retry-After.
    status, body, _ = await generate(setup.gateway, payload)
    assert status in (502, 503), body

    async def state_is(state: str) -> bool:
        response = await setup.gateway.get("/v1/gateway/status", headers=BEARER)
        backend = next(b for b in (await response.json())["backends"] if b["name"] == "music")
        return bool(backend["health"]["state"] == state)

    await wait_for(lambda: state_is("not_ready"), "the backend to be seen as not ready")
    received_before = len(setup.received())
    response = await setup.gateway.post(GENERATIONS, json=payload, headers=BEARER)
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "backend_not_ready"
    assert int(response.headers["Retry-After"]) >= 1
    assert len(setup.received()) == received_before  # refused before reaching the shim

    set_loaded(setup.fake.app, True)
    await wait_for(lambda: state_is("ready"), "the backend to be ready again")
    status, body, _ = await generate(setup.gateway, payload)
    assert status == 200, body


# -- the audio route ------------------------------------------------------------------------


async def make_song(setup: MusicSetup, **fields: Any) -> tuple[str, bytes]:
    """Generate a song; its gateway path and the bytes the fake wrote."""
    status, body, _ = await generate(setup.gateway, {"prompt": "rain", "duration": 2, **fields})
    assert status == 200, body
    path = body["audio_url"]
    return path, (setup.audio_dir / path.removeprefix(AUDIO_ROUTE)).read_bytes()


async def test_the_download_link_needs_its_signature_or_a_key_allowed_music(
    music_gateway: MusicGateway,
) -> None:
    """``download_url`` opens by its signature; without it, by a bearer token whose key
    may use the ``music`` endpoint (a chat-only key gets a 403, not the song)."""
    setup = await music_gateway()
    status, body, _ = await generate(setup.gateway, {"prompt": "rain", "duration": 2})
    assert status == 200, body
    stored = (setup.audio_dir / body["audio_url"].removeprefix(AUDIO_ROUTE)).read_bytes()
    signed = body["download_url"]
    bare = signed.split("?", 1)[0]
    keys = setup.gateway.server.app[KEYS]
    _, chat_only = await keys.create("chat-only", {"endpoints": ["chat"]})
    _, composer = await keys.create("composer", {"endpoints": ["music"]})

    response = await setup.gateway.get(signed)
    assert response.status == 200 and await response.read() == stored
    response = await setup.gateway.get(bare, headers={"Authorization": f"Bearer {chat_only}"})
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "endpoint_not_allowed"
    response = await setup.gateway.get(bare, headers={"Authorization": f"Bearer {composer}"})
    assert response.status == 200 and await response.read() == stored


@pytest.mark.parametrize("how", ["yaml", "shorthand"])
async def test_audio_is_served_as_a_valid_wav(music_gateway: MusicGateway, how: str) -> None:
    setup = await music_gateway(how, ui_ip_allowlist=LOOPBACK)
    path, stored = await make_song(setup)

    response = await setup.gateway.get(path)  # the UI route needs no bearer token
    assert response.status == 200
    assert response.headers["Content-Type"] == "audio/wav"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    data = await response.read()
    assert data == stored
    assert int(response.headers["Content-Length"]) == len(stored)
    assert wav_details(data) == (1, 2, 8000, 2 * 8000)


async def test_audio_range_is_passed_through(music_gateway: MusicGateway) -> None:
    setup = await music_gateway(ui_ip_allowlist=LOOPBACK)
    path, stored = await make_song(setup)

    response = await setup.gateway.get(path, headers={"Range": "bytes=0-99"})
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes 0-99/{len(stored)}"
    assert response.headers["Content-Type"] == "audio/wav"
    data = await response.read()
    assert data == stored[:100] and len(data) == 100

    response = await setup.gateway.get(path, headers={"Range": f"bytes={len(stored) - 10}-"})
    assert response.status == 206
    assert await response.read() == stored[-10:]


@pytest.mark.parametrize(
    "allowlist", [(), (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))]
)
async def test_audio_is_closed_to_addresses_outside_the_ui_allowlist(
    music_gateway: MusicGateway, allowlist: tuple[Any, ...]
) -> None:
    setup = await music_gateway(ui_ip_allowlist=allowlist)
    path, stored = await make_song(setup)
    response = await setup.gateway.get(path)
    assert response.status == 403
    data = await response.read()
    assert stored[:44] not in data
    assert json.loads(data)["error"]["type"] == "permission_error"
    # A bearer token does not open the UI route either.
    response = await setup.gateway.get(path, headers=BEARER)
    assert response.status == 403


PLANTED = b"RIFF planted beside the shim's audio folder"
NAIVE_SONG = "0123456789abcdef01234567"


def naive_shim_app(audio_dir: Path) -> web.Application:
    """A careless shim: it serves any decoded path under its folder, ``..`` included.

    In front of it, only the gateway's own checks keep a traversal from reaching a file.
    """

    async def generations(request: web.Request) -> web.Response:
        body = await request.json()
        audio_dir.mkdir(parents=True, exist_ok=True)
        (audio_dir / f"{NAIVE_SONG}.wav").write_bytes(make_wav(body.get("prompt") or "", 1))
        return web.json_response(
            {
                "id": NAIVE_SONG,
                "status": "completed",
                "audio_url": f"/audio/{NAIVE_SONG}.wav",
                "duration": 1,
                "prompt": body.get("prompt"),
            }
        )

    async def anything(request: web.Request) -> web.Response:
        name = unquote(request.raw_path.split("?")[0]).removeprefix("/audio/")
        try:
            data = (audio_dir / name).read_bytes()
        except (OSError, ValueError):
            raise web.HTTPNotFound() from None
        return web.Response(body=data, content_type="audio/wav")

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/v1/music/generations", generations)
    app.router.add_get("/readyz", ok)
    app.router.add_get("/{tail:.*}", anything)
    return app


BOGUS_NAMES = [
    "..%2Fplanted.wav",
    "%2e%2e%2Fplanted.wav",
    "%2E%2E%2fplanted.wav",
    "..%5Cplanted.wav",
    "..%2F..%2Fheartmula%2Fplanted.wav",
    "%2e%2e/planted.wav",
    "..%252Fplanted.wav",
    "planted.wav",  # a well-formed name the shim does not have
    ".planted.wav",
    "notes.txt",
    "0123456789abcdef01234567.txt",
    "0123456789abcdef01234567.wav.txt",
    "0123456789abcdef01234567.wav%00.txt",
    "fedcba9876543210fedcba98.wav",  # well formed, no such song
    "%2e%2e",
    "..",
]


@pytest.mark.parametrize("shim", ["heartmula", "naive"])
@pytest.mark.parametrize("raw_name", BOGUS_NAMES)
async def test_bogus_audio_names_never_reach_a_file(
    music_gateway: MusicGateway, tmp_path: Path, shim: str, raw_name: str
) -> None:
    audio_dir = tmp_path / "heartmula" / "audio"
    fake_app = create_heartmula_app(audio_dir) if shim == "heartmula" else naive_shim_app(audio_dir)
    setup = await music_gateway(fake_app=fake_app, ui_ip_allowlist=LOOPBACK)
    path, stored = await make_song(setup, duration=1)
    # Files a traversal would want: one beside the shim's folder, one inside under a bad name.
    (audio_dir.parent / "planted.wav").write_bytes(PLANTED)
    (audio_dir.parent / "notes.txt").write_bytes(PLANTED)
    (audio_dir / "notes.txt").write_bytes(PLANTED)

    url = URL(str(setup.gateway.make_url(AUDIO_ROUTE)) + raw_name, encoded=True)
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        status, data = response.status, await response.read()
    assert status in (400, 403, 404), (status, data)
    assert PLANTED not in data and stored[:44] not in data

    # The real song is still served: the refusals were about the names, not the route.
    response = await setup.gateway.get(path)
    assert response.status == 200
    assert await response.read() == stored


async def test_the_naive_shim_would_leak_without_the_gateway(
    start_mock: Callable[..., Awaitable[TestServer]], tmp_path: Path
) -> None:
    """The control for the test above: asked directly, the careless shim does leak."""
    audio_dir = tmp_path / "heartmula" / "audio"
    audio_dir.mkdir(parents=True)
    (audio_dir.parent / "planted.wav").write_bytes(PLANTED)
    shim = await start_mock(naive_shim_app(audio_dir))
    url = URL(f"{origin(shim)}/audio/..%2Fplanted.wav", encoded=True)
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert await response.read() == PLANTED


# -- admission and the long timeout -----------------------------------------------------------


def gated_heartmula_app(gate: asyncio.Event, arrived: list[dict[str, Any]]) -> web.Application:
    """A HeartMuLa shim that holds every generation until ``gate`` is set."""

    async def generations(request: web.Request) -> web.Response:
        body = await request.json()
        arrived.append(body)
        async with asyncio.timeout(30):
            await gate.wait()
        song_id = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:24]
        return web.json_response(
            {
                "id": song_id,
                "status": "completed",
                "audio_url": f"/audio/{song_id}.wav",
                "duration": body.get("duration", 30),
                "prompt": body.get("prompt"),
            }
        )

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/v1/music/generations", generations)
    app.router.add_get("/readyz", ok)
    app.router.add_get("/healthz", ok)
    return app


@pytest.mark.parametrize(
    ("how", "fields"),
    [("yaml", {}), ("yaml", {"class": "gpu_heavy"}), ("shorthand", {})],
    ids=["yaml-no-class", "yaml-gpu_heavy", "shorthand"],
)
async def test_music_limit_is_two_by_default(
    music_gateway: MusicGateway, how: str, fields: dict[str, str]
) -> None:
    """A music backend with no limits of its own runs two songs at a time."""
    gate = asyncio.Event()
    arrived: list[dict[str, Any]] = []
    setup = await music_gateway(
        how, fake_app=gated_heartmula_app(gate, arrived), backend_fields=fields
    )

    tasks = [
        asyncio.create_task(generate(setup.gateway, {"prompt": f"song {i}", "duration": 1}))
        for i in range(3)
    ]
    try:

        async def settled() -> bool:
            return len(arrived) + sum(task.done() for task in tasks) >= 3

        await wait_for(settled, "each generation to reach the shim or be answered")
        done = [task.result() for task in tasks if task.done()]
        assert len(arrived) == 2 and len(done) == 1, (arrived, done)
        status, body, _ = done[0]
        assert status == 429, body
        assert body["error"]["code"] == "backend_overloaded"
    finally:
        gate.set()
        results = await asyncio.gather(*tasks)
    assert sorted(status for status, _, _ in results) == [200, 200, 429]
    assert len(arrived) == 2  # the refused one never reached the shim
    stats = await status_of(setup.gateway, "music", "music")
    assert (stats["limit"], stats["in_flight"], stats["rejected"]) == (2, 0, 1)


async def test_generation_may_take_longer_than_the_read_timeout(
    music_gateway: MusicGateway, tmp_path: Path
) -> None:
    """The music call waits max(duration x 5 + 30, read_s), not the backend's read_s."""
    fake_app = create_heartmula_app(tmp_path / "heartmula" / "audio", latency_ms=600)
    setup = await music_gateway(
        fake_app=fake_app, backend_fields={"timeouts": "{read_s: 0.2}"}, ui_ip_allowlist=LOOPBACK
    )
    status, body, _ = await generate(setup.gateway, {"prompt": "slow but sure", "duration": 1})
    assert status == 200, body
    assert body["duration"] == 1
    response = await setup.gateway.get(body["audio_url"])
    assert response.status == 200
    assert wav_details(await response.read())[3] == 8000
