"""Backends over HTTPS and mTLS: trust, client certificates, env defaults, bad PEM files.

The fake backend is the real mock app served with TLS on loopback; the gateway's own
aiohttp client performs every handshake, so a failure here is what an admin would see.
"""

from __future__ import annotations

import os
import secrets
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestClient, TestServer

from sidecar.mock_backends import create_mock_app
from sidecar.mock_backends.openai_server import RECEIVED
from sidecar.settings import BackendTlsDefaults, Settings

from .certs import TestPki, make_pki
from .conftest import backend_yaml, gateway_cli, gateway_yaml, line_of, openai_client

GARBAGE_PEM = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"

TlsBackendFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    """Certificates under ``tmp_path/certs``, next to the gateway's ``gateway.yaml``."""
    return make_pki(tmp_path / "certs")


@pytest.fixture
async def start_tls_backend(aiohttp_server: Any, pki: TestPki) -> TlsBackendFactory:
    """Start the mock backend with HTTPS on 127.0.0.1, by default demanding a client cert."""

    async def start(*, require_client_cert: bool = True) -> TestServer:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki.server.cert_path, pki.server.key_path)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=pki.ca.cert_path)
        server = await aiohttp_server(create_mock_app(), ssl=context)
        assert str(server.make_url("/v1")).startswith("https://127.0.0.1:")
        return server

    return start


def secure_backend(server: TestServer, tls: str | None = None) -> str:
    """The config for the TLS backend ``secure``; ``tls`` is a YAML flow mapping or None."""
    fields = {"models": "[mock-llama]", "health": "{readiness: false}"}
    if tls is not None:
        fields["tls"] = tls
    return gateway_yaml(backend_yaml("secure", str(server.make_url("/v1")), **fields))


def mtls(
    client_cert: str = "certs/client.crt",
    client_key: str | None = "certs/client.key",
    ca_bundle: str = "certs/ca.pem",
) -> str:
    """A ``tls`` block with a client certificate; paths are relative to ``gateway.yaml``."""
    key = f", client_key: {client_key}" if client_key else ""
    return f"{{ca_bundle: {ca_bundle}, client_cert: {client_cert}{key}}}"


async def chat(gateway: TestClient, text: str = "over mTLS") -> str | None:
    async with openai_client(gateway) as client:
        reply = await client.chat.completions.with_raw_response.create(
            model="mock-llama", messages=[{"role": "user", "content": text}]
        )
    assert reply.headers["X-Backend-Used"] == "secure"
    return reply.parse().choices[0].message.content


async def chat_tls_failure(gateway: TestClient) -> dict[str, Any]:
    """Send a chat that must fail at the TLS layer; return the OpenAI error body."""
    async with openai_client(gateway) as client:
        with pytest.raises(openai.InternalServerError) as failure:
            await client.chat.completions.create(
                model="mock-llama", messages=[{"role": "user", "content": "hello"}]
            )
    assert failure.value.status_code == 502
    body = failure.value.body
    assert isinstance(body, dict)
    assert body["code"] == "upstream_tls_error"
    assert body["message"].startswith("TLS failure talking to backend 'secure': ")
    return body


# -- handshakes ------------------------------------------------------------------------------


async def test_right_ca_and_client_cert_reach_the_backend(
    make_gateway: Any, start_tls_backend: TlsBackendFactory
) -> None:
    backend = await start_tls_backend()
    gateway = await make_gateway(secure_backend(backend, mtls()))

    assert await chat(gateway) == "Mock reply to: over mTLS"
    received = backend.app[RECEIVED]
    assert [r.path for r in received] == ["/v1/chat/completions"]
    assert received[0].body["model"] == "mock-llama"


async def test_missing_client_cert_is_a_tls_error(
    make_gateway: Any, start_tls_backend: TlsBackendFactory
) -> None:
    backend = await start_tls_backend()
    gateway = await make_gateway(secure_backend(backend, "{ca_bundle: certs/ca.pem}"))

    body = await chat_tls_failure(gateway)

    assert "client certificate" in body["message"] or "handshake" in body["message"]
    assert len(backend.app[RECEIVED]) == 0


