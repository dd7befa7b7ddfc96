"""The users database for the event loop: every call runs on one dedicated thread.

One thread owns the SQLite connection, so queries never block the loop and never race
each other; bcrypt runs on its own small pool (``throttle.PasswordChecks``), so a slow
hash holds up neither others' queries nor the default executor.

A login is refused, in this order and before anything is written or hashed: a name or
password over the length limits (``LoginRejected``); an address over its failures
(``LoginThrottled("address")``); too many checks at once (``"busy"``); an account locked
after repeated failures (``"account"``). Failure rows are capped and pruned by age
(``Database.record_failure``).

A query that fails because of the disk ("database or disk is full", read-only, I/O
error, locked) is a 503 ``storage_unavailable`` without the path or SQLite's text,
reported to the storage monitor, whose probe notices when writes work again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import sqlite3
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .. import sqlite
from ..errors import (
    DatabaseError,
    LastAdmin,
    LoginRejected,
    LoginThrottled,
    ReservedUser,
    StorageUnavailable,
)
from ..settings import LoginSettings
from ..storage import StorageMonitor, store_unavailable
from .db import LOCAL_USER, Database, User
from .passwords import DECOY_HASH, login_input_problem
from .throttle import AddressThrottle, PasswordChecks

T = TypeVar("T")
log = logging.getLogger("gateway.users")
FREE_ATTEMPTS = 5
LOCK_BASE_S = 30.0
LOCK_MAX_S = 900.0
FORGET_FAILURES_S = 24 * 3600.0  # an unlocked failure row older than this is dropped


@dataclass(frozen=True)
class Session:
    user: User
    csrf: str


class UserStore:
    def __init__(
        self,
        path: Path,
        idle_s: float,
        max_s: float,
        login: LoginSettings = LoginSettings(),  # noqa: B008 (frozen)
        storage: StorageMonitor | None = None,
    ) -> None:
        self.path = path
        self.storage = storage
        self.idle_s = idle_s
        self.max_s = max_s
        self.login_settings = login
        self.checks = PasswordChecks(login.hash_threads, login.max_checks)
        self.addresses = AddressThrottle(login.ip_failures, login.ip_window_s)
        self._thread: sqlite.DatabaseThread[Database] = sqlite.DatabaseThread(
            "users-db", (DatabaseError, sqlite3.OperationalError), self._unavailable
        )
        self._login_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def open(self) -> None:
        await self._thread.open(lambda: Database(self.path))

    async def close(self) -> None:
        await self._thread.close(Database.close)
        self.checks.close()

    async def run(self, work: Callable[[Database], T]) -> T:
        """Run ``work(database)`` on the database thread."""
        return await self._thread.run(work)

    def _unavailable(self, exc: Exception) -> StorageUnavailable:
        message = (
            "The users database is not available right now (the gateway's storage is full,"
            " read-only or busy); try again later"
        )
        return store_unavailable(self.storage, exc, "users database", message)

    # -- logging in and out -------------------------------------------------------------

    async def login(
        self, username: str, password: str, address: str = "unknown"
    ) -> tuple[str, Session] | None:
        """A new session for the right password; None for any failure (same timing).

        Raises ``LoginRejected`` or ``LoginThrottled`` before any write or hash (see the
        module docstring). Attempts on one account run one at a time, so parallel
        guesses cannot all pass the lock check before the first failure is counted; one
        that arrives while another is being checked is refused as busy.
        """
        problem = login_input_problem(username, password)
        if problem is not None:
            raise LoginRejected(*problem)
        ticket = self.addresses.admit(address)
        key = username.casefold()
        lock = self._login_locks.get(key)
        if lock is None:
            lock = self._login_locks[key] = asyncio.Lock()
        try:
            if lock.locked():
                # Another attempt on this account is being checked: refuse at once rather
                # than queue while holding one of the global check slots, so parallel
                # guesses at one name cannot crowd out everyone else's logins.
                raise LoginThrottled(1, "busy")
            async with lock:  # free (checked above): taken without waiting
                with self.checks.admit():
                    result = await self._login(username, password)
        except LoginThrottled as exc:
            if exc.reason == "busy":  # refused before any work: not the address's fault
                self.addresses.forgive(address, ticket)
            raise
        if result is not None:
            self.addresses.forgive(address, ticket)
        return result

    async def _login(self, username: str, password: str) -> tuple[str, Session] | None:
        locked = await self.run(lambda db: db.locked_until(username))
        if locked > time.time():
            raise LoginThrottled(int(locked - time.time()) + 1, "account")
        found = await self.run(lambda db: db.user_by_name(username))
        stored = found[1] if found else DECOY_HASH
        ok = await self.checks.verify(password, stored)
        if not ok or found is None or found[0].disabled:
            rows = self.login_settings.failure_rows
            await self.run(
                lambda db: db.record_failure(
                    username,
                    FREE_ATTEMPTS,
                    LOCK_BASE_S,
                    LOCK_MAX_S,
                    max_rows=rows,
                    forget_s=FORGET_FAILURES_S,
                )
            )
            return None
        user = found[0]
        session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        await self.run(lambda db: db.clear_failures(username))
        await self.run(lambda db: db.create_session(_digest(session_id), user.id, csrf))
        return session_id, Session(user, csrf)

    async def session(self, session_id: str) -> Session | None:
        found = await self.run(lambda db: db.session(_digest(session_id), self.idle_s, self.max_s))
        return Session(*found) if found else None

    async def logout(self, session_id: str) -> None:
        await self.run(lambda db: db.delete_session(_digest(session_id)))

    # -- accounts -----------------------------------------------------------------------

    async def create_user(self, username: str, password: str, is_admin: bool) -> User:
        _refuse_reserved(username)
        password_hash = await self.checks.hash(password)
        return await self.run(lambda db: db.create_user(username, password_hash, is_admin))

    async def update_user(self, username: str, **changes: Any) -> User | None:
        """Change an account; ``ReservedUser`` for the local user (it has no account),
        ``LastAdmin`` when it would leave no enabled admin (checked before any hash)."""
        _refuse_reserved(username)
        removes_admin = changes.get("is_admin") is False or changes.get("disabled") is True
        if removes_admin and await self.run(lambda db: db.is_last_admin(username)):
            raise LastAdmin(username)  # early; the database checks it again, atomically
        if changes.get("password") is not None:
            changes["password_hash"] = await self.checks.hash(changes["password"])
        changes.pop("password", None)
        return await self.run(lambda db: db.update_user(username, **changes))

    async def delete_user(self, username: str) -> bool:
        """Remove an account; ``LastAdmin`` when it is the last enabled admin."""
        _refuse_reserved(username)
        return await self.run(lambda db: db.delete_user(username))


def _refuse_reserved(username: str) -> None:
    """Before a hash is spent on it: the local user can never be given a password."""
    if username.casefold() == LOCAL_USER:
        raise ReservedUser(LOCAL_USER)


def _digest(session_id: str) -> str:
    """Sessions are stored by hash: a copy of the database does not log anyone in."""
    # The cookie's bytes as sent: aiohttp keeps bytes that are not UTF-8 as surrogates.
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).hexdigest()


def anonymous_csrf(secret: bytes) -> str:
    """The CSRF token for pages without a session (the login form, accounts off)."""
    return hmac.new(secret, b"anonymous-csrf", hashlib.sha256).hexdigest()
