"""The browser UI's API: logging in, sessions, CSRF, per-user data, admin, chat history.

Every gateway comes from the app factory (``make_gateway``) with accounts on (or off, where
a test says so) and the UI open to loopback; fake model servers are real aiohttp apps on
loopback. Users are created through the running app's own users store. The test client
speaks plain http, where a cookie jar never sends a ``Secure`` cookie, so each test reads
the session cookie from ``Set-Cookie`` and sends it by hand, like a browser would over
https. CSRF tokens come from the ``<meta name="csrf-token">`` of a rendered page.

bcrypt at cost 12 takes about 0.25 s per hash or check: this file makes 24 of them
(user creations, logins, failed logins and a password reset), so logins are few.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.mock_backends.openai_server import RECEIVED
from sidecar.settings import UiSettings
from sidecar.typedefs import SETTINGS, UI_STATE

from .conftest import eventually as wait_until_true
from .conftest import gateway_yaml, mock_backend_yaml

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
SESSION_COOKIE = "__Host-gw_session"
PASSWORD = "correct horse battery staple"
CSRF_META = re.compile(r'<meta\s+name="csrf-token"\s+content="([^"]*)"\s*/?>')
XSS = "<img src=x onerror=alert(1)>"
EVIL_ORIGIN = "https://evil.example"
CONVERSATIONS = "/ui/api/conversations"
LOGIN = "/ui/api/auth/login"
LOGOUT = "/ui/api/auth/logout"
SETTINGS_API = "/ui/api/user/settings"
ADMIN_USERS = "/ui/api/admin/users"
POLL_S = 0.02
ATTEMPTS = 250  # bounded waits: at most ATTEMPTS x POLL_S, never a pass/fail on time
SCRIPTED_RECEIVED = web.AppKey("scripted_received", list[dict[str, Any]])


# -- helpers -------------------------------------------------------------------------------


@dataclass
class Agent:
    """One browser: its session cookie (None: none) and the CSRF token of its pages."""

    client: TestClient
    session: str | None = None
    csrf: str = ""

    def headers(self, *, csrf: bool = True, **extra: str) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.session is not None:
            headers["Cookie"] = f"{SESSION_COOKIE}={self.session}"
        if csrf:
            headers["X-CSRF-Token"] = self.csrf
        headers.update(extra)
        return headers

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        csrf: bool = True,
        headers: dict[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """A request as the UI's scripts send it; the body is read before returning."""
        response = await self.client.request(
            method,
            path,
            json=body,
            headers=self.headers(csrf=csrf, **(headers or {})),
            allow_redirects=False,
        )
        await response.read()
        return response

    async def json(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        response = await self.call(method, path, body)
        assert response.status == status, await response.text()
        return await response.json()

    async def page_csrf(self, path: str = "/ui") -> str:
        """Load a page and keep the CSRF token it carries."""
        response = await self.call("GET", path, csrf=False)
        text = await response.text()
        assert response.status == 200, text
        assert response.content_type == "text/html", response.headers
        found = CSRF_META.search(text)
        assert found is not None and found.group(1), text[:500]
        self.csrf = found.group(1)
        return self.csrf


def session_cookie(response: aiohttp.ClientResponse) -> tuple[str, list[str]]:
    """The session cookie's value and its attributes, lower-cased, from ``Set-Cookie``."""
    headers = [h for h in response.headers.getall("Set-Cookie", []) if h.startswith("__Host-")]
    assert len(headers) == 1, response.headers
    pair, *attributes = (part.strip() for part in headers[0].split(";"))
    name, _, value = pair.partition("=")
    assert name == SESSION_COOKIE, headers
    return value, [attribute.lower() for attribute in attributes if attribute]


async def anonymous(client: TestClient) -> Agent:
    """A browser without a session that has loaded the login page."""
    agent = Agent(client)
    await agent.page_csrf("/ui/login")
    return agent


async def try_login(
    client: TestClient, username: str, password: str = PASSWORD
) -> aiohttp.ClientResponse:
    agent = await anonymous(client)
    response = await agent.call("POST", LOGIN, {"username": username, "password": password})
    client.session.cookie_jar.clear()  # the cookie travels only in the Cookie header we send
    return response


async def log_in(client: TestClient, username: str, password: str = PASSWORD) -> Agent:
    """Log in through the login API and load the chat page for the session's CSRF token."""
    response = await try_login(client, username, password)
    assert response.status == 200, await response.text()
    assert (await response.json())["user"]["username"] == username
    value, _ = session_cookie(response)
    agent = Agent(client, value)
    await agent.page_csrf("/ui")
    return agent


async def add_user(client: TestClient, username: str, *, admin: bool = False) -> None:
    """Create a user through the app's own users store (what manage_users.py does)."""
    await client.server.app[UI_STATE].users.create_user(username, PASSWORD, admin)


async def local_agent(client: TestClient) -> Agent:
    """With accounts off: the browser of the single local user, with its page's token."""
    agent = Agent(client)
    await agent.page_csrf("/ui")
    return agent


def parse_events(raw: bytes) -> list[dict[str, Any]]:
    """The JSON events of the UI's server-sent event stream, in order."""
    frames = raw.decode().replace("\r\n", "\n").split("\n\n")
    events = []
    for frame in frames:
        for line in frame.split("\n"):
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


async def send_message(agent: Agent, conversation_id: int, content: str) -> list[dict[str, Any]]:
    response = await agent.call(
        "POST", f"{CONVERSATIONS}/{conversation_id}/messages", {"content": content}
    )
    assert response.status == 200, await response.text()
    assert response.content_type == "text/event-stream", response.headers
    return parse_events(await response.read())


def reply_text(events: list[dict[str, Any]]) -> str:
    return "".join(event["content"] for event in events if event["type"] == "delta")


def error_code(body: Any) -> str | None:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]["code"]


