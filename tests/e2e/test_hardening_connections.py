"""Connections, attacked through real Caddy: a burst of streams, a dead sidecar, an
oversized header, a slow-loris client.

Each test is an attack or a fault with a number that proves the gateway held: streams
completed + envelopes = clients and ``in_flight`` back to 0 after a 500-stream storm; the
canary's count in every response and log file after a 100 KB header; the seconds a
slow-loris client keeps its connection; the listen backlog and open-file limit the
sidecar really got.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.cli import LISTEN_BACKLOG, MAX_HEADER_BYTES
from sidecar.launcher import find_caddy

from ..conftest import TOKEN
from .stack import ROOT, GatewayStack, free_port

pytestmark = pytest.mark.timeout(240)

STORM = 500
# Each fake stream sends 10 chunks 100 ms apart: the whole burst is open at once.
CHUNKS, CHUNK_DELAY_MS = 10, 100
CANARY = "canary-7f3a9c51e2b84d06"
READ_HEADER_S = 2.0
READ_BODY_S = 3.0


def _raise_fd_limit() -> None:
    """500 TLS clients need more descriptors than a default soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _config(backend_port: int) -> str:
    return f"""
version: 1
backends:
  mock:
    url: http://127.0.0.1:{backend_port}/v1
    class: mock
    capabilities: [chat]
    limits: {{chat: 400}}
    health: {{liveness: /healthz, readiness: /readyz, interval_s: 5}}
    models: [mock-llama]
"""


@pytest.fixture(scope="module")
def backend_port() -> Iterator[int]:
    """The real fake backend (``gateway mock-backends``) with slow streams."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sidecar",
            "mock-backends",
            "--port",
            str(port),
            "--chunks",
            str(CHUNKS),
            "--chunk-delay-ms",
            str(CHUNK_DELAY_MS),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, "the fake backend exited"
                assert time.monotonic() < deadline, "the fake backend never listened"
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, backend_port: int) -> Iterator[GatewayStack]:
    _raise_fd_limit()
    gateway = GatewayStack(
        tmp_path_factory.mktemp("connections"),
        _config(backend_port),
        TOKEN,
        MOCK_BACKEND_URL=f"http://127.0.0.1:{backend_port}/v1",
        GATEWAY_ACCESS_LOG="true",
    ).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()]


def _sidecar_pid(stack: GatewayStack) -> int:
    assert stack.process is not None
    for child in _children(stack.process.pid):
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        if b"serve" in cmdline:
            return child
    raise AssertionError("no sidecar process under gateway up")


def _soft_nofile(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file limit in /proc/<pid>/limits")


async def _status(session: aiohttp.ClientSession, stack: GatewayStack) -> dict[str, Any]:
    async with session.get(
        f"{stack.base_url}/v1/gateway/status",
        headers={"Authorization": f"Bearer {stack.token}"},
        ssl=stack.ssl_context(),
    ) as response:
        assert response.status == 200
        return await response.json()


def _chat(status: dict[str, Any]) -> dict[str, Any]:
    backend = next(b for b in status["backends"] if b["name"] == "mock")
    return backend["capabilities"]["chat"]


# -- 1. a burst of 500 streams ------------------------------------------------------------


@dataclass
class StormResult:
    completed: int = 0
    stream_errors: int = 0
    envelopes: Counter[str] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)


def _is_envelope(body: bytes) -> str | None:
    """The envelope's ``code`` if ``body`` is an OpenAI error envelope, else None."""
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(error, dict) or not {"message", "type", "param", "code"} <= error.keys():
        return None
    if not isinstance(error["message"], str) or not error["message"]:
        return None
    return str(error["code"])


async def _one_stream(
    session: aiohttp.ClientSession, stack: GatewayStack, index: int, result: StormResult
) -> None:
    body = {
        "model": "mock-llama",
        "messages": [{"role": "user", "content": f"storm {index}"}],
        "stream": True,
    }
    try:
        async with session.post(
            f"{stack.base_url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {stack.token}"},
        ) as response:
            data = await response.read()
            content_type = response.headers.get("Content-Type", "")
            if response.status == 200 and content_type.startswith("text/event-stream"):
                text = data.decode()
                if not text.rstrip().endswith("data: [DONE]"):
                    result.bad.append(f"stream without [DONE]: {text[-200:]!r}")
                elif '"error"' in text:
                    result.stream_errors += 1
                else:
                    result.completed += 1
                return
            code = _is_envelope(data)
            if code is None or not content_type.startswith("application/json"):
                result.bad.append(f"{response.status} {content_type!r}: {data[:200]!r}")
            else:
                result.envelopes[f"{response.status}/{code}"] += 1
    except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
        result.bad.append(f"{type(exc).__name__}: {exc}")


