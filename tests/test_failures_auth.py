"""Authentication under ``/v1``: every route needs a valid bearer token, however spelled.

Every 401 is the OpenAI error envelope with a ``WWW-Authenticate`` challenge and never
reaches a backend; path spellings cannot slip past the token check; the health endpoints
are open and reveal no backend.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sidecar.mock_backends.openai_server import RECEIVED

from .conftest import (
    CHAT,
    CHAT_PATH,
    OTHER_TOKEN,
    REQUEST_ID,
    TOKEN,
    assert_envelope,
    error_of,
    gateway_yaml,
    mock_backend_yaml,
)

# -- 9. authentication ---------------------------------------------------------------------


def v1_routes(gateway: TestClient) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves under /v1, from its router."""
    found = []
    for route in gateway.server.app.router.routes():
        resource = route.resource
        if resource is None:
            continue
        path = resource.canonical
        if path == "/v1" or path.startswith("/v1/"):
            method = "GET" if route.method == "*" else route.method
            found.append((method, re.sub(r"\{[^}]*\}", "x", path)))
    return found


BAD_CREDENTIALS = [
    pytest.param({}, "missing_api_key", id="missing"),
    pytest.param({"Authorization": "Bearer wrong-token-0123456789"}, "invalid_api_key", id="wrong"),
    pytest.param({"Authorization": f"Bearer {TOKEN}x"}, "invalid_api_key", id="token-plus-one"),
    pytest.param({"Authorization": f"Bearer {TOKEN[:-1]}"}, "invalid_api_key", id="token-prefix"),
    pytest.param({"Authorization": f"Basic {TOKEN}"}, "invalid_api_key", id="basic-scheme"),
    pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, "invalid_api_key", id="basic-xxx"),
    pytest.param({"Authorization": "Bearer"}, "invalid_api_key", id="bearer-no-token"),
    pytest.param({"Authorization": "Bearer    "}, "invalid_api_key", id="bearer-blank"),
    pytest.param({"Authorization": TOKEN}, "invalid_api_key", id="token-without-scheme"),
]


@pytest.mark.parametrize(("headers", "code"), BAD_CREDENTIALS)
async def test_every_v1_route_needs_a_valid_bearer_token(
    mock_gateway: tuple[TestClient, TestServer], headers: dict[str, str], code: str
) -> None:
    gateway, backend = mock_gateway
    routes = v1_routes(gateway)
    assert ("POST", CHAT_PATH) in routes and ("GET", "/v1/gateway/status") in routes
    for method, path in routes:
        response = await gateway.request(
            method, path, headers=headers, json={**CHAT, "model": "mock-llama"}
        )
        assert response.status == 401, (method, path, await response.text())
        challenge = response.headers.get("WWW-Authenticate", "")
        assert challenge.startswith("Bearer"), (method, path, response.headers)
        assert REQUEST_ID.fullmatch(response.headers.get("X-Request-Id", ""))
        if method != "HEAD" and path.startswith("/v1/messages"):
            # The Anthropic face answers in Anthropic's shape (its SDK reads no other).
            body = await response.json()
            assert body["type"] == "error", (path, body)
            assert body["error"]["type"] == "authentication_error", (path, body)
        elif method != "HEAD":
            await error_of(response, 401, error_type="authentication_error", code=code)
    assert len(backend.app[RECEIVED]) == 0


async def test_second_configured_token_is_accepted(gateway: TestClient) -> None:
    """The 401s above are about the token, not about the requests themselves."""
    for token in (TOKEN, OTHER_TOKEN):
        response = await gateway.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
        assert response.status == 200


async def _raw_status(gateway: TestClient, target: str) -> tuple[int, bytes]:
    """Send a request line the client library would normalise, exactly as written."""
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        reply = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(
    "target",
    [
        "//v1/models",
        "/./v1/models",
        "/x/../v1/models",
        "/v1/./models",
        "/v1//models",
        "/%761/models",
        "/v1%2Fmodels",
        "/V1/models",
        "/v1/models/",
        "/v1/x/../gateway/status",
    ],
)
async def test_path_spellings_never_reach_a_v1_handler_without_a_token(
    gateway: TestClient, target: str
) -> None:
    status, body = await _raw_status(gateway, target)
    assert status in (401, 404), (target, status, body)
    assert_envelope(
        json.loads(body),
        error_type="authentication_error" if status == 401 else "invalid_request_error",
        code="missing_api_key" if status == 401 else "not_found",
    )


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_health_endpoints_are_open_and_do_not_reveal_backends(
    make_gateway: Any, start_mock: Any, path: str
) -> None:
    backend = await start_mock()
    gateway = await make_gateway(gateway_yaml(mock_backend_yaml("mock", backend)))
    response = await gateway.get(path)
    assert response.status == 200
    text = await response.text()
    assert f"{backend.host}:{backend.port}" not in text
    assert "http://" not in text and "https://" not in text
    head = await gateway.head(path)
    assert head.status == 200
