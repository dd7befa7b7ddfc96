"""Fixes from a review: model process groups a killed gateway left, pass-through Responses
ids owned by their token, bounded translated Responses streams, and limit windows that do
not outlive their key."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.responses import events as events_module
from sidecar.responses.events import MAX_TOOL_CALLS
from sidecar.typedefs import KEYS, SETTINGS

from .conftest import (
    OTHER_TOKEN,
    ROOT,
    chunk,
    eventually,
    free_port,
    gateway_on,
    openai_client,
    sse,
    status_of,
)
from .test_keys import CHAT, bearer, gw, restartable
from .test_lifecycle import ADMIN, alive, chat, config, serve_env, server_cmd

__all__ = ["gw", "restartable"]  # fixtures from test_keys
pytestmark = pytest.mark.timeout(120)
wait_for = functools.partial(eventually, attempts=600, poll_s=0.05)


# -- 1. a model process's own children do not outlive a kill -9 of the gateway ----------------


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


async def _serve(tmp_path: Path, name: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as log:
        serve = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar", "serve", cwd=ROOT, env=env, stdout=log, stderr=log
        )
    base = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
    async with aiohttp.ClientSession() as session:

        async def listening() -> bool:
            assert serve.returncode is None, log_path.read_text()
            try:
                async with session.get(f"{base}/healthz") as response:
                    return response.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await wait_for(listening, f"{name} to listen")
    return serve


async def test_kill_9_of_the_gateway_then_a_restart_kills_the_model_process_children(
    tmp_path: Path,
) -> None:
    # A shell wrapper (the direct child) that starts a grandchild and the model server.
    server = " ".join(json.dumps(arg) for arg in server_cmd("model-a"))
    wrapper = ["/bin/sh", "-c", f"sleep 4242 & {server}; wait"]
    spec = {"cmd": wrapper}
    backend = "\n".join(
        [
            "  a:",
            "    url: http://127.0.0.1:{port}/v1",
            "    class: mock",
            "    models: [{id: model-a, capabilities: [chat, completions]}]",
            "    queue: {max: 32, timeout_s: 60}",
            f"    process: {json.dumps(spec)}",
        ]
    )
    config_path = tmp_path / "gateway.yaml"
    config_path.write_text(config(backend))
    port = free_port()
    env = serve_env(tmp_path, port, config_path)
    base = f"http://127.0.0.1:{port}"
    processes: list[asyncio.subprocess.Process] = []
    members: list[int] = []
    try:
        first = await _serve(tmp_path, "first", env)
        processes.append(first)
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{base}/v1/chat/completions", json=chat("model-a"), headers=ADMIN
            ) as response:
                assert response.status == 200, await response.text()
            async with session.get(f"{base}/v1/gateway/models", headers=ADMIN) as response:
                pid = (await response.json())["data"][0]["pid"]
        members = [member for member in _group_members(pid) if member != pid]
        assert len(members) >= 2, members  # the sleep and the model server
        first.kill()  # SIGKILL: no cleanup runs in the gateway
        await first.wait()
        await eventually(lambda: not alive(pid), "the direct child to die", attempts=100)
        assert all(alive(member) for member in members)  # the kernel spared the grandchildren
        second = await _serve(tmp_path, "second", env)
        processes.append(second)
        # Gone within 5 s of the second start.
        await eventually(
            lambda: not any(alive(member) for member in members),
            "the grandchildren to die",
            attempts=100,
        )
        assert "left over" in (tmp_path / "second.log").read_text()
        assert not list((tmp_path / "var" / "models").glob("*.group"))
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        for member in members:
            if alive(member):
                os.kill(member, signal.SIGKILL)


# -- 2. a native backend's response ids belong to the token that made them --------------------


def _native_reply(response_id: str, model: str, text: str) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "model": model,
        "output": [
            {
                "id": "msg_n",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }


async def test_a_passed_through_response_is_continued_only_by_its_token(
    make_gateway: Any, start_mock: Any
) -> None:
    received: list[dict[str, Any]] = []

    async def native(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        received.append(body)
        reply = _native_reply(f"resp_native{len(received)}", body["model"], "native")
        if not body.get("stream"):
            return web.json_response(reply)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        events = [
            {"type": "response.created", "response": {**reply, "status": "in_progress"}},
            {"type": "response.completed", "response": reply},
        ]
        for number, event in enumerate(events):
            event["sequence_number"] = number
            await response.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
        return response

    gateway = await gateway_on(
        make_gateway,
        start_mock,
        native,
        capabilities="[chat, responses]",
        models="[{id: native-model, capabilities: [chat, responses]}]",
    )
    async with openai_client(gateway) as mine, openai_client(gateway, OTHER_TOKEN) as theirs:
        made = await mine.responses.create(model="native-model", input="private")
        stream = await mine.responses.create(model="native-model", input="more", stream=True)
        events = [event async for event in stream]
        streamed = events[0].response.id  # type: ignore[union-attr]
        assert (made.id, streamed) == ("resp_native1", "resp_native2")
        asked = len(received)
        for response_id in (made.id, streamed):
            with pytest.raises(openai.NotFoundError):
                await theirs.responses.create(
                    model="native-model", input="steal", previous_response_id=response_id
                )
        assert len(received) == asked  # the backend was never asked
        # Their 404 is the one an unknown id gets.
        headers = {"Authorization": f"Bearer {OTHER_TOKEN}"}
        bodies = []
        for response_id in (made.id, "resp_unknown"):
            response = await gateway.post(
                "/v1/responses",
                json={"model": "native-model", "input": "x", "previous_response_id": response_id},
                headers=headers,
            )
            assert response.status == 404
            bodies.append(await response.json())
        assert bodies[0] == bodies[1]
        assert bodies[0]["error"]["param"] == "previous_response_id"
        # The owner continues both.
        for response_id in (made.id, streamed):
            follow = await mine.responses.create(
                model="native-model", input="next", previous_response_id=response_id
            )
            assert follow.output_text == "native"
            assert received[-1]["previous_response_id"] == response_id


# -- 3. a translated Responses stream holds a bounded answer -----------------------------------


async def _hostile_stream(make_gateway: Any, start_mock: Any, chunks: Any) -> list[Any]:
    """The Responses events a client gets from a chat backend streaming ``chunks``."""

    async def hostile(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for piece in chunks:
                await response.write(piece)
            await response.write(sse(chunk(finish="stop")) + b"data: [DONE]\n\n")
        except (ConnectionResetError, RuntimeError):
            pass  # the gateway hung up on it
        return response

    gateway = await gateway_on(make_gateway, start_mock, hostile)
    async with openai_client(gateway) as client:
        stream = await client.responses.create(model="fake", input="go", stream=True)
        events = [event async for event in stream]
    assert (await status_of(gateway, "fake", "chat"))["in_flight"] == 0
    return events


async def test_a_stream_with_too_many_tool_calls_fails(make_gateway: Any, start_mock: Any) -> None:
    calls = (
        sse(
            chunk(
                delta={
                    "tool_calls": [
                        {
                            "index": index,
                            "id": f"call_{index}",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ]
                }
            )
        )
        for index in range(MAX_TOOL_CALLS + 72)
    )
    events = await _hostile_stream(make_gateway, start_mock, calls)
    types = [event.type for event in events]
    assert types[-2:] == ["error", "response.failed"]
    assert types.count("response.output_item.added") == MAX_TOOL_CALLS
    assert "tool calls" in events[-2].message
    assert [event.sequence_number for event in events] == list(range(len(events)))


async def test_a_stream_longer_than_the_cap_fails(
    make_gateway: Any, start_mock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_module, "MAX_HELD_BYTES", 1024 * 1024)  # 64 MiB in production
    piece = "x" * (64 * 1024)
    text = (sse(chunk(piece)) for _ in range(100))  # 6.25 MiB in all
    events = await _hostile_stream(make_gateway, start_mock, text)
    types = [event.type for event in events]
    assert types[-2:] == ["error", "response.failed"]
    held = sum(len(event.delta) for event in events if event.type == "response.output_text.delta")
    assert held <= 1024 * 1024
    assert "larger than 1 MiB" in events[-2].message


# -- 4. a key made again under a revoked key's name starts with fresh limits -------------------


def _window_names(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT name FROM limit_windows")}


async def test_a_key_made_again_under_a_revoked_name_does_not_inherit_its_counts(
    gw: TestClient,
) -> None:
    keys = gw.server.app[KEYS]
    path = gw.server.app[SETTINGS].keys_db_path
    _, secret = await keys.create("reborn", {"rpm": 2})
    for _ in range(2):
        assert (await gw.post("/v1/chat/completions", json=CHAT, headers=bearer(secret))).ok
    refused = await gw.post("/v1/chat/completions", json=CHAT, headers=bearer(secret))
    assert refused.status == 429
    await wait_for(lambda: "reborn" in _window_names(path), "the window to be saved")
    assert await keys.revoke("reborn")
    assert "reborn" not in _window_names(path)
    _, again = await keys.create("reborn", {"rpm": 2})
    fresh = await gw.post("/v1/chat/completions", json=CHAT, headers=bearer(again))
    assert fresh.status == 200, await fresh.text()
    assert fresh.headers["x-ratelimit-remaining-requests"] == "1"


async def test_the_start_deletes_windows_of_revoked_missing_or_replaced_keys(
    restartable: Callable[[], Awaitable[TestClient]],
) -> None:
    gw = await restartable()
    path = gw.server.app[SETTINGS].keys_db_path
    _, kept = await gw.server.app[KEYS].create("kept", {"rpm": 5})
    await gw.server.app[KEYS].create("replaced", {"rpm": 5})
    assert (await gw.post("/v1/chat/completions", json=CHAT, headers=bearer(kept))).ok
    await wait_for(lambda: "kept" in _window_names(path), "the window to be saved")
    await gw.close()
    # Windows written behind the gateway's back: a name with no key, one revoked
    # elsewhere, and one saved before its key was made.
    state = json.dumps({"day": 0, "requests": [], "tokens": [], "day_tokens": 0})
    with sqlite3.connect(path) as db:
        for name, updated_at in (("ghost", time.time()), ("replaced", 1.0)):
            db.execute(
                "INSERT OR REPLACE INTO limit_windows (name, state, updated_at) VALUES (?, ?, ?)",
                (name, state, updated_at),
            )
    assert _window_names(path) == {"kept", "ghost", "replaced"}
    gw = await restartable()
    assert _window_names(path) == {"kept"}
    second = await gw.post("/v1/chat/completions", json=CHAT, headers=bearer(kept))
    assert second.headers["x-ratelimit-remaining-requests"] == "3"  # its count survived
