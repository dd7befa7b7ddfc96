"""The request pipeline before a handler, in two middlewares (each layer is a coroutine
every request runs through and every open stream holds, so there are as few as the
rules allow):

``front``, first, gives the request an id and an access record, believes a trusted
proxy's forwarding headers, answers a CORS preflight (``cors.preflight``) and translates
errors. From a trusted proxy (the unix socket from Caddy, or a peer in
``TRUSTED_PROXIES``) it clones the request once with the client's address, the site's
host and scheme as forwarded; after it, code reads ``request.remote`` / ``host`` /
``scheme`` and never a forwarding header.

Errors are translated once, there: a ``GatewayError`` leaves with its status and the
error body of the face the path belongs to (``faces``: OpenAI, Anthropic or Ollama);
aiohttp's own 404/405/413 get the same treatment; anything unexpected is logged with its
traceback and leaves as a plain 500 naming only the request id. A handler that fails
after its response began (a stream's head and some events sent) cannot be answered: the
connection is closed, so the client sees the response end early.

``bearer`` then checks the token of the API paths (with API keys' scopes and limits) and
hands every other path to the door it is given (the UI's guard).

``prepare_headers`` is the one ``on_response_prepare`` handler: the request id, no
caching, no ``Server``, a key's rate-limit headers, then what the caller adds (the UI's
security headers, CORS).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import weakref
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ..auth import TokenSet, caller
from ..auth import scope as key_scope
from ..auth.limits import Limiter, LocalLimiter, Ticket
from ..errors import GatewayError
from ..observability.access_log import AccessRecord
from ..observability.client_ip import forwarded_overrides, via_trusted_proxy
from ..typedefs import (
    ACCESS,
    CLIENT_IP,
    METRICS,
    RATE_LIMIT,
    REGISTRY,
    REQUEST_ID,
    SETTINGS,
    TOKEN,
    USAGE,
)
from . import cors
from .faces import Face, error_body, face_of

log = logging.getLogger("gateway.errors")

_HTTP_ERROR_TYPES = {
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
}


_via_proxy: weakref.WeakKeyDictionary[asyncio.BaseTransport, bool] = weakref.WeakKeyDictionary()


def new_request_id() -> str:
    return f"req-{secrets.token_hex(12)}"


@web.middleware
async def front(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Id, access record and forwarded headers; a CORS preflight; errors; one access
    line when the request ends."""
    request_id = new_request_id()
    request[REQUEST_ID] = request_id
    trusted = request.app[SETTINGS].trusted_proxies
    transport = request.transport
    # Whether the peer is a trusted proxy is a property of the connection: asked once per
    # connection, not per request (a keep-alive connection carries many).
    try:
        via_proxy = _via_proxy.get(transport) if transport is not None else None
    except TypeError:  # a transport that cannot be weakly referenced: ask every time
        transport, via_proxy = None, None
    if via_proxy is None:
        via_proxy = via_trusted_proxy(request, trusted)
        if transport is not None:
            _via_proxy[transport] = via_proxy
    overrides = forwarded_overrides(request, trusted) if via_proxy else {}
    ip = overrides.get("remote") or request.remote or "unknown"
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "(unmatched)"
    record = AccessRecord(request_id, request.method, route, ip)
    # Set before cloning: aiohttp prepares a returned response with the original request
    # (``prepare_headers``), which must see the same id and record.
    request[ACCESS] = record
    request[CLIENT_IP] = ip
    if overrides:
        request = request.clone(**overrides)
    response: web.StreamResponse | None
    try:
        response = cors.preflight(request)
        if response is None:
            try:
                response = await handler(request)
            except ConnectionResetError:
                raise  # the client went away; there is no one to answer
            except Exception as exc:
                if request.writer.output_size:  # the handler's response has begun
                    response = _cut_short(request, record, exc)
                elif isinstance(exc, GatewayError):
                    response = _gateway_error(request, exc)
                elif isinstance(exc, web.HTTPException):
                    if exc.status < 400:
                        raise
                    response = _http_error(face_of(request.path), exc)
                else:
                    path = request.rel_url.raw_path  # as sent, still encoded: one log line
                    log.exception("unhandled error in %s %s", request.method, path)
                    response = _internal_error(request)
    except BaseException as exc:
        status = getattr(exc, "status", None)
        record.status = status if isinstance(status, int) else (record.status or 499)
        _finish(record, request)
        raise
    record.status = response.status
    if not record.bytes_out and response.content_length:
        record.bytes_out = response.content_length
    _finish(record, request)
    return response


def _finish(record: AccessRecord, request: web.Request) -> None:
    app = request.app
    app[METRICS].observe_request(record, app[REGISTRY].current.backends.__contains__)
    usage = app.get(USAGE)
    if usage is not None:
        usage.add(record, caller(request)[0])
    if not app[SETTINGS].access_log:
        return
    token = request.get(TOKEN)
    record.token = token.name if token is not None else None
    record.emit()


