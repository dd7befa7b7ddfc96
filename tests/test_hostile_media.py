"""Hostile input and broken backends for images, music and the audio endpoints.

Images: an answer holding large base64 images is serialised off the event loop; the
image store stays within its byte and file caps however many distinct images are asked
for (the oldest go first, the newest stays fetchable); a prune that removes an image
while the same image is stored again does not fail the request. Music: a backend's
reply fields reach the client only in their documented shape. Audio uploads: hostile
multipart bodies get a 400/413 envelope, and bytes outside the parts (a preamble, part
headers) count toward the body limit.

Every gateway comes from the app factory; every backend is a real aiohttp server on
loopback.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.images import store as store_module
from sidecar.images.store import ImageStore
from sidecar.mock_backends.images import make_png
from sidecar.mock_backends.openai_server import RECEIVED
from sidecar.storage import StorageMonitor
from sidecar.typedefs import IMAGE_STORE

from .conftest import TOKEN, backend_yaml, gateway_yaml, mock_backend_yaml, status_of
from .test_images_api import (
    ImagesGateway,
    fetch,
    generate,
    images_gateway_fixture,  # noqa: F401 - the fixture, shared with test_images_api.py
    stored_files,
)
from .test_images_backends import NO_PROBES, encoded, image_app, images_reply
from .test_interop_audio import CAPABILITIES, MODELS

BEARER = {"Authorization": f"Bearer {TOKEN}"}


# -- images: serialising a large answer ------------------------------------------------------


async def test_a_large_b64_json_answer_is_serialised_off_the_event_loop(
    images_gateway: ImagesGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten images of 3 MiB make a 40 MiB JSON answer: dumping it took a third of a second
    on the event loop (aiohttp's ``json_response``). It is dumped in the worker thread
    that base64-encodes the images."""
    big = make_png(64, 64, b"seed") + os.urandom(3 * 1024 * 1024)

    async def answer(request: web.Request) -> web.Response:
        return images_reply(request, encoded(*[big] * 10))

    setup = await images_gateway("shim-yaml", app=image_app(answer), fields=NO_PROBES)
    loop_thread = threading.get_ident()
    dumped: list[bool] = []
    real_dumps = json.dumps

    def spy(value: Any, *args: Any, **kwargs: Any) -> str:
        if isinstance(value, dict) and "data" in value and "created" in value:
            dumped.append(threading.get_ident() == loop_thread)
        return real_dumps(value, *args, **kwargs)

    monkeypatch.setattr(json, "dumps", spy)
    async with setup.gateway.post(
        "/v1/images/generations",
        json={"prompt": "big", "size": "64x64", "n": 10, "response_format": "b64_json"},
        headers=BEARER,
    ) as response:
        raw = await response.read()
        assert response.status == 200, raw[:500]
    monkeypatch.undo()
    data = json.loads(raw)["data"]
    assert [base64.b64decode(item["b64_json"]) for item in data] == [big] * 10
    assert dumped == [False], dumped  # before: never through a dump off the loop's thread


# -- images: the store stays within its caps -------------------------------------------------


def _store_bytes(directory: Path) -> int:
    return sum(entry.stat().st_size for entry in os.scandir(directory))


@pytest.mark.parametrize("cap", ["bytes", "files"])
async def test_many_distinct_images_never_grow_the_store_past_its_cap(
    images_gateway: ImagesGateway, cap: str
) -> None:
    """Before: images were pruned by age only (a week by default), so a caller asking for
    distinct prompts filled the data directory (and with it the users database, the
    usage ledger and the tool log) without bound. Now the oldest images go first once the
    store is over its byte or file cap; the image just made is always kept."""
    setup = await images_gateway("mock-yaml")
    store = setup.gateway.server.app[IMAGE_STORE]
    if cap == "bytes":
        store.max_bytes = 8_000  # a handful of placeholder SVGs (about 1 KB each)
    else:
        store.max_files = 5
    urls = []
    for index in range(40):
        status, _, body = await generate(
            setup.gateway, prompt=f"picture number {index}", size="64x64"
        )
        assert status == 200, body
        urls.append(body["data"][0]["url"])
        files = stored_files(setup.image_dir)
        if cap == "bytes":
            assert _store_bytes(setup.image_dir) <= 8_000, (index, files)
        else:
            assert len(files) <= 5, (index, files)
        status, _, data = await fetch(urls[-1])  # the newest is always there
        assert status == 200 and data.startswith(b"<svg"), (index, status)
    status, _, _ = await fetch(urls[0])
    assert status == 404  # the oldest went first


