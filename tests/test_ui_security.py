"""The UI's outer defences: the sidecar's own IP allowlist, security headers on every /ui
response, the tokenless (but CSRF-protected) mode with accounts off, the login throttle
under concurrent guessing, and crash safety of the chat history under ``kill -9``.

Gateways come from the app factory; the crash test runs the real ``python -m sidecar serve``
and ``python -m sidecar mock-backends`` processes on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.settings import UiSettings

from .conftest import TOKEN, backend_yaml, clean_env, free_port, gateway_yaml, mock_backend_yaml
from .test_ui_api import (
    CONVERSATIONS,
    CSRF_META,
    EVIL_ORIGIN,
    LOGIN,
    LOOPBACK,
    PASSWORD,
    SETTINGS_API,
    Agent,
    add_user,
    anonymous,
    error_code,
    local_agent,
    send_message,
)

ROOT = Path(__file__).resolve().parents[1]
FREE_LOGIN_ATTEMPTS = 5  # failures allowed before an account is locked
BEARER = {"Authorization": f"Bearer {TOKEN}"}
CHAT = {"model": "mock-llama", "messages": [{"role": "user", "content": "hi"}]}
REFERRER_POLICIES = {
    "no-referrer",
    "same-origin",
    "strict-origin",
    "strict-origin-when-cross-origin",
}
INLINE_HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.IGNORECASE)
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\ssrc=)[^>]*>", re.IGNORECASE)


def assert_ui_headers(response: aiohttp.ClientResponse, what: str) -> None:
    """The security headers every /ui response must carry."""
    headers = response.headers
    csp = headers.get("Content-Security-Policy", "")
    directives = {}
    for part in csp.split(";"):
        words = part.split()
        if words:
            directives[words[0].lower()] = words[1:]
    script_src = directives.get("script-src", directives.get("default-src"))
    assert script_src, (what, csp)
    assert "'unsafe-inline'" not in script_src and "'unsafe-eval'" not in script_src, (what, csp)
    assert "*" not in script_src and "data:" not in script_src, (what, csp)
    assert directives.get("default-src"), (what, csp)
    assert directives.get("frame-ancestors") == ["'none'"], (what, csp)
    assert headers.get("X-Frame-Options") == "DENY", (what, headers)
    assert headers.get("Referrer-Policy") in REFERRER_POLICIES, (what, headers)
    assert headers.get("X-Content-Type-Options") == "nosniff", (what, headers)


def assert_no_inline_script(html: str, what: str) -> None:
    """CSP forbids inline script: pages load scripts only from files."""
    assert not INLINE_SCRIPT.search(html), (what, INLINE_SCRIPT.search(html))
    assert not INLINE_HANDLER.search(html), (what, INLINE_HANDLER.search(html))


# -- the sidecar's own IP allowlist --------------------------------------------------------


@pytest.mark.parametrize(
    "allowlist",
    [(), (ipaddress.ip_network("10.0.0.0/8"),)],
    ids=["empty", "other-network"],
)
async def test_the_ui_is_closed_to_addresses_outside_the_allowlist(
    make_gateway: Any, start_mock: Any, allowlist: tuple[Any, ...]
) -> None:
    backend = await start_mock()
    client = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend)),
        ui=UiSettings(accounts=True),
        ui_ip_allowlist=allowlist,
    )
    # A forged forwarding header does not open it (no trusted proxy is configured). A
    # browser (Accept: text/html) gets the page; without it, the JSON error (below).
    spoofed = {"X-Forwarded-For": "10.1.2.3", "X-Real-IP": "10.1.2.3", "Accept": "text/html"}

    for path in ("/ui", "/ui/login", "/ui/images", "/ui/admin/users", "/ui/static/app.css"):
        response = await client.get(path, headers=spoofed, allow_redirects=False)
        html = await response.text()
        assert response.status == 403, (path, html[:300])
        assert response.content_type == "text/html", path
        assert "UI_IP_ALLOWLIST" in html and "127.0.0.1" in html, html
        assert_ui_headers(response, path)
        assert not CSRF_META.search(html)  # no token handed out to a closed address

    for method, path in (
        ("GET", CONVERSATIONS),
        ("GET", "/ui/api/auth/me"),
        ("POST", LOGIN),
        ("POST", CONVERSATIONS),
    ):
        response = await client.request(
            method, path, json={"username": "x", "password": "y"}, headers=spoofed
        )
        assert response.status == 403, (path, await response.text())
        assert response.content_type == "application/json"
        body = await response.json()
        assert error_code(body) == "ui_closed"
        assert "UI_IP_ALLOWLIST" in body["error"]["message"]
        assert_ui_headers(response, path)

    # The OpenAI API is not the UI: unaffected.
    response = await client.get("/v1/models", headers=BEARER)
    assert response.status == 200
    response = await client.post("/v1/chat/completions", json=CHAT, headers=BEARER)
    assert response.status == 200, await response.text()
    assert "Content-Security-Policy" not in response.headers


# -- security headers ----------------------------------------------------------------------


async def test_every_ui_response_carries_the_security_headers(
    make_gateway: Any, start_mock: Any
) -> None:
    backend = await start_mock()
    client = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend)),
        ui=UiSettings(accounts=True),
        ui_ip_allowlist=LOOPBACK,
    )
    checks = [
        ("GET", "/ui/login", 200),  # a page
        ("GET", "/ui", 303),  # a page's redirect to the login page
        ("GET", "/ui/music", 303),
        ("GET", "/ui/static/app.css", 200),  # an asset
        ("GET", "/ui/static/common.js", 200),
        ("GET", "/ui/static/no-such-file.js", 404),
        ("GET", CONVERSATIONS, 401),  # the API, an error
        ("GET", "/ui/api/no-such-route", 401),  # no session: nothing is revealed
        ("POST", LOGIN, 403),  # CSRF refusal
        ("GET", "/ui/no-such-page", 303),
    ]
    for method, path, status in checks:
        response = await client.request(method, path, allow_redirects=False)
        text = await response.text()
        assert response.status == status, (method, path, text[:300])
        assert_ui_headers(response, f"{method} {path}")
        if response.content_type == "text/html":
            assert_no_inline_script(text, path)
    response = await client.get("/ui/static/app.css")
    assert response.content_type == "text/css"


async def test_pages_api_and_streams_carry_the_headers_with_accounts_off(
    make_gateway: Any, start_mock: Any
) -> None:
    backend = await start_mock()
    client = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend)), ui_ip_allowlist=LOOPBACK
    )
    me = await local_agent(client)
    for path in ("/ui", "/ui/images", "/ui/music"):
        response = await me.call("GET", path, csrf=False)
        html = await response.text()
        assert response.status == 200, (path, html[:300])
        assert_ui_headers(response, path)
        assert_no_inline_script(html, path)
    created = await me.json("POST", CONVERSATIONS, {"model": "mock-llama"}, status=201)
    response = await me.call("POST", f"{CONVERSATIONS}/{created['id']}/messages", {"content": "x"})
    assert response.status == 200 and response.content_type == "text/event-stream"
    assert_ui_headers(response, "the message stream")
    for method, path, status, csrf in (
        ("GET", CONVERSATIONS, 200, False),
        ("GET", f"{CONVERSATIONS}/999999", 404, False),
        ("GET", "/ui/api/no-such-route", 404, False),
        ("GET", "/ui/no-such-page", 404, False),
        ("DELETE", "/ui/api/auth/me", 405, True),
        ("POST", CONVERSATIONS, 403, False),  # without the token
    ):
        response = await me.call(method, path, csrf=csrf)
        assert response.status == status, (method, path, await response.text())
        assert_ui_headers(response, f"{method} {path}")


# -- accounts off --------------------------------------------------------------------------


async def test_with_accounts_off_the_ui_runs_tokenless_but_csrf_protected(
    make_gateway: Any, start_mock: Any
) -> None:
    backend = await start_mock()
    client = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend)), ui_ip_allowlist=LOOPBACK
    )
    me = Agent(client)
    # Reading needs no login and no token.
    assert await me.json("GET", "/ui/api/auth/me") == {"user": None, "accounts_enabled": False}
    assert await me.json("GET", CONVERSATIONS) == {"data": []}
    response = await me.call("GET", "/ui/login")
    assert response.status == 303 and response.headers["Location"] == "/ui"

    # Writing still needs the page's token, from this site.
    for kwargs in (
        {"csrf": False},
        {"headers": {"X-CSRF-Token": "guess"}},
    ):
        response = await me.call("POST", CONVERSATIONS, {"title": "forged"}, **kwargs)
        assert response.status == 403, await response.text()
        assert error_code(await response.json()) == "csrf_failed"
    await me.page_csrf("/ui")
    for headers in ({"Origin": EVIL_ORIGIN}, {"Sec-Fetch-Site": "cross-site"}):
        response = await me.call("POST", CONVERSATIONS, {"title": "forged"}, headers=headers)
        assert response.status == 403, await response.text()
    response = await me.call("PUT", SETTINGS_API, {"system_prompt": "forged"}, csrf=False)
    assert response.status == 403
    assert await me.json("GET", CONVERSATIONS) == {"data": []}
    assert (await me.json("GET", SETTINGS_API))["system_prompt"] == ""

    created = await me.json("POST", CONVERSATIONS, {"title": "local"}, status=201)
    events = await send_message(me, created["id"], "hello")
    assert events[-1]["type"] == "done", events
    assert [c["id"] for c in (await me.json("GET", CONVERSATIONS))["data"]] == [created["id"]]
    settings = {"default_model": "mock-llama", "system_prompt": "Local.", "temperature": 1.0}
    assert await me.json("PUT", SETTINGS_API, settings) == settings

    # There are no accounts to log in to or manage.
    response = await me.call("POST", LOGIN, {"username": "local", "password": "whatever1"})
    assert response.status == 400 and error_code(await response.json()) == "accounts_off"
    for method in ("GET", "POST"):
        response = await me.call(method, "/ui/api/admin/users", {"username": "x"})
        assert response.status == 403, await response.text()
    response = await me.call("GET", "/ui/admin/users", csrf=False)
    assert response.status == 403


# -- login throttling under concurrency ----------------------------------------------------


async def test_concurrent_guesses_do_not_slip_past_the_login_throttle(
    make_gateway: Any, start_mock: Any
) -> None:
    """A burst of parallel wrong guesses for one account gets no more password checks
    than sequential ones would: guesses that arrive while one is being checked are
    refused at once (429), and the lock after five failures still comes."""
    backend = await start_mock()
    client = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend)),
        ui=UiSettings(accounts=True),
        ui_ip_allowlist=LOOPBACK,
    )
    await add_user(client, "zed")
    form = await anonymous(client)
    guesses = [{"username": "zed", "password": f"guess number {n}"} for n in range(12)]
    responses = await asyncio.gather(*(form.call("POST", LOGIN, guess) for guess in guesses))
    statuses = sorted(response.status for response in responses)
    assert set(statuses) <= {401, 429}, statuses
    failures = statuses.count(401)
    assert 1 <= failures <= FREE_LOGIN_ATTEMPTS, statuses
    while failures < FREE_LOGIN_ATTEMPTS:  # the rest of the free attempts, one at a time
        wrong = await form.call("POST", LOGIN, {"username": "zed", "password": "wrong"})
        assert wrong.status == 401
        failures += 1
    locked = await form.call("POST", LOGIN, {"username": "zed", "password": PASSWORD})
    assert locked.status == 429 and int(locked.headers["Retry-After"]) > 0


# -- crash safety: kill -9 during a burst of message writes -------------------------------


@dataclass
class Processes:
    running: list[asyncio.subprocess.Process]

    async def start(self, *args: str, env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sidecar", *args, cwd=ROOT, env=env, stdout=out, stderr=out
            )
        self.running.append(process)
        return process


@pytest.fixture
async def processes() -> AsyncIterator[Processes]:
    """Subprocesses started by a test; every one is killed at teardown."""
    started = Processes([])
    try:
        yield started
    finally:
        for process in started.running:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()


async def wait_until_up(
    session: aiohttp.ClientSession, url: str, process: asyncio.subprocess.Process, log: Path
) -> None:
    for _ in range(300):  # bounded: at most 300 x 0.05 s
        assert process.returncode is None, log.read_text(errors="replace")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with session.get(url) as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never came up:\n{log.read_text(errors='replace')}")


@dataclass
class Completed:
    conversation_id: int
    question: str
    reply: str
    message_id: int


async def test_kill_9_during_a_burst_of_messages_loses_no_committed_message(
    tmp_path: Path, processes: Processes
) -> None:
    backend_port, gateway_port = free_port(), free_port()
    backend_log, gateway_log = tmp_path / "backend.log", tmp_path / "gateway.log"
    backend = await processes.start(
        "mock-backends",
        "--port",
        str(backend_port),
        "--chunk-delay-ms",
        "5",
        env=clean_env(),
        log=backend_log,
    )
    config = tmp_path / "gateway.yaml"
    config.write_text(
        gateway_yaml(
            backend_yaml(
                "mock",
                f"http://127.0.0.1:{backend_port}/v1",
                **{"class": "mock", "models": "[mock-llama]", "health": "{readiness: false}"},
            )
        )
    )
    data_dir = tmp_path / "var"
    env = clean_env(
        GATEWAY_HOST="127.0.0.1",
        GATEWAY_PORT=str(gateway_port),
        GATEWAY_CONFIG=str(config),
        GATEWAY_CONFIG_POLL_S="0",
        GATEWAY_DATA_DIR=str(data_dir),
        GATEWAY_BEARER_TOKEN=TOKEN,
        USER_AUTH_ENABLED="false",
        UI_IP_ALLOWLIST="127.0.0.0/8",
        IMAGES_BACKEND="off",
    )
    gateway = await processes.start("serve", env=env, log=gateway_log)
    base = f"http://127.0.0.1:{gateway_port}"
    completed: list[Completed] = []
    answering: list[tuple[int, str]] = []  # questions whose reply had begun to stream
    kill_after = 15
    writers, per_writer = 3, 10  # a burst of 30 messages on three conversations
    killed = asyncio.Event()

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await wait_until_up(
            session, f"http://127.0.0.1:{backend_port}/healthz", backend, backend_log
        )
        await wait_until_up(session, f"{base}/healthz", gateway, gateway_log)
        async with session.get(f"{base}/ui") as page:
            assert page.status == 200, await page.text()
            found = CSRF_META.search(await page.text())
        assert found is not None
        headers = {"X-CSRF-Token": found.group(1)}

        conversation_ids = []
        for number in range(writers):
            async with session.post(
                f"{base}{CONVERSATIONS}", json={"title": f"burst {number}"}, headers=headers
            ) as response:
                assert response.status == 201, await response.text()
                conversation_ids.append((await response.json())["id"])

        def kill() -> None:
            if not killed.is_set():
                killed.set()
                os.kill(gateway.pid, signal.SIGKILL)

        async def writer(conversation_id: int) -> None:
            for number in range(per_writer):
                if killed.is_set():
                    return
                question = f"conversation {conversation_id} message {number}"
                url = f"{base}{CONVERSATIONS}/{conversation_id}/messages"
                deltas: list[str] = []
                try:
                    async with session.post(
                        url, json={"content": question}, headers=headers
                    ) as response:
                        assert response.status == 200, await response.text()
                        async for line in response.content:
                            if not line.startswith(b"data: "):
                                continue
                            event = json.loads(line[6:])
                            if event["type"] == "delta":
                                if not deltas:
                                    answering.append((conversation_id, question))
                                deltas.append(event["content"])
                                if len(completed) >= kill_after:
                                    kill()  # while this reply is being streamed
                            elif event["type"] == "done":
                                completed.append(
                                    Completed(
                                        conversation_id,
                                        question,
                                        "".join(deltas),
                                        event["message_id"],
                                    )
                                )
                            else:
                                raise AssertionError(f"unexpected event {event}")
                except (aiohttp.ClientError, OSError):
                    assert killed.is_set(), gateway_log.read_text(errors="replace")
                    return

        await asyncio.gather(*(writer(c) for c in conversation_ids))

    assert killed.is_set(), "the burst ended before the kill"
    assert await asyncio.wait_for(gateway.wait(), 30) == -signal.SIGKILL
    assert kill_after <= len(completed) < writers * per_writer

    database = data_dir / "users.sqlite3"
    with contextlib.closing(sqlite3.connect(database)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = db.execute(
            "SELECT id, conversation_id, role, content FROM messages ORDER BY id"
        ).fetchall()
    stored = {(conversation, role, content): row_id for row_id, conversation, role, content in rows}
    for done in completed:
        question = stored.get((done.conversation_id, "user", done.question))
        assert question is not None, f"lost the question {done.question!r}"
        assert done.reply == f"Mock reply to: {done.question}"
        answer = stored.get((done.conversation_id, "assistant", done.reply))
        assert answer == done.message_id, f"lost the reply to {done.question!r}"
        assert question < answer
    # A question is committed before the model is asked: those cut off by the kill are kept.
    for conversation_id, question in answering:
        assert (conversation_id, "user", question) in stored, question
