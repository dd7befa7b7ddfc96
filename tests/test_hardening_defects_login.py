"""Issue 10, item 10 (a defect found in review): the reserved ``local`` account cannot be
given a password.

``local`` owns the shared chat history when accounts are off; its stored hash is ``!``,
which no password matches. Were an admin (the UI's admin API), an operator
(``tools/manage_users.py``) or code (``Database``) able to set one, that history would
become an account anyone who learned the password could log in to. Each attack below
tries, and the number that proves it held is the stored row: hash still ``!``, not an
admin, not disabled, and no bcrypt run spent on the attempt.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sidecar.typedefs import SETTINGS, UI_STATE
from sidecar.users.db import LOCAL_USER, Database, ReservedUser
from sidecar.users.passwords import hash_password

from .test_manage_users import run_tool
from .test_ui_api import ADMIN_USERS, Stack, accounts, add_user, error_code, log_in, try_login

__all__ = ["accounts"]  # the fixture, shared with test_ui_api

NEW_PASSWORD = "a brand new password"


def local_row(path: Path) -> tuple[str, int, int]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        row = db.execute(
            "SELECT password_hash, is_admin, disabled FROM users WHERE username = ?",
            (LOCAL_USER,),
        ).fetchone()
    assert row is not None
    return row


async def test_the_admin_api_cannot_give_local_a_password_or_change_it(accounts: Stack) -> None:
    client = accounts.client
    await add_user(client, "root", admin=True)
    admin = await log_in(client, "root")
    db_path: Path = client.server.app[SETTINGS].user_db_path
    checks = client.server.app[UI_STATE].users.checks.stats
    hashes_before = checks.hashes

    attacks: list[tuple[str, dict[str, Any]]] = [
        (LOCAL_USER, {"password": NEW_PASSWORD}),
        ("LOCAL", {"password": NEW_PASSWORD}),  # usernames are case-insensitive
        ("Local", {"is_admin": True}),
        (LOCAL_USER, {"disabled": False}),
    ]
    for name, body in attacks:
        response = await admin.call("PATCH", f"{ADMIN_USERS}/{name}", body)
        assert response.status == 400, await response.text()
        answer = await response.json()
        assert error_code(answer) == "reserved_user"
        assert answer["error"]["param"] == "username"
        assert "reserved" in answer["error"]["message"]
    response = await admin.call(
        "POST", ADMIN_USERS, {"username": "LoCaL", "password": NEW_PASSWORD}
    )
    assert response.status == 400, await response.text()

    assert local_row(db_path) == ("!", 0, 0)
    assert checks.hashes == hashes_before  # refused before a bcrypt run was spent
    response = await try_login(client, LOCAL_USER, NEW_PASSWORD)
    assert response.status == 401, await response.text()


def test_manage_users_refuses_to_reset_or_create_local(tmp_path: Path) -> None:
    db_path = tmp_path / "users.sqlite3"
    database = Database(db_path)
    database.local_user()
    database.close()

    for args in (("reset", LOCAL_USER), ("reset", "LOCAL"), ("create", "Local")):
        result = run_tool(*args, "--password-stdin", db=db_path, stdin=NEW_PASSWORD + "\n")
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "reserved" in result.stderr
        assert "Traceback" not in result.stderr
    for args in (("disable", LOCAL_USER), ("enable", LOCAL_USER)):
        result = run_tool(*args, db=db_path)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
    assert local_row(db_path) == ("!", 0, 0)


def test_the_database_itself_refuses_a_password_for_local(tmp_path: Path) -> None:
    db_path = tmp_path / "users.sqlite3"
    database = Database(db_path)
    try:
        database.local_user()
        password_hash = hash_password(NEW_PASSWORD)
        for name in (LOCAL_USER, "LOCAL"):
            with pytest.raises(ReservedUser):
                database.update_user(name, password_hash=password_hash)
            with pytest.raises(ReservedUser):
                database.update_user(name, is_admin=True)
        with pytest.raises(ReservedUser):
            database.create_user("Local", password_hash)
        # Other accounts are untouched by the rule.
        database.create_user("localhost", password_hash)
        assert database.update_user("localhost", disabled=True) is not None
    finally:
        database.close()
    assert local_row(db_path) == ("!", 0, 0)
