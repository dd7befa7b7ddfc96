"""Password hashing with bcrypt (cost 12), off the event loop by its callers."""

from __future__ import annotations

import bcrypt

COST = 12
MIN_LENGTH = 8
MAX_BYTES = 72  # bcrypt ignores (or, since bcrypt 5, refuses) anything longer


class PasswordRejected(ValueError):
    """The password cannot be used; the message says why."""


def check_password_rules(password: str) -> bytes:
    encoded = password.encode("utf-8")
    if len(password) < MIN_LENGTH:
        raise PasswordRejected(f"passwords need at least {MIN_LENGTH} characters")
    if len(encoded) > MAX_BYTES:
        raise PasswordRejected(
            f"passwords are limited to {MAX_BYTES} bytes by bcrypt ({len(encoded)} given; "
            "non-ASCII characters count 2-4 bytes each)"
        )
    return encoded


def hash_password(password: str) -> str:
    """Blocking (about 0.25 s at cost 12)."""
    return bcrypt.hashpw(check_password_rules(password), bcrypt.gensalt(COST)).decode()


def verify_password(password: str, password_hash: str) -> bool:
    """Blocking; a malformed stored hash (e.g. the local user's ``!``) never matches."""
    encoded = password.encode("utf-8")
    if len(encoded) > MAX_BYTES:
        return False
    try:
        return bcrypt.checkpw(encoded, password_hash.encode())
    except ValueError:
        return False


# A hash to check against when the user does not exist, so the time taken does not
# reveal whether a username is taken.
DECOY_HASH = "$2b$12$C6UzMDM.H6dfI/f/IKcEeO5lH0y8qzMeNjyQ6aKqgUz9w1ZGq0Ggq"
