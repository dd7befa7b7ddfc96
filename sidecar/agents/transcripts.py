"""Run transcripts on disk: one JSON file per run, written atomically. Blocking."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..storage import write_atomic

_RUN_ID = re.compile(r"^run-[0-9a-f]{24}$")


class RunStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, transcript: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = json.dumps(transcript, ensure_ascii=False, indent=1).encode()
        write_atomic(self.directory / f"{transcript['run_id']}.json", data)

    def get(self, run_id: str) -> dict[str, Any] | None:
        if not _RUN_ID.match(run_id):
            return None
        try:
            return json.loads((self.directory / f"{run_id}.json").read_bytes())
        except FileNotFoundError:
            return None
