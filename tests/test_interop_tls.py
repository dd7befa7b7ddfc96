"""A TLS backend that rejects the gateway's client certificate the way Python servers do.

uvicorn, aiohttp and asyncio servers with ``CERT_REQUIRED`` check the client certificate
only after the TLS 1.3 handshake has completed on the client's side, then drop the
connection without an alert: the client sees an orderly close (or a reset) before any
response byte. The gateway must name that as the likely certificate rejection, with and
without health checks, and a probe must keep the reason in its error; with health checks
on, such a permanent misconfiguration is a 502 that names it, not "503 retry shortly".
"""

from __future__ import annotations

import asyncio
import errno
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import openai
import pytest
from aiohttp.test_utils import TestClient

from sidecar.config.loader import parse_config
from sidecar.routing.http1 import Disconnected
from sidecar.routing.upstream import BackendClient
from sidecar.settings import BackendTlsDefaults

from .certs import TestPki, make_pki
from .conftest import TOKEN, backend_yaml, eventually, gateway_yaml, openai_client

CHAT = {"model": "mock-llama", "messages": [{"role": "user", "content": "hello"}]}


class _RejectingServer(asyncio.Protocol):
    """Completes the TLS 1.3 handshake, then refuses the client certificate: it drops its
    alert and closes its side cleanly (FIN), reading until the client goes too."""

    def __init__(self, context: ssl.SSLContext, handshakes: list[str]) -> None:
        self._context = context
        self._handshakes = handshakes
        self._transport: asyncio.Transport | None = None
        self._failed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = self._context.wrap_bio(self._incoming, self._outgoing, server_side=True)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        if self._failed:
            return  # the request the client sent after its Finished: read and dropped
        self._incoming.write(data)
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            self._failed = True
            self._handshakes.append(type(exc).__name__)
            self._outgoing.read()  # the alert is never sent
            self._transport.write_eof()
            return
        pending = self._outgoing.read()
        if pending:
            self._transport.write(pending)

    def eof_received(self) -> bool:
        return False


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    return make_pki(tmp_path / "certs")


@pytest.fixture
async def rejecting_backend(pki: TestPki) -> AsyncIterator[tuple[str, list[str]]]:
    """The base URL of a TLS server that rejects every client certificate after the
    handshake, and the list of refusals it made."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server.cert_path, pki.server.key_path)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=pki.ca.cert_path)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    refusals: list[str] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _RejectingServer(context, refusals), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}/v1", refusals
    finally:
        server.close()
        await server.wait_closed()


def _config(url: str, health: str) -> str:
    tls = (
        "{ca_bundle: certs/ca.pem, client_cert: certs/wrong-client.crt,"
        " client_key: certs/wrong-client.key}"
    )
    return gateway_yaml(backend_yaml("secure", url, models="[mock-llama]", health=health, tls=tls))


async def _chat_error(gateway: TestClient) -> openai.APIStatusError:
    async with openai_client(gateway) as client:
        with pytest.raises(openai.APIStatusError) as failure:
            await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    return failure.value


async def test_close_after_handshake_is_named_as_a_certificate_rejection(
    make_gateway: Any, rejecting_backend: tuple[str, list[str]]
) -> None:
    url, refusals = rejecting_backend
    gateway = await make_gateway(_config(url, "{readiness: false}"))

    for _ in range(5):  # every time, not most of the time
        error = await _chat_error(gateway)
        assert error.status_code == 502
        body = error.body
        assert isinstance(body, dict)
        assert body["code"] == "upstream_tls_error", body
        assert body["message"].startswith("TLS failure talking to backend 'secure': ")
        assert "client certificate" in body["message"]
        assert "mid-response" not in body["message"]
    assert len(refusals) >= 5


async def _status_health(gateway: TestClient) -> dict[str, Any]:
    response = await gateway.get("/v1/gateway/status", headers={"Authorization": f"Bearer {TOKEN}"})
    body = await response.json()
    health: dict[str, Any] = body["backends"][0]["health"]
    return health


async def test_with_health_checks_the_rejection_is_a_502_naming_it(
    make_gateway: Any, rejecting_backend: tuple[str, list[str]]
) -> None:
    url, refusals = rejecting_backend
    gateway = await make_gateway(_config(url, "{liveness: /healthz, interval_s: 60}"))

    async def probed() -> bool:
        return (await _status_health(gateway))["state"] != "unknown"

    await eventually(probed, "the first probe")
    health = await _status_health(gateway)
    assert "client certificate" in health["error"], health
    assert health["error"].startswith("TLS failure talking to backend 'secure': ")

    error = await _chat_error(gateway)
    assert error.status_code == 502
    assert error.response.headers.get("Retry-After") is None
    body = error.body
    assert isinstance(body, dict)
    assert body["code"] == "upstream_tls_error", body
    assert "client certificate" in body["message"]
    assert refusals


async def test_with_health_checks_an_untrusted_server_is_a_502_naming_the_verification(
    make_gateway: Any, pki: TestPki, aiohttp_server: Any
) -> None:
    """Certificate verification fails at the probe: the reason stays in the probe's error
    and requests get it as a 502 without Retry-After."""
    from sidecar.mock_backends import create_mock_app

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server.cert_path, pki.server.key_path)
    server = await aiohttp_server(create_mock_app(), ssl=context)
    config = gateway_yaml(
        backend_yaml(
            "secure",
            str(server.make_url("/v1")),
            models="[mock-llama]",
            health="{readiness: /readyz, interval_s: 60}",
            tls="{ca_bundle: certs/wrong-ca.pem}",
        )
    )
    gateway = await make_gateway(config)

    async def probed() -> bool:
        return (await _status_health(gateway))["state"] != "unknown"

    await eventually(probed, "the first probe")
    health = await _status_health(gateway)
    assert health["state"] == "misconfigured", health
    assert "certificate verify failed" in health["error"]

    error = await _chat_error(gateway)
    assert error.status_code == 502
    assert error.response.headers.get("Retry-After") is None
    assert isinstance(error.body, dict)
    assert error.body["code"] == "upstream_tls_error"
    assert "certificate verify failed" in error.body["message"]


@pytest.mark.parametrize(
    "cause",
    [
        None,
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        BrokenPipeError(errno.EPIPE, "Broken pipe"),
        ConnectionAbortedError(errno.ECONNABORTED, "Connection aborted"),
    ],
    ids=["closed", "reset", "broken-pipe", "aborted"],
)
def test_every_drop_before_the_head_names_the_client_certificate(
    tmp_path: Path, pki: TestPki, cause: Exception | None
) -> None:
    """However the connection ended, before any response byte on a TLS backend that was
    handed a client certificate it is the likely certificate rejection; after the head
    it is a backend that broke off."""
    text = _config("https://127.0.0.1:9/v1", "{readiness: false}")
    config = parse_config(text.encode(), tmp_path / "gateway.yaml", {}, BackendTlsDefaults())
    client = BackendClient(config.backends[0])

    before = client.translate(Disconnected(False, cause), before_head=True)
    after = client.translate(Disconnected(True, cause), streaming=True)

    assert before.code == "upstream_tls_error", before.message
    assert "rejected the client certificate" in before.message
    assert after.code != "upstream_tls_error"
