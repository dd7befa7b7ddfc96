"""The status page's model lifecycle, in real Chromium through real Caddy.

A backend with a ``process:`` block runs a fake model server (``gateway mock-backends
--kind model-server``) when asked: an admin sees it ``unloaded``, presses Load and sees
it ``loaded``, presses Unload and sees it ``unloaded`` again; a user sees the state and
no buttons. The page polls with one loop however often the tab becomes visible.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
from playwright.async_api import Browser, Request, Route

from sidecar.users.db import Database
from sidecar.users.passwords import hash_password

from ..conftest import TOKEN
from ..test_lifecycle import config, process_backend
from .browser_kit import PASSWORD, log_in, screenshot
from .stack import GatewayStack

pytestmark = pytest.mark.timeout(240)
MODEL = "#models [data-model='tiny-llama']"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    data_dir = tmp_path_factory.mktemp("browser-status")
    database = Database(data_dir / "users.sqlite3")
    database.create_user("root", hash_password(PASSWORD), is_admin=True)
    database.create_user("bea", hash_password(PASSWORD))
    database.close()
    text = config(process_backend("local", "tiny-llama", ttl_s=0))
    gateway = GatewayStack(data_dir, text, TOKEN, USER_AUTH_ENABLED="true").start()
    try:
        yield gateway
    finally:
        gateway.stop()


async def until(check: Callable[[], bool], what: str) -> None:
    for _ in range(1200):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never saw {what}")


async def test_an_admin_loads_and_unloads_a_model_and_a_user_sees_its_state(
    browser: Browser, stack: GatewayStack
) -> None:
    admin, problems = await log_in(browser, stack, "root", viewport={"width": 1100, "height": 900})
    await admin.goto(f"{stack.base_url}/ui/status")
    await admin.wait_for_selector(f"{MODEL}[data-state='unloaded']")
    card = admin.locator(MODEL)
    facts = await card.locator("dl").text_content() or ""
    assert "Backend" in facts and "Last load" in facts and "Memory" in facts
    assert await card.locator("button[data-action='unload']").is_disabled()

    user, user_problems = await log_in(browser, stack, "bea")
    await user.goto(f"{stack.base_url}/ui/status")
    await user.wait_for_selector(f"{MODEL}[data-state='unloaded']")
    assert await user.locator("#models button").count() == 0
    assert await user.locator("#models dl").count() == 0  # the state only

    await card.locator("button[data-action='load']").click()
    await admin.wait_for_selector(f"{MODEL}[data-state='loaded']", timeout=60_000)
    assert "Loaded" in (await card.locator("h2").text_content() or "")
    assert "—" not in (await card.locator("dl dd").nth(1).text_content() or "—")  # loaded since
    await screenshot(admin, "status-model-loaded")
    await user.wait_for_selector(f"{MODEL}[data-state='loaded']", timeout=30_000)
    assert await user.locator("#models button").count() == 0

    await card.locator("button[data-action='unload']").click()
    await admin.wait_for_selector(f"{MODEL}[data-state='unloaded']", timeout=60_000)
    await user.wait_for_selector(f"{MODEL}[data-state='unloaded']", timeout=30_000)
    assert await admin.locator("#models-error").is_hidden()
    assert problems == [] and user_problems == []


async def test_the_page_polls_with_one_loop_when_the_tab_shows_during_a_read(
    browser: Browser, stack: GatewayStack
) -> None:
    page, problems = await log_in(browser, stack, "bea")
    seen = {"outstanding": 0, "most": 0, "finished": 0, "routed": 0}
    release = asyncio.Event()

    def is_status(request: Request) -> bool:
        return request.url.endswith("/ui/api/status")

    def sent(request: Request) -> None:
        if is_status(request):
            seen["outstanding"] += 1
            seen["most"] = max(seen["most"], seen["outstanding"])

    def ended(request: Request) -> None:
        if is_status(request):
            seen["outstanding"] -= 1
            seen["finished"] += 1

    async def hold_the_first(route: Route) -> None:
        seen["routed"] += 1
        if seen["routed"] == 1:
            await release.wait()
        await route.continue_()

    page.on("request", sent)
    page.on("requestfinished", ended)
    page.on("requestfailed", ended)
    await page.route("**/ui/api/status", hold_the_first)
    await page.goto(f"{stack.base_url}/ui/status")
    await until(lambda: seen["routed"] == 1, "the first read")
    for _ in range(3):  # the tab "shows" while that read is under way
        await page.evaluate("() => document.dispatchEvent(new Event('visibilitychange'))")
    release.set()
    await until(lambda: seen["finished"] >= 4, "four reads")
    assert seen["most"] == 1, seen  # never two reads at once: one loop
    assert problems == []
