"""The users database: SQLite in WAL mode, schema versioned with migrations.

``Database`` is synchronous and owns one connection; the sidecar reaches it only through
``UserStore`` (one dedicated thread), and ``tools/manage_users.py`` uses it directly. A
transaction is committed before a method returns, so what a caller saw stored survives a
crash of the process.

There is always an enabled admin once there has been one: demoting, disabling or
deleting the last enabled admin is refused (``LastAdmin``) inside the same write
transaction that would make the change, so the UI, the API and the command-line tool
all get the rule, and two of them acting at once cannot both remove "the other" admin.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import sqlite
from ..errors import DatabaseError, DuplicateUser, LastAdmin, ReservedUser

MIGRATIONS: tuple[str, ...] = (
    # 1: accounts, sessions, settings, conversations, messages, login throttling
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE COLLATE NOCASE,
        password_hash TEXT NOT NULL,
        is_admin INTEGER NOT NULL DEFAULT 0,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE TABLE sessions (
        id_hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        csrf TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_seen_at REAL NOT NULL
    );
    CREATE INDEX sessions_user ON sessions(user_id);
    CREATE TABLE settings (
        user_id INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
        default_model TEXT,
        system_prompt TEXT NOT NULL DEFAULT '',
        temperature REAL
    );
    CREATE TABLE conversations (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        title TEXT NOT NULL DEFAULT '',
        model TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX conversations_user ON conversations(user_id, updated_at);
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX messages_conversation ON messages(conversation_id, id);
    CREATE TABLE login_failures (
        username TEXT PRIMARY KEY COLLATE NOCASE,
        failures INTEGER NOT NULL,
        locked_until REAL NOT NULL DEFAULT 0
    );
    """,
    # 2: failure rows are pruned by age and capped (record_failure), so they carry a time
    """
    ALTER TABLE login_failures ADD COLUMN last_failure_at REAL NOT NULL DEFAULT 0;
    CREATE INDEX login_failures_age ON login_failures(last_failure_at);
    """,
    # 3: a reply cut short by its reader is marked; generated images and songs are kept
    """
    ALTER TABLE messages ADD COLUMN stopped INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE media (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        prompt TEXT NOT NULL,
        file TEXT NOT NULL,
        details TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL
    );
    CREATE INDEX media_user ON media(user_id, kind, id);
    CREATE INDEX media_file ON media(file);
    """,
)
MAX_MEDIA_LISTED = 200  # the newest items a history page shows
MAX_MEDIA_KEPT = 500  # per user and kind; past it the oldest are forgotten
LOCAL_USER = "local"  # owns the history when accounts are off


@dataclass(frozen=True)
class User:
    id: int
    username: str
    is_admin: bool
    disabled: bool
    created_at: float

    def public(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "is_admin": self.is_admin,
            "disabled": self.disabled,
            "created_at": self.created_at,
        }


