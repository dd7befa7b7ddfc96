"""Fixtures the e2e modules with a ``gated`` backend share (see ``stack.gated_config``).

Such a module defines its own module-scoped ``stack`` fixture from ``gated_port`` (its
config and environment are its own) and asks for ``gated`` in the tests that stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from ..conftest import free_port
from .stack import GatedBackend


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
