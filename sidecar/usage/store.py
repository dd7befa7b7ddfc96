"""Where usage rows are kept: the ``UsageStore`` interface, and SQLite behind it.

``UsageStore`` is what the ledger needs from storage: write a batch, sum it up, prune
it. ``SqliteUsageStore`` keeps one file in the data directory (WAL, mode 0600): a table
with one row per request, and ``daily`` roll-ups (per day, key, UI user and model) kept
in the same transaction, so totals never need the per-request rows. Per-request rows
are pruned after ``retention_days``, roll-ups after ``rollup_days``. A store shared by
several gateways (a server database) would implement the same four methods.

All methods block: the ledger's writer thread writes and prunes; queries come from a
thread too (``asyncio.to_thread``), on a connection of their own.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from .. import sqlite
from ..errors import DatabaseError

# One row as the ledger queues it (the order of ``COLUMNS``).
Row = tuple[Any, ...]
COLUMNS = (
    "ts",
    "key",
    "ui_user",
    "endpoint",
    "backend",
    "model",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "estimated",
    "failed",
    "duration_s",
    "ttft_ms",
    "request_id",
)
# group_by name in the API -> column of the roll-up table (names from here only, never
# from a request, go into SQL).
DIMENSIONS = {"key": "key", "user": "ui_user", "model": "model", "day": "day"}

SCHEMA = (
    # 1: per-request rows and daily roll-ups
    """
    CREATE TABLE requests (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        day TEXT NOT NULL,
        key TEXT NOT NULL,
        ui_user TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        backend TEXT NOT NULL,
        model TEXT NOT NULL,
        status INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        estimated INTEGER NOT NULL,
        error INTEGER NOT NULL,
        duration_ms REAL NOT NULL,
        ttft_ms REAL,
        request_id TEXT NOT NULL
    );
    CREATE INDEX requests_ts ON requests(ts);
    CREATE TABLE daily (
        day TEXT NOT NULL,
        key TEXT NOT NULL,
        ui_user TEXT NOT NULL,
        model TEXT NOT NULL,
        requests INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        estimated INTEGER NOT NULL,
        PRIMARY KEY (day, key, ui_user, model)
    ) WITHOUT ROWID;
    """,
)
_UPSERT = """
    INSERT INTO daily (day, key, ui_user, model, requests, prompt_tokens, completion_tokens,
                       errors, estimated)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (day, key, ui_user, model) DO UPDATE SET
        requests = requests + excluded.requests,
        prompt_tokens = prompt_tokens + excluded.prompt_tokens,
        completion_tokens = completion_tokens + excluded.completion_tokens,
        errors = errors + excluded.errors,
        estimated = estimated + excluded.estimated
"""
_INSERT = """
    INSERT INTO requests (ts, day, key, ui_user, endpoint, backend, model, status,
                          prompt_tokens, completion_tokens, estimated, error, duration_ms,
                          ttft_ms, request_id)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


class UsageStore(Protocol):
    def open(self) -> None: ...

    def write(self, rows: Sequence[Row]) -> None:
        """Store a batch (all or nothing); raise ``sqlite3.Error``/``OSError`` if not."""

    def totals(
        self,
        since: str,
        until: str,
        group_by: Sequence[str],
        *,
        key: str | None = None,
        ui_user: str | None = None,
        after: float | None = None,
        limit: int = 10_000,
    ) -> list[dict[str, Any]]:
        """Summed rows per ``group_by`` (names of ``DIMENSIONS``), days ``since``..``until``
        inclusive (``YYYY-MM-DD``, UTC), only ``key``'s / ``ui_user``'s when given, only
        requests at or after the time ``after`` when given (a UI account's creation: the
        rows of an earlier account of that name are not its own); at most ``limit`` rows."""

    def prune(self, now: float, retention_days: int, rollup_days: int) -> int:
        """Drop what is past retention; the number of rows removed."""

    def close(self) -> None: ...


