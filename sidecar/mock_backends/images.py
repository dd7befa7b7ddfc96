"""Fake image servers: stable-diffusion-webui's ``--api`` and an OpenAI-style image shim.

Both answer with real PNGs drawn from a hash of the request, so the same prompt, seed and
size always give the same bytes, and a test can check an image's dimensions by decoding
it. Every generation request body they receive is kept (the latest 1,000) under
``app[A1111_RECEIVED]`` and ``app[IMAGES_RECEIVED]`` so tests can assert what the gateway
sent upstream.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import hashlib
import hmac
import json
import re
import secrets
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

A1111_RECEIVED = web.AppKey("a1111_received", collections.deque[dict[str, Any]])
IMAGES_RECEIVED = web.AppKey("images_received", collections.deque[dict[str, Any]])

MIN_SIDE = 64
MAX_SIDE = 2048
MAX_A1111_IMAGES = 16  # batch_size * n_iter; the real server has no cap, a fake needs one

A1111_MODEL = {
    "title": "mock-sd15.safetensors [6ce0161689]",
    "model_name": "mock-sd15",
    "hash": "6ce0161689",
    "sha256": "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
    "filename": "/models/Stable-diffusion/mock-sd15.safetensors",
    "config": None,
}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SHIFT_TABLES = tuple(bytes((i + k) & 0xFF for i in range(256)) for k in range(256))
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


def make_png(width: int, height: int, seed: bytes) -> bytes:
    """A valid 8-bit RGB PNG of ``width`` x ``height``, the same bytes for the same arguments.

    The picture is a two-colour gradient with vertical stripes, its colours, stripe width
    and vertical drift taken from ``sha256(seed)``. Each row is the first row shifted by a
    byte lookup table, so a 1024x1024 image costs a few milliseconds, not a million
    Python-level pixel operations.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    digest = hashlib.sha256(b"%dx%d:" % (width, height) + seed).digest()
    start, end = digest[0:3], digest[3:6]
    stripe = 4 + digest[6] % 60
    drift = 1 + digest[7] % 7
    span = max(width - 1, 1)
    first_row = bytearray()
    for x in range(width):
        accent = 0x30 if (x // stripe) % 2 else 0
        first_row += bytes(
            (start[c] + (end[c] - start[c]) * x // span + accent) & 0xFF for c in range(3)
        )
    base = bytes(first_row)
    rows = [
        b"\x00" + base.translate(_SHIFT_TABLES[(y * drift + digest[8]) & 0xFF])
        for y in range(height)
    ]
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        (
            _PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(b"".join(rows), 6)),
            _png_chunk(b"IEND", b""),
        )
    )


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _encoded_pngs(width: int, height: int, seeds: list[bytes]) -> list[str]:
    return [base64.b64encode(make_png(width, height, seed)).decode("ascii") for seed in seeds]


async def _draw(width: int, height: int, seeds: list[bytes]) -> list[str]:
    """Base64 PNGs drawn off the event loop: a batch of large images takes a while."""
    return await asyncio.to_thread(_encoded_pngs, width, height, seeds)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _image_seed(fields: dict[str, Any], seed: int) -> bytes:
    return json.dumps({**fields, "seed": seed}, sort_keys=True).encode()


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


@dataclass(frozen=True)
class _FakeSettings:
    latency_ms: float = 0.0


_A1111_SETTINGS = web.AppKey("a1111_settings", _FakeSettings)
_IMAGES_SETTINGS = web.AppKey("images_settings", _FakeSettings)


async def _pause(latency_ms: float) -> None:
    if latency_ms > 0:
        await asyncio.sleep(latency_ms / 1000)


# --- stable-diffusion-webui (Automatic1111) -------------------------------------------

_A1111_DEFAULTS: dict[str, Any] = {
    "prompt": "",
    "negative_prompt": "",
    "styles": None,
    "seed": -1,
    "subseed": -1,
    "sampler_name": "Euler a",
    "batch_size": 1,
    "n_iter": 1,
    "steps": 20,
    "cfg_scale": 7.0,
    "width": 512,
    "height": 512,
    "restore_faces": None,
    "tiling": None,
    "override_settings": None,
    "send_images": True,
    "save_images": False,
}


