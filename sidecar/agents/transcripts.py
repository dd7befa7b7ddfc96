"""Run transcripts on disk: one JSON file per run, written atomically. Blocking.

A transcript that cannot be written (disk full, read-only) is a 503
``storage_unavailable``, reported to the storage monitor; no half-written file stays.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import StorageUnavailable
from ..storage import RETRY_AFTER_S, StorageMonitor, record_bytes, write_atomic

_RUN_ID = re.compile(r"^run-[0-9a-f]{24}$")
_UNSAVED = (
    "The agent run finished but its transcript could not be recorded (the gateway's"
    " storage is full or not writable); try again later"
)


class RunStore:
    def __init__(self, directory: Path, storage: StorageMonitor | None = None) -> None:
        self.directory = directory
        self.storage = storage

    def save(self, transcript: dict[str, Any]) -> None:
        data = record_bytes(transcript, indent=1)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomic(self.directory / f"{transcript['run_id']}.json", data)
        except OSError as exc:
            if self.storage is None:
                raise StorageUnavailable(_UNSAVED, retry_after=RETRY_AFTER_S) from None
            raise self.storage.unavailable(exc, "agent transcript", _UNSAVED) from None

    def get(self, run_id: str) -> dict[str, Any] | None:
        if not _RUN_ID.match(run_id):
            return None
        try:
            record: dict[str, Any] = json.loads((self.directory / f"{run_id}.json").read_bytes())
            return record
        except FileNotFoundError:
            return None