async def test_500_streams_at_once_each_get_a_stream_or_an_envelope(
    stack: GatewayStack,
) -> None:
    result = StormResult()
    peak = {"in_flight": 0}
    storm_done = asyncio.Event()

    async def watch(session: aiohttp.ClientSession) -> None:
        """Polls the status during the storm: a client too, so its failures count."""
        url = f"{stack.base_url}/v1/gateway/status"
        auth = {"Authorization": f"Bearer {stack.token}"}
        context = stack.ssl_context()
        while not storm_done.is_set():
            async with session.get(url, headers=auth, ssl=context) as response:
                if response.status != 200:
                    result.bad.append(f"status poll: {response.status} {await response.text()}")
                else:
                    in_flight = _chat(await response.json())["in_flight"]
                    peak["in_flight"] = max(peak["in_flight"], in_flight)
            await asyncio.sleep(0.1)

    connector = aiohttp.TCPConnector(limit=STORM, ssl=stack.ssl_context())
    timeout = aiohttp.ClientTimeout(total=180)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        aiohttp.ClientSession() as observer,
    ):
        watcher = asyncio.create_task(watch(observer))
        await asyncio.gather(*(_one_stream(session, stack, i, result) for i in range(STORM)))
        storm_done.set()
        await watcher

        # Every slot is released: in_flight and queued go back to 0.
        deadline = time.monotonic() + 30
        while True:
            chat = _chat(await _status(observer, stack))
            if chat["in_flight"] == 0 and chat["queued"] == 0:
                break
            assert time.monotonic() < deadline, f"slots never released: {chat}"
            await asyncio.sleep(0.1)

    answered = result.completed + result.stream_errors + sum(result.envelopes.values())
    summary = (
        f"completed={result.completed} stream_errors={result.stream_errors} "
        f"envelopes={dict(result.envelopes)} bad={len(result.bad)} "
        f"peak_in_flight={peak['in_flight']} first bad={result.bad[:3]}"
    )
    print(summary)
    assert result.bad == [], summary
    assert answered == STORM, summary
    assert result.completed > 0, summary
    # What the sidecar refuses is its own 429 (limit 400), never an empty 502 from Caddy.
    assert set(result.envelopes) <= {"429/backend_overloaded"}, summary
    # The gateway is still healthy afterwards.
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{stack.base_url}/readyz", ssl=stack.ssl_context()) as response,
    ):
        assert response.status == 200


async def test_sidecar_listens_with_the_large_backlog_and_raised_fd_limit(
    stack: GatewayStack,
) -> None:
    sidecar = _sidecar_pid(stack)
    soft, hard = _soft_nofile(sidecar)
    assert soft == hard, f"sidecar open-file limit: soft {soft}, hard {hard}"
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    if not (ss := subprocess.run(["which", "ss"], capture_output=True, text=True).stdout.strip()):
        pytest.skip("ss (iproute2) is not installed: the backlog cannot be read")
    socket_path = str(stack.data_dir / "run" / "sidecar.sock")
    listing = subprocess.run([ss, "-xlnH"], capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in listing.splitlines() if socket_path in line]
    assert rows, f"{socket_path} not listening:\n{listing}"
    # For a listening socket ss's Send-Q is the backlog the kernel granted.
    backlog = int(rows[0][3])
    assert backlog == min(LISTEN_BACKLOG, somaxconn) > 128


# -- 2. an oversized header ----------------------------------------------------------------


def _raw_exchange(connect: Any, request: bytes, timeout: float = 30) -> tuple[bytes, float]:
    """Send ``request`` on a fresh connection; everything the server sent until it closed."""
    started = time.monotonic()
    sock = connect()
    sock.settimeout(timeout)
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)  # the server may refuse before reading everything
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            received += chunk
            if b"\r\n\r\n" in received and _complete(received):
                break
        return received, time.monotonic() - started
    finally:
        sock.close()


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def _tls_connect(stack_port: int, context: ssl.SSLContext) -> Any:
    def connect() -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", stack_port), timeout=30)
        return context.wrap_socket(raw, server_hostname="127.0.0.1")

    return connect


