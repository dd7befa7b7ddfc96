"""The access log: one JSON line per request, with the route template, never a secret.

And the client address it records: the TCP peer, unless the peer is a trusted proxy.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from .conftest import TOKEN, gateway_yaml, mock_backend_yaml

ACCESS_LOGGER = "gateway.access"
KEYS = {
    "ts",
    "request_id",
    "method",
    "route",
    "status",
    "duration_ms",
    "backend",
    "model",
    "stream",
    "ttft_ms",
    "bytes_out",
    "client_ip",
}
PROMPT = "tell me about the zanzibar-marmalade-quokka"


@pytest.fixture
def access_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    return caplog


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER]


def line_for(caplog: pytest.LogCaptureFixture, request_id: str) -> tuple[str, dict[str, Any]]:
    """The one access line for ``request_id``, raw and parsed."""
    matching = [
        (line, parsed)
        for line in access_lines(caplog)
        if (parsed := json.loads(line))["request_id"] == request_id
    ]
    assert len(matching) == 1, f"expected one access line for {request_id}: {matching}"
    return matching[0]


def assert_no_secrets(line: str) -> None:
    assert TOKEN not in line
    assert "zanzibar" not in line
    assert "quokka" not in line
    assert "Mock reply" not in line


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "mock-llama", "messages": [{"role": "user", "content": PROMPT}], **extra}


async def test_non_stream_request_is_one_line_without_secrets(
    gateway: TestClient, auth: dict[str, str], access_log: pytest.LogCaptureFixture
) -> None:
    async with gateway.post("/v1/chat/completions", json=chat_body(), headers=auth) as response:
        assert response.status == 200
        body = await response.read()
        request_id = response.headers["X-Request-Id"]
    assert PROMPT.encode() in body  # the reply echoes the prompt: it must not reach the log

    line, entry = line_for(access_log, request_id)
    assert len(access_lines(access_log)) == 1
    assert entry.keys() >= KEYS
    assert entry["method"] == "POST"
    assert entry["route"] == "/v1/chat/completions"
    assert entry["status"] == 200
    assert entry["backend"] == "mock"
    assert entry["model"] == "mock-llama"
    assert entry["stream"] is False
    assert entry["ttft_ms"] is None
    assert entry["bytes_out"] == len(body)
    assert entry["client_ip"] == "127.0.0.1"
    assert isinstance(entry["ts"], int | float) and entry["ts"] > 0
    assert isinstance(entry["duration_ms"], int | float) and entry["duration_ms"] >= 0
    assert_no_secrets(line)


async def test_stream_line_has_time_to_first_token(
    gateway: TestClient, auth: dict[str, str], access_log: pytest.LogCaptureFixture
) -> None:
    async with gateway.post(
        "/v1/chat/completions", json=chat_body(stream=True), headers=auth
    ) as response:
        assert response.status == 200
        body = await response.read()
        request_id = response.headers["X-Request-Id"]
    assert body.endswith(b"data: [DONE]\n\n")

    line, entry = line_for(access_log, request_id)
    assert entry.keys() >= KEYS
    assert entry["route"] == "/v1/chat/completions"
    assert entry["status"] == 200
    assert entry["stream"] is True
    assert entry["backend"] == "mock"
    assert isinstance(entry["ttft_ms"], int | float) and entry["ttft_ms"] >= 0
    assert entry["ttft_ms"] <= entry["duration_ms"]
    assert entry["bytes_out"] == len(body)
    assert_no_secrets(line)


async def test_alias_request_logs_the_requested_model_and_backend(
    gateway: TestClient, auth: dict[str, str], access_log: pytest.LogCaptureFixture
) -> None:
    async with gateway.post(
        "/v1/chat/completions", json=chat_body(model="default"), headers=auth
    ) as response:
        assert response.status == 200
        request_id = response.headers["X-Request-Id"]
    _, entry = line_for(access_log, request_id)
    assert (entry["model"], entry["backend"]) == ("default", "mock")


async def test_unauthorized_and_unknown_paths_are_logged(
    gateway: TestClient, auth: dict[str, str], access_log: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-token-9f8e7d6c5b4a3210"
    requests = [
        ("POST", "/v1/chat/completions", {}, 401),
        ("POST", "/v1/chat/completions", {"Authorization": f"Bearer {wrong}"}, 401),
        ("GET", "/v1/secret-probe-xyzzy", {}, 401),
        ("GET", "/v1/secret-probe-xyzzy", auth, 404),
        ("GET", "/no-such-page-plugh", {}, 404),
    ]
    seen = []
    for method, path, headers, expected in requests:
        body_json = chat_body() if method == "POST" else None
        async with gateway.request(method, path, headers=headers, json=body_json) as response:
            assert response.status == expected, path
            body = await response.read()
            seen.append((response.headers["X-Request-Id"], method, expected, len(body)))

    assert len(access_lines(access_log)) == len(requests)
    for (request_id, method, status, size), (_, path, _, _) in zip(seen, requests, strict=True):
        line, entry = line_for(access_log, request_id)
        assert entry.keys() >= KEYS
        assert (entry["method"], entry["status"]) == (method, status)
        assert entry["bytes_out"] == size
        assert entry["client_ip"] == "127.0.0.1"
        if path == "/v1/chat/completions":
            assert entry["route"] == "/v1/chat/completions"
        else:
            # An unmatched path is never logged as it was sent.
            assert "xyzzy" not in entry["route"] and "plugh" not in entry["route"]
            assert not entry["route"].startswith("/v1/secret")
        assert wrong not in line
        assert_no_secrets(line)


# -- the client address ---------------------------------------------------------------------

SPOOFED = {"X-Real-IP": "203.0.113.7", "X-Forwarded-For": "198.51.100.9"}
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


async def logged_client_ip(
    gateway: TestClient, caplog: pytest.LogCaptureFixture, headers: dict[str, str]
) -> str:
    async with gateway.get(
        "/v1/models", headers={"Authorization": f"Bearer {TOKEN}", **headers}
    ) as response:
        assert response.status == 200
        request_id = response.headers["X-Request-Id"]
    _, entry = line_for(caplog, request_id)
    assert entry["route"] == "/v1/models"
    return entry["client_ip"]


async def gateway_with(make_gateway: Any, start_mock: Any, **overrides: Any) -> TestClient:
    backend = await start_mock()
    return await make_gateway(gateway_yaml(mock_backend_yaml("mock", backend)), **overrides)


async def test_forwarded_headers_are_ignored_from_an_untrusted_peer(
    make_gateway: Any, start_mock: Any, access_log: pytest.LogCaptureFixture
) -> None:
    gateway = await gateway_with(make_gateway, start_mock)
    assert await logged_client_ip(gateway, access_log, {}) == "127.0.0.1"
    assert await logged_client_ip(gateway, access_log, SPOOFED) == "127.0.0.1"
    assert (
        await logged_client_ip(gateway, access_log, {"X-Forwarded-For": "203.0.113.7"})
        == "127.0.0.1"
    )


async def test_peer_outside_the_trusted_networks_is_not_believed(
    make_gateway: Any, start_mock: Any, access_log: pytest.LogCaptureFixture
) -> None:
    trusted = (ipaddress.ip_network("10.0.0.0/8"),)
    gateway = await gateway_with(make_gateway, start_mock, trusted_proxies=trusted)
    assert await logged_client_ip(gateway, access_log, SPOOFED) == "127.0.0.1"


async def test_trusted_proxy_real_ip_is_believed(
    make_gateway: Any, start_mock: Any, access_log: pytest.LogCaptureFixture
) -> None:
    gateway = await gateway_with(make_gateway, start_mock, trusted_proxies=LOOPBACK)
    assert await logged_client_ip(gateway, access_log, SPOOFED) == "203.0.113.7"
    assert await logged_client_ip(gateway, access_log, {"X-Real-IP": "2001:db8::5"}) == (
        "2001:db8::5"
    )
    # Without forwarded headers the proxy itself is the client.
    assert await logged_client_ip(gateway, access_log, {}) == "127.0.0.1"


async def test_trusted_proxy_forwarded_for_uses_the_right_most_untrusted_hop(
    make_gateway: Any, start_mock: Any, access_log: pytest.LogCaptureFixture
) -> None:
    gateway = await gateway_with(make_gateway, start_mock, trusted_proxies=LOOPBACK)
    # The left-most entry is whatever the client claimed; the hops appended by trusted
    # proxies (127.x) are skipped from the right.
    chain = "198.51.100.9, 203.0.113.7, 127.0.0.5"
    assert await logged_client_ip(gateway, access_log, {"X-Forwarded-For": chain}) == (
        "203.0.113.7"
    )
    assert (
        await logged_client_ip(gateway, access_log, {"X-Forwarded-For": "203.0.113.8"})
        == "203.0.113.8"
    )


async def test_ui_chat_is_logged_with_backend_model_and_user_name(
    make_gateway: Any, start_mock: Any, access_log: pytest.LogCaptureFixture
) -> None:
    from sidecar.settings import UiSettings

    from .test_ui_api import CONVERSATIONS, LOOPBACK, add_user, log_in

    backend = await start_mock()
    client = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend)),
        ui=UiSettings(accounts=True),
        ui_ip_allowlist=LOOPBACK,
    )
    await add_user(client, "alice")
    alice = await log_in(client, "alice")
    conversation = await alice.json("POST", CONVERSATIONS, {"title": "t"}, status=201)
    response = await alice.call(
        "POST", f"{CONVERSATIONS}/{conversation['id']}/messages", {"content": PROMPT}
    )
    assert response.status == 200, await response.text()
    line, entry = line_for(access_log, response.headers["X-Request-Id"])
    assert (entry["backend"], entry["model"], entry["user"]) == ("mock", "mock-llama", "alice")
    assert entry["route"] == "/ui/api/conversations/{conversation_id}/messages"
    assert_no_secrets(line)
    # An API request is no UI user's.
    async with client.get("/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}) as reply:
        _, entry = line_for(access_log, reply.headers["X-Request-Id"])
    assert entry["user"] is None and entry["token_name"] == "default"
