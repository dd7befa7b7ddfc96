"""Shared fixtures and helpers: fake backends on loopback, gateways built by the app factory,
and the error-envelope checks the failure-mode tests share."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openai import AsyncOpenAI

from sidecar.app import create_app
from sidecar.cli import new_serving_loop
from sidecar.launcher import free_port as launcher_free_port
from sidecar.mock_backends import MockBehaviour, create_mock_app
from sidecar.mock_backends.openai_server import RECEIVED
from sidecar.settings import ImagesSettings, Settings, parse_bearer_tokens

TOKEN = "test-token-0123456789abcdef"
OTHER_TOKEN = "other-token-fedcba9876543210"

GatewayFactory = Callable[..., Awaitable[TestClient]]


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Every async test runs on the loop ``gateway serve`` runs on (uvloop's)."""
    return {"serving": new_serving_loop}


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


async def stock_mock_gateway(
    make_gateway: GatewayFactory, start_mock: Any, *, aliases: str = ""
) -> tuple[TestClient, TestServer]:
    """A gateway in front of the stock mock backend ``mock`` with its readiness probes off
    (so only the requests under test reach it), and that backend, which records them."""
    backend = await start_mock()
    gateway = await make_gateway(
        gateway_yaml(
            mock_backend_yaml("mock", backend, health="{readiness: false}"), aliases=aliases
        )
    )
    return gateway, backend


@pytest.fixture
async def default_mock_gateway(
    make_gateway: GatewayFactory, start_mock: Any
) -> tuple[TestClient, TestServer]:
    """``stock_mock_gateway`` with the alias ``default`` for ``mock-llama``: the gateway the
    face tests (Anthropic, Ollama) drive, and the backend, to see what reached it."""
    return await stock_mock_gateway(
        make_gateway, start_mock, aliases="default: {backend: mock, model: mock-llama}"
    )


def last_body(backend: TestServer) -> dict[str, Any]:
    """The JSON body of the last request a stock mock backend received."""
    return backend.app[RECEIVED][-1].body


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


# -- waiting, ports, files and the command line ---------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that configures a gateway."""
    prefixes = (
        "AGENT_",
        "BACKEND_",
        "GATEWAY_",
        "HEARTMULA_",
        "IMAGES_",
        "METRICS_",
        "MOCK_",
        "PUBLIC_BASE_URL",
        "TOOLS_",
        "TRUSTED_PROXIES",
        "UI_",
        "USER_",
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}
    env.update(extra)
    return env


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    """Until something accepts on 127.0.0.1:``port`` (at most 20 s); raises if
    ``process``, which should be listening there, exits first."""
    for _ in range(400):
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def gateway_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m sidecar ARGS`` in the repository with exactly ``env``; bounded to 60 s."""
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def eventually(
    check: Callable[[], Any], what: str, *, attempts: int = 200, poll_s: float = 0.05
) -> None:
    """Wait until ``check()`` (plain or async) is true, polling at most ``attempts`` times
    ``poll_s`` apart: a bounded wait on a condition, never a pass/fail on time. Test files
    bind their own bound with ``functools.partial``."""
    for _ in range(attempts):
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(poll_s)
    raise AssertionError(f"gave up waiting for {what}")


def line_of(text: str, marker: str) -> int:
    """The 1-based line of ``text`` that holds ``marker`` (exactly one line must)."""
    lines = [number for number, line in enumerate(text.splitlines(), 1) if marker in line]
    assert len(lines) == 1, f"marker {marker!r} is on lines {lines}"
    return lines[0]


def free_port() -> int:
    """A loopback port with nothing listening on it, outside the ephemeral range (where a
    client connection could take it before the server meant to have it binds it)."""
    return launcher_free_port()


def rewrite(path: Path, content: str | bytes) -> None:
    """Replace the file the way editors do: a new file renamed over the old one."""
    temporary = path.with_name(path.name + ".tmp")
    if isinstance(content, bytes):
        temporary.write_bytes(content)
    else:
        temporary.write_text(content)
    os.replace(temporary, path)


# -- failure modes: helpers the test_failures_*.py files share ---------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MODEL = "fake-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
REQUEST_ID = re.compile(r"req-[0-9a-f]{24}")
CHAT_PATH = "/v1/chat/completions"


def chunk(
    text: str | None = None,
    *,
    delta: dict[str, Any] | None = None,
    finish: str | None = None,
    model: str = MODEL,
) -> dict[str, Any]:
    """A chat stream's chunk, as a fake backend sends it: ``text`` as its content (or
    ``delta`` as given), ``finish`` as its finish_reason."""
    if delta is None:
        delta = {} if text is None else {"content": text}
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def sse(payload: dict[str, Any]) -> bytes:
    """``payload`` as one server-sent event: a ``data:`` line and a blank line."""
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def gateway_on(make_gateway: Any, start_mock: Any, handler: Any, **fields: Any) -> Any:
    """``fake_gateway``'s gateway, its backend serving the model ``fake``."""
    fields.setdefault("models", "[fake]")
    gateway, _ = await fake_gateway(make_gateway, start_mock, handler, **fields)
    return gateway


