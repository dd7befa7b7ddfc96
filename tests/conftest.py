"""Shared fixtures: fake backends on loopback and gateways built by the app factory."""

from __future__ import annotations

import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openai import AsyncOpenAI

from sidecar.app import create_app
from sidecar.mock_backends import MockBehaviour, create_mock_app
from sidecar.settings import ImagesSettings, Settings, parse_bearer_tokens

TOKEN = "test-token-0123456789abcdef"
OTHER_TOKEN = "other-token-fedcba9876543210"

GatewayFactory = Callable[..., Awaitable[TestClient]]


def backend_yaml(name: str, url: str, **fields: Any) -> str:
    """One backend entry for ``gateway.yaml`` (values are given as YAML text)."""
    lines = [f"  {name}:", f"    url: {url}"]
    lines += [f"    {key}: {value}" for key, value in fields.items()]
    return "\n".join(lines)


def gateway_yaml(*backends: str, aliases: str = "") -> str:
    text = "version: 1\nbackends:\n" + "\n".join(backends) + "\n"
    if aliases:
        text += "aliases:\n" + textwrap.indent(textwrap.dedent(aliases).strip(), "  ") + "\n"
    return text


def mock_backend_yaml(name: str, server: TestServer, **fields: Any) -> str:
    """A backend entry for a fake backend started with ``start_mock``."""
    fields.setdefault("class", "mock")
    fields.setdefault(
        "models",
        "[{id: mock-llama, capabilities: [chat, completions]},"
        " {id: mock-embed, capabilities: [embeddings]}]",
    )
    return backend_yaml(name, str(server.make_url("/v1")), **fields)


def make_settings(config_path: Path, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "bearer_tokens": parse_bearer_tokens(TOKEN, f"other:{OTHER_TOKEN}"),
        "config_path": config_path,
        "data_dir": data_dir,
        "config_poll_s": 0.0,
        "environ": {},
        # No built-in images backend unless a test asks for one (the images tests do).
        "images": ImagesSettings(backend="off"),
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def start_mock(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> Callable[..., Awaitable[TestServer]]:
    """Start a fake OpenAI-compatible backend on loopback: ``await start_mock(**behaviour)``."""

    async def start(app: web.Application | None = None, **behaviour: Any) -> TestServer:
        return await aiohttp_server(app or create_mock_app(MockBehaviour(**behaviour)))

    return start


@pytest.fixture
async def make_gateway(
    aiohttp_client: Callable[..., Awaitable[TestClient]], tmp_path: Path
) -> GatewayFactory:
    """Write ``gateway.yaml`` and start a gateway on it through the app factory."""

    async def make(config_text: str, **overrides: Any) -> TestClient:
        config_path = tmp_path / "gateway.yaml"
        config_path.write_text(config_text)
        settings = make_settings(config_path, tmp_path / "var", **overrides)
        return await aiohttp_client(create_app(settings))

    return make


@pytest.fixture
async def gateway(make_gateway: GatewayFactory, start_mock: Any) -> TestClient:
    """A gateway in front of one fake backend named ``mock`` with an alias ``default``."""
    backend = await start_mock()
    return await make_gateway(
        gateway_yaml(
            mock_backend_yaml("mock", backend),
            aliases="default: {backend: mock, model: mock-llama}",
        )
    )


def openai_client(client: TestClient, token: str = TOKEN, **kwargs: Any) -> AsyncOpenAI:
    kwargs.setdefault("max_retries", 0)
    return AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=token, **kwargs)


async def status_of(client: TestClient, backend: str, capability: str) -> dict[str, Any]:
    """The ``/v1/gateway/status`` admission numbers for one (backend, capability)."""
    response = await client.get("/v1/gateway/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status == 200
    body = await response.json()
    entry = next(b for b in body["backends"] if b["name"] == backend)
    return entry["capabilities"][capability]
