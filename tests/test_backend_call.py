"""The stream relay's hot path: server-sent events cut out of network reads by position.

A real aiohttp ``StreamReader`` is fed the bytes a backend would send, split at every
possible point, and ``UpstreamCall`` must yield the same events each time: blank lines
between events dropped, CRLF and LF endings kept as sent, an event's size capped
however it is split, and the stream timeouts enforced by one lazy timer that never
interrupts the consumer between reads.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import StreamReader, web
from aiohttp.base_protocol import BaseProtocol

from sidecar.errors import GatewayError, UpstreamError, UpstreamTimeout
from sidecar.routing import upstream
from sidecar.routing.upstream import UpstreamCall, split_events

from .conftest import TOKEN, GatewayFactory, backend_yaml, gateway_yaml

STREAM = (
    b"\r\n"
    b'data: {"n": 1}\n\n'
    b'data: {"n": 2}\r\n\r\n'
    b"\n"
    b'event: x\ndata: {"n": 3}\n\n'
    b'data: {"error": {"message": "at /srv/model/secret.py", "type": "server_error"}}\n\n'
    b"data: [DONE]\n\n"
)
EXPECTED = [
    b'data: {"n": 1}\n\n',
    b'data: {"n": 2}\r\n\r\n',
    b'event: x\ndata: {"n": 3}\n\n',
    b'data: {"error": {"message": "at <path>", "type": "server_error", "param": null,'
    b' "code": null}}\n\n',
    b"data: [DONE]\n\n",
]


class FakeClient:
    """What ``UpstreamCall`` asks of its ``BackendClient``."""

    name = "fake"

    def __init__(self, idle_s: float) -> None:
        self.config = SimpleNamespace(timeouts=SimpleNamespace(stream_idle_s=idle_s))
        self.done = 0

    def translate(self, exc: BaseException, **_: Any) -> GatewayError:
        if isinstance(exc, TimeoutError):
            return UpstreamTimeout("stream went idle")
        return UpstreamError(type(exc).__name__)

    def _call_done(self) -> None:
        self.done += 1


def make_call(
    pieces: list[bytes], *, eof: bool = True, read_s: float = 5.0, idle_s: float = 5.0
) -> tuple[UpstreamCall, StreamReader]:
    loop = asyncio.get_running_loop()
    protocol = BaseProtocol(loop)
    protocol.transport = SimpleNamespace(  # type: ignore[assignment]
        pause_reading=lambda: None, resume_reading=lambda: None, is_closing=lambda: False
    )
    reader = StreamReader(protocol, 2**21, loop=loop)  # never pauses here
    for piece in pieces:
        reader.feed_data(piece)
    if eof:
        reader.feed_eof()
    response = SimpleNamespace(readany=reader.readany, read=reader.read, close=lambda: None)
    call = UpstreamCall(FakeClient(idle_s), response, read_s)  # type: ignore[arg-type]
    return call, reader


async def collect(call: UpstreamCall) -> list[bytes]:
    return [event async for event in call.events()]


async def test_events_are_the_same_wherever_the_reads_split_them() -> None:
    for cut in range(len(STREAM) + 1):
        call, _ = make_call([STREAM[:cut], STREAM[cut:]])
        assert await collect(call) == EXPECTED, cut


async def test_a_boundary_split_over_three_reads_is_found() -> None:
    call, _ = make_call([b"data: a\n", b"\r", b"\n", b"data: b\n", b"\n"])
    assert await collect(call) == [b"data: a\n\r\n", b"data: b\n\n"]


async def test_runs_hold_whole_events_and_split_back_into_them() -> None:
    call, _ = make_call([STREAM])
    runs = [run async for run in call.event_runs()]
    assert [event for run in runs for event in split_events(run)] == EXPECTED
    assert all(run.endswith(b"\n\n") for run in runs), runs


async def test_an_unterminated_last_event_still_counts() -> None:
    call, _ = make_call([b"data: a\n\ndata: [DONE]"])
    assert await collect(call) == [b"data: a\n\n", b"data: [DONE]\n"]


@pytest.mark.parametrize("piece", [1024, 1], ids=["1KiB-reads", "1B-reads-near-the-cap"])
async def test_an_event_over_the_cap_fails_however_it_arrives(
    monkeypatch: pytest.MonkeyPatch, piece: int
) -> None:
    cap = 4096 if piece == 1 else upstream.MAX_SSE_EVENT_BYTES
    monkeypatch.setattr(upstream, "MAX_SSE_EVENT_BYTES", cap)
    event = b"data: " + b"x" * (cap + 10) + b"\n\n"
    pieces = [event[i : i + piece] for i in range(0, len(event), piece)]
    call, _ = make_call([b"data: ok\n\n", *pieces])
    seen: list[bytes] = []
    with pytest.raises(UpstreamError) as caught:
        async for item in call.events():
            seen.append(item)
    assert caught.value.code == "upstream_event_too_large"
    assert seen == [b"data: ok\n\n"]


async def test_an_event_just_under_the_cap_passes_in_any_split(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(upstream, "MAX_SSE_EVENT_BYTES", 4096)
    event = b"data: " + b"x" * (4096 - 7) + b"\n\n"  # content 4095 bytes with its newline
    for cut in (1, 100, 4094, 4095, 4096, 4097):
        call, _ = make_call([event[:cut], event[cut:]])
        assert await collect(call) == [event], cut


async def test_a_silent_backend_times_out_as_a_gateway_error() -> None:
    call, _ = make_call([], eof=False, read_s=0.05)
    with pytest.raises(UpstreamTimeout):
        await collect(call)
    # and after the first event the idle timeout applies
    call, _ = make_call([b"data: a\n\n"], eof=False, read_s=60, idle_s=0.05)
    seen = []
    with pytest.raises(UpstreamTimeout):
        async for event in call.events():
            seen.append(event)
    assert seen == [b"data: a\n\n"]


async def test_a_slow_consumer_is_never_cut_short_by_the_read_timer() -> None:
    """Time spent between reads (writing to a slow client) is not the backend's idleness."""
    call, reader = make_call([b"data: a\n\n"], eof=False, read_s=0.02, idle_s=0.02)
    seen = []
    async for event in call.events():
        seen.append(event)
        if len(seen) == 1:
            # the consumer is busy for many idle periods; the backend's next event is
            # already there when it reads again
            reader.feed_data(b"data: [DONE]\n\n")
            reader.feed_eof()
            await asyncio.sleep(0.2)
    assert seen == [b"data: a\n\n", b"data: [DONE]\n\n"]