def _unix_connect(path: Path) -> Any:
    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
        return sock

    return connect


def _request(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "Connection: close", "", ""]
    return "\r\n".join(lines).encode()


def _canaries_on_disk(root: Path) -> dict[str, int]:
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            count = path.read_bytes().count(CANARY.encode())
            if count:
                found[str(path.relative_to(root))] = count
    return found


async def test_oversized_header_is_refused_and_never_echoed_or_logged(
    stack: GatewayStack,
) -> None:
    context = stack.ssl_context()
    context.set_alpn_protocols(["http/1.1"])
    through_caddy = _tls_connect(stack.port, context)
    huge = f"X-Canary: {CANARY}{'a' * 100_000}"

    # 100 KB through Caddy: refused before any handler runs, nothing echoed.
    response, _ = await asyncio.to_thread(_raw_exchange, through_caddy, _request("/healthz", huge))
    status = int(response.split(b" ", 2)[1])
    assert status in (400, 431), response[:300]
    assert response.count(CANARY.encode()) == 0

    # Just under Caddy's limit: the sidecar accepts what Caddy forwards (limits match).
    big = f"X-Big: {'b' * (MAX_HEADER_BYTES - 4096 - 2048)}"
    response, _ = await asyncio.to_thread(_raw_exchange, through_caddy, _request("/healthz", big))
    assert response.startswith(b"HTTP/1.1 200"), response[:300]
    assert b"x-request-id: req-" in response.lower()

    # Straight to the sidecar's socket, past its own limit: a 400 that quotes nothing.
    direct = _unix_connect(stack.data_dir / "run" / "sidecar.sock")
    for header in (huge, f"X-{CANARY}{'c' * 100_000}: v"):
        response, _ = await asyncio.to_thread(_raw_exchange, direct, _request("/healthz", header))
        assert response.startswith(b"HTTP/1.1 400") or response.startswith(b"HTTP/1.0 400")
        assert response.count(CANARY.encode()) == 0, response[:400]
        assert b"Got more than" not in response

    # The sidecar did log the refusals (so the logs were written), without the canary.
    deadline = time.monotonic() + 10
    while stack.log().count("malformed HTTP from a client") < 2:
        assert time.monotonic() < deadline, stack.log()[-2000:]
        await asyncio.sleep(0.1)
    # Every file under the data dir (Caddy's log, the sidecar's captured stdout/stderr,
    # the tool and access logs) and the captured output: the canary appears 0 times.
    assert _canaries_on_disk(stack.data_dir) == {}
    assert stack.log().count(CANARY) == 0


# -- 3. the sidecar down, and a slow-loris client: Caddy alone ---------------------------


@dataclass
class BareCaddy:
    """The repository's Caddyfile run by real Caddy, pointed at a socket nobody serves."""

    data_dir: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def socket(self) -> Path:
        return self.data_dir / "run" / "sidecar.sock"

    @property
    def log(self) -> Path:
        return self.data_dir / "caddy.log"

    def ssl_context(self) -> ssl.SSLContext:
        root = self.data_dir / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        return ssl.create_default_context(cafile=str(root))


