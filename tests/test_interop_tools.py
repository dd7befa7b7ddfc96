"""Current tool shapes pass through chat completions untouched: ``custom`` tools, the
``allowed_tools`` choice, a ``custom`` named choice. Only what routing needs is checked."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sidecar.mock_backends.openai_server import RECEIVED

from .conftest import openai_client

FUNCTION = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}
CUSTOM = {"type": "custom", "custom": {"name": "code_exec", "description": "runs code"}}


@pytest.mark.parametrize(
    ("tools", "tool_choice"),
    [
        ([CUSTOM], "auto"),
        ([FUNCTION, CUSTOM], {"type": "custom", "custom": {"name": "code_exec"}}),
        (
            [FUNCTION, CUSTOM],
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "auto",
                    "tools": [{"type": "function", "function": {"name": "get_weather"}}],
                },
            },
        ),
    ],
    ids=["custom-tool", "custom-choice", "allowed-tools"],
)
async def test_current_tool_shapes_pass_through(
    mock_gateway: tuple[TestClient, TestServer], tools: list[Any], tool_choice: Any
) -> None:
    gateway, backend = mock_gateway
    async with openai_client(gateway) as client:
        reply = await client.chat.completions.create(
            model="mock-llama",
            messages=[{"role": "user", "content": "hello"}],
            tools=tools,
            tool_choice=tool_choice,
        )
    assert reply.choices[0].message.content == "Mock reply to: hello"
    sent = backend.app[RECEIVED][-1].body
    assert sent["tools"] == tools
    assert sent["tool_choice"] == tool_choice


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("tools", [{"function": {"name": "x"}}], "tools[0]"),
        ("tools", ["custom"], "tools[0]"),
        ("tool_choice", {"allowed_tools": {}}, "tool_choice"),
        ("tool_choice", 3, "tool_choice"),
    ],
)
async def test_what_routing_needs_is_still_checked(
    mock_gateway: tuple[TestClient, TestServer],
    auth: dict[str, str],
    field: str,
    value: Any,
    param: str,
) -> None:
    gateway, _ = mock_gateway
    body = {"model": "mock-llama", "messages": [{"role": "user", "content": "x"}], field: value}
    response = await gateway.post("/v1/chat/completions", json=body, headers=auth)
    assert response.status == 400
    assert (await response.json())["error"]["param"] == param
