"""Reading request bodies: size limits and JSON, with errors a client can act on.

JSON is parsed strictly (``strict_json``): NaN, Infinity, numbers that overflow a float,
lone surrogates and nesting deeper than ``strict_json.MAX_DEPTH`` are a 400 whose
``param`` names the top-level field the bad value sits under.

A body over ``THREAD_PARSE_BYTES`` is parsed in a worker thread, so the strict check's
Python-level walk interleaves with other requests. The C decoder itself holds the GIL: a
7 MiB body of token arrays (the worst kind: 1.5 M integers) still stalls the loop for about
0.2 s, and ``GATEWAY_MAX_BODY_BYTES`` is what bounds that stall.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from ..errors import InvalidRequest, PayloadTooLarge, StrictJsonError
from ..typedefs import SETTINGS
from . import strict_json

THREAD_PARSE_BYTES = 64 * 1024
T = TypeVar("T")


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400/413 that says what is wrong."""
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes") from None
    if not body:
        raise InvalidRequest("Request body is empty; send a JSON object", code="invalid_json")
    try:
        payload = await parse_json(body)
    except StrictJsonError as exc:
        raise InvalidRequest(
            f"Request body is not valid JSON: {exc.message}", param=exc.param, code="invalid_json"
        ) from None
    if not isinstance(payload, dict):
        raise InvalidRequest("Request body must be a JSON object", code="invalid_json")
    return payload


async def by_size(size: int, work: Callable[..., T], *args: Any) -> T:
    """``work(*args)``, a walk over ``size`` bytes of JSON or what was parsed from them:
    in a worker thread when ``size`` is over ``THREAD_PARSE_BYTES``, so a big one
    interleaves with other requests instead of holding the event loop; on the loop
    otherwise, where a thread hop would cost more than the walk."""
    if size > THREAD_PARSE_BYTES:
        return await asyncio.to_thread(work, *args)
    return work(*args)


async def parse_json(body: bytes) -> Any:
    """``body`` parsed strictly; in a worker thread when over ``THREAD_PARSE_BYTES``.

    Raises ``strict_json.StrictJsonError``; every face turns it into its own error shape.
    """
    return await by_size(len(body), strict_json.loads, body)


async def walk_body(request: web.Request, work: Callable[..., T], *args: Any) -> T:
    """``work(*args)``, a walk over the request's parsed body (a face's translation of
    it), where its parse ran (``by_size``): 300,000 Anthropic content blocks took 150 ms
    on the loop."""
    return await by_size(len(await request.read()), work, *args)  # read already: cached


async def json_answer(data: Any, headers: dict[str, str] | None = None) -> web.Response:
    """``data`` as a JSON response, encoded in a worker thread: for answers that can be
    megabytes (a tool's arguments and result, ten ``b64_json`` images)."""
    text = await asyncio.to_thread(json.dumps, data)
    return web.json_response(text=text, headers=headers)


def required_field(payload: dict[str, Any], name: str) -> Any:
    """The body's ``name``, or the OpenAI-shaped 400 that says it is required (also when
    it is ``null``)."""
    value = payload.get(name)
    if value is None:
        raise InvalidRequest(f"'{name}' is required", param=name, code="missing_required_parameter")
    return value
