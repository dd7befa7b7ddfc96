"""Named API keys: what a key is, how it is stored, and the index the hot path reads.

A key is ``gw_`` followed by 43 characters of ``secrets.token_urlsafe(32)`` (256 bits).
Only its SHA-256 is stored, with a short prefix in clear (``gw_ab12``) so people can
tell keys apart in a list; the key itself is shown once, when it is made. A high-entropy
secret needs no slow hash: nobody can search 2**256 candidates against a stolen digest.

``KeyDatabase`` is SQLite in WAL mode in the data directory (``keys.sqlite3``), used by
``gateway keys …`` directly and by the running gateway through ``keys_store.SqliteKeyStore``
on one thread. Every change commits before the call returns, and bumps SQLite's
``data_version`` for every other connection: that is how the gateway sees a change made
by the command line within its poll interval.

``KeyIndex`` is immutable: the static tokens from the environment plus every active key,
by digest. Looking a caller up is one dict lookup on the presented token's digest,
confirmed with ``hmac.compare_digest``; a change swaps in a new index.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import sqlite
from ..errors import DatabaseError, InvalidRequest
from ..settings import BearerToken

log = logging.getLogger("gateway.keys")

KEY_PREFIX = "gw_"
SHOWN_PREFIX = 7  # "gw_" and four characters
KEY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Endpoint names a key may be limited to (``endpoints``); see ``scope.endpoint_of``.
ENDPOINTS = (
    "chat",
    "completions",
    "embeddings",
    "images",
    "audio",
    "music",
    "tools",
    "agents",
    "responses",
    "messages",
    "admin",
)
MAX_GLOBS = 64
MAX_GLOB_CHARS = 200
MAX_LIMIT = 10**12
MAX_EXPIRES_DAYS = 36_500
LIMIT_FIELDS = ("rpm", "tpm", "tokens_per_day", "concurrency")

MIGRATIONS: tuple[str, ...] = (
    # 1: keys (scopes and limits as columns) and the limiter's persisted windows
    """
    CREATE TABLE keys (
        name TEXT PRIMARY KEY,
        prefix TEXT NOT NULL,
        digest TEXT NOT NULL UNIQUE,
        is_admin INTEGER NOT NULL DEFAULT 0,
        models TEXT,
        endpoints TEXT,
        tools TEXT,
        rpm INTEGER,
        tpm INTEGER,
        tokens_per_day INTEGER,
        concurrency INTEGER,
        created_at REAL NOT NULL,
        expires_at REAL,
        revoked_at REAL,
        rotated_at REAL
    );
    CREATE TABLE limit_windows (
        name TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
)


