"""The stored responses: retention, size bounds, a failing disk, and what the API does
with each."""

from __future__ import annotations

import errno
import json
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from sidecar import sqlite
from sidecar.errors import StorageUnavailable
from sidecar.mock_backends.openai_server import RECEIVED
from sidecar.responses.store import ResponseStore
from sidecar.settings import ResponsesSettings, Settings
from sidecar.storage import StorageMonitor
from sidecar.typedefs import STORAGE

from .conftest import ROOT, assert_envelope, gateway_yaml, mock_backend_yaml, openai_client

DAY_S = 86_400.0


def _record(text: str) -> dict[str, Any]:
    return {"context": [], "input": [], "response": {"id": "r", "output": [], "text": text}}


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    opened: list[ResponseStore] = []

    async def make(**settings: Any) -> ResponseStore:
        made = ResponseStore(tmp_path / "responses.sqlite3", ResponsesSettings(**settings))
        await made.open()
        opened.append(made)
        return made

    yield make
    for made in opened:
        await made.close()


async def test_retention_hides_and_prunes_old_records(store: Any, tmp_path: Path) -> None:
    responses = await store(retention_days=1.0)
    now = time.time()
    assert await responses.put("alice", "resp_old", now - 2 * DAY_S, _record("old"))
    assert await responses.put("alice", "resp_new", now, _record("new"))
    assert await responses.get("alice", "resp_old") is None  # past the retention: gone
    found = await responses.get("alice", "resp_new")
    assert found is not None and found.response["text"] == "new"
    assert await responses.prune() == 1
    assert await responses.prune() == 0
    assert await responses.get("alice", "resp_new") is not None
    # Readable by the service user only.
    mode = stat.S_IMODE((tmp_path / "responses.sqlite3").stat().st_mode)
    assert mode == 0o600


async def test_records_are_found_by_their_owner_only(store: Any) -> None:
    responses = await store()
    assert await responses.put("alice", "resp_1", time.time(), _record("a"))
    assert await responses.get("bob", "resp_1") is None
    assert not await responses.delete("bob", "resp_1")
    assert await responses.get("alice", "resp_1") is not None
    assert await responses.delete("alice", "resp_1")
    assert await responses.get("alice", "resp_1") is None


async def test_total_size_is_bounded_oldest_first(store: Any) -> None:
    cap = 1024 * 1024
    responses = await store(max_total_bytes=cap, max_record_bytes=400 * 1024)
    now = time.time()
    for index in range(6):
        assert await responses.put("alice", f"resp_{index}", now + index, _record("x" * 300_000))
    kept = [i for i in range(6) if await responses.get("alice", f"resp_{i}") is not None]
    assert kept == [3, 4, 5]  # three of 300 kB fit in 1 MiB; the oldest went first
    # The running total survives a restart: a reopened store keeps honouring the cap.
    await responses.close()
    reopened = await store(max_total_bytes=cap, max_record_bytes=400 * 1024)
    assert await reopened.put("alice", "resp_6", now + 6, _record("x" * 300_000))
    kept = [i for i in range(7) if await reopened.get("alice", f"resp_{i}") is not None]
    assert kept == [4, 5, 6]


async def test_a_record_over_the_limit_is_not_stored(store: Any) -> None:
    responses = await store(max_record_bytes=64 * 1024)
    assert not await responses.put("alice", "resp_big", time.time(), _record("x" * 70_000))
    assert await responses.get("alice", "resp_big") is None
    assert await responses.put("alice", "resp_small", time.time(), _record("x" * 1000))


async def test_retention_zero_stores_nothing(store: Any, tmp_path: Path) -> None:
    responses = await store(retention_days=0.0)
    assert not await responses.put("alice", "resp_1", time.time(), _record("a"))
    assert await responses.get("alice", "resp_1") is None
    assert not (tmp_path / "responses.sqlite3").exists()


# -- through the API ---------------------------------------------------------------------------


async def _gateway(make_gateway: Any, start_mock: Any, **settings: Any) -> tuple[Any, Any]:
    backend = await start_mock()
    gateway = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend, health="{readiness: false}")),
        responses=ResponsesSettings(**settings),
    )
    return gateway, backend


async def test_conversation_too_large_to_store_is_refused_before_the_backend(
    make_gateway: Any, start_mock: Any
) -> None:
    gateway, backend = await _gateway(make_gateway, start_mock, max_record_bytes=64 * 1024)
    async with openai_client(gateway) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.responses.create(model="mock-llama", input="x" * 70_000)
        assert caught.value.body["param"] == "input"  # type: ignore[index]
        assert len(backend.app[RECEIVED]) == 0
        # Without store it runs.
        unstored = await client.responses.create(
            model="mock-llama", input="x" * 70_000, store=False
        )
        assert unstored.output_text.startswith("Mock reply to: xxx")
        # An input that fits, with an answer that makes the record too large: answered,
        # and marked as not stored.
        response = await client.responses.create(model="mock-llama", input="y" * 40_000)
        assert response.model_extra is not None and response.model_extra["store"] is False
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(response.id)