@pytest.fixture(scope="module")
def bare_caddy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BareCaddy]:
    data_dir = tmp_path_factory.mktemp("bare-caddy")
    (data_dir / "run").mkdir()
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(data_dir),
        "XDG_DATA_HOME": str(data_dir),
        "GATEWAY_DATA_DIR": str(data_dir),
        "GATEWAY_SITE": f"https://127.0.0.1:{port}",
        "GATEWAY_SOCKET": str(data_dir / "run" / "sidecar.sock"),
        "UI_IP_ALLOWLIST": "127.0.0.1/32",
        "GATEWAY_MAX_BODY": "1KB",
        "GATEWAY_READ_HEADER_TIMEOUT": f"{READ_HEADER_S:g}s",
        "GATEWAY_READ_BODY_TIMEOUT": f"{READ_BODY_S:g}s",
        "GATEWAY_PROXY_TRY_DURATION": "500ms",
    }
    with (data_dir / "caddy.log").open("wb") as log:
        process = subprocess.Popen(
            [find_caddy(), "run", "--config", "Caddyfile", "--adapter", "caddyfile"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    caddy = BareCaddy(data_dir, port, process)
    try:
        deadline = time.monotonic() + 30
        root = data_dir / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        while True:
            assert process.poll() is None, caddy.log.read_text()[-3000:]
            assert time.monotonic() < deadline, caddy.log.read_text()[-3000:]
            if root.exists():
                try:
                    raw = socket.create_connection(("127.0.0.1", port), timeout=2)
                    caddy.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1").close()
                    break
                except (OSError, ssl.SSLError):
                    pass
            time.sleep(0.1)
        yield caddy
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
async def bare_session(bare_caddy: BareCaddy) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=bare_caddy.ssl_context())
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


def _no_internals(text: str, caddy: BareCaddy) -> None:
    for secret in ("sidecar.sock", str(caddy.data_dir), "dial", "unix", "connect:"):
        assert secret not in text, f"{secret!r} leaked: {text}"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
    ],
)
async def test_sidecar_down_is_an_openai_envelope(
    bare_caddy: BareCaddy, bare_session: aiohttp.ClientSession, method: str, path: str
) -> None:
    body = {"model": "m", "messages": []} if method == "POST" else None
    async with bare_session.request(method, f"{bare_caddy.base_url}{path}", json=body) as response:
        text = await response.text()
        assert response.status == 502, text
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers["Retry-After"] == "2"
    error = json.loads(text)["error"]
    assert error == {
        "message": "The gateway is not reachable right now; try again shortly.",
        "type": "api_error",
        "param": None,
        "code": "gateway_unavailable",
    }
    _no_internals(text, bare_caddy)


async def test_sidecar_down_is_a_small_html_page_on_ui(
    bare_caddy: BareCaddy, bare_session: aiohttp.ClientSession
) -> None:
    for path in ("/ui", "/ui/chat", "/ui/static/app.js"):
        async with bare_session.get(f"{bare_caddy.base_url}{path}") as response:
            text = await response.text()
            assert response.status == 502, text
            assert response.headers["Content-Type"] == "text/html; charset=utf-8"
            assert response.headers["Content-Security-Policy"] == "default-src 'none'"
            assert response.headers["Retry-After"] == "2"
        assert text.startswith("<!doctype html>")
        assert "The gateway is not reachable right now" in text
        assert len(text.encode()) < 1024
        _no_internals(text, bare_caddy)


async def test_sidecar_down_is_a_json_rpc_error_on_mcp(
    bare_caddy: BareCaddy, bare_session: aiohttp.ClientSession
) -> None:
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    async with bare_session.post(f"{bare_caddy.base_url}/mcp", json=call) as response:
        text = await response.text()
        assert response.status == 502, text
        assert response.headers["Content-Type"] == "application/json"
    reply = json.loads(text)
    assert reply["jsonrpc"] == "2.0"
    assert reply["id"] is None
    assert reply["error"]["code"] == -32603
    assert reply["error"]["data"] == {"status": 502, "code": "gateway_unavailable"}
    _no_internals(text, bare_caddy)


@dataclass
class StandIn:
    """What the stand-in sidecar saw: whole bodies read, and requests cut mid-body."""

    received: list[int] = field(default_factory=list)
    cut_after_s: list[float] = field(default_factory=list)


@contextlib.asynccontextmanager
async def _stand_in_sidecar(caddy: BareCaddy) -> AsyncIterator[StandIn]:
    """An aiohttp server on the socket Caddy proxies to, in place of the sidecar."""
    seen = StandIn()

    async def read_all(request: web.Request) -> web.Response:
        started = time.monotonic()
        try:
            seen.received.append(len(await request.read()))
        except (ConnectionError, aiohttp.ClientPayloadError, asyncio.CancelledError):
            seen.cut_after_s.append(time.monotonic() - started)
            raise
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", read_all)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.UnixSite(runner, str(caddy.socket)).start()
    try:
        yield seen
    finally:
        await runner.cleanup()
        caddy.socket.unlink(missing_ok=True)


