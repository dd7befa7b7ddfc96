"""Attacks on hot reload: hostile config files, a billion laughs, buggy listeners, rotated certs.

Every hostile edit must be refused, counted once, shown as ``degraded`` on the open
``/readyz`` without a path or the error text, and leave the last good config serving;
the watcher must keep going, so the good file that follows is picked up and logged as
restored. The numbers asserted: the refusal counter after each edit, the bytes of the
refused file vs. the RSS the process grew by, the wall time of a refusal, the exit code
of ``gateway check-config`` on each hostile file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

import sidecar.reload as reload_module
from sidecar.config.loader import MAX_CONFIG_BYTES, MAX_DEPTH, MAX_NODES
from sidecar.mock_backends import create_mock_app
from sidecar.mock_backends.openai_server import RECEIVED
from sidecar.typedefs import RELOADER

from .certs import TestPki, issue, make_ca, make_pki
from .conftest import TOKEN, backend_yaml, gateway_cli, gateway_yaml, mock_backend_yaml, rewrite
from .conftest import eventually as wait_until_true
from .test_reload import serve_env

ROOT = Path(__file__).resolve().parents[1]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
POLL_S = 0.05
ATTEMPTS = 600  # bounded waits: at most ATTEMPTS x POLL_S seconds; never a pass/fail on time
WAIT_S = 30.0

BILLION_LAUGHS = """version: 1
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
backends: {lol: {url: "http://127.0.0.1:9/v1", models: *i}}
"""
# 10 000 levels: deeper than Python's recursion limit if anything walked it recursively.
DEEP = "version: 1\nbackends: " + "[" * 10_000 + "]" * 10_000 + "\n"
RECURSIVE_ALIAS = "version: 1\nbackends: &loop\n  m: {url: 'http://127.0.0.1:9/v1', x: *loop}\n"
TABS = "version: 1\nbackends:\n\tm: {url: 'http://127.0.0.1:9/v1'}\n"


eventually = functools.partial(wait_until_true, attempts=ATTEMPTS, poll_s=POLL_S)


def replace_with_symlink(path: Path, target: str) -> None:
    """Atomically put a symlink to ``target`` where ``path`` is."""
    link = path.with_name(path.name + ".link")
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    os.symlink(target, link)
    os.replace(link, path)


def hostile_files(directory: Path) -> dict[str, tuple[Callable[[Path], None], str]]:
    """name -> (how to put it in place at ``path``, what the admin is told)."""
    directory.mkdir(exist_ok=True)
    (directory / "a-directory").mkdir(exist_ok=True)
    fifo = directory / "a-fifo"
    if not fifo.exists():
        os.mkfifo(fifo)

    def content(data: bytes) -> Callable[[Path], None]:
        return lambda path: rewrite(path, data)

    def symlink(target: str) -> Callable[[Path], None]:
        return lambda path: replace_with_symlink(path, target)

    return {
        "empty": (content(b""), "backends: at least one backend is required"),
        "comments only": (content(b"# nothing here\n"), "at least one backend is required"),
        "binary": (content(b"\xff\xfe\x00\x01garbage\x80"), "not UTF-8 text"),
        "NUL bytes": (content(b"version: 1\x00\x00\n"), "invalid YAML"),
        "tabs": (content(TABS.encode()), "invalid YAML"),
        "huge": (content(b"#" * (MAX_CONFIG_BYTES + 1)), f"larger than {MAX_CONFIG_BYTES}"),
        "deep": (content(DEEP.encode()), f"nested deeper than {MAX_DEPTH} levels"),
        "billion laughs": (content(BILLION_LAUGHS.encode()), f"more than {MAX_NODES} nodes"),
        "recursive alias": (content(RECURSIVE_ALIAS.encode()), "inside its own anchor"),
        "unknown tag": (content(b"version: !!python/object:os.system 1\n"), "invalid"),
        "symlink to a directory": (symlink(str(directory / "a-directory")), "not a regular file"),
        "symlink to a FIFO": (symlink(str(fifo)), "not a regular file"),
        "symlink to a device": (symlink("/dev/zero"), "not a regular file"),
        "symlink loop": (symlink("gateway.yaml"), "too many levels of symbolic links"),
        "dangling symlink": (symlink(str(directory / "missing.yaml")), "no such file"),
    }


@contextlib.contextmanager
def captured(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO, logger="gateway.config")
    yield caplog


def restored_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "config restored" in r.getMessage()]


async def refused_count(gateway: TestClient) -> int:
    async with gateway.get("/v1/gateway/status", headers=AUTH) as response:
        assert response.status == 200
        return (await response.json())["config"]["reloads_refused"]


async def status_config(gateway: TestClient) -> dict[str, Any]:
    async with gateway.get("/v1/gateway/status", headers=AUTH) as response:
        assert response.status == 200
        return (await response.json())["config"]


async def open_readyz(gateway: TestClient) -> tuple[dict[str, Any], str]:
    async with gateway.get("/readyz") as response:
        assert response.status == 200
        text = await response.text()
    return json.loads(text), text


async def chat_status(gateway: TestClient, model: str = "default") -> int:
    async with gateway.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers=AUTH,
    ) as response:
        await response.read()
        return response.status


async def wait_refused(gateway: TestClient, count: int, what: str) -> None:
    async def reached() -> bool:
        return await refused_count(gateway) >= count

    await eventually(reached, what)


# -- every hostile edit is refused once, the watcher survives, the fix is picked up ----------


async def test_hostile_edits_are_refused_counted_and_hidden_then_a_good_file_restores(
    make_gateway: Any, start_mock: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await start_mock()
    config = tmp_path / "gateway.yaml"
    good = gateway_yaml(
        mock_backend_yaml("mock", backend), aliases="default: {backend: mock, model: mock-llama}"
    )
    hostile = hostile_files(tmp_path / "hostile")
    with captured(caplog):
        gateway = await make_gateway(good, config_poll_s=POLL_S)
        assert (await open_readyz(gateway))[0]["status"] == "ready"
        for refused, (name, (put, told)) in enumerate(hostile.items(), start=1):
            put(config)
            await wait_refused(gateway, refused, f"the {name!r} edit to be refused")
            ready, text = await open_readyz(gateway)
            assert ready["status"] == "degraded", name
            last = ready["config"]["last_reload"]
            assert (last["ok"], last["error"]) == (False, "config error"), name
            assert last["issues"] >= 1, name
            # Open route: no path, no file name, no error text.
            assert str(tmp_path) not in text and "gateway.yaml" not in text, name
            assert told not in text, name
            status = await status_config(gateway)
            assert told in status["last_reload_error"], (name, status["last_reload_error"])
            assert status["reloads_refused"] == refused, name
            assert status["reloads_ok"] == 0, name
            # The last good config still serves.
            assert await chat_status(gateway) == 200, name
        assert not restored_lines(caplog)

        # A regular file again (the symlink is replaced): picked up by the same watcher.
        fixed = good + "  extra: {backend: mock, model: mock-llama}\n"
        rewrite(config, fixed.encode())

        async def extra_routes() -> bool:
            return await chat_status(gateway, "extra") == 200

        await eventually(extra_routes, "the good file to be loaded after the hostile ones")
        ready, _ = await open_readyz(gateway)
        assert ready["status"] == "ready"
        assert ready["config"]["last_reload"] == {
            **ready["config"]["last_reload"],
            "ok": True,
            "error": None,
            "issues": 0,
        }
        assert len(restored_lines(caplog)) == 1
        # Another good reload is not a second restoration.
        await gateway.server.app[RELOADER].reload("test")
        assert len(restored_lines(caplog)) == 1
        status = await status_config(gateway)
        assert (status["reloads_refused"], status["reloads_ok"]) == (len(hostile), 2)
        assert status["last_reload_error"] is None
        async with gateway.get("/metrics", headers=AUTH) as response:
            metrics = await response.text()
        assert f'gateway_config_reloads_total{{result="refused"}} {len(hostile)}.0' in metrics


async def test_a_directory_or_fifo_in_place_of_the_file_is_refused(
    make_gateway: Any, start_mock: Any, tmp_path: Path
) -> None:
    """Not a symlink: the path itself becomes a directory, then a FIFO nobody writes to."""
    backend = await start_mock()
    config = tmp_path / "gateway.yaml"
    good = gateway_yaml(mock_backend_yaml("mock", backend))
    gateway = await make_gateway(good, config_poll_s=POLL_S)
    reloader = gateway.server.app[RELOADER]
    for refused, make in enumerate((os.mkdir, os.mkfifo), start=1):
        # Swap under the reload lock so the watcher sees the end state, not the gap.
        async with reloader._lock:
            config.unlink()
            make(config)
        await wait_refused(gateway, refused, f"{make.__name__} in place of the file")
        status = await status_config(gateway)
        assert status["reloads_refused"] == refused
        assert "cannot read: not a regular file" in status["last_reload_error"]
        assert (await open_readyz(gateway))[0]["status"] == "degraded"
        assert await chat_status(gateway, "mock-llama") == 200
        async with reloader._lock:
            config.rmdir() if config.is_dir() else config.unlink()
            config.write_text(good)
        await eventually(
            lambda: _ready(gateway), f"the good file to come back after {make.__name__}"
        )
    assert reloader.reloads_refused == 2


async def _ready(gateway: TestClient) -> bool:
    return (await open_readyz(gateway))[0]["status"] == "ready"


# -- exceptions no one planned for -------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [RuntimeError("listener bug"), RecursionError("deep"), MemoryError(), KeyError("x")],
    ids=["RuntimeError", "RecursionError", "MemoryError", "KeyError"],
)
async def test_a_listener_that_raises_refuses_the_reload_and_the_next_one_retries(
    make_gateway: Any, start_mock: Any, tmp_path: Path, fault: BaseException
) -> None:
    backend = await start_mock()
    config = tmp_path / "gateway.yaml"
    gateway = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend)), config_poll_s=POLL_S
    )
    reloader = gateway.server.app[RELOADER]
    seen: list[str] = []

    def listener(new_config: Any) -> None:
        seen.append(new_config.digest)
        if len(seen) == 1:
            raise fault

    reloader.listeners.append(listener)
    rewrite(
        config,
        gateway_yaml(
            mock_backend_yaml("mock", backend), aliases="a1: {backend: mock, model: mock-llama}"
        ).encode(),
    )
    await wait_refused(gateway, 1, "the listener's failure to refuse the reload")
    ready, text = await open_readyz(gateway)
    assert ready["status"] == "degraded"
    assert type(fault).__name__ not in text
    # The watcher is alive: the next edit is loaded and the listener gets it.
    rewrite(
        config,
        gateway_yaml(
            mock_backend_yaml("mock", backend), aliases="a2: {backend: mock, model: mock-llama}"
        ).encode(),
    )
    await eventually(lambda: _ready(gateway), "the next edit to be applied")
    assert len(seen) == 2 and seen[0] != seen[1]
    assert await chat_status(gateway, "a2") == 200
    assert (reloader.reloads_refused, reloader.reloads_ok) == (1, 1)


async def test_build_registry_raising_does_not_stop_the_watcher(
    make_gateway: Any, start_mock: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await start_mock()
    config = tmp_path / "gateway.yaml"
    gateway = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend)), config_poll_s=POLL_S
    )
    real = reload_module.build_registry
    calls = []

    def failing_once(*args: Any) -> Any:
        calls.append(args)
        if len(calls) == 1:
            raise ValueError("registry bug")
        return real(*args)

    monkeypatch.setattr(reload_module, "build_registry", failing_once)
    for index in (1, 2):
        rewrite(
            config,
            gateway_yaml(
                mock_backend_yaml("mock", backend),
                aliases=f"a{index}: {{backend: mock, model: mock-llama}}",
            ).encode(),
        )
        if index == 1:
            await wait_refused(gateway, 1, "the registry failure to refuse the reload")
            assert (
                "unexpected error: ValueError"
                in (await status_config(gateway))["last_reload_error"]
            )
    await eventually(lambda: _ready(gateway), "the second edit to be applied")
    assert await chat_status(gateway, "a2") == 200
    assert await chat_status(gateway, "a1") == 404
    assert len(calls) == 2


# -- a billion laughs: milliseconds and megabytes, not 22 s and 2 GB --------------------------

_MEASURE = """
import sys, time
from pathlib import Path
from sidecar.config.loader import load_config
from sidecar.errors import ConfigError
from sidecar.settings import BackendTlsDefaults

