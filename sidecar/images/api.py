"""``POST /v1/images/generations`` and ``GET /images/{name}``.

Generation reads as the request flow: check the body, route to a backend with the
images capability, take an admission slot only for the generation itself, check what
came back is an image, then store it (for ``url``) or encode it (``b64_json``). Nothing
is written unless the whole generation succeeded.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

from aiohttp import web
from yarl import URL

from ..auth.links import require_signed_or_token
from ..errors import GatewayError, NotFound, UpstreamError
from ..routing.router import resolve_default
from ..typedefs import (
    ACCESS,
    IMAGE_STORE,
    REGISTRY,
    REQUEST_ID,
    SETTINGS,
    URL_SIGNER,
)
from ..wire.body import json_answer, read_json_object
from . import media
from .generators import generate
from .request import check_pixels, parse_image_request

_SVG_POLICY = "sandbox; default-src 'none'; style-src 'unsafe-inline'"


async def generations(request: web.Request) -> web.Response:
    answer, headers = await generate_for(request, await read_json_object(request))
    return await json_answer(answer, headers)  # ten b64_json images: tens of MiB of JSON


async def generate_for(
    request: web.Request, payload: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The OpenAI images answer for ``payload`` and the routed headers (API and UI)."""
    image_request = parse_image_request(payload)
    route = resolve_default(request.app[REGISTRY].current, image_request.model, "images")
    backend = route.backend
    record = request[ACCESS]
    record.backend = backend.name
    if image_request.model is not None:
        record.asked_for(image_request.model)
    headers = route.headers()
    try:
        check_pixels(image_request, backend.config.images.max_pixels, backend.name)
        images = await generate(
            backend, image_request, route.upstream_model or None, request[REQUEST_ID]
        )
        kinds = [_kind(data, backend.name) for data in images]
        if image_request.response_format == "b64_json":
            encoded = await asyncio.to_thread(
                lambda: [base64.b64encode(d).decode() for d in images]
            )
            data: list[dict[str, Any]] = [{"b64_json": text} for text in encoded]
        else:
            data = [{"url": url} for url in await _store(request, images, kinds)]
    except GatewayError as exc:
        exc.headers.update(headers)
        raise
    return {"created": int(time.time()), "data": data}, headers


def _kind(data: bytes, backend: str) -> media.ImageKind:
    kind = media.detect(data)
    if kind is None:
        raise UpstreamError(
            f"backend '{backend}' returned data that is not a PNG, JPEG, WebP or SVG"
        )
    return kind


async def _store(
    request: web.Request, images: list[bytes], kinds: list[media.ImageKind]
) -> list[str]:
    store = request.app[IMAGE_STORE]
    names = await asyncio.to_thread(
        lambda: [store.save(data, kind.extension) for data, kind in zip(images, kinds, strict=True)]
    )
    base = public_base(request)
    signer = request.app[URL_SIGNER]
    urls = []
    for name in names:
        path = str(request.app.router["image_file"].url_for(name=name))
        urls.append(str(base.with_path(path).with_query(signer.sign(path))))
    return urls


def public_base(request: web.Request) -> URL:
    """Where clients reach the gateway: PUBLIC_BASE_URL, else what Caddy forwarded."""
    settings = request.app[SETTINGS]
    if settings.public_base_url:
        return URL(settings.public_base_url)
    scheme, host = request.scheme, request.host  # as a trusted proxy forwarded them
    if scheme not in ("http", "https"):
        scheme = "https"
    return URL.build(scheme=scheme, authority=host)


async def image_file(request: web.Request) -> web.StreamResponse:
    """An image, for a valid signed URL or a bearer token; 403 otherwise."""
    name = request.match_info["name"]
    require_signed_or_token(request, "image")
    path = await asyncio.to_thread(request.app[IMAGE_STORE].path, name)
    if path is None:
        raise NotFound("No such image (it may have been pruned)", code="image_not_found")
    kind = media.BY_EXTENSION[path.suffix.lstrip(".")]
    headers = {
        "Content-Type": kind.mime,
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, max-age=3600, immutable",
        "Content-Disposition": f'inline; filename="{name}"',
    }
    if kind is media.SVG:
        headers["Content-Security-Policy"] = _SVG_POLICY
    return web.FileResponse(path, headers=headers)
