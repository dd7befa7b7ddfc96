"""Issue item 3, record first then run, attacked with a REAL full disk.

A real ``gateway serve`` runs inside ``unshare --user --map-root-user --mount`` with a
2 MiB tmpfs mounted over its data directory; the test reaches that tmpfs through
``/proc/<pid>/root`` (the sidecar's own view of the file system), fills it with a
ballast file, and frees it again. The sidecar listens on a unix socket outside the
tmpfs. Every fault is counted: marker files a side-effecting tool created, lines and
bytes in the tool log, files in the images and transcripts folders, rows in SQLite, and
what ``/readyz`` says.

Records are made at least a page long (padding in the arguments) so they cannot slip
into the free tail of an already allocated tmpfs page: a record that does fit is simply
written, which is correct, but would not test anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from .conftest import TOKEN, GatewayFactory, gateway_yaml, mock_backend_yaml
from .test_agents import SCRIPTED_RECEIVED, always_calls, scripted_model_app
from .test_toolbus import log_settings

ROOT = Path(__file__).resolve().parents[1]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UI = {"X-Real-IP": "127.0.0.1"}  # on the unix socket the sidecar believes Caddy's header
WAIT_S = 60.0  # bounded waits on conditions; never a pass/fail on time
PAD = "p" * 6000  # every record is longer than one 4 KiB page
TMPFS_BYTES = 2 * 1024 * 1024

# No skip: unshare, nsenter and tmpfs mounts work on every machine this runs on (and CI).

TOUCH = """
import json, pathlib, sys
args = json.load(sys.stdin)
pathlib.Path(args["marker"]).write_text("ran")
print(json.dumps({"touched": args["marker"]}))
"""

# Runs inside the sidecar's mount namespace, so it fills the same tmpfs.
FILL = """
import errno, json, os, pathlib, sys
args = json.load(sys.stdin)
pathlib.Path(args["marker"]).write_text("ran")
written = 0
with open(args["ballast"], "wb", buffering=0) as handle:
    try:
        while True:
            written += handle.write(b"\\0" * 65536)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
print(json.dumps({"filled": written}))
"""


@dataclass
class Gateway:
    process: asyncio.subprocess.Process
    session: aiohttp.ClientSession
    data_dir: Path  # the path as the sidecar sees it (a tmpfs in its namespace)
    outside: Path  # scratch space outside the tmpfs (markers, config)
    stderr_path: Path

    @property
    def view(self) -> Path:
        """The sidecar's data directory, from the test's side."""
        return Path(f"/proc/{self.process.pid}/root") / self.data_dir.relative_to("/")

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        assert self.process.returncode is None, self.log()
        async with self.session.request(
            method, f"http://gateway{path}", json=body, headers=headers or AUTH
        ) as response:
            text = await response.text()
            assert "Traceback" not in text
            data = json.loads(text) if text else {}
            return response.status, data, dict(response.headers)

    async def tool(self, name: str, arguments: dict[str, Any]) -> tuple[int, dict[str, Any], Any]:
        status, body, headers = await self.request(
            "POST", f"/v1/tools/{name}", {"arguments": arguments}
        )
        return status, body, headers

    async def readyz(self) -> dict[str, Any]:
        status, body, _ = await self.request("GET", "/readyz", headers={})
        assert status == 200
        return body

    def fill(self) -> int:
        """Fill the tmpfs with a ballast file; returns the bytes it took."""
        written = 0
        with (self.view / "ballast").open("wb", buffering=0) as handle:
            try:
                while True:
                    written += handle.write(b"\0" * 65536)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        return written

    def free(self) -> None:
        for name in ("ballast", "ballast-tool"):
            with contextlib.suppress(FileNotFoundError):
                (self.view / name).unlink()

    def free_bytes(self) -> int:
        stats = os.statvfs(self.view)
        return stats.f_bavail * stats.f_frsize

    def files(self, folder: str) -> list[str]:
        try:
            return sorted(os.listdir(self.view / folder))
        except FileNotFoundError:
            return []

    def log_lines(self) -> list[dict[str, Any]]:
        raw = (self.view / "tools" / "invocations.ndjson").read_bytes()
        assert raw == b"" or raw.endswith(b"\n"), "a torn line was left in the log"
        return [json.loads(line) for line in raw.splitlines()]

    async def sql(self, query: str) -> Any:
        """Run one query on the users database inside the sidecar's namespaces.

        (SQLite resolves the /proc/<pid>/root link, so it must open the file from there.)
        """
        script = (
            "import json, sqlite3, sys\n"
            f"db = sqlite3.connect({str(self.data_dir / 'users.sqlite3')!r})\n"
            "print(json.dumps(db.execute(sys.argv[1]).fetchone()))\n"
        )
        process = await asyncio.create_subprocess_exec(
            "nsenter",
            f"--target={self.process.pid}",
            "--user",
            "--mount",
            sys.executable,
            "-c",
            script,
            query,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), WAIT_S)
        assert process.returncode == 0, err.decode()
        return json.loads(out)

    async def rows(self, table: str) -> int:
        return (await self.sql(f"SELECT count(*) FROM {table}"))[0]  # noqa: S608

    async def empty_the_wal(self) -> None:
        """Checkpoint SQLite's WAL to zero bytes, so the next write needs new pages."""
        busy, _, _ = await self.sql("PRAGMA wal_checkpoint(TRUNCATE)")
        assert busy == 0
        assert (self.view / "users.sqlite3-wal").stat().st_size == 0


