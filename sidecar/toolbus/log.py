"""The record of every tool call: NDJSON lines, one JSON file per call, or both.

Record first, then run: each call is written twice under the same replay id. First its
intent (``"phase": "started"``: hash, tool, version, arguments, token name, request id)
before the tool runs, then its outcome (``"phase": "finished"``: ok, result or error,
duration). A lookup returns the newest record of an id, so the outcome once it exists;
an intent alone is a call whose outcome was never recorded (``"complete": false``).
Records written before the two phases have no ``phase`` and count as finished.

NDJSON: each record is one ``write()`` of a whole line to a file opened with
``O_APPEND``, under a lock, so concurrent calls never interleave or tear a line. A write
that fails part-way (disk full) is cut back off the file, so no torn line stays. An
in-memory index (replay id -> byte offset) makes lookups a seek, not a scan; it keeps
only the newest ``INDEX_MAX_ENTRIES`` ids (about 150 bytes each). An older id is found by
reading the file backwards, at most ``SCAN_MAX_BYTES`` from its end; past that, the
lookup answers "not found". Per-invocation files are written to a temp name and renamed
into place (the outcome replaces the intent). All methods block: call them from a thread.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ..storage import record_bytes, write_atomic

_REPLAY_ID = re.compile(r"^tool-[0-9a-f]{24}$")
INDEX_MAX_ENTRIES = 20_000
SCAN_MAX_BYTES = 64 * 1024 * 1024
_CHUNK = 1024 * 1024


class ToolLog:
    def __init__(
        self,
        mode: str,
        ndjson_path: Path,
        directory: Path,
        *,
        index_max: int = INDEX_MAX_ENTRIES,
        scan_max_bytes: int = SCAN_MAX_BYTES,
    ) -> None:
        self.ndjson = mode in ("ndjson", "both")
        self.per_invocation = mode in ("per_invocation", "both")
        self.ndjson_path = ndjson_path
        self.directory = directory
        self.index_max = index_max
        self.scan_max_bytes = scan_max_bytes
        self._lock = threading.Lock()
        self._offsets: OrderedDict[str, int] = OrderedDict()
        self._fd: int | None = None
        # Only an id older than the index can need a scan; until the index has dropped
        # one, an id it lacks does not exist. Scans run one at a time (see ``get``).
        self._evicted = False
        self._scan_lock = threading.Lock()

    @property
    def index_size(self) -> int:
        """Entries in the in-memory index: the bound on it is observed through this."""
        return len(self._offsets)

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
        """Write one record (intent or outcome); any ``OSError`` means it is not stored."""
        line = record_bytes(record) + b"\n"
        if self.per_invocation:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomic(self.directory / f"{record['replay_id']}.json", line)
        if self.ndjson:
            try:
                self._append(record["replay_id"], line)
            except OSError:
                if self.per_invocation and record.get("phase") == "started":
                    # The call will not run: do not leave an intent for it in one place.
                    with contextlib.suppress(OSError):
                        os.unlink(self.directory / f"{record['replay_id']}.json")
                raise

    def _append(self, replay_id: str, line: bytes) -> None:
        with self._lock:
            if self._fd is None:  # closed (shutting down): nothing may run unrecorded
                raise OSError(errno.EBADF, "the tool log is closed")
            offset = os.lseek(self._fd, 0, os.SEEK_END)
            view = memoryview(line)
            try:
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError:
                if len(view) < len(line):  # part of the line landed: cut it off
                    with contextlib.suppress(OSError):
                        os.ftruncate(self._fd, offset)
                raise
            self._remember(replay_id, offset)

    def get(self, replay_id: str) -> dict[str, Any] | None:
        if not _REPLAY_ID.match(replay_id):
            return None
        if self.per_invocation:
            with contextlib.suppress(FileNotFoundError):
                return _completed(json.loads((self.directory / f"{replay_id}.json").read_bytes()))
        if not self.ndjson:
            return None
        offset = self._offsets.get(replay_id)
        try:
            if offset is None:
                return self._scan(replay_id)
            with self.ndjson_path.open("rb") as handle:
                handle.seek(offset)
                return _completed(json.loads(handle.readline()))
        except FileNotFoundError:
            return None

    def _remember(self, replay_id: str, offset: int) -> None:
        offsets = self._offsets
        offsets[replay_id] = offset
        offsets.move_to_end(replay_id)
        while len(offsets) > self.index_max:
            offsets.popitem(last=False)
            self._evicted = True

    def _scan(self, replay_id: str) -> dict[str, Any] | None:
        """An id the index lacks: read back through the log, one scan at a time.

        A scan reads up to ``scan_max_bytes``; any token can ask for random ids, so a second
        scan while one runs is refused (``LookupBusy``) instead of tying up another worker
        thread of the shared pool.
        """
        if not self._evicted:
            return None
        if not self._scan_lock.acquire(blocking=False):
            raise LookupBusy
        try:
            return _completed(self._scan_back(replay_id))
        finally:
            self._scan_lock.release()

    def _scan_back(self, replay_id: str) -> dict[str, Any] | None:
        """The newest line of ``replay_id`` within ``scan_max_bytes`` of the file's end."""
        needle = f'"replay_id":"{replay_id}"'.encode()
        with self.ndjson_path.open("rb") as handle:
            end = handle.seek(0, os.SEEK_END)
            floor = max(0, end - self.scan_max_bytes)
            position, tail = end, b""
            while position > floor:
                start = max(floor, position - _CHUNK)
                handle.seek(start)
                block = handle.read(position - start) + tail
                position = start
                lines = block.split(b"\n")
                # The first piece may be the end of a line that starts further back.
                tail = lines.pop(0) if position > floor else b""
                for line in reversed(lines):
                    found = _match(line, needle, replay_id)
                    if found is not None:
                        return found
            return _match(tail, needle, replay_id) if position == 0 else None

    def _index_existing(self) -> None:
        offset = 0
        with self.ndjson_path.open("rb") as handle:
            for line in handle:
                if line.endswith(b"\n"):
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        self._remember(json.loads(line)["replay_id"], offset)
                offset += len(line)


class LookupBusy(Exception):
    """Another look-up is reading back through the log; try again shortly."""


def _match(line: bytes, needle: bytes, replay_id: str) -> dict[str, Any] | None:
    if needle not in line:
        return None
    with contextlib.suppress(ValueError):
        record = json.loads(line)
        if isinstance(record, dict) and record.get("replay_id") == replay_id:
            return record
    return None


def _completed(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """Mark whether the outcome was recorded (an intent alone is incomplete)."""
    if record is not None:
        record["complete"] = record.get("phase", "finished") != "started"
    return record
