"""Per-key limits: requests per minute, tokens per minute, tokens per day, at once.

``Limiter`` is the interface the bearer middleware uses: ``admit`` before the handler
(a 429 ``rate_limit_error`` with ``Retry-After`` when a limit is reached), ``done`` after
it with the tokens the request used (the usage the access record carries). ``LocalLimiter``
keeps the windows in this process; a limiter on a shared store (several gateways on one
LAN) would implement the same three calls.

Windows are one-second buckets over the last 60 s (at most 60 per key and kind, whatever
the rate), and a per-UTC-day token count. Tokens are charged when a request ends, so a
request is refused once the window is used up, not for what it might cost. The windows
are persisted (``windows``/``restore``) by whoever owns the store, so a restart does not
hand out a fresh minute or a fresh day; what runs at once is not persisted (nothing runs
after a restart).

Every admitted response of a limited key carries OpenAI's headers:
``x-ratelimit-limit-requests``, ``-remaining-requests``, ``-reset-requests`` (when the key
has ``rpm``) and the ``-tokens`` trio (``tpm``, else ``tokens_per_day``); a reset is a
duration such as ``1s`` or ``6m0s``, to the whole second the windows count in.
"""

from __future__ import annotations

import functools
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import RateLimited
from .keys import ApiKey

WINDOW_S = 60
DAY_S = 86_400


@dataclass
class Window:
    """One key's counters. ``requests``/``tokens``: ``[second, amount]`` buckets."""

    requests: deque[list[int]] = field(default_factory=deque)
    tokens: deque[list[int]] = field(default_factory=deque)
    requests_sum: int = 0
    tokens_sum: int = 0
    day: int = 0
    day_tokens: int = 0
    in_flight: int = 0

    def prune(self, second: int) -> None:
        oldest = second - WINDOW_S
        requests, tokens = self.requests, self.tokens
        while requests and requests[0][0] <= oldest:
            self.requests_sum -= requests.popleft()[1]
        while tokens and tokens[0][0] <= oldest:
            self.tokens_sum -= tokens.popleft()[1]
        day = second // DAY_S
        if day != self.day:
            self.day, self.day_tokens = day, 0

    def state(self) -> dict[str, Any]:
        return {
            "requests": [list(b) for b in self.requests],
            "tokens": [list(b) for b in self.tokens],
            "day": self.day,
            "day_tokens": self.day_tokens,
        }

    @classmethod
    def from_state(cls, state: Any) -> Window:
        window = cls()
        if not isinstance(state, dict):
            return window
        for name in ("requests", "tokens"):
            buckets = state.get(name)
            if not isinstance(buckets, list):
                continue
            target = getattr(window, name)
            for bucket in buckets[-WINDOW_S:]:
                if (
                    isinstance(bucket, list)
                    and len(bucket) == 2
                    and all(type(v) is int and v >= 0 for v in bucket)
                ):
                    target.append([bucket[0], bucket[1]])
        window.requests_sum = sum(b[1] for b in window.requests)
        window.tokens_sum = sum(b[1] for b in window.tokens)
        day, day_tokens = state.get("day"), state.get("day_tokens")
        if type(day) is int and type(day_tokens) is int and day_tokens >= 0:
            window.day, window.day_tokens = day, day_tokens
        return window


def _add(buckets: deque[list[int]], second: int, amount: int) -> None:
    if buckets and buckets[-1][0] == second:
        buckets[-1][1] += amount
    else:
        buckets.append([second, amount])


@dataclass
class Ticket:
    """One admitted request of a limited key: the headers its response carries."""

    key: ApiKey
    window: Window
    headers: dict[str, str]


class Limiter(Protocol):
    def admit(self, key: ApiKey) -> Ticket:
        """Count a request (raises ``RateLimited`` over a limit)."""
        ...

    def done(self, ticket: Ticket, tokens: int) -> None:
        """The request ended having used ``tokens`` (prompt + completion)."""
        ...

    def windows(self) -> dict[str, Any]:
        """The windows changed since the last call, to persist (name → state)."""
        ...

    def restore(self, windows: dict[str, Any]) -> None:
        """Windows persisted earlier (at start)."""
        ...

    def forget(self, name: str) -> None:
        """Drop ``name``'s window (its key was revoked or made anew)."""
        ...