def hwm_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

path = Path(sys.argv[1])
load_config(Path(sys.argv[2]), {}, BackendTlsDefaults())  # warm up imports and caches
before = hwm_kib()
best = None
for _ in range(3):
    start = time.perf_counter()
    try:
        load_config(path, {}, BackendTlsDefaults())
    except ConfigError as exc:
        message = exc.render()
    else:
        raise SystemExit("the billion laughs file was accepted")
    elapsed = time.perf_counter() - start
    best = elapsed if best is None else min(best, elapsed)
print(best, hwm_kib() - before, message)
"""


def test_billion_laughs_is_refused_in_well_under_a_second_without_memory(tmp_path: Path) -> None:
    laughs = tmp_path / "laughs.yaml"
    laughs.write_text(BILLION_LAUGHS)
    good = tmp_path / "good.yaml"
    good.write_text(gateway_yaml(backend_yaml("m", "http://127.0.0.1:9/v1", models="[a]")))
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(laughs), str(good)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    seconds, grown_kib, message = result.stdout.split(" ", 2)
    # 9^9 = 387 million "lol"s if expanded; the refusal happens while composing.
    assert float(seconds) < 1.0, result.stdout
    assert int(grown_kib) < 50 * 1024, result.stdout
    assert f"more than {MAX_NODES} nodes once aliases are expanded" in message
    assert f"{laughs}:" in message  # file and line, like every other config error


# -- gateway check-config: never a traceback --------------------------------------------------


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKEND_", "GATEWAY_"))}
    env["IMAGES_BACKEND"] = "off"
    return gateway_cli("check-config", str(path), env=env)


def test_check_config_on_every_hostile_file_exits_1_with_a_message_and_no_traceback(
    tmp_path: Path,
) -> None:
    hostile = hostile_files(tmp_path / "hostile")
    outcomes = {}
    for index, (name, (put, told)) in enumerate(hostile.items()):
        directory = tmp_path / f"case{index}"
        directory.mkdir()
        path = directory / "gateway.yaml"
        path.write_text("placeholder")
        put(path)
        result = check_config(path)
        output = result.stdout + result.stderr
        outcomes[name] = (result.returncode, "Traceback" in output, told in result.stderr)
        assert "error" in result.stderr, (name, output)
    assert outcomes == {name: (1, False, True) for name in hostile}
    # A directory and a FIFO given directly, not through a symlink.
    (tmp_path / "dir.yaml").mkdir()
    os.mkfifo(tmp_path / "fifo.yaml")
    for path in (tmp_path / "dir.yaml", tmp_path / "fifo.yaml"):
        result = check_config(path)
        assert result.returncode == 1
        assert "Traceback" not in result.stdout + result.stderr
        assert f"{path}: (top level): cannot read: not a regular file" in result.stderr


# -- a real `gateway serve`: SIGHUP with a billion laughs, then restored -----------------------


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


async def start_serve(
    tmp_path: Path, config: Path, log_file: Any
) -> tuple[asyncio.subprocess.Process, aiohttp.ClientSession]:
    socket_path = tmp_path / "run" / "gw.sock"
    env = serve_env(tmp_path, config, socket_path)
    env["IMAGES_BACKEND"] = "off"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        "serve",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log_file,
    )
    session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket_path)))
    return process, session


async def serve_get(session: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
    headers = AUTH if path.startswith("/v1") else {}
    async with session.get(f"http://gateway{path}", headers=headers) as response:
        return response.status, await response.json()


async def serve_listening(process: asyncio.subprocess.Process, session: Any, log: Any) -> None:
    async def healthy() -> bool:
        assert process.returncode is None, log()
        try:
            return (await serve_get(session, "/healthz"))[0] == 200
        except (aiohttp.ClientConnectionError, FileNotFoundError):
            return False

    await eventually(healthy, "the gateway to listen on its socket")


async def stop_serve(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), WAIT_S)
        except TimeoutError:
            process.kill()
            await process.wait()


async def test_serve_refuses_a_billion_laughs_on_sighup_within_50_mb_then_restores(
    start_mock: Any, tmp_path: Path
) -> None:
    backend = await start_mock()
    config = tmp_path / "gateway.yaml"
    good = gateway_yaml(mock_backend_yaml("mock", backend))
    config.write_text(good)
    log_path = tmp_path / "serve.log"

    def log() -> str:
        return log_path.read_text(errors="replace")

    with log_path.open("wb") as log_file:
        process, session = await start_serve(tmp_path, config, log_file)
        try:
            async with session:
                await serve_listening(process, session, log)
                before_kib = vm_kib(process.pid, "VmHWM")
                for round_ in (1, 2):  # twice: the second SIGHUP proves the handler survived
                    rewrite(config, BILLION_LAUGHS.encode())
                    process.send_signal(signal.SIGHUP)

                    async def refused(count: int = round_) -> bool:
                        status = await serve_get(session, "/v1/gateway/status")
                        return status[1]["config"]["reloads_refused"] == count

                    await eventually(refused, f"SIGHUP {round_} to refuse the billion laughs")
                    code, ready = await serve_get(session, "/readyz")
                    assert (code, ready["status"]) == (200, "degraded")
                    assert ready["config"]["last_reload"]["error"] == "config error"
                    assert str(tmp_path) not in json.dumps(ready)
                grown_kib = vm_kib(process.pid, "VmHWM") - before_kib
                assert grown_kib < 50 * 1024, f"RSS peak grew by {grown_kib} KiB"

                rewrite(config, good.encode())
                process.send_signal(signal.SIGHUP)

                async def ready_again() -> bool:
                    return (await serve_get(session, "/readyz"))[1]["status"] == "ready"

                await eventually(ready_again, "the good file to be restored on SIGHUP")
                _, status = await serve_get(session, "/v1/gateway/status")
                assert status["config"]["reloads_refused"] == 2
                assert status["config"]["reloads_ok"] == 1
            await stop_serve(process)
            assert process.returncode == 0, log()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    text = log()
    assert text.count("config restored (SIGHUP)") == 1, text
    assert text.count(f"more than {MAX_NODES} nodes") == 2, text
    assert "Traceback" not in text


# -- rotating a client certificate takes effect ------------------------------------------------


def rotated_backend_context(pki: TestPki, client_ca: Path) -> ssl.SSLContext:
    """The backend: the usual server cert, accepting only clients of ``client_ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server.cert_path, pki.server.key_path)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=client_ca)
    return context


