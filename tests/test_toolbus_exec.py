"""Tool executors through the gateway: the calculator builtin; subprocess tools (stdin,
exit status, output caps, timeouts that kill the whole process group, the environment
allowlist, replay of a tool whose output changes); http tools on a fake loopback backend;
and the per-tool concurrency limit.

Subprocess tools are Python scripts written to ``tool_dir(tmp_path)`` and run in their
bubblewrap sandbox with it as their (shared, writable) working directory. A script reports
that it started through files (written atomically); as the sandbox has its own PID
namespace, a test finds the tool's processes by the script's path in their command line
and checks, with a bounded wait, that none is left afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from sidecar.toolbus import executors

from .conftest import TOKEN, GatewayFactory, eventually
from .test_toolbus import (
    CALCULATOR,
    NOOP,
    RECEIVED,
    REPLAY_ID,
    backend_fixture,  # noqa: F401 - the fixture, shared with test_toolbus.py
    call,
    call_ok,
    headers_for,
    log_settings,
    tools_config,
    wait_for,
)

# Scripts write files with this helper so a reader never sees half a file.
PRELUDE = """
import json, os, pathlib, sys, time

def publish(path, value):
    temp = pathlib.Path(str(path) + ".tmp")
    temp.write_text(json.dumps(value))
    os.replace(temp, path)
"""


def tool_python() -> tuple[str, list[str]]:
    """A Python for sandboxed tools and the paths it needs visible (its installation)."""
    if Path("/usr/bin/python3").is_file():
        return "/usr/bin/python3", []
    return os.path.realpath(sys.executable), [sys.base_prefix]


def tool_dir(tmp_path: Path) -> Path:
    """Where a test's tool scripts live and run: beside the gateway's data dir
    (``tmp_path / "var"``), never above it, or the sandbox would refuse to mount it."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return work


def script_tool(work: Path, name: str, source: str, **fields: Any) -> dict[str, Any]:
    """A subprocess tool running ``source`` (after ``PRELUDE``) with a system Python, in
    its sandbox with ``work`` (see ``tool_dir``) as its working directory."""
    script = work / f"{name}.py"
    script.write_text(PRELUDE + source)
    python, read_only = tool_python()
    subprocess_spec: dict[str, Any] = {
        "argv": [python, str(script)],
        "cwd": str(work),
        "read_only": read_only,
    }
    subprocess_spec.update(fields.pop("subprocess", {}))
    return {
        "version": "1",
        "parameters": {"type": "object"},
        "subprocess": subprocess_spec,
        **fields,
    }


