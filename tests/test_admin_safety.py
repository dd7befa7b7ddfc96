"""There is always an enabled admin: the UI API, the users database and
``tools/manage_users.py`` all refuse to demote, disable or delete the last one."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from sidecar.errors import LastAdmin
from sidecar.settings import UiSettings
from sidecar.users.db import Database
from sidecar.users.passwords import hash_password

from .conftest import gateway_yaml, mock_backend_yaml
from .test_manage_users import create, open_session, run_tool, session_exists, stored_user
from .test_ui_api import (
    ADMIN_USERS,
    CONVERSATIONS,
    LOOPBACK,
    PASSWORD,
    Stack,
    add_user,
    log_in,
)


@pytest.fixture
async def accounts(make_gateway: Any, start_mock: Any) -> Stack:
    """A gateway with user accounts on, the UI open to loopback, one fake backend."""
    backend = await start_mock()
    client = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend)),
        ui=UiSettings(accounts=True),
        ui_ip_allowlist=LOOPBACK,
    )
    return Stack(client, backend)


def admins(db: Database) -> dict[str, tuple[bool, bool]]:
    return {user.username: (user.is_admin, user.disabled) for user in db.users()}


# -- the UI API ----------------------------------------------------------------------------


async def test_ui_api_refuses_to_remove_the_last_enabled_admin(accounts: Stack) -> None:
    client = accounts.client
    await add_user(client, "root", admin=True)
    await add_user(client, "eve")
    await add_user(client, "ghost", admin=True)
    root = await log_in(client, "root")
    # A disabled admin does not count: root is the last enabled one.
    assert (await root.json("PATCH", f"{ADMIN_USERS}/ghost", {"disabled": True}))["disabled"]

    for method, body in (
        ("PATCH", {"is_admin": False}),
        ("PATCH", {"disabled": True}),
        ("PATCH", {"is_admin": False, "disabled": True}),
        ("DELETE", None),
    ):
        response = await root.call(method, f"{ADMIN_USERS}/root", body)
        assert response.status == 409, (method, body, await response.text())
        error = (await response.json())["error"]
        assert error["code"] == "last_admin" and error["type"] == "invalid_request_error"
        assert "last enabled admin" in error["message"]
    # Nothing changed, and root's session was not ended by the refused change.
    listed = {u["username"]: u for u in (await root.json("GET", ADMIN_USERS))["data"]}
    assert (listed["root"]["is_admin"], listed["root"]["disabled"]) == (True, False)
    assert (await root.json("GET", CONVERSATIONS)) == {"data": []}
    # What leaves an enabled admin is allowed: a password change, or enabling another.
    assert (await root.json("PATCH", f"{ADMIN_USERS}/root", {"is_admin": True}))["is_admin"]
    root = await log_in(client, "root")  # that change ended root's sessions

    # With eve an admin, root may step down; then eve is the last one.
    assert (await root.json("PATCH", f"{ADMIN_USERS}/eve", {"is_admin": True}))["is_admin"]
    assert not (await root.json("PATCH", f"{ADMIN_USERS}/root", {"is_admin": False}))["is_admin"]
    eve = await log_in(client, "eve")
    response = await eve.call("DELETE", f"{ADMIN_USERS}/eve")
    assert response.status == 409, await response.text()
    response = await eve.call("PATCH", f"{ADMIN_USERS}/eve", {"disabled": True})
    assert response.status == 409, await response.text()

    # Deleting another user works, once; the local user and strangers are refused.
    response = await eve.call("DELETE", f"{ADMIN_USERS}/root")
    assert response.status == 204, await response.text()
    assert {u["username"] for u in (await eve.json("GET", ADMIN_USERS))["data"]} == {
        "eve",
        "ghost",
    }
    assert (await eve.call("DELETE", f"{ADMIN_USERS}/root")).status == 404
    response = await eve.call("DELETE", f"{ADMIN_USERS}/local")
    assert response.status == 400 and (await response.json())["error"]["code"] == "reserved_user"
    # Deleting needs the CSRF token, like every change.
    response = await eve.call("DELETE", f"{ADMIN_USERS}/ghost", csrf=False)
    assert response.status == 403


async def test_only_admins_delete_users(accounts: Stack) -> None:
    client = accounts.client
    await add_user(client, "root", admin=True)
    await add_user(client, "eve")
    eve = await log_in(client, "eve")
    response = await eve.call("DELETE", f"{ADMIN_USERS}/root")
    assert response.status == 403, await response.text()
    root = await log_in(client, "root")
    assert {u["username"] for u in (await root.json("GET", ADMIN_USERS))["data"]} == {
        "eve",
        "root",
    }


# -- the database: one transaction decides ------------------------------------------------


def test_the_database_refuses_and_changes_nothing(tmp_path: Path) -> None:
    db = Database(tmp_path / "users.sqlite3")
    try:
        password_hash = hash_password(PASSWORD)
        db.create_user("root", password_hash, is_admin=True)
        db.create_user("eve", password_hash)
        for change in ({"is_admin": False}, {"disabled": True}):
            with pytest.raises(LastAdmin):
                db.update_user("root", password_hash=hash_password("another pass 1"), **change)
        with pytest.raises(LastAdmin):
            db.delete_user("root")
        assert admins(db) == {"root": (True, False), "eve": (False, False)}
        found = db.user_by_name("root")
        assert found is not None and found[1] == password_hash  # rolled back as a whole
        assert db.is_last_admin("root") and not db.is_last_admin("eve")
    finally:
        db.close()


def test_two_writers_cannot_both_remove_the_other_admin(tmp_path: Path) -> None:
    """Two processes (the sidecar and the tool) each demote "the other" admin at once:
    the check and the change share one write transaction, so one of them is refused."""
    path = tmp_path / "users.sqlite3"
    setup = Database(path)
    password_hash = hash_password(PASSWORD)

    def demote(
        db: Database, name: str, change: str, barrier: threading.Barrier, outcomes: list[str]
    ) -> None:
        barrier.wait()
        try:
            if change == "delete":
                db.delete_user(name)
            else:
                db.update_user(name, **{change: change == "disabled"})
            outcomes.append("done")
        except LastAdmin:
            outcomes.append("refused")

    for round_number in range(15):
        first, second = f"a{round_number}", f"b{round_number}"
        setup.create_user(first, password_hash, is_admin=True)
        setup.create_user(second, password_hash, is_admin=True)
        for user in setup.users():  # only this round's two admins are enabled admins
            if user.username not in (first, second) and user.is_admin:
                setup.update_user(user.username, is_admin=False)
        connections = [Database(path), Database(path)]
        barrier = threading.Barrier(2)
        outcomes: list[str] = []
        change = ("is_admin", "disabled", "delete")[round_number % 3]
        threads = [
            threading.Thread(target=demote, args=(db, name, change, barrier, outcomes))
            for db, name in ((connections[0], first), (connections[1], second))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        for connection in connections:
            connection.close()
        assert sorted(outcomes) == ["done", "refused"], (round_number, change, outcomes)
        enabled = [u for u in setup.users() if u.is_admin and not u.disabled]
        assert len(enabled) == 1, (round_number, change, enabled)
    setup.close()


# -- manage_users.py -------------------------------------------------------------------------


def test_manage_users_promote_demote_and_the_last_admin(tmp_path: Path) -> None:
    db = tmp_path / "users.sqlite3"
    result = run_tool("create", "root", "--admin", "--password-stdin", db=db, stdin=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr
    create(db, "alice")
    root_session = open_session(db, stored_user(db, "root")[0])

    for args in (("demote", "root"), ("disable", "root"), ("delete", "root", "--yes")):
        result = run_tool(*args, db=db)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "'root' is the last enabled admin" in result.stderr, result.stderr
        assert "manage_users.py promote USERNAME" in result.stderr
    # Without --yes it refuses before asking anything.
    result = run_tool("delete", "root", db=db, stdin="y\n")
    assert result.returncode == 1 and "[y/N]" not in result.stderr, result.stderr
    root = stored_user(db, "root")[0]
    assert (root.is_admin, root.disabled) == (True, False)
    assert session_exists(db, root_session)  # a refused change ends nothing

    alice_session = open_session(db, stored_user(db, "alice")[0])
    result = run_tool("promote", "alice", db=db)
    assert result.returncode == 0, result.stderr
    assert "'alice' is now an admin" in result.stdout
    assert stored_user(db, "alice")[0].is_admin
    assert not session_exists(db, alice_session)  # new rights: log in again
    result = run_tool("promote", "alice", db=db)
    assert result.returncode == 0 and "already" in result.stdout

    result = run_tool("demote", "root", db=db)
    assert result.returncode == 0, result.stderr
    assert not stored_user(db, "root")[0].is_admin
    assert not session_exists(db, root_session)
    result = run_tool("demote", "root", db=db)
    assert result.returncode == 0 and "is not an admin" in result.stdout
    result = run_tool("demote", "alice", db=db)
    assert result.returncode == 1 and "'alice' is the last enabled admin" in result.stderr

    listing = run_tool("list", db=db).stdout.splitlines()
    assert [line.split()[:2] for line in listing[1:]] == [["alice", "yes"], ["root", "no"]]
    for args in (("promote", "nobody"), ("demote", "local"), ("promote",)):
        result = run_tool(*args, db=db)
        assert result.returncode in (1, 2), (args, result.stderr)
    result = run_tool("--help")
    assert "promote" in result.stdout and "demote" in result.stdout
