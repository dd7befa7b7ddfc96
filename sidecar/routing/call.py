"""One way to call a backend: ``async with backend_call(...) as call``.

Every upstream request the gateway makes (the OpenAI API, UI chat, images, music and its
audio downloads, agents, http tools, health probes) goes through this one context manager, in this
order: take an admission slot for (backend, capability) — a full limit is a 429 before
anything is sent —, open the upstream request (no redirects followed; the client counts
the use, so a reload that retires it closes it only afterwards), check the status (a
backend's error is relayed sanitised, its 429 stays a ``rate_limit_error``), hand the
open call to the caller to read or relay, then close the call and release the slot —
exactly once, on every path out: success, error, a client that goes away, cancellation.

A call without a capability (probes, downloads) takes no slot; a built-in backend (no
URL) takes the slot only (``admitted``). A body that is not JSON (an audio upload) goes as
``body`` with its ``content_type``; an async iterable body is streamed upstream as it is
produced, never buffered whole. What comes back is read from the call in any form: JSON,
events, or raw chunks (audio).

A backend whose model is loaded on demand (``Backend.lifecycle``) is entered right after
the slot: the call waits there for the load, within the backend's wait budget, and leaves
it with the slot; for every other backend this costs one attribute check. Calls without a
slot (probes, downloads, http tools, the lifecycle's own calls to a server's hooks) do not
load a model.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from types import TracebackType
from typing import Any

from yarl import URL

from .admission import Slot
from .registry import Backend, Release
from .upstream import UpstreamCall


@contextlib.asynccontextmanager
async def admitted(backend: Backend, capability: str) -> AsyncIterator[Slot]:
    """An admission slot for (backend, capability), released once on the way out."""
    slot = await backend.admissions[capability].acquire()
    try:
        yield slot
    finally:
        slot.release()


def backend_call(
    backend: Backend,
    capability: str | None,
    endpoint: str | URL,
    payload: dict[str, Any] | None,
    request_id: str,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    read_timeout_s: float | None = None,
    check_status: bool = True,
    body: bytes | AsyncIterable[bytes] | None = None,
    content_type: str = "application/octet-stream",
    on_head: Callable[[UpstreamCall], None] | None = None,
) -> BackendCall:
    """Admit, open, check, yield the open call; close it and free the slot on exit.

    ``POST`` sends ``payload`` as JSON to ``endpoint`` (relative to the backend URL, or a
    URL on its origin, as an http tool's path is), or ``body`` as ``content_type``;
    ``GET`` asks for ``endpoint`` as a path on the backend's origin. With
    ``check_status`` off the caller sees every status (probes, downloads). A JSON
    ``POST`` may pass ``on_head``: it gets the call in the read callback that completes
    the response head, before the status is checked (``BackendClient.post``).
    """
    return BackendCall(
        backend,
        capability,
        endpoint,
        payload,
        request_id,
        method,
        headers,
        read_timeout_s,
        check_status,
        body,
        content_type,
        on_head,
    )


class BackendCall:
    """``backend_call``'s context manager, written out: it runs once per client request,
    and a class with two methods costs a fraction of generator-based context managers
    stacked in an ``AsyncExitStack``."""

    __slots__ = (
        "_backend",
        "_body",
        "_call",
        "_capability",
        "_check_status",
        "_content_type",
        "_endpoint",
        "_headers",
        "_lease",
        "_method",
        "_on_head",
        "_payload",
        "_read_timeout_s",
        "_request_id",
        "_slot",
    )

    def __init__(
        self,
        backend: Backend,
        capability: str | None,
        endpoint: str | URL,
        payload: dict[str, Any] | None,
        request_id: str,
        method: str,
        headers: dict[str, str] | None,
        read_timeout_s: float | None,
        check_status: bool,
        body: bytes | AsyncIterable[bytes] | None = None,
        content_type: str = "application/octet-stream",
        on_head: Callable[[UpstreamCall], None] | None = None,
    ) -> None:
        self._backend = backend
        self._on_head = on_head
        self._body = body
        self._content_type = content_type
        self._capability = capability
        self._endpoint = endpoint
        self._payload = payload
        self._request_id = request_id
        self._method = method
        self._headers = headers
        self._read_timeout_s = read_timeout_s
        self._check_status = check_status
        self._slot: Slot | None = None
        self._call: UpstreamCall | None = None
        self._lease: Release | None = None

    async def __aenter__(self) -> UpstreamCall:
        lifecycle = None
        slot = None
        if self._capability is not None:
            lifecycle = self._backend.lifecycle
            started = time.monotonic() if lifecycle is not None else 0.0
            admission = self._backend.admissions[self._capability]
            slot = admission.try_acquire() or await admission.acquire()
        try:
            if lifecycle is not None:
                model = self._payload.get("model") if self._payload else None
                self._lease = await lifecycle.enter(started, model)
            client = self._backend.client
            if self._method == "GET":
                call = await client.get(
                    str(self._endpoint), self._request_id, self._headers, self._read_timeout_s
                )
            elif self._body is not None:
                call = await client.send(
                    self._endpoint,
                    self._body,
                    self._content_type,
                    self._request_id,
                    self._read_timeout_s,
                )
            else:
                call = await client.post(
                    self._endpoint,
                    self._payload or {},
                    self._request_id,
                    self._read_timeout_s,
                    self._on_head,
                )
            try:
                if self._check_status:
                    await call.raise_for_status()
            except BaseException:
                call.close()
                raise
        except BaseException:
            if self._lease is not None:
                self._lease.release()
            if slot is not None:
                slot.release()
            raise
        self._slot, self._call = slot, call
        return call

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._call is not None:
                self._call.close()
        finally:
            if self._lease is not None:
                self._lease.release()
            if self._slot is not None:
                self._slot.release()
