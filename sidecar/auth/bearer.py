"""Bearer-token checks in constant time.

The presented token is hashed and compared against every configured token's hash with
``hmac.compare_digest``, without stopping at the first match, so neither the token's
content nor which entry matched shows in the timing.
"""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from ..errors import Unauthorized
from ..settings import BearerToken
from ..typedefs import TOKEN


class TokenSet:
    def __init__(self, tokens: tuple[BearerToken, ...]) -> None:
        self._entries = [(hashlib.sha256(t.value.encode()).digest(), t) for t in tokens]

    def authenticate(self, authorization: str | None) -> BearerToken:
        if not authorization:
            raise Unauthorized(
                "Missing bearer token: send 'Authorization: Bearer <token>'", code="missing_api_key"
            )
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise Unauthorized("The Authorization header must be 'Bearer <token>'")
        digest = hashlib.sha256(presented.strip().encode()).digest()
        match: BearerToken | None = None
        for expected, token in self._entries:
            if hmac.compare_digest(digest, expected):
                match = token
        if match is None:
            raise Unauthorized("Invalid bearer token")
        return match


def caller(request: web.Request) -> tuple[str | None, bool]:
    """The calling token's name and whether it is an admin token (``GATEWAY_ADMIN_TOKENS``);
    ``(None, False)`` when the request carried none. Records are owned by the name."""
    token = request.get(TOKEN)
    return (token.name, token.admin) if token is not None else (None, False)
