"""Model lifecycle events for ``GET /v1/gateway/events``: load, ready, unload, eviction, crash.

Publishing never waits: each subscriber has a bounded queue (``QUEUE_EVENTS``); one that
falls that far behind is dropped (its stream ends; it may reconnect) rather than slowing
the gateway or growing memory. At most ``MAX_SUBSCRIBERS`` streams are open at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from typing import Any

from ...errors import RateLimited

QUEUE_EVENTS = 256
MAX_SUBSCRIBERS = 32
RECENT_EVENTS = 100
KINDS = ("load", "ready", "unload", "eviction", "crash")


class Subscriber:
    """One open event stream: its queue, and whether it was dropped for falling behind."""

    def __init__(self, hub: EventHub) -> None:
        self._hub = hub
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(QUEUE_EVENTS)
        self.dropped = False

    async def next(self, timeout_s: float) -> dict[str, Any] | None:
        """The next event; ``None`` after ``timeout_s`` with none, or when it ends."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self.queue.get()
        except TimeoutError:
            return None

    @property
    def ended(self) -> bool:
        return self.dropped or self._hub.closed

    def close(self) -> None:
        self._hub.unsubscribe(self)


class EventHub:
    def __init__(self) -> None:
        self._subscribers: set[Subscriber] = set()
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_EVENTS)
        self.closed = False
        self.sequence = 0

    def subscribe(self) -> Subscriber:
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            raise RateLimited(
                f"at most {MAX_SUBSCRIBERS} event streams may be open; retry later",
                retry_after=5,
            )
        subscriber = Subscriber(self)
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def publish(self, kind: str, backend: str, **detail: Any) -> dict[str, Any]:
        self.sequence += 1
        event = {"id": self.sequence, "type": kind, "backend": backend, "at": time.time()}
        event.update(detail)
        self.recent.append(event)
        for subscriber in list(self._subscribers):
            try:
                subscriber.queue.put_nowait(event)
            except asyncio.QueueFull:
                subscriber.dropped = True
                self._subscribers.discard(subscriber)
        return event

    def close(self) -> None:
        """End every stream (shutdown)."""
        self.closed = True
        for subscriber in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                subscriber.queue.put_nowait(None)
        self._subscribers.clear()
