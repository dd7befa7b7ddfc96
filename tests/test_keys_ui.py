"""The admin UI's API keys page and its JSON API, through the app factory.

Accounts on, the UI open to loopback; an admin and a plain user are made through the app's
users store and log in through the login API (the helpers of ``test_ui_api``). Keys made
here are then used on ``/v1`` against a real fake backend, so every change is checked by
what a client gets.
"""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from sidecar.settings import UiSettings
from sidecar.typedefs import SETTINGS

from .conftest import gateway_yaml, mock_backend_yaml
from .test_ui_api import LOOPBACK, add_user, error_code, log_in

API = "/ui/api/admin/keys"
ALIAS = "default: {backend: mock, model: mock-llama}"
CHAT = {"model": "mock-llama", "messages": [{"role": "user", "content": "hi"}]}


async def gateway(make_gateway: Any, start_mock: Any) -> TestClient:
    backend = await start_mock()
    client: TestClient = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend), aliases=ALIAS),
        ui=UiSettings(accounts=True),
        ui_ip_allowlist=LOOPBACK,
    )
    return client


async def chat_status(client: TestClient, secret: str, model: str = "mock-llama") -> int:
    response = await client.post(
        "/v1/chat/completions",
        json={**CHAT, "model": model},
        headers={"Authorization": f"Bearer {secret}"},
    )
    await response.read()
    return response.status


async def test_an_admin_makes_edits_rotates_and_revokes_keys_from_the_page(
    make_gateway: Any, start_mock: Any
) -> None:
    client = await gateway(make_gateway, start_mock)
    await add_user(client, "root", admin=True)
    admin = await log_in(client, "root")
    await admin.page_csrf("/ui/admin/keys")

    made = await admin.json(
        "POST", API, {"name": "laptop", "models": ["mock-*"], "rpm": 5}, status=201
    )
    secret = made["secret"]
    assert secret.startswith("gw_") and made["key"]["prefix"] == secret[:7]
    assert made["key"]["models"] == ["mock-*"] and made["key"]["rpm"] == 5
    assert await chat_status(client, secret) == 200  # at once: no poll to wait for
    assert await chat_status(client, secret, "default") == 403

    listed = await admin.call("GET", API)
    text = await listed.text()
    assert listed.status == 200 and secret not in text and secret[7:] not in text
    assert [k["name"] for k in (await listed.json())["data"]] == ["laptop"]

    edited = await admin.json("PATCH", f"{API}/laptop", {"models": None, "endpoints": ["chat"]})
    assert edited["key"]["models"] is None and edited["key"]["endpoints"] == ["chat"]
    assert await chat_status(client, secret, "default") == 200

    rotated = await admin.json("POST", f"{API}/laptop/rotate")
    assert rotated["secret"] != secret
    assert await chat_status(client, secret) == 401
    assert await chat_status(client, rotated["secret"]) == 200

    revoked = await admin.call("POST", f"{API}/laptop/revoke")
    assert revoked.status == 204
    assert await chat_status(client, rotated["secret"]) == 401
    (entry,) = (await admin.json("GET", API))["data"]
    assert entry["status"] == "revoked"
    again = await admin.call("POST", f"{API}/laptop/rotate")
    assert again.status == 404 and error_code(await again.json()) == "key_not_found"


async def test_bad_requests_get_the_ui_api_error_shape(make_gateway: Any, start_mock: Any) -> None:
    client = await gateway(make_gateway, start_mock)
    await add_user(client, "root", admin=True)
    admin = await log_in(client, "root")
    cases: list[tuple[dict[str, Any], int, str | None]] = [
        ({"name": "bad name"}, 400, "invalid_name"),
        ({"name": "x", "endpoints": ["nope"]}, 400, "invalid_request"),
        ({"name": "x", "rpm": 0}, 400, "invalid_request"),
        ({"name": "x", "rpm": True}, 400, "invalid_request"),
        ({"name": "x", "models": "mock-llama"}, 400, "invalid_request"),
        ({"name": "x", "surprise": 1}, 400, "invalid_request"),
        ({"name": "default"}, 400, "invalid_request"),  # a static token's name
    ]
    for body, status, code in cases:
        response = await admin.call("POST", API, body)
        assert response.status == status, (body, await response.text())
        assert error_code(await response.json()) == code, body
    await admin.json("POST", API, {"name": "twice"}, status=201)
    duplicate = await admin.call("POST", API, {"name": "twice"})
    assert duplicate.status == 409 and error_code(await duplicate.json()) == "conflict"
    no_csrf = await admin.call("POST", API, {"name": "sneaky"}, csrf=False)
    assert no_csrf.status == 403 and error_code(await no_csrf.json()) == "csrf_failed"


async def test_only_admins_see_or_change_keys(make_gateway: Any, start_mock: Any) -> None:
    client = await gateway(make_gateway, start_mock)
    await add_user(client, "pat")
    user = await log_in(client, "pat")
    for method, path in (
        ("GET", "/ui/admin/keys"),
        ("GET", API),
        ("POST", API),
        ("POST", f"{API}/x/revoke"),
    ):
        response = await user.call(method, path, {"name": "x"} if method == "POST" else None)
        assert response.status == 403, (path, await response.text())
    assert not client.server.app[SETTINGS].keys_db_path.read_bytes().count(b"gw_")
