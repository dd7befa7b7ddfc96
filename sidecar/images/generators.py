"""Image backends: the built-in placeholder, Automatic1111, and OpenAI-style shims.

Each turns an ``ImageRequest`` into image bytes, holding an admission slot for the
generation only (``backend_call``; ``admitted`` for the built-in one). Decoding large
base64 replies happens in a thread, so a 10-image answer never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Any

from ..errors import InvalidRequest, UpstreamError
from ..routing.call import admitted, backend_call
from ..routing.registry import Backend
from . import placeholder
from .request import ImageRequest


async def generate(
    backend: Backend, request: ImageRequest, upstream_model: str | None, request_id: str
) -> list[bytes]:
    """``upstream_model`` is the routed name (an alias's target, a prefix stripped)."""
    protocol = backend.config.protocol
    if protocol == "mock_images":
        async with admitted(backend, "images"):
            return await asyncio.to_thread(_placeholders, request)
    if protocol == "a1111":
        return await _a1111(backend, request, request_id)
    return await _openai_images(backend, request, upstream_model, request_id)


def _placeholders(request: ImageRequest) -> list[bytes]:
    return [
        placeholder.render(request.prompt, request.width, request.height, index, request.n)
        for index in range(request.n)
    ]


async def _a1111(backend: Backend, request: ImageRequest, request_id: str) -> list[bytes]:
    if request.width % 8 or request.height % 8:
        raise InvalidRequest(
            f"backend '{backend.name}' needs sizes in multiples of 8", param="size"
        )
    knobs = request.knobs
    payload: dict[str, Any] = {
        "prompt": request.prompt,
        "width": request.width,
        "height": request.height,
        "batch_size": request.n,
        "n_iter": 1,
        "seed": knobs.get("seed", -1),
    }
    for ours, theirs in (
        ("negative_prompt", "negative_prompt"),
        ("steps", "steps"),
        ("cfg_scale", "cfg_scale"),
        ("sampler", "sampler_name"),
    ):
        if ours in knobs:
            payload[theirs] = knobs[ours]
    body = await _post(backend, "sdapi/v1/txt2img", payload, request_id)
    images = await asyncio.to_thread(_decode, body, backend.name, "images", None)
    # Some A1111 versions put a grid of the batch first: keep the last n.
    return images[-request.n :] if len(images) >= request.n else _short(backend, images, request)


async def _openai_images(
    backend: Backend, request: ImageRequest, upstream_model: str | None, request_id: str
) -> list[bytes]:
    payload: dict[str, Any] = {
        "prompt": request.prompt,
        "n": request.n,
        "size": request.size,
        "response_format": "b64_json",
    }
    model = upstream_model or backend.config.images.model
    if model:
        payload["model"] = model
    knobs = dict(request.knobs)
    if "sampler" in knobs:
        knobs.setdefault("scheduler", knobs.pop("sampler"))
    payload.update(knobs)
    body = await _post(backend, "v1/images/generations", payload, request_id)
    images = await asyncio.to_thread(_decode, body, backend.name, "data", "b64_json")
    return images if len(images) >= request.n else _short(backend, images, request)


async def _post(backend: Backend, endpoint: str, payload: dict[str, Any], request_id: str) -> bytes:
    async with backend_call(backend, "images", endpoint, payload, request_id) as call:
        return await call.read_body()


def _decode(body: bytes, backend: str, key: str, field: str | None) -> list[bytes]:
    """Base64 images from ``body[key]`` (items themselves, or ``item[field]``)."""
    try:
        items = json.loads(body)[key]
        encoded = [item[field] if field else item for item in items]
        return [base64.b64decode(text, validate=True) for text in encoded]
    except (ValueError, KeyError, TypeError, RecursionError, binascii.Error):
        raise UpstreamError(f"backend '{backend}' returned no usable images") from None


def _short(backend: Backend, images: list[bytes], request: ImageRequest) -> list[bytes]:
    raise UpstreamError(
        f"backend '{backend.name}' returned {len(images)} images, {request.n} were asked for"
    )