@dataclass(frozen=True)
class ApiKey:
    """Who is calling, and what they may do. ``None`` for a scope or limit: no restriction.

    Static tokens (``GATEWAY_BEARER_TOKEN(S)``) are keys with no scope and no limit;
    ``admin`` keys may read every record and always reach the ``admin`` endpoints.
    """

    name: str
    prefix: str = ""
    admin: bool = False
    models: tuple[str, ...] | None = None
    endpoints: frozenset[str] | None = None
    tools: frozenset[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    tokens_per_day: int | None = None
    concurrency: int | None = None
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None
    static: bool = False
    _models_re: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)
    token: BearerToken = field(default=BearerToken("", ""), init=False, repr=False, compare=False)
    # Worked out once: the hot path reads them for every request.
    limited: bool = field(default=False, init=False, repr=False, compare=False)
    restricted: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.models is not None:
            pattern = "|".join(_glob_regex(glob) for glob in self.models) or "(?!)"
            object.__setattr__(self, "_models_re", re.compile(pattern))
        # What ``caller(request)`` and the records see: the name and the admin flag.
        object.__setattr__(self, "token", BearerToken(self.name, "", self.admin))
        limited = any(getattr(self, name) is not None for name in LIMIT_FIELDS)
        scoped = self.models is not None or self.endpoints is not None or self.tools is not None
        object.__setattr__(self, "limited", limited)
        # Anything to check: a scope, a limit, or (a named key that is not an admin) the
        # admin endpoints, which only admin keys and the operator's static tokens reach.
        gated = not (self.static or self.admin)
        object.__setattr__(self, "restricted", limited or scoped or gated)

    def allows_model(self, name: str) -> bool:
        """Whether ``name`` itself matches one of the globs (``*`` and ``?`` stop at ``/``).
        The router decides which names a request's model stands for
        (``routing.router.allowed``): an alias by its name, ``backend/model`` by either."""
        return self._models_re is None or self._models_re.fullmatch(name) is not None

    def allows_endpoint(self, endpoint: str | None) -> bool:
        if endpoint == "admin":  # /v1/gateway/* and /metrics
            return self.static or self.admin or bool(self.endpoints and "admin" in self.endpoints)
        if self.endpoints is None:
            return True
        return endpoint is not None and endpoint in self.endpoints

    def allows_tool(self, name: str) -> bool:
        return self.tools is None or name in self.tools

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def public(self) -> dict[str, Any]:
        """What lists show: never the key or its digest."""
        return {
            "name": self.name,
            "prefix": self.prefix,
            "admin": self.admin,
            "models": list(self.models) if self.models is not None else None,
            "endpoints": sorted(self.endpoints) if self.endpoints is not None else None,
            "tools": sorted(self.tools) if self.tools is not None else None,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "tokens_per_day": self.tokens_per_day,
            "concurrency": self.concurrency,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "status": self.status(time.time()),
        }

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expired(now) else "active"


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest_of(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


# -- checking what a person asks for -------------------------------------------------------


def check_name(name: object) -> str:
    if not isinstance(name, str) or not KEY_NAME.fullmatch(name):
        raise InvalidRequest(
            "a key name is 1-64 letters, digits, '_', '.' or '-'", param="name", code="invalid_name"
        )
    return name


def check_scopes(values: dict[str, Any]) -> dict[str, Any]:
    """Scopes and limits from a CLI or UI request, checked; absent keys stay absent.

    ``models``: globs (``*`` and ``?``; ``[`` is literal); ``endpoints``: names from ``ENDPOINTS``;
    ``tools``: tool names; each a list, or ``None`` for no restriction. Limits are
    positive integers or ``None``.
    """
    checked: dict[str, Any] = {}
    for name in ("models", "tools", "endpoints"):
        if name not in values:
            continue
        items = values[name]
        if items is None:
            checked[name] = None
            continue
        if (
            not isinstance(items, list)
            or len(items) > MAX_GLOBS
            or not all(isinstance(i, str) and 0 < len(i) <= MAX_GLOB_CHARS for i in items)
        ):
            raise InvalidRequest(
                f"'{name}' must be a list of at most {MAX_GLOBS} names", param=name
            )
        if name == "endpoints":
            unknown = sorted(set(items) - set(ENDPOINTS))
            if unknown:
                raise InvalidRequest(
                    f"unknown endpoint {', '.join(unknown)}; one of {', '.join(ENDPOINTS)}",
                    param=name,
                )
        checked[name] = list(dict.fromkeys(items))
    for name in LIMIT_FIELDS:
        if name not in values:
            continue
        limit = values[name]
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_LIMIT
        ):
            raise InvalidRequest(f"'{name}' must be a positive integer or null", param=name)
        checked[name] = limit
    if "expires_days" in values:
        days = values["expires_days"]
        if days is not None and (
            isinstance(days, bool)
            or not isinstance(days, int | float)
            or not 0 < days <= MAX_EXPIRES_DAYS
        ):
            raise InvalidRequest(
                f"'expires_days' must be a number of days from 0 to {MAX_EXPIRES_DAYS}",
                param="expires_days",
            )
        checked["expires_days"] = days
    if "admin" in values:
        if not isinstance(values["admin"], bool):
            raise InvalidRequest("'admin' must be true or false", param="admin")
        checked["admin"] = values["admin"]
    return checked


# -- the index the hot path reads ----------------------------------------------------------


