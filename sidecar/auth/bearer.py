"""Who is calling: the bearer token or API key a request presents, looked up by digest.

The presented token is hashed (SHA-256) and looked up in an immutable ``KeyIndex`` of
the static tokens (``GATEWAY_BEARER_TOKEN(S)``) and the active API keys: one dict lookup,
confirmed with ``hmac.compare_digest``. Nothing but the digest of the secret decides
which entry matches, so the timing says nothing about the token. ``use_keys`` swaps in a
new index when the keys change; a request in flight keeps the key it was admitted with.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable

from aiohttp import web

from ..errors import Unauthorized
from ..settings import BearerToken
from ..typedefs import TOKEN
from .keys import ApiKey, KeyIndex
from .scope import require_endpoint


class TokenSet:
    def __init__(self, tokens: tuple[BearerToken, ...]) -> None:
        self._static = tokens
        self.index = KeyIndex(tokens, ())

    def use_keys(self, stored: Iterable[tuple[ApiKey, bytes]]) -> None:
        """Serve the static tokens plus ``stored`` (revoked and expired keys are left out)."""
        self.index = KeyIndex(self._static, stored)

    @property
    def static_names(self) -> frozenset[str]:
        return frozenset(token.name for token in self._static)

    def identify(self, authorization: str | None) -> ApiKey:
        if not authorization:
            raise Unauthorized(
                "Missing bearer token: send 'Authorization: Bearer <token>'", code="missing_api_key"
            )
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise Unauthorized("The Authorization header must be 'Bearer <token>'")
        # The header's bytes as sent: aiohttp keeps bytes that are not UTF-8 as surrogates.
        secret = presented.strip().encode("utf-8", "surrogateescape")
        key = self.index.find(hashlib.sha256(secret).digest())
        if key is None:
            raise Unauthorized("Invalid bearer token")
        if key.expires_at is not None and key.expired(time.time()):
            raise Unauthorized("This API key has expired", code="expired_api_key")
        return key

    def authenticate(self, authorization: str | None, *, path: str | None = None) -> BearerToken:
        """The caller as records name it; with ``path``, the key must also be allowed it
        (``scope.endpoint_of``), else a 403."""
        key = self.identify(authorization)
        if path is not None and key.restricted:
            require_endpoint(key, path)
        return key.token


def caller(request: web.Request) -> tuple[str | None, bool]:
    """The calling token's (or key's) name and whether it is an admin
    (``GATEWAY_ADMIN_TOKENS``, or a key made with ``--admin``); ``(None, False)`` when the
    request carried none. Records are owned by the name."""
    token = request.get(TOKEN)
    return (token.name, token.admin) if token is not None else (None, False)
