"""What stands in front of every /ui request, in order.

1. The client address must be in UI_IP_ALLOWLIST (Caddy checks it too; this is the
   second line). Otherwise a 403: a browser (``Accept`` names ``text/html``) asking for
   a page gets ``templates/closed.html``, which says how to open the UI; anything else
   (the UI API, an API client, a script) gets the JSON error ``ui_closed``. Caddy serves
   the same file the same way, so which of the two answers looks alike.
2. The session (when accounts are on) is loaded from its cookie; pages without one go to
   the login page, the UI API answers 401. With accounts off, everyone allowed in is the
   single local user.
3. Every state-changing request carries the CSRF token in ``X-CSRF-Token`` and, when the
   browser says where it comes from (``Sec-Fetch-Site``, ``Origin``), comes from this
   site: the ``Origin``'s scheme, host and port all equal the site's, as Caddy forwarded
   them (``request.scheme``/``host``: ``api.middleware.front`` believes the forwarded
   ones only from a trusted proxy). The login form is no exception.
5. A music download (``/ui/heartmula/``) may carry the API's bearer token instead of a
   session, so the API client that generated a song can fetch it with accounts on.
4. Every /ui response gets a strict Content-Security-Policy (no inline script),
   ``X-Frame-Options: DENY``, a Referrer-Policy and ``nosniff``.
"""

from __future__ import annotations

import asyncio
import hmac
from html import escape
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler
from yarl import URL

from ..errors import Forbidden, Unauthorized
from ..observability.client_ip import address_allowed
from ..typedefs import (
    ACCESS,
    CLIENT_IP,
    SETTINGS,
    TOKEN,
    TOKENS,
    UI_CSRF,
    UI_SESSION,
    UI_STATE,
    UI_USER,
)
from ..wire.origin import same_origin

SESSION_COOKIE = "__Host-gw_session"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self'; connect-src 'self'; object-src 'none'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)
# The closed page's own policy: its inline style, nothing else (it has no script).
CLOSED_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
CLOSED_PAGE = "closed.html"
CLOSED_ADDRESS = "{{.RemoteIP}}"  # Caddy's template action; the sidecar fills it in itself
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Reachable without a session (with accounts on): logging in, and what the login page needs.
_OPEN_PATHS = ("/ui/login", "/ui/static/", "/ui/api/auth/login", "/ui/api/auth/me")


def is_ui(path: str) -> bool:
    return path == "/ui" or path.startswith("/ui/")


async def ui_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The door of every path that is not the API's (``middleware.bearer`` hands them
    over): the rules above for /ui, nothing for the rest."""
    if not is_ui(request.path):
        return await handler(request)
    settings = request.app[SETTINGS]
    api = request.path.startswith("/ui/api/")
    if not address_allowed(request[CLIENT_IP], settings.ui_ip_allowlist):
        if not api and not request.path.startswith("/ui/heartmula/") and wants_page(request):
            return await _closed_page(request)
        raise Forbidden(
            "The UI is not open to this address (UI_IP_ALLOWLIST)",
            code="ui_closed",
            headers={"Vary": "Accept"},
        )
    if request.path.startswith("/ui/heartmula/") and "Authorization" in request.headers:
        request[TOKEN] = request.app[TOKENS].authenticate(request.headers["Authorization"])
        return await handler(request)
    state = request.app[UI_STATE]
    session = None
    if settings.ui.accounts:
        session_id = request.cookies.get(SESSION_COOKIE)
        session = await state.users.session(session_id) if session_id else None
        if session is None and not request.path.startswith(_OPEN_PATHS):
            if api or request.method != "GET":
                raise Unauthorized("Log in first", code="login_required")
            raise web.HTTPSeeOther(str(URL("/ui/login").with_query(next=request.path_qs)))
    request[UI_SESSION] = session
    request[UI_USER] = session.user if session else state.local_user
    record = request.get(ACCESS)
    if record is not None:  # the access log names who used the UI
        record.user = request[UI_USER].username
    request[UI_CSRF] = session.csrf if session else state.anonymous_csrf
    if request.method in _UNSAFE:
        _check_csrf(request)
    return await handler(request)


def _check_csrf(request: web.Request) -> None:
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise Forbidden("Cross-site request refused", code="csrf_failed")
    origin = request.headers.get("Origin")
    if origin is not None and not same_origin(origin, request):
        raise Forbidden("Cross-origin request refused", code="csrf_failed")
    token = request.headers.get("X-CSRF-Token", "")
    if not hmac.compare_digest(token.encode(), request[UI_CSRF].encode()):
        raise Forbidden("Missing or wrong CSRF token; reload the page", code="csrf_failed")


def wants_page(request: web.Request) -> bool:
    """A browser navigating: GET or HEAD, and ``Accept`` names HTML (as Caddy matches it)."""
    return request.method in ("GET", "HEAD") and "text/html" in request.headers.get("Accept", "")


async def _closed_page(request: web.Request) -> web.Response:
    page = await closed_page(request.app[SETTINGS].templates_dir / CLOSED_PAGE)
    return web.Response(
        status=403,
        text=page.replace(CLOSED_ADDRESS, escape(request[CLIENT_IP])),
        content_type="text/html",
        headers={"Content-Security-Policy": CLOSED_CSP, "Vary": "Accept"},
    )


async def closed_page(path: Path) -> str:
    """The page's text, read once per path (off the event loop)."""
    cached = _closed_pages.get(path)
    if cached is None:
        cached = _closed_pages[path] = await asyncio.to_thread(path.read_text, encoding="utf-8")
    return cached


_closed_pages: dict[Path, str] = {}


def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """When a response is prepared: the UI's headers, on pages, assets, API and errors
    alike."""
    if not is_ui(request.path):
        return
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CSP)
    headers["X-Frame-Options"] = "DENY"
    headers["Referrer-Policy"] = "same-origin"
    headers["X-Content-Type-Options"] = "nosniff"
    headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
