"""One way to call a backend: ``async with backend_call(...) as call``.

Every upstream request the gateway makes (the OpenAI API, UI chat, images, music and its
audio downloads, agents, health probes) goes through this one context manager, in this
order: take an admission slot for (backend, capability) — a full limit is a 429 before
anything is sent —, open the upstream request (no redirects followed; the client counts
the use, so a reload that retires it closes it only afterwards), check the status (a
backend's error is relayed sanitised, its 429 stays a ``rate_limit_error``), hand the
open call to the caller to read or relay, then close the call and release the slot —
exactly once, on every path out: success, error, a client that goes away, cancellation.

A call without a capability (probes, downloads) takes no slot; a built-in backend (no
URL) takes the slot only (``admitted``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from .admission import Slot
from .registry import Backend
from .upstream import UpstreamCall


@contextlib.asynccontextmanager
async def admitted(backend: Backend, capability: str) -> AsyncIterator[Slot]:
    """An admission slot for (backend, capability), released once on the way out."""
    slot = await backend.admissions[capability].acquire()
    try:
        yield slot
    finally:
        slot.release()


@contextlib.asynccontextmanager
async def backend_call(
    backend: Backend,
    capability: str | None,
    endpoint: str,
    payload: dict[str, Any] | None,
    request_id: str,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    read_timeout_s: float | None = None,
    check_status: bool = True,
) -> AsyncIterator[UpstreamCall]:
    """Admit, open, check, yield the open call; close it and free the slot on exit.

    ``POST`` sends ``payload`` as JSON to ``endpoint`` (relative to the backend URL);
    ``GET`` asks for ``endpoint`` as a path on the backend's origin. With
    ``check_status`` off the caller sees every status (probes, downloads).
    """
    async with contextlib.AsyncExitStack() as stack:
        if capability is not None:
            await stack.enter_async_context(admitted(backend, capability))
        client = backend.client
        if method == "GET":
            call = await client.get(endpoint, request_id, headers, read_timeout_s)
        else:
            call = await client.post(endpoint, payload or {}, request_id, read_timeout_s)
        stack.callback(call.close)
        if check_status:
            await call.raise_for_status()
        yield call
