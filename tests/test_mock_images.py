"""The fake image servers speak their protocols: real PNGs, A1111's and the shim's shapes."""

from __future__ import annotations

import asyncio
import base64
import json
import runpy
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from aiohttp import encode_basic_auth

from sidecar.mock_backends.images import (
    A1111_RECEIVED,
    IMAGES_RECEIVED,
    create_a1111_app,
    create_openai_images_app,
    make_png,
)

ROOT = Path(__file__).resolve().parents[1]


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG, after checking every chunk's CRC and the pixel rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks: dict[bytes, bytes] = {}
    offset = 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        payload = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + payload) & 0xFFFFFFFF == crc, kind
        chunks[kind] = chunks.get(kind, b"") + payload
        offset += 12 + length
    assert list(chunks)[:1] == [b"IHDR"] and list(chunks)[-1:] == [b"IEND"]
    width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, colour) == (8, 2)
    pixels = zlib.decompress(chunks[b"IDAT"])
    row = 1 + 3 * width
    assert len(pixels) == height * row
    assert all(pixels[y * row] == 0 for y in range(height))
    return width, height


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": encode_basic_auth(user, password)}


def decoded_sizes(images: list[str]) -> list[tuple[int, int]]:
    return [png_size(base64.b64decode(image)) for image in images]


def test_make_png_is_valid_and_deterministic() -> None:
    image = make_png(1024, 768, b"a red fox")
    assert png_size(image) == (1024, 768)
    assert make_png(1024, 768, b"a red fox") == image
    assert make_png(1024, 768, b"a blue fox") != image
    with pytest.raises(ValueError):
        make_png(0, 64, b"")


async def test_a1111_txt2img_batches_and_reports_seeds(aiohttp_client: Any) -> None:
    app = create_a1111_app()
    client = await aiohttp_client(app)
    request = {"prompt": "a lighthouse", "seed": 42, "width": 128, "height": 64, "steps": 4}
    response = await client.post(
        "/sdapi/v1/txt2img", json={**request, "batch_size": 2, "n_iter": 3}
    )
    assert response.status == 200
    body = await response.json()
    assert decoded_sizes(body["images"]) == [(128, 64)] * 6
    assert len(set(body["images"])) == 6
    assert body["parameters"]["prompt"] == "a lighthouse"
    assert body["parameters"]["steps"] == 4
    info = json.loads(body["info"])
    assert info["seed"] == 42 and info["all_seeds"] == [42, 43, 44, 45, 46, 47]
    assert app[A1111_RECEIVED][-1]["batch_size"] == 2

    again = await (await client.post("/sdapi/v1/txt2img", json=request)).json()
    assert again["images"][0] == body["images"][0]
    random_seed = await (await client.post("/sdapi/v1/txt2img", json={"seed": -1})).json()
    assert json.loads(random_seed["info"])["seed"] >= 0
    assert decoded_sizes(random_seed["images"]) == [(512, 512)]


@pytest.mark.parametrize(
    "fields",
    [{"width": 100}, {"height": 4096}, {"width": "512"}, {"batch_size": 0}, {"steps": 0}],
)
async def test_a1111_rejects_bad_requests(aiohttp_client: Any, fields: dict[str, Any]) -> None:
    client = await aiohttp_client(create_a1111_app())
    response = await client.post("/sdapi/v1/txt2img", json={"prompt": "x", **fields})
    assert response.status == 422
    body = await response.json()
    assert set(body) == {"error", "detail", "body", "errors"}
    assert body["body"] == {"prompt": "x", **fields}


async def test_a1111_basic_auth_guards_every_route(aiohttp_client: Any) -> None:
    app = create_a1111_app(auth=("sd", "s3cret"), latency_ms=1)
    client = await aiohttp_client(app)
    for path in ("/sdapi/v1/sd-models", "/sdapi/v1/options"):
        response = await client.get(path)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Basic"
        assert await response.json() == {"detail": "Not authenticated"}
        wrong = await client.get(path, headers=basic("sd", "wrong"))
        assert wrong.status == 401
        assert await wrong.json() == {"detail": "Incorrect username or password"}
    refused = await client.post("/sdapi/v1/txt2img", json={"width": 64, "height": 64})
    assert refused.status == 401
    assert not app[A1111_RECEIVED]

    auth = basic("sd", "s3cret")
    models = await (await client.get("/sdapi/v1/sd-models", headers=auth)).json()
    assert set(models[0]) >= {"title", "model_name", "hash", "sha256", "filename"}
    options = await (await client.get("/sdapi/v1/options", headers=auth)).json()
    assert options["sd_model_checkpoint"] == models[0]["title"]
    generated = await client.post(
        "/sdapi/v1/txt2img", json={"width": 64, "height": 64}, headers=auth
    )
    assert generated.status == 200


async def test_openai_images_generates_n_pngs(aiohttp_client: Any) -> None:
    app = create_openai_images_app()
    client = await aiohttp_client(app)
    request = {"prompt": "a cat", "n": 3, "size": "96x64", "seed": 7, "model": "sdxl"}
    response = await client.post("/v1/images/generations", json=request)
    assert response.status == 200
    body = await response.json()
    assert isinstance(body["created"], int)
    assert decoded_sizes([item["b64_json"] for item in body["data"]]) == [(96, 64)] * 3
    assert app[IMAGES_RECEIVED][-1] == request

    same = await (await client.post("/v1/images/generations", json=request)).json()
    assert same["data"] == body["data"]
    other = await client.post("/v1/images/generations", json={**request, "seed": 8})
    assert (await other.json())["data"][0] != body["data"][0]
    default = await (await client.post("/v1/images/generations", json={"prompt": "x"})).json()
    assert decoded_sizes([item["b64_json"] for item in default["data"]]) == [(512, 512)]
    for path in ("/healthz", "/readyz"):
        assert (await client.get(path)).status == 200


@pytest.mark.parametrize(
    ("fields", "status", "param"),
    [
        ({"prompt": ""}, 422, "prompt"),
        ({"n": 0}, 422, "n"),
        ({"n": 11}, 422, "n"),
        ({"size": "big"}, 422, "size"),
        ({"size": "32x32"}, 422, "size"),
        ({"response_format": "url"}, 400, "response_format"),
    ],
)
async def test_openai_images_rejects_bad_requests(
    aiohttp_client: Any, fields: dict[str, Any], status: int, param: str
) -> None:
    client = await aiohttp_client(create_openai_images_app())
    response = await client.post("/v1/images/generations", json={"prompt": "a cat", **fields})
    assert response.status == status
    error = (await response.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param


async def test_verify_images_tool_accepts_both_fakes(aiohttp_server: Any) -> None:
    a1111 = await aiohttp_server(create_a1111_app())
    shim = await aiohttp_server(create_openai_images_app())
    verify_main = runpy.run_path(str(ROOT / "tools/verify_images.py"))["main"]
    argv = [
        "--also-check-a1111",
        str(a1111.make_url("/")),
        "--also-check-openai-images",
        str(shim.make_url("/")),
        "--timeout",
        "10",
    ]
    assert await asyncio.to_thread(verify_main, argv) == 0
    assert a1111.app[A1111_RECEIVED][-1]["width"] == 64
    assert shim.app[IMAGES_RECEIVED][-1]["size"] == "64x64"