def process_state(pid: int) -> str | None:
    """The state letter of ``pid`` from ``/proc`` (``Z``: zombie), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def processes_with(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and process_state(int(entry.name)) not in (None, "Z"):
            found.append(int(entry.name))
    return found


def zombie_children() -> list[int]:
    """Children of this process (the in-process gateway) that nobody reaped."""
    zombies = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            zombies.append(int(entry.name))
    return zombies


async def assert_gone(marker: str) -> None:
    """Every process whose command line has ``marker`` (the tool, bwrap, the reaper and
    the children the tool started with it) ended, and the gateway reaped its child."""
    await wait_for(lambda: not processes_with(marker), f"the processes of {marker} to end")
    await wait_for(lambda: not zombie_children(), "the gateway to reap its tool")


# -- 7. the calculator ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("(2+3)*4", 20),
        ("2+3*4", 14),
        ("2**10", 1024),
        ("2**3**2", 512),
        ("-2**2", -4),
        ("10-4-3", 3),
        ("7//2 + 7%3", 4),
        ("sqrt(16)", 4.0),
        ("max(1, 2*3, 5) - abs(-1)", 5),
        ("1/4", 0.25),
    ],
)
async def test_calculator_evaluates_with_the_usual_precedence(
    make_gateway: GatewayFactory,
    backend: TestServer,
    tmp_path: Path,
    expression: str,
    value: float,
) -> None:
    client = await make_gateway(
        tools_config(backend, {"calculator": CALCULATOR}), tools=log_settings(tmp_path)
    )
    body = await call_ok(client, "calculator", {"expression": expression})
    assert body["ok"] is True, body
    assert body["result"] == {"value": value}
    assert type(body["result"]["value"]) is type(value)


@pytest.mark.parametrize("expression", ["9**9**9", "10**1000", "1/0", "round(5, -10**300)"])
async def test_calculator_refuses_what_is_not_bounded_arithmetic(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path, expression: str
) -> None:
    client = await make_gateway(
        tools_config(backend, {"calculator": CALCULATOR}), tools=log_settings(tmp_path)
    )
    body = await call_ok(client, "calculator", {"expression": expression})
    assert body["ok"] is False, body
    assert body["error"]["type"] == "calculation_error"
    assert body["error"]["message"]


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "a.b",
        "().__class__",
        "open('/etc/passwd')",
        "lambda: 1",
        "'abc'",
        "[1, 2]",
        "1 < 2",
        "1" + "+1" * 300,
        "max()",
        "round(1, 2, 3)",
    ],
)
async def test_calculator_refuses_a_bad_expression_as_a_bad_argument(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path, expression: str
) -> None:
    client = await make_gateway(
        tools_config(backend, {"calculator": CALCULATOR}), tools=log_settings(tmp_path)
    )
    status, body = await call(client, "calculator", {"expression": expression})
    assert status == 400, body
    assert body["error"]["code"] == "invalid_arguments" and body["error"]["param"] == "arguments"
    assert body["error"]["message"].startswith("calculator: ")


# -- 4. subprocess tools -------------------------------------------------------------------


async def test_arguments_arrive_as_json_on_stdin(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    echo = script_tool(
        tool_dir(tmp_path), "echo", 'json.dump({"stdin": sys.stdin.read()}, sys.stdout)\n'
    )
    client = await make_gateway(tools_config(backend, {"echo": echo}), tools=log_settings(tmp_path))
    arguments = {"text": "h\u00e9llo \u2713", "numbers": [1, 2.5], "nested": {"k": None}}
    body = await call_ok(client, "echo", arguments)
    assert body["ok"] is True, body
    assert json.loads(body["result"]["stdin"]) == arguments


async def test_tool_output_never_overwrites_the_bus_fields(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    fake = {"replay_id": "x", "ok": False, "request_hash": "y", "duration_ms": -1}
    liar = script_tool(tool_dir(tmp_path), "liar", f"json.dump({fake!r}, sys.stdout)\n")
    client = await make_gateway(tools_config(backend, {"liar": liar}), tools=log_settings(tmp_path))
    body = await call_ok(client, "liar", {})
    assert REPLAY_ID.match(body["replay_id"])
    assert body["ok"] is True
    assert len(body["request_hash"]) == 64
    assert body["duration_ms"] >= 0
    assert body["result"] == fake
    record = await client.get(f"/v1/tools/replay/{body['replay_id']}", headers=headers_for())
    assert (await record.json())["replay_id"] == body["replay_id"]


async def test_a_non_zero_exit_is_a_failure_with_the_end_of_stderr(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    failing = script_tool(
        tool_dir(tmp_path),
        "failing",
        'sys.stderr.write("noise " * 500 + "the real reason")\nprint("partial")\nsys.exit(3)\n',
    )
    client = await make_gateway(
        tools_config(backend, {"failing": failing}), tools=log_settings(tmp_path)
    )
    body = await call_ok(client, "failing", {})
    assert body["ok"] is False and "result" not in body
    assert body["error"]["type"] == "failed"
    assert "3" in body["error"]["message"]
    assert body["error"]["message"].endswith("the real reason")


async def test_stdout_that_is_not_json_is_returned_as_text(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    plain = script_tool(tool_dir(tmp_path), "plain", 'print("just words, not JSON")\n')
    client = await make_gateway(
        tools_config(backend, {"plain": plain}), tools=log_settings(tmp_path)
    )
    body = await call_ok(client, "plain", {})
    assert body["ok"] is True
    assert body["result"] == {"stdout": "just words, not JSON\n"}


OVERSIZED = """
publish({pid_file!r}, os.getpid())
sys.stdout.write("x" * 200_000)
sys.stdout.flush()
time.sleep(60)
"""


async def test_output_over_the_cap_fails_at_once_and_ends_the_tool(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    pid_file = tool_dir(tmp_path) / "oversized.pid"
    # A generous timeout: a bus that waited for the tool would say "timeout" instead.
    oversized = script_tool(
        tool_dir(tmp_path),
        "oversized",
        OVERSIZED.format(pid_file=str(pid_file)),
        max_output_bytes=1024,
        timeout_s=30,
    )
    client = await make_gateway(
        tools_config(backend, {"oversized": oversized}), tools=log_settings(tmp_path)
    )
    body = await call_ok(client, "oversized", {})
    assert body["ok"] is False
    assert body["error"]["type"] == "output_too_large"
    assert pid_file.exists(), "the tool did not start"
    await assert_gone(str(tool_dir(tmp_path) / "oversized.py"))


HANGING = """
publish({pid_file!r}, os.getpid())
time.sleep(60)
"""

WITH_GRANDCHILD = """
import subprocess
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", __file__])
publish({pid_file!r}, {{"tool": os.getpid(), "grandchild": child.pid}})
child.wait()
"""


@pytest.mark.parametrize("sandbox", ["bwrap", "none"])
async def test_a_hanging_tool_times_out_and_leaves_no_process_or_zombie(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path, sandbox: str
) -> None:
    pid_file = tool_dir(tmp_path) / "hanging.pid"
    hanging = script_tool(
        tool_dir(tmp_path),
        "hanging",
        HANGING.format(pid_file=str(pid_file)),
        timeout_s=2,
        subprocess={"sandbox": sandbox},
    )
    client = await make_gateway(
        tools_config(backend, {"hanging": hanging}), tools=log_settings(tmp_path)
    )
    body = await call_ok(client, "hanging", {})
    assert body["ok"] is False
    assert body["error"]["type"] == "timeout"
    assert pid_file.exists(), "the tool did not start before its timeout"
    await assert_gone(str(tool_dir(tmp_path) / "hanging.py"))


@pytest.mark.parametrize("sandbox", ["bwrap", "none"])
async def test_a_timeout_kills_the_tools_children_too(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path, sandbox: str
) -> None:
    pid_file = tool_dir(tmp_path) / "family.pid"
    family = script_tool(
        tool_dir(tmp_path),
        "family",
        WITH_GRANDCHILD.format(pid_file=str(pid_file)),
        timeout_s=2,
        subprocess={"sandbox": sandbox},
    )
    client = await make_gateway(
        tools_config(backend, {"family": family}), tools=log_settings(tmp_path)
    )
    body = await call_ok(client, "family", {})
    assert body["ok"] is False
    assert body["error"]["type"] == "timeout"
    assert pid_file.exists(), "the tool did not start its child before its timeout"
    assert len(json.loads(pid_file.read_text())) == 2
    await assert_gone(str(tool_dir(tmp_path) / "family.py"))


ENVIRONMENT = "json.dump(dict(os.environ), sys.stdout)\n"


async def test_a_tool_sees_only_allowlisted_variables_and_never_the_gateway_token(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    environ = {
        "GATEWAY_BEARER_TOKEN": TOKEN,
        "GATEWAY_BEARER_TOKENS": f"other:{TOKEN}",
        "FOO": "harmless-foo",
        "LANG": "en_GB.UTF-8",
        "NOT_LISTED": "must-not-leak",
        "HOME": "/home/gateway",
    }
    allowlist = ["FOO", "LANG", "GATEWAY_BEARER_TOKEN", "GATEWAY_BEARER_TOKENS", "UNSET_NAME"]
    printenv = script_tool(
        tool_dir(tmp_path), "printenv", ENVIRONMENT, subprocess={"env": allowlist}
    )
    client = await make_gateway(
        tools_config(backend, {"printenv": printenv}),
        tools=log_settings(tmp_path),
        environ=environ,
    )
    body = await call_ok(client, "printenv", {})
    assert body["ok"] is True, body
    seen = body["result"]
    assert seen["FOO"] == "harmless-foo"
    assert seen["LANG"] == "en_GB.UTF-8"
    for absent in ("GATEWAY_BEARER_TOKEN", "GATEWAY_BEARER_TOKENS", "NOT_LISTED", "HOME"):
        assert absent not in seen, absent
    assert "UNSET_NAME" not in seen
    assert not any(TOKEN in value for value in seen.values())
    # Nor does the gateway's own process environment leak in.
    leaked = set(os.environ) - set(environ) - {"PATH", "LANG", "LC_CTYPE", "PWD"}
    assert not leaked & set(seen), leaked & set(seen)


async def test_a_tool_with_no_allowlist_gets_a_minimal_environment(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    printenv = script_tool(tool_dir(tmp_path), "printenv", ENVIRONMENT)
    client = await make_gateway(
        tools_config(backend, {"printenv": printenv}),
        tools=log_settings(tmp_path),
        environ={"GATEWAY_BEARER_TOKEN": TOKEN, "FOO": "harmless-foo"},
    )
    seen = (await call_ok(client, "printenv", {}))["result"]
    assert "FOO" not in seen and "GATEWAY_BEARER_TOKEN" not in seen
    assert not any(TOKEN in value for value in seen.values())


# -- 3. per-tool concurrency ---------------------------------------------------------------

SLOW = """
publish({started!r}, os.getpid())
deadline = time.monotonic() + 30
while not pathlib.Path({release!r}).exists() and time.monotonic() < deadline:
    time.sleep(0.02)
