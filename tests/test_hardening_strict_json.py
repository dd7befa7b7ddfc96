"""Hardening item 2: strict JSON on every JSON route, and no tool runs on a value it
cannot record.

The attack: every route that takes a body, read from the app's own router table (a new
route is covered without touching this file), is sent each value Python's ``json``
accepts but JSON does not: NaN, Infinity, -Infinity, 1e400, a 400-digit integer, a lone
surrogate escape, 100 levels of nesting. The numbers that prove it held: every (route,
value) pair answered 400 in the face's own shape (a JSON-RPC parse error on /mcp), the
count of routes checked is at least today's, and the fake backend received 0 requests
and the tool log holds 0 records afterwards.

Everything is real: the app factory, a fake OpenAI backend on loopback, the users
database, the tool log on disk.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sidecar.errors import StrictJsonError
from sidecar.mock_backends import MockBehaviour, create_mock_app
from sidecar.mock_backends.openai_server import RECEIVED as MODEL_RECEIVED
from sidecar.settings import ToolsSettings, UiSettings
from sidecar.typedefs import TOOLBUS
from sidecar.typedefs import UI_STATE as UI_STATE_KEY
from sidecar.wire import strict_json

from .conftest import TOKEN, GatewayFactory, gateway_yaml, mock_backend_yaml
from .test_toolbus import RECEIVED, backend_fixture, log_settings, tools_config  # noqa: F401
from .test_ui_api import LOOPBACK, PASSWORD, log_in

BEARER = {"Authorization": f"Bearer {TOKEN}"}
BAD_VALUES = {
    "nan": b"NaN",
    "infinity": b"Infinity",
    "minus-infinity": b"-Infinity",
    "float-overflow": b"1e400",
    "int-overflow": b"1" + b"0" * 400,
    "lone-surrogate": b'"\\ud800"',
    "deep-nesting": b"[" * 100 + b"]" * 100,
}
# Routes that take POST/PUT/PATCH but read no body; each is shown below to ignore one.
BODYLESS = {
    ("POST", "/v1/tools/replay/{replay_id}"),
    ("POST", "/v1/agent/replay/{run_id}"),
    ("POST", "/ui/api/auth/logout"),
}
# The JSON routes on the day this test was written; the router may only grow.
ROUTES_TODAY = 17
NOOP = {
    "version": "1",
    "description": "Returns its arguments.",
    "parameters": {"type": "object"},
    "builtin": "noop",
}


def body_routes(client: TestClient) -> list[tuple[str, str]]:
    """(method, path template) of every route that takes a body, from the router."""
    routes = set()
    for route in client.server.app.router.routes():
        resource = route.resource
        if route.method in ("POST", "PUT", "PATCH") and resource is not None:
            routes.add((route.method, resource.canonical))
    return sorted(routes)


def fill(template: str, conversation_id: int) -> str:
    return (
        template.replace("{name}", "noop")
        .replace("{conversation_id}", str(conversation_id))
        .replace("{username}", "admin")
        .replace("{replay_id}", "tool-" + "0" * 24)
        .replace("{run_id}", "run-" + "0" * 24)
    )


def tool_log_records(data_dir: Path) -> int:
    """Records in the tool log on disk: NDJSON lines plus per-invocation files."""
    ndjson = data_dir / "log" / "calls.ndjson"
    lines = ndjson.read_bytes().count(b"\n") if ndjson.exists() else 0
    directory = data_dir / "log" / "calls"
    files = len(list(directory.iterdir())) if directory.exists() else 0
    return lines + files


@pytest.fixture
async def stack(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> tuple[TestClient, Any, TestServer]:
    """Accounts on, the UI open to loopback, an admin logged in, the noop tool."""
    config = tools_config(backend, {"noop": NOOP})
    client = await make_gateway(
        config,
        ui=UiSettings(accounts=True),
        ui_ip_allowlist=LOOPBACK,
        tools=log_settings(tmp_path),
    )
    await client.server.app[UI_STATE_KEY].users.create_user("admin", PASSWORD, True)
    agent = await log_in(client, "admin")
    return client, agent, backend


@pytest.mark.parametrize("kind", list(BAD_VALUES))
async def test_every_json_route_refuses_values_json_does_not_allow(
    stack: tuple[TestClient, Any, TestServer], tmp_path: Path, kind: str
) -> None:
    client, agent, backend = stack
    created = await agent.json("POST", "/ui/api/conversations", {"title": "t"}, status=201)
    conversation_id = created["id"]
    before = len(backend.app[MODEL_RECEIVED]) + len(backend.app[RECEIVED])
    bad = BAD_VALUES[kind]
    body = b'{"model": "mock-llama", "x": ' + bad + b"}"
    checked: list[str] = []
    for method, template in body_routes(client):
        if (method, template) in BODYLESS:
            continue
        path = fill(template, conversation_id)
        headers = {**BEARER, **agent.headers(), "Content-Type": "application/json"}
        response = await client.request(method, path, data=body, headers=headers)
        text = await response.text()
        reply = strict_json.loads(text)  # the answer itself is strict JSON
        where = f"{method} {template} with {kind}"
        if template == "/mcp":
            assert response.status == 200, where
            assert reply["jsonrpc"] == "2.0" and reply["id"] is None, (where, reply)
            assert reply["error"]["code"] == -32700, (where, reply)
        elif template.startswith("/v1/messages"):  # the Anthropic face's own error shape
            assert response.status == 400, (where, text)
            assert reply["type"] == "error", (where, reply)
            assert reply["error"]["type"] == "invalid_request_error", (where, reply)
        elif template.startswith("/api/"):  # the Ollama face's own error shape
            assert response.status == 400, (where, text)
            assert set(reply) == {"error"} and "not valid JSON" in reply["error"], (where, reply)
        else:
            assert response.status == 400, (where, text)
            assert set(reply) == {"error"}, (where, reply)
            error = reply["error"]
            assert set(error) == {"message", "type", "param", "code"}, (where, error)
            assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_json")
            assert error["param"] == "x", (where, error)
        assert "0" * 50 not in text and "ud800" not in text.lower(), (where, text)
        assert "Traceback" not in text, where
        checked.append(f"{method} {template}")
    assert len(checked) >= ROUTES_TODAY, checked
    assert "POST /mcp" in checked and "POST /v1/chat/completions" in checked
    assert "POST /v1/tools/{name}" in checked and "PUT /ui/api/user/settings" in checked
    # Nothing was forwarded and nothing was run or recorded.
    assert len(backend.app[MODEL_RECEIVED]) + len(backend.app[RECEIVED]) == before
    assert tool_log_records(tmp_path) == 0


async def test_routes_without_a_body_ignore_one(stack: tuple[TestClient, Any, TestServer]) -> None:
    """The BODYLESS exceptions are real: garbage there is not a 400 about JSON."""
    client, agent, _ = stack
    assert set(body_routes(client)) >= BODYLESS
    for method, template in sorted(BODYLESS):
        headers = {**BEARER, **agent.headers(), "Content-Type": "application/json"}
        response = await client.request(method, fill(template, 0), data=b"NaN", headers=headers)
        assert response.status in (204, 404), (template, await response.text())


async def test_a_very_deep_body_and_a_surrogate_key_are_400(
    stack: tuple[TestClient, Any, TestServer],
) -> None:
    client, _, _ = stack
    for body in (b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b'{"\\udc00": 1}'):
        response = await client.post("/v1/chat/completions", data=body, headers=BEARER)
        reply = strict_json.loads(await response.text())
        assert response.status == 400 and reply["error"]["code"] == "invalid_json", reply


async def test_what_json_allows_still_passes(stack: tuple[TestClient, Any, TestServer]) -> None:
    """The parser is strict, not broken: pairs, big floats, 64 levels are fine."""
    client, _, _ = stack
    arguments = {
        "emoji": "\U0001f600",  # sent as the escaped pair "\\ud83d\\ude00"
        "big": 1.7e308,
        "digits": int("9" * 300),
        "deep": json.loads("[" * 60 + "]" * 60),
    }
    # 300 digits passes JSON but not RFC 8785: the bus refuses it, with where it is.
    response = await client.post("/v1/tools/noop", json={"arguments": arguments}, headers=BEARER)
    reply = await response.json()
    assert response.status == 400 and reply["error"]["param"] == "arguments", reply
    del arguments["digits"]
    response = await client.post("/v1/tools/noop", json={"arguments": arguments}, headers=BEARER)
    reply = await response.json()
    assert response.status == 200 and reply["result"] == {"echo": arguments}, reply


# -- record first: a value the record cannot hold never reaches a tool ---------------------


async def test_unrecordable_arguments_never_run_the_tool(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    """An http tool's side effect is a request to the backend: count them."""
    remote = {"version": "1", "http": {"backend": "b", "path": "/tools/echo"}}
    client = await make_gateway(
        tools_config(backend, {"remote": remote}), tools=log_settings(tmp_path)
    )
    received = backend.app[RECEIVED]
    refused = [
        b'{"arguments": {"x": NaN}}',
        b'{"arguments": {"x": [1, -Infinity]}}',
        b'{"arguments": {"x": 1e999}}',
        b'{"arguments": {"x": "\\ud800"}}',
        b'{"arguments": {"x": 9007199254740993}}',  # valid JSON, past RFC 8785's integers
    ]
    for body in refused:
        response = await client.post("/v1/tools/remote", data=body, headers=BEARER)
        reply = await response.json()
        assert response.status == 400, reply
        assert reply["error"]["param"] == "arguments", reply
    rpc = [
        (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": '
         b'{"name": "remote", "arguments": {"x": NaN}}}', -32700),
        (b'{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": '
         b'{"name": "remote", "arguments": {"x": 9007199254740993}}}', -32602),
    ]  # fmt: skip
    for body, code in rpc:
        response = await client.post("/mcp", data=body, headers=BEARER)
        assert response.status == 200
        assert (await response.json())["error"]["code"] == code
    assert len(received) == 0, received
    assert tool_log_records(tmp_path) == 0

    # The same call with a plain number runs and is recorded: the counters can move.
    response = await client.post("/v1/tools/remote", json={"arguments": {"x": 1}}, headers=BEARER)
    assert response.status == 200 and (await response.json())["ok"] is True
    assert len(received) == 1 and tool_log_records(tmp_path) == 3  # 2 lines + 1 file


