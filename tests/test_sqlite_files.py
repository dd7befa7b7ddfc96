"""Every SQLite file the gateway keeps is made the one way ``sidecar.sqlite`` makes it:
readable by the service user only (its -wal and -shm files too), in WAL mode, at the
store's last schema version; a migration that fails leaves the file at the version
before it, and nothing of the failed script behind. A store's database is used from a
thread of its own (``DatabaseThread``), one call at a time."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar import sqlite
from sidecar.auth.keys import MIGRATIONS as KEY_MIGRATIONS
from sidecar.auth.keys import KeyDatabase
from sidecar.responses.store import ResponseStore
from sidecar.settings import ResponsesSettings
from sidecar.usage.store import SCHEMA as USAGE_SCHEMA
from sidecar.usage.store import SqliteUsageStore
from sidecar.users.db import MIGRATIONS as USER_MIGRATIONS
from sidecar.users.db import Database


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_private_wal_at(path: Path, version: int) -> None:
    assert mode(path) == 0o600, oct(mode(path))
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():  # present while a connection is open
            assert mode(side) == 0o600, (suffix, oct(mode(side)))
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == version


async def test_every_store_makes_a_private_wal_file_at_its_last_version(
    tmp_path: Path,
) -> None:
    keys = KeyDatabase(tmp_path / "keys" / "keys.sqlite3")  # a directory of its own, too
    users = Database(tmp_path / "users.sqlite3")
    usage = SqliteUsageStore(tmp_path / "usage.sqlite3")
    usage.open()
    responses = ResponseStore(tmp_path / "responses.sqlite3", ResponsesSettings())
    await responses.open()
    try:
        assert_private_wal_at(keys.path, len(KEY_MIGRATIONS))
        assert_private_wal_at(users.path, len(USER_MIGRATIONS))
        assert_private_wal_at(usage.path, len(USAGE_SCHEMA))
        assert_private_wal_at(responses.path, 1)
    finally:
        keys.close()
        users.close()
        usage.close()
        await responses.close()
    # Opened again: nothing to migrate, and the stores still work from the same files.
    again = KeyDatabase(tmp_path / "keys" / "keys.sqlite3")
    again.close()
    assert_private_wal_at(tmp_path / "keys" / "keys.sqlite3", len(KEY_MIGRATIONS))


def test_a_failed_migration_leaves_the_file_at_the_version_before(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    sqlite.create_private(path)
    db = sqlite.connect(path)
    try:
        sqlite.migrate(db, ["CREATE TABLE a (x INTEGER)"])
        broken = [
            "CREATE TABLE a (x INTEGER)",
            "CREATE TABLE b (y INTEGER); INSERT INTO nowhere VALUES (1)",
        ]
        with pytest.raises(sqlite3.OperationalError):
            sqlite.migrate(db, broken)
        assert not db.in_transaction
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert tables == {"a"}  # table b went with the failed transaction
        sqlite.migrate(db, ["CREATE TABLE a (x INTEGER)", "CREATE TABLE b (y INTEGER)"])
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    finally:
        db.close()


class _OthersFirst(list[str]):
    """Migrations that, when first walked, let another connection run them all: the
    other process that opened the same new file between this one's version check and
    its first script."""

    def __init__(self, scripts: list[str], other: sqlite3.Connection) -> None:
        super().__init__(scripts)
        self.other: sqlite3.Connection | None = other

    def _other_goes(self) -> None:
        other, self.other = self.other, None
        if other is not None:
            sqlite.migrate(other, list.copy(self))

    def __iter__(self) -> Iterator[str]:
        self._other_goes()
        return super().__iter__()

    def __getitem__(self, index: Any) -> Any:
        self._other_goes()
        return super().__getitem__(index)


def test_two_connections_migrating_a_new_file_at_once_run_each_script_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shared.sqlite3"
    sqlite.create_private(path)
    first, second = sqlite.connect(path), sqlite.connect(path)
    scripts = [
        "CREATE TABLE a (x TEXT DEFAULT ';')",
        "CREATE TABLE b (y INTEGER); INSERT INTO a (x) VALUES ('once')",
    ]
    try:
        sqlite.migrate(first, _OthersFirst(scripts, second))
        assert first.execute("PRAGMA user_version").fetchone()[0] == 2
        assert first.execute("SELECT x FROM a").fetchall() == [("once",)]
    finally:
        first.close()
        second.close()


class _Unavailable(Exception):
    """What the store under test raises for a database error (its 503)."""


def _database_thread() -> sqlite.DatabaseThread[sqlite3.Connection]:
    return sqlite.DatabaseThread(
        "test-db", (sqlite3.OperationalError,), lambda exc: _Unavailable(str(exc))
    )


async def test_a_database_thread_runs_the_work_off_the_loop_in_order(tmp_path: Path) -> None:
    thread = _database_thread()
    await thread.open(lambda: sqlite.connect(tmp_path / "t.sqlite3"))
    loop_thread = threading.get_ident()
    seen: list[tuple[int, int]] = []

    def work(n: int) -> Any:
        def step(db: sqlite3.Connection) -> int:
            seen.append((n, threading.get_ident()))
            return int(db.execute("SELECT ?", (n,)).fetchone()[0])

        return step

    results = await asyncio.gather(*(thread.run(work(n)) for n in range(20)))
    assert results == list(range(20))
    assert [n for n, _ in seen] == list(range(20))  # one call at a time, as they came
    assert {ident for _, ident in seen} != {loop_thread} and len({i for _, i in seen}) == 1

    # Closing waits for the work queued before it, and ends the thread.
    order: list[str] = []

    def closing(db: sqlite3.Connection) -> None:
        order.append("closed")
        db.close()

    queued = [thread.run(lambda db, n=n: order.append(f"work {n}")) for n in range(3)]
    pending = asyncio.gather(*queued)
    await asyncio.sleep(0)  # one loop pass (not a wait): the three reach the thread first
    await thread.close(closing)
    await pending
    assert order == ["work 0", "work 1", "work 2", "closed"]
    assert not [t for t in threading.enumerate() if t.name.startswith("test-db")]


async def test_a_database_thread_maps_its_errors_and_refuses_work_once_closed(
    tmp_path: Path,
) -> None:
    thread = _database_thread()
    with pytest.raises(sqlite3.OperationalError):  # while opening: raised as it is
        await thread.open(lambda: sqlite.connect(tmp_path / "missing" / "dir" / "t.sqlite3"))
    await thread.open(lambda: sqlite.connect(tmp_path / "t.sqlite3"))
    with pytest.raises(_Unavailable, match="no such table"):
        await thread.run(lambda db: db.execute("SELECT * FROM nothing_here"))
    with pytest.raises(ZeroDivisionError):  # not a database error: not the store's 503
        await thread.run(lambda db: 1 // 0)
    assert await thread.run(lambda db: db.execute("SELECT 7").fetchone()[0]) == 7
    await thread.close(sqlite3.Connection.close)
    await thread.close(sqlite3.Connection.close)  # again: nothing happens
    with pytest.raises(RuntimeError, match="not open"):
        await thread.run(lambda db: db.execute("SELECT 1"))
