"""Real Caddy + sidecar (+ fake backends) started by ``gateway up`` in a temp data dir, and
the pieces several e2e modules build their stack from: ``gated_config`` (the fake backend
plus a ``gated`` one) and ``GatedBackend`` (the chat stream served on the gated port)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import openai
from aiohttp import web

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

    def __enter__(self) -> GatewayStack:
        """``with GatewayStack(...) as gateway:`` starts it, and stops it on the way out."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

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
        """An openai SDK client through Caddy, trusting its CA; with the stack's token and no
        retries unless ``api_key`` / ``max_retries`` say otherwise."""
        kwargs.setdefault("api_key", self.token)
        kwargs.setdefault("max_retries", 0)
        return openai.AsyncOpenAI(
            base_url=f"{self.base_url}/v1",
            http_client=openai.DefaultAsyncHttpxClient(verify=self.ssl_context()),
            **kwargs,
        )


# -- a stack with a second, "gated" backend -------------------------------------------------

MOCK_PROBED = "{liveness: /healthz, readiness: /readyz, interval_s: 1}"


def gated_config(
    gated_port: int,
    *,
    mock_health: str = MOCK_PROBED,
    mock_embed: bool = True,
    gated_limits: str | None = None,
) -> str:
    """``gateway.yaml`` with the fake backend ``mock`` (``gateway up`` starts it and sets
    ``MOCK_BACKEND_URL``; alias ``default`` is its ``mock-llama``) and a backend ``gated``
    (model ``gated``, no readiness probe) on ``gated_port``, where the ``gated`` fixture
    serves a ``GatedBackend``.

    ``mock_health``: the mock's ``health:`` block (YAML flow text; by default probed every
    second). ``mock_embed``: whether it also lists ``mock-embed``. ``gated_limits``: the
    gated backend's ``limits:`` block (e.g. ``"{chat: 2}"``), none by default.
    """
    embed = "\n      - {id: mock-embed, capabilities: [embeddings]}" if mock_embed else ""
    limits = f"\n    limits: {gated_limits}" if gated_limits is not None else ""
    return f"""
version: 1
backends:
  mock:
    url: ${{MOCK_BACKEND_URL:-http://127.0.0.1:9/v1}}
    class: mock
    health: {mock_health}
    models:
      - {{id: mock-llama, capabilities: [chat, completions]}}{embed}
  gated:
    url: http://127.0.0.1:{gated_port}/v1
    capabilities: [chat]{limits}
    health: {{readiness: false}}
    models: [gated]
aliases:
  default: {{backend: mock, model: mock-llama}}
"""


class GatedBackend:
    """The ``gated`` backend's chat stream: three chunks, ``part0 `` to ``part2 `` (the last
    with ``finish_reason: stop``), then ``[DONE]``; after each chunk it waits for
    ``release()``, so a test sees exactly when each one was sent.

    Counts the chunks ``sent``, the streams ``finished`` (``[DONE]`` written) and those
    ``cancelled`` (the gateway dropped the upstream request before the end).
    """

    CHUNKS = 3

    def __init__(self) -> None:
        self.sent = 0
        self.cancelled = 0
        self.finished = 0
        self.release_event = asyncio.Event()

    def release(self) -> None:
        """Let the stream send its next chunk (or ``[DONE]`` after the last)."""
        self.release_event.set()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for index in range(self.CHUNKS):
                finish = "stop" if index == self.CHUNKS - 1 else None
                chunk = {
                    "id": "chatcmpl-gated",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "gated",
                    "choices": [
                        {"index": 0, "delta": {"content": f"part{index} "}, "finish_reason": finish}
                    ],
                }
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.sent += 1
                await self.release_event.wait()
                self.release_event.clear()
            await response.write(b"data: [DONE]\n\n")
            self.finished += 1
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return response

    def app(self) -> web.Application:
        """An app serving this stream at ``/v1/chat/completions``."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        return app
