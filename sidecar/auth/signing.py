"""Signed, expiring file URLs (generated images and songs): HMAC-SHA256 of the path and the
expiry time.

An ``<img>`` tag, a player or the SDK can fetch a file without the bearer token for as long as
the URL is valid; nobody can forge a URL for another file or extend one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path


class UrlSigner:
    def __init__(self, secret: bytes, ttl_s: int) -> None:
        self._secret = secret
        self.ttl_s = ttl_s

    def sign(self, path: str, now: float | None = None) -> dict[str, str]:
        expires = int((now if now is not None else time.time()) + self.ttl_s)
        return {"expires": str(expires), "signature": self._mac(path, expires)}

    def verify(self, path: str, expires: str, signature: str, now: float | None = None) -> bool:
        if not expires.isascii() or not expires.isdigit() or len(expires) > 12:
            return False
        if int(expires) < (now if now is not None else time.time()):
            return False
        if not signature.isascii():  # compare_digest raises on non-ASCII text
            return False
        return hmac.compare_digest(self._mac(path, int(expires)), signature)

    def _mac(self, path: str, expires: int) -> str:
        message = f"{path}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()


def load_or_create_secret(path: Path) -> bytes:
    """The server's URL-signing key, made once (mode 0600) and kept across restarts."""
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex())
    return key
