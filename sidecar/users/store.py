"""The users database for the event loop: every call runs on one dedicated thread.

One thread owns the SQLite connection, so queries never block the loop and never race
each other; bcrypt runs on the default executor, so a slow hash does not hold up others'
queries. A query that fails because of the disk ("database or disk is full", read-only,
I/O error, locked) is a 503 ``storage_unavailable`` without the path or SQLite's text,
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import StorageUnavailable
from ..storage import RETRY_AFTER_S, StorageMonitor, error_kind
from .db import Database, DatabaseError, User
from .passwords import DECOY_HASH, hash_password, verify_password

T = TypeVar("T")
log = logging.getLogger("gateway.users")
FREE_ATTEMPTS = 5
LOCK_BASE_S = 30.0
LOCK_MAX_S = 900.0


@dataclass(frozen=True)
class Session:
    user: User
    csrf: str


class LoginThrottled(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__("too many failed logins")
        self.retry_after = retry_after


class UserStore:
    def __init__(
        self, path: Path, idle_s: float, max_s: float, storage: StorageMonitor | None = None
    ) -> None:
        self.path = path
        self.storage = storage
        self.idle_s = idle_s
        self.max_s = max_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="users-db")
        self._db: Database | None = None
        self._login_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def open(self) -> None:
        self._db = await self.run(lambda _: Database(self.path))

    async def close(self) -> None:
        if self._db is not None:
            await self.run(lambda db: db.close())
        self._executor.shutdown(wait=True)

    async def run(self, work: Callable[[Database], T]) -> T:
        """Run ``work(database)`` on the database thread."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, lambda: work(self._db))  # type: ignore[arg-type]
        except (DatabaseError, sqlite3.OperationalError) as exc:
            if self._db is None:  # opening at start-up: the caller says what to do
                raise
            raise self._unavailable(exc) from None

    def _unavailable(self, exc: Exception) -> StorageUnavailable:
        message = (
            "The users database is not available right now (the gateway's storage is full,"
            " read-only or busy); try again later"
        )
        kind = error_kind(exc)
        if self.storage is not None and kind != "database_busy":
            return self.storage.unavailable(exc, "users database", message)
        log.warning("users database unavailable (%s)", kind)
        return StorageUnavailable(message, retry_after=RETRY_AFTER_S)

    # -- logging in and out -------------------------------------------------------------

    async def login(self, username: str, password: str) -> tuple[str, Session] | None:
        """A new session for the right password; None for any failure (same timing).

        Attempts on one account run one at a time, so parallel guesses cannot all pass
        the lock check before the first failure is counted.
        """
        key = username.casefold()
        lock = self._login_locks.get(key)
        if lock is None:
            lock = self._login_locks[key] = asyncio.Lock()
        async with lock:
            return await self._login(username, password)

    async def _login(self, username: str, password: str) -> tuple[str, Session] | None:
        locked = await self.run(lambda db: db.locked_until(username))
        if locked > time.time():
            raise LoginThrottled(int(locked - time.time()) + 1)
        found = await self.run(lambda db: db.user_by_name(username))
        stored = found[1] if found else DECOY_HASH
        ok = await asyncio.to_thread(verify_password, password, stored)
        if not ok or found is None or found[0].disabled:
            await self.run(
                lambda db: db.record_failure(username, FREE_ATTEMPTS, LOCK_BASE_S, LOCK_MAX_S)
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
        password_hash = await asyncio.to_thread(hash_password, password)
        return await self.run(lambda db: db.create_user(username, password_hash, is_admin))

    async def update_user(self, username: str, **changes: Any) -> User | None:
        if changes.get("password") is not None:
            changes["password_hash"] = await asyncio.to_thread(hash_password, changes["password"])
        changes.pop("password", None)
        return await self.run(lambda db: db.update_user(username, **changes))


def _digest(session_id: str) -> str:
    """Sessions are stored by hash: a copy of the database does not log anyone in."""
    return hashlib.sha256(session_id.encode()).hexdigest()


def anonymous_csrf(secret: bytes) -> str:
    """The CSRF token for pages without a session (the login form, accounts off)."""
    return hmac.new(secret, b"anonymous-csrf", hashlib.sha256).hexdigest()