class Database:
    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        self._depth = 0  # transaction() nesting (one thread uses the connection at a time)
        if not create and not path.exists():
            raise DatabaseError(
                f"no users database at {path} (start the gateway once, or check USER_DB_PATH)"
            )
        try:
            if create:  # password hashes and conversations: the service user's only
                sqlite.create_private(path)
            self._db = sqlite.connect(path)
        except PermissionError:
            raise DatabaseError(f"cannot create {path}; run as the gateway service user") from None
        except (sqlite3.Error, OSError) as exc:
            raise DatabaseError(
                f"cannot open {path}: {exc}; run as the gateway service user"
            ) from None
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA foreign_keys = ON")
        self._migrate()

    def _migrate(self) -> None:
        try:
            sqlite.use_wal(self._db)
            sqlite.migrate(self._db, MIGRATIONS)
        except sqlite3.OperationalError as exc:
            raise _explained(exc, self.path) from None
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(f"{self.path} is not a usable users database: {exc}") from None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction; one opened inside another joins it (the outermost commits)."""
        if self._depth:
            self._depth += 1
            try:
                yield self._db
            finally:
                self._depth -= 1
            return
        self._depth = 1
        try:
            with sqlite.transaction(self._db) as db:
                yield db
        except sqlite3.OperationalError as exc:
            raise _explained(exc, self.path) from None
        finally:
            self._depth = 0

    def close(self) -> None:
        self._db.close()

    # -- users --------------------------------------------------------------------------

    def create_user(self, username: str, password_hash: str, is_admin: bool = False) -> User:
        _refuse_reserved(username)
        try:
            with self.transaction() as db:
                cursor = db.execute(
                    "INSERT INTO users (username, password_hash, is_admin, created_at)"
                    " VALUES (?, ?, ?, ?)",
                    (username, password_hash, int(is_admin), time.time()),
                )
        except sqlite3.IntegrityError:
            raise DuplicateUser(f"a user named {username!r} already exists") from None
        user = self.user_by_id(int(cursor.lastrowid or 0))
        assert user is not None
        return user

    def user_by_name(self, username: str) -> tuple[User, str] | None:
        row = self._db.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        return (_user(row), row["password_hash"]) if row else None

    def user_by_id(self, user_id: int) -> User | None:
        row = self._db.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
        return _user(row) if row else None

    def users(self) -> list[User]:
        rows = self._db.execute(
            "SELECT * FROM users WHERE username != ? ORDER BY username", (LOCAL_USER,)
        )
        return [_user(row) for row in rows]

    def local_user(self) -> User:
        """The owner of history when accounts are off (cannot log in: no usable hash)."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO users (username, password_hash, created_at)"
                " VALUES (?, '!', ?)",
                (LOCAL_USER, time.time()),
            )
        found = self.user_by_name(LOCAL_USER)
        assert found is not None
        return found[0]

    def update_user(
        self,
        username: str,
        *,
        password_hash: str | None = None,
        disabled: bool | None = None,
        is_admin: bool | None = None,
    ) -> User | None:
        """Change a user; a new password or a disable also ends all their sessions.

        The local user is refused (``ReservedUser``): it must never become an account
        that someone could log in to.
        """
        _refuse_reserved(username)
        with self.transaction() as db:
            row = _admin_row(db, username)
            if row is None:
                return None
            stays_admin = (row["is_admin"] if is_admin is None else is_admin) and not (
                row["disabled"] if disabled is None else disabled
            )
            if not stays_admin:
                _refuse_last_admin(db, row)
            if password_hash is not None:
                db.execute(
                    "UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, row["id"])
                )
            if disabled is not None:
                db.execute("UPDATE users SET disabled = ? WHERE id = ?", (int(disabled), row["id"]))
            if is_admin is not None:
                db.execute("UPDATE users SET is_admin = ? WHERE id = ?", (int(is_admin), row["id"]))
            if password_hash is not None or disabled or is_admin is not None:
                db.execute("DELETE FROM sessions WHERE user_id = ?", (row["id"],))
            if password_hash is not None:
                db.execute("DELETE FROM login_failures WHERE username = ?", (username,))
        return self.user_by_id(row["id"])

    def delete_user(self, username: str) -> bool:
        """Remove the user with their sessions, settings and conversations."""
        _refuse_reserved(username)
        with self.transaction() as db:
            row = _admin_row(db, username)
            if row is None:
                return False
            _refuse_last_admin(db, row)
            return db.execute("DELETE FROM users WHERE id = ?", (row["id"],)).rowcount > 0

    def is_last_admin(self, username: str) -> bool:
        """Whether ``username`` is the only enabled admin (for asking before acting)."""
        row = _admin_row(self._db, username)
        return row is not None and _only_enabled_admin(self._db, row)

    # -- sessions -----------------------------------------------------------------------

    def create_session(self, id_hash: str, user_id: int, csrf: str) -> None:
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO sessions (id_hash, user_id, csrf, created_at, last_seen_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (id_hash, user_id, csrf, now, now),
            )

    def session(self, id_hash: str, idle_s: float, max_s: float) -> tuple[User, str] | None:
        """The session's user and CSRF token, if it is live; touching it keeps it alive."""
        now = time.time()
        row = self._db.execute(
            "SELECT s.csrf, s.created_at, s.last_seen_at, u.* FROM sessions s"
            " JOIN users u ON u.id = s.user_id WHERE s.id_hash = ?",
            (id_hash,),
        ).fetchone()
        if row is None:
            return None
        expired = now - row["last_seen_at"] > idle_s or now - row["created_at"] > max_s
        if expired or row["disabled"]:
            self.delete_session(id_hash)
            return None
        if now - row["last_seen_at"] > 60:  # write at most once a minute per session
            with self.transaction() as db:
                db.execute("UPDATE sessions SET last_seen_at = ? WHERE id_hash = ?", (now, id_hash))
        return _user(row), row["csrf"]

    def delete_session(self, id_hash: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))

    # -- login throttling ---------------------------------------------------------------

    def locked_until(self, username: str) -> float:
        row = self._db.execute(
            "SELECT locked_until FROM login_failures WHERE username = ?", (username,)
        ).fetchone()
        return float(row["locked_until"]) if row else 0.0

    def record_failure(
        self,
        username: str,
        free_attempts: int,
        base_s: float,
        max_s: float,
        *,
        max_rows: int = 10_000,
        forget_s: float = 24 * 3600.0,
    ) -> float:
        """Count a failed login; returns when the account unlocks (0 if it does not lock).

        Names that are no account are counted too (or a lock would tell them apart), so
        the table is bounded: a row not locked and without a failure for ``forget_s`` is
        dropped, and past ``max_rows`` rows the least recently failed go first (by age
        alone, so which rows survive says nothing about which names exist).
        """
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "DELETE FROM login_failures WHERE last_failure_at < ? AND locked_until < ?",
                (now - forget_s, now),
            )
            row = db.execute(
                "SELECT failures FROM login_failures WHERE username = ?", (username,)
            ).fetchone()
            failures = (row["failures"] if row else 0) + 1
            locked = 0.0
            if failures >= free_attempts:
                # capped exponent: a huge count must not overflow the float
                locked = now + min(max_s, base_s * 2 ** min(failures - free_attempts, 32))
            db.execute(
                "INSERT INTO login_failures (username, failures, locked_until, last_failure_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(username) DO UPDATE SET failures = ?,"
                " locked_until = ?, last_failure_at = ?",
                (username, failures, locked, now, failures, locked, now),
            )
            if row is None:
                (count,) = db.execute("SELECT count(*) FROM login_failures").fetchone()
                if count > max_rows:
                    db.execute(
                        "DELETE FROM login_failures WHERE rowid IN (SELECT rowid FROM"
                        " login_failures WHERE username != ? ORDER BY last_failure_at LIMIT ?)",
                        (username, count - max_rows),
                    )
        return locked

    def failure_rows(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM login_failures").fetchone()[0])

    def clear_failures(self, username: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM login_failures WHERE username = ?", (username,))

    # -- settings -----------------------------------------------------------------------

    def settings(self, user_id: int) -> dict[str, Any]:
        row = self._db.execute("SELECT * FROM settings WHERE user_id = ?", (user_id,)).fetchone()
        if row is None:
            return {"default_model": None, "system_prompt": "", "temperature": None}
        return {
            "default_model": row["default_model"],
            "system_prompt": row["system_prompt"],
            "temperature": row["temperature"],
        }

    def save_settings(self, user_id: int, values: dict[str, Any]) -> dict[str, Any]:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO settings (user_id, default_model, system_prompt, temperature)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(user_id) DO UPDATE SET"
                " default_model = excluded.default_model, system_prompt = excluded.system_prompt,"
                " temperature = excluded.temperature",
                (user_id, values["default_model"], values["system_prompt"], values["temperature"]),
            )
        return self.settings(user_id)

    # -- conversations and messages ------------------------------------------------------

    def conversations(self, user_id: int) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT * FROM conversations WHERE user_id = ? ORDER BY updated_at DESC, id DESC",
            (user_id,),
        )
        return [_conversation(row) for row in rows]

    def conversation(self, user_id: int, conversation_id: int) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT * FROM conversations WHERE id = ? AND user_id = ?", (conversation_id, user_id)
        ).fetchone()
        return _conversation(row) if row else None

    def create_conversation(self, user_id: int, title: str, model: str | None) -> dict[str, Any]:
        now = time.time()
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO conversations (user_id, title, model, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (user_id, title, model, now, now),
            )
        found = self.conversation(user_id, int(cursor.lastrowid or 0))
        assert found is not None
        return found

    def update_conversation(
        self, user_id: int, conversation_id: int, fields: dict[str, Any]
    ) -> dict[str, Any] | None:
        with self.transaction() as db:
            for column in ("title", "model"):
                if column in fields:
                    db.execute(
                        f"UPDATE conversations SET {column} = ?, updated_at = ?"  # noqa: S608
                        " WHERE id = ? AND user_id = ?",
                        (fields[column], time.time(), conversation_id, user_id),
                    )
        return self.conversation(user_id, conversation_id)

    def delete_conversation(self, user_id: int, conversation_id: int) -> bool:
        with self.transaction() as db:
            cursor = db.execute(
                "DELETE FROM conversations WHERE id = ? AND user_id = ?", (conversation_id, user_id)
            )
            return cursor.rowcount > 0

    def messages(self, conversation_id: int) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT id, role, content, created_at, stopped FROM messages"
            " WHERE conversation_id = ? ORDER BY id",
            (conversation_id,),
        )
        return [{**dict(row), "stopped": bool(row["stopped"])} for row in rows]

    def truncate_messages(self, conversation_id: int, from_id: int) -> int:
        """Delete the message ``from_id`` and every later one (edit, regenerate)."""
        with self.transaction() as db:
            cursor = db.execute(
                "DELETE FROM messages WHERE conversation_id = ? AND id >= ?",
                (conversation_id, from_id),
            )
            return cursor.rowcount

    def add_message(
        self, conversation_id: int, role: str, content: str, *, stopped: bool = False
    ) -> int:
        """Store one message; 0 (nothing stored) when the conversation is gone (deleted,
        or its user was, while a reply was being written)."""
        now = time.time()
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO messages (conversation_id, role, content, created_at, stopped)"
                " SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM conversations WHERE id = ?)",
                (conversation_id, role, content, now, int(stopped), conversation_id),
            )
            if cursor.rowcount < 1:
                return 0
            db.execute(
                "UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation_id)
            )
        return int(cursor.lastrowid or 0)

    def conversation_count(self, user_id: int) -> int:
        (count,) = self._db.execute(
            "SELECT count(*) FROM conversations WHERE user_id = ?", (user_id,)
        ).fetchone()
        return int(count)

    def conversation_chars(self, conversation_id: int) -> int:
        """The characters of text the conversation's messages hold."""
        (chars,) = self._db.execute(
            "SELECT coalesce(sum(length(content)), 0) FROM messages WHERE conversation_id = ?",
            (conversation_id,),
        ).fetchone()
        return int(chars)

    # -- generated images and songs ------------------------------------------------------

    def add_media(
        self,
        user_id: int,
        kind: str,
        prompt: str,
        file: str,
        details: dict[str, Any],
        *,
        keep: int = MAX_MEDIA_KEPT,
    ) -> int:
        """Keep one generated item; past ``keep`` of this kind the user's oldest go."""
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO media (user_id, kind, prompt, file, details, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (user_id, kind, prompt, file, json.dumps(details), time.time()),
            )
            db.execute(
                "DELETE FROM media WHERE user_id = ? AND kind = ? AND id NOT IN"
                " (SELECT id FROM media WHERE user_id = ? AND kind = ? ORDER BY id DESC LIMIT ?)",
                (user_id, kind, user_id, kind, keep),
            )
        return int(cursor.lastrowid or 0)

    def media(self, user_id: int, kind: str, limit: int = MAX_MEDIA_LISTED) -> list[dict[str, Any]]:
        """The user's newest items of one kind, newest first."""
        rows = self._db.execute(
            "SELECT id, kind, prompt, file, details, created_at FROM media"
            " WHERE user_id = ? AND kind = ? ORDER BY id DESC LIMIT ?",
            (user_id, kind, limit),
        )
        return [{**dict(row), "details": json.loads(row["details"])} for row in rows]

    def delete_media(self, user_id: int, media_id: int) -> tuple[str, str, bool] | None:
        """Forget one item: its kind, its file and whether any item still refers to it."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT kind, file FROM media WHERE id = ? AND user_id = ?", (media_id, user_id)
            ).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM media WHERE id = ?", (media_id,))
            (left,) = db.execute(
                "SELECT count(*) FROM media WHERE file = ? AND kind = ?", (row["file"], row["kind"])
            ).fetchone()
        return row["kind"], row["file"], left > 0


def _refuse_reserved(username: str) -> None:
    if username.casefold() == LOCAL_USER:
        raise ReservedUser(LOCAL_USER)


def _admin_row(db: sqlite3.Connection, username: str) -> sqlite3.Row | None:
    """What the last-admin checks need of ``username``'s account, or None."""
    row: sqlite3.Row | None = db.execute(
        "SELECT id, username, is_admin, disabled FROM users WHERE username = ?", (username,)
    ).fetchone()
    return row


