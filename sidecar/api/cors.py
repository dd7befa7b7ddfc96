"""CORS for browser apps that call the API faces (``/v1``, ``/api``) from their own origin.

Off unless ``gateway.yaml`` lists origins under ``cors.allow_origins`` (exact
``scheme://host[:port]``, compared case-insensitively; ``"*"`` allows every origin).
For a listed origin a preflight ``OPTIONS`` is answered here, before the bearer check (a
browser sends no token with it), with the methods and the headers the SDKs send; actual
responses — errors and streams included — carry ``Access-Control-Allow-Origin`` with that
origin, ``Vary: Origin`` and the headers a page may read. No credentials mode: the token
travels in a header, never a cookie. The UI (``/ui``) is same-origin and never gets CORS.

``preflight`` answers preflights (called by ``middleware.front``); the headers of actual
responses are set when the response is prepared (``headers``), so a stream gets them as
well as a returned response.
"""

from __future__ import annotations

from aiohttp import web

from ..typedefs import REGISTRY

_METHODS = "GET, POST, DELETE, OPTIONS"
# Request headers the OpenAI, Anthropic and Ollama clients send from a browser.
_HEADERS = (
    "authorization",
    "content-type",
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "openai-beta",
    "openai-organization",
    "openai-project",
    "x-request-id",
)
_HEADER_PREFIXES = ("x-stainless-",)  # the SDKs' platform headers, one per detail
_EXPOSED = ", ".join(
    (
        "x-request-id",
        "retry-after",
        "x-backend-used",
        "x-model-used",
        "x-ratelimit-limit-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
    )
)
_MAX_REQUESTED = 64  # header names a preflight may ask for


def _in_scope(path: str) -> bool:
    return path in ("/v1", "/api") or path.startswith(("/v1/", "/api/"))


def _allowed_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    if not origin or not _in_scope(request.path):
        return None
    cors = request.app[REGISTRY].current.config.cors
    return origin if cors.allow_origins and cors.allows(origin) else None


def preflight(request: web.Request) -> web.Response | None:
    """The answer to a preflight from an allowed origin; None for everything else."""
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return None
    origin = _allowed_origin(request)
    if origin is None:
        return None
    max_age = request.app[REGISTRY].current.config.cors.max_age_s
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": _METHODS,
            "Access-Control-Allow-Headers": _allowed_headers(request),
            "Access-Control-Max-Age": str(max_age),
        },
    )


def _allowed_headers(request: web.Request) -> str:
    """The base list, plus what the preflight asked for that is allowed."""
    asked = request.headers.get("Access-Control-Request-Headers", "")
    names = list(_HEADERS)
    for raw in asked.split(",")[:_MAX_REQUESTED]:
        name = raw.strip().lower()
        if name and name not in names and name.startswith(_HEADER_PREFIXES) and _token(name):
            names.append(name)
    return ", ".join(names)


def _token(name: str) -> bool:
    return len(name) <= 64 and all(c.isalnum() or c in "-_" for c in name)


def headers(request: web.Request, response: web.StreamResponse) -> None:
    """When a response is prepared: the CORS headers of an API response to an allowed
    origin."""
    if not _in_scope(request.path):
        return
    if not request.app[REGISTRY].current.config.cors.allow_origins:
        return
    response.headers.add("Vary", "Origin")
    origin = _allowed_origin(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = _EXPOSED
