"""Run transcripts on disk: one JSON file per run, written atomically. Blocking."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

_RUN_ID = re.compile(r"^run-[0-9a-f]{24}$")


class RunStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, transcript: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = json.dumps(transcript, ensure_ascii=False, indent=1).encode()
        fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".incoming-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.directory / f"{transcript['run_id']}.json")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def get(self, run_id: str) -> dict[str, Any] | None:
        if not _RUN_ID.match(run_id):
            return None
        try:
            return json.loads((self.directory / f"{run_id}.json").read_bytes())
        except FileNotFoundError:
            return None
