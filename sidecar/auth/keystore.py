"""The keys database for the event loop, and the loop that keeps the gateway current.

``KeyStore`` is the interface the gateway uses (the admin UI's calls, the index's rows,
the limiter's windows); ``SqliteKeyStore`` implements it on ``keys.KeyDatabase`` with one
dedicated thread, so no query blocks the loop and none races another. A store shared by
several gateways would implement the same calls.

``KeyService.watch`` runs for the gateway's life, off every request's path:

- every ``poll_s`` (0.5 s) it asks SQLite's ``data_version``, which changes when another
  connection (``gateway keys …``, another process) commits; then it reads the keys and
  swaps a new immutable index into the ``TokenSet``. A revoked or rotated key stops
  working within a second. Changes the gateway makes itself (the admin UI) reload at once.
- every ``flush_s`` (1 s) it writes the limiter's changed windows, so a restart keeps
  the minute's and the day's counts. A write that fails (disk full) is reported to the
  storage monitor and tried again on the next tick; requests go on meanwhile.

A key's limit windows go with it: revoking a key or creating one (again) under a name
deletes that name's windows, in memory and in ``limit_windows``, so a new key never
inherits an old one's counts; the reload drops the windows of a key the command line
revoked or made anew, and the start deletes the stored windows of names without an
active key, or saved before their key was made.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..errors import DatabaseError, StorageUnavailable
from ..sqlite import DatabaseThread
from .bearer import TokenSet
from .keys import ApiKey, KeyDatabase
from .limits import Limiter

T = TypeVar("T")
log = logging.getLogger("gateway.keys")
POLL_S = 0.5
FLUSH_S = 1.0
RETRY_AFTER_S = 5
UNAVAILABLE = (
    "The keys database is not available right now (the gateway's storage is full,"
    " read-only or busy); try again later"
)
# Turns a failed query into the 503 to raise; the app passes the storage monitor's, which
# also marks the data directory unwritable until its probe works again.
OnFailure = Callable[[Exception], StorageUnavailable]


class KeyStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def version(self) -> int:
        """Changes whenever another writer changed the keys (or the windows)."""
        ...

    async def stored(self) -> list[tuple[ApiKey, bytes]]:
        """Every key with its digest."""
        ...

    async def list_keys(self) -> list[ApiKey]: ...

    async def create(self, name: str, values: dict[str, Any]) -> tuple[ApiKey, str]: ...

    async def update(self, name: str, values: dict[str, Any]) -> ApiKey | None: ...

    async def rotate(self, name: str) -> str | None: ...

    async def revoke(self, name: str) -> bool: ...

    async def load_windows(self) -> dict[str, Any]: ...

    async def save_windows(self, windows: dict[str, Any]) -> None: ...

    async def prune_windows(self) -> int:
        """Delete windows of names without an active key, or older than their key."""
        ...


class SqliteKeyStore:
    def __init__(self, path: Path, on_failure: OnFailure | None = None) -> None:
        self.path = path
        self.on_failure = on_failure
        self._thread: DatabaseThread[KeyDatabase] = DatabaseThread(
            "keys-db", (DatabaseError, sqlite3.OperationalError), self._unavailable
        )

    async def open(self) -> None:
        await self._thread.open(lambda: KeyDatabase(self.path))

    async def close(self) -> None:
        await self._thread.close(KeyDatabase.close)

    async def _run(self, work: Callable[[KeyDatabase], T]) -> T:
        return await self._thread.run(work)

    def _unavailable(self, exc: Exception) -> StorageUnavailable:
        if self.on_failure is not None:
            return self.on_failure(exc)
        return StorageUnavailable(UNAVAILABLE, retry_after=RETRY_AFTER_S)

    async def version(self) -> int:
        return await self._run(lambda db: db.data_version())

    async def stored(self) -> list[tuple[ApiKey, bytes]]:
        return await self._run(lambda db: db.stored())

    async def list_keys(self) -> list[ApiKey]:
        return await self._run(lambda db: db.list_keys())

    async def create(self, name: str, values: dict[str, Any]) -> tuple[ApiKey, str]:
        def create(db: KeyDatabase) -> tuple[ApiKey, str]:
            created = db.create(name, values)
            _delete_windows(db, name)
            return created

        return await self._run(create)

    async def update(self, name: str, values: dict[str, Any]) -> ApiKey | None:
        return await self._run(lambda db: db.update(name, values))

    async def rotate(self, name: str) -> str | None:
        return await self._run(lambda db: db.rotate(name))

    async def revoke(self, name: str) -> bool:
        def revoke(db: KeyDatabase) -> bool:
            revoked = db.revoke(name)
            if revoked:
                _delete_windows(db, name)
            return revoked

        return await self._run(revoke)

    async def load_windows(self) -> dict[str, Any]:
        return await self._run(lambda db: db.load_windows())

    async def save_windows(self, windows: dict[str, Any]) -> None:
        await self._run(lambda db: db.save_windows(windows))

    async def prune_windows(self) -> int:
        def prune(db: KeyDatabase) -> int:
            with db.transaction() as connection:
                cursor = connection.execute(
                    "DELETE FROM limit_windows WHERE NOT EXISTS (SELECT 1 FROM keys"
                    " WHERE keys.name = limit_windows.name AND keys.revoked_at IS NULL"
                    " AND keys.created_at <= limit_windows.updated_at)"
                )
                return max(0, cursor.rowcount)

        return await self._run(prune)


def _delete_windows(db: KeyDatabase, name: str) -> None:
    with db.transaction() as connection:
        connection.execute("DELETE FROM limit_windows WHERE name = ?", (name,))


class KeyService:
    """The store, the token set it keeps current, and the limiter it persists."""

    def __init__(
        self,
        store: KeyStore,
        tokens: TokenSet,
        limiter: Limiter,
        *,
        poll_s: float = POLL_S,
        flush_s: float = FLUSH_S,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.limiter = limiter
        self.poll_s = poll_s
        self.flush_s = flush_s
        self._version: int | None = None
        self._pending: dict[str, Any] = {}
        self._made: dict[str, float] = {}  # each active key's created_at, as last read

    async def start(self) -> None:
        await self.store.open()
        pruned = await self.store.prune_windows()
        if pruned:
            log.info("deleted the limit windows of %d revoked or replaced keys", pruned)
        self.limiter.restore(await self.store.load_windows())
        await self.reload()

    async def stop(self) -> None:
        try:
            await self.flush()
        except StorageUnavailable:
            log.warning("could not save the limit windows at shutdown")
        await self.store.close()

    async def reload(self) -> None:
        """Read every key and swap in a new index (the version first: a change made
        while reading is seen again by the next poll)."""
        self._version = await self.store.version()
        stored = await self.store.stored()
        made = {key.name: key.created_at for key, _ in stored if key.revoked_at is None}
        for name, created_at in self._made.items():
            if made.get(name) != created_at:  # revoked or made anew elsewhere
                self._forget(name)
        self._made = made
        self.tokens.use_keys(stored)

    def _forget(self, name: str) -> None:
        self.limiter.forget(name)
        self._pending.pop(name, None)

    async def flush(self) -> None:
        self._pending.update(self.limiter.windows())
        if not self._pending:
            return
        windows, self._pending = self._pending, {}
        try:
            await self.store.save_windows(windows)
        except StorageUnavailable:
            self._pending = {**windows, **self._pending}  # try again at the next tick
            raise

    async def watch(self) -> None:
        ticks_per_flush = max(1, round(self.flush_s / self.poll_s))
        tick = 0
        while True:
            await asyncio.sleep(self.poll_s)
            tick += 1
            try:
                if await self.store.version() != self._version:
                    await self.reload()
                if tick % ticks_per_flush == 0:
                    await self.flush()
            except StorageUnavailable:
                pass  # reported to the storage monitor; tried again at the next tick
            except Exception:  # the watcher must outlive anything one tick meets
                log.exception("keys: refreshing the keys or saving limits failed")

    # -- the admin UI's changes: applied to this gateway at once ------------------------

    async def create(self, name: str, values: dict[str, Any]) -> tuple[ApiKey, str]:
        if name not in self._made:  # revoked: before a flush could save it again, and after
            self._forget(name)
        created = await self.store.create(name, values)
        self._forget(name)
        await self.reload()
        return created

    async def update(self, name: str, values: dict[str, Any]) -> ApiKey | None:
        updated = await self.store.update(name, values)
        await self.reload()
        return updated

    async def rotate(self, name: str) -> str | None:
        secret = await self.store.rotate(name)
        await self.reload()
        return secret

    async def revoke(self, name: str) -> bool:
        revoked = await self.store.revoke(name)
        if revoked:
            self._forget(name)
        await self.reload()
        return revoked