async def test_missing_client_cert_error_envelope(
    make_gateway: Any, start_tls_backend: TlsBackendFactory, auth: dict[str, str]
) -> None:
    """The raw response a non-SDK client sees: 502 with the OpenAI error envelope."""
    backend = await start_tls_backend()
    gateway = await make_gateway(secure_backend(backend, "{ca_bundle: certs/ca.pem}"))

    response = await gateway.post(
        "/v1/chat/completions",
        json={"model": "mock-llama", "messages": [{"role": "user", "content": "hi"}]},
        headers=auth,
    )

    assert response.status == 502
    error = (await response.json())["error"]
    assert error["code"] == "upstream_tls_error"
    assert error["type"] == "api_error"
    assert error["message"].startswith("TLS failure talking to backend 'secure': ")
    assert "127.0.0.1" not in error["message"]


async def test_untrusted_server_fails_certificate_verification(
    make_gateway: Any, start_tls_backend: TlsBackendFactory
) -> None:
    backend = await start_tls_backend()
    gateway = await make_gateway(secure_backend(backend, mtls(ca_bundle="certs/wrong-ca.pem")))

    body = await chat_tls_failure(gateway)

    assert "certificate verify failed" in body["message"]
    assert len(backend.app[RECEIVED]) == 0


async def test_client_cert_from_another_ca_is_rejected(
    make_gateway: Any, start_tls_backend: TlsBackendFactory
) -> None:
    backend = await start_tls_backend()
    tls = mtls("certs/wrong-client.crt", "certs/wrong-client.key")
    gateway = await make_gateway(secure_backend(backend, tls))

    await chat_tls_failure(gateway)

    assert len(backend.app[RECEIVED]) == 0


async def test_verify_false_accepts_an_untrusted_server(
    make_gateway: Any, start_tls_backend: TlsBackendFactory
) -> None:
    backend = await start_tls_backend(require_client_cert=False)
    gateway = await make_gateway(secure_backend(backend, "{verify: false}"))

    assert await chat(gateway, "unverified") == "Mock reply to: unverified"


async def test_verify_default_rejects_the_same_untrusted_server(
    make_gateway: Any, start_tls_backend: TlsBackendFactory
) -> None:
    """The counterpart of ``verify: false``: the system trust store knows no test CA."""
    backend = await start_tls_backend(require_client_cert=False)
    gateway = await make_gateway(secure_backend(backend))

    body = await chat_tls_failure(gateway)

    assert "certificate verify failed" in body["message"]


async def test_https_url_on_a_plain_http_port_is_named(make_gateway: Any, start_mock: Any) -> None:
    """An ``https://`` URL aimed at a plain-HTTP backend: a TLS error in the admin's words."""
    backend = await start_mock()
    url = str(backend.make_url("/v1")).replace("http://", "https://", 1)
    gateway = await make_gateway(
        gateway_yaml(
            backend_yaml("secure", url, models="[mock-llama]", health="{readiness: false}")
        )
    )

    body = await chat_tls_failure(gateway)

    assert body["message"].endswith("the backend does not speak TLS on this port")
    assert "_ssl.c" not in body["message"]


async def test_combined_pem_as_client_cert(
    make_gateway: Any, start_tls_backend: TlsBackendFactory
) -> None:
    backend = await start_tls_backend()
    tls = mtls("certs/client-combined.pem", client_key=None)
    gateway = await make_gateway(secure_backend(backend, tls))

    assert await chat(gateway, "one file") == "Mock reply to: one file"


# -- defaults from the environment -----------------------------------------------------------


