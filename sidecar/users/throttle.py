"""What a login may cost: password checks on their own pool, capped, and per address.

Rules (the settings are ``LoginSettings``):

- bcrypt runs only on ``PasswordChecks``' own pool of ``hash_threads`` threads, never on
  the event loop and never on the default executor that tool logs, images and the
  database helpers share, so a storm of logins cannot queue ahead of their work.
- At most ``max_checks`` logins are being checked at once (waiting for or running a
  hash); one more is refused at once (``LoginThrottled``, reason ``busy``), never queued.
- A client address gets ``ip_failures`` attempts per ``ip_window_s`` that are not
  successes (IPv6 counted per /64, which one host can fill); then it is refused until the
  oldest leaves the window. At most ``MAX_ADDRESSES`` addresses are remembered (the
  least recently seen is forgotten first), so the throttle's memory is bounded too.

The counters (``stats``) are read by ``/metrics``-style callers and the hardening tests.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TypeVar

from ..errors import LoginThrottled
from .passwords import hash_password, verify_password

T = TypeVar("T")
MAX_ADDRESSES = 4096
BUSY_RETRY_AFTER_S = 1


@dataclass
class CheckStats:
    in_flight: int = 0  # logins admitted and not finished (waiting for or in a hash)
    peak_in_flight: int = 0
    running: int = 0  # bcrypt calls running on the pool right now
    peak_running: int = 0
    hashes: int = 0  # bcrypt calls finished
    refused_busy: int = 0


class PasswordChecks:
    """bcrypt on a small pool of its own, with a cap on logins being checked at once."""

    def __init__(self, threads: int, max_checks: int) -> None:
        self.max_checks = max_checks
        self.stats = CheckStats()
        self._lock = threading.Lock()  # ``running`` is counted on the pool's threads
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="users-hash")

    @contextmanager
    def admit(self) -> Iterator[None]:
        """A slot for one login's check, or ``LoginThrottled("busy")`` at once."""
        stats = self.stats
        if stats.in_flight >= self.max_checks:
            stats.refused_busy += 1
            raise LoginThrottled(BUSY_RETRY_AFTER_S, "busy")
        stats.in_flight += 1
        stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        try:
            yield
        finally:
            stats.in_flight -= 1

    async def verify(self, password: str, password_hash: str) -> bool:
        return await self._run(lambda: verify_password(password, password_hash))

    async def hash(self, password: str) -> str:
        return await self._run(lambda: hash_password(password))

    async def _run(self, work: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._counted, work)

    def _counted(self, work: Callable[[], T]) -> T:
        stats = self.stats
        with self._lock:
            stats.running += 1
            stats.peak_running = max(stats.peak_running, stats.running)
        try:
            return work()
        finally:
            with self._lock:
                stats.running -= 1
                stats.hashes += 1

    def close(self) -> None:
        """Queued checks are dropped (their logins are ending with the process)."""
        self._executor.shutdown(wait=True, cancel_futures=True)


class AddressThrottle:
    """Attempts that did not succeed, per client address, in a sliding window."""

    def __init__(
        self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()
        self.refused = 0

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, address: str) -> float:
        """Count one attempt from ``address`` (its ticket), or raise ``LoginThrottled``."""
        key, now = _address_key(address), self._clock()
        attempts = self._seen.get(key)
        if attempts is None:
            attempts = self._seen[key] = deque()
            while len(self._seen) > MAX_ADDRESSES:
                self._seen.popitem(last=False)
        self._seen.move_to_end(key)
        while attempts and attempts[0] <= now - self.window_s:
            attempts.popleft()
        if len(attempts) >= self.limit:
            self.refused += 1
            raise LoginThrottled(max(1, math.ceil(attempts[0] + self.window_s - now)), "address")
        attempts.append(now)
        return now

    def forgive(self, address: str, ticket: float) -> None:
        """Take back one attempt: it succeeded, or was refused before any work."""
        attempts = self._seen.get(_address_key(address))
        if attempts is not None:
            with suppress(ValueError):
                attempts.remove(ticket)


def _address_key(address: str) -> str:
    """IPv4 per address; IPv6 per /64 (one host on a LAN can use a whole /64)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # "unix", "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)