async def until(check: Callable[[], Awaitable[bool]], what: str, gateway: Gateway) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}\n{gateway.log()[-3000:]}")
        await asyncio.sleep(0.05)


def tools_yaml(scratch: Path) -> str:
    scripts = {}
    for name, source in (("touch", TOUCH), ("fill", FILL)):
        script = scratch / f"{name}.py"
        script.write_text(source)
        scripts[name] = {
            "version": "1",
            "description": f"{name} a marker file",
            "parameters": {"type": "object"},
            # Unconfined on purpose: "fill" writes into the data dir and "touch" leaves a
            # marker outside it, side effects the test must be able to see (or not see).
            "subprocess": {"argv": [sys.executable, str(script)], "sandbox": "none"},
        }
    return f"tools: {json.dumps(scripts)}\n"


GatewayStarter = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def full_disk_gateway(start_mock: Any, tmp_path: Path) -> AsyncIterator[GatewayStarter]:
    started: list[Gateway] = []

    async def start(model_app: web.Application | None = None, **env_extra: str) -> Gateway:
        backend = await start_mock(model_app)
        config = tmp_path / "gateway.yaml"
        config.write_text(
            gateway_yaml(
                mock_backend_yaml("mock", backend),
                aliases="default: {backend: mock, model: mock-llama}",
            )
            + tools_yaml(tmp_path)
        )
        agents = tmp_path / "agents.json"
        brief = {"model": "default", "system_prompt": "Be brief.", "tools": ["touch"]}
        looper = {**brief, "max_turns": 3}
        agents.write_text(json.dumps({"agents": {"brief": brief, "looper": looper}}))
        data_dir = tmp_path / "var"
        data_dir.mkdir()
        socket_path = tmp_path / "run" / "gw.sock"
        prefixes = ("GATEWAY_", "BACKEND_", "TRUSTED_PROXIES", "MOCK_BACKEND_URL", "IMAGES_")
        env = {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}
        env.update(
            GATEWAY_SOCKET=str(socket_path),
            GATEWAY_CONFIG=str(config),
            GATEWAY_CONFIG_POLL_S="0",
            GATEWAY_BEARER_TOKEN=TOKEN,
            GATEWAY_DATA_DIR=str(data_dir),
            AGENT_SPECS_PATH=str(agents),
            IMAGES_BACKEND="mock",
            UI_IP_ALLOWLIST="127.0.0.1/32",
            **env_extra,
        )
        script = (
            f'mount -t tmpfs -o size={TMPFS_BYTES} tmpfs "$DATA" && '
            f'exec "{sys.executable}" -m sidecar serve'
        )
        stderr_path = tmp_path / "serve.log"
        with stderr_path.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                "unshare",
                "--user",
                "--map-root-user",
                "--mount",
                "sh",
                "-c",
                script,
                cwd=ROOT,
                env={**env, "DATA": str(data_dir)},
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
            )
        connector = aiohttp.UnixConnector(path=str(socket_path))
        session = aiohttp.ClientSession(connector=connector)
        gateway = Gateway(process, session, data_dir, tmp_path, stderr_path)
        started.append(gateway)

        async def healthy() -> bool:
            assert process.returncode is None, gateway.log()
            try:
                async with session.get("http://gateway/healthz") as response:
                    return response.status == 200
            except (aiohttp.ClientConnectionError, FileNotFoundError):
                return False

        await until(healthy, "the gateway to listen on its socket", gateway)
        # The data directory really is the small tmpfs, as the sidecar sees it.
        assert os.statvfs(gateway.view).f_blocks * os.statvfs(gateway.view).f_frsize == (
            TMPFS_BYTES
        )
        assert not any(tmp_path.joinpath("var").iterdir()), "the tmpfs is not private"
        return gateway

    yield start
    for gateway in started:
        await gateway.session.close()
        if gateway.process.returncode is None:
            gateway.process.kill()
            await gateway.process.wait()