class LocalLimiter:
    """The windows in this process's memory. Called on the event loop only."""

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._windows: dict[str, Window] = {}
        self._dirty: set[str] = set()

    def admit(self, key: ApiKey) -> Ticket:
        now = self._clock()
        second = int(now)
        window = self._windows.get(key.name)
        if window is None:
            window = self._windows[key.name] = Window(day=second // DAY_S)
        window.prune(second)
        if key.concurrency is not None and window.in_flight >= key.concurrency:
            raise _refused(
                f"API key '{key.name}' has {key.concurrency} requests running, its limit;"
                " wait for one to finish",
                1,
                _headers(key, window, now),
                "concurrency_limit_exceeded",
            )
        if key.rpm is not None and window.requests_sum >= key.rpm:
            wait = _until_below(window.requests, key.rpm, window.requests_sum, now)
            raise _refused(
                f"API key '{key.name}' reached its limit of {key.rpm} requests per minute",
                wait,
                _headers(key, window, now),
                "requests_limit_exceeded",
            )
        if key.tpm is not None and window.tokens_sum >= key.tpm:
            wait = _until_below(window.tokens, key.tpm, window.tokens_sum, now)
            raise _refused(
                f"API key '{key.name}' reached its limit of {key.tpm} tokens per minute",
                wait,
                _headers(key, window, now),
                "tokens_limit_exceeded",
            )
        if key.tokens_per_day is not None and window.day_tokens >= key.tokens_per_day:
            wait = (window.day + 1) * DAY_S - now
            raise _refused(
                f"API key '{key.name}' reached its limit of {key.tokens_per_day} tokens per day"
                " (the day is UTC)",
                wait,
                _headers(key, window, now),
                "daily_tokens_limit_exceeded",
            )
        _add(window.requests, second, 1)
        window.requests_sum += 1
        window.in_flight += 1
        self._dirty.add(key.name)
        return Ticket(key, window, _headers(key, window, now))

    def done(self, ticket: Ticket, tokens: int) -> None:
        window = ticket.window
        window.in_flight = max(0, window.in_flight - 1)
        if tokens <= 0:
            return
        second = int(self._clock())
        window.prune(second)
        _add(window.tokens, second, tokens)
        window.tokens_sum += tokens
        window.day_tokens += tokens
        self._dirty.add(ticket.key.name)

    def windows(self) -> dict[str, Any]:
        dirty, self._dirty = self._dirty, set()
        return {name: self._windows[name].state() for name in dirty if name in self._windows}

    def restore(self, windows: dict[str, Any]) -> None:
        second = int(self._clock())
        for name, state in windows.items():
            window = Window.from_state(state)
            window.prune(second)
            old = self._windows.get(name)
            if old is not None:  # keep what runs now
                window.in_flight = old.in_flight
            self._windows[name] = window

    def forget(self, name: str) -> None:
        # Tickets still running keep the old window; a new request starts a new one.
        self._windows.pop(name, None)
        self._dirty.discard(name)

    def in_flight(self, name: str) -> int:
        window = self._windows.get(name)
        return window.in_flight if window is not None else 0


def _until_below(buckets: deque[list[int]], limit: int, used: int, now: float) -> float:
    """Seconds until enough buckets leave the window for ``used`` to drop below ``limit``."""
    for second, amount in buckets:
        used -= amount
        if used < limit:
            return second + WINDOW_S - now
    return WINDOW_S


def _refused(message: str, wait_s: float, headers: dict[str, str], code: str) -> RateLimited:
    retry_after = max(1, min(DAY_S, math.ceil(wait_s)))
    return RateLimited(message, code=code, retry_after=retry_after, headers=headers)


def _headers(key: ApiKey, window: Window, now: float) -> dict[str, str]:
    headers: dict[str, str] = {}
    if key.rpm is not None:
        newest = window.requests[-1][0] if window.requests else None
        headers["x-ratelimit-limit-requests"] = str(key.rpm)
        headers["x-ratelimit-remaining-requests"] = str(max(0, key.rpm - window.requests_sum))
        headers["x-ratelimit-reset-requests"] = _seconds(
            newest + WINDOW_S - now if newest is not None else 0.0
        )
    if key.tpm is not None:
        newest = window.tokens[-1][0] if window.tokens else None
        headers["x-ratelimit-limit-tokens"] = str(key.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, key.tpm - window.tokens_sum))
        headers["x-ratelimit-reset-tokens"] = _seconds(
            newest + WINDOW_S - now if newest is not None else 0.0
        )
    elif key.tokens_per_day is not None:
        headers["x-ratelimit-limit-tokens"] = str(key.tokens_per_day)
        headers["x-ratelimit-remaining-tokens"] = str(
            max(0, key.tokens_per_day - window.day_tokens)
        )
        headers["x-ratelimit-reset-tokens"] = _seconds(
            (window.day + 1) * DAY_S - now if window.day_tokens else 0.0
        )
    return headers


def _seconds(seconds: float) -> str:
    """A reset to the whole second (the windows count per second), from a small cache."""
    return _whole_seconds(max(0, math.ceil(seconds)))


@functools.lru_cache(maxsize=4096)
def _whole_seconds(seconds: int) -> str:
    return duration(seconds)


def duration(seconds: float) -> str:
    """A duration as OpenAI's headers (and Go) write it: ``12ms``, ``1s``, ``6m0s``, ``1h0m0s``."""
    ms = max(0, round(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, fraction = divmod(rest, 1000)
    secs = f"{whole}.{fraction:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs
