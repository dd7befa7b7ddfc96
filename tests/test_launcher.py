"""``tools/up`` as a user runs it: real processes, real Caddy, loopback ports.

What it must keep: SIGHUP reloads the config without stopping or orphaning a child; its
children are one process group of their own and die with it whatever kills it (SIGKILL
included); it refuses to start, naming the port, while another program holds the HTTPS
port, and shows Caddy's own reason when Caddy fails; its banner's Python example runs
when pasted into bash exactly as printed; the fake backends' ports can be fixed.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidecar.launcher import banner, caddy_reason, layout_from_env, port_problem

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
UP = ROOT / "tools" / "up"
VENV_BIN = Path(sys.executable).parent
# Quotes, a dollar and a bang: a banner that does not quote them cannot pass.
TOKEN = 'o\'neil$HOME"x"!tok-1234567'
START_TIMEOUT_S = 60.0
CHILD_DEATH_S = 5.0  # the bound: no child still running 5 s after a SIGKILL
READY = "Local AI Gateway is up."


def wait_for(check: Callable[[], object], what: str, timeout_s: float = 30.0) -> None:
    """Poll ``check`` until it is true; a bound on a condition, not a timing assertion."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, process group) from /proc, or None once the pid is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def running(pid: int) -> bool:
    """Alive and not a zombie (a killed child waits to be reaped by whoever adopted it)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def children_of(parent: int) -> dict[int, int]:
    """pid -> process group of every live process whose parent is ``parent``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat[1] == parent and stat[0] not in ("Z", "X"):
                found[int(entry.name)] = stat[2]
    return found


class Up:
    """``tools/up`` in its own data directory, on a free port, output in a file."""

    def __init__(self, data_dir: Path, port: int | None = None, **env: str) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.port = port or free_port()
        self.site = f"https://127.0.0.1:{self.port}"
        self.config = data_dir / "gateway.yaml"
        if not self.config.exists():
            self.config.write_text((ROOT / "gateway.yaml").read_text())
        self.output = data_dir / "up.out"
        self.env = {
            **os.environ,
            "GATEWAY_DATA_DIR": str(data_dir),
            "GATEWAY_CONFIG": str(self.config),
            "GATEWAY_SITE": self.site,
            "GATEWAY_BEARER_TOKEN": TOKEN,
            "GATEWAY_CONFIG_POLL_S": "0",  # a reload can only come from SIGHUP
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, ready: bool = True) -> Up:
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                [str(UP)], cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        if ready:
            wait_for(
                lambda: READY in self.text() or self.process.poll() is not None,  # type: ignore[union-attr]
                "tools/up to be ready",
                START_TIMEOUT_S,
            )
            assert READY in self.text(), self.text()[-4000:]
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def wait(self, timeout_s: float = 60.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def get(self, path: str) -> tuple[int, bytes]:
        cafile = self.data_dir / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        context = ssl.create_default_context(cafile=str(cafile))
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=context, timeout=10
        )
        try:
            connection.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def model_ids(self) -> set[str]:
        status, body = self.get("/v1/models")
        assert status == 200, body
        return {model["id"] for model in json.loads(body)["data"]}


@pytest.fixture(scope="module")
def fake_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, fake_port: int) -> Iterator[Up]:
    gateway = Up(tmp_path_factory.mktemp("up"), MOCK_BACKEND_PORT=str(fake_port))
    try:
        yield gateway.start()
    finally:
        gateway.stop()


def test_sighup_reloads_and_every_child_stays_in_one_process_group(up: Up) -> None:
    children = children_of(up.pid)
    # Two fake backends, the sidecar and Caddy, in one group that is not the launcher's
    # (a terminal's Ctrl-C or hangup reaches the launcher, which stops them in order).
    assert len(children) == 4, children
    groups = set(children.values())
    assert len(groups) == 1, children
    launcher_group = proc_stat(up.pid)
    assert launcher_group is not None and launcher_group[2] not in groups
    assert "hup-check" not in up.model_ids()
    caddy_log = up.data_dir / "log" / "caddy.log"
    caddy_loads = caddy_log.read_text().count('"uri":"/load"')

    alias = "aliases:\n  default: {backend: mock, model: mock-llama}\n"
    text = up.config.read_text()
    assert alias in text
    up.config.write_text(
        text.replace(alias, alias + "  hup-check: {backend: mock, model: mock-llama}\n")
    )
    up.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]

    wait_for(lambda: "hup-check" in up.model_ids(), "the sidecar to reload the config")
    wait_for(
        lambda: caddy_log.read_text().count('"uri":"/load"') > caddy_loads,
        "Caddy to reload the Caddyfile",
    )
    assert up.process.poll() is None  # type: ignore[union-attr]
    assert children_of(up.pid) == children  # the same processes, still one group
    assert "reloading" in up.text()


