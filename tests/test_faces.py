"""Each API face answers errors in its own clients' shape, and takes the token its
clients send: OpenAI and Ollama a bearer token, Anthropic also ``x-api-key``."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from .conftest import TOKEN


async def test_ollama_face_needs_the_token_and_answers_errors_in_its_shape(
    gateway: TestClient,
) -> None:
    response = await gateway.get("/api/tags")
    assert response.status == 401
    body = await response.json()
    assert isinstance(body["error"], str) and "bearer" in body["error"].lower()
    response = await gateway.get("/api/no-such-route", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status == 404
    assert set(await response.json()) == {"error"}


async def test_anthropic_face_takes_x_api_key_and_answers_in_its_shape(
    gateway: TestClient,
) -> None:
    response = await gateway.get("/v1/messages/nothing-here", headers={"x-api-key": "wrong"})
    assert response.status == 401
    body = await response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"
    response = await gateway.get("/v1/messages/nothing-here", headers={"x-api-key": TOKEN})
    assert response.status == 404
    assert (await response.json())["error"]["type"] == "not_found_error"


async def test_x_api_key_is_not_a_token_elsewhere(gateway: TestClient) -> None:
    response = await gateway.get("/v1/models", headers={"x-api-key": TOKEN})
    assert response.status == 401
    assert (await response.json())["error"]["type"] == "authentication_error"
    assert "param" in (await response.json())["error"]
