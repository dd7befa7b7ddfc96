"""``tools/manage_users.py`` as an operator runs it: a subprocess against a real users database.

What the gateway would see is read back through ``sidecar.users.db.Database`` and checked
with ``verify_password``: the stored hash, the admin and disabled flags, and whether a
session row survived. Every run also checks that no password or bcrypt hash was printed.
bcrypt at cost 12 takes about 0.25 s a hash, so each test makes as few as it can.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path

import pytest

from sidecar.users.db import Database, User
from sidecar.users.passwords import verify_password

TOOL = Path(__file__).resolve().parent.parent / "tools" / "manage_users.py"
PASSWORD = "correct horse 1"
NEW_PASSWORD = "battery staple 2"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def tool_env(**variables: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("USER_DB_PATH", "GATEWAY_DATA_DIR")
    }
    env["PYTHONUTF8"] = "1"
    env.update(variables)
    return env


def run_tool(
    *args: str | Path,
    db: Path | None = None,
    stdin: str = "",
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    as_user: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Runs the tool; ``db`` is passed as ``USER_DB_PATH``, as the gateway reads it."""
    if env is None:
        env = tool_env(**({"USER_DB_PATH": str(db)} if db else {}))
    result = subprocess.run(
        [*as_user, sys.executable, str(TOOL), *map(str, args)],
        input=stdin,
        capture_output=True,
        encoding="utf-8",
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )
    printed = result.stdout + result.stderr
    for line in stdin.splitlines():
        if len(line) >= 8:  # every password these tests send is at least that long
            assert line not in printed
    assert "$2b$" not in printed
    return result


def create(db: Path, username: str, password: str = PASSWORD) -> None:
    result = run_tool("create", username, "--password-stdin", db=db, stdin=password + "\n")
    assert result.returncode == 0, result.stderr


def stored(db: Path, username: str) -> tuple[User, str] | None:
    store = Database(db, create=False)
    try:
        return store.user_by_name(username)
    finally:
        store.close()


def stored_user(db: Path, username: str) -> tuple[User, str]:
    found = stored(db, username)
    assert found is not None, f"{username} is not in {db}"
    return found


def open_session(db: Path, user: User) -> str:
    id_hash = f"session-of-{user.username}"
    store = Database(db, create=False)
    try:
        store.create_session(id_hash, user.id, csrf="csrf-token")
    finally:
        store.close()
    return id_hash


def session_exists(db: Path, id_hash: str) -> bool:
    with closing(sqlite3.connect(db)) as connection:
        row = connection.execute("SELECT 1 FROM sessions WHERE id_hash = ?", (id_hash,))
        return row.fetchone() is not None


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "users.sqlite3"


@pytest.fixture
def alice(db: Path) -> User:
    create(db, "alice")
    return stored_user(db, "alice")[0]


def test_create_then_list_from_each_way_of_naming_the_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    db = data_dir / "users.sqlite3"
    data_dir_env = tool_env(GATEWAY_DATA_DIR=str(data_dir))
    by_data_dir = run_tool(
        "create", "alice", "--admin", "--password-stdin", env=data_dir_env, stdin=PASSWORD + "\n"
    )
    assert by_data_dir.returncode == 0, by_data_dir.stderr
    assert "created admin 'alice'" in by_data_dir.stdout
    assert f"created the users database {db}" in by_data_dir.stderr
    create(db, "bob")  # via USER_DB_PATH

    listing = run_tool("--db", db, "list", env=tool_env())

    assert listing.returncode == 0, listing.stderr
    header, *rows = listing.stdout.splitlines()
    assert header.split() == ["USERNAME", "ADMIN", "DISABLED", "CREATED"]
    assert [row.split()[:3] for row in rows] == [["alice", "yes", "no"], ["bob", "no", "no"]]
    alice, password_hash = stored_user(db, "alice")
    assert alice.is_admin and not alice.disabled
    assert not stored_user(db, "bob")[0].is_admin
    assert verify_password(PASSWORD, password_hash)  # the newline from stdin is not in it
    assert db.stat().st_mode & 0o077 == 0  # password hashes: not readable by others


def test_the_default_database_is_var_under_the_working_directory(tmp_path: Path) -> None:
    result = run_tool("list", env=tool_env(), cwd=tmp_path)

    assert result.returncode == 1
    assert f"no users database at {tmp_path / 'var' / 'users.sqlite3'}" in result.stderr


