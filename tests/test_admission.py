"""Admission control: concurrency limits, bounded queues, and slots freed on every exit.

The fake backends here hold each request on an ``asyncio.Event`` so a test knows, from the
gateway's own ``/v1/gateway/status``, exactly which requests are in flight before it sends
the next one; nothing depends on how fast anything runs.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from sidecar.errors import BackendOverloaded
from sidecar.routing.admission import Admission, Slot

from .conftest import (
    TOKEN,
    chunk,
    eventually,
    gateway_yaml,
    mock_backend_yaml,
    openai_client,
    sse,
    status_of,
)

MODEL = "held-model"
POLL_ROUNDS = 1000  # x 10 ms: a bound for conditions that should hold almost at once


class HeldBackend:
    """A fake OpenAI backend whose chat requests wait for ``release`` before finishing.

    A stream sends its first chunk at once and the rest after ``release``; with
    ``endless=True`` it never finishes by itself, so its handler ends only when the
    gateway drops the upstream connection. ``log`` records ``(event, prompt)`` in order.
    """

    def __init__(self, *, endless: bool = False) -> None:
        self.release = asyncio.Event()
        self.endless = endless
        self.log: list[tuple[str, str]] = []
        self.arrived = 0
        self.ended = 0
        self.cancelled = 0
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.chat)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        self.arrived += 1
        self.log.append(("arrived", prompt))
        try:
            if body.get("stream"):
                return await self._stream(request)
            await self.release.wait()
            return web.json_response(_completion(f"done: {prompt}"))
        except asyncio.CancelledError:
            self.cancelled += 1
            self.log.append(("cancelled", prompt))
            raise
        finally:
            self.ended += 1
            self.log.append(("ended", prompt))

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(sse(chunk("alpha ", model=MODEL)))
        if self.endless:
            await asyncio.Event().wait()
        await self.release.wait()
        await response.write(sse(chunk("beta", model=MODEL)))
        await response.write(b"data: [DONE]\n\n")
        return response


def _completion(content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-held",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


async def held_gateway(
    make_gateway: Any, start_mock: Any, backend: HeldBackend, **fields: Any
) -> TestClient:
    server = await start_mock(backend.app)
    return await make_gateway(
        gateway_yaml(
            mock_backend_yaml(
                "held", server, models=f"[{MODEL}]", health="{readiness: false}", **fields
            )
        )
    )


wait_for = functools.partial(eventually, attempts=POLL_ROUNDS, poll_s=0.01)


async def wait_for_status(gateway: TestClient, what: str, **expected: int) -> dict[str, Any]:
    """Wait until the ``held`` backend's chat admission numbers include ``expected``."""
    last: dict[str, Any] = {}

    async def matches() -> bool:
        nonlocal last
        last = await status_of(gateway, "held", "chat")
        return all(last[key] == value for key, value in expected.items())

    try:
        await wait_for(matches, what)
    except AssertionError:
        raise AssertionError(f"gave up waiting for {what}: status is {last}") from None
    return last


async def post_chat(
    gateway: TestClient, prompt: str, *, token: str = TOKEN
) -> tuple[int, CIMultiDict[str], dict[str, Any]]:
    async with gateway.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": prompt}]},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        return response.status, CIMultiDict(response.headers), await response.json()


def assert_overloaded(status: int, headers: CIMultiDict[str], body: dict[str, Any]) -> None:
    assert status == 429
    assert body["error"]["code"] == "backend_overloaded"
    assert body["error"]["type"] == "rate_limit_error"
    assert int(headers["Retry-After"]) >= 1
    assert headers["X-Backend-Used"] == "held"


# -- through the HTTP API -------------------------------------------------------------------