def mtls_yaml(server: TestServer) -> str:
    return gateway_yaml(
        backend_yaml(
            "secure",
            str(server.make_url("/v1")),
            models="[mock-llama]",
            health="{readiness: false}",
            tls="{ca_bundle: certs/ca.pem, client_cert: certs/client-combined.pem}",
        )
    )


@pytest.fixture
def rotation(tmp_path: Path) -> tuple[TestPki, Path]:
    """The usual PKI, plus a new client CA whose client cert is written aside (not in use)."""
    pki = make_pki(tmp_path / "certs")
    new_ca = make_ca(tmp_path / "new", "new-ca")
    new_client = issue(new_ca, tmp_path / "new", "client", server=False)
    return pki, new_client.combined_path


async def secure_chat(post: Callable[..., Any]) -> tuple[int, dict[str, Any]]:
    async with post(
        "/v1/chat/completions",
        json={"model": "mock-llama", "messages": [{"role": "user", "content": "rotated?"}]},
        headers=AUTH,
    ) as response:
        return response.status, await response.json()


async def test_rotated_client_certificate_is_used_after_the_poll(
    make_gateway: Any,
    aiohttp_server: Any,
    tmp_path: Path,
    rotation: tuple[TestPki, Path],
) -> None:
    pki, new_combined = rotation
    server = await aiohttp_server(
        create_mock_app(), ssl=rotated_backend_context(pki, tmp_path / "new" / "new-ca.pem")
    )
    gateway = await make_gateway(mtls_yaml(server), config_poll_s=POLL_S)
    digest_before = (await open_readyz(gateway))[0]["config"]["digest"]

    status, body = await secure_chat(gateway.post)
    assert status == 502
    assert body["error"]["code"] == "upstream_tls_error", body
    assert body["error"]["message"].startswith("TLS failure talking to backend 'secure': ")
    assert len(server.app[RECEIVED]) == 0

    # New content, same path (one file: cert then key), as a renewal job writes it.
    rewrite(pki.client.combined_path, new_combined.read_bytes())

    async def accepted() -> bool:
        return (await secure_chat(gateway.post))[0] == 200

    await eventually(accepted, "the rotated client certificate to be used")
    ready, _ = await open_readyz(gateway)
    assert ready["config"]["digest"] != digest_before
    assert ready["status"] == "ready"
    reloader = gateway.server.app[RELOADER]
    assert (reloader.reloads_ok, reloader.reloads_refused) == (1, 0)
    assert [r.body["messages"][0]["content"] for r in server.app[RECEIVED]] == ["rotated?"]