@pytest.mark.timeout(300)  # a real venv and pip run, on a loaded box
def test_the_banner_python_example_runs_when_pasted_into_bash(up: Up, tmp_path: Path) -> None:
    text = up.text()
    assert f"Web UI: {up.site}/ui" in text
    lines = text[text.index(READY) :].splitlines()
    paste_at = lines.index("Then paste these lines into bash:")
    install = lines[paste_at - 1].strip()
    start = paste_at + 2
    block = "\n".join(lines[start : lines.index("", start)]) + "\n"
    assert TOKEN not in block  # only in its quoted form
    # pip refuses the system Python where it is externally managed (PEP 668): the install
    # line makes a venv, and the example runs with that venv's interpreter.
    assert install.startswith("python3 -m venv ") and "pip install openai" in install
    assert "python3 -m pip install" not in text
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    # No network here, so the venv the install line makes is first given this one's
    # packages (a .pth file): its `pip install openai` then finds openai installed.
    made = subprocess.run(
        ["bash", "-c", install.split(" && ")[0]], env=env, capture_output=True, timeout=180
    )
    assert made.returncode == 0, made.stderr
    (site_packages,) = (home / ".venv-gateway" / "lib").glob("python3*/site-packages")
    (site_packages / "gateway-test.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n")
    installed = subprocess.run(
        ["bash", "-c", install],
        env={**env, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # Pasted into bash in another directory, where python3 is a system Python without
    # openai: only the venv's interpreter can run it.
    env["PATH"] = "/usr/bin:/bin"
    pasted = subprocess.run(
        ["bash"], input=block, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert pasted.returncode == 0, (block, pasted.stderr)
    assert pasted.stdout == "Mock reply to: hello\n", pasted.stdout

    if shutil.which("curl"):  # the curl line, pasted as printed
        curl = next(line.strip() for line in lines if line.strip().startswith("curl "))
        result = subprocess.run(
            ["bash", "-c", curl], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert "mock-llama" in result.stdout


def test_fake_backend_port_is_fixed_by_the_environment(up: Up, fake_port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", fake_port, timeout=10)
    try:
        connection.request("GET", "/v1/models")
        response = connection.getresponse()
        assert response.status == 200
        assert "mock-llama" in response.read().decode()
    finally:
        connection.close()


def test_a_second_launcher_on_the_taken_port_exits_naming_the_port(up: Up, tmp_path: Path) -> None:
    second = Up(tmp_path / "second", port=up.port).start(ready=False)
    assert second.wait() != 0
    text = second.text()
    assert f"port {up.port} is already in use" in text, text
    assert READY not in text
    # Nothing was started: no sidecar socket, no Caddy log.
    assert not (tmp_path / "second" / "run" / "sidecar.sock").exists()
    assert not (tmp_path / "second" / "log" / "caddy.log").exists()
    assert up.model_ids()  # the first one is untouched


def test_a_port_held_by_any_program_is_named(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert port_problem(port) == f"port {port} is already in use by another program"
        second = Up(tmp_path / "data", port=port).start(ready=False)
        assert second.wait() == 1
    assert f"port {port} is already in use" in second.text()
    assert port_problem(port) is None


def test_a_taken_fake_backend_port_is_refused(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        taken = Up(tmp_path / "taken", MOCK_BACKEND_PORT=str(port)).start(ready=False)
        assert taken.wait() == 1
    assert f"port {port} is already in use by another program (MOCK_BACKEND_PORT)" in taken.text()
    bad = Up(tmp_path / "bad", MOCK_HEARTMULA_PORT="http").start(ready=False)
    assert bad.wait() == 1
    assert "MOCK_HEARTMULA_PORT must be a port number" in bad.text()
    assert "backend serving" not in bad.text()  # refused before any fake started


def test_sigkill_of_the_launcher_leaves_no_child_running(tmp_path: Path) -> None:
    up = Up(tmp_path / "data").start()
    children = children_of(up.pid)
    try:
        assert len(children) == 4, children
        up.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        up.wait()
        deadline = time.monotonic() + CHILD_DEATH_S
        while time.monotonic() < deadline and any(running(pid) for pid in children):
            time.sleep(0.05)
        assert not [pid for pid in children if running(pid)], "children outlived the launcher"
    finally:
        for pid in children:  # never leave one behind, even when failing
            if running(pid):
                os.kill(pid, signal.SIGKILL)
    # The next start on the same data directory and port works: nothing stale is left.
    again = Up(tmp_path / "data", port=up.port).start()
    children = children_of(again.pid)
    try:
        assert "mock-llama" in again.model_ids()
    finally:
        again.stop()
    assert again.wait() == 0
    assert not [pid for pid in children if running(pid)]


def test_when_caddy_fails_its_reason_is_shown(tmp_path: Path) -> None:
    broken = tmp_path / "Caddyfile"
    broken.write_text("{\n\tno_such_global_option on\n}\n")
    up = Up(tmp_path / "data", GATEWAY_CADDYFILE=str(broken)).start(ready=False)
    assert up.wait() == 1
    text = up.text()
    assert "caddy exited with status 1 during start-up: " in text, text
    assert "no_such_global_option" in text  # Caddy's words, not just "see the log"
    assert not (tmp_path / "data" / "run" / "sidecar.sock").exists()  # stopped cleanly


def test_caddy_reason_takes_its_last_error() -> None:
    output = "\n".join(
        [
            '{"level":"info","msg":"using config from file"}',
            '{"level":"error","msg":"listening","error":"bind: address already in use"}',
            "Error: loading initial config: listen tcp :8443: bind: address already in use",
        ]
    )
    assert caddy_reason(output) == (
        "loading initial config: listen tcp :8443: bind: address already in use"
    )
    assert caddy_reason(output.rsplit("\n", 1)[0]) == "listening: bind: address already in use"
    assert caddy_reason("nothing useful\n") is None


def test_banner_without_a_local_ca_uses_the_system_trust() -> None:
    layout = layout_from_env({"GATEWAY_SITE": "https://gateway.lan", "GATEWAY_ROOT": "/srv/g"})
    text = banner(layout, "a-token-of-16-chars", "", "")
    assert "unset GATEWAY_API_CA" in text
    assert "Web UI: https://gateway.lan/ui  (open to UI_IP_ALLOWLIST: nobody)" in text
    assert "--cacert" not in text
