"""Stored Responses: one SQLite table, one row per response, owned by a token name.

A row holds the Response object and the conversation it continued (the items before its
input, then its input), so ``previous_response_id`` rebuilds the whole conversation from
one row, whatever happened to older rows since. A row is found only by its owner: another
token's id looks exactly like an unknown one.

Bounds: a record is at most ``max_record_bytes`` (a larger one is not stored, and the
Response says ``"store": false``); all records together at most ``max_total_bytes``
(past it the oldest rows are deleted, whoever owns them); rows older than
``retention_days`` are pruned by a background task (``prune_forever``), and a read never
returns one. ``retention_days == 0`` stores nothing.

Responses a backend with native support made are kept by that backend, but their ids are
recorded here with their owner (no content: ``passed_through``, at most
``MAX_PASSED_THROUGH`` rows, pruned with the same retention), so only that token can
continue them with ``previous_response_id``.

Every call runs on one dedicated thread that owns the connection, so queries never
block the event loop and never race. A failed write or read (disk full, read-only, I/O
error) is a 503 ``storage_unavailable`` reported to the storage monitor, never a 500;
the message names no path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .. import sqlite
from ..errors import StorageUnavailable
from ..settings import ResponsesSettings
from ..storage import StorageMonitor, record_bytes, store_unavailable

T = TypeVar("T")
log = logging.getLogger("gateway.responses")
_DAY_S = 86_400.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL,
    size INTEGER NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_age ON responses(created_at);
CREATE TABLE IF NOT EXISTS passed_through (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS passed_through_age ON passed_through(created_at);
"""
# Ids of responses a native backend made (it keeps them; one upstream credential serves
# every token): at most this many, the oldest forgotten first.
MAX_PASSED_THROUGH = 100_000


class StoredResponse:
    """A stored row: its record (``response``, ``context``, ``input``) and size in bytes."""

    __slots__ = ("record", "size")

    def __init__(self, record: dict[str, Any], size: int) -> None:
        self.record = record
        self.size = size

    @property
    def response(self) -> dict[str, Any]:
        response: dict[str, Any] = self.record["response"]
        return response

    def conversation(self) -> list[dict[str, Any]]:
        """Every item up to and including this response's output, for the next turn."""
        return [*self.record["context"], *self.record["input"], *self.response["output"]]