async def test_rotated_client_certificate_and_sighup_on_a_real_serve(
    aiohttp_server: Any, tmp_path: Path, rotation: tuple[TestPki, Path]
) -> None:
    pki, new_combined = rotation
    server = await aiohttp_server(
        create_mock_app(), ssl=rotated_backend_context(pki, tmp_path / "new" / "new-ca.pem")
    )
    config = tmp_path / "gateway.yaml"
    config.write_text(mtls_yaml(server))
    log_path = tmp_path / "serve.log"

    def log() -> str:
        return log_path.read_text(errors="replace")

    with log_path.open("wb") as log_file:
        process, session = await start_serve(tmp_path, config, log_file)
        try:
            async with session:
                await serve_listening(process, session, log)

                def post(path: str, **kwargs: Any) -> Any:
                    return session.post(f"http://gateway{path}", **kwargs)

                status, body = await secure_chat(post)
                assert (status, body["error"]["code"]) == (502, "upstream_tls_error"), body
                # GATEWAY_CONFIG_POLL_S=0: only the SIGHUP can pick the rotation up.
                rewrite(pki.client.combined_path, new_combined.read_bytes())
                assert (await secure_chat(post))[0] == 502
                process.send_signal(signal.SIGHUP)

                async def accepted() -> bool:
                    return (await secure_chat(post))[0] == 200

                await eventually(accepted, "the SIGHUP to load the rotated certificate")
                _, status_body = await serve_get(session, "/v1/gateway/status")
                assert status_body["config"]["reloads_ok"] == 1
                assert status_body["config"]["reloads_refused"] == 0
            await stop_serve(process)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert len(server.app[RECEIVED]) == 1
    assert "Traceback" not in log()
