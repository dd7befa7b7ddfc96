"""Crash-safe file writes, and whether the data directory can be written at all.

``write_atomic``: a temp file in the same folder, flushed, then renamed in. A reader (or
a restart after a crash) sees the old file or the whole new one, never half of it.
Blocking: call it from a thread.

``StorageMonitor``: every part that writes under the data directory (the tool log, agent
transcripts, images, the users database) reports a failed write here and turns it into a
503 ``storage_unavailable`` envelope (``unavailable``), never a 500. ``/readyz`` shows the
state (writable, free bytes, the kind of the last error — never a path) and says
``degraded`` while writes fail. Writers always try (a request never waits for the
state), and the gateway recovers by itself: while the state is set, a background task
re-probes the data directory every ``PROBE_INTERVAL_S`` seconds with a write of a new
page (``PROBE_BYTES``, fsynced) and clears it when that works. Only the probe clears it:
a small append that happens to fit in an already allocated page proves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StorageUnavailable

log = logging.getLogger("gateway.storage")

TEMP_PREFIX = ".incoming-"
PROBE_NAME = ".storage-probe"
PROBE_BYTES = 4096  # one page: a probe that fits says small records fit again
PROBE_INTERVAL_S = 2.0
RETRY_AFTER_S = 5


def write_atomic(path: Path, data: bytes, mode: int = 0o640) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def error_kind(exc: BaseException) -> str:
    """A short, path-free name for why a write failed."""
    if isinstance(exc, OSError):
        return {
            errno.ENOSPC: "disk_full",
            errno.EDQUOT: "disk_full",
            errno.EROFS: "read_only",
            errno.EACCES: "permission_denied",
            errno.EPERM: "permission_denied",
            errno.EIO: "io_error",
        }.get(exc.errno or 0, errno.errorcode.get(exc.errno or 0, "os_error").lower())
    text = str(exc).lower()
    if "full" in text:
        return "disk_full"
    if "readonly" in text or "read-only" in text:
        return "read_only"
    if "i/o" in text:
        return "io_error"
    if "locked" in text or "busy" in text:
        return "database_busy"
    return "database_error"


@dataclass(frozen=True)
class StorageState:
    writable: bool
    last_error: str | None
    failed_at: float | None
    failures: int


class StorageMonitor:
    """The data directory's write health; thread-safe (writers report from threads)."""

    def __init__(self, data_dir: Path, probe_interval_s: float = PROBE_INTERVAL_S) -> None:
        self.data_dir = data_dir
        self.probe_interval_s = probe_interval_s
        self._lock = threading.Lock()
        self._state = StorageState(True, None, None, 0)
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def state(self) -> StorageState:
        return self._state

    def failed(self, exc: BaseException, what: str) -> None:
        """Note a failed write of ``what`` (e.g. "tool log"); the log line has no path."""
        kind = error_kind(exc)
        with self._lock:
            first = self._state.writable
            self._state = StorageState(False, kind, time.time(), self._state.failures + 1)
        if first:
            log.error(
                "storage: writing the %s failed (%s); answering 503 until it works", what, kind
            )
        else:
            log.warning("storage: writing the %s failed (%s)", what, kind)
        self._poke()

    def succeeded(self) -> None:
        """The probe worked: clear a failed state (cheap when nothing failed)."""
        if self._state.writable:
            return
        with self._lock:  # checked again under the lock: one thread logs the recovery
            recovered = not self._state.writable
            if recovered:
                self._state = StorageState(True, None, None, self._state.failures)
        if recovered:
            log.warning("storage: writes work again; recovered")

    def unavailable(self, exc: BaseException, what: str, message: str) -> StorageUnavailable:
        """Record ``exc`` and return the 503 to raise (``raise monitor.unavailable(...)``)."""
        self.failed(exc, what)
        return StorageUnavailable(message, retry_after=RETRY_AFTER_S)

    def free_bytes(self) -> int | None:
        try:
            stats = os.statvfs(self.data_dir)
        except OSError:
            return None
        return stats.f_bavail * stats.f_frsize

    def probe(self) -> bool:
        """Blocking: write, sync and remove a small file in the data directory."""
        path = self.data_dir / PROBE_NAME
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(b"\0" * PROBE_BYTES)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            with self._lock:
                self._state = StorageState(
                    False, error_kind(exc), self._state.failed_at, self._state.failures
                )
            return False
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.succeeded()
        return True

    def snapshot(self) -> dict[str, Any]:
        """For ``/readyz``: no paths, no error text, only kinds and numbers."""
        state = self._state
        return {
            "writable": state.writable,
            "free_bytes": self.free_bytes(),
            "last_error": state.last_error,
            "failed_at": None if state.failed_at is None else round(state.failed_at, 3),
            "write_failures": state.failures,
        }

    async def watch(self) -> None:
        """Re-probe every ``probe_interval_s`` while writes fail; idle otherwise."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while True:
            if self._state.writable:
                await self._wake.wait()
                self._wake.clear()
                continue
            await asyncio.sleep(self.probe_interval_s)
            if not self._state.writable:
                try:
                    await asyncio.to_thread(self.probe)
                except Exception:  # the monitor must outlive anything a probe meets
                    log.exception("storage probe failed unexpectedly")

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(wake.set)


def store_unavailable(
    storage: StorageMonitor | None, exc: BaseException, what: str, message: str
) -> StorageUnavailable:
    """The 503 a store raises when its database failed with ``exc``: the disk's fault
    (full, read-only, an I/O error) is reported to ``storage``, which marks the gateway
    degraded until a probe writes again; a database another process holds (busy) is not
    the disk's fault and is only logged."""
    kind = error_kind(exc)
    if storage is not None and kind != "database_busy":
        return storage.unavailable(exc, what, message)
    log.warning("%s unavailable (%s)", what, kind)
    return StorageUnavailable(message, retry_after=RETRY_AFTER_S)


def record_bytes(value: Any, *, indent: int | None = None) -> bytes:
    """``value`` as UTF-8 JSON for a record on disk, whatever strings it holds.

    Text stays readable (``ensure_ascii=False``) unless it carries a lone surrogate, which
    UTF-8 cannot encode: then the record is written with ``\\uXXXX`` escapes, so a tool
    result or a model reply with one is still recorded instead of failing the request.
    """
    separators = (",", ":") if indent is None else None
    text = json.dumps(value, ensure_ascii=False, indent=indent, separators=separators)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(value, indent=indent, separators=separators).encode()
