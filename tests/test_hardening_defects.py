"""Issue 10, item 10: defects found in review, each as a fault with a number that held.

- NaN and infinity in a float setting (environment or ``gateway.yaml``) are refused.
- A start-up step that fails closes what earlier steps opened (open file descriptors).
- ``gateway serve`` loads the config once (calls of the loader).
- A reload does not close a client under a running audio download (bytes received),
  and a probe on the retired client never marks the new backend down (health state).
- The UI's and ``/mcp``'s Origin checks compare scheme, host and port (requests let in).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar import cli
from sidecar.config import reload as reload_module
from sidecar.config.loader import ConfigError, load_config
from sidecar.routing.health import HealthChecker
from sidecar.routing.registry import HealthState, RegistryHolder, build_registry
from sidecar.settings import BackendTlsDefaults, Settings, SettingsError, UiSettings
from sidecar.typedefs import REGISTRY, RELOADER

from .conftest import TOKEN, GatewayFactory, backend_yaml, eventually, gateway_yaml, make_settings
from .test_ui_api import CONVERSATIONS, add_user, log_in

AUTH = {"Authorization": f"Bearer {TOKEN}"}
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
POLL_ROUNDS = 2000  # x 10 ms


wait_for = functools.partial(eventually, attempts=POLL_ROUNDS, poll_s=0.01)


# -- NaN and infinity in float settings ------------------------------------------------------

FLOAT_SETTINGS = (
    "GATEWAY_CONFIG_POLL_S",
    "UI_SESSION_IDLE_S",
    "UI_SESSION_MAX_S",
    "IMAGES_RETENTION_HOURS",
)
NOT_FINITE = ("nan", "NaN", "-nan", "inf", "-inf", "Infinity", "+infinity", "1e999")


def test_nan_and_infinity_are_refused_in_every_float_setting() -> None:
    refused = 0
    for name in FLOAT_SETTINGS:
        for value in NOT_FINITE:
            with pytest.raises(SettingsError, match=name):
                Settings.from_env({"GATEWAY_BEARER_TOKEN": TOKEN, name: value})
            refused += 1
        assert Settings.from_env({"GATEWAY_BEARER_TOKEN": TOKEN, name: "3600"})  # finite: fine
    assert refused == len(FLOAT_SETTINGS) * len(NOT_FINITE)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN", "1.0e+999"])
def test_nan_and_infinity_are_refused_in_yaml_numbers(tmp_path: Path, value: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        gateway_yaml(
            backend_yaml("a", "http://127.0.0.1:9/v1", timeouts=f"{{read_s: {value}}}"),
        )
    )
    with pytest.raises(ConfigError) as refused:
        load_config(path, {}, BackendTlsDefaults())
    assert "read_s" in refused.value.render() and "finite" in refused.value.render()


# -- start-up failures close what was opened -------------------------------------------------


def open_fds_to(*paths: Path) -> int:
    """How many of this process's file descriptors point at one of ``paths``."""
    targets = {str(path.resolve()) for path in paths}
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        count += target in targets
    return count


def test_a_failed_start_up_closes_the_tool_log_and_users_database(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(gateway_yaml(backend_yaml("a", "http://127.0.0.1:9/v1")))
    data = tmp_path / "var"
    # The UI's key is a folder: the last start-up step fails after the tool log (an
    # earlier step) and the users database (the same step) were opened.
    (data / "secrets" / "ui.key").mkdir(parents=True)
    settings = make_settings(config, data, host="127.0.0.1", port=0)
    with pytest.raises(IsADirectoryError):
        asyncio.run(cli._serve(settings))
    tool_log, users_db = settings.tool_log_path, settings.user_db_path
    assert tool_log.exists() and users_db.exists()  # both were opened ...
    assert open_fds_to(tool_log, users_db) == 0  # ... and both were closed


# -- serve loads the config once -------------------------------------------------------------


def test_serve_loads_the_config_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(gateway_yaml(backend_yaml("a", "http://127.0.0.1:9/v1")))
    calls: list[Path] = []
    real = reload_module.load_config

    def counting(path: Path, *args: Any) -> Any:
        calls.append(path)
        return real(path, *args)

    async def stop_at_once() -> None:
        return None

    monkeypatch.setattr(reload_module, "load_config", counting)
    monkeypatch.setattr(cli, "_until_stopped", stop_at_once)
    for name in [k for k in os.environ if k.startswith(("GATEWAY_", "TOOLS_", "UI_", "USER_"))]:
        monkeypatch.delenv(name)
    for name, value in {
        "GATEWAY_BEARER_TOKEN": TOKEN,
        "GATEWAY_CONFIG": str(config),
        "GATEWAY_DATA_DIR": str(tmp_path / "var"),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": "0",
        "GATEWAY_CONFIG_POLL_S": "0",
        "IMAGES_BACKEND": "off",
    }.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["serve"]) == 0
    assert calls == [config]


# -- reloads, retired clients, downloads and probes -------------------------------------------

SONG = b"RIFF" + bytes(range(256)) * 1024  # 256 KiB and a bit
FIRST_PART = 64 * 1024


def gated_music_app(gate: asyncio.Event, started: asyncio.Event) -> web.Application:
    """A HeartMuLa-like server whose audio stops after its first 64 KiB until ``gate``."""

    async def audio(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "audio/wav"})
        response.content_length = len(SONG)
        await response.prepare(request)
        await response.write(SONG[:FIRST_PART])
        started.set()
        await gate.wait()
        await response.write(SONG[FIRST_PART:])
        return response

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/audio/{filename}", audio)
    app.router.add_get("/{tail:.*}", ok)
    return app


