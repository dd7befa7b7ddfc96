"""``tools/verify_gateway.py`` against real gateways: one from the app factory, one it starts.

The tool blocks (it is an operator's command with urllib), so the in-process tests run
its ``main`` in a thread while the gateway and the fake backends serve on this loop.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from sidecar.settings import ImagesSettings

from .conftest import TOKEN, gateway_yaml, mock_backend_yaml

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "verify_gateway.py"
TOOLS = """
tools:
  noop:
    version: "1"
    parameters: {type: object}
    builtin: noop
"""
LIVE_CHECKS = ("healthz", "readyz", "models", "chat", "chat-stream", "embeddings", "tools")
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed, (\d+) skipped$", re.MULTILINE)


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("verify_gateway", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


verify_gateway = load_tool()


async def verify(client: TestClient, capsys: Any, *flags: str) -> tuple[int, dict[str, str]]:
    """Run the tool against ``client``'s gateway: its exit status and line per check."""
    base_url = str(client.make_url("/")).rstrip("/")
    argv = ["--skip-pytest", "--base-url", base_url, "--token", TOKEN, *flags]
    code = await asyncio.to_thread(verify_gateway.main, argv)
    out = capsys.readouterr().out
    lines = {}
    for line in out.splitlines():
        verdict, _, rest = line.partition(" ")
        if verdict in ("PASS", "FAIL", "SKIP"):
            lines[rest.split(":")[0]] = line
    assert SUMMARY.search(out), out
    return code, lines


async def backend_state(client: TestClient, name: str) -> str:
    response = await client.get("/v1/gateway/status", headers={"Authorization": f"Bearer {TOKEN}"})
    body = await response.json()
    return next(b["health"]["state"] for b in body["backends"] if b["name"] == name)


async def wait_for_state(client: TestClient, name: str, states: set[str]) -> None:
    for _ in range(200):
        if await backend_state(client, name) in states:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"backend {name} never reached {states}: {await backend_state(client, name)}")


@pytest.fixture
async def fake_only(make_gateway: Any, start_mock: Any) -> TestClient:
    """Fake backends only: the ``mock`` chat/embeddings server and the built-in images."""
    backend = await start_mock()
    return await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend)) + TOOLS,
        images=ImagesSettings(backend="mock"),
    )


async def test_passes_against_fake_backends_and_says_real_ones_were_not_checked(
    fake_only: TestClient, capsys: Any
) -> None:
    code, lines = await verify(fake_only, capsys, "--check-images")

    assert code == 0, lines
    for name in (*LIVE_CHECKS, "images-b64", "images-url"):
        assert lines[name].startswith(f"PASS {name}"), lines[name]
    assert lines["backends"].startswith("SKIP backends: no real backend is healthy (")
    assert "mock: ready [fake]" in lines["backends"]
    assert "images: ready [fake]" in lines["backends"]
    assert "fake backends only" in lines["backends"]
    assert "mock-llama on mock [fake]" in lines["chat"]
    assert "fetched without the token" in lines["images-url"]
    # This gateway's UI allowlist is empty: the UI is closed, which is not a failure.
    assert lines["ui"].startswith("SKIP ui: the UI is closed to this address")


async def test_require_backend_fails_when_only_fake_backends_are_healthy(
    fake_only: TestClient, capsys: Any
) -> None:
    code, lines = await verify(fake_only, capsys, "--require-backend")

    assert code == 1
    assert lines["backends"].startswith("FAIL backends: no real backend is healthy (")
    assert "mock: ready [fake]" in lines["backends"]
    assert all(lines[name].startswith("PASS") for name in LIVE_CHECKS)
    assert "images-b64" not in lines  # only with --check-images


async def test_require_backend_follows_a_real_backend_going_down(
    make_gateway: Any, start_mock: Any, capsys: Any
) -> None:
    fake = await start_mock()
    real = await start_mock()
    config = gateway_yaml(
        mock_backend_yaml("mock", fake),
        mock_backend_yaml(
            "gpu", real, **{"class": "gpu_light", "health": "{interval_s: 0.2, timeout_s: 1}"}
        ),
    )
    gateway = await make_gateway(config + TOOLS)
    await wait_for_state(gateway, "gpu", {"ready"})

    code, lines = await verify(gateway, capsys, "--require-backend")
    assert code == 0, lines
    assert lines["backends"].startswith("PASS backends: mock: ready [fake], gpu: ready")
    assert "gpu/mock-llama on gpu," in lines["chat"]  # a real backend is preferred
    assert "gpu/mock-embed on gpu," in lines["embeddings"]

    await real.close()
    await wait_for_state(gateway, "gpu", {"down", "not_ready"})

    code, lines = await verify(gateway, capsys, "--require-backend")
    assert code == 1
    failure = lines["backends"]
    assert failure.startswith("FAIL backends: no real backend is healthy (mock: ready [fake]")
    assert re.search(r"gpu: (down|not_ready)", failure), failure
    assert "mock-llama on mock [fake]" in lines["chat"]  # the fake still exercises the path


async def test_usage_errors_exit_2(capsys: Any) -> None:
    assert verify_gateway.main(["--base-url", "ftp://example"]) == 2
    assert verify_gateway.main(["--token", "x", "--skip-pytest"]) == 2
    assert "apply to --base-url" in capsys.readouterr().err


def port_is_closed(url: str) -> bool:
    port = int(url.rsplit(":", 1)[1])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


@pytest.mark.timeout(120)
def test_starts_checks_and_stops_its_own_gateway() -> None:
    result = subprocess.run(
        [sys.executable, str(TOOL), "--skip-pytest", "--check-images", "--start-timeout", "60"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    start = re.search(r"^PASS start: (https://127\.0\.0\.1:\d+) \(data dir (.+)\)$", output, re.M)
    assert start, output
    for name in (*LIVE_CHECKS, "ui", "images-b64", "images-url", "stop"):
        assert re.search(rf"^PASS {name}\b", output, re.MULTILINE), output
    summary = SUMMARY.search(output)
    assert summary and summary.group(2) == "0", output
    assert port_is_closed(start.group(1))
    assert not Path(start.group(2)).exists()


@pytest.mark.timeout(180)
def test_a_port_taken_before_caddy_binds_it_is_traded_for_another(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """Another program takes the chosen port between the choice and Caddy's bind: the
    gateway is started again on another free port instead of failing the run."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        taken = holder.getsockname()[1]
        monkeypatch.setattr(verify_gateway, "free_port", lambda: taken)
        gateway = verify_gateway.OwnGateway(None, 60.0, 30.0)
        assert gateway.base_url.endswith(f":{taken}")
        monkeypatch.undo()
        try:
            started = gateway.start()
            assert not started.startswith(f"https://127.0.0.1:{taken} "), started
            assert gateway._ready()
            assert f"port {taken} is already in use" in (gateway.data_dir / "up.1.log").read_text()
        finally:
            assert gateway.stop() == "stopped cleanly"
    assert not gateway.data_dir.exists()