async def ui_csrf(gateway: Gateway) -> str:
    async with gateway.session.get("http://gateway/ui", headers=UI) as response:
        page = await response.text()
    assert response.status == 200, page[:500]
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
    assert found is not None
    return found.group(1)


def assert_storage_503(status: int, body: dict[str, Any], headers: dict[str, str]) -> str:
    assert status == 503, body
    assert set(body) == {"error"}, body
    error = body["error"]
    assert (error["type"], error["code"]) == ("api_error", "storage_unavailable"), body
    assert int(headers["Retry-After"]) > 0
    assert "/" not in error["message"].replace("b64_json", ""), "a path leaked"
    return error["message"]


async def test_a_full_disk_refuses_every_write_cleanly_and_recovers_by_itself(
    full_disk_gateway: GatewayStarter,
) -> None:
    gateway = await full_disk_gateway()
    marker = gateway.outside / "markers"
    marker.mkdir()
    csrf = await ui_csrf(gateway)
    ui_write = {**UI, "X-CSRF-Token": csrf}

    # Healthy: the tool runs and leaves its two records (intent, outcome).
    status, body, _ = await gateway.tool("touch", {"marker": str(marker / "0"), "pad": PAD})
    assert status == 200 and body["ok"] is True, body
    assert [line["phase"] for line in gateway.log_lines()] == ["started", "finished"]
    ready = await gateway.readyz()
    assert ready["status"] == "ready" and ready["storage"]["writable"] is True
    assert ready["storage"]["free_bytes"] > 0
    conversations_before = await gateway.rows("conversations")

    # The attack: the disk fills up.
    await gateway.empty_the_wal()
    ballast = gateway.fill()
    assert ballast > TMPFS_BYTES // 2
    assert gateway.free_bytes() == 0
    log_bytes = (gateway.view / "tools" / "invocations.ndjson").stat().st_size
    log_files = gateway.files("tools/invocations")

    # 1. A side-effecting tool is refused before it runs: no marker, no record.
    status, body, headers = await gateway.tool("touch", {"marker": str(marker / "1"), "pad": PAD})
    assert "not run" in assert_storage_503(status, body, headers)
    # 2. The same over MCP: a JSON-RPC error, and the tool did not run either.
    status, rpc, _ = await gateway.request(
        "POST",
        "/mcp",
        {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": "touch", "arguments": {"marker": str(marker / "2"), "pad": PAD}},
        },
    )
    assert status == 200 and rpc["id"] == 7 and rpc["error"]["code"] == -32000, rpc
    assert "not run" in rpc["error"]["message"]
    # 3. An agent whose transcript cannot be stored is a 503, not a 500.
    status, body, headers = await gateway.request(
        "POST", "/v1/agent/run", {"agent": "brief", "input": "hello"}
    )
    assert_storage_503(status, body, headers)
    # 4. An image that cannot be stored is a 503 with no half-written file.
    status, body, headers = await gateway.request(
        "POST", "/v1/images/generations", {"prompt": "a red fox"}
    )
    assert_storage_503(status, body, headers)
    # 5. A UI write that SQLite cannot make ("database or disk is full") is a 503 too.
    status, body, headers = await gateway.request(
        "POST", "/ui/api/conversations", {"title": "t" * 200}, ui_write
    )
    assert_storage_503(status, body, headers)

    assert sorted(os.listdir(marker)) == ["0"], "a tool ran although its record failed"
    assert (gateway.view / "tools" / "invocations.ndjson").stat().st_size == log_bytes
    assert gateway.files("tools/invocations") == log_files  # no temp file left either
    assert gateway.files("images") == []
    assert gateway.files("agent_runs") == []
    assert await gateway.rows("conversations") == conversations_before

    # /readyz says so, with the kind of error and no path.
    async with gateway.session.get("http://gateway/readyz") as response:
        text = await response.text()
    assert str(gateway.data_dir) not in text and "ballast" not in text
    ready = json.loads(text)
    assert ready["status"] == "degraded"
    storage = ready["storage"]
    assert storage["writable"] is False and storage["last_error"] == "disk_full", storage
    assert storage["free_bytes"] == 0 and storage["write_failures"] >= 5

    # Space comes back: the gateway notices by itself, with no request and no restart.
    pid = gateway.process.pid
    gateway.free()

    async def recovered() -> bool:
        return (await gateway.readyz())["storage"]["writable"] is True

    await until(recovered, "/readyz to see the disk writable again", gateway)
    ready = await gateway.readyz()
    assert ready["status"] == "ready" and ready["storage"]["free_bytes"] > TMPFS_BYTES // 2
    assert gateway.process.pid == pid and gateway.process.returncode is None

    status, body, _ = await gateway.tool("touch", {"marker": str(marker / "3"), "pad": PAD})
    assert status == 200 and body["ok"] is True, body
    assert sorted(os.listdir(marker)) == ["0", "3"]
    status, record, _ = await gateway.request("GET", f"/v1/tools/replay/{body['replay_id']}")
    assert status == 200 and record["complete"] is True and record["ok"] is True
    assert [line["phase"] for line in gateway.log_lines()] == ["started", "finished"] * 2
    status, body, _ = await gateway.request(
        "POST", "/ui/api/conversations", {"title": "after"}, ui_write
    )
    assert status == 201, body
    assert await gateway.rows("conversations") == conversations_before + 1
    status, body, _ = await gateway.request(
        "POST", "/v1/images/generations", {"prompt": "a red fox"}
    )
    assert status == 200, body
    assert len(gateway.files("images")) == 1
    status, body, _ = await gateway.request(
        "POST", "/v1/agent/run", {"agent": "brief", "input": "hello"}
    )
    assert status == 200 and body["ok"] is True, body
    assert len(gateway.files("agent_runs")) == 1
    log = gateway.log()
    assert "Traceback" not in log
    assert "recovered" in log