eventually = functools.partial(wait_until_true, attempts=ATTEMPTS, poll_s=POLL_S)


def scripted_model(pieces: Sequence[str], *, complete: bool = True) -> web.Application:
    """A fake model that streams ``pieces`` as its reply; without ``complete`` it then
    drops the connection (no ``[DONE]``), like a backend that dies mid-reply."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        request.app[SCRIPTED_RECEIVED].append(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in pieces:
            chunk = {
                "id": "chatcmpl-scripted",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
            }
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        if complete:
            await response.write(b"data: [DONE]\n\n")
            return response
        assert request.transport is not None
        request.transport.abort()  # no [DONE], no end of the chunked body
        return response

    app = web.Application()
    app[SCRIPTED_RECEIVED] = []
    app.router.add_post("/v1/chat/completions", chat)
    return app


@dataclass
class Stack:
    client: TestClient
    backend: TestServer

    @property
    def received(self) -> Any:
        return self.backend.app[RECEIVED]


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


@pytest.fixture
async def no_accounts(make_gateway: Any, start_mock: Any) -> Stack:
    """A gateway with accounts off (the local user), the UI open to loopback."""
    backend = await start_mock()
    client = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend)), ui_ip_allowlist=LOOPBACK
    )
    return Stack(client, backend)


async def scripted_gateway(
    make_gateway: Any, start_mock: Any, app: web.Application
) -> tuple[TestClient, TestServer]:
    server = await start_mock(app)
    client = await make_gateway(
        gateway_yaml(
            mock_backend_yaml("fake", server, models="[fake-model]", health="{readiness: false}")
        ),
        ui_ip_allowlist=LOOPBACK,
    )
    return client, server


def database_bytes(client: TestClient) -> bytes:
    """The users database as stored: the main file, its WAL and shared memory."""
    path: Path = client.server.app[SETTINGS].user_db_path
    parts = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    return b"".join(part.read_bytes() for part in parts if part.exists())


# -- logging in ----------------------------------------------------------------------------


async def test_login_sets_a_strict_host_cookie_with_a_new_session_each_time(
    accounts: Stack,
) -> None:
    client = accounts.client
    await add_user(client, "alice")

    first = await try_login(client, "alice")
    assert first.status == 200, await first.text()
    assert await first.json() == {"user": {"username": "alice", "is_admin": False}}
    value, attributes = session_cookie(first)
    names = {attribute.partition("=")[0] for attribute in attributes}
    assert {"httponly", "secure", "samesite=strict", "path=/"} <= set(attributes), attributes
    # __Host- cookies: Secure, Path=/ and no Domain; nothing else loosens it.
    assert names <= {"httponly", "secure", "samesite", "path", "max-age", "expires"}, attributes
    # At least 256 bits from a CSPRNG, base64url-encoded: 43 characters or more.
    assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", value), value

    second = await try_login(client, "alice")
    assert second.status == 200
    other, _ = session_cookie(second)
    assert other != value  # a new id at every login
    first_browser, second_browser = Agent(client, value), Agent(client, other)
    for browser in (first_browser, second_browser):
        assert (await browser.json("GET", "/ui/api/auth/me"))["user"]["username"] == "alice"

    # The database keeps only a hash of each session id: a copy of it logs no one in.
    path = client.server.app[SETTINGS].user_db_path
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        assert db.execute("SELECT count(*) FROM sessions").fetchone() == (2,)
    stored = database_bytes(client)
    assert b"alice" in stored  # the check reads the real data
    assert value.encode() not in stored and other.encode() not in stored

    # Logging out ends that session on the server; the other one lives on.
    await first_browser.page_csrf("/ui")
    assert first_browser.csrf != (await anonymous(client)).csrf
    response = await first_browser.call("POST", LOGOUT)
    assert response.status == 204, await response.text()
    for path in (CONVERSATIONS, "/ui/api/auth/me"):
        response = await first_browser.call("GET", path)
        assert response.status == 401, await response.text()
        assert error_code(await response.json()) == "login_required"
    page = await first_browser.call("GET", "/ui")
    assert page.status == 303 and page.headers["Location"].startswith("/ui/login")
    assert (await second_browser.json("GET", CONVERSATIONS)) == {"data": []}


async def test_login_failures_are_generic_and_throttled_per_account(accounts: Stack) -> None:
    client = accounts.client
    await add_user(client, "carol")
    await add_user(client, "dave")

    wrong = await try_login(client, "carol", "not the password")
    unknown = await try_login(client, "nobody-here", "not the password")
    assert wrong.status == unknown.status == 401
    assert await wrong.json() == await unknown.json()  # nothing tells the two apart
    assert (await wrong.json())["error"]["message"] == "Invalid username or password"
    for response in (wrong, unknown):
        assert not response.headers.getall("Set-Cookie", [])

    for _ in range(4):  # failures 2 to 5 for carol
        response = await try_login(client, "carol", "still not it")
        assert response.status == 401, await response.text()
    locked = await try_login(client, "carol")  # the right password, but locked now
    assert locked.status == 429, await locked.text()
    assert 0 < int(locked.headers["Retry-After"]) <= 900
    assert error_code(await locked.json()) == "login_throttled"
    assert not locked.headers.getall("Set-Cookie", [])
    again = await try_login(client, "carol", "guessing on")
    assert again.status == 429

    # Another account is not held up by carol's lock.
    dave = await log_in(client, "dave")
    assert (await dave.json("GET", "/ui/api/auth/me"))["user"]["username"] == "dave"


# -- CSRF ----------------------------------------------------------------------------------


async def test_state_changes_need_the_csrf_token_and_the_same_origin(accounts: Stack) -> None:
    client = accounts.client
    await add_user(client, "erin")

    # The login form is protected too: no token, or a foreign origin, is refused.
    login_form = await anonymous(client)
    credentials = {"username": "erin", "password": PASSWORD}
    for kwargs in (
        {"csrf": False},
        {"headers": {"X-CSRF-Token": "forged"}},
        {"headers": {"Origin": EVIL_ORIGIN}},
        {"headers": {"Sec-Fetch-Site": "cross-site"}},
    ):
        response = await login_form.call("POST", LOGIN, credentials, **kwargs)
        assert response.status == 403, (kwargs, await response.text())
        assert error_code(await response.json()) == "csrf_failed"
        assert not response.headers.getall("Set-Cookie", [])

    erin = await log_in(client, "erin")
    host = f"{client.server.host}:{client.server.port}"
    refused: list[dict[str, Any]] = [
        {"csrf": False},
        {"headers": {"X-CSRF-Token": "wrong-token"}},
        {"headers": {"X-CSRF-Token": login_form.csrf}},  # not this session's token
        {"headers": {"Origin": EVIL_ORIGIN}},
        {"headers": {"Origin": "null"}},
        {"headers": {"Origin": f"http://{host}.evil.example"}},
        {"headers": {"Sec-Fetch-Site": "cross-site"}},
        {"headers": {"Sec-Fetch-Site": "same-site"}},
    ]
    for kwargs in refused:
        response = await erin.call("POST", CONVERSATIONS, {"title": "forged"}, **kwargs)
        assert response.status == 403, (kwargs, await response.text())
        assert error_code(await response.json()) == "csrf_failed"
    assert (await erin.json("GET", CONVERSATIONS)) == {"data": []}

    # What a same-origin page sends is accepted.
    created = await erin.json(
        "POST",
        CONVERSATIONS,
        {"title": "mine"},
        status=201,
    )
    response = await erin.call(
        "PATCH",
        f"{CONVERSATIONS}/{created['id']}",
        {"title": "renamed"},
        headers={"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"},
    )
    assert response.status == 200, await response.text()
    conversation = f"{CONVERSATIONS}/{created['id']}"

    # Every other state-changing route refuses a request without the token.
    for method, path, body in (
        ("PATCH", conversation, {"title": "forged"}),
        ("DELETE", conversation, None),
        ("POST", f"{conversation}/messages", {"content": "forged"}),
        ("PUT", SETTINGS_API, {"system_prompt": "forged"}),
        ("POST", LOGOUT, None),
    ):
        response = await erin.call(method, path, body, csrf=False)
        assert response.status == 403, (method, path, await response.text())
    found = await erin.json("GET", conversation)
    assert found["title"] == "renamed" and found["messages"] == []
    assert (await erin.json("GET", SETTINGS_API))["system_prompt"] == ""
    assert not accounts.received  # no message reached the model

    # A GET never changes state.
    for path in (LOGOUT, f"{conversation}/messages", LOGIN):
        response = await erin.call("GET", f"{path}?content=x&username=erin&password=x")
        assert response.status == 405, (path, await response.text())
        assert not response.headers.getall("Set-Cookie", [])
    response = await erin.call("GET", f"{CONVERSATIONS}?title=sneaky")
    assert [c["title"] for c in (await response.json())["data"]] == ["renamed"]
    assert (await erin.json("GET", conversation))["messages"] == []
    assert (await erin.json("GET", "/ui/api/auth/me"))["user"]["username"] == "erin"


# -- one user's data -----------------------------------------------------------------------


async def test_users_see_only_their_own_conversations_and_settings(accounts: Stack) -> None:
    client = accounts.client
    await add_user(client, "alice")
    await add_user(client, "bob")
    alice = await log_in(client, "alice")
    bob = await log_in(client, "bob")

    created = await alice.json("POST", CONVERSATIONS, {"title": "alice's"}, status=201)
    events = await send_message(alice, created["id"], "a secret question")
    assert events[-1]["type"] == "done", events
    path = f"{CONVERSATIONS}/{created['id']}"
    before = await alice.json("GET", path)
    asked = len(accounts.received)

    for method, target, body in (
        ("GET", path, None),
        ("PATCH", path, {"title": "taken over"}),
        ("DELETE", path, None),
        ("POST", f"{path}/messages", {"content": "let me in"}),
    ):
        response = await bob.call(method, target, body)
        assert response.status == 404, (method, await response.text())
        assert error_code(await response.json()) == "conversation_not_found"
    assert await alice.json("GET", path) == before  # untouched
    assert len(accounts.received) == asked  # bob's message never reached a model

    # A session's CSRF token is good for that session only.
    response = await alice.call(
        "POST", CONVERSATIONS, {"title": "x"}, headers={"X-CSRF-Token": bob.csrf}
    )
    assert response.status == 403

    assert await bob.json("GET", CONVERSATIONS) == {"data": []}
    bobs = await bob.json("POST", CONVERSATIONS, {"title": "bob's"}, status=201)
    assert [c["id"] for c in (await alice.json("GET", CONVERSATIONS))["data"]] == [created["id"]]
    assert [c["id"] for c in (await bob.json("GET", CONVERSATIONS))["data"]] == [bobs["id"]]

    mine = {"default_model": "mock-llama", "system_prompt": "Answer as Alice.", "temperature": 0.3}
    assert await alice.json("PUT", SETTINGS_API, mine) == mine
    assert await bob.json("GET", SETTINGS_API) == {
        "default_model": None,
        "system_prompt": "",
        "temperature": None,
    }
    bobs_settings = {"default_model": None, "system_prompt": "Be Bob.", "temperature": 1.5}
    assert await bob.json("PUT", SETTINGS_API, bobs_settings) == bobs_settings
    assert await alice.json("GET", SETTINGS_API) == mine

    # Bob's system prompt goes with Bob's messages only.
    assert (await send_message(bob, bobs["id"], "hi"))[-1]["type"] == "done"
    assert accounts.received[-1].body["messages"][0] == {"role": "system", "content": "Be Bob."}
    assert accounts.received[-1].body["temperature"] == 1.5


# -- admin ---------------------------------------------------------------------------------


async def test_admin_disable_and_password_reset_end_sessions_at_once(accounts: Stack) -> None:
    client = accounts.client
    await add_user(client, "root", admin=True)
    await add_user(client, "eve")
    root = await log_in(client, "root")
    eve = await log_in(client, "eve")

    # Not an admin: the admin API and page are closed, and nothing changes.
    for method, path, body in (
        ("GET", ADMIN_USERS, None),
        ("POST", ADMIN_USERS, {"username": "mallory", "password": PASSWORD, "is_admin": True}),
        ("PATCH", f"{ADMIN_USERS}/root", {"disabled": True}),
        ("PATCH", f"{ADMIN_USERS}/eve", {"is_admin": True}),
        ("GET", "/ui/admin/users", None),
    ):
        response = await eve.call(method, path, body)
        assert response.status == 403, (method, path, await response.text())
    listed = (await root.json("GET", ADMIN_USERS))["data"]
    assert {user["username"]: (user["is_admin"], user["disabled"]) for user in listed} == {
        "eve": (False, False),
        "root": (True, False),
    }
    assert all(set(user) == {"username", "is_admin", "disabled", "created_at"} for user in listed)

    # A password reset by the admin ends eve's sessions; the new password works.
    new_password = "a brand new passphrase"
    changed = await root.json("PATCH", f"{ADMIN_USERS}/eve", {"password": new_password})
    assert changed["username"] == "eve"
    response = await eve.call("GET", CONVERSATIONS)
    assert response.status == 401, await response.text()
    eve = await log_in(client, "eve", new_password)
    assert (await eve.json("GET", CONVERSATIONS)) == {"data": []}

    # Disabling eve ends her session at once: her very next request is refused.
    disabled = await root.json("PATCH", f"{ADMIN_USERS}/eve", {"disabled": True})
    assert disabled["disabled"] is True
    for method, path, body in (
        ("GET", CONVERSATIONS, None),
        ("POST", CONVERSATIONS, {"title": "still here?"}),
        ("GET", "/ui/api/auth/me", None),
    ):
        response = await eve.call(method, path, body)
        assert response.status == 401, (method, path, await response.text())
    page = await eve.call("GET", "/ui")
    assert page.status == 303 and page.headers["Location"].startswith("/ui/login")

    # The admin's own session is untouched.
    assert (await root.json("GET", "/ui/api/auth/me"))["user"] == {
        "username": "root",
        "is_admin": True,
    }


# -- conversations and messages ------------------------------------------------------------


async def test_conversations_crud_and_streamed_messages_are_stored(no_accounts: Stack) -> None:
    me = await local_agent(no_accounts.client)

    first = await me.json("POST", CONVERSATIONS, {"title": "First"}, status=201)
    assert set(first) == {"id", "title", "model", "created_at", "updated_at"}
    assert first["title"] == "First" and first["model"] is None
    second = await me.json("POST", CONVERSATIONS, {"model": "mock-llama"}, status=201)
    assert second["model"] == "mock-llama"
    listed = (await me.json("GET", CONVERSATIONS))["data"]
    assert [c["id"] for c in listed] == [second["id"], first["id"]]  # newest first

    events = await send_message(me, second["id"], "Hello there")
    assert [event["type"] for event in events][-1] == "done", events
    assert all(event["type"] == "delta" for event in events[:-1]) and len(events) > 2
    done = events[-1]
    assert isinstance(done["message_id"], int) and done["title"] == "Hello there"
    assert reply_text(events) == "Mock reply to: Hello there"
    assert no_accounts.received[-1].body["model"] == "mock-llama"
    assert no_accounts.received[-1].body["messages"] == [{"role": "user", "content": "Hello there"}]

    stored = await me.json("GET", f"{CONVERSATIONS}/{second['id']}")
    assert stored["title"] == "Hello there"
    assert [(m["role"], m["content"]) for m in stored["messages"]] == [
        ("user", "Hello there"),
        ("assistant", "Mock reply to: Hello there"),
    ]
    assert stored["messages"][1]["id"] == done["message_id"]

    # The next message carries the history, the user's settings apply.
    settings = {"default_model": "mock-llama", "system_prompt": "Be brief.", "temperature": 0.5}
    assert await me.json("PUT", SETTINGS_API, settings) == settings
    events = await send_message(me, second["id"], "And again")
    assert events[-1]["type"] == "done"
    sent = no_accounts.received[-1].body
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert sent["messages"][0]["content"] == "Be brief." and sent["temperature"] == 0.5
    stored = await me.json("GET", f"{CONVERSATIONS}/{second['id']}")
    assert len(stored["messages"]) == 4

    renamed = await me.json("PATCH", f"{CONVERSATIONS}/{first['id']}", {"title": "Renamed"})
    assert renamed["title"] == "Renamed" and renamed["id"] == first["id"]
    response = await me.call("PATCH", f"{CONVERSATIONS}/{first['id']}", {"title": 42})
    assert response.status == 400
    response = await me.call("POST", f"{CONVERSATIONS}/{first['id']}/messages", {"content": " "})
    assert response.status == 400
    response = await me.call("DELETE", f"{CONVERSATIONS}/{first['id']}")
    assert response.status == 204
    for method in ("GET", "DELETE"):
        response = await me.call(method, f"{CONVERSATIONS}/{first['id']}")
        assert response.status == 404
    response = await me.call("GET", f"{CONVERSATIONS}/not-a-number")
    assert response.status == 404
    listed = (await me.json("GET", CONVERSATIONS))["data"]
    assert [c["id"] for c in listed] == [second["id"]]


async def test_a_model_reply_with_html_is_stored_verbatim_and_never_rendered_as_html(
    make_gateway: Any, start_mock: Any
) -> None:
    client, _ = await scripted_gateway(
        make_gateway, start_mock, scripted_model(["<img src=x ", "onerror=alert(1)>"])
    )
    me = await local_agent(client)
    settings = {"default_model": "fake-model", "system_prompt": XSS, "temperature": None}
    assert await me.json("PUT", SETTINGS_API, settings) == settings
    created = await me.json("POST", CONVERSATIONS, {}, status=201)

    events = await send_message(me, created["id"], XSS)
    assert events[-1]["type"] == "done", events
    assert reply_text(events) == XSS

    response = await me.call("GET", f"{CONVERSATIONS}/{created['id']}")
    assert response.content_type == "application/json"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    stored = await response.json()
    assert [(m["role"], m["content"]) for m in stored["messages"]] == [
        ("user", XSS),
        ("assistant", XSS),
    ]
    assert stored["title"] == XSS

    # The pages render what they show with autoescape; the chat script adds replies as text.
    for path in ("/ui", "/ui/images", "/ui/music"):
        page = await me.call("GET", path, csrf=False)
        assert page.status == 200
        html = await page.text()
        assert "<img src=x onerror" not in html.lower(), path
        assert "onerror=alert" not in html.replace("&lt;img src=x onerror=alert(1)&gt;", "")
    chat_page = await (await me.call("GET", "/ui", csrf=False)).text()
    assert "&lt;img src=x onerror=alert(1)&gt;" in chat_page  # the system prompt, escaped


async def test_a_backend_failing_mid_reply_gives_an_error_event_and_keeps_the_partial_reply(
    make_gateway: Any, start_mock: Any
) -> None:
    client, server = await scripted_gateway(
        make_gateway, start_mock, scripted_model(["Partial ", "answer"], complete=False)
    )
    me = await local_agent(client)
    created = await me.json("POST", CONVERSATIONS, {"model": "fake-model"}, status=201)

    events = await send_message(me, created["id"], "Tell me everything")
    assert [event["type"] for event in events] == ["delta", "delta", "error"], events
    assert reply_text(events) == "Partial answer"
    message = events[-1]["message"]
    assert isinstance(message, str) and message
    assert str(server.port) not in message and "http" not in message

    async def partial_reply_stored() -> bool:
        found = await me.json("GET", f"{CONVERSATIONS}/{created['id']}")
        return [(m["role"], m["content"]) for m in found["messages"]] == [
            ("user", "Tell me everything"),
            ("assistant", "Partial answer"),
        ]

    await eventually(partial_reply_stored, "the partial reply to be stored")
