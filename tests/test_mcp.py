"""The tool bus over MCP (JSON-RPC 2.0 on POST /mcp): same tools, hashes and records."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import TOKEN, gateway_yaml, mock_backend_yaml

AUTH = {"Authorization": f"Bearer {TOKEN}"}
TOOLS = """
tools:
  noop:
    version: "1"
    parameters: {type: object}
    builtin: noop
  calculator:
    version: "1"
    parameters:
      type: object
      properties: {expression: {type: string}}
      required: [expression]
      additionalProperties: false
    builtin: calculator
"""


@pytest.fixture
async def gateway(make_gateway: Any, start_mock: Any) -> Any:
    backend = await start_mock()
    return await make_gateway(gateway_yaml(mock_backend_yaml("mock", backend)) + TOOLS)


async def rpc(gateway: Any, method: str, params: Any = None, **headers: str) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": 7, "method": method}
    if params is not None:
        message["params"] = params
    response = await gateway.post("/mcp", json=message, headers={**AUTH, **headers})
    assert response.status == 200
    body = await response.json()
    assert body["jsonrpc"] == "2.0" and body["id"] == 7
    return body


async def test_initialize_list_and_call_share_the_bus(gateway: Any) -> None:
    init = await rpc(gateway, "initialize", {"protocolVersion": "2025-06-18", "capabilities": {}})
    assert init["result"]["protocolVersion"] == "2025-06-18"
    assert "tools" in init["result"]["capabilities"]
    listed = await rpc(gateway, "tools/list")
    assert {tool["name"] for tool in listed["result"]["tools"]} == {"noop", "calculator"}
    assert all("inputSchema" in tool for tool in listed["result"]["tools"])

    called = await rpc(gateway, "tools/call", {"name": "noop", "arguments": {"text": "hi"}})
    result = called["result"]
    assert result["isError"] is False
    assert result["structuredContent"] == {"echo": {"text": "hi"}}
    # The DESIGN test vector: the same hash as POST /v1/tools/noop would give.
    expected = "68a4c5f7d6540b44021f651af5947368d743f5f84f38d68ec5395cd37e4950c2"
    assert result["_meta"]["request_hash"] == expected
    record = await gateway.get(f"/v1/tools/replay/{result['_meta']['replay_id']}", headers=AUTH)
    assert record.status == 200
    assert (await record.json())["token"] == "default"


async def test_failures_and_protocol_errors(gateway: Any) -> None:
    failing = await rpc(
        gateway, "tools/call", {"name": "calculator", "arguments": {"expression": "1/0"}}
    )
    assert failing["result"]["isError"] is True
    unknown = await rpc(gateway, "tools/call", {"name": "nope", "arguments": {}})
    assert unknown["error"]["code"] == -32602
    invalid = await rpc(gateway, "tools/call", {"name": "calculator", "arguments": {"x": 1}})
    assert invalid["error"]["code"] == -32602
    assert "expression" in invalid["error"]["message"]
    missing = await rpc(gateway, "no/such/method")
    assert missing["error"]["code"] == -32601
    garbage = await gateway.post("/mcp", data=b"{not json", headers=AUTH)
    assert (await garbage.json())["error"]["code"] == -32700


async def test_notifications_get_202_and_get_is_405(gateway: Any) -> None:
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    response = await gateway.post("/mcp", json=note, headers=AUTH)
    assert response.status == 202
    assert (await gateway.get("/mcp", headers=AUTH)).status == 405


async def test_needs_the_token_and_refuses_foreign_origins(gateway: Any) -> None:
    message = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    assert (await gateway.post("/mcp", json=message)).status == 401
    foreign = await gateway.post(
        "/mcp", json=message, headers={**AUTH, "Origin": "https://evil.example"}
    )
    assert foreign.status == 403
    same_host = await gateway.post(
        "/mcp", json=message, headers={**AUTH, "Origin": f"http://{gateway.host}:{gateway.port}"}
    )
    assert same_host.status == 200