async def test_third_stream_over_a_limit_of_two_is_rate_limited(
    make_gateway: Any, start_mock: Any
) -> None:
    backend = HeldBackend()
    gateway = await held_gateway(make_gateway, start_mock, backend, limits="{chat: 2}")

    async with openai_client(gateway) as client:

        async def stream_text(prompt: str) -> str:
            stream = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompt}], stream=True
            )
            return "".join([chunk.choices[0].delta.content or "" async for chunk in stream])

        admitted = [asyncio.create_task(stream_text(f"stream {i}")) for i in range(2)]
        try:
            await wait_for_status(gateway, "two streams in flight", in_flight=2)
            await wait_for(lambda: backend.arrived == 2, "both streams at the backend")
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "third"}], stream=True
                )
        finally:
            backend.release.set()
            texts = await asyncio.gather(*admitted, return_exceptions=True)

    assert texts == ["alpha beta", "alpha beta"]
    error = caught.value
    assert error.status_code == 429
    assert error.body["code"] == "backend_overloaded"
    assert int(error.response.headers["Retry-After"]) >= 1
    assert error.response.headers["X-Backend-Used"] == "held"
    # The rejected stream never reached the backend.
    assert backend.arrived == 2
    status = await wait_for_status(gateway, "both streams finished", in_flight=0)
    assert status["admitted"] == 2
    assert status["rejected"] == 1


async def test_streams_aborted_by_the_client_free_their_slots_and_reach_the_backend(
    make_gateway: Any, start_mock: Any
) -> None:
    backend = HeldBackend(endless=True)
    gateway = await held_gateway(make_gateway, start_mock, backend, limits="{chat: 20}")
    request = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "go"}],
        "stream": True,
    }

    async def read_first_chunk_then_hang_up() -> None:
        response = await gateway.post(
            "/v1/chat/completions", json=request, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        try:
            assert response.status == 200
            first = await response.content.readuntil(b"\n\n")
            assert first == sse(chunk("alpha ", model=MODEL))
        finally:
            response.close()  # drops the connection: the client is gone

    batch, batches = 20, 10
    for round_ in range(1, batches + 1):
        await asyncio.gather(*(read_first_chunk_then_hang_up() for _ in range(batch)))
        await wait_for_status(gateway, f"batch {round_}'s slots freed", in_flight=0, queued=0)
        await wait_for(
            lambda total=round_ * batch: backend.ended == total,
            f"the backend to see batch {round_}'s disconnects",
        )

    assert backend.arrived == batch * batches
    # The backend never finishes a stream by itself: every handler ended on a disconnect.
    assert backend.cancelled == batch * batches
    status = await status_of(gateway, "held", "chat")
    assert status["in_flight"] == 0
    assert status["admitted"] == batch * batches
    assert status["rejected"] == 0


async def test_client_gone_during_a_non_stream_request_frees_the_slot_and_cancels_upstream(
    make_gateway: Any, start_mock: Any
) -> None:
    backend = HeldBackend()
    gateway = await held_gateway(make_gateway, start_mock, backend, limits="{chat: 1}")
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "gone"}]})
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\n"
        f"Host: {gateway.host}:{gateway.port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    _, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        writer.write(head.encode() + body.encode())
        await writer.drain()
        await wait_for(lambda: backend.arrived == 1, "the request to reach the backend")
        await wait_for_status(gateway, "the request to hold its slot", in_flight=1)
    finally:
        writer.close()
        await writer.wait_closed()

    await wait_for(lambda: backend.ended == 1, "the backend handler to end")
    assert backend.log == [("arrived", "gone"), ("cancelled", "gone"), ("ended", "gone")]
    await wait_for_status(gateway, "the slot to be freed", in_flight=0)
    # The freed slot is really usable: a limit of 1 admits the next request.
    backend.release.set()
    status, headers, reply = await post_chat(gateway, "next")
    assert status == 200, reply
    assert reply["choices"][0]["message"]["content"] == "done: next"
    assert headers["X-Backend-Used"] == "held"


