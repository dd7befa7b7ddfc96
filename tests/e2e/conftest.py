"""Fixtures the e2e modules share: a headless Chromium (``browser``), and for modules with a
``gated`` backend (see ``stack.gated_config``) its port and server.

Such a module defines its own module-scoped ``stack`` fixture from ``gated_port`` (its
config and environment are its own) and asks for ``gated`` in the tests that stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, async_playwright

from ..conftest import free_port
from .browser_kit import CHROMIUM, CHROMIUM_ARGS
from .stack import GatedBackend


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, launched by Playwright (no browser download)."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture(scope="module")
def gated_port() -> int:
    """The loopback port of the module's ``gated`` backend, fixed for its whole stack."""
    return free_port()


@pytest.fixture
async def gated(aiohttp_server: Any, gated_port: int) -> AsyncIterator[GatedBackend]:
    """A ``GatedBackend`` served on ``gated_port`` from the test's own event loop; released
    at teardown so a stream still waiting can end before the server stops."""
    backend = GatedBackend()
    await aiohttp_server(backend.app(), port=gated_port)
    yield backend
    backend.release()
