#!/usr/bin/env python3
"""Manage the browser UI's user accounts from a shell on the gateway host.

    manage_users.py [--db PATH] create USERNAME [--admin] [--password-stdin]
    manage_users.py [--db PATH] reset USERNAME [--password-stdin]
    manage_users.py [--db PATH] disable USERNAME
    manage_users.py [--db PATH] enable USERNAME
    manage_users.py [--db PATH] promote USERNAME
    manage_users.py [--db PATH] demote USERNAME
    manage_users.py [--db PATH] delete USERNAME [--yes]
    manage_users.py [--db PATH] list

Run it with the gateway's interpreter, as the gateway's service user (the owner of the
users database); with the systemd units in ``tools/systemd``::

    cd /opt/gateway && sudo -u gateway .venv/bin/python tools/manage_users.py \\
        --db /var/lib/gateway/users.sqlite3 list

The database is ``--db``, else ``$USER_DB_PATH``, else ``$GATEWAY_DATA_DIR/users.sqlite3``,
else ``./var/users.sqlite3`` (the gateway's own defaults). Only ``create`` makes a missing
database. A password is read from a hidden prompt, asked twice, or as one line on stdin
with ``--password-stdin``; it is never taken from the command line, where other users
could read it in the process list. A new password or a disable ends every session of
that user at once; ``delete`` also removes the user's conversations and settings.
``promote`` makes a user an admin, ``demote`` takes that away (ending their sessions).
The last enabled admin cannot be demoted, disabled or deleted: promote another first.

Exit status: 0 done; 1 the action failed (the reason is on stderr: unknown or duplicate
user, rejected password, the last enabled admin, missing or unwritable database);
2 bad usage.
"""

from __future__ import annotations

import argparse
import getpass
import importlib.util
import os
import pwd
import sqlite3
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

if importlib.util.find_spec("sidecar") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sidecar.errors import DatabaseError, DuplicateUser, LastAdmin, PasswordRejected
from sidecar.users.db import LOCAL_USER, Database, User
from sidecar.users.passwords import check_password_rules, hash_password

PROG = "manage_users.py"
SERVICE_USER_HINT = "run as the gateway service user"
USERNAME_MAX = 64  # the same rule as the admin page's POST /ui/api/admin/users
USERNAME_CHARACTERS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.@-"
)
DB_HELP = (
    "the users database (default: $USER_DB_PATH, else $GATEWAY_DATA_DIR/users.sqlite3, "
    "else ./var/users.sqlite3)"
)
STDIN_HELP = "read the password as one line from stdin instead of prompting"


class ToolError(Exception):
    """The action failed; the message is printed as one line and the exit status is 1."""