async def test_queue_waits_for_a_slot_and_rejects_when_full(
    make_gateway: Any, start_mock: Any
) -> None:
    backend = HeldBackend()
    gateway = await held_gateway(
        make_gateway, start_mock, backend, limits="{chat: 1}", queue="{max: 1, timeout_s: 30}"
    )
    first = asyncio.create_task(post_chat(gateway, "first"))
    second: asyncio.Task[Any] | None = None
    try:
        await wait_for_status(gateway, "the first request in flight", in_flight=1)
        second = asyncio.create_task(post_chat(gateway, "second"))
        queued = await wait_for_status(gateway, "the second request queued", queued=1)
        assert queued["in_flight"] == 1
        assert queued["queue_max"] == 1
        # A full queue turns the third away at once (well inside the 30 s queue wait).
        third = await asyncio.wait_for(post_chat(gateway, "third"), timeout=10)
        assert_overloaded(*third)
        during = await status_of(gateway, "held", "chat")
        assert (during["in_flight"], during["queued"], during["rejected"]) == (1, 1, 1)
        assert backend.log == [("arrived", "first")]
    finally:
        backend.release.set()
        results = await asyncio.gather(first, *([second] if second else []), return_exceptions=True)

    for (status, _, reply), prompt in zip(results, ["first", "second"], strict=True):
        assert status == 200, reply
        assert reply["choices"][0]["message"]["content"] == f"done: {prompt}"
    # The queued request went upstream only after the first one had finished.
    assert backend.log == [
        ("arrived", "first"),
        ("ended", "first"),
        ("arrived", "second"),
        ("ended", "second"),
    ]
    after = await wait_for_status(gateway, "both requests finished", in_flight=0, queued=0)
    assert (after["admitted"], after["rejected"]) == (2, 1)


async def test_queued_request_that_waits_too_long_is_rejected(
    make_gateway: Any, start_mock: Any
) -> None:
    backend = HeldBackend()
    gateway = await held_gateway(
        make_gateway, start_mock, backend, limits="{chat: 1}", queue="{max: 1, timeout_s: 0.05}"
    )
    first = asyncio.create_task(post_chat(gateway, "first"))
    try:
        await wait_for_status(gateway, "the first request in flight", in_flight=1)
        assert_overloaded(*await post_chat(gateway, "second"))
        during = await status_of(gateway, "held", "chat")
        assert (during["in_flight"], during["queued"], during["rejected"]) == (1, 0, 1)
    finally:
        backend.release.set()
        status, _, reply = await first

    assert status == 200, reply
    assert [prompt for event, prompt in backend.log if event == "arrived"] == ["first"]
    after = await wait_for_status(gateway, "the first request finished", in_flight=0)
    assert (after["admitted"], after["rejected"]) == (1, 1)


async def test_rejection_names_the_backend_and_model(make_gateway: Any, start_mock: Any) -> None:
    backend = HeldBackend()
    gateway = await held_gateway(make_gateway, start_mock, backend, limits="{chat: 1}")
    first = asyncio.create_task(post_chat(gateway, "first"))
    try:
        await wait_for_status(gateway, "the first request in flight", in_flight=1)
        status, headers, body = await post_chat(gateway, "second")
    finally:
        backend.release.set()
        await first
    assert_overloaded(status, headers, body)
    assert headers["X-Model-Used"] == MODEL
    assert headers["X-Request-Id"].startswith("req-")


# -- Admission on its own -----------------------------------------------------------------


async def test_release_is_idempotent() -> None:
    admission = Admission("test", limit=2)
    first, second = admission.try_acquire(), admission.try_acquire()
    assert isinstance(first, Slot) and isinstance(second, Slot)
    first.release()
    first.release()
    assert first.released
    assert admission.in_flight == 1
    third = admission.try_acquire()
    assert third is not None
    # Still at the limit of 2: the double release did not free a second slot.
    assert admission.try_acquire() is None
    with pytest.raises(BackendOverloaded):
        await admission.acquire()
    assert admission.stats().rejected == 1
    second.release()
    third.release()
    assert admission.in_flight == 0


