"""CORS: off by default; for the origins ``gateway.yaml`` lists, preflights are answered
without a token and API responses (errors and streams too) say which origin may read them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from sidecar.config.loader import parse_config
from sidecar.errors import ConfigError
from sidecar.settings import BackendTlsDefaults

from .conftest import backend_yaml, gateway_yaml, mock_backend_yaml

ALLOWED = "https://chat.example.com"
PREFLIGHT = {
    "Origin": ALLOWED,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os, x-evil header",
}
CHAT = {"model": "mock-llama", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def cors_gateway(make_gateway: Any, start_mock: Any) -> TestClient:
    backend = await start_mock()
    config = gateway_yaml(mock_backend_yaml("mock", backend))
    origins = f"['{ALLOWED.upper()}/', 'http://localhost:3000']"
    config += f"cors: {{allow_origins: {origins}, max_age_s: 300}}\n"
    return await make_gateway(config)


async def test_no_cors_by_default(gateway: TestClient, auth: dict[str, str]) -> None:
    preflight = await gateway.options("/v1/chat/completions", headers=PREFLIGHT)
    assert preflight.status == 401
    assert "Access-Control-Allow-Origin" not in preflight.headers
    response = await gateway.get("/v1/models", headers={**auth, "Origin": ALLOWED})
    assert response.status == 200
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Vary" not in response.headers


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models", "/api/chat"])
async def test_preflight_from_an_allowed_origin_needs_no_token(
    cors_gateway: TestClient, path: str
) -> None:
    response = await cors_gateway.options(path, headers=PREFLIGHT)
    assert response.status == 204
    headers = response.headers
    assert headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "POST" in headers["Access-Control-Allow-Methods"]
    allowed = {name.strip() for name in headers["Access-Control-Allow-Headers"].split(",")}
    required = {"authorization", "content-type", "x-api-key", "anthropic-version", "openai-beta"}
    assert required | {"x-stainless-os"} <= allowed
    assert "x-evil header" not in allowed
    assert headers["Access-Control-Max-Age"] == "300"
    assert "Origin" in headers.getall("Vary")


async def test_preflight_from_another_origin_gets_nothing(cors_gateway: TestClient) -> None:
    for origin in ("https://evil.example.com", "https://chat.example.com.evil.net", "null"):
        response = await cors_gateway.options(
            "/v1/chat/completions", headers={**PREFLIGHT, "Origin": origin}
        )
        assert response.status == 401, origin
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_responses_to_an_allowed_origin_carry_the_headers(
    cors_gateway: TestClient, auth: dict[str, str]
) -> None:
    origin = {"Origin": "http://localhost:3000"}
    plain = await cors_gateway.post("/v1/chat/completions", json=CHAT, headers={**auth, **origin})
    denied = await cors_gateway.get("/v1/models", headers=origin)  # no token: 401
    stream = await cors_gateway.post(
        "/v1/chat/completions", json={**CHAT, "stream": True}, headers={**auth, **origin}
    )
    assert (plain.status, denied.status, stream.status) == (200, 401, 200)
    await stream.read()
    for response in (plain, denied, stream):
        headers = response.headers
        assert headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        assert "Origin" in headers.getall("Vary")
        exposed = headers["Access-Control-Expose-Headers"]
        assert "x-request-id" in exposed and "retry-after" in exposed
        assert "x-ratelimit-remaining-requests" in exposed
        assert "Access-Control-Allow-Credentials" not in headers
    other = await cors_gateway.get(
        "/v1/models", headers={**auth, "Origin": "https://evil.example.com"}
    )
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Origin" in other.headers.getall("Vary")


async def test_the_ui_never_gets_cors(cors_gateway: TestClient) -> None:
    response = await cors_gateway.options("/ui/api/chat", headers=PREFLIGHT)
    assert "Access-Control-Allow-Origin" not in response.headers
    response = await cors_gateway.get("/healthz", headers={"Origin": ALLOWED})
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_a_wildcard_must_be_explicit(make_gateway: Any, start_mock: Any) -> None:
    backend = await start_mock()
    config = gateway_yaml(mock_backend_yaml("mock", backend)) + "cors: {allow_origins: ['*']}\n"
    gateway = await make_gateway(config)
    response = await gateway.options(
        "/v1/models", headers={**PREFLIGHT, "Origin": "https://any.example.org"}
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == "https://any.example.org"
    assert response.headers["Access-Control-Max-Age"] == "600"


@pytest.mark.parametrize(
    "origin", ["https://chat.example.com/app", "chat.example.com", "https://*.example.com", ""]
)
def test_only_origins_are_accepted_in_the_yaml(tmp_path: Path, origin: str) -> None:
    text = gateway_yaml(backend_yaml("b", "http://127.0.0.1:9/v1"))
    text += f"cors: {{allow_origins: ['{origin}']}}\n"
    with pytest.raises(ConfigError) as refused:
        parse_config(text.encode(), tmp_path / "gateway.yaml", {}, BackendTlsDefaults())
    assert "cors.allow_origins[0]" in refused.value.render()
