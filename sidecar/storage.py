"""Crash-safe file writes: a temp file in the same folder, flushed, then renamed in.

A reader (or a restart after a crash) sees the old file or the whole new one, never half
of it. Blocking: call it from a thread.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

TEMP_PREFIX = ".incoming-"


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