def prepare_headers(
    *more: Callable[[web.Request, web.StreamResponse], None],
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """The ``on_response_prepare`` handler: every response carries the request id and no
    caching, and no ``Server`` header (aiohttp's names itself and its version: nothing a
    client needs); a key's ``x-ratelimit-*`` headers go on a stream prepared by its
    handler too (other responses get them from ``bearer``); then each of ``more``. It
    runs in the handler's task, or, for a stream started from the backend's head, in
    that read callback: it and ``more`` use only the request and the response."""

    async def prepare(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        headers.popall("Server", None)
        request_id = request.get(REQUEST_ID)
        if request_id:
            headers["X-Request-Id"] = request_id
        record = request.get(ACCESS)
        if record is not None:
            record.status = response.status
        headers.setdefault("Cache-Control", "no-store")
        ticket: Ticket | None = request.get(RATE_LIMIT)
        if ticket is not None:
            headers.update(ticket.headers)
        for add in more:
            add(request, response)

    return prepare


def _cut_short(request: web.Request, record: AccessRecord, exc: Exception) -> web.Response:
    """A handler failed after its response's head went out: no status or error body can
    follow, so the connection is closed (what was written is flushed first) and the
    client sees the response end early: never a second head inside the body, never a
    wait. The response returned is never sent; the access record keeps the status sent."""
    record.stream_failed = True
    if not isinstance(exc, GatewayError | web.HTTPException):
        path = request.rel_url.raw_path  # as sent, still encoded: one log line
        log.exception("unhandled error in %s %s after the response began", request.method, path)
    request.protocol.force_close()
    return web.Response(status=record.status or 500)


def _gateway_error(request: web.Request, exc: GatewayError) -> web.Response:
    face = face_of(request.path)
    if face is Face.OPENAI:
        return error_response(exc.status, exc.envelope(), exc.response_headers())
    body = error_body(face, exc.status, exc.message, exc.error_type, exc.param, exc.code)
    return error_response(exc.status, body, exc.response_headers())


def _internal_error(request: web.Request) -> web.Response:
    return error_response(
        500,
        error_body(
            face_of(request.path),
            500,
            f"Internal error; quote request id {request.get(REQUEST_ID)} to the admin",
            "api_error",
            None,
            "internal_error",
        ),
    )


def _http_error(face: Face, exc: web.HTTPException) -> web.Response:
    error_type, code = _HTTP_ERROR_TYPES.get(exc.status, ("invalid_request_error", None))
    headers = {}
    if exc.status == 405 and "Allow" in exc.headers:
        headers["Allow"] = exc.headers["Allow"]
    if exc.status == 413:
        message = "Request body is too large"
    elif exc.status == 404:
        message = "Unknown URL; see GET /v1/models and the OpenAI API reference"
    else:
        message = exc.reason
    return error_response(
        exc.status, error_body(face, exc.status, message, error_type, None, code), headers
    )


def error_response(
    status: int, body: dict[str, object], headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )


def bearer(
    tokens: TokenSet, limiter: Limiter | None = None, other: Middleware | None = None
) -> Middleware:
    """Bearer auth on every ``/v1`` path (matched route or not), on ``/mcp`` and on the
    Ollama face's ``/api``; the Anthropic face may send the token as ``x-api-key``. Every
    other path goes to ``other`` (the UI's guard), or straight on.

    A static token goes straight on. An API key with a scope or a limit is checked here
    once: its endpoints (403), then its limits (429 with ``Retry-After``); its scope is
    bound for the router and the tool bus (``auth.scope``) while the request runs, and
    the tokens the request used are charged to its limits when it ends.
    """
    limits = limiter if limiter is not None else LocalLimiter()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path == "/v1" or path.startswith("/v1/") or path == "/mcp":
            authorization = request.headers.get("Authorization")
            if authorization is None and face_of(path) is Face.ANTHROPIC:
                api_key = request.headers.get("x-api-key")
                authorization = f"Bearer {api_key}" if api_key else None
        elif path == "/api" or path.startswith("/api/"):
            authorization = request.headers.get("Authorization")
        elif other is not None:
            return await other(request, handler)
        else:
            return await handler(request)
        key = tokens.identify(authorization)
        request[TOKEN] = key.token
        if not key.restricted:
            return await handler(request)
        if request.match_info.http_exception is None:
            key_scope.require_endpoint(key, path)  # an unknown path stays a 404
        ticket = limits.admit(key) if key.limited else None
        if ticket is not None:
            request[RATE_LIMIT] = ticket
        bound = key_scope.bind(key)
        try:
            response = await handler(request)
        except GatewayError as exc:
            if ticket is not None:
                exc.headers.update(ticket.headers)
            raise
        finally:
            key_scope.unbind(bound)
            if ticket is not None:
                record = request[ACCESS]
                limits.done(ticket, record.prompt_tokens + record.completion_tokens)
        if ticket is not None and not response.prepared:
            response.headers.update(ticket.headers)
        return response

    return check