class KeyIndex:
    """Every usable key by digest: the static tokens, then the active stored keys.

    A stored key named like a static token is left out (and logged): names are what
    records are owned by, so one name means one caller.
    """

    def __init__(self, static: Iterable[BearerToken], stored: Iterable[tuple[ApiKey, bytes]]):
        by_digest: dict[bytes, tuple[bytes, ApiKey]] = {}
        names = set()
        for token in static:
            digest = digest_of(token.value)
            by_digest[digest] = (digest, ApiKey(token.name, admin=token.admin, static=True))
            names.add(token.name)
        now = time.time()
        for key, digest in stored:
            if key.revoked_at is not None:
                continue
            if key.name in names:
                log.warning("API key %r is ignored: a static token has the same name", key.name)
                continue
            if key.expired(now):
                continue
            by_digest[digest] = (digest, key)
        self._by_digest = by_digest
        self.names = frozenset(key.name for _, key in by_digest.values())

    def find(self, digest: bytes) -> ApiKey | None:
        entry = self._by_digest.get(digest)
        # The dict matched by equality already; the digest is compared once more in
        # constant time, so nothing after the hash lookup depends on the secret.
        if entry is None or not hmac.compare_digest(entry[0], digest):
            return None
        return entry[1]

    def __len__(self) -> int:
        return len(self._by_digest)


# -- the database ----------------------------------------------------------------------------


class KeyDatabase:
    """The keys and the limiter's windows in SQLite; synchronous, one connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            sqlite.create_private(path)  # digests only, but still: the service user's alone
            self._db = sqlite.connect(path)
            self._db.row_factory = sqlite3.Row
            sqlite.use_wal(self._db)
            sqlite.migrate(self._db, MIGRATIONS)
        except PermissionError:
            raise DatabaseError(f"cannot open {path}; run as the gateway service user") from None
        except (sqlite3.Error, OSError) as exc:
            raise DatabaseError(f"cannot use the keys database {path}: {exc}") from None

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return sqlite.transaction(self._db)

    def close(self) -> None:
        self._db.close()

    def data_version(self) -> int:
        """Changes when another connection commits (the CLI, another gateway)."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    # -- keys ----------------------------------------------------------------------------

    def create(self, name: str, values: dict[str, Any]) -> tuple[ApiKey, str]:
        """A new key (replacing a revoked one of the same name); its secret, shown once.

        Raises ``KeyError`` when an active key has the name already.
        """
        check_name(name)
        values = check_scopes(values)
        secret = new_secret()
        now = time.time()
        days = values.get("expires_days")
        with self.transaction() as db:
            row = db.execute("SELECT revoked_at FROM keys WHERE name = ?", (name,)).fetchone()
            if row is not None and row["revoked_at"] is None:
                raise KeyError(name)
            db.execute("DELETE FROM keys WHERE name = ?", (name,))
            db.execute(
                "INSERT INTO keys (name, prefix, digest, is_admin, models, endpoints, tools,"
                " rpm, tpm, tokens_per_day, concurrency, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    secret[:SHOWN_PREFIX],
                    digest_of(secret).hex(),
                    int(bool(values.get("admin"))),
                    _list_column(values.get("models")),
                    _list_column(values.get("endpoints")),
                    _list_column(values.get("tools")),
                    values.get("rpm"),
                    values.get("tpm"),
                    values.get("tokens_per_day"),
                    values.get("concurrency"),
                    now,
                    now + days * 86400 if days else None,
                ),
            )
        key = self.get(name)
        assert key is not None
        return key, secret

    def rotate(self, name: str) -> str | None:
        """A new secret for an active key; the old one stops working at once."""
        secret = new_secret()
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE keys SET prefix = ?, digest = ?, rotated_at = ?"
                " WHERE name = ? AND revoked_at IS NULL",
                (secret[:SHOWN_PREFIX], digest_of(secret).hex(), time.time(), name),
            )
            if cursor.rowcount == 0:
                return None
        return secret

    def revoke(self, name: str) -> bool:
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (time.time(), name),
            )
            return cursor.rowcount > 0

    def update(self, name: str, values: dict[str, Any]) -> ApiKey | None:
        """Change an active key's scopes, limits or admin flag (absent fields stay)."""
        values = check_scopes(values)
        columns: dict[str, Any] = {}
        for list_name in ("models", "endpoints", "tools"):
            if list_name in values:
                columns[list_name] = _list_column(values[list_name])
        for limit in LIMIT_FIELDS:
            if limit in values:
                columns[limit] = values[limit]
        if "admin" in values:
            columns["is_admin"] = int(values["admin"])
        if "expires_days" in values:
            days = values["expires_days"]
            columns["expires_at"] = time.time() + days * 86400 if days else None
        with self.transaction() as db:
            row = db.execute(
                "SELECT 1 FROM keys WHERE name = ? AND revoked_at IS NULL", (name,)
            ).fetchone()
            if row is None:
                return None
            for column, value in columns.items():  # column names come from the lists above
                db.execute(f"UPDATE keys SET {column} = ? WHERE name = ?", (value, name))  # noqa: S608
        return self.get(name)

    def get(self, name: str) -> ApiKey | None:
        row = self._db.execute("SELECT * FROM keys WHERE name = ?", (name,)).fetchone()
        return _key(row) if row else None

    def list_keys(self) -> list[ApiKey]:
        return [_key(row) for row in self._db.execute("SELECT * FROM keys ORDER BY name")]

    def stored(self) -> list[tuple[ApiKey, bytes]]:
        """Every key with its digest, for the index."""
        return [
            (_key(row), bytes.fromhex(row["digest"]))
            for row in self._db.execute("SELECT * FROM keys")
        ]

    # -- the limiter's windows ----------------------------------------------------------

    def load_windows(self) -> dict[str, Any]:
        windows = {}
        for row in self._db.execute("SELECT name, state FROM limit_windows"):
            try:
                windows[row["name"]] = json.loads(row["state"])
            except ValueError:
                continue
        return windows

    def save_windows(self, windows: dict[str, Any]) -> None:
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO limit_windows (name, state, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET state = excluded.state,"
                " updated_at = excluded.updated_at",
                [(name, json.dumps(state), now) for name, state in windows.items()],
            )