async def test_a_tool_that_fills_the_disk_is_recorded_as_started_and_the_log_stays_whole(
    full_disk_gateway: GatewayStarter,
) -> None:
    # NDJSON only, so the outcome line is appended to a file whose last page has room:
    # part of the line lands, the rest hits ENOSPC, and the torn part must be cut off.
    gateway = await full_disk_gateway(TOOLS_LOG_MODE="ndjson")
    marker = gateway.outside / "ran"
    status, body, headers = await gateway.tool(
        "fill",
        {"marker": str(marker), "ballast": str(gateway.data_dir / "ballast-tool"), "pad": PAD},
    )
    message = assert_storage_503(status, body, headers)
    assert "ran" in message and "recorded as started" in message
    assert marker.read_text() == "ran"  # the side effect happened ...
    replay_id = re.search(r"tool-[0-9a-f]{24}", message)
    assert replay_id is not None
    lines = gateway.log_lines()  # ... and the log holds its intent, whole, and nothing torn
    assert [(line["replay_id"], line["phase"]) for line in lines] == [
        (replay_id.group(0), "started")
    ]
    size = (gateway.view / "tools" / "invocations.ndjson").stat().st_size
    assert size == len(json.dumps(lines[0], separators=(",", ":")).encode()) + 1
    assert gateway.free_bytes() == 0

    # Reading still works on a full disk: the call shows as incomplete.
    status, record, _ = await gateway.request("GET", f"/v1/tools/replay/{replay_id.group(0)}")
    assert status == 200, record
    assert record["complete"] is False and record["phase"] == "started"
    assert record["tool"] == "fill" and "ok" not in record
    assert (await gateway.readyz())["storage"]["writable"] is False

    gateway.free()

    async def recovered() -> bool:
        return (await gateway.readyz())["status"] == "ready"

    await until(recovered, "/readyz to recover", gateway)
    status, body, _ = await gateway.tool("touch", {"marker": str(marker) + ".2", "pad": PAD})
    assert status == 200 and body["ok"] is True
    lines = gateway.log_lines()
    assert [line["phase"] for line in lines] == ["started", "started", "finished"]
    assert "Traceback" not in gateway.log()


