"""The UI API behind daily chat: stopped replies, regenerate, edit, the model picker, the
status page, and the history of generated images and songs.

Gateways come from the app factory with accounts off (the local user; no bcrypt) unless a
test needs an admin; fake model servers are real aiohttp apps on loopback. A reply is
chosen by starting the message with ``mock-reply:`` (the fake server's hook).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import aiohttp

from sidecar.settings import ImagesSettings, UiSettings
from sidecar.typedefs import IMAGE_STORE, REGISTRY, RELOADER, SETTINGS, UI_STATE
from sidecar.users.db import MIGRATIONS, Database

from .conftest import gateway_yaml, mock_backend_yaml, status_of
from .test_ui_api import (
    CONVERSATIONS,
    LOOPBACK,
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

WORDS = " ".join(f"w{i}" for i in range(200))


async def conversation(agent: Agent) -> int:
    created = await agent.json("POST", CONVERSATIONS, {}, status=201)
    return int(created["id"])


async def stored(agent: Agent, conversation_id: int) -> list[dict[str, Any]]:
    body = await agent.json("GET", f"{CONVERSATIONS}/{conversation_id}")
    return list(body["messages"])


async def post(agent: Agent, conversation_id: int, body: dict[str, Any]) -> aiohttp.ClientResponse:
    return await agent.call("POST", f"{CONVERSATIONS}/{conversation_id}/messages", body)


# -- stop -------------------------------------------------------------------------------------


async def test_a_reply_whose_browser_goes_away_is_kept_marked_stopped(
    make_gateway: Any, start_mock: Any
) -> None:
    backend = await start_mock(chunk_delay_ms=30, chunks=200)
    client = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend)), ui_ip_allowlist=LOOPBACK
    )
    agent = await local_agent(client)
    conversation_id = await conversation(agent)
    response = await client.post(
        f"{CONVERSATIONS}/{conversation_id}/messages",
        json={"content": "mock-reply:" + WORDS, "model": "mock-llama"},
        headers=agent.headers(),
    )
    assert response.status == 200
    question_id = int(response.headers["X-User-Message-Id"])
    seen = b""
    while b"w3 " not in seen:  # read a few words, then go away like the Stop button
        seen += await response.content.readany()
    response.close()

    async def kept() -> bool:
        messages = await stored(agent, conversation_id)
        return len(messages) == 2

    await eventually(kept, "the partial reply to be stored")
    question, reply = await stored(agent, conversation_id)
    assert question == {**question, "id": question_id, "role": "user", "stopped": False}
    assert reply["role"] == "assistant" and reply["stopped"] is True
    assert reply["content"].startswith("w0 w1 w2 w3") and "w199" not in reply["content"]

    async def slot_free() -> bool:
        return (await status_of(client, "mock", "chat"))["in_flight"] == 0

    await eventually(slot_free, "the admission slot to be freed")


async def test_a_finished_reply_is_not_marked_stopped(no_accounts: Stack) -> None:
    agent = await local_agent(no_accounts.client)
    conversation_id = await conversation(agent)
    events = await send_message(agent, conversation_id, "hello")
    assert events[-1]["type"] == "done"
    assert [m["stopped"] for m in await stored(agent, conversation_id)] == [False, False]


# -- regenerate and edit ----------------------------------------------------------------------


async def test_regenerate_answers_the_last_question_again(no_accounts: Stack) -> None:
    agent = await local_agent(no_accounts.client)
    conversation_id = await conversation(agent)
    await send_message(agent, conversation_id, "first")
    await send_message(agent, conversation_id, "second")
    before = await stored(agent, conversation_id)

    response = await post(agent, conversation_id, {"regenerate": True})
    assert response.status == 200, await response.text()
    assert int(response.headers["X-User-Message-Id"]) == before[2]["id"]
    events = parse_events(await response.read())
    assert events[-1]["type"] == "done"
    after = await stored(agent, conversation_id)
    assert [(m["role"], m["content"]) for m in after] == [
        ("user", "first"),
        ("assistant", "Mock reply to: first"),
        ("user", "second"),
        ("assistant", "Mock reply to: second"),
    ]
    assert after[:3] == before[:3]  # the question is kept as it was
    # The model saw the history once, with the question last (not twice).
    sent = no_accounts.received[-1].body["messages"]
    assert [m["content"] for m in sent] == ["first", "Mock reply to: first", "second"]


async def test_edit_replaces_a_message_and_drops_what_came_after(no_accounts: Stack) -> None:
    agent = await local_agent(no_accounts.client)
    conversation_id = await conversation(agent)
    await send_message(agent, conversation_id, "first")
    await send_message(agent, conversation_id, "second")
    first = (await stored(agent, conversation_id))[0]

    response = await post(agent, conversation_id, {"content": "changed", "edit": first["id"]})
    assert response.status == 200, await response.text()
    assert parse_events(await response.read())[-1]["type"] == "done"
    after = await stored(agent, conversation_id)
    assert [(m["role"], m["content"]) for m in after] == [
        ("user", "changed"),
        ("assistant", "Mock reply to: changed"),
    ]
    assert [m["content"] for m in no_accounts.received[-1].body["messages"]] == ["changed"]


async def test_regenerate_and_edit_refuse_what_they_cannot_do(no_accounts: Stack) -> None:
    agent = await local_agent(no_accounts.client)
    conversation_id = await conversation(agent)
    empty = await post(agent, conversation_id, {"regenerate": True})
    assert empty.status == 400 and error_code(await empty.json()) == "invalid_request"
    await send_message(agent, conversation_id, "first")
    reply = (await stored(agent, conversation_id))[1]
    cases = [
        ({"content": "x", "edit": reply["id"]}, 404),  # not a message the user sent
        ({"content": "x", "edit": 10**12}, 404),
        ({"content": "x", "edit": "1"}, 400),
        ({"content": "x", "edit": True}, 400),
        ({"regenerate": "yes"}, 400),
        ({"edit": 1}, 400),  # an edit needs the new text
    ]
    for body, status in cases:
        response = await post(agent, conversation_id, body)
        assert response.status == status, (body, await response.text())
        error_code(await response.json())
    assert len(await stored(agent, conversation_id)) == 2  # nothing was dropped
    other = await conversation(agent)
    response = await post(agent, other, {"content": "x", "edit": reply["id"] - 1})
    assert response.status == 404  # another conversation's message


# -- models and status ------------------------------------------------------------------------


async def test_the_picker_lists_chat_models_with_their_backends_readiness(
    make_gateway: Any, start_mock: Any
) -> None:
    up, down = await start_mock(), await start_mock()
    client = await make_gateway(
        gateway_yaml(
            mock_backend_yaml("mock", up),
            mock_backend_yaml("other", down, models="[{id: other-llama, capabilities: [chat]}]"),
            aliases="""
                default: {backend: mock, model: mock-llama}
                vectors: {backend: mock, model: mock-embed}
            """,
        ),
        ui_ip_allowlist=LOOPBACK,
    )
    client.server.app[REGISTRY].current.backends["other"].health.state = "down"
    agent = await local_agent(client)
    models = (await agent.json("GET", "/ui/api/models"))["data"]
    assert models == [
        {"id": "default", "available": True},
        {"id": "mock-llama", "available": True},
        {"id": "other-llama", "available": False},
    ]
    page = await (await agent.call("GET", "/ui", csrf=False)).text()
    assert "mock-embed" not in page and "vectors" not in page
    assert '<option value="other-llama" disabled>other-llama (down)</option>' in page


async def test_status_shows_health_to_users_and_everything_to_admins(accounts: Stack) -> None:
    client = accounts.client
    await add_user(client, "root", admin=True)
    await add_user(client, "bea")
    admin, user = await log_in(client, "root"), await log_in(client, "bea")

    seen = await user.json("GET", "/ui/api/status")
    assert seen["admin"] is False and "config" not in seen
    assert seen["backends"] == [{"name": "mock", "health": seen["backends"][0]["health"]}]

    full = await admin.json("GET", "/ui/api/status")
    assert full["admin"] is True
    backend = full["backends"][0]
    assert set(backend) == {"name", "health", "checked_at", "last_error", "capabilities"}
    assert backend["capabilities"]["chat"] == {
        "in_flight": 0,
        "limit": backend["capabilities"]["chat"]["limit"],
        "queued": 0,
        "queue_max": 0,
    }
    assert full["config"]["last_reload"]["ok"] is True
    page = await admin.call("GET", "/ui/status", csrf=False)
    assert page.status == 200 and "status.js" in await page.text()


async def test_status_after_a_refused_reload_names_it_for_admins(
    make_gateway: Any, start_mock: Any
) -> None:
    backend = await start_mock()
    client = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend)),
        ui=UiSettings(accounts=True),
        ui_ip_allowlist=LOOPBACK,
    )
    await add_user(client, "root", admin=True)
    admin = await log_in(client, "root")
    config_path: Path = client.server.app[SETTINGS].config_path
    config_path.write_text("version: 1\nbackends: {broken: {url: 12}}\n")
    await client.server.app[RELOADER].reload("test")
    last = (await admin.json("GET", "/ui/api/status"))["config"]["last_reload"]
    assert last["ok"] is False and last["issues"] >= 1 and last["error"]


# -- history of images and songs --------------------------------------------------------------


async def test_generated_images_are_kept_and_deleting_removes_the_file(
    make_gateway: Any, start_mock: Any
) -> None:
    backend = await start_mock()
    client = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend)),
        ui_ip_allowlist=LOOPBACK,
        images=ImagesSettings(backend="mock"),
    )
    agent = await local_agent(client)
    made = await agent.json("POST", "/ui/api/images", {"prompt": "a red fox", "size": "256x256"})
    again = await agent.json("POST", "/ui/api/images", {"prompt": "a red fox", "size": "256x256"})
    other = await agent.json("POST", "/ui/api/images", {"prompt": "a blue owl", "size": "256x256"})
    items = (await agent.json("GET", "/ui/api/history/image"))["data"]
    assert [item["prompt"] for item in items] == ["a blue owl", "a red fox", "a red fox"]
    assert [i["id"] for i in items] == [
        other["history"][0]["id"],
        again["history"][0]["id"],
        made["history"][0]["id"],
    ]
    assert items[0]["details"] == {"size": "256x256"}
    # A listed link is signed afresh and opens the image.
    image = await client.get(items[0]["url"])
    assert image.status == 200 and image.content_type == "image/svg+xml"

    store = client.server.app[IMAGE_STORE]
    name = items[1]["url"].split("?")[0].rsplit("/", 1)[-1]
    assert items[2]["url"].split("?")[0].endswith(name)  # the same picture twice: one file
    assert store.path(name) is not None
    assert (await agent.call("DELETE", f"/ui/api/history/items/{items[1]['id']}")).status == 204
    assert store.path(name) is not None  # the other item still refers to it
    assert (await agent.call("DELETE", f"/ui/api/history/items/{items[2]['id']}")).status == 204
    assert store.path(name) is None  # nothing does now
    left = (await agent.json("GET", "/ui/api/history/image"))["data"]
    assert [item["prompt"] for item in left] == ["a blue owl"]
    owl = left[0]["url"].split("?")[0].rsplit("/", 1)[-1]
    path = store.path(owl)
    assert path is not None
    path.unlink()  # as the image store's pruning by age would
    assert (await agent.json("GET", "/ui/api/history/image"))["data"] == []
    for path in (f"/ui/api/history/items/{items[2]['id']}", "/ui/api/history/items/x1"):
        gone = await agent.call("DELETE", path)
        assert gone.status == 404 and error_code(await gone.json()) == "item_not_found"
    missing = await agent.call("GET", "/ui/api/history/videos")
    assert missing.status == 404


async def test_one_users_history_is_not_anothers(accounts: Stack) -> None:
    client = accounts.client
    await add_user(client, "ann")
    await add_user(client, "bob")
    ann, bob = await log_in(client, "ann"), await log_in(client, "bob")
    item_id = await client.server.app[UI_STATE].users.run(
        lambda db: db.add_media(db.user_by_name("ann")[0].id, "music", "a song", "s.wav", {})
    )
    assert [i["prompt"] for i in (await ann.json("GET", "/ui/api/history/music"))["data"]] == [
        "a song"
    ]
    assert (await bob.json("GET", "/ui/api/history/music"))["data"] == []
    refused = await bob.call("DELETE", f"/ui/api/history/items/{item_id}")
    assert refused.status == 404
    assert len((await ann.json("GET", "/ui/api/history/music"))["data"]) == 1
    assert (await ann.json("GET", "/ui/api/history/music"))["data"][0]["url"] == (
        "/ui/heartmula/audio/s.wav"
    )


# -- the database ----------------------------------------------------------------------------


def test_an_existing_database_gains_the_new_columns_and_keeps_its_messages(
    tmp_path: Path,
) -> None:
    path = tmp_path / "users.sqlite3"
    old = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:2], start=1):
        old.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
    old.execute("INSERT INTO users VALUES (1, 'ann', '!', 0, 0, 0)")
    old.execute("INSERT INTO conversations VALUES (1, 1, 't', NULL, 0, 0)")
    old.execute("INSERT INTO messages VALUES (1, 1, 'user', 'hi', 0)")
    old.close()
    database = Database(path)
    try:
        assert database.messages(1) == [
            {"id": 1, "role": "user", "content": "hi", "created_at": 0, "stopped": False}
        ]
        assert database.media(1, "image") == []
    finally:
        database.close()


def test_a_users_history_is_bounded(tmp_path: Path) -> None:
    database = Database(tmp_path / "users.sqlite3")
    try:
        user = database.local_user()
        ids = [
            database.add_media(user.id, "music", f"s{i}", f"{i}.wav", {}, keep=3) for i in range(5)
        ]
        database.add_media(user.id, "image", "i", "x.png", {}, keep=3)
        assert [item["id"] for item in database.media(user.id, "music")] == ids[:1:-1]
        assert len(database.media(user.id, "image")) == 1  # counted per kind
    finally:
        database.close()