@pytest.fixture
async def release(start_mock: Any) -> AsyncIterator[asyncio.Event]:
    """An event fake backends wait on "forever"; set at teardown, before they stop."""
    event = asyncio.Event()
    yield event
    event.set()


async def fake_gateway(
    make_gateway: Any, start_mock: Any, handler: Handler, **fields: Any
) -> tuple[TestClient, TestServer]:
    """A gateway in front of one fake backend ``fake`` serving ``fake-model`` with ``handler``
    (chat, completions and Responses requests; ``fields`` go into its backend entry).

    Readiness probes are off, so only the request under test reaches the backend.
    """
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    app.router.add_post("/v1/completions", handler)
    app.router.add_post("/v1/responses", handler)
    server = await start_mock(app)
    fields.setdefault("models", f"[{MODEL}]")
    fields.setdefault("health", "{readiness: false}")
    gateway = await make_gateway(gateway_yaml(mock_backend_yaml("fake", server, **fields)))
    return gateway, server


async def dying_mid_stream(request: web.Request) -> web.StreamResponse:
    """A fake backend's chat stream that sends one chunk, ``partial ``, then drops the
    connection: the backend dying mid-stream (serve it with ``fake_gateway``)."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    chunk = {"choices": [{"index": 0, "delta": {"content": "partial "}, "finish_reason": None}]}
    await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    assert request.transport is not None
    request.transport.close()
    return response


@pytest.fixture
async def mock_gateway(make_gateway: Any, start_mock: Any) -> tuple[TestClient, TestServer]:
    """A gateway in front of the stock mock backend, kept so tests can see what reached it."""
    return await stock_mock_gateway(make_gateway, start_mock)


def assert_envelope(
    body: Any, *, error_type: str, code: str | None, param: str | None = None
) -> str:
    """Check the OpenAI error envelope exactly; return its message."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == error_type, error
    assert error["code"] == code, error
    assert error["param"] == param, error
    message = error["message"]
    assert isinstance(message, str) and message
    assert "Traceback" not in message and 'File "' not in message
    return message


async def error_of(
    response: aiohttp.ClientResponse,
    status: int,
    *,
    error_type: str = "invalid_request_error",
    code: str | None,
    param: str | None = None,
) -> str:
    """Status, JSON content type, request id and envelope of an error response."""
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == "application/json", text
    assert REQUEST_ID.fullmatch(response.headers.get("X-Request-Id", "")), response.headers
    return assert_envelope(json.loads(text), error_type=error_type, code=code, param=param)


def assert_no_address(text: str, server: TestServer | None = None, port: int | None = None) -> None:
    """Neither the backend's URL nor its address shows in ``text``."""
    assert "http://" not in text and "https://" not in text, text
    assert "127.0.0.1" not in text, text
    if server is not None:
        assert f"{server.host}:{server.port}" not in text, text
        assert str(server.make_url("/v1")) not in text, text
        port = server.port
    if port is not None:
        assert str(port) not in text, text


async def assert_slots_free(gateway: TestClient, admitted: int, capability: str = "chat") -> None:
    """Every slot given back; ``admitted`` proves the request really went through admission."""
    stats = await status_of(gateway, "fake", capability)
    assert stats["in_flight"] == 0, stats
    assert stats["admitted"] == admitted, stats


# -- the usage ledger: the rows the test_usage*.py files read back --------------------------


def usage_db_rows(tmp_path: Path) -> list[dict[str, Any]]:
    """The ledger's per-request rows straight from the SQLite file of a ``make_gateway``
    gateway (``tmp_path/var/usage.sqlite3``), oldest first; none before it is created."""
    path = tmp_path / "var" / "usage.sqlite3"
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in db.execute("SELECT * FROM requests ORDER BY id")]
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        db.close()


async def usage_rows_for(tmp_path: Path, count: int) -> list[dict[str, Any]]:
    """Wait (400 polls 0.02 s apart) until the ledger holds ``count`` rows; exactly those."""
    await eventually(
        lambda: len(usage_db_rows(tmp_path)) >= count,
        f"{count} usage rows",
        attempts=400,
        poll_s=0.02,
    )
    rows = usage_db_rows(tmp_path)
    assert len(rows) == count, rows
    return rows
