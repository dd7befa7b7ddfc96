"""Content-addressed image files: the name is the SHA-256 of the bytes plus an extension.

The same image is stored once; every write is a temp file renamed into place, so a
crash never leaves a half-written image under a real name. A write that fails (disk
full, read-only) removes its temp file and is a 503 ``storage_unavailable``, reported to
the storage monitor. All methods block: call them from a thread.

Besides the age-based prune, the store has a size: past ``max_bytes`` or ``max_files``
the oldest images are deleted (down to nine tenths of the cap) as a new one is stored,
never the new one itself, so no number of distinct images fills the data directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import time
from pathlib import Path

from ..errors import StorageUnavailable
from ..storage import RETRY_AFTER_S, TEMP_PREFIX, StorageMonitor, error_kind, write_atomic

log = logging.getLogger("gateway.images")

_NAME = re.compile(r"^[0-9a-f]{64}\.(png|jpg|webp|svg)$")
MAX_STORE_BYTES = 4 * 1024**3
MAX_STORE_FILES = 50_000
_EVICT_TO = 0.9  # evicting down to 90 % of a cap: one scan per many stores, not each
_UNSAVED = (
    "The image could not be stored (the gateway's storage is full or not writable);"
    " try again later, or ask for response_format b64_json"
)


class ImageStore:
    def __init__(
        self,
        directory: Path,
        storage: StorageMonitor | None = None,
        max_bytes: int = MAX_STORE_BYTES,
        max_files: int = MAX_STORE_FILES,
    ) -> None:
        self.directory = directory
        self.storage = storage
        self.max_bytes = max_bytes
        self.max_files = max_files
        self._lock = threading.Lock()
        self._usage: list[int] | None = None  # [bytes, files]; None: count on next store

    def save(self, data: bytes, extension: str) -> str:
        """Store ``data``; returns its file name. Storing it again refreshes its age."""
        name = f"{hashlib.sha256(data).hexdigest()}.{extension}"
        target = self.directory / name
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if target.exists():
                try:
                    os.utime(target)
                    return name
                except FileNotFoundError:
                    pass  # pruned since exists(): written again below
            write_atomic(target, data)
        except OSError as exc:
            if self.storage is None:
                raise StorageUnavailable(_UNSAVED, retry_after=RETRY_AFTER_S) from None
            raise self.storage.unavailable(exc, "image store", _UNSAVED) from None
        try:
            self._stored(name, len(data))
        except OSError as exc:  # the image is stored; only keeping within the caps failed
            log.warning("image store: deleting the oldest images failed (%s)", error_kind(exc))
        return name

    def _stored(self, name: str, size: int) -> None:
        """Count a new file; past a cap, delete the oldest images except ``name``."""
        with self._lock:
            if self._usage is None:
                self._usage = self._count()
            else:
                self._usage[0] += size
                self._usage[1] += 1
            if self._usage[0] <= self.max_bytes and self._usage[1] <= self.max_files:
                return
            self._usage = self._evict(name)

    def _images(self) -> list[tuple[float, int, str]]:
        """(mtime, size, path) of every image, oldest first."""
        found = []
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        for entry in entries:
            if _NAME.match(entry.name):
                with contextlib.suppress(FileNotFoundError):
                    stat = entry.stat()
                    found.append((stat.st_mtime, stat.st_size, entry.path))
        found.sort()
        return found

    def _count(self) -> list[int]:
        images = self._images()
        return [sum(size for _, size, _ in images), len(images)]

    def _evict(self, keep: str) -> list[int]:
        images = self._images()
        total, count = sum(size for _, size, _ in images), len(images)
        byte_goal, file_goal = int(self.max_bytes * _EVICT_TO), int(self.max_files * _EVICT_TO)
        for _, size, path in images:
            if total <= byte_goal and count <= file_goal:
                break
            if os.path.basename(path) == keep:
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError:
                continue  # still there: still counted
            total -= size
            count -= 1
        return [total, count]

    def path(self, name: str) -> Path | None:
        """The file for a name from a URL, or None: only well-formed names are looked up."""
        if not _NAME.match(name):
            return None
        candidate = self.directory / name
        return candidate if candidate.is_file() else None

    def prune(self, max_age_s: float, now: float | None = None) -> int:
        """Delete images (and stale temp files) older than ``max_age_s``; returns the count."""
        cutoff = (now if now is not None else time.time()) - max_age_s
        removed = 0
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if not (_NAME.match(entry.name) or entry.name.startswith(TEMP_PREFIX)):
                continue
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
        with self._lock:
            self._usage = None  # counted again on the next store
        return removed