async def test_cancelling_a_read_is_a_cancellation_not_a_timeout() -> None:
    call, _ = make_call([], eof=False, read_s=60)
    task = asyncio.create_task(collect(call))
    for _ in range(100):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    call.close()
    assert call._client.done == 1  # type: ignore[attr-defined]


async def test_streams_reuse_the_backend_connection(
    make_gateway: GatewayFactory, aiohttp_server: Any
) -> None:
    """The relay ends the client's stream at [DONE] and waits for the backend body's end,
    so the next stream goes over the same pooled connection (no connect per stream)."""
    peers: set[Any] = set()
    client_has_it = asyncio.Event()

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        peers.add(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n')
        await response.write(b"data: [DONE]\n\n")
        # The body ends only once the client has its whole answer: the gateway must wait.
        await client_has_it.wait()
        client_has_it.clear()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app)
    backend = backend_yaml(
        "llm",
        f"http://{server.host}:{server.port}/v1",
        **{"class": "mock", "models": "[{id: m, capabilities: [chat]}]"},
        health="{readiness: false}",
    )
    client = await make_gateway(gateway_yaml(backend))
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(3):
        response = await client.post(
            "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        text = await response.text()
        assert response.status == 200 and text.endswith("data: [DONE]\n\n"), text
        client_has_it.set()
    assert len(peers) == 1, peers
