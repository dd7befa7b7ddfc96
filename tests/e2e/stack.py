"""Real Caddy + sidecar (+ fake backends) started by ``gateway up`` in a temp data dir."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai

from ..conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 45.0


class GatewayStack:
    """``python -m sidecar up`` as a child process, on free loopback ports."""

    def __init__(self, data_dir: Path, config_text: str, token: str, **env: str) -> None:
        self.data_dir = data_dir
        self.token = token
        self.port = free_port()
        self.base_url = f"https://127.0.0.1:{self.port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = data_dir / "gateway.yaml"
        self.config_path.write_text(config_text)
        self.output = data_dir / "up.out"
        self.env = {
            **os.environ,
            "GATEWAY_DATA_DIR": str(data_dir),
            "GATEWAY_CONFIG": str(self.config_path),
            "GATEWAY_SITE": self.base_url,
            "GATEWAY_BEARER_TOKEN": token,
            "GATEWAY_CONFIG_POLL_S": "0",
            "UI_IP_ALLOWLIST": "127.0.0.1/32",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def ca_root(self) -> Path:
        return self.data_dir / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    def start(self) -> GatewayStack:
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "up"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if "Local AI Gateway is up." in self.log():
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gateway up did not start:\n{self.log()[-4000:]}")

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def access_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log().splitlines():
            if line.startswith('{"ts"'):
                records.append(json.loads(line))
        return records

    def ssl_context(self, cafile: Path | None = None) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(cafile or self.ca_root))

    def openai(self, **kwargs: Any) -> openai.AsyncOpenAI:
        kwargs.setdefault("max_retries", 0)
        return openai.AsyncOpenAI(
            base_url=f"{self.base_url}/v1",
            api_key=self.token,
            http_client=openai.DefaultAsyncHttpxClient(verify=self.ssl_context()),
            **kwargs,
        )
