"""Hostile input and broken backends against the browser UI's API.

A conversation deleted while its reply streams, a model that never stops writing, a
client that makes conversations or fills one without end, an admin form sending a string
where a boolean belongs, and hostile bodies on every state-changing route: each gets an
answer in the UI API's error shape, a bounded store, and no traceback.

Gateways come from the app factory with the UI open to loopback (accounts off unless a
test needs an admin); fake model servers are real aiohttp apps on loopback. Limits are
lowered per test with ``monkeypatch`` so the tests stay small; the code reads them when
it runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.ui import api as ui_api
from sidecar.ui import chat as ui_chat

from .conftest import gateway_yaml, mock_backend_yaml
from .test_ui_api import (
    ADMIN_USERS,
    CONVERSATIONS,
    LOOPBACK,
    SETTINGS_API,
    Agent,
    Stack,
    add_user,
    error_code,
    eventually,
    local_agent,
    log_in,
    parse_events,
    send_message,
)
from .test_ui_api import accounts as accounts  # the fixtures, re-exported
from .test_ui_api import no_accounts as no_accounts

READ_S = 10.0  # a bound on reading one stream; a hung stream fails the test, never hangs it
CHUNK = "x" * 100


def content_chunk(text: str) -> bytes:
    chunk = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


async def fake_model_gateway(
    make_gateway: Any, start_mock: Any, chat: Any
) -> tuple[TestClient, Agent]:
    """A gateway (accounts off) whose one backend serves ``fake-model`` with ``chat``."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = await start_mock(app)
    client = await make_gateway(
        gateway_yaml(
            mock_backend_yaml("fake", server, models="[fake-model]", health="{readiness: false}")
        ),
        ui_ip_allowlist=LOOPBACK,
    )
    return client, await local_agent(client)


async def messages_of(agent: Agent, conversation_id: int) -> list[dict[str, Any]]:
    body = await agent.json("GET", f"{CONVERSATIONS}/{conversation_id}")
    return list(body["messages"])


