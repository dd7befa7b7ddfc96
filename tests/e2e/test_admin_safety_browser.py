"""The admin page in real Chromium through real Caddy: destructive actions ask first in a
modal dialog, Cancel and Escape change nothing, and the last admin's row cannot lose it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.async_api import Browser, Locator, Page

from sidecar.users.db import Database
from sidecar.users.passwords import hash_password, verify_password

from ..conftest import TOKEN
from .stack import ROOT, GatewayStack
from .test_browser import PASSWORD

pytestmark = pytest.mark.timeout(180)
SCREENSHOTS = ROOT / "var" / "screenshots"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    data_dir = tmp_path_factory.mktemp("admin-browser")
    database = Database(data_dir / "users.sqlite3")
    for name, admin in (("root", True), ("eve", False), ("bob", False)):
        database.create_user(name, hash_password(PASSWORD), is_admin=admin)
    database.close()
    gateway = GatewayStack(
        data_dir, (ROOT / "gateway.yaml").read_text(), TOKEN, USER_AUTH_ENABLED="true"
    ).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def stored(stack: GatewayStack) -> dict[str, tuple[bool, bool]]:
    database = Database(stack.data_dir / "users.sqlite3", create=False)
    try:
        return {user.username: (user.is_admin, user.disabled) for user in database.users()}
    finally:
        database.close()


def password_of(stack: GatewayStack, username: str) -> str:
    database = Database(stack.data_dir / "users.sqlite3", create=False)
    try:
        found = database.user_by_name(username)
        assert found is not None
        return found[1]
    finally:
        database.close()


async def admin_page(browser: Browser, stack: GatewayStack) -> tuple[Page, list[str]]:
    context = await browser.new_context(ignore_https_errors=True)
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("dialog", lambda dialog: problems.append(f"native dialog: {dialog.message}"))
    await page.goto(f"{stack.base_url}/ui/login")
    await page.fill("#username", "root")
    await page.fill("#password", PASSWORD)
    await page.click("#login")
    await page.wait_for_selector("#prompt")
    await page.goto(f"{stack.base_url}/ui/admin/users")
    await page.wait_for_selector('#users tr[data-username="eve"]')
    return page, problems


def button(page: Page, username: str, label: str) -> Locator:
    return page.locator(f'#users tr[data-username="{username}"] button', has_text=label)


async def test_destructive_actions_ask_first_in_a_dialog(
    browser: Browser, stack: GatewayStack
) -> None:
    page, problems = await admin_page(browser, stack)
    dialog = page.locator("dialog#confirm")
    assert not await dialog.is_visible()

    # Disable: the dialog asks; Cancel changes nothing.
    await button(page, "eve", "Disable").click()
    await dialog.wait_for(state="visible")
    assert await page.evaluate("document.querySelector('dialog#confirm').open")
    assert await page.locator("#confirm-title").text_content() == "Disable eve?"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / "admin-confirm.png"))
    await page.click("#confirm-cancel")
    await dialog.wait_for(state="hidden")
    assert stored(stack)["eve"] == (False, False)
    # Escape cancels too.
    await button(page, "eve", "Disable").click()
    await dialog.wait_for(state="visible")
    await page.keyboard.press("Escape")
    await dialog.wait_for(state="hidden")
    assert stored(stack)["eve"] == (False, False)
    # Confirmed: done, and the row says so.
    await button(page, "eve", "Disable").click()
    await page.click("#confirm-ok")
    await page.wait_for_selector('#users tr[data-username="eve"].is-disabled')
    assert stored(stack)["eve"] == (False, True)

    # Reset password: asked for in the dialog, never a native prompt.
    before = password_of(stack, "eve")
    await button(page, "eve", "Reset password").click()
    await dialog.wait_for(state="visible")
    await page.fill("#confirm-password", "a fresh passphrase 9")
    await page.click("#confirm-ok")
    await page.wait_for_function(
        "() => document.getElementById('admin-status').textContent.includes('Password reset')"
    )
    assert password_of(stack, "eve") != before
    assert verify_password("a fresh passphrase 9", password_of(stack, "eve"))

    # Delete: cancelled, then confirmed.
    await button(page, "bob", "Delete").click()
    await page.click("#confirm-cancel")
    await dialog.wait_for(state="hidden")
    assert "bob" in stored(stack)
    await button(page, "bob", "Delete").click()
    await page.click("#confirm-ok")
    await page.wait_for_selector('#users tr[data-username="bob"]', state="detached")
    assert "bob" not in stored(stack)

    # root is the last enabled admin: its row cannot lose admin, be disabled or deleted.
    for label in ("Remove admin", "Disable", "Delete"):
        locator = button(page, "root", label)
        assert await locator.is_disabled(), label
        assert "last enabled admin" in (await locator.get_attribute("title") or "")
    # Granting needs no confirmation. A disabled admin does not count: root stays the last.
    await button(page, "eve", "Make admin").click()
    await page.wait_for_selector('#users tr[data-username="eve"] button:has-text("Remove admin")')
    assert stored(stack)["eve"] == (True, True)
    assert await button(page, "root", "Delete").is_disabled()
    await button(page, "eve", "Enable").click()
    await page.wait_for_selector(
        '#users tr[data-username="root"] button:has-text("Delete"):enabled'
    )
    assert stored(stack)["eve"] == (True, False)
    assert problems == [], problems
