"""A link to a generated file (an image, a song) is opened by its signature or a token.

A request that carries ``expires`` or ``signature`` is judged by them alone (a bad or
expired one is a 403, even with a token); one without them needs a valid bearer token,
and an API key limited to some endpoints must be allowed the one that makes such files
(``images`` for an image, ``music`` for a song).
"""

from __future__ import annotations

from aiohttp import web

from ..errors import Forbidden
from ..typedefs import TOKENS, URL_SIGNER


def require_signed_or_token(request: web.Request, kind: str) -> None:
    """Raise ``Forbidden`` unless ``request`` may read the file; ``kind`` is "image" or
    "audio", as the messages name it."""
    query = request.query
    if "signature" in query or "expires" in query:
        valid = request.app[URL_SIGNER].verify(
            request.path, query.get("expires", ""), query.get("signature", "")
        )
        if not valid:
            raise Forbidden(f"This {kind} link is invalid or has expired", code="invalid_signature")
    else:
        authorization = request.headers.get("Authorization")
        if authorization is None:
            raise Forbidden(
                f"{kind.capitalize()} links need their signature or a bearer token", code="unsigned"
            )
        key = request.app[TOKENS].identify(authorization)
        endpoint = "images" if kind == "image" else "music"
        if not key.allows_endpoint(endpoint):
            raise Forbidden(
                f"API key '{key.name}' may not use the '{endpoint}' endpoint",
                code="endpoint_not_allowed",
            )