async def test_a_tool_result_json_cannot_carry_is_an_error_not_a_500(
    make_gateway: GatewayFactory,
    start_mock: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A builtin returning inf/NaN, and an http tool whose backend answers NaN."""

    async def non_finite(context: Any, arguments: dict[str, Any]) -> Any:
        return {"value": float("inf"), "other": float("nan")}

    import sidecar.app

    monkeypatch.setattr(sidecar.app, "BUILTINS", {**sidecar.app.BUILTINS, "noop": non_finite})
    app = create_mock_app(MockBehaviour())
    app.router.add_post("/tools/nan", _nan_reply)
    backend = await start_mock(app)
    remote = {"version": "1", "http": {"backend": "b", "path": "/tools/nan"}}
    client = await make_gateway(
        tools_config(backend, {"noop": NOOP, "remote": remote}), tools=log_settings(tmp_path)
    )
    for name, error_type in (("noop", "invalid_result"), ("remote", "upstream_error")):
        response = await client.post(f"/v1/tools/{name}", json={"arguments": {}}, headers=BEARER)
        text = await response.text()
        assert response.status == 200, text
        reply = strict_json.loads(text)
        assert reply["ok"] is False and reply["error"]["type"] == error_type, reply
        record = await client.get(f"/v1/tools/replay/{reply['replay_id']}", headers=BEARER)
        assert record.status == 200
        assert strict_json.loads(await record.text())["ok"] is False
    lines = (tmp_path / "log" / "calls.ndjson").read_bytes().splitlines()
    records = [strict_json.loads(line) for line in lines]
    outcomes = [record for record in records if record["phase"] == "finished"]
    assert len(records) == 4 and len(outcomes) == 2  # an intent and an outcome per call
    assert all(record["ok"] is False for record in outcomes)


async def _nan_reply(request: Any) -> Any:
    from aiohttp import web

    return web.Response(body=b'{"value": NaN}', content_type="application/json")


async def test_the_model_sending_nan_tool_arguments_runs_nothing(
    make_gateway: GatewayFactory, start_mock: Any, tmp_path: Path
) -> None:
    """An agent's model is a source of JSON too: its NaN arguments are refused."""
    from aiohttp import web

    asked: list[dict[str, Any]] = []

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        asked.append(body)
        if body["messages"][-1]["role"] == "tool":
            message: dict[str, Any] = {"role": "assistant", "content": "done"}
        else:
            call = {"name": "noop", "arguments": '{"x": NaN}'}
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_1", "type": "function", "function": call}],
            }
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return web.json_response({"id": "c", "object": "chat.completion", "choices": [choice]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    model = await start_mock(app)
    agents = tmp_path / "agents.json"
    spec = {"model": "default", "system_prompt": "s", "tools": ["noop"], "max_turns": 3}
    agents.write_text(json.dumps({"agents": {"a": spec}}))
    config = (
        gateway_yaml(
            mock_backend_yaml("m", model, models="[mock-llama]", health="{readiness: false}"),
            aliases="default: {backend: m, model: mock-llama}",
        )
        + f"tools: {json.dumps({'noop': NOOP})}\n"
    )
    client = await make_gateway(
        config,
        tools=ToolsSettings(
            agent_specs_path=agents,
            log_mode="both",
            log_path=tmp_path / "log" / "calls.ndjson",
            log_dir=tmp_path / "log" / "calls",
        ),
    )
    response = await client.post(
        "/v1/agent/run", json={"agent": "a", "input": "go"}, headers=BEARER
    )
    summary = await response.json()
    assert response.status == 200, summary
    [call] = summary["tool_calls"]
    assert (call["name"], call["ok"]) == ("noop", False), call
    assert len(asked) == 2 and asked[1]["messages"][-1]["role"] == "tool"
    assert tool_log_records(tmp_path) == 0
    assert client.server.app[TOOLBUS].log.ndjson


# -- the parser's cost is bounded: the inputs that once sent it down slow paths -------------
# (No timing here: each input is checked for the right answer; the cost is in the commit.)

TOKENS = [[(row * 7919 + column) % 100_000 for column in range(512)] for row in range(200)]


def token_body(**extra: Any) -> bytes:
    """An embeddings body of token arrays, over 64 KiB (decoded member by member)."""
    body = json.dumps({"model": "embed", "input": TOKENS}).encode()
    for key, literal in extra.items():
        body = body[:-1] + f', "{key}": {literal}}}'.encode()
    assert len(body) > strict_json._MEMBERWISE
    return body


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize(
    ("literal", "refusal"),
    [
        ('"E123"', None),  # once sent every number through a Python callback
        ('"e+000 and 0000000000"', None),
        ('"\\ud83d\\ude00"', None),  # an escaped pair: once walked every scalar
        ('["\\ud800", 1]', "a string contains a lone UTF-16 surrogate"),
        ('{"\\udfff": 1}', "a key contains a lone UTF-16 surrogate"),
        ("[1e400]", "a number overflows a float"),  # once parsed twice with callbacks
        ("[1, 2, -1e999]", "a number overflows a float"),
        ("[1.7e308, 1.7e308]", None),  # a sum that overflows is not a number that does
        ("[" + "9" * 400 + "]", "a number overflows a float"),
        ("1" + "0" * 5000, "a number overflows a float"),  # past int()'s digit limit
        ("[1, NaN]", "NaN is not allowed in JSON"),
        ("-Infinity", "-Infinity is not allowed in JSON"),
        ("[" * 65 + "]" * 65, f"JSON is nested deeper than {strict_json.MAX_DEPTH} levels"),
        ("[" * 10_000 + "]" * 10_000, "JSON is nested deeper than"),
        ("[" * 64 + "]" * 64, "JSON is nested deeper than"),  # 65 with the top level
        ("[" * 63 + "]" * 63, None),
    ],
)
def test_pathological_bodies_are_answered_right_with_their_param(
    size: str, literal: str, refusal: str | None
) -> None:
    """Each once took a slow path (0.8-2 s on 9.5 MB); the answer must not change."""
    if size == "large":
        body = token_body(other=literal)
    else:
        body = b'{"model": "m", "other": ' + literal.encode() + b', "n": [1, 2]}'
    if refusal is None:
        value = strict_json.loads(body)
        assert value == json.loads(body)
        assert len(value.get("input", [])) == (200 if size == "large" else 0)
    else:
        with pytest.raises(strict_json.StrictJsonError) as caught:
            strict_json.loads(body)
        assert caught.value.message.startswith(refusal), caught.value.message
        assert caught.value.param == "other"
        assert "0" * 50 not in caught.value.message


def test_refusals_outside_a_top_level_object_have_no_param() -> None:
    for body in (b"[1e400]", b'["\\ud800"]', b"[" * 10_000 + b"]" * 10_000, b"[NaN]", b"1e400"):
        with pytest.raises(strict_json.StrictJsonError) as caught:
            strict_json.loads(body)
        assert caught.value.param is None


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize(
    "bad", [b'{"a": 1,}', b'{"a" 1}', b'{"a": [1, 2}', b'{"a": 1} x', b"{1: 2}"]
)
def test_syntax_errors_say_what_json_says(size: str, bad: bytes) -> None:
    """The member-by-member decode of a large object words errors as ``json`` does."""
    body = token_body()[:-1] + b', "late": ' + bad + b"}" if size == "large" else bad
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(body)
    with pytest.raises(strict_json.StrictJsonError) as caught:
        strict_json.loads(body)
    assert caught.value.message == f"not valid JSON: {strict_json._position(expected.value)}"
    assert caught.value.param is None


def test_the_value_check_and_the_parser_agree_on_random_documents() -> None:
    """2,000 seeded documents, half with one bad value (or deep nesting) anywhere: ``loads`` and
    ``check_value`` refuse exactly the ones a plain recursive reference refuses, with the
    same top-level ``param``."""
    rng = random.Random(20261201)
    refused = 0
    for _ in range(2_000):
        document, bad_under = _random_document(rng)
        body = _encode(document).encode()
        expected = _reference(document)
        assert expected is None or bad_under is not None
        try:
            strict_json.loads(body)
        except strict_json.StrictJsonError as exc:
            assert expected is not None, body[:200]
            assert (exc.message, exc.param) == expected, body[:200]
            refused += 1
        else:
            assert expected is None, (expected, body[:200])
        if expected is None or "surrogate" in expected[0] or "nested" in expected[0]:
            check = expected  # check_value words NaN/inf its own way
            try:
                strict_json.check_value(json.loads(body))
            except strict_json.StrictJsonError as exc:
                assert (exc.message, exc.param) == check
            else:
                assert check is None
    assert 500 < refused < 1_500, refused


def test_the_value_check_judges_a_tool_result_built_from_subclasses() -> None:
    """A builtin tool may return an OrderedDict, an IntEnum or a str subclass."""
    import collections
    import enum

    class Big(enum.IntEnum):
        HUGE = 2**1100

    class Text(str):
        pass

    refused = [
        collections.OrderedDict(a=[1.5, collections.OrderedDict(b=float("inf"))]),
        {"a": [Big.HUGE]},
        {"a": ["ok", Text("\ud800")]},
        {"a": collections.OrderedDict({Text("\udfff"): 1})},
        {"a": [1, True, 2**60]},  # only with safe_integers
    ]
    for value in refused:
        with pytest.raises(strict_json.StrictJsonError) as caught:
            strict_json.check_value(value, safe_integers=True)
        assert caught.value.param == "a", value
    assert sum(strict_json.is_strict(value) for value in refused) == 1  # the 2**60 one
    fine = collections.OrderedDict(a=[Text("caf\u00e9"), 1.7e308, 2**53 - 1, None, True])
    strict_json.check_value(fine, safe_integers=True)


class _Raw(str):
    """A literal the encoder writes as is (NaN, 1e400, an escaped lone surrogate)."""


def _random_document(rng: random.Random) -> tuple[dict[str, Any], str | None]:
    def value(depth: int) -> Any:
        roll = rng.random()
        if depth > 6 or roll < 0.4:
            return rng.choice(
                [1, -7, 2.5, 1e300, "text", "caf\u00e9", "\U0001f600", True, None, 2**60]
            )
        if roll < 0.55:
            return [rng.randrange(-(10**6), 10**6) for _ in range(rng.randrange(30))]
        if roll < 0.75:
            return [value(depth + 1) for _ in range(rng.randrange(5))]
        return {f"k{i}": value(depth + 1) for i in range(rng.randrange(5))}

    document = {f"f{i}": value(1) for i in range(rng.randrange(1, 6))}
    if rng.random() < 0.5:
        return document, None
    bad = rng.choice(
        [
            _Raw("1e400"),
            _Raw("-1" + "0" * 320),
            _Raw('"\\udc00"'),
            _Raw('"a\\ud83d"'),
            {"\ud800": 1},
            _Raw("[" * 70 + "]" * 70),
            _Raw("[" * (depth := rng.randrange(56, 66)) + "]" * depth),  # near the limit
        ]
    )
    key = rng.choice(list(document))
    container = document[key]
    while isinstance(container, dict | list) and container and rng.random() < 0.7:
        inner = rng.choice(list(container.values()) if isinstance(container, dict) else container)
        if not isinstance(inner, dict | list) or not inner:
            break
        container = inner
    if isinstance(container, dict):
        container["bad"] = bad
    elif isinstance(container, list):
        container.insert(rng.randrange(len(container) + 1), bad)
    else:
        document[key] = [bad, container]
    return document, key


def _encode(value: Any) -> str:
    if isinstance(value, _Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_encode_key(k)}: {_encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_encode(v) for v in value) + "]"
    return json.dumps(value)


def _encode_key(key: str) -> str:
    return '"\\ud800"' if key == "\ud800" else json.dumps(key)


def _reference(document: dict[str, Any]) -> tuple[str, str | None] | None:
    """The rules, written plainly (recursive, one value at a time), on the parsed text."""
    parsed = json.loads(_encode(document))

    def first_problem(value: Any, depth: int) -> str | None:
        if isinstance(value, dict | list):
            if depth >= strict_json.MAX_DEPTH:
                return f"JSON is nested deeper than {strict_json.MAX_DEPTH} levels"
            if isinstance(value, dict):
                for key in value:
                    if _lone_surrogate(key):
                        return "a key contains a lone UTF-16 surrogate"
            children = value.values() if isinstance(value, dict) else value
            problems = [first_problem(child, depth + 1) for child in children]
            return next((p for p in problems if p is not None), None)
        if isinstance(value, str):
            return "a string contains a lone UTF-16 surrogate" if _lone_surrogate(value) else None
        if isinstance(value, float) and value in (float("inf"), float("-inf")):
            return "a number overflows a float"
        if isinstance(value, int) and abs(value) >= 2**1024:
            return "a number overflows a float"
        return None

    for key, child in parsed.items():
        problem = first_problem(child, 1)
        if problem is not None:
            return problem, key
    return None


def _lone_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(char) <= 0xDFFF for char in text)


@pytest.mark.parametrize("digits", [1, 17, 89, 90, 91, 120, 308, 309, 310, 400])
@pytest.mark.parametrize("exponent", [None, "99", "-400", "+0099", "288", "308", "309", "400"])
def test_the_number_shortcut_refuses_exactly_what_overflows(
    digits: int, exponent: str | None
) -> None:
    """The pre-check that skips per-number hooks must never let an overflow through."""
    literal = "9" * digits + (f"e{exponent}" if exponent is not None else "")
    if exponent is None:
        overflows = abs(int(literal)) >= 2**1024 or _float_overflows(literal)
    else:
        overflows = _float_overflows(literal)
    body = f'{{"n": [{literal}]}}'.encode()
    if overflows:
        with pytest.raises(StrictJsonError) as caught:
            strict_json.loads(body)
        assert caught.value.param == "n"
    else:
        assert strict_json.loads(body) == json.loads(body)


def _float_overflows(literal: str) -> bool:
    return float(literal) in (float("inf"), float("-inf"))
