"""End to end through real Caddy: TLS, header hygiene, the /ui guard, streams and limits.

One stack (``gateway up``: Caddy + sidecar + the fake backend) serves the module; a
second backend, ``gated``, lives on a fixed loopback port that individual tests serve
from their own event loop, so they control exactly when its chunks are sent.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from multidict import CIMultiDict

from sidecar.launcher import find_caddy

from ..certs import issue, make_ca
from ..conftest import TOKEN
from .stack import ROOT, GatedBackend, GatewayStack, free_port, gated_config

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, gated_port: int) -> Iterator[GatewayStack]:
    config = gated_config(gated_port, gated_limits="{chat: 2}")
    with GatewayStack(tmp_path_factory.mktemp("e2e"), config, TOKEN) as gateway:
        yield gateway


async def _status(stack: GatewayStack) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{stack.base_url}/v1/gateway/status",
            headers={"Authorization": f"Bearer {stack.token}"},
            ssl=stack.ssl_context(),
        ) as response,
    ):
        assert response.status == 200
        return await response.json()


async def _wait_in_flight(stack: GatewayStack, backend: str, expected: int) -> None:
    for _ in range(200):
        status = await _status(stack)
        entry = next(b for b in status["backends"] if b["name"] == backend)
        if entry["capabilities"]["chat"]["in_flight"] == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"in_flight of {backend} never reached {expected}: {entry}")


# -- the API through Caddy with the openai SDK -------------------------------------------


async def test_models_chat_and_embeddings_through_caddy(stack: GatewayStack) -> None:
    async with stack.openai() as client:
        models = await client.models.list()
        assert {"mock-llama", "mock-embed", "gated", "default"} <= {m.id for m in models.data}
        reply = await client.chat.completions.with_raw_response.create(
            model="default", messages=[{"role": "user", "content": "through caddy"}]
        )
        assert reply.parse().choices[0].message.content == "Mock reply to: through caddy"
        assert reply.headers["X-Backend-Used"] == "mock"
        embeddings = await client.embeddings.create(model="mock-embed", input=["a", "b"])
        assert len(embeddings.data) == 2


async def test_stream_chunks_arrive_incrementally_through_caddy(
    stack: GatewayStack, gated: GatedBackend
) -> None:
    seen: list[str] = []
    async with stack.openai() as client:
        stream = await client.chat.completions.create(
            model="gated", messages=[{"role": "user", "content": "go"}], stream=True
        )
        async for chunk in stream:
            seen.append(chunk.choices[0].delta.content)
            # Only now may the backend send the next chunk: nothing was buffered on the way.
            assert gated.sent == len(seen)
            gated.release()
    assert seen == ["part0 ", "part1 ", "part2 "]


async def test_limit_two_third_stream_is_429_through_caddy(
    stack: GatewayStack, gated: GatedBackend
) -> None:
    async with stack.openai() as client:
        first = await client.chat.completions.create(
            model="gated", messages=[{"role": "user", "content": "1"}], stream=True
        )
        second = await client.chat.completions.create(
            model="gated", messages=[{"role": "user", "content": "2"}], stream=True
        )
        await _wait_in_flight(stack, "gated", 2)
        with pytest.raises(openai.RateLimitError) as rejected:
            await client.chat.completions.create(
                model="gated", messages=[{"role": "user", "content": "3"}], stream=True
            )
        assert rejected.value.response.headers["Retry-After"] == "1"
        assert rejected.value.body["code"] == "backend_overloaded"
        await first.close()
        await second.close()
    await _wait_in_flight(stack, "gated", 0)


async def test_aborted_stream_frees_its_slot_and_cancels_upstream(
    stack: GatewayStack, gated: GatedBackend
) -> None:
    async with stack.openai() as client:
        stream = await client.chat.completions.create(
            model="gated", messages=[{"role": "user", "content": "abort me"}], stream=True
        )
        first = await stream.__anext__()
        assert first.choices[0].delta.content == "part0 "
        await _wait_in_flight(stack, "gated", 1)
        await stream.close()
    await _wait_in_flight(stack, "gated", 0)
    for _ in range(100):
        if gated.cancelled:
            break
        await asyncio.sleep(0.05)
    assert gated.cancelled == 1
    assert gated.finished == 0


# -- Caddy's own rules -------------------------------------------------------------------


def _raw_get(
    stack: GatewayStack, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPSConnection(
        "127.0.0.1", stack.port, context=stack.ssl_context(), timeout=10
    )
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


async def test_dot_segments_are_rejected(stack: GatewayStack) -> None:
    for path in ("/ui/%2e%2e/v1/models", "/ui/../v1/models", "/v1/%2E%2E/healthz", "/ui/.%2e/x"):
        status, _, _ = await asyncio.to_thread(_raw_get, stack, path)
        assert status == 400, path


async def _get_from(
    stack: GatewayStack, source_ip: str, path: str
) -> tuple[int, str, CIMultiDict[str]]:
    connector = aiohttp.TCPConnector(local_addr=(source_ip, 0), ssl=stack.ssl_context())
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"{stack.base_url}{path}") as response,
    ):
        return response.status, await response.text(), response.headers.copy()


async def test_ui_only_from_allowlisted_addresses(stack: GatewayStack) -> None:
    status, body, _ = await _get_from(stack, "127.0.0.2", "/ui")
    assert status == 403
    assert "UI_IP_ALLOWLIST" in body
    status, _, _ = await _get_from(stack, "127.0.0.2", "/ui/anything")
    assert status == 403
    status, _, headers = await _get_from(stack, "127.0.0.1", "/ui")
    assert status != 403
    assert headers["X-Request-Id"].startswith("req-")  # it reached the sidecar


async def test_spoofed_forwarding_headers_do_not_change_the_client_ip(stack: GatewayStack) -> None:
    spoof = {
        "X-Forwarded-For": "203.0.113.7",
        "X-Real-IP": "203.0.113.8",
        "Forwarded": "for=203.0.113.9",
        "True-Client-IP": "203.0.113.10",
        "X-Client-IP": "203.0.113.11",
    }
    status, headers, _ = await asyncio.to_thread(_raw_get, stack, "/healthz", spoof)
    assert status == 200
    request_id = headers["x-request-id"]
    for _ in range(100):
        records = [r for r in stack.access_records() if r["request_id"] == request_id]
        if records:
            break
        await asyncio.sleep(0.05)
    assert records and records[0]["client_ip"] == "127.0.0.1"


async def test_bearer_required_through_caddy(stack: GatewayStack) -> None:
    status, headers, body = await asyncio.to_thread(_raw_get, stack, "/v1/models")
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert json.loads(body)["error"]["type"] == "authentication_error"


# -- the Caddyfile itself ----------------------------------------------------------------


def test_caddyfile_validates_and_is_formatted(tmp_path: Path) -> None:
    caddy = find_caddy()
    env = {"GATEWAY_DATA_DIR": str(tmp_path), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    validate = subprocess.run(
        [caddy, "validate", "--config", "Caddyfile", "--adapter", "caddyfile"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert validate.returncode == 0, validate.stderr
    for path in [ROOT / "Caddyfile", *sorted((ROOT / "caddy").glob("*.caddy"))]:
        formatted = subprocess.run(
            [caddy, "fmt", str(path)], capture_output=True, text=True, timeout=30
        )
        assert formatted.returncode == 0, formatted.stderr
        assert formatted.stdout == path.read_text(), f"{path.name} is not caddy-fmt formatted"


def _peer_certificate(port: int, cafile: Path) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(cafile))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        response.read()
        assert connection.sock is not None
        return response.status, connection.sock.getpeercert(binary_form=True) or b""
    finally:
        connection.close()


async def test_admin_certificate_is_served(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "pki", "lan-ca")
    leaf = issue(ca, tmp_path / "pki", "gateway", server=True, hosts=("127.0.0.1",))
    stack = GatewayStack(
        tmp_path / "data",
        gated_config(free_port(), gated_limits="{chat: 2}"),
        TOKEN,
        GATEWAY_TLS_CERT_PATH=str(leaf.cert_path),
        GATEWAY_TLS_KEY_PATH=str(leaf.key_path),
    )
    await asyncio.to_thread(stack.start)
    try:
        status, served = await asyncio.to_thread(_peer_certificate, stack.port, ca.cert_path)
    finally:
        await asyncio.to_thread(stack.stop)
    assert status == 200
    expected = x509.load_pem_x509_certificate(leaf.cert_path.read_bytes())
    assert served == expected.public_bytes(serialization.Encoding.DER)


async def test_image_url_through_caddy_is_absolute_and_fetchable_without_token(
    stack: GatewayStack,
) -> None:
    async with stack.openai() as client:
        result = await client.images.generate(prompt="a lighthouse at dusk", size="256x256")
    url = result.data[0].url
    assert url is not None and url.startswith(f"{stack.base_url}/images/")
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, ssl=stack.ssl_context()) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"] == "image/svg+xml"
        assert "sandbox" in response.headers["Content-Security-Policy"]
        assert "a lighthouse at dusk" in await response.text()