json.dump({{"released": pathlib.Path({release!r}).exists()}}, sys.stdout)
"""


async def test_a_tool_at_its_concurrency_limit_answers_429_with_retry_after(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    started, release = tool_dir(tmp_path) / "started", tool_dir(tmp_path) / "release"
    slow = script_tool(
        tool_dir(tmp_path),
        "slow",
        SLOW.format(started=str(started), release=str(release)),
        concurrency=1,
        timeout_s=40,
    )
    client = await make_gateway(
        tools_config(backend, {"slow": slow, "noop": NOOP}), tools=log_settings(tmp_path)
    )
    first = asyncio.ensure_future(call(client, "slow", {"n": 1}))
    try:
        await wait_for(started.exists, "the first call to start its tool")
        response = await client.post(
            "/v1/tools/slow", json={"arguments": {"n": 2}}, headers=headers_for()
        )
        assert response.status == 429
        assert int(response.headers["Retry-After"]) >= 1
        error = (await response.json())["error"]
        assert error["code"] == "tool_overloaded"
        assert error["type"] == "rate_limit_error"
        assert "slow" in error["message"]
        # The limit is per tool: another tool still runs.
        assert (await call(client, "noop", {}))[0] == 200
    finally:
        release.write_text("go")
        status, body = await asyncio.wait_for(first, 60)
    assert status == 200 and body["ok"] is True and body["result"] == {"released": True}
    # The slot is free again once the first call is done.
    status, body = await call(client, "slow", {"n": 3})
    assert status == 200 and body["result"] == {"released": True}


# -- 5. http tools ---------------------------------------------------------------------------


async def test_an_http_tool_posts_the_arguments_to_its_backend(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    remote = {"version": "2", "http": {"backend": "b", "path": "/tools/echo"}}
    client = await make_gateway(
        tools_config(backend, {"remote": remote}), tools=log_settings(tmp_path)
    )
    arguments = {"query": "weather", "days": 3}
    response = await client.post(
        "/v1/tools/remote", json={"arguments": arguments}, headers=headers_for()
    )
    assert response.status == 200
    body = await response.json()
    assert body["ok"] is True, body
    assert body["result"] == {"echoed": arguments, "replay_id": "from-backend", "ok": False}
    assert REPLAY_ID.match(body["replay_id"])

    received = backend.app[RECEIVED]
    assert len(received) == 1
    assert received[0]["path"] == "/tools/echo"
    assert received[0]["body"] == arguments
    assert received[0]["headers"]["X-Request-Id"] == response.headers["X-Request-Id"]
    assert not any(TOKEN in value for value in received[0]["headers"].values())


async def test_an_http_tool_whose_backend_fails_is_an_upstream_error(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    remote = {"http": {"backend": "b", "path": "/tools/fail"}}
    client = await make_gateway(
        tools_config(backend, {"remote": remote}), tools=log_settings(tmp_path)
    )
    body = await call_ok(client, "remote", {"x": 1})
    assert body["ok"] is False and "result" not in body
    assert body["error"]["type"] == "upstream_error"
    assert "500" in body["error"]["message"]
    assert [entry["body"] for entry in backend.app[RECEIVED]] == [{"x": 1}]


# -- 6. replay of a tool whose output changes ---------------------------------------------


COUNTER_SCRIPT = """
import json, pathlib, sys
counter = pathlib.Path({path!r})
count = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(count))
json.dump({{"count": count, "arguments": json.load(sys.stdin)}}, sys.stdout)
"""


async def test_replay_of_a_tool_whose_output_changed_does_not_match(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    work = tool_dir(tmp_path)
    script = work / "counter.py"
    script.write_text(COUNTER_SCRIPT.format(path=str(work / "count.txt")))
    python, read_only = tool_python()
    argv = [python, str(script)]
    counter = {"subprocess": {"argv": argv, "cwd": str(work), "read_only": read_only}}
    client = await make_gateway(
        tools_config(backend, {"counter": counter}), tools=log_settings(tmp_path)
    )
    original = await call_ok(client, "counter", {"k": "v"})
    assert original["result"] == {"count": 1, "arguments": {"k": "v"}}
    response = await client.post(f"/v1/tools/replay/{original['replay_id']}", headers=headers_for())
    assert response.status == 200
    outcome = await response.json()
    assert outcome["matches"] is False
    assert outcome["request_hash_matches"] is True
    assert outcome["replay"]["result"] == {"count": 2, "arguments": {"k": "v"}}


async def test_a_tool_that_exits_before_it_is_fed_is_a_failure_with_its_stderr() -> None:
    """On uvloop a dead tool's stdin pipe is closed, and writing to it raised
    RuntimeError (the bus's 'internal_error'); the exit status and stderr are kept."""
    process = await asyncio.create_subprocess_exec(
        "sh",
        "-c",
        "echo 'bad input' >&2; exit 3",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdin is not None
    await process.wait()
    stdin = process.stdin
    await eventually(stdin.is_closing, "the exited tool's stdin pipe to close")
    spec: Any = SimpleNamespace(name="quick", max_output_bytes=1 << 20, sandbox="none")
    stdout, stderr = await executors._communicate(process, b'{"a": 1}', spec)
    assert (process.returncode, stdout, stderr) == (3, b"", b"bad input\n")