class ResponseStore:
    def __init__(
        self, path: Path, settings: ResponsesSettings, storage: StorageMonitor | None = None
    ) -> None:
        self.path = path
        self.settings = settings
        self.storage = storage
        self._thread: sqlite.DatabaseThread[sqlite3.Connection] = sqlite.DatabaseThread(
            "responses-db", (sqlite3.Error, OSError), self._unavailable
        )
        self._total = 0
        self._passed = 0

    @property
    def enabled(self) -> bool:
        return self.settings.retention_days > 0

    @property
    def retention_s(self) -> float:
        return self.settings.retention_days * _DAY_S

    async def open(self) -> None:
        """Create or open the database (a failure stops start-up, as the users one does)."""
        if self.enabled:
            await self._thread.open(self._open)

    async def close(self) -> None:
        """Close the connection and the thread (again: nothing happens)."""
        await self._thread.close(sqlite3.Connection.close)

    async def put(
        self, owner: str, response_id: str, created_at: float, record: dict[str, Any]
    ) -> bool:
        """Store ``record``; False when it is larger than a record may be."""
        if not self.enabled:
            return False
        return await self._run(lambda db: self._put(db, owner, response_id, created_at, record))

    async def get(self, owner: str, response_id: str) -> StoredResponse | None:
        if not self.enabled:
            return None
        return await self._run(lambda db: self._get(db, owner, response_id))

    async def delete(self, owner: str, response_id: str) -> bool:
        if not self.enabled:
            return False
        return await self._run(lambda db: self._delete(db, owner, response_id))

    async def own(self, owner: str, response_id: str) -> None:
        """Record that a native backend's ``response_id`` belongs to ``owner``."""
        if self.enabled:
            await self._run(lambda db: self._own(db, owner, response_id))

    async def owns(self, owner: str, response_id: str) -> bool:
        """Whether ``owner`` made the native backend's ``response_id`` (within retention)."""
        if not self.enabled:
            return False
        return await self._run(lambda db: self._owns(db, owner, response_id))

    async def prune(self) -> int:
        """Delete the rows past the retention; how many went."""
        if not self.enabled:
            return 0
        return await self._run(self._prune)

    async def prune_forever(self) -> None:
        interval = min(3600.0, max(1.0, self.retention_s / 4))
        while True:
            try:
                removed = await self.prune()
            except StorageUnavailable:
                pass  # reported to the storage monitor already
            else:
                if removed:
                    log.info("pruned %d stored responses older than the retention", removed)
            await asyncio.sleep(interval)

    # -- on the database thread ------------------------------------------------------------

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._thread.run(work)

    def _unavailable(self, exc: Exception) -> StorageUnavailable:
        message = (
            "The stored responses are not available right now (the gateway's storage is"
            " full, read-only or busy); try again later, or send store=false"
        )
        return store_unavailable(self.storage, exc, "responses store", message)

    def _open(self) -> sqlite3.Connection:
        sqlite.create_private(self.path)  # conversations: the service user's only
        db = sqlite.connect(self.path)
        try:
            sqlite.use_wal(db)
            sqlite.migrate(db, (_SCHEMA,))
            (total,) = db.execute("SELECT coalesce(sum(size), 0) FROM responses").fetchone()
            (passed,) = db.execute("SELECT count(*) FROM passed_through").fetchone()
        except BaseException:
            db.close()
            raise
        self._total = int(total)
        self._passed = int(passed)
        return db

    def _put(
        self,
        db: sqlite3.Connection,
        owner: str,
        response_id: str,
        created_at: float,
        record: dict[str, Any],
    ) -> bool:
        data = record_bytes(record)
        if len(data) > self.settings.max_record_bytes:
            return False
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT OR REPLACE INTO responses (id, owner, created_at, size, record)"
                " VALUES (?, ?, ?, ?, ?)",
                (response_id, owner, created_at, len(data), data),
            )
            excess = self._total + len(data) - self.settings.max_total_bytes
            freed = _delete_oldest(db, excess, response_id) if excess > 0 else 0
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._total += len(data) - freed
        return True

    def _get(self, db: sqlite3.Connection, owner: str, response_id: str) -> StoredResponse | None:
        row = db.execute(
            "SELECT record, size FROM responses WHERE id = ? AND owner = ? AND created_at >= ?",
            (response_id, owner, time.time() - self.retention_s),
        ).fetchone()
        if row is None:
            return None
        return StoredResponse(json.loads(row[0]), int(row[1]))

    def _delete(self, db: sqlite3.Connection, owner: str, response_id: str) -> bool:
        row = db.execute(
            "DELETE FROM responses WHERE id = ? AND owner = ? RETURNING size",
            (response_id, owner),
        ).fetchone()
        if row is None:
            return False
        self._total -= int(row[0])
        return True

    def _prune(self, db: sqlite3.Connection) -> int:
        oldest = time.time() - self.retention_s
        rows = db.execute(
            "DELETE FROM responses WHERE created_at < ? RETURNING size", (oldest,)
        ).fetchall()
        self._total -= sum(int(size) for (size,) in rows)
        passed = db.execute("DELETE FROM passed_through WHERE created_at < ?", (oldest,))
        self._passed -= max(0, passed.rowcount)
        return len(rows)

    def _own(self, db: sqlite3.Connection, owner: str, response_id: str) -> None:
        cursor = db.execute(
            "INSERT OR IGNORE INTO passed_through (id, owner, created_at) VALUES (?, ?, ?)",
            (response_id, owner, time.time()),
        )
        self._passed += max(0, cursor.rowcount)
        if self._passed > MAX_PASSED_THROUGH:
            cursor = db.execute(
                "DELETE FROM passed_through WHERE id IN (SELECT id FROM passed_through"
                " ORDER BY created_at LIMIT ?)",
                (self._passed - MAX_PASSED_THROUGH,),
            )
            self._passed -= max(0, cursor.rowcount)

    def _owns(self, db: sqlite3.Connection, owner: str, response_id: str) -> bool:
        row = db.execute(
            "SELECT 1 FROM passed_through WHERE id = ? AND owner = ? AND created_at >= ?",
            (response_id, owner, time.time() - self.retention_s),
        ).fetchone()
        return row is not None


def _delete_oldest(db: sqlite3.Connection, excess: int, keep: str) -> int:
    """Delete the oldest rows (not ``keep``) until ``excess`` bytes are freed; the bytes freed."""
    freed = 0
    while freed < excess:
        rows = db.execute(
            "SELECT id, size FROM responses WHERE id != ? ORDER BY created_at LIMIT 64", (keep,)
        ).fetchall()
        if not rows:
            break
        for row_id, size in rows:
            db.execute("DELETE FROM responses WHERE id = ?", (row_id,))
            freed += int(size)
            if freed >= excess:
                break
    return freed