async def test_env_tls_defaults_apply_without_a_tls_block(
    make_gateway: Any, start_tls_backend: TlsBackendFactory, pki: TestPki
) -> None:
    backend = await start_tls_backend()
    defaults = BackendTlsDefaults(
        verify=True,
        ca_bundle=pki.ca.cert_path,
        client_cert=pki.client.cert_path,
        client_key=pki.client.key_path,
    )
    gateway = await make_gateway(secure_backend(backend), backend_tls=defaults)

    assert await chat(gateway, "from env") == "Mock reply to: from env"


async def test_yaml_client_cert_overrides_env_default(
    make_gateway: Any, start_tls_backend: TlsBackendFactory, pki: TestPki
) -> None:
    backend = await start_tls_backend()
    defaults = BackendTlsDefaults(
        ca_bundle=pki.ca.cert_path,
        client_cert=pki.wrong_client.cert_path,
        client_key=pki.wrong_client.key_path,
    )
    gateway = await make_gateway(secure_backend(backend, mtls()), backend_tls=defaults)

    assert await chat(gateway, "override") == "Mock reply to: override"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, BackendTlsDefaults(True, None, None, None)),
        (
            {
                "BACKEND_VERIFY_TLS": "false",
                "BACKEND_CA_BUNDLE": "/etc/gateway/ca.pem",
                "BACKEND_CLIENT_CERT": "c.pem,k.pem",
            },
            BackendTlsDefaults(False, Path("/etc/gateway/ca.pem"), Path("c.pem"), Path("k.pem")),
        ),
        (
            {"BACKEND_VERIFY_TLS": "yes", "BACKEND_CLIENT_CERT": " cert.pem "},
            BackendTlsDefaults(True, None, Path("cert.pem"), None),
        ),
        (
            {"BACKEND_CLIENT_CERT": "/pki/client.crt , /pki/client.key"},
            BackendTlsDefaults(True, None, Path("/pki/client.crt"), Path("/pki/client.key")),
        ),
    ],
)
def test_backend_tls_defaults_from_env(
    environ: dict[str, str], expected: BackendTlsDefaults
) -> None:
    settings = Settings.from_env({"GATEWAY_BEARER_TOKEN": secrets.token_urlsafe(24), **environ})

    assert settings.backend_tls == expected


# -- refused configs --------------------------------------------------------------------------


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """``gateway check-config PATH`` in a fresh interpreter, free of the caller's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKEND_", "GATEWAY_"))}
    env["IMAGES_BACKEND"] = "off"  # only the file's backends
    return gateway_cli("check-config", str(path), env=env)


def write_config(tmp_path: Path, tls: str) -> Path:
    config = gateway_yaml(
        backend_yaml(
            "secure",
            "https://127.0.0.1:9/v1",
            models="[mock-llama]",
            health="{readiness: false}",
            tls=tls,
        )
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(config)
    return path


def test_check_config_accepts_valid_tls_files(tmp_path: Path, pki: TestPki) -> None:
    path = write_config(tmp_path, mtls())

    result = check_config(path)

    assert result.returncode == 0, result.stderr
    assert f"{path}: OK (1 backends, 0 aliases)" in result.stdout


def test_check_config_refuses_garbage_client_cert(tmp_path: Path, pki: TestPki) -> None:
    (pki.directory / "garbage.pem").write_text(GARBAGE_PEM)
    path = write_config(tmp_path, mtls("certs/garbage.pem", client_key="certs/client.key"))

    result = check_config(path)

    assert result.returncode != 0
    assert "backends.secure.tls" in result.stderr
    assert "cannot load the client certificate" in result.stderr
    assert f"{path}: 1 error" in result.stderr


def test_check_config_reports_missing_cert_with_key_path_and_line(
    tmp_path: Path, pki: TestPki
) -> None:
    path = write_config(tmp_path, mtls("certs/missing.crt", client_key="certs/client.key"))

    result = check_config(path)

    assert result.returncode != 0
    line = line_of(path.read_text(), "tls:")
    assert (
        f"{path}:{line}: backends.secure.tls.client_cert: file not found: certs/missing.crt"
        in result.stderr
    )