async def test_an_agent_on_a_full_disk_runs_no_tool_and_answers_503(
    full_disk_gateway: GatewayStarter, tmp_path: Path
) -> None:
    marker = tmp_path / "agent-marker"
    model = scripted_model_app(always_calls("touch", {"marker": str(marker), "pad": PAD}))
    gateway = await full_disk_gateway(model_app=model)
    gateway.fill()

    status, body, headers = await gateway.request(
        "POST", "/v1/agent/run", {"agent": "looper", "input": "touch it"}
    )
    assert_storage_503(status, body, headers)
    # The model asked for the tool on every one of its 3 turns; it never ran.
    assert len(model[SCRIPTED_RECEIVED]) == 3
    assert not marker.exists()
    assert gateway.files("agent_runs") == [] and gateway.files("tools/invocations") == []
    assert (gateway.view / "tools" / "invocations.ndjson").stat().st_size == 0

    gateway.free()

    async def recovered() -> bool:
        return (await gateway.readyz())["status"] == "ready"

    await until(recovered, "/readyz to recover", gateway)
    status, body, _ = await gateway.request(
        "POST", "/v1/agent/run", {"agent": "looper", "input": "touch it"}
    )
    assert status == 200, body
    assert [call["ok"] for call in body["tool_calls"]] == [True, True, True]
    assert marker.read_text() == "ran"
    assert len(gateway.files("agent_runs")) == 1
    phases = [line["phase"] for line in gateway.log_lines()]
    assert phases == ["started", "finished"] * 3


# -- every recorded intent gets an outcome ---------------------------------------------------


async def test_a_refused_expression_leaves_no_record_and_a_broken_tool_leaves_an_outcome(
    make_gateway: GatewayFactory, start_mock: Any, tmp_path: Path
) -> None:
    """Two faults after review. A calculator expression the calculator refuses (a 400) used
    to be refused only after its intent was on disk, leaving a call that reads as "may have
    run" forever; and a tool whose output is JSON nested past the parser's depth made the
    bus fail with a 500 between intent and outcome. Numbers: records on disk, and calls
    whose intent has no outcome."""
    deep = tmp_path / "deep.py"
    deep.write_text("import sys\nsys.stdin.read()\nprint('[' * 200000)\n")
    tools = {
        "calculator": {
            "version": "1",
            "parameters": {"type": "object"},
            "builtin": "calculator",
        },
        "deep": {
            "version": "1",
            "parameters": {"type": "object"},
            "subprocess": {"argv": [sys.executable, str(deep)], "sandbox": "none"},
        },
    }
    backend = await start_mock()
    client = await make_gateway(
        gateway_yaml(mock_backend_yaml("b", backend)) + f"tools: {json.dumps(tools)}\n",
        tools=log_settings(tmp_path),
    )
    log_path = tmp_path / "log" / "calls.ndjson"
    for expression in ("max()", "round(1, 2, 3)", "2 +", "x" * 600, "(" * 300 + "1" + ")" * 300):
        response = await client.post(
            "/v1/tools/calculator", json={"arguments": {"expression": expression}}, headers=AUTH
        )
        assert response.status == 400, await response.text()
    assert not log_path.exists() or log_path.read_bytes() == b""  # 0 records

    response = await client.post("/v1/tools/deep", json={"arguments": {}}, headers=AUTH)
    body = await response.json()
    assert response.status == 200 and body["ok"] is True, body
    assert len(body["result"]["stdout"]) > 200000  # kept as text, not parsed
    records = [json.loads(line) for line in log_path.read_bytes().splitlines()]
    phases = [(record["replay_id"], record["phase"]) for record in records]
    assert phases == [(body["replay_id"], "started"), (body["replay_id"], "finished")]
