"""The tool bus through the app factory: hashes, listing and refusals, argument checks,
the record of every call and its replay, and the tools' config.

Executors that run a process or call a backend are in ``test_toolbus_exec.py``. Fake
backends are real aiohttp servers on loopback; nothing here depends on how fast anything
runs.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.app import create_app
from sidecar.config import load_config, parse_config
from sidecar.errors import ConfigError
from sidecar.mock_backends import MockBehaviour, create_mock_app
from sidecar.settings import BackendTlsDefaults, ToolsSettings
from sidecar.toolbus.hashing import request_hash

from .conftest import (
    OTHER_TOKEN,
    TOKEN,
    GatewayFactory,
    eventually,
    gateway_cli,
    gateway_yaml,
    line_of,
    make_settings,
    mock_backend_yaml,
)

REPLAY_ID = re.compile(r"^tool-[0-9a-f]{24}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
VECTOR_HI = "68a4c5f7d6540b44021f651af5947368d743f5f84f38d68ec5395cd37e4950c2"
VECTOR_EMPTY = "af9575d59fcd216d806426a07271a738a48073b2e06385251be99ca2847f57d7"
WAIT_S = 10.0

NOOP: dict[str, Any] = {
    "version": "1",
    "description": "Returns its arguments.",
    "parameters": {"type": "object"},
    "builtin": "noop",
    "concurrency": 100,
}
CALCULATOR: dict[str, Any] = {
    "version": "1",
    "description": "Arithmetic.",
    "parameters": {
        "type": "object",
        "properties": {"expression": {"type": "string"}},
        "required": ["expression"],
    },
    "builtin": "calculator",
}

# What the fake backend behind http tools was sent: {"path", "body", "headers"} per request.
RECEIVED = web.AppKey("received", list)


# -- helpers shared with test_toolbus_exec.py ----------------------------------------------


def headers_for(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _echo(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[RECEIVED].append(
        {"path": request.path, "body": body, "headers": request.headers.copy()}
    )
    # Fields named like the bus's own: the bus must not let them through at the top level.
    return web.json_response({"echoed": body, "replay_id": "from-backend", "ok": False})


async def _fail(request: web.Request) -> web.Response:
    request.app[RECEIVED].append({"path": request.path, "body": await request.json()})
    return web.json_response({"error": {"message": "the tool exploded"}}, status=500)


@pytest.fixture(name="backend")
async def backend_fixture(start_mock: Callable[..., Awaitable[TestServer]]) -> TestServer:
    """The fake model server (so the config has a backend) with tool routes for http tools."""
    app = create_mock_app(MockBehaviour())
    app[RECEIVED] = []
    app.router.add_post("/tools/echo", _echo)
    app.router.add_post("/tools/fail", _fail)
    return await start_mock(app)


def tools_config(
    backend: TestServer,
    tools: dict[str, Any],
    token_tools: dict[str, list[str]] | None = None,
) -> str:
    """``gateway.yaml`` with one backend ``b`` and ``tools`` (JSON is YAML flow style)."""
    text = gateway_yaml(mock_backend_yaml("b", backend))
    text += f"tools: {json.dumps(tools)}\n"
    if token_tools is not None:
        text += f"token_tools: {json.dumps(token_tools)}\n"
    return text


def log_settings(tmp_path: Path, mode: str = "both") -> ToolsSettings:
    return ToolsSettings(
        log_mode=mode,
        log_path=tmp_path / "log" / "calls.ndjson",
        log_dir=tmp_path / "log" / "calls",
    )


async def call(
    client: TestClient, name: str, arguments: Any = None, token: str = TOKEN
) -> tuple[int, dict[str, Any]]:
    body = {} if arguments is None else {"arguments": arguments}
    response = await client.post(f"/v1/tools/{name}", json=body, headers=headers_for(token))
    return response.status, await response.json()


async def call_ok(client: TestClient, name: str, arguments: Any = None) -> dict[str, Any]:
    status, body = await call(client, name, arguments)
    assert status == 200, body
    return body


wait_for = functools.partial(eventually, attempts=round(WAIT_S / 0.02), poll_s=0.02)


def assert_error(body: dict[str, Any], code: str) -> str:
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    return body["error"]["message"]


# -- 1. request_hash -----------------------------------------------------------------------


def test_request_hash_matches_the_design_vectors() -> None:
    assert request_hash("noop", "1", {"text": "hi"}) == VECTOR_HI
    assert request_hash("noop", "1", {}) == VECTOR_EMPTY


def test_request_hash_is_canonical_and_depends_on_every_part() -> None:
    assert request_hash("noop", "1", {"b": [1, 2.0], "a": 1.0}) == request_hash(
        "noop", "1", {"a": 1, "b": [1.0, 2]}
    )
    assert request_hash("noop", "2", {}) != VECTOR_EMPTY
    assert request_hash("other", "1", {}) != VECTOR_EMPTY
    assert request_hash("noop", "1", {"text": "hi!"}) != VECTOR_HI


async def test_api_hashes_match_the_vectors_and_every_call_gets_a_new_replay_id(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    client = await make_gateway(tools_config(backend, {"noop": NOOP}), tools=log_settings(tmp_path))
    first = await call_ok(client, "noop", {"text": "hi"})
    second = await call_ok(client, "noop", {"text": "hi"})
    empty = await call_ok(client, "noop", {})
    no_arguments = await call_ok(client, "noop")

    assert first["request_hash"] == second["request_hash"] == VECTOR_HI
    assert empty["request_hash"] == no_arguments["request_hash"] == VECTOR_EMPTY
    assert first["ok"] is True and first["result"] == {"echo": {"text": "hi"}}
    assert first["tool"] == "noop" and first["version"] == "1"
    assert isinstance(first["duration_ms"], int | float)
    ids = [body["replay_id"] for body in (first, second, empty, no_arguments)]
    assert all(REPLAY_ID.match(replay_id) for replay_id in ids), ids
    assert len(set(ids)) == len(ids)


async def test_key_order_and_number_spelling_do_not_change_the_hash(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    client = await make_gateway(tools_config(backend, {"noop": NOOP}), tools=log_settings(tmp_path))
    spellings = [
        b'{"arguments": {"a": 1.0, "b": [1, 2.50], "c": {"y": 1e2, "x": "s"}}}',
        b'{"arguments": {"c": {"x": "s", "y": 100}, "b": [1.0, 2.5], "a": 1}}',
    ]
    bodies = []
    for raw in spellings:
        response = await client.post(
            "/v1/tools/noop",
            data=raw,
            headers={**headers_for(), "Content-Type": "application/json"},
        )
        assert response.status == 200
        bodies.append(await response.json())
    expected = request_hash("noop", "1", {"a": 1, "b": [1, 2.5], "c": {"x": "s", "y": 100}})
    assert bodies[0]["request_hash"] == bodies[1]["request_hash"] == expected
    assert bodies[0]["replay_id"] != bodies[1]["replay_id"]
    different = await call_ok(client, "noop", {"a": 2, "b": [1, 2.5], "c": {"x": "s", "y": 100}})
    assert different["request_hash"] != expected


# -- 2. listing, allowlists, refusals, argument checks -------------------------------------


async def test_list_shows_each_tools_contract(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    client = await make_gateway(
        tools_config(backend, {"noop": NOOP, "calculator": CALCULATOR}),
        tools=log_settings(tmp_path),
    )
    response = await client.get("/v1/tools", headers=headers_for())
    assert response.status == 200
    body = await response.json()
    assert body["object"] == "list"
    assert sorted(body["data"], key=lambda tool: tool["name"]) == [
        {
            "name": "calculator",
            "version": "1",
            "description": "Arithmetic.",
            "parameters": CALCULATOR["parameters"],
        },
        {
            "name": "noop",
            "version": "1",
            "description": "Returns its arguments.",
            "parameters": {"type": "object"},
        },
    ]
    assert (await client.get("/v1/tools")).status == 401
    assert (await client.post("/v1/tools/noop", json={})).status == 401


async def test_global_allowlist_hides_and_refuses_other_tools(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    settings = log_settings(tmp_path)
    client = await make_gateway(
        tools_config(backend, {"noop": NOOP, "calculator": CALCULATOR}),
        tools=ToolsSettings(
            allowlist=frozenset({"noop"}), log_path=settings.log_path, log_dir=settings.log_dir
        ),
    )
    listed = await (await client.get("/v1/tools", headers=headers_for())).json()
    assert [tool["name"] for tool in listed["data"]] == ["noop"]

    status, body = await call(client, "calculator", {"expression": "1+1"})
    assert status == 403
    assert "calculator" in assert_error(body, "tool_not_allowed")
    status, body = await call(client, "nope", {})
    assert status == 404
    assert "nope" in assert_error(body, "tool_not_found")
    assert (await call(client, "noop", {}))[0] == 200


async def test_token_tools_restrict_the_named_token_only(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    client = await make_gateway(
        tools_config(
            backend, {"noop": NOOP, "calculator": CALCULATOR}, token_tools={"other": ["noop"]}
        ),
        tools=log_settings(tmp_path),
    )
    other = await (await client.get("/v1/tools", headers=headers_for(OTHER_TOKEN))).json()
    assert [tool["name"] for tool in other["data"]] == ["noop"]
    status, body = await call(client, "calculator", {"expression": "1+1"}, token=OTHER_TOKEN)
    assert status == 403
    assert_error(body, "tool_not_allowed")
    assert (await call(client, "noop", {"x": 1}, token=OTHER_TOKEN))[0] == 200

    default = await (await client.get("/v1/tools", headers=headers_for())).json()
    assert sorted(tool["name"] for tool in default["data"]) == ["calculator", "noop"]
    status, body = await call(client, "calculator", {"expression": "1+1"})
    assert status == 200 and body["result"] == {"value": 2}


async def test_unknown_tool_is_404(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    client = await make_gateway(tools_config(backend, {"noop": NOOP}), tools=log_settings(tmp_path))
    status, body = await call(client, "does-not-exist", {})
    assert status == 404
    assert "does-not-exist" in assert_error(body, "tool_not_found")


STRICT: dict[str, Any] = {
    "version": "3",
    "parameters": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "mode": {"enum": ["fast", "slow"]},
            "count": {"type": "integer", "minimum": 1, "maximum": 10},
            "low": {"type": "number", "minimum": 0},
            "level": {"type": "integer"},
        },
        "required": ["name", "level"],
        "additionalProperties": False,
    },
    "builtin": "noop",
}


async def test_bad_arguments_are_400_listing_every_violation(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    client = await make_gateway(
        tools_config(backend, {"strict": STRICT}), tools=log_settings(tmp_path)
    )
    arguments = {"name": 5, "mode": "medium", "count": 99, "low": -1, "extra": True}
    status, body = await call(client, "strict", arguments)
    assert status == 400
    message = assert_error(body, "invalid_arguments")
    assert body["error"]["param"] == "arguments"
    for violation in (
        "5 is not of type 'string'",  # type
        "'level' is a required property",  # required
        "'medium' is not one of ['fast', 'slow']",  # enum
        "99 is greater than the maximum of 10",  # maximum
        "-1 is less than the minimum of 0",  # minimum
        "'extra' was unexpected",  # additionalProperties
    ):
        assert violation in message, (violation, message)

    status, body = await call(client, "strict", {"name": "n", "level": 1, "count": 0})
    assert status == 400
    assert "0 is less than the minimum of 1" in assert_error(body, "invalid_arguments")
    status, body = await call(client, "strict", [1, 2])
    assert status == 400
    assert "is not of type 'object'" in assert_error(body, "invalid_arguments")
    status, body = await call(client, "strict", {"name": "n", "level": 1, "mode": "fast"})
    assert status == 200 and body["ok"] is True
    # Refused calls are not recorded: only the one that ran is in the log (intent, outcome).
    lines = (tmp_path / "log" / "calls.ndjson").read_text().splitlines()
    assert [(json.loads(line)["replay_id"], json.loads(line)["phase"]) for line in lines] == [
        (body["replay_id"], "started"),
        (body["replay_id"], "finished"),
    ]


async def test_a_failing_call_is_ok_false_with_an_error_type(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    client = await make_gateway(
        tools_config(backend, {"calculator": CALCULATOR}), tools=log_settings(tmp_path)
    )
    status, body = await call(client, "calculator", {"expression": "1/0"})
    assert status == 200
    assert body["ok"] is False and "result" not in body
    assert body["error"]["type"] == "calculation_error"
    assert body["error"]["message"]
    assert REPLAY_ID.match(body["replay_id"])
    assert body["request_hash"] == request_hash("calculator", "1", {"expression": "1/0"})


# -- 6. logs and replay --------------------------------------------------------------------


def ndjson_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def file_records(directory: Path) -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in directory.iterdir()}


@pytest.mark.parametrize("mode", ["ndjson", "per_invocation", "both"])
async def test_every_call_is_recorded_with_its_token_name_never_its_value(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path, mode: str
) -> None:
    settings = log_settings(tmp_path, mode)
    assert settings.log_path is not None and settings.log_dir is not None
    client = await make_gateway(
        tools_config(backend, {"noop": NOOP, "calculator": CALCULATOR}), tools=settings
    )
    good = await call_ok(client, "noop", {"text": "hi"})
    status, bad = await call(client, "calculator", {"expression": "1/0"}, token=OTHER_TOKEN)
    assert status == 200 and bad["ok"] is False

    records: dict[str, dict[str, Any]] = {}
    if mode in ("ndjson", "both"):
        lines = ndjson_records(settings.log_path)
        assert [line["phase"] for line in lines].count("started") == 2
        # The newest line of each id is its outcome.
        records = {record["replay_id"]: record for record in lines}
    else:
        assert not settings.log_path.exists()
    if mode in ("per_invocation", "both"):
        in_files = file_records(settings.log_dir)  # no leftover temp files either
        if records:
            assert in_files == records
        records = in_files
    else:
        assert not settings.log_dir.exists()
    assert set(records) == {good["replay_id"], bad["replay_id"]}

    first = records[good["replay_id"]]
    assert isinstance(first["ts"], int | float) and isinstance(first["duration_ms"], int | float)
    assert first["request_hash"] == VECTOR_HI
    assert (first["tool"], first["version"], first["token"]) == ("noop", "1", "default")
    assert first["arguments"] == {"text": "hi"}
    assert first["ok"] is True and first["result"] == {"echo": {"text": "hi"}}
    assert "error" not in first

    second = records[bad["replay_id"]]
    assert (second["tool"], second["token"]) == ("calculator", "other")
    assert second["arguments"] == {"expression": "1/0"}
    assert second["ok"] is False and second["error"] == bad["error"]
    assert "result" not in second

    for replay_id, record in records.items():
        # Each record is read by the token that made it (the other one gets a 404).
        owner = TOKEN if record["token"] == "default" else OTHER_TOKEN
        response = await client.get(f"/v1/tools/replay/{replay_id}", headers=headers_for(owner))
        assert response.status == 200
        assert record["phase"] == "finished"
        assert await response.json() == {**record, "complete": True}

    written = [settings.log_path] if mode != "per_invocation" else []
    if mode != "ndjson":
        written += list(settings.log_dir.iterdir())
    for path in written:
        text = path.read_text()
        assert TOKEN not in text and OTHER_TOKEN not in text, path


@pytest.mark.parametrize("mode", ["ndjson", "both"])
async def test_fifty_concurrent_calls_write_fifty_whole_lines(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path, mode: str
) -> None:
    settings = log_settings(tmp_path, mode)
    assert settings.log_path is not None
    client = await make_gateway(tools_config(backend, {"noop": NOOP}), tools=settings)
    # Long lines (well over a pipe buffer or a page) give interleaving every chance.
    bodies = await asyncio.gather(
        *(call_ok(client, "noop", {"i": i, "pad": "x" * 20_000}) for i in range(50))
    )
    assert all(body["ok"] for body in bodies)

    raw = settings.log_path.read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    assert len(lines) == 100  # an intent and an outcome per call
    records = [json.loads(line) for line in lines]
    assert sorted(record["phase"] for record in records) == ["finished"] * 50 + ["started"] * 50
    records = [record for record in records if record["phase"] == "finished"]
    assert {record["replay_id"] for record in records} == {body["replay_id"] for body in bodies}
    assert sorted(record["arguments"]["i"] for record in records) == list(range(50))
    for body in bodies:  # the index points at each whole line
        response = await client.get(f"/v1/tools/replay/{body['replay_id']}", headers=headers_for())
        assert response.status == 200
        assert (await response.json())["request_hash"] == body["request_hash"]


@pytest.mark.parametrize("mode", ["ndjson", "per_invocation", "both"])
async def test_records_are_found_after_a_restart(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path, mode: str
) -> None:
    config = tools_config(backend, {"noop": NOOP})
    first = await make_gateway(config, tools=log_settings(tmp_path, mode))
    old = [await call_ok(first, "noop", {"n": n}) for n in range(3)]
    await first.close()

    second = await make_gateway(config, tools=log_settings(tmp_path, mode))
    new = await call_ok(second, "noop", {"n": 3})
    for body in [*old, new]:
        response = await second.get(f"/v1/tools/replay/{body['replay_id']}", headers=headers_for())
        assert response.status == 200
        record = await response.json()
        assert record["replay_id"] == body["replay_id"]
        assert record["request_hash"] == body["request_hash"]
        assert record["result"] == body["result"]


@pytest.mark.parametrize("mode", ["ndjson", "per_invocation", "both"])
async def test_unknown_or_malformed_replay_ids_are_404(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path, mode: str
) -> None:
    settings = log_settings(tmp_path, mode)
    client = await make_gateway(tools_config(backend, {"noop": NOOP}), tools=settings)
    real = (await call_ok(client, "noop", {}))["replay_id"]
    for replay_id in (
        "tool-" + "0" * 24,
        real.upper(),
        real + "0",
        real[:-1],
        "run-" + "0" * 24,
        "nonsense",
        "..%2Fcalls.ndjson",
        "tool-..%2F..%2Fgateway",
    ):
        for method in ("GET", "POST"):
            response = await client.request(
                method, f"/v1/tools/replay/{replay_id}", headers=headers_for()
            )
            assert response.status == 404, (method, replay_id)
            assert_error(await response.json(), "replay_not_found")


async def test_replay_of_a_deterministic_tool_matches(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    client = await make_gateway(
        tools_config(backend, {"calculator": CALCULATOR}), tools=log_settings(tmp_path)
    )
    original = await call_ok(client, "calculator", {"expression": "(2+3)*4"})
    response = await client.post(f"/v1/tools/replay/{original['replay_id']}", headers=headers_for())
    assert response.status == 200
    outcome = await response.json()
    assert outcome["matches"] is True
    assert outcome["request_hash_matches"] is True and outcome["version_matches"] is True
    assert outcome["original_replay_id"] == original["replay_id"]
    replay = outcome["replay"]
    assert replay["result"] == {"value": 20}
    assert replay["request_hash"] == original["request_hash"]
    assert REPLAY_ID.match(replay["replay_id"]) and replay["replay_id"] != original["replay_id"]
    # The replay is itself a recorded call.
    again = await client.get(f"/v1/tools/replay/{replay['replay_id']}", headers=headers_for())
    assert again.status == 200


async def test_replay_of_a_failed_call_matches_when_it_fails_the_same_way(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    client = await make_gateway(
        tools_config(backend, {"calculator": CALCULATOR}), tools=log_settings(tmp_path)
    )
    original = await call_ok(client, "calculator", {"expression": "1/0"})
    response = await client.post(f"/v1/tools/replay/{original['replay_id']}", headers=headers_for())
    outcome = await response.json()
    assert outcome["matches"] is True
    assert outcome["replay"]["ok"] is False
    assert outcome["replay"]["error"] == original["error"]


# -- 8. TOOLS_REGISTRY_PATH ----------------------------------------------------------------


def yaml_text(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


REGISTRY = yaml_text(
    """
    tools:
      registered:
        version: "7"
        description: From the registry file.
        builtin: noop
      calc:
        builtin: calculator
        parameters: {type: object, required: [expression]}
    token_tools:
      other: [registered]
    """
)

BROKEN_REGISTRY = yaml_text(
    """
    tools:
      fine:
        builtin: noop
      broken:
        builtin: noop
        parameters: {type: nope}
    """
)


async def test_registry_file_replaces_the_yaml_tools(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    registry = tmp_path / "tools.yaml"
    registry.write_text(REGISTRY)
    settings = log_settings(tmp_path)
    client = await make_gateway(
        tools_config(backend, {"noop": NOOP}),
        tools=ToolsSettings(
            registry_path=registry, log_path=settings.log_path, log_dir=settings.log_dir
        ),
    )
    listed = await (await client.get("/v1/tools", headers=headers_for())).json()
    assert sorted(tool["name"] for tool in listed["data"]) == ["calc", "registered"]
    registered = next(tool for tool in listed["data"] if tool["name"] == "registered")
    assert registered["version"] == "7"
    assert registered["description"] == "From the registry file."

    status, body = await call(client, "noop", {})
    assert status == 404
    assert_error(body, "tool_not_found")
    body = await call_ok(client, "registered", {"text": "hi"})
    assert body["result"] == {"echo": {"text": "hi"}}
    assert body["request_hash"] == request_hash("registered", "7", {"text": "hi"})
    assert (await call(client, "calc", {"expression": "1"}, token=OTHER_TOKEN))[0] == 403


def test_a_broken_registry_file_is_refused_naming_file_key_and_line(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(gateway_yaml("  b: {url: 'http://127.0.0.1:9/v1'}"))
    registry = tmp_path / "tools.yaml"
    registry.write_text(BROKEN_REGISTRY)
    with pytest.raises(ConfigError) as caught:
        load_config(config, {}, BackendTlsDefaults(), tools_path=registry)
    error = caught.value
    assert error.source == registry
    line = line_of(BROKEN_REGISTRY, "{type: nope}")
    assert [(issue.path, issue.line) for issue in error.issues] == [
        ("tools.broken.parameters", line)
    ]
    assert "invalid JSON Schema" in error.issues[0].message
    assert f"{registry}:{line}: tools.broken.parameters: invalid JSON Schema" in str(error)

    registry.write_text("tools:\n  x: {builtin: noop\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config, {}, BackendTlsDefaults(), tools_path=registry)
    assert caught.value.source == registry
    assert caught.value.issues[0].line is not None
    assert "invalid YAML" in caught.value.issues[0].message


def test_check_config_reports_a_broken_registry_file(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(gateway_yaml("  b: {url: 'http://127.0.0.1:9/v1'}"))
    registry = tmp_path / "tools.yaml"
    registry.write_text(BROKEN_REGISTRY)
    prefixes = ("GATEWAY_", "BACKEND_", "TOOLS_", "AGENT_", "IMAGES_", "HEARTMULA_", "MOCK_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}
    env.update(GATEWAY_CONFIG=str(config), TOOLS_REGISTRY_PATH=str(registry))
    result = gateway_cli("check-config", env=env)
    assert result.returncode == 1, result.stderr
    line = line_of(BROKEN_REGISTRY, "{type: nope}")
    assert f"{registry}:{line}: tools.broken.parameters: invalid JSON Schema" in result.stderr


async def start_refused(tmp_path: Path, config_text: str, **overrides: Any) -> ConfigError:
    """Start a gateway through the app factory; it must refuse with a ``ConfigError``."""
    config = tmp_path / "gateway.yaml"
    config.write_text(config_text)
    runner = web.AppRunner(create_app(make_settings(config, tmp_path / "var", **overrides)))
    try:
        with pytest.raises(ConfigError) as caught:
            await runner.setup()
    finally:
        await runner.cleanup()
    return caught.value


async def test_a_gateway_does_not_start_on_a_broken_registry_file(
    backend: TestServer, tmp_path: Path
) -> None:
    registry = tmp_path / "tools.yaml"
    registry.write_text(BROKEN_REGISTRY)
    error = await start_refused(
        tmp_path, tools_config(backend, {"noop": NOOP}), tools=ToolsSettings(registry_path=registry)
    )
    assert error.source == registry
    assert [issue.path for issue in error.issues] == ["tools.broken.parameters"]


# -- 9. invalid tool declarations in gateway.yaml ------------------------------------------

INVALID_TOOLS = yaml_text(
    """
    version: 1
    backends:
      b: {url: "http://127.0.0.1:9/v1"}
    tools:
      "bad name!":
        builtin: noop
      xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx:
        builtin: noop
      bad_schema:
        builtin: noop
        parameters: {type: nope}
      two_executors:
        builtin: noop
        subprocess: {argv: [/bin/true]}
      no_executor:
        description: nothing runs this
      unknown_builtin:
        builtin: teleport
      ok_tool:
        builtin: noop
    token_tools:
      other:
        - ok_tool
        - ghost
    """
)


def test_invalid_tool_declarations_are_each_reported_with_key_path_and_line() -> None:
    source = Path("/etc/gateway/gateway.yaml")
    with pytest.raises(ConfigError) as caught:
        parse_config(INVALID_TOOLS.encode(), source, {}, BackendTlsDefaults())
    issues = {issue.path: (issue.line, issue.message) for issue in caught.value.issues}
    long_name = "x" * 65

    def at(path: str, marker: str) -> str:
        line, message = issues[path]
        assert line == line_of(INVALID_TOOLS, marker), (path, line)
        return message

    assert "^[A-Za-z0-9_-]{1,64}$" in at("tools.bad name!", '"bad name!":')
    assert "^[A-Za-z0-9_-]{1,64}$" in at(f"tools.{long_name}", long_name)
    assert "invalid JSON Schema" in at("tools.bad_schema.parameters", "{type: nope}")
    assert "exactly one executor" in at("tools.two_executors", "two_executors:")
    assert "exactly one executor" in at("tools.no_executor", "no_executor:")
    assert "unknown builtin" in at("tools.unknown_builtin.builtin", "teleport")
    assert "no tool named 'ghost'" in at("token_tools.other[1]", "- ghost")
    assert set(issues) == {
        "tools.bad name!",
        f"tools.{long_name}",
        "tools.bad_schema.parameters",
        "tools.two_executors",
        "tools.no_executor",
        "tools.unknown_builtin.builtin",
        "token_tools.other[1]",
    }
    rendered = str(caught.value)
    assert f"{source}:{line_of(INVALID_TOOLS, 'teleport')}: tools.unknown_builtin.builtin" in (
        rendered
    )


async def test_a_gateway_does_not_start_on_invalid_tool_declarations(
    backend: TestServer, tmp_path: Path
) -> None:
    error = await start_refused(
        tmp_path, tools_config(backend, {"t": {"builtin": "noop", "http": {}}})
    )
    assert error.source == tmp_path / "gateway.yaml"
    assert [issue.path for issue in error.issues] == ["tools.t"]
