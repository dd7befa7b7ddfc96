"""The usage ledger: one row per request with the backend's own token counts, written in
batches to SQLite; ``/v1/gateway/usage`` and ``/usage/me``; ``gateway_tokens_total``.

Gateways come from the app factory in front of the stock fake backend (real aiohttp on
loopback, which reports ``usage`` like an OpenAI server, and the usage chunk only when
``stream_options.include_usage`` asks for it). The ledger writes to a real SQLite file in
the test's data directory; tests wait for rows to appear (polling, never a sleep).
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sidecar.errors import DatabaseError
from sidecar.mock_backends.openai_server import RECEIVED
from sidecar.observability.access_log import AccessRecord
from sidecar.observability.metrics import GatewayMetrics
from sidecar.settings import UsageSettings, parse_bearer_tokens
from sidecar.storage import StorageMonitor
from sidecar.typedefs import USAGE
from sidecar.usage.ledger import UsageLedger
from sidecar.usage.store import SqliteUsageStore, day_of

from .conftest import (
    OTHER_TOKEN,
    TOKEN,
    eventually,
    gateway_yaml,
    mock_backend_yaml,
    openai_client,
    usage_db_rows,
    usage_rows_for,
)

ADMIN = {"Authorization": f"Bearer {TOKEN}"}  # named "default", an admin token here
OTHER = {"Authorization": f"Bearer {OTHER_TOKEN}"}  # named "other", not an admin
FAST = UsageSettings(flush_s=0.02)
TOKENS = parse_bearer_tokens(TOKEN, f"other:{OTHER_TOKEN}", "default")
HELLO = [{"role": "user", "content": "hello there, how are you"}]
wait = functools.partial(eventually, attempts=400, poll_s=0.02)


@pytest.fixture
async def stack(make_gateway: Any, start_mock: Any, tmp_path: Path) -> tuple[TestClient, Any]:
    backend = await start_mock()
    gateway = await make_gateway(
        gateway_yaml(
            mock_backend_yaml("mock", backend, health="{readiness: false}"),
            aliases="default: {backend: mock, model: mock-llama}",
        ),
        bearer_tokens=TOKENS,
        usage=FAST,
    )
    return gateway, backend


async def usage(
    gateway: TestClient,
    path: str = "/v1/gateway/usage",
    headers: dict[str, str] = ADMIN,
    **query: str,
) -> Any:
    response = await gateway.get(path, params=query, headers=headers)
    assert response.status == 200, await response.text()
    return await response.json()


# -- exact counts -----------------------------------------------------------------------------


async def test_plain_calls_record_the_backends_usage_exactly(
    stack: tuple[TestClient, Any], tmp_path: Path
) -> None:
    gateway, _ = stack
    async with openai_client(gateway) as client:
        chat = await client.chat.completions.create(model="default", messages=HELLO)
        completion = await client.completions.create(model="mock-llama", prompt="one two three")
        embedding = await client.embeddings.create(model="mock-embed", input="a b c d")
    rows = await usage_rows_for(tmp_path, 3)
    assert chat.usage is not None and completion.usage is not None
    expected = [
        ("/v1/chat/completions", "default", chat.usage.prompt_tokens, chat.usage.completion_tokens),
        (
            "/v1/completions",
            "mock-llama",
            completion.usage.prompt_tokens,
            completion.usage.completion_tokens,
        ),
        ("/v1/embeddings", "mock-embed", embedding.usage.prompt_tokens, 0),
    ]
    for row, (endpoint, model, prompt, completion_tokens) in zip(rows, expected, strict=True):
        assert row["endpoint"] == endpoint
        assert row["model"] == model
        assert row["backend"] == "mock"
        assert row["key"] == "default"
        assert row["ui_user"] == ""
        assert row["status"] == 200 and row["error"] == 0
        assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, completion_tokens)
        assert row["estimated"] == 0
        assert row["duration_ms"] > 0
        assert row["request_id"].startswith("req-")
        assert row["day"] == day_of(row["ts"])
    assert chat.usage.prompt_tokens > 0 and chat.usage.completion_tokens > 0

    body = await usage(gateway, group_by="model")
    by_model = {row["model"]: row for row in body["data"]}
    assert by_model["default"] == {
        "model": "default",
        "requests": 1,
        "prompt_tokens": chat.usage.prompt_tokens,
        "completion_tokens": chat.usage.completion_tokens,
        "errors": 0,
    }


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_a_stream_without_include_usage_gets_no_usage_chunk_but_is_counted(
    stack: tuple[TestClient, Any], tmp_path: Path, endpoint: str
) -> None:
    gateway, backend = stack
    async with openai_client(gateway) as client:
        if endpoint == "chat":
            plain = await client.chat.completions.create(
                model="mock-llama", messages=HELLO, stream=True
            )
            chunks = [chunk async for chunk in plain]
            asked = await client.chat.completions.create(
                model="mock-llama",
                messages=HELLO,
                stream=True,
                stream_options={"include_usage": True},
            )
            asked_chunks = [chunk async for chunk in asked]
        else:
            plain_c = await client.completions.create(
                model="mock-llama", prompt="count these words", stream=True
            )
            chunks = [chunk async for chunk in plain_c]  # type: ignore[misc]
            asked_c = await client.completions.create(
                model="mock-llama",
                prompt="count these words",
                stream=True,
                stream_options={"include_usage": True},
            )
            asked_chunks = [chunk async for chunk in asked_c]  # type: ignore[misc]
    # The client that did not ask sees no usage chunk: every chunk has a choice, no usage.
    assert chunks and all(chunk.choices for chunk in chunks)
    assert all(getattr(chunk, "usage", None) is None for chunk in chunks)
    # The one that asked gets it, last, with empty choices.
    assert asked_chunks[-1].choices == [] and asked_chunks[-1].usage is not None
    reported = asked_chunks[-1].usage
    # The gateway asked the backend for usage both times.
    sent = [r.body for r in backend.app[RECEIVED] if r.body.get("stream")]
    assert [body["stream_options"] for body in sent] == [{"include_usage": True}] * 2

    rows = await usage_rows_for(tmp_path, 2)
    for row in rows:
        assert (row["prompt_tokens"], row["completion_tokens"]) == (
            reported.prompt_tokens,
            reported.completion_tokens,
        )
        assert row["estimated"] == 0 and row["status"] == 200 and row["error"] == 0
        assert row["ttft_ms"] is not None and row["ttft_ms"] > 0


async def test_the_stripped_stream_is_byte_for_byte_the_stream_without_usage(
    stack: tuple[TestClient, Any], tmp_path: Path
) -> None:
    """On the wire: no ``usage`` anywhere, the same events the backend sends to a client
    that never asked, and ``[DONE]`` last."""
    gateway, _ = stack
    body = {"model": "mock-llama", "messages": HELLO, "stream": True}
    response = await gateway.post("/v1/chat/completions", json=body, headers=ADMIN)
    raw = await response.read()
    assert response.status == 200
    assert b"usage" not in raw and b'"choices": []' not in raw
    events = [e for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    contents = [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert "".join(c or "" for c in contents) == "Mock reply to: hello there, how are you"
    [row] = await usage_rows_for(tmp_path, 1)
    assert row["completion_tokens"] == "Mock reply to: hello there, how are you".count(" ") + 1


SEEN = web.AppKey("seen", list[dict[str, Any]])
USAGE_CHUNK = {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2}}


def _sse(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def _spaced_stream(usage_chunk: dict[str, Any]) -> web.Application:
    """A backend whose usage chunk and ``[DONE]`` arrive in reads of their own (written
    apart), so the gateway meets the chunk before it knows the stream ends."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        request.app[SEEN].append(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m"}
        for delta, finish in (({"content": "spaced reply"}, None), ({}, "stop")):
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            await response.write(_sse({**base, "choices": [choice]}))
        await asyncio.sleep(0.05)  # not a wait on a condition: only keeps the reads apart
        await response.write(_sse({**base, **usage_chunk}))
        await asyncio.sleep(0.05)
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app[SEEN] = []
    app.router.add_post("/v1/chat/completions", chat)
    return app


