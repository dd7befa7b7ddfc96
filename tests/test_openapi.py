"""/openapi.json describes every /v1 route, and fuzzing the API from it finds no 5xx.

The fuzz test runs the real processes — two fake backends, ``gateway serve`` on a
loopback port — and schemathesis' CLI against them with a fixed seed and a bounded
number of cases, checking for server errors and responses that break the schema.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis

from .conftest import TOKEN, free_port, gateway_yaml, mock_backend_yaml, wait_listening

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


async def test_openapi_lists_every_v1_route(make_gateway: Any, start_mock: Any) -> None:
    backend = await start_mock()
    gateway = await make_gateway(gateway_yaml(mock_backend_yaml("mock", backend)))
    response = await gateway.get("/openapi.json")
    assert response.status == 200
    spec = await response.json()
    assert spec["openapi"].startswith("3.1")
    routes = {
        (route.resource.canonical, route.method.lower())
        for route in gateway.server.app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/v1/")
        and route.method != "HEAD"
    }
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert routes == documented
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            assert "401" in operation["responses"], path
    schemathesis.openapi.from_dict(spec)  # loads as a valid schema


@pytest.fixture
def live_gateway(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    mock, music, gateway = free_port(), free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""version: 1
backends:
  mock:
    url: http://127.0.0.1:{mock}/v1
    class: mock
    health: {{liveness: /healthz, readiness: /readyz, interval_s: 1}}
    models:
      - {{id: mock-llama, capabilities: [chat, completions]}}
      - {{id: mock-embed, capabilities: [embeddings]}}
  music:
    url: http://127.0.0.1:{music}
    protocol: heartmula
aliases:
  default: {{backend: mock, model: mock-llama}}
tools:
  noop: {{version: "1", parameters: {{type: object}}, builtin: noop}}
  calculator:
    version: "1"
    parameters:
      type: object
      properties: {{expression: {{type: string, maxLength: 200}}}}
      required: [expression]
      additionalProperties: false
    builtin: calculator
"""
    )
    agents = tmp_path / "agents.json"
    agents.write_text(
        '{"agents": {"default": {"model": "default", "tools": ["calculator", "noop"],'
        ' "max_turns": 3}}}'
    )
    env = {
        **os.environ,
        "GATEWAY_BEARER_TOKEN": TOKEN,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(gateway),
        "GATEWAY_DATA_DIR": str(tmp_path / "var"),
        "GATEWAY_CONFIG": str(config),
        "AGENT_SPECS_PATH": str(agents),
        "GATEWAY_CONFIG_POLL_S": "0",
        "IMAGES_BACKEND": "mock",
    }
    log = (tmp_path / "gateway.log").open("wb")
    python = [sys.executable, "-m", "sidecar"]
    processes = [
        subprocess.Popen([*python, "mock-backends", "--port", str(mock)], cwd=ROOT, env=env),
        subprocess.Popen(
            [
                *python,
                "mock-backends",
                "--kind",
                "heartmula",
                "--port",
                str(music),
                "--audio-dir",
                str(tmp_path / "audio"),
            ],
            cwd=ROOT,
            env=env,
        ),
    ]
    try:
        wait_listening(mock, processes[0])
        wait_listening(music, processes[1])
        processes.append(
            subprocess.Popen([*python, "serve"], cwd=ROOT, env=env, stdout=log, stderr=log)
        )
        wait_listening(gateway, processes[2])
        yield f"http://127.0.0.1:{gateway}", tmp_path / "gateway.log"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


@pytest.mark.timeout(240)
def test_fuzzing_from_the_schema_finds_no_server_errors(
    live_gateway: tuple[str, Path], tmp_path: Path
) -> None:
    base, log = live_gateway
    result = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "run",
            f"{base}/openapi.json",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--checks",
            "not_a_server_error,response_schema_conformance,content_type_conformance",
            "--max-examples",
            "25",
            "--seed",
            "20261126",
            "--workers",
            "1",
            "--request-timeout",
            "30",
        ],
        cwd=tmp_path,  # schemathesis keeps its example database in the working directory
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:]
    gateway_log = log.read_text()
    assert "Traceback" not in gateway_log
    assert "unhandled error" not in gateway_log