def test_create_refuses_an_existing_user_in_any_letter_case(db: Path, alice: User) -> None:
    result = run_tool("create", "ALICE", "--password-stdin", db=db, stdin=NEW_PASSWORD + "\n")

    assert result.returncode == 1
    assert "a user named 'alice' already exists" in result.stderr
    assert verify_password(PASSWORD, stored_user(db, "alice")[1])


def test_reset_replaces_the_password_and_ends_the_sessions(db: Path, alice: User) -> None:
    session = open_session(db, alice)

    result = run_tool("reset", "alice", "--password-stdin", db=db, stdin=NEW_PASSWORD + "\n")

    assert result.returncode == 0, result.stderr
    password_hash = stored_user(db, "alice")[1]
    assert verify_password(NEW_PASSWORD, password_hash)
    assert not verify_password(PASSWORD, password_hash)
    assert not session_exists(db, session)


def test_disable_ends_the_sessions_and_enable_lets_the_user_back(db: Path, alice: User) -> None:
    session = open_session(db, alice)

    disabled = run_tool("disable", "alice", db=db)

    assert disabled.returncode == 0, disabled.stderr
    assert stored_user(db, "alice")[0].disabled
    assert not session_exists(db, session)
    assert run_tool("list", db=db).stdout.splitlines()[1].split()[:3] == ["alice", "no", "yes"]

    enabled = run_tool("enable", "alice", db=db)

    assert enabled.returncode == 0, enabled.stderr
    assert not stored_user(db, "alice")[0].disabled
    assert verify_password(PASSWORD, stored_user(db, "alice")[1])


def test_delete_asks_first_unless_told_yes(db: Path, alice: User) -> None:
    declined = run_tool("delete", "alice", db=db, stdin="n\n")

    assert declined.returncode == 1
    assert "nothing was deleted" in declined.stderr
    assert stored(db, "alice") is not None

    confirmed = run_tool("delete", "alice", db=db, stdin="y\n")
    assert confirmed.returncode == 0, confirmed.stderr
    assert stored(db, "alice") is None


def test_delete_with_yes_needs_no_answer(db: Path, alice: User) -> None:
    result = run_tool("delete", "alice", "--yes", db=db)

    assert result.returncode == 0, result.stderr
    assert stored(db, "alice") is None
    assert "no users yet" in run_tool("list", db=db).stdout


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short7!", "passwords need at least 8 characters"),
        ("é" * 36 + "a", "passwords are limited to 72 bytes by bcrypt (73 given"),  # 37 characters
    ],
    ids=["too-short", "73-bytes"],
)
def test_passwords_that_break_the_rules_are_refused_with_the_reason(
    db: Path, password: str, reason: str
) -> None:
    result = run_tool("create", "alice", "--password-stdin", db=db, stdin=password + "\n")

    assert result.returncode == 1
    assert f"password rejected: {reason}" in result.stderr
    assert password not in result.stdout + result.stderr
    assert not db.exists()  # nothing was written, not even an empty database


def test_a_non_ascii_password_of_72_bytes_works(db: Path) -> None:
    password = "пароль-" + "é" * 29 + "x"
    assert len(password.encode()) == 72

    create(db, "zoe", password=password)

    assert verify_password(password, stored_user(db, "zoe")[1])


@pytest.mark.parametrize("command", ["list", "reset", "disable", "enable", "delete"])
def test_a_missing_database_is_reported_and_not_created(tmp_path: Path, command: str) -> None:
    db = tmp_path / "users.sqlite3"
    args = [command] if command == "list" else [command, "alice"]

    result = run_tool(*args, db=db, stdin=PASSWORD + "\n")

    assert result.returncode == 1
    assert (
        f"no users database at {db} (start the gateway once, or check USER_DB_PATH)"
        in result.stderr
    )
    assert not db.exists()


@pytest.mark.parametrize("command", ["reset", "disable", "enable", "delete"])
def test_an_unknown_user_is_reported(db: Path, alice: User, command: str) -> None:
    args = [command, "ghost", *(["--yes"] if command == "delete" else [])]

    result = run_tool(*args, db=db, stdin=NEW_PASSWORD + "\n")

    assert result.returncode == 1
    assert "no user named 'ghost'" in result.stderr
    assert stored(db, "ghost") is None


@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate", "alice"],
        ["create"],
        ["create", "alice", "--password", PASSWORD],
        ["create", "alice", f"--password={PASSWORD}"],
        ["create", "alice", PASSWORD],
    ],
    ids=["unknown-command", "no-username", "password-option", "password-equals", "extra-word"],
)
def test_usage_errors_exit_2_without_repeating_the_arguments(
    tmp_path: Path, args: list[str]
) -> None:
    db = tmp_path / "users.sqlite3"

    result = run_tool(*args, db=db)

    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert not db.exists()


