"""Admission control: one concurrency limit per (backend, capability).

A full limit fails fast with ``BackendOverloaded`` (429) unless the backend has a queue,
in which case the caller waits, first come first served, up to the queue's timeout. A
``Slot`` is released exactly once, whatever path the request takes out.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

from ..errors import BackendOverloaded


@dataclass(frozen=True)
class AdmissionStats:
    limit: int
    in_flight: int
    queued: int
    queue_max: int
    admitted: int
    rejected: int


class Slot:
    """Permission to run one request; ``release()`` is idempotent."""

    __slots__ = ("_admission", "_released")

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._release()


class Admission:
    def __init__(
        self,
        label: str,
        limit: int,
        queue_max: int = 0,
        queue_timeout_s: float = 0,
        code: str = "backend_overloaded",
    ) -> None:
        self.label = label
        self.code = code
        self.limit = limit
        self.queue_max = queue_max
        self.queue_timeout_s = queue_timeout_s
        self.in_flight = 0
        self.admitted = 0
        self.rejected = 0
        self._waiters: collections.deque[asyncio.Future[Slot]] = collections.deque()

    def reconfigure(self, limit: int, queue_max: int, queue_timeout_s: float) -> None:
        """Apply a reloaded limit; requests in flight keep their slots."""
        self.limit, self.queue_max, self.queue_timeout_s = limit, queue_max, queue_timeout_s
        self._wake()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def stats(self) -> AdmissionStats:
        return AdmissionStats(
            limit=self.limit,
            in_flight=self.in_flight,
            queued=self.queued,
            queue_max=self.queue_max,
            admitted=self.admitted,
            rejected=self.rejected,
        )

    def try_acquire(self) -> Slot | None:
        if self.in_flight < self.limit and not self._waiters:
            return self._grant()
        return None

    async def acquire(self) -> Slot:
        slot = self.try_acquire()
        if slot is not None:
            return slot
        if len(self._waiters) >= self.queue_max or self.queue_timeout_s <= 0:
            self.rejected += 1
            raise self._overloaded()
        waiter: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                return await waiter
        except BaseException as exc:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                # Granted on the same tick the caller timed out or went away: hand the
                # slot back so it is not lost.
                waiter.result().release()
            if isinstance(exc, TimeoutError):
                self.rejected += 1
                raise self._overloaded(queued=True) from None
            raise

    def _overloaded(self, queued: bool = False) -> BackendOverloaded:
        reason = "and its queue timed out" if queued else "(no free slot)"
        return BackendOverloaded(
            f"{self.label} is at its concurrency limit of {self.limit} {reason}; retry shortly",
            retry_after=1,
            code=self.code,
        )

    def _grant(self) -> Slot:
        self.in_flight += 1
        self.admitted += 1
        return Slot(self)

    def _release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(self._grant())
