"""Named API keys through the app factory: scopes, limits, changes while running, restarts.

Every gateway comes from ``create_app`` in front of a real fake backend on loopback; keys
are made through the running app's own key service, or by ``gateway keys`` in a
subprocess against the same data directory (the way an admin does it). Waits are on
conditions, bounded; the only time bound is the one the feature promises (a revoked key
stops within a second of the command returning), checked with room for a loaded box.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.app import create_app
from sidecar.auth.keys import KeyDatabase
from sidecar.auth.limits import LocalLimiter, Window, duration
from sidecar.typedefs import ACCESS, KEYS, SETTINGS

from .conftest import (
    TOKEN,
    eventually,
    gateway_cli,
    gateway_yaml,
    make_settings,
    mock_backend_yaml,
    openai_client,
)

wait = functools.partial(eventually, attempts=400, poll_s=0.025)
CHAT = {"model": "mock-llama", "messages": [{"role": "user", "content": "hi"}]}
ALIASES = "default: {backend: mock, model: mock-llama}\nsmall: {backend: mock, model: mock-llama}"


def config(backend: TestServer, extra: str = "") -> str:
    return gateway_yaml(mock_backend_yaml("mock", backend), aliases=ALIASES) + extra


async def make_key(client: TestClient, name: str, **values: Any) -> str:
    _, secret = await client.server.app[KEYS].create(name, values)
    return secret


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
async def gw(make_gateway: Any, start_mock: Any) -> TestClient:
    backend = await start_mock()
    client: TestClient = await make_gateway(config(backend))
    return client


# -- scopes -------------------------------------------------------------------------------


async def test_a_key_limited_to_one_model_gets_403_for_another_and_does_not_list_it(
    gw: TestClient,
) -> None:
    secret = await make_key(gw, "alice", models=["mock-llama"])
    async with openai_client(gw, secret) as sdk, openai_client(gw) as unrestricted:
        await _one_model(sdk, unrestricted)


async def _one_model(sdk: openai.AsyncOpenAI, unrestricted: openai.AsyncOpenAI) -> None:
    reply = await sdk.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert reply.choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError) as refused:
        await sdk.chat.completions.create(model="default", messages=CHAT["messages"])
    body = refused.value.body
    assert isinstance(body, dict)
    assert body["type"] == "permission_error" and body["code"] == "model_not_allowed"
    assert "'default'" in body["message"] and body["param"] == "model"
    with pytest.raises(openai.PermissionDeniedError):
        await sdk.embeddings.create(model="mock-embed", input="x")

    listed = [model.id async for model in sdk.models.list()]
    assert listed == ["mock-llama"]
    everything = [model.id async for model in unrestricted.models.list()]
    assert set(everything) == {"mock-llama", "mock-embed", "default", "small"}


async def test_model_globs_match_aliases_and_backend_prefixed_names(gw: TestClient) -> None:
    secret = await make_key(gw, "globs", models=["mock-*", "s?all"])
    async with openai_client(gw, secret) as sdk:
        assert {m.id async for m in sdk.models.list()} == {"mock-llama", "mock-embed", "small"}
        await sdk.chat.completions.create(model="small", messages=CHAT["messages"])
        await sdk.chat.completions.create(model="mock/mock-llama", messages=CHAT["messages"])
        with pytest.raises(openai.PermissionDeniedError):
            await sdk.chat.completions.create(model="default", messages=CHAT["messages"])


async def test_endpoint_scopes_refuse_other_endpoints_and_admin_routes(gw: TestClient) -> None:
    chat_only = await make_key(gw, "chatter", endpoints=["chat"])
    admin = await make_key(gw, "boss", endpoints=["chat"], admin=True)

    ok = await gw.post("/v1/chat/completions", json=CHAT, headers=bearer(chat_only))
    assert ok.status == 200, await ok.text()
    models = await gw.get("/v1/models", headers=bearer(chat_only))  # open to every key
    assert models.status == 200
    for method, path, body in (
        ("POST", "/v1/embeddings", {"model": "mock-embed", "input": "x"}),
        ("POST", "/v1/completions", {"model": "mock-llama", "prompt": "x"}),
        ("GET", "/v1/tools", None),
        ("GET", "/v1/gateway/status", None),
        ("GET", "/metrics", None),
    ):
        refused = await gw.request(method, path, json=body, headers=bearer(chat_only))
        assert refused.status == 403, (path, await refused.text())
        error = (await refused.json())["error"]
        assert error["type"] == "permission_error" and error["code"] == "endpoint_not_allowed"
        assert "chatter" in error["message"]
    # An unknown route stays a 404 for a scoped key.
    missing = await gw.get("/v1/nothing-here", headers=bearer(chat_only))
    assert missing.status == 404
    # An admin key reaches the admin endpoints whatever its list says.
    status = await gw.get("/v1/gateway/status", headers=bearer(admin))
    assert status.status == 200
    metrics = await gw.get("/metrics", headers=bearer(admin))
    assert metrics.status == 200


async def test_tools_scope_filters_the_list_and_refuses_the_call(
    make_gateway: Any, start_mock: Any
) -> None:
    backend = await start_mock()
    tools = 'tools: {"echo": {"builtin": "noop"}, "other": {"builtin": "noop"}}\n'
    gw = await make_gateway(config(backend, tools))
    secret = await make_key(gw, "tooler", tools=["echo"])

    listed = await gw.get("/v1/tools", headers=bearer(secret))
    assert [tool["name"] for tool in (await listed.json())["data"]] == ["echo"]
    called = await gw.post("/v1/tools/echo", json={"arguments": {}}, headers=bearer(secret))
    assert called.status == 200, await called.text()
    refused = await gw.post("/v1/tools/other", json={"arguments": {}}, headers=bearer(secret))
    assert refused.status == 403
    assert "other" in (await refused.json())["error"]["message"]
    rpc = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    over_mcp = await gw.post("/mcp", json=rpc, headers=bearer(secret))
    assert [t["name"] for t in (await over_mcp.json())["result"]["tools"]] == ["echo"]
    # Static tokens are unrestricted keys: they see both.
    everything = await gw.get("/v1/tools", headers=bearer(TOKEN))
    assert {t["name"] for t in (await everything.json())["data"]} == {"echo", "other"}


# -- limits ---------------------------------------------------------------------------------


async def test_rpm_3_gives_a_rate_limit_error_on_the_4th_call_with_the_headers(
    gw: TestClient,
) -> None:
    secret = await make_key(gw, "limited", rpm=3)
    async with openai_client(gw, secret) as sdk, openai_client(gw) as unrestricted:
        await _rpm_3(sdk, unrestricted)


async def _rpm_3(sdk: openai.AsyncOpenAI, unrestricted: openai.AsyncOpenAI) -> None:
    remaining = []
    for _ in range(3):
        raw = await sdk.chat.completions.with_raw_response.create(**CHAT)  # type: ignore[call-overload]
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(raw.headers["x-ratelimit-remaining-requests"])
        assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
        assert "x-ratelimit-limit-tokens" not in raw.headers  # no token limit set
    assert remaining == ["2", "1", "0"]
    with pytest.raises(openai.RateLimitError) as limited:
        await sdk.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    response = limited.value.response
    assert response.status_code == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["x-ratelimit-limit-requests"] == "3"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    body = limited.value.body
    assert isinstance(body, dict)
    assert body["type"] == "rate_limit_error" and body["code"] == "requests_limit_exceeded"
    # Other callers are not affected.
    other = await unrestricted.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert other.choices


async def test_a_stream_carries_the_rate_limit_headers(gw: TestClient) -> None:
    secret = await make_key(gw, "streamer", rpm=10)
    response = await gw.post(
        "/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer(secret)
    )
    assert response.status == 200
    assert response.headers["x-ratelimit-limit-requests"] == "10"
    assert response.headers["x-ratelimit-remaining-requests"] == "9"
    assert (await response.text()).rstrip().endswith("data: [DONE]")


async def test_an_error_answer_carries_the_headers_too(gw: TestClient) -> None:
    secret = await make_key(gw, "erring", rpm=10)
    response = await gw.post(
        "/v1/chat/completions", json={"model": "nope", "messages": []}, headers=bearer(secret)
    )
    assert response.status in (400, 404)
    assert response.headers["x-ratelimit-remaining-requests"] == "9"


def _ledger_stand_in(tokens: tuple[int, int]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Sets the request's usage on the access record, as the usage ledger does."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        record = request[ACCESS]
        record.prompt_tokens, record.completion_tokens = tokens
        return response

    return middleware


async def test_tokens_per_minute_charge_the_usage_and_refuse_once_used_up(
    aiohttp_client: Any, start_mock: Any, tmp_path: Path
) -> None:
    backend = await start_mock()
    (tmp_path / "gateway.yaml").write_text(config(backend))
    app = create_app(make_settings(tmp_path / "gateway.yaml", tmp_path / "var"))
    app.middlewares.append(_ledger_stand_in((7, 5)))  # 12 tokens a request
    gw = await aiohttp_client(app)
    secret = await make_key(gw, "tokens", tpm=20, tokens_per_day=1000)

    first = await gw.post("/v1/chat/completions", json=CHAT, headers=bearer(secret))
    assert first.status == 200
    assert first.headers["x-ratelimit-limit-tokens"] == "20"
    assert first.headers["x-ratelimit-remaining-tokens"] == "20"  # charged when it ends
    second = await gw.post("/v1/chat/completions", json=CHAT, headers=bearer(secret))
    assert second.status == 200
    assert second.headers["x-ratelimit-remaining-tokens"] == "8"
    third = await gw.post("/v1/chat/completions", json=CHAT, headers=bearer(secret))
    assert third.status == 429
    error = (await third.json())["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "tokens_limit_exceeded"
    assert third.headers["x-ratelimit-remaining-tokens"] == "0"
    assert 1 <= int(third.headers["Retry-After"]) <= 60


async def test_tokens_per_day_refuse_until_the_next_utc_day(
    aiohttp_client: Any, start_mock: Any, tmp_path: Path
) -> None:
    backend = await start_mock()
    (tmp_path / "gateway.yaml").write_text(config(backend))
    app = create_app(make_settings(tmp_path / "gateway.yaml", tmp_path / "var"))
    app.middlewares.append(_ledger_stand_in((30, 0)))
    gw = await aiohttp_client(app)
    secret = await make_key(gw, "daily", tokens_per_day=50)
    for _ in range(2):
        assert (await gw.post("/v1/chat/completions", json=CHAT, headers=bearer(secret))).ok
    refused = await gw.post("/v1/chat/completions", json=CHAT, headers=bearer(secret))
    assert refused.status == 429
    assert (await refused.json())["error"]["code"] == "daily_tokens_limit_exceeded"
    until_midnight = 86400 - time.time() % 86400
    assert abs(int(refused.headers["Retry-After"]) - until_midnight) <= 5
    assert refused.headers["x-ratelimit-limit-tokens"] == "50"


async def slow_gateway(
    make_gateway: Any, start_mock: Any, release: asyncio.Event
) -> tuple[TestClient, asyncio.Event]:
    """A gateway whose backend ``slow`` answers a chat only once ``release`` is set; the
    event returned is set when a request has reached it."""
    started = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        started.set()
        await release.wait()
        return web.json_response({"id": "x", "object": "chat.completion", "choices": []})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", slow)
    server = await start_mock(app)
    gw: TestClient = await make_gateway(
        gateway_yaml(
            mock_backend_yaml("slow", server, models="[slow]", health="{readiness: false}")
        )
    )
    return gw, started


async def test_concurrency_limit_refuses_a_second_request_while_one_runs(
    make_gateway: Any, start_mock: Any, release: asyncio.Event
) -> None:
    gw, started = await slow_gateway(make_gateway, start_mock, release)
    secret = await make_key(gw, "one-at-a-time", concurrency=1)
    body = {"model": "slow", "messages": CHAT["messages"]}
    first = asyncio.create_task(gw.post("/v1/chat/completions", json=body, headers=bearer(secret)))
    await asyncio.wait_for(started.wait(), 30)
    second = await gw.post("/v1/chat/completions", json=body, headers=bearer(secret))
    assert second.status == 429
    assert (await second.json())["error"]["code"] == "concurrency_limit_exceeded"
    assert second.headers["Retry-After"] == "1"
    release.set()
    assert (await first).status == 200
    third = await gw.post("/v1/chat/completions", json=body, headers=bearer(secret))
    assert third.status == 200  # the slot came back


async def test_a_client_that_goes_away_gives_its_concurrency_slot_back(
    make_gateway: Any, start_mock: Any, release: asyncio.Event
) -> None:
    gw, started = await slow_gateway(make_gateway, start_mock, release)
    secret = await make_key(gw, "leaver", concurrency=1)
    limiter = gw.server.app[KEYS].limiter
    assert isinstance(limiter, LocalLimiter)
    body = {"model": "slow", "messages": CHAT["messages"]}
    leaving = asyncio.create_task(
        gw.post("/v1/chat/completions", json=body, headers=bearer(secret))
    )
    await asyncio.wait_for(started.wait(), 30)
    assert limiter.in_flight("leaver") == 1
    leaving.cancel()  # the client hangs up mid-request
    await asyncio.gather(leaving, return_exceptions=True)
    await wait(lambda: limiter.in_flight("leaver") == 0, "the slot to come back")


# -- changes while running, and restarts ---------------------------------------------------


def cli_env(client: TestClient) -> dict[str, str]:
    data_dir = client.server.app[SETTINGS].data_dir
    return {"PATH": os.environ.get("PATH", ""), "GATEWAY_DATA_DIR": str(data_dir)}


async def test_keys_made_revoked_and_rotated_by_the_cli_apply_within_a_second(
    gw: TestClient,
) -> None:
    env = cli_env(gw)
    made = await asyncio.to_thread(
        gateway_cli, "keys", "create", "carol", "--rpm", "100", "--models", "mock-*", env=env
    )
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("gw_") and "\n" not in secret and len(secret) >= 40
    assert "carol" in made.stderr and secret not in made.stderr

    async def status_with(key: str) -> int:
        response = await gw.get("/v1/models", headers=bearer(key))
        return response.status

    await wait(lambda: _is(status_with(secret), 200), "the new key to work")

    rotated = await asyncio.to_thread(gateway_cli, "keys", "rotate", "carol", env=env)
    assert rotated.returncode == 0, rotated.stderr
    new_secret = rotated.stdout.strip()
    assert new_secret.startswith("gw_") and new_secret != secret
    await wait(lambda: _is(status_with(new_secret), 200), "the rotated key to work")
    assert await status_with(secret) == 401  # the old one stopped at once

    revoked = await asyncio.to_thread(gateway_cli, "keys", "revoke", "carol", env=env)
    assert revoked.returncode == 0, revoked.stderr
    done = time.monotonic()
    # Promised: within a second (a 0.5 s poll); 2 s allows for a loaded box.
    await eventually(
        lambda: _is(status_with(new_secret), 401), "revocation", attempts=80, poll_s=0.025
    )
    assert time.monotonic() - done < 2.0
    unauthorized = await gw.get("/v1/models", headers=bearer(new_secret))
    assert unauthorized.headers["WWW-Authenticate"].startswith("Bearer")

    listed = await asyncio.to_thread(gateway_cli, "keys", "list", "--json", env=env)
    assert listed.returncode == 0
    (carol,) = json.loads(listed.stdout)["data"]
    assert carol["status"] == "revoked" and carol["prefix"] == new_secret[:7]
    assert new_secret not in listed.stdout and secret not in listed.stdout


async def _is(status: Awaitable[int], expected: int) -> bool:
    return await status == expected


async def test_cli_refuses_bad_input_without_a_traceback(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "GATEWAY_DATA_DIR": str(tmp_path)}
    cases = [
        ("keys", "create", "bad name!"),
        ("keys", "create", "x", "--endpoints", "chat,nope"),
        ("keys", "create", "x", "--rpm", "0"),
    ]
    for args in cases:
        done = await asyncio.to_thread(gateway_cli, *args, env=env)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stdout == "" and "Traceback" not in done.stderr
    assert (
        await asyncio.to_thread(gateway_cli, "keys", "revoke", "ghost", env=env)
    ).returncode == 1
    env["GATEWAY_BEARER_TOKEN"] = TOKEN
    clash = await asyncio.to_thread(gateway_cli, "keys", "create", "default", env=env)
    assert clash.returncode == 2 and "static token" in clash.stderr


async def test_keys_are_stored_hashed_with_only_a_prefix_in_clear(gw: TestClient) -> None:
    secret = await make_key(gw, "hashed")
    path = gw.server.app[SETTINGS].keys_db_path
    assert path.stat().st_mode & 0o077 == 0
    stored = b"".join(p.read_bytes() for p in path.parent.glob("keys.sqlite3*"))
    assert secret.encode() not in stored
    assert secret[7:].encode() not in stored and secret[7:20].encode() not in stored
    with sqlite3.connect(path) as db:
        prefix, digest = db.execute("SELECT prefix, digest FROM keys").fetchone()
    assert prefix == secret[:7] and len(digest) == 64


async def test_expired_and_static_name_clashing_keys_do_not_authenticate(
    gw: TestClient,
) -> None:
    path = gw.server.app[SETTINGS].keys_db_path
    database = KeyDatabase(path)
    try:
        _, clash = database.create("other", {})  # "other" is a static token's name
        _, expiring = database.create("brief", {"expires_days": 1})
        database._db.execute("UPDATE keys SET expires_at = ? WHERE name = 'brief'", (time.time(),))
    finally:
        database.close()
    await gw.server.app[KEYS].reload()
    assert (await gw.get("/v1/models", headers=bearer(clash))).status == 401
    assert (await gw.get("/v1/models", headers=bearer(expiring))).status == 401
    assert (await gw.get("/v1/models", headers=bearer(TOKEN))).status == 200


@pytest.fixture
async def restartable(
    start_mock: Any, tmp_path: Path
) -> AsyncIterator[Callable[[], Awaitable[TestClient]]]:
    """Start a gateway on one data directory as often as a test likes (one at a time)."""
    backend = await start_mock()
    (tmp_path / "gateway.yaml").write_text(config(backend))
    running: list[TestClient] = []

    async def start() -> TestClient:
        if running:
            await running.pop().close()
        client = TestClient(
            TestServer(create_app(make_settings(tmp_path / "gateway.yaml", tmp_path / "var")))
        )
        await client.start_server()
        running.append(client)
        return client

    yield start
    if running:
        await running.pop().close()


async def test_a_restart_keeps_keys_scopes_and_the_minutes_count(
    restartable: Callable[[], Awaitable[TestClient]],
) -> None:
    gw = await restartable()
    secret = await make_key(gw, "durable", rpm=3, models=["mock-llama"])
    for _ in range(2):
        assert (await gw.post("/v1/chat/completions", json=CHAT, headers=bearer(secret))).ok

    gw = await restartable()  # shutdown saves the windows; start-up reads them
    scoped = await gw.post(  # the scope came back too (and a refused call counts)
        "/v1/chat/completions", json={**CHAT, "model": "default"}, headers=bearer(secret)
    )
    assert scoped.status == 403
    assert scoped.headers["x-ratelimit-remaining-requests"] == "0"
    fourth = await gw.post("/v1/chat/completions", json=CHAT, headers=bearer(secret))
    assert fourth.status == 429


async def test_windows_are_saved_while_running_not_only_at_shutdown(gw: TestClient) -> None:
    secret = await make_key(gw, "flushed", rpm=5)
    assert (await gw.post("/v1/chat/completions", json=CHAT, headers=bearer(secret))).ok
    path = gw.server.app[SETTINGS].keys_db_path

    def saved() -> int:
        with sqlite3.connect(path) as db:
            row = db.execute("SELECT state FROM limit_windows WHERE name = 'flushed'").fetchone()
        return sum(b[1] for b in json.loads(row[0])["requests"]) if row else 0

    await wait(lambda: saved() == 1, "the window to be saved")


# -- the limiter and the header format on their own -----------------------------------------


def test_reset_durations_are_written_as_openai_writes_them() -> None:
    assert duration(0.012) == "12ms"
    assert duration(1) == "1s"
    assert duration(1.5) == "1.5s"
    assert duration(360) == "6m0s"
    assert duration(59.9994) == "59.999s"
    assert duration(3600) == "1h0m0s"
    assert duration(-3) == "0ms"


def test_the_window_slides_per_second_and_survives_a_round_trip() -> None:
    now = [1_000_000.0]
    limiter = LocalLimiter(clock=lambda: now[0])
    from sidecar.auth.keys import ApiKey
    from sidecar.errors import RateLimited

    key = ApiKey("k", rpm=2)
    first = limiter.admit(key)
    limiter.done(first, 0)
    now[0] += 30
    limiter.done(limiter.admit(key), 0)
    with pytest.raises(RateLimited) as refused:
        limiter.admit(key)
    assert refused.value.retry_after == 30  # when the first request leaves the window
    state = limiter.windows()
    assert set(state) == {"k"} and limiter.windows() == {}  # only what changed
    restored = LocalLimiter(clock=lambda: now[0])
    restored.restore(json.loads(json.dumps(state)))
    with pytest.raises(RateLimited):
        restored.admit(key)
    now[0] += 31
    restored.admit(key)  # the first left the window
    assert Window.from_state({"requests": "junk", "day": "x"}).requests_sum == 0


async def test_a_model_glob_does_not_cross_a_slash_to_another_backends_model(
    make_gateway: Any, start_mock: Any
) -> None:
    """``llama*`` names models, not ``llama-box/<anything>``: a backend whose name matches
    the glob does not open every model it serves."""
    backend = await start_mock()
    gateway: TestClient = await make_gateway(
        gateway_yaml(
            mock_backend_yaml("llama-box", backend),
            aliases="team/small: {backend: llama-box, model: mock-llama}",
        )
    )
    secret = await make_key(gateway, "llamas-only", models=["llama*", "small"])
    for model in ("llama-box/mock-llama", "mock-llama", "team/small"):
        refused = await gateway.post(
            "/v1/chat/completions", json={**CHAT, "model": model}, headers=bearer(secret)
        )
        assert refused.status == 403, (model, await refused.text())
        assert (await refused.json())["error"]["code"] == "model_not_allowed"
    listed = await gateway.get("/v1/models", headers=bearer(secret))
    assert [m["id"] for m in (await listed.json())["data"]] == []
    retrieved = await gateway.get("/v1/models/llama-box/mock-llama", headers=bearer(secret))
    assert retrieved.status == 404
    # The alias's own name opens it; the backend's name with a scoped model part does too.
    alias_key = await make_key(gateway, "team", models=["team/*"])
    ok = await gateway.post(
        "/v1/chat/completions", json={**CHAT, "model": "team/small"}, headers=bearer(alias_key)
    )
    assert ok.status == 200, await ok.text()
    model_key = await make_key(gateway, "by-model", models=["mock-*"])
    ok = await gateway.post(
        "/v1/chat/completions",
        json={**CHAT, "model": "llama-box/mock-llama"},
        headers=bearer(model_key),
    )
    assert ok.status == 200, await ok.text()


async def test_only_admin_keys_and_static_tokens_reach_the_admin_endpoints(
    gw: TestClient,
) -> None:
    """A named key without ``--admin`` (scoped to models only, or not at all) may not read
    /metrics (every key's token counts) or /v1/gateway/status."""
    plain = await make_key(gw, "plain")
    models_only = await make_key(gw, "intern", models=["mock-*"])
    admin = await make_key(gw, "ops", admin=True)
    for secret in (plain, models_only):
        for path in ("/metrics", "/v1/gateway/status"):
            refused = await gw.get(path, headers=bearer(secret))
            assert refused.status == 403, (path, await refused.text())
        own = await gw.get("/v1/gateway/usage/me", headers=bearer(secret))
        assert own.status == 200, await own.text()
        chat = await gw.post("/v1/chat/completions", json=CHAT, headers=bearer(secret))
        assert chat.status == 200, await chat.text()
    for secret in (admin, TOKEN):
        for path in ("/metrics", "/v1/gateway/status"):
            allowed = await gw.get(path, headers=bearer(secret))
            assert allowed.status == 200, (path, await allowed.text())


async def test_rerank_under_either_name_is_the_embeddings_endpoint(gw: TestClient) -> None:
    embed_only = await make_key(gw, "retriever", endpoints=["embeddings"])
    for path in ("/v1/rerank", "/v1/reranking"):
        answer = await gw.post(
            path,
            json={"model": "mock-llama", "query": "q", "documents": ["a"]},
            headers=bearer(embed_only),
        )
        assert answer.status != 403, (path, await answer.text())


async def test_a_raw_ollama_generate_needs_the_completions_endpoint(gw: TestClient) -> None:
    """A raw prompt goes to the backend's text completions, so a chat-only key may not
    send one (it may not call /v1/completions either); a templated one is chat."""
    chat_only = await make_key(gw, "chat-only", endpoints=["chat"])
    body = {"model": "mock-llama", "prompt": "hi", "stream": False}
    templated = await gw.post("/api/generate", json=body, headers=bearer(chat_only))
    assert templated.status == 200, await templated.text()
    raw = await gw.post("/api/generate", json={**body, "raw": True}, headers=bearer(chat_only))
    assert raw.status == 403, await raw.text()
    assert "completions" in (await raw.json())["error"]
    both = await make_key(gw, "both", endpoints=["chat", "completions"])
    raw = await gw.post("/api/generate", json={**body, "raw": True}, headers=bearer(both))
    assert raw.status == 200, await raw.text()