def day_of(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


class SqliteUsageStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._write: sqlite3.Connection | None = None
        self._read: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()

    def open(self) -> None:
        """Create or migrate the file; ``DatabaseError`` says which file and why not."""
        try:
            sqlite.create_private(self.path)  # who used what: the service user's only
            self._write = sqlite.connect(self.path)
            sqlite.use_wal(self._write)
            sqlite.migrate(self._write, SCHEMA)
            self._read = sqlite.connect(self.path)
        except (sqlite3.Error, OSError) as exc:
            self.close()
            raise DatabaseError(
                f"cannot open the usage ledger {self.path}: {exc}"
                " (GATEWAY_USAGE_ENABLED=false starts without it)"
            ) from None

    def write(self, rows: Sequence[Row]) -> None:
        db = self._connection(self._write)
        inserts = []
        rollups: dict[tuple[str, str, str, str], list[int]] = {}
        days: dict[int, str] = {}  # strftime once per day, not per row
        for row in rows:
            (ts, key, user, endpoint, backend, model, status, prompt, completion) = row[:9]
            estimated, failed, duration_s, ttft_ms, request_id = row[9:]
            day = days.get(int(ts // 86_400)) or days.setdefault(int(ts // 86_400), day_of(ts))
            error = int(failed or status >= 400)
            key, user, model = key or "", user or "", model or ""
            inserts.append(
                (
                    ts,
                    day,
                    key,
                    user,
                    endpoint,
                    backend or "",
                    model,
                    status,
                    prompt,
                    completion,
                    int(estimated),
                    error,
                    round(duration_s * 1000, 2),
                    ttft_ms,
                    request_id,
                )
            )
            total = rollups.setdefault((day, key, user, model), [0, 0, 0, 0, 0])
            total[0] += 1
            total[1] += prompt
            total[2] += completion
            total[3] += error
            total[4] += int(estimated)
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(_INSERT, inserts)
            db.executemany(_UPSERT, [(*group, *total) for group, total in rollups.items()])
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def totals(
        self,
        since: str,
        until: str,
        group_by: Sequence[str],
        *,
        key: str | None = None,
        ui_user: str | None = None,
        after: float | None = None,
        limit: int = 10_000,
    ) -> list[dict[str, Any]]:
        columns = [DIMENSIONS[name] for name in group_by]
        where = ["day >= ?", "day <= ?"]
        params: list[Any] = [since, until]
        if key is not None:
            where.append("key = ?")
            params.append(key)
        if ui_user is not None:
            where.append("ui_user = ?")
            params.append(ui_user)
        source = "daily"
        if after is not None:
            # The days after ``after``'s from the roll-ups; its own day from the requests
            # that day at or after it (while they are kept: ``retention_days``).
            next_day = (int(after // 86_400) + 1) * 86_400.0
            source = (
                "(SELECT day, key, ui_user, model, requests, prompt_tokens,"  # noqa: S608 (fixed text)
                " completion_tokens, errors, estimated FROM daily"
                f" WHERE day > ? AND {' AND '.join(where)}"
                " UNION ALL SELECT day, key, ui_user, model, 1, prompt_tokens,"
                " completion_tokens, error, estimated FROM requests"
                f" WHERE ts >= ? AND ts < ? AND {' AND '.join(where)})"
            )
            params = [day_of(after), *params, after, next_day, *params]
            where = []
        grouped = ", ".join(columns)
        sql = (
            f"SELECT {grouped + ', ' if grouped else ''}SUM(requests), SUM(prompt_tokens),"  # noqa: S608 (names from DIMENSIONS)
            f" SUM(completion_tokens), SUM(errors), SUM(estimated) FROM {source}"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + (f" GROUP BY {grouped} ORDER BY {grouped}" if grouped else "")
            + " LIMIT ?"
        )
        params.append(str(limit))
        with self._read_lock:
            found = self._connection(self._read).execute(sql, params).fetchall()
        rows = []
        for values in found:
            if values[len(columns)] is None:  # SUM over no rows (no group_by)
                continue
            row: dict[str, Any] = {}
            for name, value in zip(group_by, values, strict=False):
                row[name] = (value or None) if name in ("key", "user") else value
            counts = values[len(columns) :]
            row.update(
                requests=counts[0],
                prompt_tokens=counts[1],
                completion_tokens=counts[2],
                errors=counts[3],
                estimated=counts[4],
            )
            rows.append(row)
        return rows

    def prune(self, now: float, retention_days: int, rollup_days: int) -> int:
        db = self._connection(self._write)
        removed = db.execute(
            "DELETE FROM requests WHERE ts < ?", (now - retention_days * 86_400,)
        ).rowcount
        removed += db.execute(
            "DELETE FROM daily WHERE day < ?", (day_of(now - rollup_days * 86_400),)
        ).rowcount
        return int(removed)

    def rows(self, where: str = "", params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        """Per-request rows, oldest first (for tests and the command line)."""
        with self._read_lock:
            db = self._connection(self._read)
            cursor = db.execute(f"SELECT * FROM requests {where} ORDER BY id", tuple(params))  # noqa: S608
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]

    def close(self) -> None:
        for db in (self._write, self._read):
            if db is not None:
                db.close()
        self._write = self._read = None

    def _connection(self, db: sqlite3.Connection | None) -> sqlite3.Connection:
        if db is None:
            raise sqlite3.ProgrammingError("the usage store is not open")
        return db
