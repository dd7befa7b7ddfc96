"""The UI and the models: lifecycle states and Load / Unload on the status page, the chat
picker's per-model capabilities, an empty reply, and storing a question atomically.

Gateways come from the app factory; the models the gateway runs are real fake model
servers (``gateway mock-backends --kind model-server``) started as subprocesses, the
others real aiohttp apps on loopback. Every wait is on a condition.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from sidecar.settings import UiSettings
from sidecar.typedefs import REGISTRY
from sidecar.users.db import Database

from .conftest import gateway_yaml, mock_backend_yaml
from .test_lifecycle import config, process_backend
from .test_ui_api import (
    CONVERSATIONS,
    LOOPBACK,
    SCRIPTED_RECEIVED,
    Agent,
    add_user,
    error_code,
    eventually,
    local_agent,
    log_in,
    scripted_gateway,
    scripted_model,
    send_message,
)

pytestmark = pytest.mark.timeout(120)
STATUS = "/ui/api/status"
PUBLIC = {"id", "backend", "state"}


async def models_of(agent: Agent) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in (await agent.json("GET", STATUS))["models"]}


async def wait_state(agent: Agent, model: str, state: str) -> dict[str, Any]:
    async def reached() -> bool:
        return (await models_of(agent))[model]["state"] == state

    await eventually(reached, f"{model} to be {state}")
    return (await models_of(agent))[model]


@pytest.fixture
async def lifecycle_ui(make_gateway: Any) -> tuple[Agent, Agent]:
    """A gateway running one model on demand, with accounts on: (admin, user)."""
    client = await make_gateway(
        config(process_backend("local", "tiny-llama", ttl_s=0)),
        ui=UiSettings(accounts=True),
        ui_ip_allowlist=LOOPBACK,
    )
    await add_user(client, "root", admin=True)
    await add_user(client, "bea")
    return await log_in(client, "root"), await log_in(client, "bea")


async def test_the_status_shows_model_states_and_an_admin_loads_and_unloads(
    lifecycle_ui: tuple[Agent, Agent],
) -> None:
    admin, user = lifecycle_ui
    seen = await models_of(user)
    assert seen == {"tiny-llama": {"id": "tiny-llama", "backend": "local", "state": "unloaded"}}
    full = (await models_of(admin))["tiny-llama"]
    assert full["state"] == "unloaded" and full["loaded_since"] is None
    assert {"idle_s", "memory_mb", "group", "last_load_s", "error"} <= set(full)

    answer = await admin.json("POST", "/ui/api/models/tiny-llama/load", {}, status=202)
    assert answer["id"] == "tiny-llama" and answer["state"] in ("unloaded", "loading", "loaded")
    loaded = await wait_state(admin, "tiny-llama", "loaded")
    assert isinstance(loaded["loaded_since"], float) and loaded["last_load_s"] > 0
    assert loaded["idle_s"] is not None and loaded["error"] is None
    assert (await models_of(user))["tiny-llama"] == {
        "id": "tiny-llama",
        "backend": "local",
        "state": "loaded",
    }

    # Without a body works too (and the backend's name names its model).
    response = await admin.call("POST", "/ui/api/models/local/unload")
    assert response.status == 202, await response.text()
    await wait_state(admin, "tiny-llama", "unloaded")
    assert set((await models_of(user))["tiny-llama"]) == PUBLIC


async def test_model_actions_are_for_admins_with_the_csrf_token_and_strict_json(
    lifecycle_ui: tuple[Agent, Agent],
) -> None:
    admin, user = lifecycle_ui
    for action in ("load", "unload"):
        response = await user.call("POST", f"/ui/api/models/tiny-llama/{action}", {})
        assert response.status == 403, await response.text()
        assert error_code(await response.json()) == "admin_only"
        for refused in ({"csrf": False}, {"headers": {"X-CSRF-Token": "forged"}}):
            response = await admin.call(
                "POST", f"/ui/api/models/tiny-llama/{action}", {}, **refused
            )
            assert response.status == 403
            assert error_code(await response.json()) == "csrf_failed"
        response = await admin.call("POST", f"/ui/api/models/no-such-model/{action}", {})
        assert response.status == 404
        assert error_code(await response.json()) == "model_not_found"
        assert "no-such-model" in (await response.json())["error"]["message"]
    for body, expected in ((b"{'wait': 1}", 400), (b'{"a": NaN}', 400), (b'{"wait": true}', 400)):
        response = await admin.client.post(
            "/ui/api/models/tiny-llama/load",
            data=body,
            headers=admin.headers(**{"Content-Type": "application/json"}),
        )
        assert response.status == expected, (body, await response.text())
        assert error_code(await response.json()) is not None
    # Nothing above loaded it.
    assert (await models_of(admin))["tiny-llama"]["state"] == "unloaded"


async def test_with_accounts_off_nobody_loads_and_states_show(make_gateway: Any) -> None:
    client = await make_gateway(
        config(process_backend("local", "tiny-llama")), ui_ip_allowlist=LOOPBACK
    )
    me = await local_agent(client)
    response = await me.call("POST", "/ui/api/models/tiny-llama/load", {})
    assert response.status == 403
    assert await models_of(me) == {
        "tiny-llama": {"id": "tiny-llama", "backend": "local", "state": "unloaded"}
    }


async def test_the_picker_leaves_out_a_discovered_embeddings_model(
    make_gateway: Any, start_mock: Any
) -> None:
    backend = await start_mock(embedding_models=("nomic-embed-text",))
    client = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend, models="null", health="{interval_s: 1}")),
        ui_ip_allowlist=LOOPBACK,
    )

    async def discovered() -> bool:
        found = client.server.app[REGISTRY].current.backends["mock"].discovered or ()
        return {"mock-llama", "nomic-embed-text"} <= set(found)

    await eventually(discovered, "the backend's models to be discovered")
    me = await local_agent(client)
    offered = [model["id"] for model in (await me.json("GET", "/ui/api/models"))["data"]]
    assert "mock-llama" in offered and "nomic-embed-text" not in offered
    page = await (await me.call("GET", "/ui", csrf=False)).text()
    assert 'value="mock-llama"' in page and "nomic-embed-text" not in page


async def test_an_empty_reply_is_an_error_and_is_not_stored(
    make_gateway: Any, start_mock: Any
) -> None:
    client, server = await scripted_gateway(make_gateway, start_mock, scripted_model([]))
    me = await local_agent(client)
    created = await me.json("POST", CONVERSATIONS, {"model": "fake-model"}, status=201)

    events = await send_message(me, created["id"], "Say something")
    assert [event["type"] for event in events] == ["error"], events
    assert events[0]["message"] == "the model returned nothing"
    found = await me.json("GET", f"{CONVERSATIONS}/{created['id']}")
    assert [(m["role"], m["content"]) for m in found["messages"]] == [("user", "Say something")]

    # Asked again, the empty reply is not part of what goes upstream.
    await send_message(me, created["id"], "Anything?")
    sent = server.app[SCRIPTED_RECEIVED][-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "user"]
    assert all(m["content"] for m in sent)


async def test_an_edit_that_cannot_be_stored_leaves_the_conversation_whole(
    make_gateway: Any, start_mock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = await scripted_gateway(make_gateway, start_mock, scripted_model(["Fine."]))
    me = await local_agent(client)
    created = await me.json("POST", CONVERSATIONS, {"model": "fake-model"}, status=201)
    path = f"{CONVERSATIONS}/{created['id']}"
    await send_message(me, created["id"], "first")
    await send_message(me, created["id"], "second")
    before = (await me.json("GET", path))["messages"]
    assert len(before) == 4

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    # The history is cut and the edited question added; then the last write fails.
    monkeypatch.setattr(Database, "update_conversation", full_disk)
    response = await me.call(
        "POST", f"{path}/messages", {"content": "changed", "edit": before[2]["id"]}
    )
    assert response.status == 503, await response.text()
    monkeypatch.undo()
    assert (await me.json("GET", path))["messages"] == before