def create_a1111_app(
    auth: tuple[str, str] | None = None, latency_ms: float = 0.0
) -> web.Application:
    """A fake ``stable-diffusion-webui --api``; with ``auth`` every route wants HTTP Basic."""
    middlewares = [_basic_auth_middleware(auth)] if auth else []
    app = web.Application(middlewares=middlewares)
    app[_A1111_SETTINGS] = _FakeSettings(latency_ms=latency_ms)
    app[A1111_RECEIVED] = collections.deque(maxlen=1000)
    app.router.add_post("/sdapi/v1/txt2img", _txt2img, name="txt2img")
    app.router.add_get("/sdapi/v1/sd-models", _sd_models, name="sd-models")
    app.router.add_get("/sdapi/v1/options", _options, name="options")
    return app


def _basic_auth_middleware(auth: tuple[str, str]) -> Middleware:
    """401 as FastAPI's ``HTTPBasic`` gives it: ``Not authenticated`` without credentials,
    ``Incorrect username or password`` (as ``--api-auth`` says it) with wrong ones."""
    expected = f"{auth[0]}:{auth[1]}".encode()

    @web.middleware
    async def basic_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = _basic_credentials(request.headers.get("Authorization", ""))
        if given is None:
            return _unauthorized("Not authenticated")
        if not hmac.compare_digest(given, expected):
            return _unauthorized("Incorrect username or password")
        return await handler(request)

    return basic_auth


def _basic_credentials(header: str) -> bytes | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded if b":" in decoded else None


def _unauthorized(detail: str) -> web.Response:
    return web.json_response({"detail": detail}, status=401, headers={"WWW-Authenticate": "Basic"})


def _a1111_error(status: int, message: str, body: Any) -> web.Response:
    envelope = {
        "error": "RequestValidationError" if status == 422 else "HTTPException",
        "detail": message,
        "body": body,
        "errors": message,
    }
    return web.json_response(envelope, status=status)


def _a1111_problem(parameters: dict[str, Any]) -> str | None:
    """What is wrong with a txt2img request, or None."""
    for side in ("width", "height"):
        value = parameters[side]
        if not _is_int(value) or not MIN_SIDE <= value <= MAX_SIDE or value % 8:
            return f"{side} must be an integer multiple of 8 from {MIN_SIDE} to {MAX_SIDE}"
    for name, low, high in (("steps", 1, 150), ("batch_size", 1, 8), ("n_iter", 1, 16)):
        value = parameters[name]
        if not _is_int(value) or not low <= value <= high:
            return f"{name} must be an integer from {low} to {high}"
    if parameters["batch_size"] * parameters["n_iter"] > MAX_A1111_IMAGES:
        return f"batch_size * n_iter must be at most {MAX_A1111_IMAGES}"
    if not _is_int(parameters["seed"]) or parameters["seed"] < -1:
        return "seed must be -1 or a non-negative integer"
    if not _is_number(parameters["cfg_scale"]):
        return "cfg_scale must be a number"
    for name in ("prompt", "negative_prompt", "sampler_name"):
        if not isinstance(parameters[name], str):
            return f"{name} must be a string"
    return None


async def _txt2img(request: web.Request) -> web.Response:
    body = await _json_object(request)
    if body is None:
        return _a1111_error(422, "body must be a JSON object", await request.text())
    request.app[A1111_RECEIVED].append(body)
    parameters = {**_A1111_DEFAULTS, **body}
    problem = _a1111_problem(parameters)
    if problem:
        return _a1111_error(422, problem, body)
    await _pause(request.app[_A1111_SETTINGS].latency_ms)
    seed = parameters["seed"] if parameters["seed"] != -1 else secrets.randbelow(4294967294)
    count = parameters["batch_size"] * parameters["n_iter"]
    all_seeds = [seed + index for index in range(count)]
    drawn = {
        key: parameters[key]
        for key in ("prompt", "negative_prompt", "steps", "cfg_scale", "sampler_name")
    }
    images = await _draw(
        parameters["width"],
        parameters["height"],
        [_image_seed(drawn, image_seed) for image_seed in all_seeds],
    )
    info = {
        "prompt": parameters["prompt"],
        "all_prompts": [parameters["prompt"]] * count,
        "negative_prompt": parameters["negative_prompt"],
        "all_negative_prompts": [parameters["negative_prompt"]] * count,
        "seed": seed,
        "all_seeds": all_seeds,
        "subseed": -1,
        "all_subseeds": [-1] * count,
        "width": parameters["width"],
        "height": parameters["height"],
        "sampler_name": parameters["sampler_name"],
        "cfg_scale": parameters["cfg_scale"],
        "steps": parameters["steps"],
        "batch_size": parameters["batch_size"],
        "sd_model_name": A1111_MODEL["model_name"],
        "sd_model_hash": A1111_MODEL["hash"],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
    }
    return web.json_response({"images": images, "parameters": parameters, "info": json.dumps(info)})