def unhandled(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


# -- a reply whose conversation goes away -----------------------------------------------------


async def test_a_conversation_deleted_while_its_reply_streams_ends_the_stream_cleanly(
    make_gateway: Any, start_mock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(content_chunk("hello"))
        started.set()
        await release.wait()
        await response.write(content_chunk(" world"))
        await response.write(b"data: [DONE]\n\n")
        return response

    client, me = await fake_model_gateway(make_gateway, start_mock, chat)
    created = await me.json("POST", CONVERSATIONS, {"title": "doomed"}, status=201)
    path = f"{CONVERSATIONS}/{created['id']}"
    sending = asyncio.ensure_future(
        client.post(f"{path}/messages", json={"content": "hi"}, headers=me.headers())
    )
    try:
        await asyncio.wait_for(started.wait(), READ_S)
        assert (await me.call("DELETE", path)).status == 204
        release.set()
        response = await asyncio.wait_for(sending, READ_S)
        assert response.status == 200
        # Before: the reply's store failed on the vanished conversation, the handler
        # raised after the stream began, and the stream never ended (nor said why).
        events = parse_events(await asyncio.wait_for(response.read(), READ_S))
    finally:
        release.set()
        sending.cancel()
    assert [e["type"] for e in events] == ["delta", "delta", "error"], events
    assert "deleted" in events[-1]["message"]
    assert not unhandled(caplog), unhandled(caplog)
    gone = await me.call("GET", path)
    assert gone.status == 404 and error_code(await gone.json()) == "conversation_not_found"
    # The UI still works for the next conversation.
    other = await me.json("POST", CONVERSATIONS, {}, status=201)
    assert [e["type"] for e in await send_message(me, other["id"], "again")][-1] == "done"


# -- a model that never stops -----------------------------------------------------------------


async def test_a_reply_that_never_ends_is_cut_kept_and_its_upstream_closed(
    make_gateway: Any, start_mock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ui_chat, "MAX_REPLY", 1000, raising=False)
    total = 5000  # chunks of 100 characters: 500 times the cap, if nobody stops it
    written: list[int] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        sent = 0
        try:
            for _ in range(total):
                if request.transport is None or request.transport.is_closing():
                    break  # the gateway hung up
                await response.write(content_chunk(CHUNK))
                sent += 1
                await asyncio.sleep(0)  # a turn of the loop: lets it see a hang-up
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionError, RuntimeError):
            pass  # the gateway closed the call
        finally:
            written.append(sent)
        return response

    _, me = await fake_model_gateway(make_gateway, start_mock, chat)
    created = await me.json("POST", CONVERSATIONS, {}, status=201)
    response = await me.call("POST", f"{CONVERSATIONS}/{created['id']}/messages", {"content": "go"})
    assert response.status == 200, await response.text()
    events = parse_events(await response.read())
    shown = "".join(e["content"] for e in events if e["type"] == "delta")
    assert len(shown) == 1000, len(shown)  # before: all 500,000 characters
    assert events[-1]["type"] == "error" and "1000" in events[-1]["message"], events[-1]
    stored = await messages_of(me, created["id"])
    assert [(m["role"], len(m["content"]), m["stopped"]) for m in stored] == [
        ("user", 2, False),
        ("assistant", 1000, True),
    ]
    await eventually(lambda: written, "the fake model's handler to end")
    assert written[0] < total, written  # the upstream call was closed, not read to its end


# -- how much one user may keep ---------------------------------------------------------------


async def test_conversations_per_user_are_capped_and_none_is_dropped(
    no_accounts: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ui_api, "MAX_CONVERSATIONS", 3, raising=False)
    me = await local_agent(no_accounts.client)
    made = [await me.json("POST", CONVERSATIONS, {"title": f"c{i}"}, status=201) for i in range(3)]
    refused = await me.call("POST", CONVERSATIONS, {"title": "one too many"})
    assert refused.status == 409, await refused.text()  # before: 201, without end
    assert error_code(await refused.json()) == "too_many_conversations"
    listed = (await me.json("GET", CONVERSATIONS))["data"]
    assert sorted(c["title"] for c in listed) == ["c0", "c1", "c2"]  # nothing dropped
    assert (await me.call("DELETE", f"{CONVERSATIONS}/{made[0]['id']}")).status == 204
    await me.json("POST", CONVERSATIONS, {"title": "room again"}, status=201)


async def test_a_full_conversation_takes_no_new_question(
    no_accounts: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ui_chat, "MAX_CONVERSATION", 100, raising=False)
    me = await local_agent(no_accounts.client)
    created = await me.json("POST", CONVERSATIONS, {}, status=201)
    path = f"{CONVERSATIONS}/{created['id']}"
    # The fake server answers "mock-reply:X" with X: 41 + 30 characters kept.
    first = await send_message(me, created["id"], "mock-reply:" + "a" * 30)
    assert first[-1]["type"] == "done", first
    before = await messages_of(me, created["id"])
    asked = len(no_accounts.received)

    refused = await me.call("POST", f"{path}/messages", {"content": "b" * 70})
    assert refused.status == 409, await refused.text()  # before: stored and sent on
    assert error_code(await refused.json()) == "conversation_full"
    assert await messages_of(me, created["id"]) == before
    assert len(no_accounts.received) == asked  # the model was not asked

    # An edit that would overfill it is refused whole: the rewind is not kept either.
    edit = {"edit": before[0]["id"], "content": "c" * 101}
    refused = await me.call("POST", f"{path}/messages", edit)
    assert refused.status == 409, await refused.text()
    assert await messages_of(me, created["id"]) == before
    # An edit that fits (it replaces what came after) and regenerate still work.
    response = await me.call("POST", f"{path}/messages", {**edit, "content": "c" * 50})
    assert response.status == 200, await response.text()
    assert parse_events(await response.read())[-1]["type"] == "done"
    response = await me.call("POST", f"{path}/messages", {"regenerate": True})
    assert response.status == 200, await response.text()
    assert parse_events(await response.read())[-1]["type"] == "done"


# -- wrong types --------------------------------------------------------------------------------


async def test_a_new_user_is_an_admin_only_for_is_admin_true(accounts: Stack) -> None:
    client = accounts.client
    await add_user(client, "root", admin=True)
    root = await log_in(client, "root")
    for value in ("false", "no", 0, 1, None, [], {}):
        body = {"username": "mallory", "password": "password-123", "is_admin": value}
        response = await root.call("POST", ADMIN_USERS, body)
        # before: bool("false") made mallory an admin
        assert response.status == 400, (value, await response.text())
        body = await response.json()
        assert error_code(body) == "invalid_request" and body["error"]["param"] == "is_admin"
    listed = (await root.json("GET", ADMIN_USERS))["data"]
    assert [user["username"] for user in listed] == ["root"]
    made = await root.json(
        "POST", ADMIN_USERS, {"username": "plain", "password": "password-123"}, status=201
    )
    assert made["is_admin"] is False


# -- hostile bodies on every state-changing route -----------------------------------------------

# Bodies no route may take (bad JSON of every kind), then bodies with bad fields, each
# sent to the routes whose fields they name.
UNREADABLE: list[tuple[str, bytes]] = [
    ("not-utf8", b'{"title": "\xff\xfe"}'),
    ("deep", b'{"title": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ("array", b"[1, 2, 3]"),
    ("nan", b'{"temperature": NaN, "title": NaN}'),
    ("surrogate", b'{"title": "\\ud800", "content": "\\ud800", "system_prompt": "\\ud800"}'),
    ("empty", b""),
]
BAD_FIELDS: list[tuple[str, bytes]] = [
    ("wrong-types", b'{"title": 5, "model": [], "content": {}, "edit": "1", "regenerate": 1}'),
    ("huge-fields", json.dumps({"title": "t" * 100_000, "model": "m" * 10_000}).encode()),
    ("bad-settings", b'{"default_model": 5, "system_prompt": ["x"], "temperature": "1"}'),
    ("huge-settings", json.dumps({"system_prompt": "p" * 100_000, "temperature": 1e300}).encode()),
]
CASES = [(name, raw, True) for name, raw in UNREADABLE] + [
    (name, raw, False) for name, raw in BAD_FIELDS
]


@pytest.mark.parametrize("name, raw, everywhere", CASES, ids=[case[0] for case in CASES])
async def test_hostile_bodies_get_a_4xx_in_the_ui_shape_and_change_nothing(
    no_accounts: Stack,
    caplog: pytest.LogCaptureFixture,
    name: str,
    raw: bytes,
    everywhere: bool,
) -> None:
    me = await local_agent(no_accounts.client)
    created = await me.json("POST", CONVERSATIONS, {"title": "kept"}, status=201)
    path = f"{CONVERSATIONS}/{created['id']}"
    settings = await me.json("GET", SETTINGS_API)
    conversation = [("POST", CONVERSATIONS), ("PATCH", path), ("POST", f"{path}/messages")]
    playgrounds = [("POST", "/ui/api/images"), ("POST", "/ui/api/music")]
    if everywhere:
        routes = [*conversation, ("PUT", SETTINGS_API), *playgrounds]
    else:
        routes = [("PUT", SETTINGS_API)] if "settings" in name else conversation
    for method, target in routes:
        response = await no_accounts.client.request(
            method,
            target,
            data=raw,
            headers=me.headers(**{"Content-Type": "application/json"}),
        )
        text = await response.text()
        assert 400 <= response.status < 500, (method, target, response.status, text[:300])
        assert error_code(json.loads(text)) is not None, text[:300]
        assert "Traceback" not in text and len(text) < 2000, text[:300]
    listed = (await me.json("GET", CONVERSATIONS))["data"]
    assert [(c["title"], c["model"]) for c in listed] == [("kept", None)]
    assert await messages_of(me, created["id"]) == []
    assert await me.json("GET", SETTINGS_API) == settings
    assert not no_accounts.received  # nothing reached a model
    assert not unhandled(caplog), unhandled(caplog)


# -- a fault after the stream began -------------------------------------------------------------


async def test_a_fault_after_a_stream_began_ends_the_connection_never_hangs_it(
    make_gateway: Any,
    start_mock: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler that fails after its response's head went out cannot send a status: the
    connection is closed, so the client sees the response end early; the fault is logged
    once, and the next request is answered."""

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(content_chunk("hello"))
        await response.write(content_chunk(" world"))
        await response.write(b"data: [DONE]\n\n")
        return response

    client, me = await fake_model_gateway(make_gateway, start_mock, chat)
    real_delta = ui_chat._delta
    seen: list[bytes] = []

    def faulty_delta(event: bytes) -> str | None:  # a bug on the second event
        seen.append(event)
        if len(seen) == 2:
            raise RuntimeError("a bug in the relay")
        return real_delta(event)

    monkeypatch.setattr(ui_chat, "_delta", faulty_delta)
    created = await me.json("POST", CONVERSATIONS, {}, status=201)
    path = f"{CONVERSATIONS}/{created['id']}/messages"
    response = await client.post(path, json={"content": "hi"}, headers=me.headers())
    assert response.status == 200
    # Before: a second head (a 500) inside the chunked body, which no client can read.
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(response.read(), READ_S)
    faults = [r for r in caplog.records if r.exc_info]
    assert len(faults) == 1 and "after the response began" in faults[0].getMessage(), faults
    monkeypatch.setattr(ui_chat, "_delta", real_delta)
    assert [e["type"] for e in await send_message(me, created["id"], "again")][-1] == "done"


async def test_a_reply_piece_that_is_not_text_is_skipped(
    make_gateway: Any, start_mock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A backend's ``content`` of a number or a list is no text to show, count or keep."""

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for content in (5, ["x"], {"a": 1}, "hello"):
            chunk = {"choices": [{"index": 0, "delta": {"content": content}}]}
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    _, me = await fake_model_gateway(make_gateway, start_mock, chat)
    created = await me.json("POST", CONVERSATIONS, {}, status=201)
    events = await send_message(me, created["id"], "hi")
    assert [e["type"] for e in events] == ["delta", "done"], events  # before: cut, a traceback
    assert events[0]["content"] == "hello"
    assert not unhandled(caplog), unhandled(caplog)
    stored = await messages_of(me, created["id"])
    assert [(m["role"], m["content"]) for m in stored] == [("user", "hi"), ("assistant", "hello")]


async def test_a_session_cookie_that_is_not_utf8_is_no_session_not_a_500(
    accounts: Stack,
) -> None:
    """The cookie's bytes are looked up as sent: 0xFF in one (a proxy passes it through)
    is an unknown session, answered like any other."""
    server = accounts.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(
            b"GET " + CONVERSATIONS.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Cookie: __Host-gw_session=ab\xffcd\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), READ_S)
    finally:
        writer.close()
    assert status.startswith(b"HTTP/1.1 401"), status  # before: 500
