"""/metrics: Prometheus text that Prometheus' parser reads, moving with traffic."""

from __future__ import annotations

import ipaddress
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .conftest import TOKEN, gateway_yaml, mock_backend_yaml, openai_client

AUTH = {"Authorization": f"Bearer {TOKEN}"}
TOOLS = """
tools:
  noop: {version: "1", parameters: {type: object}, builtin: noop}
"""


async def scrape(
    gateway: Any, **headers: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await gateway.get("/metrics", headers=headers or AUTH)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_counters_move_with_traffic(make_gateway: Any, start_mock: Any) -> None:
    backend = await start_mock()
    gateway = await make_gateway(gateway_yaml(mock_backend_yaml("mock", backend)) + TOOLS)
    before = await scrape(gateway)
    async with openai_client(gateway) as client:
        for _ in range(3):
            await client.chat.completions.create(
                model="mock-llama", messages=[{"role": "user", "content": "hi"}]
            )
        stream = await client.chat.completions.create(
            model="mock-llama", messages=[{"role": "user", "content": "a b c"}], stream=True
        )
        _ = [chunk async for chunk in stream]
    await gateway.post("/v1/tools/noop", json={"arguments": {}}, headers=AUTH)
    after = await scrape(gateway)

    chat = {"route": "/v1/chat/completions", "method": "POST", "status": "200"}
    assert (
        value(after, "gateway_http_requests_total", **chat)
        - value(before, "gateway_http_requests_total", **chat)
        == 4
    )
    histogram = {"route": "/v1/chat/completions", "method": "POST"}
    assert value(after, "gateway_http_request_duration_seconds_count", **histogram) == 4
    assert value(after, "gateway_stream_time_to_first_token_seconds_count", backend="mock") == 1
    assert value(after, "gateway_tool_invocations_total", tool="noop", ok="true") == 1
    assert value(after, "gateway_backend_in_flight", backend="mock", capability="chat") == 0
    assert value(after, "gateway_backend_limit", backend="mock", capability="chat") == 64
    [(up_labels, up)] = [
        (dict(labels), v) for (name, labels), v in after.items() if name == "gateway_backend_up"
    ]
    assert up == 1 and up_labels["backend"] == "mock"
    assert up_labels["state"] in ("ready", "unknown")  # not probed yet counts as up
    assert value(after, "gateway_config_reloads_total", result="refused") == 0


async def test_labels_stay_bounded(make_gateway: Any, start_mock: Any) -> None:
    backend = await start_mock()
    gateway = await make_gateway(gateway_yaml(mock_backend_yaml("mock", backend)))
    await gateway.get("/v1/no-such-route-7f3a", headers=AUTH)
    await gateway.post(
        "/v1/chat/completions",
        json={"model": "typed-by-a-client-9c1e", "messages": [{"role": "user", "content": "x"}]},
        headers=AUTH,
    )
    response = await gateway.get("/metrics", headers=AUTH)
    text = await response.text()
    assert "no-such-route-7f3a" not in text
    assert "typed-by-a-client-9c1e" not in text
    assert 'route="(unmatched)"' in text


async def test_needs_the_token_or_an_allowlisted_address(
    make_gateway: Any, start_mock: Any
) -> None:
    backend = await start_mock()
    closed = await make_gateway(gateway_yaml(mock_backend_yaml("mock", backend)))
    denied = await closed.get("/metrics")
    assert denied.status == 401
    assert (await denied.json())["error"]["type"] == "authentication_error"
    wrong = await closed.get("/metrics", headers={"Authorization": "Bearer nope-nope-nope-nope"})
    assert wrong.status == 401


async def test_allowlisted_address_scrapes_without_token(
    make_gateway: Any, start_mock: Any
) -> None:
    backend = await start_mock()
    gateway = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend)),
        metrics_allowlist=(ipaddress.ip_network("127.0.0.0/8"),),
    )
    response = await gateway.get("/metrics")
    assert response.status == 200
    families = {f.name for f in text_string_to_metric_families(await response.text())}
    assert {"gateway_http_requests", "gateway_backend_in_flight"} <= families
