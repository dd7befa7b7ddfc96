"""Password hashing with bcrypt (cost 12), off the event loop by its callers.

The sidecar runs these only on ``throttle.PasswordChecks``' own small pool.
"""

from __future__ import annotations

import bcrypt

from ..errors import PasswordRejected

COST = 12
MIN_LENGTH = 8
MAX_BYTES = 72  # bcrypt ignores (or, since bcrypt 5, refuses) anything longer
# A login is refused before any database write or hash beyond these (a longer name cannot
# exist; a longer password cannot match, since none longer than MAX_BYTES is ever set).
MAX_USERNAME = 64
MAX_LOGIN_PASSWORD_BYTES = 1024


def check_password_rules(password: str) -> bytes:
    try:
        encoded = password.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from JSON's \ud800
        raise PasswordRejected("passwords must be valid Unicode text") from None
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
    try:
        encoded = password.encode("utf-8")
    except UnicodeEncodeError:
        return False
    if len(encoded) > MAX_BYTES:
        return False
    try:
        return bcrypt.checkpw(encoded, password_hash.encode())
    except ValueError:
        return False


def login_input_problem(username: str, password: str) -> tuple[str, str] | None:
    """Why a login attempt is refused before it costs anything: (param, message), or None.

    Checked before any database write or hash, so a megabyte of name or password is
    neither stored as a throttle row nor hashed.
    """
    if len(username) > MAX_USERNAME:
        return "username", f"usernames are at most {MAX_USERNAME} characters"
    if len(password) > MAX_LOGIN_PASSWORD_BYTES:  # cheap first: a character is >= 1 byte
        return "password", f"passwords are at most {MAX_LOGIN_PASSWORD_BYTES} bytes"
    for param, text in (("username", username), ("password", password)):
        try:
            encoded = text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from JSON's \ud800
            return param, f"the {param} must be valid Unicode text"
        if len(encoded) > MAX_LOGIN_PASSWORD_BYTES:
            return param, f"passwords are at most {MAX_LOGIN_PASSWORD_BYTES} bytes"
    return None


# A hash to check against when the user does not exist, so the time taken does not
# reveal whether a username is taken.
DECOY_HASH = "$2b$12$C6UzMDM.H6dfI/f/IKcEeO5lH0y8qzMeNjyQ6aKqgUz9w1ZGq0Ggq"