async def test_cancelled_queued_waiter_does_not_leak_a_slot() -> None:
    admission = Admission("test", limit=1, queue_max=2, queue_timeout_s=30)
    held = await admission.acquire()
    waiter = asyncio.create_task(admission.acquire())
    await wait_for(lambda: admission.queued == 1, "the waiter to queue")
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert admission.queued == 0
    held.release()
    assert admission.in_flight == 0
    again = admission.try_acquire()
    assert again is not None
    again.release()
    assert admission.stats().in_flight == 0


async def test_waiter_cancelled_just_as_it_is_granted_hands_the_slot_back() -> None:
    admission = Admission("test", limit=1, queue_max=2, queue_timeout_s=30)
    held = await admission.acquire()
    waiter = asyncio.create_task(admission.acquire())
    await wait_for(lambda: admission.queued == 1, "the waiter to queue")
    held.release()  # grants the slot to the waiter ...
    waiter.cancel()  # ... which is cancelled before it can run
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (admission.in_flight, admission.queued) == (0, 0)
    assert admission.try_acquire() is not None


async def test_queue_timeout_does_not_leak_a_slot() -> None:
    admission = Admission("test", limit=1, queue_max=1, queue_timeout_s=0.01)
    held = await admission.acquire()
    with pytest.raises(BackendOverloaded) as caught:
        await admission.acquire()
    assert caught.value.status == 429
    assert caught.value.retry_after is not None and caught.value.retry_after >= 1
    assert (admission.in_flight, admission.queued, admission.rejected) == (1, 0, 1)
    held.release()
    assert admission.in_flight == 0


async def test_waiters_are_served_first_come_first_served() -> None:
    admission = Admission("test", limit=1, queue_max=3, queue_timeout_s=30)
    held = await admission.acquire()
    order: list[str] = []

    async def take_turn(name: str) -> None:
        slot = await admission.acquire()
        order.append(name)
        slot.release()

    waiters = []
    for count, name in enumerate(["a", "b", "c"], start=1):
        waiters.append(asyncio.create_task(take_turn(name)))
        await wait_for(lambda count=count: admission.queued == count, f"waiter {name} to queue")
    # A newcomer does not jump the queue while others wait, even via try_acquire.
    assert admission.try_acquire() is None
    held.release()
    await asyncio.gather(*waiters)
    assert order == ["a", "b", "c"]
    assert (admission.in_flight, admission.queued) == (0, 0)


async def test_a_full_queue_rejects_without_waiting() -> None:
    admission = Admission("test", limit=1, queue_max=1, queue_timeout_s=30)
    held = await admission.acquire()
    waiter = asyncio.create_task(admission.acquire())
    await wait_for(lambda: admission.queued == 1, "the waiter to queue")
    with pytest.raises(BackendOverloaded):
        await admission.acquire()
    assert (admission.queued, admission.rejected) == (1, 1)
    held.release()
    (await waiter).release()
    assert admission.in_flight == 0


async def test_raising_the_limit_wakes_waiters() -> None:
    admission = Admission("test", limit=1, queue_max=5, queue_timeout_s=30)
    held = await admission.acquire()
    waiters = [asyncio.create_task(admission.acquire()) for _ in range(3)]
    await wait_for(lambda: admission.queued == 3, "three waiters to queue")
    admission.reconfigure(3, 5, 30)
    granted = await asyncio.gather(*waiters[:2])
    assert (admission.in_flight, admission.queued) == (3, 1)
    assert not waiters[2].done()
    held.release()
    granted.append(await waiters[2])
    assert admission.in_flight == 3
    for slot in granted:
        slot.release()
    assert (admission.in_flight, admission.queued) == (0, 0)
    assert admission.stats().admitted == 4