@pytest.mark.parametrize("asked", [False, True])
async def test_a_usage_chunk_in_a_read_of_its_own_is_counted_and_stripped_unless_asked(
    make_gateway: Any, start_mock: Any, tmp_path: Path, asked: bool
) -> None:
    backend = await start_mock(_spaced_stream(USAGE_CHUNK))
    gateway = await make_gateway(
        gateway_yaml(
            mock_backend_yaml("spaced", backend, models="[m]", health="{readiness: false}")
        ),
        bearer_tokens=TOKENS,
        usage=FAST,
    )
    body: dict[str, Any] = {"model": "m", "messages": HELLO, "stream": True}
    if asked:
        body["stream_options"] = {"include_usage": True}
    response = await gateway.post("/v1/chat/completions", json=body, headers=ADMIN)
    raw = await response.read()
    assert response.status == 200
    assert (b'"usage"' in raw) is asked
    assert raw.endswith(b"data: [DONE]\n\n")
    assert backend.app[SEEN][0]["stream_options"] == {"include_usage": True}
    [row] = await usage_rows_for(tmp_path, 1)
    assert (row["prompt_tokens"], row["completion_tokens"], row["estimated"]) == (11, 2, 0)


async def test_a_backend_without_usage_is_estimated_and_marked(
    make_gateway: Any, start_mock: Any, tmp_path: Path
) -> None:
    backend = await start_mock(report_usage=False)
    gateway = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend, health="{readiness: false}")),
        bearer_tokens=TOKENS,
        usage=FAST,
    )
    long_text = "word " * 400  # 2000 characters: about 500 tokens
    async with openai_client(gateway) as client:
        reply = await client.chat.completions.create(
            model="mock-llama", messages=[{"role": "user", "content": long_text}]
        )
        stream = await client.chat.completions.create(
            model="mock-llama", messages=[{"role": "user", "content": long_text}], stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert reply.usage is None and all(chunk.usage is None for chunk in chunks)
    plain, streamed = await usage_rows_for(tmp_path, 2)
    for row in (plain, streamed):
        assert row["estimated"] == 1
        assert 450 <= row["prompt_tokens"] <= 550, row  # chars / 4
        assert row["completion_tokens"] > 0, row
    body = await usage(gateway, group_by="key")
    assert body["data"] == [
        {
            "key": "default",
            "requests": 2,
            "prompt_tokens": plain["prompt_tokens"] + streamed["prompt_tokens"],
            "completion_tokens": plain["completion_tokens"] + streamed["completion_tokens"],
            "errors": 0,
        }
    ]


async def test_errors_are_rows_too(stack: tuple[TestClient, Any], tmp_path: Path) -> None:
    gateway, _ = stack
    response = await gateway.post(
        "/v1/chat/completions", json={"model": "no-such-model", "messages": HELLO}, headers=OTHER
    )
    assert response.status == 404
    [row] = await usage_rows_for(tmp_path, 1)
    assert row["status"] == 404 and row["error"] == 1 and row["key"] == "other"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (0, 0)
    body = await usage(gateway, "/v1/gateway/usage/me", OTHER)
    assert [r["errors"] for r in body["data"]] == [1]


async def test_health_and_metrics_calls_are_not_usage(
    stack: tuple[TestClient, Any], tmp_path: Path
) -> None:
    gateway, _ = stack
    await gateway.get("/healthz")
    await gateway.get("/metrics", headers=ADMIN)
    await gateway.get("/v1/models", headers=ADMIN)  # a key's request: a row
    [row] = await usage_rows_for(tmp_path, 1)
    assert row["endpoint"] == "/v1/models"


# -- the API ----------------------------------------------------------------------------------


async def _traffic(gateway: TestClient) -> None:
    """default: 2 chats on default, 1 on mock-llama; other: 1 chat on mock-llama."""
    async with openai_client(gateway) as admin, openai_client(gateway, OTHER_TOKEN) as other:
        for model, client in (
            ("default", admin),
            ("default", admin),
            ("mock-llama", admin),
            ("mock-llama", other),
        ):
            await client.chat.completions.create(model=model, messages=HELLO)


async def test_group_by_combinations_add_up(stack: tuple[TestClient, Any], tmp_path: Path) -> None:
    gateway, _ = stack
    await _traffic(gateway)
    rows = await usage_rows_for(tmp_path, 4)
    prompt, completion = rows[0]["prompt_tokens"], rows[0]["completion_tokens"]
    assert all((r["prompt_tokens"], r["completion_tokens"]) == (prompt, completion) for r in rows)
    today = day_of(time.time())

    def totals(n: int) -> dict[str, int]:
        return {
            "requests": n,
            "prompt_tokens": n * prompt,
            "completion_tokens": n * completion,
            "errors": 0,
        }

    default = await usage(gateway)  # key,model,day
    assert default["data"] == [
        {"key": "default", "model": "default", "day": today, **totals(2)},
        {"key": "default", "model": "mock-llama", "day": today, **totals(1)},
        {"key": "other", "model": "mock-llama", "day": today, **totals(1)},
    ]
    assert (await usage(gateway, group_by="key"))["data"] == [
        {"key": "default", **totals(3)},
        {"key": "other", **totals(1)},
    ]
    assert (await usage(gateway, group_by="model"))["data"] == [
        {"model": "default", **totals(2)},
        {"model": "mock-llama", **totals(2)},
    ]
    assert (await usage(gateway, group_by="day"))["data"] == [{"day": today, **totals(4)}]
    assert (await usage(gateway, group_by="model,key"))["data"] == [
        {"model": "default", "key": "default", **totals(2)},
        {"model": "mock-llama", "key": "default", **totals(1)},
        {"model": "mock-llama", "key": "other", **totals(1)},
    ]
    assert (await usage(gateway, group_by="user"))["data"] == [{"user": None, **totals(4)}]
    # A range that holds no traffic is empty, not an error.
    assert (await usage(gateway, since="2020-01-01", until="2020-01-31"))["data"] == []
    assert (await usage(gateway, since=today, until=today, group_by="day"))["data"] == [
        {"day": today, **totals(4)}
    ]

    # A non-admin key: 403 for everyone's, its own rows only from /me.
    response = await gateway.get("/v1/gateway/usage", headers=OTHER)
    assert response.status == 403
    assert (await response.json())["error"]["type"] == "permission_error"
    mine = await usage(gateway, "/v1/gateway/usage/me", OTHER)
    assert mine["data"] == [{"key": "other", "model": "mock-llama", "day": today, **totals(1)}]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("since=2026-13-01", "since"),
        ("since=yesterday", "since"),
        ("until=2026-02-30", "until"),
        ("since=2026-03-02&until=2026-03-01", "since"),
        ("since=2024-01-01&until=2026-01-01", "since"),
        ("group_by=key,colour", "group_by"),
        ("group_by=key,key", "group_by"),
        ("group_by=", "group_by"),
        ("since=2026-01-01&since=2026-01-02", "since"),
        ("limit=5", "limit"),
        ("since=%EF%BC%92026-01-01", "since"),
        ("until=0001-01-05", "until"),
        ("since=0000-01-01", "since"),
    ],
)
async def test_bad_parameters_are_a_400_envelope(
    stack: tuple[TestClient, Any], query: str, param: str
) -> None:
    gateway, _ = stack
    for path in ("/v1/gateway/usage", "/v1/gateway/usage/me"):
        response = await gateway.get(f"{path}?{query}", headers=ADMIN)
        body = await response.json()
        assert response.status == 400, body
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["param"] == param