def test_a_prune_racing_a_store_of_the_same_image_does_not_fail_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same bytes stored again refresh the file's age; when the background prune
    removed it in between (``exists`` true, then gone), storing was a 503 and marked the
    whole gateway's storage as failing. Now the image is simply written again."""
    monitor = StorageMonitor(tmp_path)
    store = ImageStore(tmp_path / "images", monitor)
    data = make_png(64, 64, b"race")
    name = store.save(data, "png")
    real_utime = os.utime

    def pruned_first(path: Any, *args: Any, **kwargs: Any) -> None:
        os.unlink(path)  # the prune won the race
        real_utime(path, *args, **kwargs)

    monkeypatch.setattr(store_module.os, "utime", pruned_first)
    assert store.save(data, "png") == name
    monkeypatch.undo()
    path = store.path(name)
    assert path is not None and path.read_bytes() == data
    assert monitor.state.writable, monitor.state


# -- audio uploads: hostile multipart bodies -------------------------------------------------

TRANSCRIPTIONS = "/v1/audio/transcriptions"
B = "hostileboundary"
LIMIT = 64 * 1024


def _part(headers: str, body: bytes) -> bytes:
    return f"--{B}\r\n{headers}\r\n\r\n".encode() + body + b"\r\n"


MODEL_PART = _part('Content-Disposition: form-data; name="model"', b"mock-whisper")
FILE_PART = _part(
    'Content-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav',
    b"RIFF....WAVE",
)
END = f"--{B}--\r\n".encode()


@pytest.fixture
async def upload_gateway(make_gateway: Any, start_mock: Any) -> tuple[TestClient, TestServer]:
    backend = await start_mock()
    gateway = await make_gateway(
        gateway_yaml(
            mock_backend_yaml(
                "mock",
                backend,
                capabilities=CAPABILITIES,
                models=MODELS,
                health="{readiness: false}",
            )
        ),
        max_body_bytes=LIMIT,
    )
    return gateway, backend


async def _post_form(gateway: TestClient, body: bytes) -> aiohttp.ClientResponse:
    """POST ``body`` chunked (no Content-Length: only the gateway's counting bounds it)."""

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    return await gateway.post(
        TRANSCRIPTIONS,
        data=pieces(),
        headers={**BEARER, "Content-Type": f"multipart/form-data; boundary={B}"},
    )


