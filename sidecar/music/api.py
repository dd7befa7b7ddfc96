"""``POST /v1/music/generations``, ``GET /ui/heartmula/audio/{filename}`` and
``GET /music/{filename}``.

The UI path is for browsers on ``UI_IP_ALLOWLIST`` (with a session when accounts are on,
or the bearer token). ``/music/{filename}`` is for API clients wherever they are: a
signed, expiring link (``download_url`` in the generation's answer, signed like image
links) or the bearer token, so the client that generated a song can always fetch it.

A download is a ``backend_call`` (a streaming GET, no admission slot): it holds the
backend's client for as long as it streams, so a reload that retires that client closes
it only after the download ends.

The audio proxy never follows a backend's redirect (a 3xx is a 502) and passes on only
the headers in ``_PASSED_HEADERS`` (never the backend's ``Server``).
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..auth.links import require_signed_or_token
from ..errors import Forbidden, GatewayError, NotFound, UpstreamError
from ..observability.client_ip import address_allowed
from ..routing.call import backend_call
from ..routing.router import resolve_default
from ..typedefs import CLIENT_IP, REGISTRY, REQUEST_ID, SETTINGS, URL_SIGNER
from ..wire.body import read_json_object
from .service import AUDIO_NAME, generate_music, parse_music_request

log = logging.getLogger("gateway.music")
_PASSED_HEADERS = ("Content-Length", "Content-Range", "Accept-Ranges", "Last-Modified", "ETag")


async def generations(request: web.Request) -> web.Response:
    music = parse_music_request(await read_json_object(request))
    result = await generate_music(request.app[REGISTRY].current, music, request[REQUEST_ID])
    name = result["audio_url"].rsplit("/", 1)[-1]
    path = str(request.app.router["music_file"].url_for(filename=name))
    signed = request.app[URL_SIGNER].sign(path)
    result["download_url"] = f"{path}?expires={signed['expires']}&signature={signed['signature']}"
    return web.json_response(result, headers={"X-Backend-Used": result["backend"]})


async def audio(request: web.Request) -> web.StreamResponse:
    """The UI's path: addresses in UI_IP_ALLOWLIST (the guard checked session or token)."""
    settings = request.app[SETTINGS]
    if not address_allowed(request[CLIENT_IP], settings.ui_ip_allowlist):
        raise Forbidden("The UI is not open to this address (UI_IP_ALLOWLIST)", code="ui_closed")
    return await _stream(request, request.match_info["filename"])


async def music_file(request: web.Request) -> web.StreamResponse:
    """The API's path: a valid signed link or a bearer token; 403 otherwise."""
    require_signed_or_token(request, "audio")
    return await _stream(request, request.match_info["filename"])


async def _stream(request: web.Request, name: str) -> web.StreamResponse:
    """Stream a generated file from the music backend; Range passes through."""
    if not AUDIO_NAME.match(name):
        raise NotFound("No such audio file", code="audio_not_found")
    backend = resolve_default(request.app[REGISTRY].current, None, "music").backend
    headers = {"X-Request-Id": request[REQUEST_ID]}
    if "Range" in request.headers:
        headers["Range"] = request.headers["Range"]
    async with backend_call(
        backend,
        None,
        f"/audio/{name}",
        None,
        request[REQUEST_ID],
        method="GET",
        headers=headers,
        check_status=False,
    ) as upstream:
        if upstream.status == 404:
            raise NotFound("No such audio file", code="audio_not_found")
        if 300 <= upstream.status < 400:
            await upstream.raise_for_status()  # a redirect: a 502 that says so
        if upstream.status not in (200, 206, 416):
            raise UpstreamError(f"backend '{backend.name}' answered {upstream.status}")
        response = web.StreamResponse(status=upstream.status)
        response.content_type = "audio/wav" if name.endswith(".wav") else "application/octet-stream"
        response.headers["X-Content-Type-Options"] = "nosniff"
        for header in _PASSED_HEADERS:
            if header in upstream.response.headers:
                response.headers[header] = upstream.response.headers[header]
        await response.prepare(request)
        try:
            async for chunk in upstream.chunks(64 * 1024):
                await response.write(chunk)
            await response.write_eof()
        except GatewayError as exc:
            # Headers are gone already: cut the body short so the client sees an error.
            log.warning("audio %s from backend %s broke off: %s", name, backend.name, exc.message)
            if request.transport is not None:
                request.transport.close()
        return response
