"""The gateway's SQLite files, opened one way (keys, users, usage, stored responses).

- The file is made mode 0600 before SQLite opens it, so only the service user can read
  it; SQLite gives its ``-wal`` and ``-shm`` files the same mode.
- Connections are in autocommit mode (``isolation_level=None``: transactions are begun
  and committed by the store), usable from one thread at a time whichever it is, and
  wait up to 5 s for another connection's lock.
- Write-ahead logging with ``synchronous = NORMAL``: readers never wait for the writer,
  and a commit does not wait for the disk (a power cut loses at most the last commits,
  never the file).
- Migrations are numbered scripts; ``PRAGMA user_version`` says how many a file has had.
  Each runs in its own transaction together with its number, so a file is always at
  one version or the next, whoever else opens it at the same time.

Each store turns ``sqlite3.Error``/``OSError`` into its own ``DatabaseError`` message.
A store's database is used from a worker thread of its own (``DatabaseThread``), never
from the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Generic, TypeVar

BUSY_TIMEOUT_MS = 5000

D = TypeVar("D")
T = TypeVar("T")


def create_private(path: Path) -> None:
    """Make ``path`` (and its directory) unless it exists, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return
    with contextlib.suppress(FileExistsError):  # another process made it first
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    except BaseException:
        db.close()
        raise
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction (the lock taken at its start, so it never fails half-way for a
    lock), committed at the end, rolled back on any exception; inside one already open
    it joins it."""
    try:
        if not db.in_transaction:
            db.execute("BEGIN IMMEDIATE")
        yield db
        if db.in_transaction:
            db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def use_wal(db: sqlite3.Connection) -> None:
    """Write-ahead logging (set once per file: asked first, as setting it takes a lock)."""
    if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")


def migrate(db: sqlite3.Connection, scripts: Sequence[str]) -> None:
    """Run the scripts past the file's ``user_version``, each in a transaction of its own
    with its number. The version is read again once the write lock is held, so two
    processes opening a new file at once (the gateway and ``gateway keys``) run each
    script once between them."""
    if db.execute("PRAGMA user_version").fetchone()[0] >= len(scripts):
        return  # the usual open: nothing to do, no lock taken
    for number, script in enumerate(scripts, start=1):
        with transaction(db):
            if db.execute("PRAGMA user_version").fetchone()[0] < number:
                for statement in _statements(script):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")


def _statements(script: str) -> Iterator[str]:
    """The statements of ``script`` one by one (``executescript`` would commit the open
    transaction first). A ``;`` inside a string or a trigger's body does not end one:
    SQLite's own ``complete_statement`` says where they end."""
    buffer = ""
    for part in script.split(";"):
        buffer += part + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \t\r\n;"):
                yield buffer
            buffer = ""
    if buffer.strip(" \t\r\n;"):
        raise sqlite3.OperationalError(f"incomplete statement in a migration: {buffer[:60]!r}")


class DatabaseThread(Generic[D]):
    """A store's database, used from one worker thread of its own.

    SQLite calls block, so none runs on the event loop: ``open`` builds the database on
    the thread, ``run(work)`` runs ``work(database)`` there (one call at a time, in the
    order they came), ``close`` closes it there and ends the thread. An error of the
    kinds in ``errors`` that a ``run`` meets is raised as ``unavailable(exc)``, the
    store's 503; one while opening is raised as it is, for start-up to decide.
    """

    def __init__(
        self,
        name: str,
        errors: tuple[type[Exception], ...],
        unavailable: Callable[[Exception], Exception],
    ) -> None:
        self.name = name
        self._errors = errors
        self._unavailable = unavailable
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.database: D | None = None

    async def open(self, build: Callable[[], D]) -> None:
        loop = asyncio.get_running_loop()
        self.database = await loop.run_in_executor(self._executor, build)

    async def run(self, work: Callable[[D], T]) -> T:
        database = self.database
        if database is None:
            raise RuntimeError(f"{self.name}: the database is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work, database)
        except self._errors as exc:
            raise self._unavailable(exc) from None

    async def close(self, close: Callable[[D], object]) -> None:
        """Close the database (when open) and end the thread; again, nothing happens."""
        database, self.database = self.database, None
        if database is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, close, database)
        self._executor.shutdown(wait=True)
