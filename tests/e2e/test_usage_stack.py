"""The usage ledger through real Caddy and real processes (``gateway up``): the openai SDK
sees no usage chunk it did not ask for, the rows match what the backend reported, they
survive a restart of the whole stack, and ``/ui/usage`` draws them in Chromium under the
UI's CSP.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.async_api import async_playwright

from sidecar.users.db import Database
from sidecar.users.passwords import hash_password

from ..conftest import TOKEN
from .browser_kit import CHROMIUM, CHROMIUM_ARGS, PASSWORD, log_in
from .stack import ROOT, GatewayStack

pytestmark = pytest.mark.timeout(240)
MESSAGES = [{"role": "user", "content": "how many tokens is this"}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    data_dir = tmp_path_factory.mktemp("usage")
    database = Database(data_dir / "users.sqlite3")
    database.create_user("alice", hash_password(PASSWORD), is_admin=True)
    database.close()
    with GatewayStack(
        data_dir,
        (ROOT / "gateway.yaml").read_text(),
        TOKEN,
        USER_AUTH_ENABLED="true",
        GATEWAY_ADMIN_TOKENS="default",
        GATEWAY_USAGE_FLUSH_S="0.1",
    ) as gateway:
        yield gateway


async def usage_rows(stack: GatewayStack, requests: int) -> list[dict[str, Any]]:
    """``/v1/gateway/usage`` through Caddy, once it counts ``requests`` requests."""
    async with httpx.AsyncClient(verify=stack.ssl_context()) as client:
        for _ in range(300):
            response = await client.get(
                f"{stack.base_url}/v1/gateway/usage",
                params={"group_by": "key,model"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert response.status_code == 200, response.text
            data: list[dict[str, Any]] = response.json()["data"]
            if sum(row["requests"] for row in data) >= requests:
                return data
            await asyncio.sleep(0.05)
    raise AssertionError(f"gave up waiting for {requests} requests in the usage")


async def test_sdk_streams_and_usage_rows_through_caddy_survive_a_restart(
    stack: GatewayStack,
) -> None:
    async with stack.openai() as client:
        plain = await client.chat.completions.create(model="mock-llama", messages=MESSAGES)
        stream = await client.chat.completions.create(
            model="mock-llama", messages=MESSAGES, stream=True
        )
        chunks = [chunk async for chunk in stream]
        asked = await client.chat.completions.create(
            model="mock-llama",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        asked_chunks = [chunk async for chunk in asked]
    assert plain.usage is not None
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)
    assert asked_chunks[-1].choices == [] and asked_chunks[-1].usage == plain.usage
    expected = [
        {
            "key": "default",
            "model": "mock-llama",
            "requests": 3,
            "prompt_tokens": 3 * plain.usage.prompt_tokens,
            "completion_tokens": 3 * plain.usage.completion_tokens,
            "errors": 0,
        }
    ]
    assert await usage_rows(stack, 3) == expected

    assert stack.stop() == 0
    stack.start()
    assert await usage_rows(stack, 3) == expected
    database = sqlite3.connect(stack.data_dir / "usage.sqlite3")
    try:
        estimated = database.execute("SELECT SUM(estimated) FROM requests").fetchone()[0]
    finally:
        database.close()
    assert estimated == 0


async def test_the_usage_page_draws_the_chart_and_tables(stack: GatewayStack) -> None:
    async with stack.openai() as client:  # an API key's call, for the per-key table
        await client.chat.completions.create(model="mock-llama", messages=MESSAGES)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page, problems = await log_in(browser, stack, "alice")
            await page.fill("#prompt", "count this chat")
            await page.click("#send")
            await page.wait_for_function(
                "() => [...document.querySelectorAll('#messages .message.assistant')]"
                ".some(node => node.textContent === 'Mock reply to: count this chat')"
            )
            await page.click("nav a[href='/ui/usage']")
            await page.wait_for_selector("#usage-chart svg")
            # The ledger writes within a fraction of a second: show again until alice is in.
            for _ in range(100):
                users = await page.locator("#usage-users tbody th").all_text_contents()
                if "alice" in users:
                    break
                await page.click("#usage-show")
                await page.wait_for_timeout(100)
            assert "alice" in users
            bars = page.locator("#usage-chart svg g.day rect")
            assert await bars.count() >= 2  # prompt and completion of today
            heights = [float(await bar.get_attribute("height") or 0) for bar in await bars.all()]
            assert max(heights) > 0
            keys = await page.locator("#usage-keys tbody th").all_text_contents()
            assert "default" in keys  # the API key's calls: an admin sees every key
            assert problems == []  # no script error, no CSP violation
        finally:
            await browser.close()
