"""``tools/run_evals.py`` against a gateway built from the shipped ``gateway.yaml``.

The tool is stdlib-only and blocking, so it runs in a thread against the gateway on a
loopback TestServer, with the fake OpenAI backend in place of the configured one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import runpy
import socket
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar import __version__
from sidecar.mock_backends.openai_server import RECEIVED
from sidecar.settings import ToolsSettings

from .conftest import TOKEN

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tools/evals/golden.jsonl"


@dataclass
class Stack:
    gateway: TestClient
    backend: TestServer

    @property
    def base_url(self) -> str:
        return str(self.gateway.make_url(""))


@dataclass
class Outputs:
    report: Path
    junit: Path
    history: Path

    def report_json(self) -> dict[str, Any]:
        return json.loads(self.report.read_text())

    def junit_root(self) -> ET.Element:
        return ET.parse(self.junit).getroot()  # noqa: S314 - the tool's own output

    def testcases(self) -> list[ET.Element]:
        return self.junit_root().findall("./testsuite/testcase")

    def history_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.history.read_text().splitlines()]


def golden_cases() -> list[dict[str, Any]]:
    return [json.loads(line) for line in GOLDEN.read_text().splitlines() if line.strip()]


@pytest.fixture
async def stack(make_gateway: Any, start_mock: Any) -> Stack:
    """The shipped config and example agents, with the fake backend's URL substituted."""
    backend = await start_mock()
    gateway = await make_gateway(
        (ROOT / "gateway.yaml").read_text(),
        environ={"MOCK_BACKEND_URL": str(backend.make_url("/v1"))},
        tools=ToolsSettings(agent_specs_path=ROOT / "agent_specs.example.json"),
    )
    return Stack(gateway, backend)


@pytest.fixture
def outputs(tmp_path: Path) -> Outputs:
    evals = tmp_path / "evals"
    return Outputs(evals / "report.json", evals / "junit.xml", evals / "history.jsonl")


@pytest.fixture
def run_evals(outputs: Outputs) -> Callable[..., Any]:
    """``await run_evals(stack_or_url, *argv)``: the tool's exit status."""
    main = runpy.run_path(str(ROOT / "tools/run_evals.py"))["main"]

    async def run(target: Stack | str, *argv: str, token: str | None = TOKEN) -> int:
        base_url = target.base_url if isinstance(target, Stack) else target
        args = ["--base-url", base_url, "--timeout", "20"]
        args += ["--report", str(outputs.report), "--junit", str(outputs.junit)]
        args += ["--history", str(outputs.history)]
        if token is not None:
            args += ["--token", token]
        return await asyncio.to_thread(main, [*args, *argv])

    return run


def write_cases(path: Path, *cases: dict[str, Any] | str) -> Path:
    lines = [case if isinstance(case, str) else json.dumps(case) for case in cases]
    path.write_text("\n".join(lines) + "\n")
    return path


def chat_case(case_id: str, *assertions: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "id": case_id,
        "tags": ["chat"],
        "endpoint": "chat",
        "request": {"model": "default", "messages": [{"role": "user", "content": "hello"}]},
        "assertions": list(assertions),
        **fields,
    }


async def test_golden_suite_passes_and_writes_the_three_outputs(
    stack: Stack, run_evals: Any, outputs: Outputs, capsys: pytest.CaptureFixture[str]
) -> None:
    golden = golden_cases()
    assert await run_evals(stack) == 0
    assert f"{len(golden)} passed, 0 failed" in capsys.readouterr().out

    report = outputs.report_json()
    assert report["gateway"]["version"] == __version__
    assert {"default", "mock-llama", "mock-embed"} <= set(report["models"])
    assert report["started"] <= report["finished"]
    assert report["totals"] == {
        "cases": len(golden),
        "passed": len(golden),
        "failed": 0,
        "pass_rate": 1.0,
    }
    results = {result["id"]: result for result in report["results"]}
    assert list(results) == [case["id"] for case in golden]
    for case in golden:
        result = results[case["id"]]
        canonical = json.dumps(case["request"], sort_keys=True, separators=(",", ":"))
        assert result["request_hash"] == hashlib.sha256(canonical.encode()).hexdigest()
        assert result["passed"] is True and result["failures"] == []
        assert result["tags"] == case["tags"] and result["repeat"] == 0
        assert result["latency_ms"] > 0
        assert (result["ttft_ms"] is not None) == bool(case["request"].get("stream"))
    assert results["chat-unknown-model-404"]["status"] == 404
    assert results["chat-stream-ttft"]["output"] == (
        "Mock reply to: Count to five: one two three four five"
    )
    assert "42" in results["agent-calculator"]["output"]

    testcases = outputs.testcases()
    suites = outputs.junit_root().findall("testsuite")
    assert len(suites) == 1 and suites[0].get("tests") == str(len(golden))
    assert suites[0].get("failures") == "0"
    assert [testcase.get("name") for testcase in testcases] == list(results)
    assert not any(testcase.findall("failure") for testcase in testcases)

    # What the fake backend was sent: the offered tools and the stream flag passed through.
    received = [entry.body for entry in stack.backend.app[RECEIVED]]
    assert any(body.get("stream") is True for body in received)
    offered = [tool["function"]["name"] for body in received for tool in body.get("tools", [])]
    assert "get_weather" in offered

    assert await run_evals(stack, "--quiet") == 0
    history = outputs.history_lines()
    assert len(history) == 2
    for line in history:
        assert line["cases"] == len(golden) and line["failed"] == 0
        assert line["pass_rate"] == 1.0 and line["gateway_version"] == __version__
        assert line["ts"]