class UsageError(Exception):
    """The tool was invoked in a way it cannot work with; the exit status is 2."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unexpected = parser.parse_known_args(argv)
    if unexpected:
        # argparse would repeat them, and one may be a password typed where it must not be.
        parser.error(
            f"{len(unexpected)} unexpected argument(s), not repeated here in case one is a "
            "password; passwords are read from a hidden prompt or with --password-stdin"
        )
    try:
        args.command(database_path(args.db), args)
    except UsageError as exc:
        parser.error(str(exc))
    except ToolError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{PROG}: cancelled; nothing was changed", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        allow_abbrev=False,
        description=(
            "Create, reset, disable, enable, promote, demote, list and delete gateway UI accounts."
        ),
        epilog="Passwords are never taken from the command line.",
    )
    parser.add_argument("--db", type=Path, default=None, help=DB_HELP)
    # --db is also accepted after the command; SUPPRESS keeps a value given before it.
    db_after_command = argparse.ArgumentParser(add_help=False)
    db_after_command.add_argument("--db", type=Path, default=argparse.SUPPRESS, help=DB_HELP)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(
        name: str, run: Callable[[Path, argparse.Namespace], None], summary: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            parents=[db_after_command],
            allow_abbrev=False,
            help=summary,
            description=summary,
        )
        sub.set_defaults(command=run)
        if name != "list":
            sub.add_argument("username", metavar="USERNAME", help="the login name")
        return sub

    create = command("create", create_user, "add an account (creates the database if missing)")
    create.add_argument("--admin", action="store_true", help="may manage other accounts")
    create.add_argument("--password-stdin", action="store_true", help=STDIN_HELP)
    reset = command("reset", reset_password, "set a new password and end the user's sessions")
    reset.add_argument("--password-stdin", action="store_true", help=STDIN_HELP)
    command("disable", disable_user, "refuse the user's logins and end their sessions")
    command("enable", enable_user, "let a disabled user log in again")
    command("promote", promote_user, "make the user an admin (may manage accounts)")
    command("demote", demote_user, "take admin away from the user and end their sessions")
    command("list", list_users, "show every account")
    delete = command("delete", delete_user, "remove the user, their conversations and settings")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    return parser


def database_path(given: Path | None, environ: dict[str, str] | None = None) -> Path:
    """The database the gateway would use (``Settings.user_db_path``) unless ``--db`` says."""
    env = os.environ if environ is None else environ
    if given is None:
        if env.get("USER_DB_PATH"):
            given = Path(env["USER_DB_PATH"])
        else:
            given = Path(env.get("GATEWAY_DATA_DIR") or "var") / "users.sqlite3"
    return given.absolute()


# -- commands ---------------------------------------------------------------------------


def create_user(path: Path, args: argparse.Namespace) -> None:
    username = checked_new_username(args.username)
    is_new_file = not path.exists()
    if is_new_file:
        check_writable(path)
    else:
        with open_database(path) as db:
            refuse_duplicate(db, username)
    password_hash = new_password_hash(args.password_stdin)  # before a new file is made
    with open_database(path, create=True) as db:
        try:
            db.create_user(username, password_hash, is_admin=args.admin)
        except DuplicateUser as exc:  # created by someone else while we asked
            raise ToolError(str(exc)) from None
    if is_new_file:
        print(f"created the users database {path}", file=sys.stderr)
        warn_if_root_owned(path)
    print(f"created {'admin' if args.admin else 'user'} {username!r}")


def reset_password(path: Path, args: argparse.Namespace) -> None:
    with open_database(path) as db:
        user = existing_user(db, args.username)
        password_hash = new_password_hash(args.password_stdin)
        db.update_user(user.username, password_hash=password_hash)
    print(f"new password set for {user.username!r}; their sessions were ended")
    if user.disabled:
        print(f"{user.username!r} is still disabled: {PROG} enable {user.username}")


def disable_user(path: Path, args: argparse.Namespace) -> None:
    with open_database(path) as db:
        user = existing_user(db, args.username)
        db.update_user(user.username, disabled=True)
    print(f"disabled {user.username!r}; their sessions were ended")


def promote_user(path: Path, args: argparse.Namespace) -> None:
    with open_database(path) as db:
        user = existing_user(db, args.username)
        if user.is_admin:
            print(f"{user.username!r} is an admin already")
            return
        db.update_user(user.username, is_admin=True)
    print(f"{user.username!r} is now an admin; their sessions were ended")
    if user.disabled:
        print(f"{user.username!r} is still disabled: {PROG} enable {user.username}")


def demote_user(path: Path, args: argparse.Namespace) -> None:
    with open_database(path) as db:
        user = existing_user(db, args.username)
        if not user.is_admin:
            print(f"{user.username!r} is not an admin")
            return
        db.update_user(user.username, is_admin=False)
    print(f"{user.username!r} is no longer an admin; their sessions were ended")


def enable_user(path: Path, args: argparse.Namespace) -> None:
    with open_database(path) as db:
        user = existing_user(db, args.username)
        db.update_user(user.username, disabled=False)
    print(f"enabled {user.username!r}")


def list_users(path: Path, args: argparse.Namespace) -> None:
    with open_database(path) as db:
        users = db.users()
    if not users:
        print(f"no users yet; add one with: {PROG} create USERNAME --admin")
        return
    rows = [("USERNAME", "ADMIN", "DISABLED", "CREATED")]
    rows += [
        (
            printable(user.username),
            "yes" if user.is_admin else "no",
            "yes" if user.disabled else "no",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(user.created_at)),
        )
        for user in users
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def delete_user(path: Path, args: argparse.Namespace) -> None:
    with open_database(path) as db:
        user = existing_user(db, args.username)
        if db.is_last_admin(user.username):  # before asking; the delete checks it again
            raise LastAdmin(user.username)
        if not args.yes:
            confirm(f"Delete {user.username!r} with their conversations and settings? [y/N] ")
        db.delete_user(user.username)
    print(f"deleted {user.username!r}")


# -- the steps ----------------------------------------------------------------------------


@contextmanager
def open_database(path: Path, *, create: bool = False) -> Iterator[Database]:
    """The database, or a ``ToolError`` saying why not and what to do."""
    if path.is_dir():
        raise ToolError(f"{path} is a directory; --db and USER_DB_PATH name the database file")
    if not path.exists() and not create and searchable(path.parent):
        raise ToolError(
            f"no users database at {path} (start the gateway once, or check USER_DB_PATH)"
        )
    check_writable(path)
    previous_umask = os.umask(0o077) if create and not path.exists() else None
    try:
        db = Database(path, create=create)
    except DatabaseError as exc:
        raise ToolError(str(exc)) from None
    except sqlite3.Error as exc:  # e.g. "file is not a database"
        raise ToolError(f"cannot use {path} as the users database: {exc}") from None
    finally:
        if previous_umask is not None:
            os.umask(previous_umask)
    try:
        yield db
    except LastAdmin as exc:
        raise ToolError(f"{exc} ({PROG} promote USERNAME)") from None
    except DatabaseError as exc:
        raise ToolError(str(exc)) from None
    except sqlite3.Error as exc:
        raise ToolError(f"users database {path}: {exc}") from None
    finally:
        db.close()


def check_writable(path: Path) -> None:
    """Fail before SQLite does, naming who owns what, when this user cannot write the database.

    In WAL mode SQLite writes ``-wal`` and ``-shm`` files next to the database and creates
    them in its directory when they are missing, so both the files and (then) the
    directory must be writable.
    """
    directory = nearest_existing(path.parent)
    if not searchable(directory):
        raise cannot_write(directory, f"cannot open {path}")
    companions = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
    for companion in companions:
        if companion.exists() and not os.access(companion, os.R_OK | os.W_OK):
            raise cannot_write(companion, f"cannot write {companion}: read-only")
    if not all(companion.exists() for companion in companions) and not os.access(
        directory, os.W_OK | os.X_OK
    ):
        raise cannot_write(directory, f"cannot create files in {directory}: read-only")


def cannot_write(blocked: Path, what: str) -> ToolError:
    status = blocked.stat()
    owner = owner_name(blocked)
    if status.st_uid == os.geteuid():
        return ToolError(
            f"{what} (mode {status.st_mode & 0o7777:04o}, owned by {owner}, who runs this); "
            f"{SERVICE_USER_HINT}, or give the owner write permission back"
        )
    return ToolError(
        f"{what} for {current_user()} (owned by {owner}); {SERVICE_USER_HINT} (sudo -u {owner})"
    )


def existing_user(db: Database, username: str) -> User:
    refuse_reserved(username)
    found = db.user_by_name(username)
    if found is None:
        raise ToolError(f"no user named {username!r} (see: {PROG} list)")
    return found[0]


def checked_new_username(username: str) -> str:
    if not 1 <= len(username) <= USERNAME_MAX or not set(username) <= USERNAME_CHARACTERS:
        raise ToolError(f"usernames are 1-{USERNAME_MAX} letters, digits, '_', '.', '@' or '-'")
    refuse_reserved(username)
    return username


def refuse_reserved(username: str) -> None:
    if username.casefold() == LOCAL_USER:
        raise ToolError(
            f"{LOCAL_USER!r} is reserved: it owns the chat history kept when accounts are off"
        )


def refuse_duplicate(db: Database, username: str) -> None:
    found = db.user_by_name(username)
    if found is not None:
        raise ToolError(f"a user named {found[0].username!r} already exists")


def new_password_hash(from_stdin: bool) -> str:
    """Blocking for about 0.25 s (bcrypt cost 12)."""
    password = read_new_password(from_stdin)
    try:
        return hash_password(password)
    except PasswordRejected as exc:
        raise ToolError(f"password rejected: {exc}") from None


def read_new_password(from_stdin: bool) -> str:
    """One line of stdin, or a hidden prompt asked twice; checked against the rules."""
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise ToolError("no password on stdin (send it as one line)")
        return checked_password(line.removesuffix("\n").removesuffix("\r"))
    password = checked_password(hidden_prompt("New password: "))
    if hidden_prompt("Repeat the password: ") != password:
        raise ToolError("the passwords did not match; nothing was changed")
    return password


def checked_password(password: str) -> str:
    try:
        check_password_rules(password)
    except PasswordRejected as exc:
        raise ToolError(f"password rejected: {exc}") from None
    return password


def hidden_prompt(prompt: str) -> str:
    with warnings.catch_warnings():
        # getpass falls back to echoing the typed password when it has no terminal.
        warnings.simplefilter("error", getpass.GetPassWarning)
        try:
            return getpass.getpass(prompt)
        except getpass.GetPassWarning:
            raise UsageError(
                "no terminal to ask for the password without echoing it; "
                "send it on stdin with --password-stdin"
            ) from None
        except EOFError:
            raise ToolError("no password given; nothing was changed") from None


def confirm(question: str) -> None:
    print(question, end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    if answer.strip().lower() not in ("y", "yes"):
        raise ToolError("not confirmed; nothing was deleted (--yes skips the question)")


def warn_if_root_owned(path: Path) -> None:
    directory_owner = path.parent.stat().st_uid
    if os.geteuid() == 0 and directory_owner != 0:
        owner = owner_name(path.parent)
        print(
            f"warning: {path} belongs to root, so the gateway cannot write it; "
            f"fix it with: chown {owner}: {path}",
            file=sys.stderr,
        )


def nearest_existing(directory: Path) -> Path:
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    return directory


def searchable(directory: Path) -> bool:
    return not directory.exists() or os.access(directory, os.X_OK)


def owner_name(path: Path) -> str:
    uid = path.stat().st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def current_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def printable(text: str) -> str:
    """Names made elsewhere could hold terminal escapes; show those, never run them."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


if __name__ == "__main__":
    sys.exit(main())