async def test_body_over_caddys_limit_is_a_413_envelope(
    bare_caddy: BareCaddy, bare_session: aiohttp.ClientSession
) -> None:
    url = f"{bare_caddy.base_url}/v1/chat/completions"
    headers = {"Content-Type": "application/json"}
    async with _stand_in_sidecar(bare_caddy) as seen:
        async with bare_session.post(url, data=b"x" * 512, headers=headers) as response:
            assert response.status == 200  # under GATEWAY_MAX_BODY=1KB: proxied
        async with bare_session.post(url, data=b"x" * 4096, headers=headers) as response:
            text = await response.text()
            status = response.status
    assert status == 413, text
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(text)["error"] == {
        "message": "The request body is larger than the gateway accepts.",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_too_large",
    }
    assert seen.received == [512]  # the oversized body never reached the sidecar whole


async def _trickle(
    caddy: BareCaddy, head: bytes, payload: bytes, give_up_s: float
) -> tuple[float | None, int, bytes]:
    """Send ``head`` then ``payload`` one byte per 200 ms until Caddy gives up on us.

    Returns the seconds until Caddy closed or answered (None: it never did), the payload
    bytes sent and what it answered.
    """
    context = caddy.ssl_context()
    context.set_alpn_protocols(["http/1.1"])
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", caddy.port, ssl=context, server_hostname="127.0.0.1"
    )
    started = time.monotonic()
    sent = 0
    answer = b""
    try:
        writer.write(head)
        while time.monotonic() < started + give_up_s and sent < len(payload):
            try:
                writer.write(payload[sent : sent + 1])
                await writer.drain()
                sent += 1
                answer = await asyncio.wait_for(reader.read(4096), timeout=0.2)
            except TimeoutError:
                continue  # still open and silent: send the next byte
            except (ConnectionError, ssl.SSLError):
                pass
            return time.monotonic() - started, sent, answer  # EOF, an answer or a reset
        return None, sent, answer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
            await writer.wait_closed()


async def test_slow_loris_headers_are_cut_off_at_read_header(bare_caddy: BareCaddy) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    closed_after, sent, answer = await _trickle(
        bare_caddy, head, b"X-Slow: " + b"z" * 10_000, give_up_s=READ_HEADER_S + 30
    )
    print(f"slow-loris headers cut after {closed_after} s and {sent} bytes: {answer[:40]!r}")
    assert closed_after is not None, f"still open after {sent} header bytes"
    assert closed_after < READ_HEADER_S + 10
    assert CANARY.encode() not in answer


async def test_slow_body_releases_the_sidecar_at_read_body(bare_caddy: BareCaddy) -> None:
    """A body sent one byte every 200 ms holds the sidecar only until read_body.

    (Caddy answers the client, a 504, only once its body is complete; what matters is
    that the sidecar's connection and handler are freed at the deadline.)
    """
    context = bare_caddy.ssl_context()
    context.set_alpn_protocols(["http/1.1"])
    async with _stand_in_sidecar(bare_caddy) as seen:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", bare_caddy.port, ssl=context, server_hostname="127.0.0.1"
        )
        started = time.monotonic()
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
        sent = 0
        try:
            while not seen.cut_after_s and time.monotonic() < started + READ_BODY_S + 30:
                writer.write(b" ")
                await writer.drain()
                sent += 1
                await asyncio.sleep(0.2)  # the attack's pace, not a wait for a result
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
                await writer.wait_closed()
    print(f"slow body: sidecar released after {seen.cut_after_s} s, {sent} bytes sent")
    assert seen.received == []  # never a whole request to act on
    assert len(seen.cut_after_s) == 1, f"sidecar still held after {sent} body bytes"
    assert seen.cut_after_s[0] < READ_BODY_S + 10
    assert sent < 1000


# -- 4. the two sides' limits agree ------------------------------------------------------


def test_caddy_and_sidecar_header_limits_match_and_timeouts_are_set(tmp_path: Path) -> None:
    env = {"GATEWAY_DATA_DIR": str(tmp_path), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    adapted = subprocess.run(
        [find_caddy(), "adapt", "--config", "Caddyfile", "--adapter", "caddyfile"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    server = json.loads(adapted.stdout)["apps"]["http"]["servers"]["srv0"]
    # Go reads up to 4 KiB past max_header_bytes; the sidecar takes a line that long.
    assert server["max_header_bytes"] + 4096 == MAX_HEADER_BYTES
    assert server["read_header_timeout"] == 10 * 10**9
    assert server["read_timeout"] == 120 * 10**9
    assert server["read_idle_timeout"] == 30 * 10**9
    assert server["write_idle_timeout"] == 600 * 10**9
