"""The record of every tool call: NDJSON lines, one JSON file per call, or both.

NDJSON: each record is one ``write()`` of a whole line to a file opened with
``O_APPEND``, under a lock, so concurrent calls never interleave or tear a line. An
in-memory index (replay id -> byte offset) makes lookups a seek, not a scan; it is rebuilt
from the file once at start-up. Per-invocation files are written to a temp name and
renamed into place. All methods block: call them from a thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from ..storage import write_atomic

_REPLAY_ID = re.compile(r"^tool-[0-9a-f]{24}$")


class ToolLog:
    def __init__(self, mode: str, ndjson_path: Path, directory: Path) -> None:
        self.ndjson = mode in ("ndjson", "both")
        self.per_invocation = mode in ("per_invocation", "both")
        self.ndjson_path = ndjson_path
        self.directory = directory
        self._lock = threading.Lock()
        self._offsets: dict[str, int] = {}
        self._fd: int | None = None

    def open(self) -> None:
        """Create the folders and index what an earlier run wrote."""
        if self.per_invocation:
            self.directory.mkdir(parents=True, exist_ok=True)
        if self.ndjson:
            self.ndjson_path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.ndjson_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._index_existing()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        if self.per_invocation:
            write_atomic(self.directory / f"{record['replay_id']}.json", line)
        if self.ndjson and self._fd is not None:
            with self._lock:
                offset = os.lseek(self._fd, 0, os.SEEK_END)
                view = memoryview(line)
                while view:
                    view = view[os.write(self._fd, view) :]
                self._offsets[record["replay_id"]] = offset

    def get(self, replay_id: str) -> dict[str, Any] | None:
        if not _REPLAY_ID.match(replay_id):
            return None
        if self.per_invocation:
            with contextlib.suppress(FileNotFoundError):
                return json.loads((self.directory / f"{replay_id}.json").read_bytes())
        offset = self._offsets.get(replay_id)
        if offset is None:
            return None
        with self.ndjson_path.open("rb") as handle:
            handle.seek(offset)
            return json.loads(handle.readline())

    def _index_existing(self) -> None:
        offset = 0
        with self.ndjson_path.open("rb") as handle:
            for line in handle:
                if line.endswith(b"\n"):
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        self._offsets[json.loads(line)["replay_id"]] = offset
                offset += len(line)