def _list_column(items: list[str] | None) -> str | None:
    return None if items is None else json.dumps(items)


def _key(row: sqlite3.Row) -> ApiKey:
    def listed(column: str) -> list[str] | None:
        text = row[column]
        return None if text is None else [str(item) for item in json.loads(text)]

    models, endpoints, tools = listed("models"), listed("endpoints"), listed("tools")
    return ApiKey(
        name=row["name"],
        prefix=row["prefix"],
        admin=bool(row["is_admin"]),
        models=tuple(models) if models is not None else None,
        endpoints=frozenset(endpoints) if endpoints is not None else None,
        tools=frozenset(tools) if tools is not None else None,
        rpm=row["rpm"],
        tpm=row["tpm"],
        tokens_per_day=row["tokens_per_day"],
        concurrency=row["concurrency"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )


def _glob_regex(glob: str) -> str:
    """A model glob as a regex: ``*`` any run and ``?`` any one character, neither crossing
    a ``/`` (so ``llama*`` never reaches ``llama-box/other-model``); the rest literal.

    Matched in time linear in the name (times the glob's length), whatever the glob: a
    plain ``[^/]*`` per star backtracks through every split of the name between the stars
    (``*-*-*-*-*-x`` against 256 dashes: minutes of the event loop). Each text between two
    stars instead takes its leftmost place after the previous one and keeps it (an atomic
    group): a later place never leaves more room for the rest, so no other is tried; only
    the last star, before the fixed-length tail, is a plain one.
    """
    pieces = [_glob_literal(piece) for piece in glob.split("*")]
    if len(pieces) == 1:
        return "(?:" + pieces[0] + ")"
    middle = "".join(f"(?>[^/]*?{piece})" for piece in pieces[1:-1] if piece)
    return "(?:" + pieces[0] + middle + "[^/]*" + pieces[-1] + ")"


def _glob_literal(text: str) -> str:
    """A glob's text between stars: ``?`` any one character but ``/``, the rest literal."""
    return "".join("[^/]" if char == "?" else re.escape(char) for char in text)