def _only_enabled_admin(db: sqlite3.Connection, row: sqlite3.Row) -> bool:
    if not row["is_admin"] or row["disabled"]:
        return False
    (others,) = db.execute(
        "SELECT count(*) FROM users WHERE is_admin = 1 AND disabled = 0 AND id != ?",
        (row["id"],),
    ).fetchone()
    return int(others) == 0


def _refuse_last_admin(db: sqlite3.Connection, row: sqlite3.Row) -> None:
    """Inside the write transaction: the change to ``row`` must leave an enabled admin."""
    if _only_enabled_admin(db, row):
        raise LastAdmin(row["username"])


def _user(row: sqlite3.Row) -> User:
    return User(
        id=row["id"],
        username=row["username"],
        is_admin=bool(row["is_admin"]),
        disabled=bool(row["disabled"]),
        created_at=row["created_at"],
    )


def _conversation(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "title": row["title"],
        "model": row["model"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def _explained(exc: sqlite3.OperationalError, path: Path) -> DatabaseError:
    message = str(exc)
    if "readonly" in message or "read-only" in message:
        return DatabaseError(f"cannot write {path}: read-only; run as the gateway service user")
    if "unable to open" in message:
        return DatabaseError(f"cannot open {path}; run as the gateway service user")
    return DatabaseError(f"users database {path}: {message}")