async def _sd_models(request: web.Request) -> web.Response:
    return web.json_response([A1111_MODEL])


async def _options(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "sd_model_checkpoint": A1111_MODEL["title"],
            "sd_checkpoint_hash": A1111_MODEL["sha256"],
            "samples_format": "png",
            "CLIP_stop_at_last_layers": 1,
        }
    )


# --- OpenAI-style image shim (InvokeAI / ComfyUI) -------------------------------------


def create_openai_images_app(latency_ms: float = 0.0) -> web.Application:
    """A fake InvokeAI/ComfyUI shim serving ``/v1/images/generations`` with ``b64_json`` only.

    Without a ``seed`` the images are still deterministic: the seed is taken from the
    prompt, so the same request always gives the same bytes.
    """
    app = web.Application()
    app[_IMAGES_SETTINGS] = _FakeSettings(latency_ms=latency_ms)
    app[IMAGES_RECEIVED] = collections.deque(maxlen=1000)
    app.router.add_post("/v1/images/generations", _generations, name="generations")
    app.router.add_get("/healthz", _healthy, name="healthz")
    app.router.add_get("/readyz", _healthy, name="readyz")
    return app


class _BadImageRequest(Exception):
    def __init__(self, message: str, param: str | None, status: int = 422, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code or "invalid_value"


def _openai_error(error: _BadImageRequest) -> web.Response:
    envelope = {
        "error": {
            "message": error.message,
            "type": "invalid_request_error",
            "param": error.param,
            "code": error.code,
        }
    }
    return web.json_response(envelope, status=error.status)


def _parse_size(value: Any) -> tuple[int, int]:
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match:
        raise _BadImageRequest("size must look like 512x512", "size")
    width, height = int(match.group(1)), int(match.group(2))
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise _BadImageRequest(f"each side of size must be {MIN_SIDE} to {MAX_SIDE}", "size")
    return width, height


def _check_generation(body: dict[str, Any]) -> tuple[int, tuple[int, int], int]:
    """The image count, size and first seed of a valid request; raises ``_BadImageRequest``."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _BadImageRequest("prompt must be a non-empty string", "prompt")
    count = body.get("n", 1)
    if not _is_int(count) or not 1 <= count <= 10:
        raise _BadImageRequest("n must be an integer from 1 to 10", "n")
    size = _parse_size(body.get("size", "512x512"))
    response_format = body.get("response_format", "b64_json")
    if response_format == "url":
        raise _BadImageRequest(
            "response_format 'url' is not supported: use b64_json",
            "response_format",
            status=400,
            code="unsupported_response_format",
        )
    if response_format != "b64_json":
        raise _BadImageRequest("response_format must be b64_json", "response_format")
    for name in ("model", "negative_prompt", "scheduler"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise _BadImageRequest(f"{name} must be a string", name)
    steps = body.get("steps")
    if steps is not None and (not _is_int(steps) or not 1 <= steps <= 150):
        raise _BadImageRequest("steps must be an integer from 1 to 150", "steps")
    cfg_scale = body.get("cfg_scale")
    if cfg_scale is not None and not _is_number(cfg_scale):
        raise _BadImageRequest("cfg_scale must be a number", "cfg_scale")
    seed = body.get("seed")
    if seed is None:
        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")
    elif not _is_int(seed) or seed < 0:
        raise _BadImageRequest("seed must be a non-negative integer", "seed")
    return count, size, seed


async def _generations(request: web.Request) -> web.Response:
    body = await _json_object(request)
    if body is None:
        return _openai_error(_BadImageRequest("body must be a JSON object", None, status=400))
    request.app[IMAGES_RECEIVED].append(body)
    try:
        count, (width, height), seed = _check_generation(body)
    except _BadImageRequest as error:
        return _openai_error(error)
    await _pause(request.app[_IMAGES_SETTINGS].latency_ms)
    drawn = {
        key: body.get(key)
        for key in ("prompt", "negative_prompt", "steps", "cfg_scale", "scheduler", "model")
    }
    images = await _draw(width, height, [_image_seed(drawn, seed + i) for i in range(count)])
    return web.json_response(
        {"created": int(time.time()), "data": [{"b64_json": image} for image in images]}
    )


async def _healthy(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})
