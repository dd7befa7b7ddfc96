"""Whether a browser's ``Origin`` is this site: the UI's CSRF guard and ``/mcp`` both ask.

The site is what a trusted proxy (Caddy) forwarded, else the request itself
(``request.scheme``/``host``, resolved once by ``api.middleware.front``).
"""

from __future__ import annotations

from aiohttp import web
from yarl import URL


def _origin_tuple(url: URL) -> tuple[str, str, int | None] | None:
    if url.scheme not in ("http", "https") or not url.host:
        return None
    return url.scheme, url.host.lower().rstrip("."), url.port


def site_origin(request: web.Request) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of this site as the browser sees it: what a trusted proxy
    (Caddy) forwarded, else the request itself (``api.middleware.front``)."""
    try:
        return _origin_tuple(URL.build(scheme=request.scheme.lower(), authority=request.host))
    except ValueError:
        return None


def same_origin(origin: str, request: web.Request) -> bool:
    """Whether a browser's ``Origin`` header is this site: scheme, host and port."""
    if origin == "null":
        return False
    try:
        presented = _origin_tuple(URL(origin))
    except ValueError:
        return False
    return presented is not None and presented == site_origin(request)
