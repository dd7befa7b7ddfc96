"""The UI in a real headless Chromium, through real Caddy, with user accounts on.

Playwright drives Debian's Chromium (``executable_path``; no browser download). The fake
model server streams a chunk every 200 ms: with the 20 ms of ``gateway up``'s own fake,
chunks arrived together on a loaded machine and a reply seemed to appear all at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page

from sidecar.users.db import Database
from sidecar.users.passwords import hash_password

from ..conftest import TOKEN
from .browser_kit import PASSWORD, MockProcess
from .stack import ROOT, GatewayStack

pytestmark = pytest.mark.timeout(180)
# Playwright's own waits: generous for a loaded 2-core box, within the test's timeout.
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    data_dir = tmp_path_factory.mktemp("browser")
    database = Database(data_dir / "users.sqlite3")
    database.create_user("alice", hash_password(PASSWORD))
    database.close()
    model = MockProcess(chunk_delay_ms=200, chunks=4).start()
    try:
        gateway = GatewayStack(
            data_dir,
            (ROOT / "gateway.yaml").read_text(),
            TOKEN,
            USER_AUTH_ENABLED="true",
            MOCK_BACKEND_URL=model.url,
        ).start()
        try:
            yield gateway
        finally:
            gateway.stop()
    finally:
        model.stop()


async def logged_in(browser: Browser, stack: GatewayStack) -> tuple[Page, list[str]]:
    context = await browser.new_context(ignore_https_errors=True)
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    await page.goto(f"{stack.base_url}/ui")
    assert "/ui/login" in page.url  # no session: the login page first
    await page.fill("#username", "alice")
    await page.fill("#password", PASSWORD)
    await page.click("#login")
    await page.wait_for_url(f"{stack.base_url}/ui**")
    await page.wait_for_selector("#prompt")
    return page, problems


async def test_login_chat_streams_and_survives_a_reload(
    browser: Browser, stack: GatewayStack
) -> None:
    page, problems = await logged_in(browser, stack)
    # Record every text the reply bubble shows while it streams in.
    await page.evaluate(
        """() => {
            window.seen = [];
            new MutationObserver(() => {
                const bubbles = document.querySelectorAll('#messages .message.assistant');
                const last = bubbles[bubbles.length - 1];
                const text = last && last.textContent;
                if (text && !window.seen.includes(text)) window.seen.push(text);
            }).observe(document.querySelector('#messages'),
                       {childList: true, subtree: true, characterData: true});
        }"""
    )
    await page.fill("#prompt", "one two three four five six seven eight")
    await page.click("#send")
    expected = "Mock reply to: one two three four five six seven eight"
    await page.wait_for_function(
        "text => [...document.querySelectorAll('#messages .message.assistant')]"
        ".some(node => node.textContent === text)",
        arg=expected,
        timeout=WAIT_MS,
    )
    seen: list[str] = await page.evaluate("window.seen")
    growing = [text for text in seen if text and expected.startswith(text)]
    assert len(growing) >= 3, seen  # the reply grew in steps, not all at once
    assert growing[-1] == expected

    # The whole text shows before the reply is stored: the stream's "done" event comes
    # once it is, and gives the bubble its message id. A reload before that may open the
    # conversation without the reply (a loaded machine once did, every time).
    await page.wait_for_function(
        """() => {
            const bubbles = document.querySelectorAll('#messages .message.assistant');
            const last = bubbles[bubbles.length - 1];
            return last && !last.classList.contains('streaming')
                && last.closest('.turn').dataset.messageId !== undefined;
        }""",
        timeout=WAIT_MS,
    )
    await page.reload()
    await page.wait_for_function(
        "text => [...document.querySelectorAll('#messages .message.assistant')]"
        ".some(node => node.textContent === text)",
        arg=expected,
        timeout=WAIT_MS,
    )
    assert await page.locator("#messages .message.user").first.text_content() == (
        "one two three four five six seven eight"
    )
    titles = await page.locator("#conversations button[data-id]").all_text_contents()
    assert any("one two three" in title for title in titles)
    assert problems == []


async def test_model_html_is_shown_as_text(browser: Browser, stack: GatewayStack) -> None:
    page, problems = await logged_in(browser, stack)
    await page.click("#new-conversation")
    await page.fill("#prompt", "<img src=x onerror=\"document.title='pwned'\">")
    await page.click("#send")
    await page.wait_for_function(
        "() => [...document.querySelectorAll('#messages .message.assistant')]"
        ".some(node => node.textContent.startsWith('Mock reply to: <img'))"
    )
    assert await page.locator("#messages img").count() == 0
    assert await page.title() != "pwned"
    assert problems == []


async def test_music_playground_plays_a_wav(browser: Browser, stack: GatewayStack) -> None:
    page, problems = await logged_in(browser, stack)
    await page.goto(f"{stack.base_url}/ui/music")
    await page.fill("#music-prompt", "a calm piano loop")
    await page.fill("#music-tags", "piano,calm")
    await page.fill("#music-duration", "3")
    await page.click("#generate-music")
    audio = page.locator("#music-result audio")
    await audio.wait_for(timeout=30_000)
    source = await audio.get_attribute("src")
    assert source is not None and source.startswith("/ui/heartmula/audio/")
    # The browser itself loads and decodes it: a WAV of the asked length.
    duration = await page.evaluate(
        """() => new Promise((resolve, reject) => {
            const audio = document.querySelector('#music-result audio');
            if (audio.readyState >= 1) return resolve(audio.duration);
            audio.addEventListener('loadedmetadata', () => resolve(audio.duration));
            audio.addEventListener('error', () => reject(new Error('audio failed')));
            audio.load();
        })"""
    )
    assert 2.5 < duration < 3.5
    header: dict[str, Any] = await page.evaluate(
        """async src => {
            const response = await fetch(src);
            const bytes = new Uint8Array(await response.arrayBuffer());
            return {type: response.headers.get('content-type'),
                    magic: String.fromCharCode(...bytes.slice(0, 4), ...bytes.slice(8, 12))};
        }""",
        source,
    )
    assert header == {"type": "audio/wav", "magic": "RIFFWAVE"}
    # The song is kept with its description and shown again after a reload.
    await page.reload()
    kept = page.locator("#music-history li", has_text="a calm piano loop").first
    await kept.wait_for()
    assert await kept.locator("audio").get_attribute("src") == source
    assert problems == []


async def test_images_playground_shows_an_image(browser: Browser, stack: GatewayStack) -> None:
    page, problems = await logged_in(browser, stack)
    await page.goto(f"{stack.base_url}/ui/images")
    await page.fill("#image-prompt", "a red fox in the snow")
    await page.select_option("#image-size", "256x256")
    await page.click("#generate-image")
    image = page.locator("#image-results img").first
    await image.wait_for(timeout=30_000)
    await page.wait_for_function(
        "() => { const img = document.querySelector('#image-results img');"
        " return img && img.complete && img.naturalWidth > 0; }"
    )
    assert await image.evaluate("img => img.naturalWidth") == 256
    # Kept with its prompt: shown again after a reload, until it is deleted.
    await page.reload()
    kept = page.locator("#image-history figure", has_text="a red fox in the snow")
    await kept.first.wait_for()
    await page.wait_for_function(
        "() => { const img = document.querySelector('#image-history img');"
        " return img && img.complete && img.naturalWidth > 0; }"
    )
    count = await kept.count()
    page.on("dialog", lambda dialog: dialog.accept())
    await kept.first.locator("button.delete-item").click()
    await page.wait_for_function(
        "n => [...document.querySelectorAll('#image-history figure')]"
        ".filter(f => f.textContent.includes('a red fox in the snow')).length === n",
        arg=count - 1,
    )
    await page.reload()
    await page.wait_for_selector("#image-history[data-loaded]", state="attached")
    assert await kept.count() == count - 1
    assert problems == []
