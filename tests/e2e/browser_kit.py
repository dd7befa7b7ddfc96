"""What the browser tests share: Chromium, a fake model server as its own process, logins.

Playwright drives Debian's Chromium (``executable_path``; no browser download). The fake
model server runs as ``python -m sidecar mock-backends`` so a test can choose how fast it
streams (a streamed reply must arrive in steps the page can show one by one, also on a
loaded machine) and can kill it to see the gateway notice.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, BrowserContext, Page

from ..conftest import TOKEN, free_port
from .stack import ROOT, GatewayStack

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
PASSWORD = "correct horse battery staple"
SCREENSHOTS = ROOT / "var" / "screenshots"
START_TIMEOUT_S = 30.0


class MockProcess:
    """``gateway mock-backends`` on a loopback port, started and stopped by the test."""

    def __init__(self, *, chunk_delay_ms: float, chunks: int, port: int | None = None) -> None:
        self.port = port or free_port()
        self.chunk_delay_ms = chunk_delay_ms
        self.chunks = chunks
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> MockProcess:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sidecar",
                "mock-backends",
                "--port",
                str(self.port),
                "--chunk-delay-ms",
                str(self.chunk_delay_ms),
                "--chunks",
                str(self.chunks),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the fake model server on port {self.port} did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def gateway_status(stack: GatewayStack) -> dict[str, Any]:
    """``/v1/gateway/status`` through Caddy, with the bearer token."""
    request = urllib.request.Request(  # noqa: S310 (an https URL we built)
        f"{stack.base_url}/v1/gateway/status", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    context = ssl.create_default_context(cafile=str(stack.ca_root))
    with urllib.request.urlopen(request, context=context, timeout=10) as response:  # noqa: S310
        body: dict[str, Any] = json.loads(response.read())
    return body


def in_flight(stack: GatewayStack, backend: str, capability: str = "chat") -> int:
    entry = next(b for b in gateway_status(stack)["backends"] if b["name"] == backend)
    return int(entry["capabilities"][capability]["in_flight"])


async def new_page(browser: Browser, **context_options: Any) -> tuple[Page, list[str]]:
    """A page in a fresh context that records script errors and CSP violations."""
    context: BrowserContext = await browser.new_context(ignore_https_errors=True, **context_options)
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    return page, problems


async def log_in(
    browser: Browser, stack: GatewayStack, username: str, **context_options: Any
) -> tuple[Page, list[str]]:
    page, problems = await new_page(browser, **context_options)
    await page.goto(f"{stack.base_url}/ui")
    assert "/ui/login" in page.url  # no session: the login page first
    await page.fill("#username", username)
    await page.fill("#password", PASSWORD)
    await page.click("#login")
    await page.wait_for_url(f"{stack.base_url}/ui**")
    await page.wait_for_selector("#prompt")
    return page, problems


async def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=False)
    return path