HOSTILE_FORMS = {
    "preamble-over-the-limit": (b"x" * 100 + b"\r\n") * (2 * LIMIT // 100)
    + MODEL_PART
    + FILE_PART
    + END,
    "part-headers-over-the-limit": MODEL_PART
    + _part(
        'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        + "\r\n".join(f"X-Pad-{i}: {'p' * 4000}" for i in range(100)),
        b"RIFF",
    )
    + _part('Content-Disposition: form-data; name="language"', b"en") * 40
    + END,
    "too-many-fields": MODEL_PART
    + _part('Content-Disposition: form-data; name="x"', b"1") * 70
    + FILE_PART
    + END,
    "nested-multipart": MODEL_PART
    + _part(
        'Content-Disposition: form-data; name="file"\r\n'
        "Content-Type: multipart/mixed; boundary=inner",
        b"--inner\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n--inner--",
    )
    + END,
    "no-content-disposition": MODEL_PART
    + _part("Content-Type: text/plain", b"x")
    + FILE_PART
    + END,
    "file-under-another-name": MODEL_PART
    + _part('Content-Disposition: form-data; name="audio"; filename="a.wav"', b"RIFF")
    + END,
    "two-files": MODEL_PART + FILE_PART + FILE_PART + END,
    "non-utf8-model": _part('Content-Disposition: form-data; name="model"', b"\xff\xfe")
    + FILE_PART
    + END,
    "header-line-too-long": MODEL_PART
    + _part('Content-Disposition: form-data; name="file"; filename="' + "a" * 20000 + '"', b"R")
    + END,
    "control-character-in-filename": MODEL_PART
    + f"--{B}\r\n".encode()
    + b'Content-Disposition: form-data; name="file"; filename="a\x00\x7f.wav"\r\n\r\nRIFF\r\n'
    + END,
    "no-closing-boundary": MODEL_PART + FILE_PART[:-2],
    "no-boundary-at-all": b"just some bytes\r\n" * 10,
    "field-over-its-cap": MODEL_PART
    + _part('Content-Disposition: form-data; name="prompt"', b"p" * (LIMIT + 1))
    + FILE_PART
    + END,
}


@pytest.mark.parametrize("form", list(HOSTILE_FORMS))
async def test_a_hostile_upload_is_refused_with_an_envelope_and_frees_its_slot(
    upload_gateway: tuple[TestClient, TestServer], form: str
) -> None:
    """Each is a 400 or 413 in the OpenAI envelope, its slot given back. Before, the two
    ``over-the-limit`` forms were relayed (200): only the parts' contents counted toward
    ``GATEWAY_MAX_BODY_BYTES``, so a chunked upload could send any amount as a preamble
    (or up to 1 MiB of headers per part)."""
    gateway, _ = upload_gateway
    response = await _post_form(gateway, HOSTILE_FORMS[form])
    text = await response.text()
    assert response.status in (400, 413), (response.status, text[:300])
    assert response.content_type == "application/json", text[:300]
    error = json.loads(text)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert "Traceback" not in error["message"]
    if form.endswith("over-the-limit"):
        assert response.status == 413, error
    stats = await status_of(gateway, "mock", "transcriptions")
    assert stats["in_flight"] == 0, stats


async def test_a_non_utf8_filename_reaches_the_backend_cleaned(
    upload_gateway: tuple[TestClient, TestServer],
) -> None:
    """Bytes that are not UTF-8, a path and a backslash in a filename: the backend gets a
    plain printable name, never a path. (A control character in a part's headers is a
    400: ``control-character-in-filename`` above.)"""
    gateway, backend = upload_gateway
    raw_name = b"\xc3\xa9\xff../../etc/x\\y.wav"
    hostile = (
        f"--{B}\r\n".encode()
        + b'Content-Disposition: form-data; name="file"; filename="'
        + raw_name
        + b'"\r\nContent-Type: audio/wav\r\n\r\nRIFF....WAVE\r\n'
    )
    response = await _post_form(gateway, MODEL_PART + hostile + END)
    text = await response.text()
    assert response.status == 200, text
    sent = backend.app[RECEIVED][-1].body["file"]["filename"]
    assert sent.endswith(".wav"), sent
    assert not any(c in sent for c in '/\\"\x00\x7f'), sent
    assert sent.isprintable(), sent


# -- music: what a hostile backend's reply may carry to the client and the tool --------------


async def test_a_music_backends_reply_reaches_the_client_only_in_its_shape(
    make_gateway: Any, start_mock: Any
) -> None:
    """The backend's ``id``, ``status``, ``duration`` and ``prompt`` were passed on as they
    came: any JSON of up to 64 MiB, to API clients and, through ``heartmula_generate``,
    into an agent's context, its transcript and the tool log. Now each keeps its shape
    (short strings, a number of seconds) or falls back to what the gateway knows."""
    huge = "internal /srv/heartmula/cache " * 40_000

    async def hostile(request: web.Request) -> web.Response:
        await request.json()
        return web.json_response(
            {
                "id": {"nested": [huge]},
                "status": huge,
                "audio_url": "/audio/song_1.wav",
                "duration": "forever",
                "prompt": huge,
            }
        )

    app = web.Application()
    app.router.add_post("/v1/music/generations", hostile)
    fake = await start_mock(app)
    gateway = await make_gateway(
        gateway_yaml(
            backend_yaml(
                "music",
                f"http://{fake.host}:{fake.port}",
                protocol="heartmula",
                health="{readiness: false}",
            )
        )
    )
    response = await gateway.post(
        "/v1/music/generations", json={"prompt": "calm piano", "duration": 3}, headers=BEARER
    )
    raw = await response.read()
    assert response.status == 200, raw[:300]
    assert len(raw) < 2000, len(raw)
    body = json.loads(raw)
    assert body["id"] is None
    assert body["status"] == "completed"
    assert body["duration"] == 3
    assert body["prompt"] == "calm piano"
    assert body["audio_url"] == "/ui/heartmula/audio/song_1.wav"