async def test_usage_survives_a_restart(make_gateway: Any, start_mock: Any, tmp_path: Path) -> None:
    backend = await start_mock()
    config = gateway_yaml(mock_backend_yaml("mock", backend, health="{readiness: false}"))
    # A period longer than the test: only the shutdown flush can write these rows.
    first = await make_gateway(config, bearer_tokens=TOKENS, usage=UsageSettings(flush_s=3600))
    async with openai_client(first) as client:
        reply = await client.chat.completions.create(model="mock-llama", messages=HELLO)
    await first.close()
    assert reply.usage is not None
    assert len(usage_db_rows(tmp_path)) == 1  # written when the app stopped

    second = await make_gateway(config, bearer_tokens=TOKENS, usage=FAST)
    body = await usage(second, group_by="key,model")
    assert body["data"] == [
        {
            "key": "default",
            "model": "mock-llama",
            "requests": 1,
            "prompt_tokens": reply.usage.prompt_tokens,
            "completion_tokens": reply.usage.completion_tokens,
            "errors": 0,
        }
    ]


async def test_retention_prunes_old_rows_and_rollups(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    store = SqliteUsageStore(path)
    store.open()
    now = time.time()

    def row(age_days: float, request_id: str) -> tuple[Any, ...]:
        ts = now - age_days * 86_400
        # ts, key, ui_user, endpoint, backend, model, status, prompt, completion,
        # estimated, failed, duration_s, ttft_ms, request_id (store.COLUMNS)
        return (ts, "k", None, "/v1/completions", "b", "m", 200, 3, 4, 0, 0, 0.01, None, request_id)

    store.write([row(0, "req-new"), row(40, "req-40"), row(100, "req-100")])
    store.close()

    ledger = UsageLedger(
        SqliteUsageStore(path), UsageSettings(retention_days=30, rollup_days=60, flush_s=60)
    )
    await _in_thread(ledger.start)
    try:
        ids = [r["request_id"] for r in ledger.store.rows()]  # type: ignore[attr-defined]
        assert ids == ["req-new"]  # per-request rows past 30 days are gone
        days = await ledger.totals(day_of(now - 200 * 86_400), day_of(now), ("day",))
        assert [d["day"] for d in days] == [day_of(now - 40 * 86_400), day_of(now)]
    finally:
        await _in_thread(ledger.stop)


async def _in_thread(work: Any) -> Any:
    return await asyncio.to_thread(work)


# -- the request path never waits -------------------------------------------------------------


async def test_a_full_queue_drops_and_counts_and_never_blocks(tmp_path: Path) -> None:
    """The database is locked by another writer: the writer thread is stuck in SQLite's
    busy wait, yet ``add`` returns at once; past the bound rows are dropped and counted,
    and once the lock goes every row kept is written."""
    path = tmp_path / "usage.sqlite3"
    metrics = GatewayMetrics()
    ledger = UsageLedger(
        SqliteUsageStore(path), UsageSettings(flush_s=0.01, queue_max=100), metrics
    )
    await _in_thread(ledger.start)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        record = AccessRecord("req-" + "0" * 24, "POST", "/v1/chat/completions", "127.0.0.1")
        record.status, record.prompt_tokens, record.completion_tokens = 200, 5, 7
        # The writer takes what is queued and then waits on the lock; the rest fills the
        # queue behind it.
        for _ in range(1000):
            ledger.add(record, "k")
        assert ledger.queued <= ledger.queue_max
        assert ledger.dropped >= 1000 - 2 * ledger.queue_max
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    kept = 1000 - ledger.dropped
    await wait(lambda: ledger.written == kept, "the kept rows written")
    text = metrics.render().decode()
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples["gateway_usage_dropped_total"] == ledger.dropped
    assert samples["gateway_usage_queued"] == 0
    await _in_thread(ledger.stop)
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == kept
    db.close()


# -- /metrics ---------------------------------------------------------------------------------


async def test_tokens_total_by_key_model_and_kind(
    stack: tuple[TestClient, Any], tmp_path: Path
) -> None:
    gateway, _ = stack
    await _traffic(gateway)
    rows = await usage_rows_for(tmp_path, 4)
    prompt, completion = rows[0]["prompt_tokens"], rows[0]["completion_tokens"]
    response = await gateway.get("/metrics", headers=ADMIN)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(await response.text())
        for sample in family.samples
        if sample.name == "gateway_tokens_total"
    }

    def key(k: str, model: str, kind: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        return ("gateway_tokens_total", (("key", k), ("kind", kind), ("model", model)))

    assert samples == {
        key("default", "default", "prompt"): 2 * prompt,
        key("default", "default", "completion"): 2 * completion,
        key("default", "mock-llama", "prompt"): prompt,
        key("default", "mock-llama", "completion"): completion,
        key("other", "mock-llama", "prompt"): prompt,
        key("other", "mock-llama", "completion"): completion,
    }


async def test_model_labels_are_bounded_to_configured_names(
    stack: tuple[TestClient, Any],
) -> None:
    gateway, _ = stack
    ledger = gateway.server.app[USAGE]
    assert ledger._model_label("default") == "default"
    assert ledger._model_label("mock-llama") == "mock-llama"
    assert ledger._model_label("mock/mock-llama") == "mock/mock-llama"
    assert ledger._model_label("typed-by-a-client-9c1e") == "other"
    assert ledger._model_label("mock/typed-by-a-client") == "other"
    assert ledger._model_label(None) == "other"


async def test_a_file_that_is_no_database_stops_start_up_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    path.write_bytes(b"this is not a database, it is a text file long enough to be read" * 20)
    ledger = UsageLedger(SqliteUsageStore(path), FAST)
    with pytest.raises(DatabaseError, match=r"cannot open the usage ledger .*usage\.sqlite3"):
        await _in_thread(ledger.start)


class _FailingStore(SqliteUsageStore):
    """The real store, whose writes fail with ``error`` while ``failing`` is set."""

    def __init__(self, path: Path, error: Exception) -> None:
        super().__init__(path)
        self.error = error
        self.failing = True

    def write(self, rows: Any) -> None:
        if self.failing:
            raise self.error
        super().write(rows)


@pytest.mark.parametrize(
    ("message", "degraded"), [("database or disk is full", True), ("database is locked", False)]
)
async def test_a_failed_batch_is_kept_and_written_once_the_disk_works(
    tmp_path: Path, message: str, degraded: bool
) -> None:
    store = _FailingStore(tmp_path / "usage.sqlite3", sqlite3.OperationalError(message))
    monitor = StorageMonitor(tmp_path)
    ledger = UsageLedger(store, FAST, GatewayMetrics(), monitor)
    await _in_thread(ledger.start)
    try:
        for n in range(5):
            record = AccessRecord(f"req-{n:024x}", "POST", "/v1/embeddings", "127.0.0.1")
            record.status, record.prompt_tokens = 200, n
            ledger.add(record, "k")
        await wait(lambda: ledger.write_failures >= 2, "two failed batches")
        assert ledger.written == 0 and ledger.queued == 5 and ledger.dropped == 0
        # A full disk is the storage's state (/readyz degraded); a lock held elsewhere is not.
        assert monitor.state.writable is not degraded
        store.failing = False
        await wait(lambda: ledger.written == 5, "the kept batch written")
        assert [r["prompt_tokens"] for r in store.rows()] == [0, 1, 2, 3, 4]
    finally:
        await _in_thread(ledger.stop)
