"""Content-addressed image files: the name is the SHA-256 of the bytes plus an extension.

The same image is stored once; every write is a temp file renamed into place, so a
crash never leaves a half-written image under a real name. A write that fails (disk
full, read-only) removes its temp file and is a 503 ``storage_unavailable``, reported to
the storage monitor. All methods block: call them from a thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from pathlib import Path

from ..errors import StorageUnavailable
from ..storage import RETRY_AFTER_S, TEMP_PREFIX, StorageMonitor, write_atomic

_NAME = re.compile(r"^[0-9a-f]{64}\.(png|jpg|webp|svg)$")
_UNSAVED = (
    "The image could not be stored (the gateway's storage is full or not writable);"
    " try again later, or ask for response_format b64_json"
)


class ImageStore:
    def __init__(self, directory: Path, storage: StorageMonitor | None = None) -> None:
        self.directory = directory
        self.storage = storage

    def save(self, data: bytes, extension: str) -> str:
        """Store ``data``; returns its file name. Storing it again refreshes its age."""
        name = f"{hashlib.sha256(data).hexdigest()}.{extension}"
        target = self.directory / name
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if target.exists():
                os.utime(target)
                return name
            write_atomic(target, data)
        except OSError as exc:
            if self.storage is None:
                raise StorageUnavailable(_UNSAVED, retry_after=RETRY_AFTER_S) from None
            raise self.storage.unavailable(exc, "image store", _UNSAVED) from None
        return name

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
        return removed