async def test_retention_zero_through_the_api(
    make_gateway: Any, start_mock: Any, tmp_path: Path
) -> None:
    gateway, _ = await _gateway(make_gateway, start_mock, retention_days=0.0)
    async with openai_client(gateway) as client:
        response = await client.responses.create(model="mock-llama", input="x")
        assert response.model_extra is not None and response.model_extra["store"] is False
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(response.id)


async def test_failing_storage_refuses_to_store_before_the_backend_is_asked(
    make_gateway: Any, start_mock: Any, auth: dict[str, str]
) -> None:
    gateway, backend = await _gateway(make_gateway, start_mock)
    gateway.server.app[STORAGE].failed(OSError(errno.ENOSPC, "full"), "test")
    response = await gateway.post(
        "/v1/responses", json={"model": "mock-llama", "input": "x"}, headers=auth
    )
    assert response.status == 503
    assert response.headers["Retry-After"]
    assert_envelope(await response.json(), error_type="api_error", code="storage_unavailable")
    assert len(backend.app[RECEIVED]) == 0
    response = await gateway.post(
        "/v1/responses", json={"model": "mock-llama", "input": "x", "store": False}, headers=auth
    )
    assert response.status == 200


def test_settings_from_the_environment() -> None:
    base = {"GATEWAY_BEARER_TOKEN": "a-long-random-token-123456"}
    settings = Settings.from_env(base)
    assert settings.responses == ResponsesSettings(30.0, 4 * 1024 * 1024, 1024 * 1024 * 1024)
    settings = Settings.from_env(
        {
            **base,
            "GATEWAY_RESPONSES_RETENTION_DAYS": "0.5",
            "GATEWAY_RESPONSES_MAX_RECORD_BYTES": "100000",
            "GATEWAY_RESPONSES_MAX_BYTES": "2000000",
        }
    )
    assert settings.responses == ResponsesSettings(0.5, 100_000, 2_000_000)


# -- a real full disk ------------------------------------------------------------------------

_FULL_DISK = textwrap.dedent(
    """
    import asyncio, errno, json, sys, time
    from pathlib import Path
    from sidecar.errors import StorageUnavailable
    from sidecar.responses.store import ResponseStore
    from sidecar.settings import ResponsesSettings
    from sidecar.storage import StorageMonitor

    async def main(data: Path) -> dict:
        monitor = StorageMonitor(data)
        store = ResponseStore(data / "responses.sqlite3", ResponsesSettings(), monitor)
        await store.open()
        record = {"context": [], "input": [], "response": {"output": [], "t": "x" * 200_000}}
        assert await store.put("alice", "resp_before", time.time(), record)
        ballast = data / "ballast"
        with ballast.open("wb") as handle:
            try:
                while True:
                    handle.write(b"\\0" * 65536)
                    handle.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        result = {}
        try:
            await store.put("alice", "resp_full", time.time(), record)
            result["full"] = "stored"
        except StorageUnavailable as exc:
            result["full"] = [exc.status, exc.code, exc.message]
        result["state"] = monitor.snapshot()
        found = await store.get("alice", "resp_before")
        result["read_while_full"] = found is not None
        ballast.unlink()
        result["after"] = await store.put("alice", "resp_after", time.time(), record)
        await store.close()
        return result

    print(json.dumps(asyncio.run(main(Path(sys.argv[1])))))
    """
)


def test_a_full_disk_is_a_503_and_the_store_recovers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    script = tmp_path / "full_disk.py"
    script.write_text(_FULL_DISK)
    command = f'mount -t tmpfs -o size=2m tmpfs "{data}" && "{sys.executable}" "{script}" "{data}"'
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout)
    status, code, message = outcome["full"]
    assert (status, code) == (503, "storage_unavailable")
    assert str(data) not in message and "sqlite" not in message.lower()
    assert outcome["state"]["writable"] is False
    assert outcome["state"]["last_error"] == "disk_full"
    assert outcome["read_while_full"] is True
    assert outcome["after"] is True
    assert not any(data.iterdir())  # the tmpfs was private to the child


async def test_a_database_another_process_holds_is_a_503_but_not_a_failing_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock held elsewhere (another gateway, an admin's sqlite3 shell) is not the disk's
    fault: the store answers 503 while it lasts, readiness stays good, and the store
    works again once the lock is gone."""
    monkeypatch.setattr(sqlite, "BUSY_TIMEOUT_MS", 50)  # the wait before "locked"
    monitor = StorageMonitor(tmp_path)
    store = ResponseStore(tmp_path / "responses.sqlite3", ResponsesSettings(), monitor)
    await store.open()
    other = sqlite3.connect(tmp_path / "responses.sqlite3", isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StorageUnavailable) as caught:
            await store.put("alice", "resp_locked", time.time(), _record("x"))
        assert caught.value.status == 503 and caught.value.retry_after
        assert monitor.state.writable and monitor.state.failures == 0
        other.execute("ROLLBACK")
        assert await store.put("alice", "resp_after", time.time(), _record("y"))
    finally:
        other.close()
        await store.close()
