"""``POST /v1/music/generations`` and ``GET /ui/heartmula/audio/{filename}``.

The audio proxy never follows a backend's redirect (a 3xx is a 502) and passes on only
the headers in ``_PASSED_HEADERS`` (never the backend's ``Server``).
"""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web

from ..api.body import read_json_object
from ..errors import Forbidden, GatewayError, NotFound, UpstreamError
from ..observability.client_ip import address_allowed
from ..routing.router import resolve_default
from ..typedefs import CLIENT_IP, REGISTRY, REQUEST_ID, SETTINGS
from .service import AUDIO_NAME, generate_music, parse_music_request

log = logging.getLogger("gateway.music")
_PASSED_HEADERS = ("Content-Length", "Content-Range", "Accept-Ranges", "Last-Modified", "ETag")


async def generations(request: web.Request) -> web.Response:
    music = parse_music_request(await read_json_object(request))
    result = await generate_music(request.app[REGISTRY].current, music, request[REQUEST_ID])
    return web.json_response(result, headers={"X-Backend-Used": result["backend"]})


async def audio(request: web.Request) -> web.StreamResponse:
    """Stream a generated file from the music backend; Range passes through."""
    settings = request.app[SETTINGS]
    if not address_allowed(request[CLIENT_IP], settings.ui_ip_allowlist):
        raise Forbidden("The UI is not open to this address (UI_IP_ALLOWLIST)", code="ui_closed")
    name = request.match_info["filename"]
    if not AUDIO_NAME.match(name):
        raise NotFound("No such audio file", code="audio_not_found")
    backend = resolve_default(request.app[REGISTRY].current, None, "music").backend
    headers = {"X-Request-Id": request[REQUEST_ID]}
    if "Range" in request.headers:
        headers["Range"] = request.headers["Range"]
    try:
        async with backend.client.session.get(
            backend.client.url("").with_path(f"/audio/{name}"),
            headers=headers,
            timeout=aiohttp.ClientTimeout(sock_read=backend.config.timeouts.read_s),
            allow_redirects=False,
        ) as upstream:
            if upstream.status == 404:
                raise NotFound("No such audio file", code="audio_not_found")
            if 300 <= upstream.status < 400:
                raise UpstreamError(
                    f"backend '{backend.name}' answered with a redirect ({upstream.status});"
                    " the gateway does not follow redirects",
                    code="upstream_redirect",
                )
            if upstream.status not in (200, 206, 416):
                raise UpstreamError(f"backend '{backend.name}' answered {upstream.status}")
            response = web.StreamResponse(status=upstream.status)
            response.content_type = (
                "audio/wav" if name.endswith(".wav") else "application/octet-stream"
            )
            response.headers["X-Content-Type-Options"] = "nosniff"
            for header in _PASSED_HEADERS:
                if header in upstream.headers:
                    response.headers[header] = upstream.headers[header]
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_chunked(64 * 1024):
                    await response.write(chunk)
                await response.write_eof()
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Headers are gone already: cut the body short so the client sees an error.
                log.warning("audio %s from backend %s broke off: %r", name, backend.name, exc)
                if request.transport is not None:
                    request.transport.close()
            return response
    except GatewayError:
        raise
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise backend.client.translate(exc) from None
