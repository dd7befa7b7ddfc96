"""The API keys page in a real headless Chromium, through real Caddy, accounts on.

An admin makes a key (shown once, copied with the Copy button), edits its limits, and
revokes it; the openai SDK through Caddy checks what each step means for a client.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from playwright.async_api import Browser

from sidecar.users.db import Database
from sidecar.users.passwords import hash_password

from ..conftest import TOKEN
from .browser_kit import PASSWORD
from .stack import ROOT, GatewayStack

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    data_dir = tmp_path_factory.mktemp("keys-browser")
    database = Database(data_dir / "users.sqlite3")
    database.create_user("root", hash_password(PASSWORD), is_admin=True)
    database.close()
    gateway = GatewayStack(
        data_dir, (ROOT / "gateway.yaml").read_text(), TOKEN, USER_AUTH_ENABLED="true"
    ).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def sdk(stack: GatewayStack, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{stack.base_url}/v1",
        api_key=key,
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(verify=stack.ssl_context()),
    )


async def test_an_admin_makes_copies_edits_and_revokes_a_key(
    browser: Browser,
    stack: GatewayStack,
) -> None:
    context = await browser.new_context(ignore_https_errors=True)
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack.base_url)
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    page.on("dialog", lambda dialog: dialog.accept())
    await page.goto(f"{stack.base_url}/ui/login")
    await page.fill("#username", "root")
    await page.fill("#password", PASSWORD)
    await page.click("#login")
    await page.wait_for_url(f"{stack.base_url}/ui**")
    await page.wait_for_selector("#prompt")  # logged in: the chat page
    await page.goto(f"{stack.base_url}/ui/admin/keys")

    await page.fill("#key-name", "editor")
    await page.fill("#key-models", "mock-llama")
    await page.check("#endpoint-chat")
    await page.fill("#key-rpm", "5")
    await page.click("#key-submit")
    await page.wait_for_selector("#new-secret:not([hidden])")
    secret = (await page.text_content("#new-secret-value") or "").strip()
    assert secret.startswith("gw_") and len(secret) >= 40
    await page.click("#copy-secret")
    await page.wait_for_function("() => document.getElementById('keys-status').textContent")
    assert await page.evaluate("navigator.clipboard.readText()") == secret
    row = page.locator('#keys tbody tr[data-name="editor"]')
    assert secret[:7] in (await row.text_content() or "")
    assert "5/min" in (await row.text_content() or "")

    async with sdk(stack, secret) as client:
        assert [m.id async for m in client.models.list()] == ["mock-llama"]
        with pytest.raises(openai.PermissionDeniedError):
            await client.embeddings.create(model="mock-embed", input="x")

    await page.click("#hide-secret")
    assert await page.text_content("#new-secret-value") == ""
    await page.reload()
    assert secret not in await page.content()  # shown once

    await row.locator("button", has_text="Edit").click()
    await page.fill("#key-rpm", "7")
    await page.click("#key-submit")
    await page.wait_for_function(
        "() => document.querySelector('#keys tbody tr[data-name=\"editor\"]')"
        ".textContent.includes('7/min')"
    )
    async with sdk(stack, secret) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="mock-llama", messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.headers["x-ratelimit-limit-requests"] == "7"

    await row.locator("button", has_text="Revoke").click()
    await page.wait_for_function(
        "() => document.querySelector('#keys tbody tr[data-name=\"editor\"]')"
        ".textContent.includes('revoked')"
    )
    async with sdk(stack, secret) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
    assert problems == []
    await context.close()