# -- the hidden prompt ----------------------------------------------------------------------


def run_on_terminal(args: Sequence[str | Path], answers: Sequence[str]) -> tuple[int, str]:
    """Runs the tool on a pseudo-terminal, typing each answer once its prompt is shown.

    The tool gets the terminal as stdin with no controlling terminal, so ``getpass`` turns
    echo off on stdin; what the terminal shows is everything the operator would see.
    """
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, str(TOOL), *map(str, args)],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=tool_env(),
        start_new_session=True,
    )
    os.close(terminal)
    shown = b""

    def read_until(done: bytes | None) -> None:
        nonlocal shown
        deadline = time.monotonic() + 30
        while done is None or done not in shown:
            ready, _, _ = select.select([controller], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"the tool showed {shown!r}, not {done!r}")
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: every process closed the terminal
                chunk = b""
            if not chunk:
                if done is None:
                    return
                raise AssertionError(f"the tool ended showing {shown!r}, not {done!r}")
            shown += chunk

    try:
        for prompt, answer in zip(
            (b"New password: ", b"Repeat the password: "), answers, strict=False
        ):
            read_until(prompt)
            os.write(controller, answer.encode() + b"\n")
        read_until(None)
        status = process.wait(timeout=30)
    finally:
        process.kill()
        process.wait()
        os.close(controller)
    return status, shown.decode(errors="replace")


def test_the_prompt_hides_the_password_and_asks_twice(db: Path) -> None:
    status, shown = run_on_terminal(["--db", db, "create", "alice"], [PASSWORD, PASSWORD])

    assert status == 0, shown
    assert "New password: " in shown and "Repeat the password: " in shown
    assert PASSWORD not in shown  # not echoed while typed
    assert verify_password(PASSWORD, stored_user(db, "alice")[1])


def test_a_mismatched_confirmation_changes_nothing(db: Path) -> None:
    status, shown = run_on_terminal(["--db", db, "create", "alice"], [PASSWORD, NEW_PASSWORD])

    assert status == 1
    assert "the passwords did not match; nothing was changed" in shown
    assert PASSWORD not in shown and NEW_PASSWORD not in shown
    assert not db.exists()


# -- a database this user cannot write ------------------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can reach (pytest's ``tmp_path`` is private to its owner)."""
    directory = Path(tempfile.mkdtemp(prefix="manage-users-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        directory.chmod(0o755)
        shutil.rmtree(directory)


def unprivileged_runner() -> list[str]:
    """How to run the tool as someone who cannot write files they do not own.

    root can write any file, so when these tests run as root the tool runs as ``nobody``.
    """
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root and setpriv (util-linux) is missing")
    probe = subprocess.run(
        [*NOBODY, sys.executable, "-c", "import bcrypt, sidecar.users.db"],
        cwd="/",
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"nobody cannot run this Python: {probe.stderr.decode()[-200:]}")
    return NOBODY


@pytest.mark.parametrize(
    "args",
    [
        ["disable", "alice"],
        ["reset", "alice", "--password-stdin"],
        ["create", "bob", "--password-stdin"],
        ["create", "bob", "--password-stdin", "--db", "NEW_FILE"],
        ["list"],
    ],
    ids=["disable", "reset", "create", "create-new-database", "list"],
)
def test_a_read_only_database_says_to_run_as_the_service_user(
    shared_dir: Path, args: list[str]
) -> None:
    db = shared_dir / "users.sqlite3"
    new_file = shared_dir / "new.sqlite3"
    args = [str(new_file) if arg == "NEW_FILE" else arg for arg in args]
    create(db, "alice")
    as_user = unprivileged_runner()
    db.chmod(0o444)
    shared_dir.chmod(0o555)
    if not as_user and os.access(db, os.W_OK):
        pytest.skip("this file system lets us write a file with mode 0444")

    result = run_tool(*args, db=db, stdin=NEW_PASSWORD + "\n", as_user=as_user, cwd=shared_dir)

    assert result.returncode == 1
    assert "run as the gateway service user" in result.stderr
    assert "Traceback" not in result.stderr
    shared_dir.chmod(0o755)
    db.chmod(0o600)
    alice, password_hash = stored_user(db, "alice")
    assert not alice.disabled
    if args[0] == "reset":
        assert verify_password(PASSWORD, password_hash)
    assert stored(db, "bob") is None
    assert not new_file.exists()
