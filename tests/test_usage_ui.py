"""``/ui/usage``: UI chats are usage rows of their user; admins see everyone's, anyone else
their own. Gateways from the app factory, the UI open to loopback, the stock fake backend.
"""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.mock_backends.openai_server import RECEIVED
from sidecar.settings import UiSettings, UsageSettings, parse_bearer_tokens

from .conftest import OTHER_TOKEN, TOKEN, gateway_yaml, mock_backend_yaml, openai_client
from .test_ui_api import (
    CONVERSATIONS,
    LOOPBACK,
    Agent,
    add_user,
    eventually,
    local_agent,
    log_in,
    send_message,
)

TOKENS = parse_bearer_tokens(TOKEN, f"other:{OTHER_TOKEN}", "default")
FAST = UsageSettings(flush_s=0.02)


async def chat(agent: Agent, text: str) -> None:
    conversation = await agent.json("POST", CONVERSATIONS, {"model": "mock-llama"}, status=201)
    events = await send_message(agent, conversation["id"], text)
    assert events[-1]["type"] == "done", events


async def usage_of(agent: Agent, requests: int, **query: str) -> dict[str, Any]:
    """The UI's usage answer once it counts ``requests`` requests in all."""
    path = "/ui/api/usage" + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    found: dict[str, Any] = {}

    async def counted() -> bool:
        found.update(await agent.json("GET", path))
        return sum(row["requests"] for row in found["days"]) >= requests

    await eventually(counted, f"{requests} requests in the UI's usage")
    return found


async def test_a_ui_chat_is_its_users_usage_with_the_backends_counts(
    make_gateway: Any, start_mock: Any
) -> None:
    backend = await start_mock()
    client = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend, health="{readiness: false}")),
        ui_ip_allowlist=LOOPBACK,
        bearer_tokens=TOKENS,
        usage=FAST,
    )
    me = await local_agent(client)
    await chat(me, "count my tokens please")
    # The UI asked the backend for the usage chunk; the browser's events carry none.
    sent = [r.body for r in backend.app[RECEIVED]]
    assert sent[-1]["stream_options"] == {"include_usage": True}
    messages = sent[-1]["messages"]
    async with openai_client(client) as api:  # the same request, through the API, for its usage
        reply = await api.chat.completions.create(model="mock-llama", messages=messages)
    assert reply.usage is not None

    body = await usage_of(me, 1)
    assert body["scope"] == "own"
    expected = {
        "requests": 1,
        "prompt_tokens": reply.usage.prompt_tokens,
        "completion_tokens": reply.usage.completion_tokens,
        "errors": 0,
        "estimated": 0,
    }
    assert body["users"] == [{"user": "local", **expected}]
    assert body["keys"] == [{"key": None, **expected}]  # the API call is not the local user's
    assert body["models"] == [{"model": "mock-llama", **expected}]
    assert [row["day"] for row in body["days"]] == [body["until"]]

    page = await me.call("GET", "/ui/usage", csrf=False)
    text = await page.text()
    assert page.status == 200
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert 'href="/ui/usage" aria-current="page"' in text
    assert "/ui/static/usage.js" in text and "<script>" not in text


async def test_admins_see_everyone_and_users_only_themselves(
    make_gateway: Any, start_mock: Any
) -> None:
    backend = await start_mock()
    client = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend, health="{readiness: false}")),
        ui=UiSettings(accounts=True),
        ui_ip_allowlist=LOOPBACK,
        bearer_tokens=TOKENS,
        usage=FAST,
    )
    await add_user(client, "alice", admin=True)
    await add_user(client, "bob")
    alice, bob = await log_in(client, "alice"), await log_in(client, "bob")
    await chat(alice, "alice asks")
    await chat(bob, "bob asks")
    async with openai_client(client, OTHER_TOKEN) as api:
        await api.chat.completions.create(
            model="mock-llama", messages=[{"role": "user", "content": "a key asks"}]
        )

    everyone = await usage_of(alice, 3)
    assert everyone["scope"] == "everyone"
    assert [row["user"] for row in everyone["users"]] == [None, "alice", "bob"]
    assert [row["key"] for row in everyone["keys"]] == [None, "other"]

    own = await usage_of(bob, 1)
    assert own["scope"] == "own"
    assert [row["user"] for row in own["users"]] == ["bob"]
    assert [row["requests"] for row in own["days"]] == [1]


@pytest.mark.parametrize(
    "query", ["since=2026-99-01", "group_by=key", "since=2026-02-01&until=2026-01-01"]
)
async def test_bad_ranges_are_a_400(make_gateway: Any, start_mock: Any, query: str) -> None:
    backend = await start_mock()
    client = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend, health="{readiness: false}")),
        ui_ip_allowlist=LOOPBACK,
        usage=FAST,
    )
    me = await local_agent(client)
    response = await me.call("GET", f"/ui/api/usage?{query}", csrf=False)
    body = await response.json()
    assert response.status == 400, body
    assert set(body) == {"error"} and body["error"]["type"] == "invalid_request_error"


async def test_a_failed_ui_chat_is_an_error_of_its_user(make_gateway: Any, start_mock: Any) -> None:
    backend = await start_mock()
    client = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend, health="{readiness: false}")),
        ui_ip_allowlist=LOOPBACK,
        usage=FAST,
    )
    me = await local_agent(client)
    conversation = await me.json("POST", CONVERSATIONS, {"model": "no-such-model"}, status=201)
    response = await me.call(
        "POST", f"{CONVERSATIONS}/{conversation['id']}/messages", {"content": "hello?"}
    )
    assert response.status == 404
    body = await usage_of(me, 1)
    assert body["users"] == [
        {
            "user": "local",
            "requests": 1,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "errors": 1,
            "estimated": 0,
        }
    ]
