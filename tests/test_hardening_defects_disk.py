"""Issue item 10: the tool log's in-memory index stays bounded.

The index (replay id -> byte offset) used to grow by one entry per call forever. Now it
keeps the newest ``index_max`` ids; an older id is found by reading the NDJSON file
backwards at most ``scan_max_bytes``; past that it is a clean 404 ``replay_not_found``.
The attack is many calls; the numbers are the index size, the ids that still resolve and
the lines on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer

from sidecar.settings import ToolsSettings
from sidecar.toolbus.hashing import new_id
from sidecar.toolbus.log import INDEX_MAX_ENTRIES, SCAN_MAX_BYTES, ToolLog
from sidecar.typedefs import TOOLBUS

from .conftest import GatewayFactory
from .test_toolbus import (
    NOOP,
    backend_fixture,  # noqa: F401 - the fixture, shared with test_toolbus.py
    call_ok,
    headers_for,
    tools_config,
)

CAP = 64
CALLS = 1000


def records(replay_id: str, i: int, pad: int = 0) -> list[dict[str, Any]]:
    base = {"replay_id": replay_id, "tool": "noop", "arguments": {"i": i, "pad": "x" * pad}}
    return [{**base, "phase": "started"}, {**base, "phase": "finished", "ok": True, "result": i}]


def test_the_index_holds_at_most_its_cap_and_older_ids_are_found_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "calls.ndjson"
    log = ToolLog("ndjson", path, tmp_path / "calls", index_max=CAP)
    log.open()
    ids = [new_id("tool") for _ in range(CALLS)]
    try:
        for i, replay_id in enumerate(ids):
            for record in records(replay_id, i, pad=1000):  # 2 MB: the scan reads in chunks
                log.write(record)
            assert log.index_size <= CAP
        assert log.index_size == CAP
        assert len(path.read_bytes().splitlines()) == 2 * CALLS
        assert path.stat().st_size > 2 * 1024 * 1024
        # Every id resolves to its outcome: the newest from the index, the rest by scanning.
        for i in (0, 1, CALLS // 2, CALLS - CAP - 1, CALLS - CAP, CALLS - 1):
            found = log.get(ids[i])
            assert found is not None, i
            assert (found["result"], found["phase"], found["complete"]) == (i, "finished", True)
        assert log.index_size == CAP  # a lookup does not grow it either
        # An intent whose outcome was never written is found as incomplete.
        lonely = new_id("tool")
        log.write(records(lonely, -1)[0])
        for _ in range(CAP):
            other = new_id("tool")
            log.write(records(other, -2)[1])
        found = log.get(lonely)
        assert found is not None and found["complete"] is False and "ok" not in found
        assert log.get(new_id("tool")) is None
    finally:
        log.close()

    # A restart indexes only the newest CAP ids of the 2,000-odd lines.
    again = ToolLog("ndjson", path, tmp_path / "calls", index_max=CAP)
    again.open()
    try:
        assert again.index_size == CAP
        assert again.get(ids[0])["result"] == 0  # type: ignore[index]
    finally:
        again.close()


def test_ids_beyond_the_scan_budget_are_not_found_rather_than_read_forever(
    tmp_path: Path,
) -> None:
    path = tmp_path / "calls.ndjson"
    log = ToolLog("ndjson", path, tmp_path / "calls", index_max=CAP, scan_max_bytes=64 * 1024)
    log.open()
    ids = [new_id("tool") for _ in range(CALLS)]
    try:
        for i, replay_id in enumerate(ids):
            for record in records(replay_id, i):
                log.write(record)
        size = path.stat().st_size
        assert size > 3 * 64 * 1024
        assert log.get(ids[0]) is None  # 2,000 lines back: beyond the 64 KiB budget
        assert log.get(ids[CALLS - CAP - 5])["result"] == CALLS - CAP - 5  # type: ignore[index]
    finally:
        log.close()


async def test_through_the_gateway_the_index_stays_capped_and_old_ids_answer(
    make_gateway: GatewayFactory, backend: TestServer, tmp_path: Path
) -> None:
    assert (INDEX_MAX_ENTRIES, SCAN_MAX_BYTES) == (20_000, 64 * 1024 * 1024)  # as documented
    tools = ToolsSettings(log_mode="ndjson", log_path=tmp_path / "log" / "calls.ndjson")
    client = await make_gateway(tools_config(backend, {"noop": NOOP}), tools=tools)
    log = client.server.app[TOOLBUS].log
    log.index_max = CAP
    bodies = [await call_ok(client, "noop", {"i": i}) for i in range(3 * CAP)]
    assert log.index_size == CAP
    lines = (tmp_path / "log" / "calls.ndjson").read_text().splitlines()
    assert len(lines) == 2 * 3 * CAP

    oldest = bodies[0]["replay_id"]
    response = await client.get(f"/v1/tools/replay/{oldest}", headers=headers_for())
    assert response.status == 200
    record = await response.json()
    assert (record["arguments"], record["ok"], record["complete"]) == ({"i": 0}, True, True)

    log.scan_max_bytes = len(lines[-1]) * 4  # the oldest is now out of reach: a clean 404
    response = await client.get(f"/v1/tools/replay/{oldest}", headers=headers_for())
    assert response.status == 404
    body = await response.json()
    assert body["error"]["code"] == "replay_not_found"
    assert json.dumps(body).count("/") == 0  # no path in the answer