async def test_a_failing_case_exits_1_and_is_in_the_report_and_junit(
    stack: Stack,
    run_evals: Any,
    outputs: Outputs,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cases = write_cases(
        tmp_path / "cases.jsonl",
        chat_case("passes", {"contains": "Mock reply to: hello"}),
        chat_case("wrong-text", {"equals": "a wrong string"}, {"status": 200}),
        chat_case(
            "not-ok-status",
            {"contains": "Mock"},
            request={"model": "nope", "messages": [{"role": "user", "content": "hello"}]},
        ),
    )
    assert await run_evals(stack, "--cases", str(cases)) == 1
    out = capsys.readouterr().out
    assert "PASS passes" in out and "FAIL wrong-text" in out and "1 passed, 2 failed" in out

    results = {result["id"]: result for result in outputs.report_json()["results"]}
    assert results["passes"]["passed"] is True
    wrong = results["wrong-text"]
    assert wrong["passed"] is False and wrong["status"] == 200
    assert [failure["assertion"] for failure in wrong["failures"]] == ["equals"]
    assert "a wrong string" in wrong["failures"][0]["message"]
    assert "Mock reply to: hello" in wrong["failures"][0]["message"]
    # Without a status assertion an error status fails the case by itself.
    assert results["not-ok-status"]["status"] == 404
    assert {f["assertion"] for f in results["not-ok-status"]["failures"]} == {"status", "contains"}

    testcases = {testcase.get("name"): testcase for testcase in outputs.testcases()}
    assert testcases["passes"].find("failure") is None
    failure = testcases["wrong-text"].find("failure")
    assert failure is not None and failure.get("message", "").startswith("equals: ")
    history = outputs.history_lines()
    assert history[0]["failed"] == 2 and history[0]["pass_rate"] == pytest.approx(1 / 3, 1e-3)


@pytest.mark.parametrize(
    ("second_line", "expected"),
    [
        ('{"id": "broken", "endpoint": "chat"', "not valid JSON"),
        (json.dumps(chat_case("x", endpoint="images")), "unknown endpoint"),
        (json.dumps(chat_case("x", {"startswith": "Mock"})), "unknown assertion"),
        (json.dumps({k: v for k, v in chat_case("x").items() if k != "id"}), "missing 'id'"),
        (json.dumps(chat_case("x", {"ttft_ms": 100})), "stream"),
        (json.dumps(chat_case("x", {"regex": "("})), "bad regex"),
        (json.dumps(chat_case("ok")), "duplicate id"),
    ],
)
async def test_an_invalid_cases_file_exits_2_naming_the_line(
    stack: Stack,
    run_evals: Any,
    outputs: Outputs,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    second_line: str,
    expected: str,
) -> None:
    cases = write_cases(tmp_path / "cases.jsonl", chat_case("ok"), second_line)
    assert await run_evals(stack, "--cases", str(cases)) == 2
    err = capsys.readouterr().err
    assert f"{cases}:2" in err and expected in err
    assert not outputs.report.exists() and not outputs.history.exists()
    assert not stack.backend.app[RECEIVED]  # nothing was sent


async def test_unreadable_cases_exit_2(
    stack: Stack, run_evals: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_evals(stack, "--cases", str(tmp_path / "missing.jsonl")) == 2
    assert "missing.jsonl: cannot read the cases" in capsys.readouterr().err


async def test_the_token_comes_from_the_flag_or_the_environment(
    stack: Stack,
    run_evals: Any,
    outputs: Outputs,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("GATEWAY_BEARER_TOKEN", raising=False)
    assert await run_evals(stack, token=None) == 2
    assert "GATEWAY_BEARER_TOKEN" in capsys.readouterr().err
    assert not outputs.report.exists()

    assert await run_evals(stack, token="wrong-token-0123456789") == 2
    assert "refused the token (HTTP 401" in capsys.readouterr().err

    monkeypatch.setenv("GATEWAY_BEARER_TOKEN", TOKEN)
    assert await run_evals(stack, "--tag", "agent", token=None) == 0


async def test_an_unreachable_gateway_exits_2(
    run_evals: Any, outputs: Outputs, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert await run_evals(f"http://127.0.0.1:{port}") == 2
    assert f"gateway unreachable at http://127.0.0.1:{port}/readyz" in capsys.readouterr().err
    assert not outputs.history.exists()


async def test_tags_select_cases_having_any_of_them(
    stack: Stack, run_evals: Any, outputs: Outputs, capsys: pytest.CaptureFixture[str]
) -> None:
    golden = golden_cases()
    assert await run_evals(stack, "--tag", "tools") == 0
    with_tools = [case["id"] for case in golden if "tools" in case["tags"]]
    assert [result["id"] for result in outputs.report_json()["results"]] == with_tools
    assert len(with_tools) < len(golden)

    assert await run_evals(stack, "--tag", "agent", "--tag", "smoke") == 0
    either = [case["id"] for case in golden if {"agent", "smoke"} & set(case["tags"])]
    assert [result["id"] for result in outputs.report_json()["results"]] == either

    assert await run_evals(stack, "--tag", "no-such-tag") == 2
    assert "no case has any of the tags no-such-tag" in capsys.readouterr().err


async def test_repeat_runs_every_selected_case_n_times(
    stack: Stack, run_evals: Any, outputs: Outputs
) -> None:
    smoke = [case["id"] for case in golden_cases() if "smoke" in case["tags"]]
    assert await run_evals(stack, "--tag", "smoke", "--repeat", "2") == 0
    report = outputs.report_json()
    assert [(r["id"], r["repeat"]) for r in report["results"]] == [
        (case_id, repeat) for repeat in (0, 1) for case_id in smoke
    ]
    assert report["totals"]["cases"] == 2 * len(smoke)
    assert set(report["latency_ms"]) == set(smoke)
    assert len(outputs.testcases()) == 2 * len(smoke)
    assert len(outputs.history_lines()) == 1


FAILING_ASSERTIONS = [
    {"equals": "Mock reply to: something else"},
    {"contains": "not in the reply"},
    {"icontains": "NOT IN THE REPLY"},
    {"not_contains": "Mock reply"},
    {"regex": "^\\d+$"},
    {"is_json": True},
    {"json_path": {"path": "choices[0].message.role", "equals": "user"}},
    {"json_path": {"path": "choices[1].message", "equals": None}},
    {"status": 201},
    {"finish_reason": "length"},
    {"tool_call": {"name": "get_weather"}},
    {"latency_ms": 0.001},
    {"ttft_ms": 0.001},
]


async def test_every_assertion_kind_reports_its_own_failure(
    stack: Stack, run_evals: Any, outputs: Outputs, tmp_path: Path
) -> None:
    stream = {"model": "default", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    cases = write_cases(
        tmp_path / "cases.jsonl",
        *(
            chat_case(f"fails-{index}", assertion, request=stream)
            for index, assertion in enumerate(FAILING_ASSERTIONS)
        ),
    )
    assert await run_evals(stack, "--cases", str(cases)) == 1
    results = outputs.report_json()["results"]
    assert len(results) == len(FAILING_ASSERTIONS)
    for assertion, result in zip(FAILING_ASSERTIONS, results, strict=True):
        assert result["output"] == "Mock reply to: hi"
        assert [failure["expected"] for failure in result["failures"]] == [assertion]
    junit_failures = [testcase.find("failure") for testcase in outputs.testcases()]
    assert all(failure is not None for failure in junit_failures)


async def test_a_stream_cut_off_upstream_fails_the_case(
    make_gateway: Any, run_evals: Any, outputs: Outputs, aiohttp_server: Any
) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "mock-llama"}]})

    async def half_a_stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"choices": [{"index": 0, "delta": {"content": "Half"}, "finish_reason": None}]}
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        assert request.transport is not None
        request.transport.close()  # the backend dies mid-stream
        return response

    app = web.Application()
    for path in ("/healthz", "/readyz", "/v1/models"):
        app.router.add_get(path, ok)
    app.router.add_post("/v1/chat/completions", half_a_stream)
    backend = await aiohttp_server(app)
    gateway = await make_gateway(
        (ROOT / "gateway.yaml").read_text(),
        environ={"MOCK_BACKEND_URL": str(backend.make_url("/v1"))},
    )
    assert await run_evals(Stack(gateway, backend), "--tag", "chat") == 1
    results = {result["id"]: result for result in outputs.report_json()["results"]}
    streamed = results["chat-stream-ttft"]
    assert streamed["status"] == 200 and streamed["output"] == "Half"
    assert "response" in [failure["assertion"] for failure in streamed["failures"]]
    assert results["chat-unknown-model-404"]["passed"] is True