def music_yaml(server: TestServer, connect_s: float) -> str:
    return gateway_yaml(
        backend_yaml(
            "music",
            f"http://{server.host}:{server.port}",
            protocol="heartmula",
            timeouts=f"{{connect_s: {connect_s}}}",
        )
    )


async def test_a_reload_never_closes_a_client_under_a_running_download(
    make_gateway: GatewayFactory, aiohttp_server: Any, tmp_path: Path
) -> None:
    gate, started = asyncio.Event(), asyncio.Event()
    fake = await aiohttp_server(gated_music_app(gate, started))
    gateway = await make_gateway(music_yaml(fake, 5))
    app = gateway.server.app
    old_client = app[REGISTRY].current.backends["music"].client

    response = await gateway.get("/music/" + "a" * 24 + ".wav", headers=AUTH)
    assert response.status == 200
    received = await response.content.readexactly(FIRST_PART)
    await wait_for(started.is_set, "the first part of the song")

    # A new connect timeout is a new connection key: the client is replaced and retired.
    (tmp_path / "gateway.yaml").write_text(music_yaml(fake, 6))
    outcome = await app[RELOADER].reload("test")
    assert outcome.ok, outcome
    assert app[REGISTRY].current.backends["music"].client is not old_client
    assert not old_client.closed  # still streaming: held open

    gate.set()
    received += await response.read()
    assert len(received) == len(SONG) and received == SONG
    await wait_for(lambda: old_client.closed, "the retired client to close once idle")


async def test_a_probe_on_a_retired_client_never_marks_the_new_backend_down(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    hold, arrived = asyncio.Event(), asyncio.Event()
    probes = 0

    async def readyz(request: web.Request) -> web.Response:
        nonlocal probes
        probes += 1
        if probes == 1:  # the first probe hangs until the reload has happened
            arrived.set()
            await hold.wait()
        return web.json_response({"status": "ok"})

    backend_app = web.Application()
    backend_app.router.add_get("/readyz", readyz)
    fake = await aiohttp_server(backend_app)
    path = tmp_path / "gateway.yaml"

    def registry_config(connect_s: float) -> Any:
        path.write_text(
            gateway_yaml(
                backend_yaml(
                    "b",
                    f"http://{fake.host}:{fake.port}/v1",
                    timeouts=f"{{connect_s: {connect_s}}}",
                    health="{readiness: /readyz, interval_s: 60}",
                    models="[{id: m, capabilities: [chat]}]",
                )
            )
        )
        return load_config(path, {}, BackendTlsDefaults())

    first, _ = build_registry(registry_config(5))
    holder = RegistryHolder(first)
    checker = HealthChecker(holder)
    old = first.backends["b"]
    probe = asyncio.create_task(checker.probe(old))
    await wait_for(arrived.is_set, "the probe to reach the backend")

    second, retired = build_registry(registry_config(6), first)
    holder.swap(second, retired)
    new = second.backends["b"]
    assert retired == [old.client] and new.health is old.health  # the health is shared
    await wait_for(lambda: old.client.closed, "the retired client to close")
    hold.set()
    await probe

    assert new.health.state != HealthState.DOWN and new.health.consecutive_failures == 0
    await checker.probe(new)  # the new client's own probe decides
    assert new.health.state == HealthState.READY and probes == 2
    await holder.close()


# -- Origin: scheme, host and port ------------------------------------------------------------

SITE = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw.lan:8443"}
ORIGINS = {
    "https://gw.lan:8443": True,
    "https://GW.lan:8443": True,
    "https://gw.lan:9999": False,
    "http://gw.lan:8443": False,
    "https://gw.lan": False,
    "https://evil.lan:8443": False,
    "https://gw.lan.evil.lan:8443": False,
    "null": False,
    "gw.lan:8443": False,
}


async def test_mcp_origin_check_compares_scheme_host_and_port(
    make_gateway: GatewayFactory,
) -> None:
    gateway: TestClient = await make_gateway(
        gateway_yaml(backend_yaml("a", "http://127.0.0.1:9/v1")), trusted_proxies=LOOPBACK
    )
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    let_in = {}
    for origin in ORIGINS:
        response = await gateway.post("/mcp", json=ping, headers={**AUTH, **SITE, "Origin": origin})
        let_in[origin] = response.status == 200
        if response.status != 200:
            assert response.status == 403
            assert (await response.json())["error"]["code"] == "origin_not_allowed"
    assert let_in == ORIGINS
    # Forwarded headers from an untrusted peer are not believed.
    untrusted = await make_gateway(gateway_yaml(backend_yaml("a", "http://127.0.0.1:9/v1")))
    response = await untrusted.post(
        "/mcp", json=ping, headers={**AUTH, **SITE, "Origin": "https://gw.lan:8443"}
    )
    assert response.status == 403


async def test_ui_origin_check_compares_scheme_host_and_port(
    make_gateway: GatewayFactory,
) -> None:
    gateway: TestClient = await make_gateway(
        gateway_yaml(backend_yaml("a", "http://127.0.0.1:9/v1")),
        ui=UiSettings(accounts=True),
        ui_ip_allowlist=LOOPBACK,
        trusted_proxies=LOOPBACK,
    )
    await add_user(gateway, "alice")
    alice = await log_in(gateway, "alice")
    let_in = {}
    for origin in ORIGINS:
        response = await alice.call(
            "POST", CONVERSATIONS, {"title": origin}, headers={**SITE, "Origin": origin}
        )
        let_in[origin] = response.status == 201
        if response.status != 201:
            assert response.status == 403
            assert (await response.json())["error"]["code"] == "csrf_failed"
    assert let_in == ORIGINS
    listed = await alice.json("GET", CONVERSATIONS)
    assert sorted(c["title"] for c in listed["data"]) == sorted(
        o for o, ok in ORIGINS.items() if ok
    )
