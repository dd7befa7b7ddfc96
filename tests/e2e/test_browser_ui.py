"""The chat UI people use every day, in real Chromium through real Caddy.

Rendered markdown (and a corpus of hostile replies that must stay inert), stopping a
reply, regenerating and editing, the model picker, the status page when a backend dies,
and the phone layout. Two fake model servers run as their own processes: ``mock`` sends
a reply in 4 chunks 150 ms apart, ``slow`` in up to 400 chunks 250 ms apart (so a test
can press Stop mid-reply). A reply is chosen by starting the message with
``mock-reply:``. Screenshots go to ``var/screenshots/``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page

from sidecar.users.db import Database
from sidecar.users.passwords import hash_password

from ..conftest import TOKEN
from .browser_kit import (
    PASSWORD,
    MockProcess,
    in_flight,
    log_in,
    new_page,
    screenshot,
)
from .stack import ROOT, GatewayStack

pytestmark = pytest.mark.timeout(240)
REPLY_DONE = (
    "() => { const t = document.querySelectorAll('#messages .turn.assistant');"
    " const last = t[t.length - 1];"
    " return !!last && !last.querySelector('.message.streaming')"
    " && !document.querySelector('#stop:not([hidden])'); }"
)
MARKDOWN = """# Release notes
## What *changed*

A paragraph with **bold**, *italic*, ~~struck~~ and `inline code`, a
[link](https://example.com/docs "Docs") and a [relative one](/ui/status).

- first item
- second item
  - nested item
- third item

1. one
2. two

> a quoted line with **emphasis**

| Name | Score |
|:-----|------:|
| ada | `10` |
| bob | 7 |

```python
print("hello <world>")
```
"""
# Each hostile piece would set window.__pwned (or the title) if it were ever parsed as HTML
# or followed as a link.
HOSTILE = [
    """Raw tags: <script>window.__pwned = 'script'</script>
<img src=x onerror="window.__pwned = 'img'"> <svg onload="window.__pwned = 'svg'"></svg>
<iframe src="javascript:window.__pwned = 'iframe'"></iframe> <b onmouseover="window.__pwned=1">b</b>
<a href="javascript:window.__pwned = 'a'">raw anchor</a> <style>body{display:none}</style>

[js link](javascript:window.__pwned='link') [spaced]( javascript:window.__pwned='spaced')
[tabbed](java\tscript:window.__pwned='tab') [upper](JAVASCRIPT:window.__pwned='upper')
[data link](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==) [vb](vbscript:msgbox(1))
![img md](javascript:window.__pwned='imgmd') ![data img](data:image/svg+xml,<svg onload=alert(1)>)
**<img src=y onerror="window.__pwned='bold'">** | <script>x</script> | cell |""",
    """```html
<script>window.__pwned = 'fenced'</script>
<img src=x onerror="window.__pwned = 'fenced img'">
```
`<img src=z onerror="window.__pwned='inline code'">`""",
    """Unterminated fence follows.
```js
<img src=x onerror="window.__pwned = 'open fence'">
[x](javascript:window.__pwned='in fence')
</code></pre><script>window.__pwned='break out'</script>""",
]
HOSTILE_DOM_CHECK = """() => {
  const root = document.querySelector('#messages');
  const bad = [];
  for (const node of root.querySelectorAll('*')) {
    const tag = node.tagName.toLowerCase();
    if (['script', 'img', 'iframe', 'svg', 'object', 'embed', 'style', 'link', 'meta',
         'form', 'input', 'video', 'audio', 'base'].includes(tag)) bad.push('element ' + tag);
    for (const attr of node.attributes) {
      if (/^on/i.test(attr.name) || attr.name === 'style' || attr.name === 'srcdoc')
        bad.push(tag + ' attribute ' + attr.name);
    }
    if (tag === 'a' && !/^https?:/.test(node.href)) bad.push('link ' + node.getAttribute('href'));
  }
  return bad;
}"""


@pytest.fixture(scope="module")
def models() -> Iterator[dict[str, MockProcess]]:
    running = {"mock": MockProcess(chunk_delay_ms=150, chunks=4).start()}
    try:
        running["slow"] = MockProcess(chunk_delay_ms=250, chunks=400).start()
        yield running  # a test may replace one (it restarts what it killed)
    finally:
        for model in running.values():
            model.stop()


def _config(models: dict[str, MockProcess]) -> str:
    return f"""
version: 1
backends:
  mock:
    url: {models["mock"].url}
    class: mock
    health: {{liveness: /healthz, readiness: /readyz, interval_s: 1}}
    models:
      - {{id: mock-llama, capabilities: [chat, completions]}}
      - {{id: mock-embed, capabilities: [embeddings]}}
  slow:
    url: {models["slow"].url}
    class: mock
    limits: {{chat: 2}}
    health: {{liveness: /healthz, readiness: /readyz, interval_s: 1}}
    models:
      - {{id: mock-llama, capabilities: [chat]}}
aliases:
  default: {{backend: mock, model: mock-llama}}
  slow-llama: {{backend: slow, model: mock-llama}}
"""


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, models: dict[str, MockProcess]
) -> Iterator[GatewayStack]:
    data_dir = tmp_path_factory.mktemp("browser-ui")
    database = Database(data_dir / "users.sqlite3")
    database.create_user("root", hash_password(PASSWORD), is_admin=True)
    database.create_user("bea", hash_password(PASSWORD))
    database.close()
    gateway = GatewayStack(
        data_dir,
        _config(models),
        TOKEN,
        USER_AUTH_ENABLED="true",
        MOCK_BACKEND_URL=models["mock"].url,
    ).start()
    try:
        yield gateway
    finally:
        gateway.stop()


async def ask(page: Page, text: str) -> None:
    """Type a message, press Enter and wait until its reply has finished streaming."""
    turns = await page.locator("#messages .turn.assistant").count()
    await page.fill("#prompt", text)
    await page.press("#prompt", "Enter")
    await page.wait_for_function(
        "n => document.querySelectorAll('#messages .turn.assistant').length > n", arg=turns
    )
    await page.wait_for_function(REPLY_DONE)


async def eventually(check: Any, attempts: int = 200, poll_s: float = 0.1) -> None:
    for _ in range(attempts):
        if await asyncio.to_thread(check):
            return
        await asyncio.sleep(poll_s)
    raise AssertionError("the condition never held")


async def expect_markdown(page: Page, index: int = -1) -> None:
    replies = page.locator("#messages .turn.assistant .message")
    reply = replies.last if index == -1 else replies.nth(index)
    assert await reply.locator("h1").text_content() == "Release notes"
    assert await reply.locator("h2 em").text_content() == "changed"
    assert await reply.locator("p strong").first.text_content() == "bold"
    assert await reply.locator("p em").first.text_content() == "italic"
    assert await reply.locator("p del").text_content() == "struck"
    assert await reply.locator("p > code").text_content() == "inline code"
    link = reply.locator("a", has_text="link").first
    assert await link.get_attribute("href") == "https://example.com/docs"
    assert await link.get_attribute("rel") == "noopener noreferrer"
    assert await link.get_attribute("target") == "_blank"
    relative = reply.locator("a", has_text="relative one")
    assert (await relative.get_attribute("href") or "").endswith("/ui/status")
    assert await reply.locator("ul > li").count() == 4  # three items, one nested
    assert await reply.locator("ul ul > li").text_content() == "nested item"
    assert await reply.locator("ol > li").all_text_contents() == ["one", "two"]
    assert "a quoted line" in (await reply.locator("blockquote").text_content() or "")
    assert await reply.locator("blockquote strong").text_content() == "emphasis"
    assert await reply.locator("table th").all_text_contents() == ["Name", "Score"]
    assert await reply.locator("table td").all_text_contents() == ["ada", "10", "bob", "7"]
    assert await reply.locator("table td code").text_content() == "10"
    block = reply.locator(".code-block")
    assert await block.locator(".code-lang").text_content() == "python"
    assert await block.locator("pre code").text_content() == 'print("hello <world>")'
    assert await block.locator("pre code .tok-string").text_content() == '"hello <world>"'
    assert await block.locator("button.copy-code").count() == 1


async def test_a_reply_renders_every_markdown_element_live_and_after_reload(
    browser: Browser, stack: GatewayStack
) -> None:
    page, problems = await log_in(browser, stack, "bea", viewport={"width": 1280, "height": 1000})
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    # Note whether the reply was already rendered as markdown while it still streamed.
    await page.evaluate(
        """() => {
            window.renderedWhileStreaming = false;
            new MutationObserver(() => {
                const live = document.querySelector('#messages .message.assistant.streaming');
                if (live && live.querySelector('h1')) window.renderedWhileStreaming = true;
            }).observe(document.querySelector('#messages'), {childList: true, subtree: true});
        }"""
    )
    await ask(page, "mock-reply:\n" + MARKDOWN)
    await expect_markdown(page)
    assert await page.evaluate("window.renderedWhileStreaming")

    # Copy a code block, and a whole message (its markdown source).
    await page.locator("#messages .code-block button.copy-code").last.click()
    await page.wait_for_function(
        "() => [...document.querySelectorAll('.copy-code')].some(b => b.dataset.copied === 'true')"
    )
    assert await page.evaluate("navigator.clipboard.readText()") == 'print("hello <world>")'
    await page.locator("#messages .turn.assistant .copy-message").last.click()
    await page.wait_for_function(
        "() => [...document.querySelectorAll('.copy-message')]"
        ".some(b => b.dataset.copied === 'true')"
    )
    assert await page.evaluate("navigator.clipboard.readText()") == MARKDOWN
    page.once("dialog", lambda dialog: dialog.accept("Release notes, rendered"))
    await page.click("#rename-conversation")
    await page.wait_for_function(
        "() => document.querySelector('#conversation-title').textContent"
        " === 'Release notes, rendered'"
    )
    await ask(page, "Can you say that more briefly?")
    await screenshot(page, "chat-desktop")

    await page.reload()
    await page.wait_for_selector("#messages .turn.assistant h1")
    await expect_markdown(page, 0)
    assert await page.locator("#messages .turn.assistant h1").count() == 1

    dark, dark_problems = await new_page(
        browser, color_scheme="dark", viewport={"width": 1280, "height": 1000}
    )
    await dark.context.add_cookies(await page.context.cookies())
    await dark.goto(page.url)
    await dark.wait_for_selector("#messages .turn.assistant h1")
    assert await dark.evaluate("matchMedia('(prefers-color-scheme: dark)').matches")
    await screenshot(dark, "chat-dark")
    assert problems == [] and dark_problems == []


async def test_hostile_replies_render_inert(browser: Browser, stack: GatewayStack) -> None:
    page, problems = await log_in(browser, stack, "bea")
    watch = """
        window.violations = [];
        document.addEventListener('securitypolicyviolation',
                                  e => window.violations.push(e.violatedDirective));
    """
    await page.add_init_script(watch)  # for the reload below
    await page.evaluate(watch)
    title = await page.title()
    await page.click("#new-conversation")
    for reply in HOSTILE:
        await ask(page, "mock-reply:" + reply)
    texts = await page.locator("#messages .message.assistant").all_text_contents()
    assert len(texts) == 3
    assert "<script>window.__pwned = 'script'</script>" in texts[0]
    assert "<script>window.__pwned = 'fenced'</script>" in texts[1]
    assert "</code></pre><script>window.__pwned='break out'</script>" in texts[2]
    assert await page.locator("#messages .code-block[data-open='true']").count() == 1
    # Only http(s) links survive: the others are shown as their words.
    assert await page.locator("#messages .unsafe-link").count() >= 6

    async def inert() -> None:
        assert await page.evaluate("window.__pwned") is None
        assert await page.evaluate(HOSTILE_DOM_CHECK) == []
        assert await page.title() == title
        assert await page.evaluate("window.violations") == []

    await inert()
    # Hovering and clicking every rendered node does not run anything either.
    for node in await page.locator("#messages .message.assistant *").all():
        if await node.is_visible():
            await node.hover()
    for link in await page.locator("#messages .unsafe-link").all():
        await link.click()
    await inert()

    await page.reload()
    await page.wait_for_function(
        "() => document.querySelectorAll('#messages .message.assistant').length === 3"
    )
    await inert()
    assert problems == []


async def test_stop_keeps_the_partial_reply_and_frees_the_slot(
    browser: Browser, stack: GatewayStack
) -> None:
    page, problems = await log_in(browser, stack, "bea")
    await page.click("#new-conversation")
    await page.select_option("#model", "slow-llama")
    words = " ".join(f"word{i}" for i in range(300))
    await page.fill("#prompt", "mock-reply:" + words)
    await page.press("#prompt", "Enter")
    streaming = page.locator("#messages .message.assistant.streaming")
    await page.wait_for_function(
        "() => { const m = document.querySelector('#messages .message.assistant.streaming');"
        " return !!m && m.textContent.includes('word3 '); }"
    )
    # While it streams the composer says so, and Enter is not silently dropped.
    assert await page.get_attribute("#prompt", "placeholder") == "Reply streaming… Stop or wait"
    await page.fill("#prompt", "next question")
    await page.press("#prompt", "Enter")
    assert "still streaming" in (await page.locator("#chat-status").text_content() or "")
    assert await page.input_value("#prompt") == "next question"
    await eventually(lambda: in_flight(stack, "slow") == 1)

    await page.click("#stop")
    await streaming.wait_for(state="detached")
    await page.locator("#messages .turn.assistant .stopped-note").wait_for()
    shown = await page.locator("#messages .message.assistant").last.text_content() or ""
    assert shown.startswith("word0 word1 word2 word3") and "word299" not in shown
    await eventually(lambda: in_flight(stack, "slow") == 0)

    # The partial reply was saved, marked as stopped (it may hold a chunk the page missed).
    await page.reload()
    await page.locator("#messages .turn.assistant .stopped-note").wait_for()
    kept = await page.locator("#messages .message.assistant").last.text_content() or ""
    assert kept.startswith(shown) and "word299" not in kept
    assert problems == []


async def test_regenerate_and_edit_rewind_the_conversation(
    browser: Browser, stack: GatewayStack
) -> None:
    page, problems = await log_in(browser, stack, "bea")
    await page.click("#new-conversation")
    await ask(page, "first question")
    await ask(page, "second question")
    assert await page.locator("#messages .message.assistant").all_text_contents() == [
        "Mock reply to: first question",
        "Mock reply to: second question",
    ]
    # Regenerate is offered on the last reply only.
    assert await page.locator("#messages .regenerate:visible").count() == 1
    await page.locator("#messages .regenerate:visible").click()
    await page.wait_for_function(REPLY_DONE)
    await page.wait_for_function(
        "() => document.querySelectorAll('#messages .message.assistant').length === 2"
    )

    # Edit the first question: everything after it goes, the new question is answered.
    await page.locator("#messages .turn.user .edit-message").first.click()
    await page.fill("#messages .edit-form textarea", "edited question")
    await page.click("#messages .edit-form button[type=submit]")
    await page.wait_for_function(
        "() => [...document.querySelectorAll('#messages .message.assistant')]"
        ".some(m => m.textContent === 'Mock reply to: edited question')"
    )
    await page.wait_for_function(REPLY_DONE)
    expected = ["edited question", "Mock reply to: edited question"]
    assert await page.locator("#messages .message").all_text_contents() == expected
    await page.reload()
    await page.wait_for_selector("#messages .message.assistant")
    assert await page.locator("#messages .message").all_text_contents() == expected
    assert problems == []


async def test_the_picker_offers_chat_models_and_remembers_them(
    browser: Browser, stack: GatewayStack
) -> None:
    page, problems = await log_in(browser, stack, "bea")
    offered = await page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    assert set(offered) == {"default", "slow-llama", "mock-llama"}  # no embeddings model
    # A default model for new conversations is a preference of the user.
    await page.click(".settings summary")
    await page.select_option("#settings-default-model", "mock-llama")
    await page.fill("#settings-temperature", "0.5")
    await page.click("#save-settings")
    await page.wait_for_function(
        "() => document.querySelector('#settings-status').textContent === 'Settings saved.'"
    )
    await page.click("#new-conversation")
    assert await page.input_value("#model") == "mock-llama"
    await page.select_option("#model", "default")
    await ask(page, "which model?")
    remembered = await page.evaluate("location.hash")
    await page.click("#new-conversation")
    assert await page.input_value("#model") == "mock-llama"
    await page.goto(f"{stack.base_url}/ui{remembered}")
    await page.wait_for_selector("#messages .message.assistant")
    assert await page.input_value("#model") == "default"
    assert problems == []


async def test_the_status_page_follows_a_backend_that_dies(
    browser: Browser, stack: GatewayStack, models: dict[str, MockProcess]
) -> None:
    admin, problems = await log_in(browser, stack, "root", viewport={"width": 1100, "height": 800})
    await admin.goto(f"{stack.base_url}/ui/status")
    slow = admin.locator("#backends [data-backend='slow']")
    await admin.wait_for_selector("#backends [data-backend='slow'][data-health='ready']")
    facts = await slow.locator("dl").text_content() or ""
    assert "in flight / 2 limit" in facts and "Last error" in facts
    assert await admin.locator("#config-section").is_visible()
    assert "applied" in (await admin.locator("#config").text_content() or "")
    await screenshot(admin, "status")

    user, user_problems = await log_in(browser, stack, "bea")
    await user.goto(f"{stack.base_url}/ui/status")
    await user.wait_for_selector("#backends [data-backend='slow'][data-health='ready']")
    assert await user.locator("#backends dl").count() == 0  # health only
    assert await user.locator("#config-section").is_hidden()

    killed = models["slow"]
    killed.stop()
    try:
        await admin.wait_for_selector(
            "#backends [data-backend='slow'][data-health='down']", timeout=30_000
        )
        await user.wait_for_selector(
            "#backends [data-backend='slow'][data-health='down']", timeout=30_000
        )
        assert "Last errornone" not in (await slow.locator("dl").text_content() or "")
        await screenshot(admin, "status-backend-down")
        # The chat picker greys out the model whose backend is down.
        await user.goto(f"{stack.base_url}/ui")
        option = user.locator("#model option[value='slow-llama']")
        assert await option.is_disabled()
        assert await option.text_content() == "slow-llama (down)"
        assert not await user.locator("#model option[value='default']").is_disabled()
    finally:
        models["slow"] = MockProcess(
            chunk_delay_ms=killed.chunk_delay_ms, chunks=killed.chunks, port=killed.port
        ).start()
    await admin.wait_for_selector(
        "#backends [data-backend='slow'][data-health='ready']", timeout=30_000
    )
    assert problems == [] and user_problems == []


PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}


async def no_sideways_scroll(page: Page) -> None:
    widths = await page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], (page.url, widths)


async def test_phone_layout_keeps_the_composer_on_screen(
    browser: Browser, stack: GatewayStack
) -> None:
    page, problems = await log_in(browser, stack, "root", **PHONE)
    await page.evaluate(
        """async () => {
            const csrf = document.querySelector('meta[name=csrf-token]').content;
            for (let i = 0; i < 30; i++) {
                const r = await fetch('/ui/api/conversations', {method: 'POST',
                    headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf},
                    body: JSON.stringify({title: 'Conversation number ' + i})});
                if (r.status !== 201) throw new Error('create failed: ' + r.status);
            }
        }"""
    )
    await page.reload()
    await page.wait_for_function(
        "() => document.querySelectorAll('#conversations li').length >= 30"
    )
    await ask(page, "mock-reply:\n" + MARKDOWN)

    async def composer_in_view() -> None:
        for selector in ("#prompt", "#send"):
            box = await page.locator(selector).bounding_box()
            assert box is not None
            assert box["y"] >= 0 and box["y"] + box["height"] <= 844, (selector, box)
            assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (selector, box)

    await composer_in_view()
    await no_sideways_scroll(page)
    # The conversations are in a drawer: closed, it covers nothing.
    assert not await page.locator("#conversations").is_visible()
    await screenshot(page, "chat-phone")
    await page.click("#open-drawer")
    await page.locator("#conversations button[data-id]").nth(5).wait_for(state="visible")
    await screenshot(page, "chat-phone-drawer")
    await page.locator("#conversations button[data-id]").nth(5).click()
    await page.locator("#conversations").wait_for(state="hidden")
    await page.wait_for_function(
        "() => document.querySelector('#conversation-title')"
        ".textContent.startsWith('Conversation number')"
    )
    await composer_in_view()

    for path in ("/ui/images", "/ui/music", "/ui/status", "/ui/admin/users"):
        await page.goto(f"{stack.base_url}{path}")
        await page.wait_for_load_state("networkidle")
        await no_sideways_scroll(page)
    # Admin rows are cards: one cell per line, labelled.
    await page.wait_for_selector("#users tbody tr[data-username='bea']")
    row = page.locator("#users tbody tr[data-username='bea']")
    assert await row.evaluate("r => getComputedStyle(r).display") == "block"
    await screenshot(page, "admin-phone")

    desktop, desktop_problems = await new_page(browser, viewport={"width": 1100, "height": 700})
    await desktop.context.add_cookies(await page.context.cookies())
    await desktop.goto(f"{stack.base_url}/ui/admin/users")
    await desktop.wait_for_selector("#users tbody tr[data-username='bea']")
    await screenshot(desktop, "admin")
    assert problems == [] and desktop_problems == []


RENDERER_CORPUS = [
    *HOSTILE,
    "<scr<script>ipt>window.__pwned=1</script>",
    "[a](javascript&colon;window.__pwned=1) [b](&#106;avascript:alert(1)) [c](//evil.example/x)",
    "[nested [brackets](javascript:alert(1))](https://ok.example/)",
    "[x](<javascript:alert(1)>) [y](  https://ok.example/ 'title')",
    "> <img src=x onerror=window.__pwned=1>\n> > ```\n> > <script>x</script>",
    "- <svg onload=window.__pwned=1>\n  - [z](data:text/html,<script>alert(1)</script>)",
    "| <img src=x onerror=alert(1)> | [l](javascript:alert(1)) |\n|---|---|\n| `<b>` | **<i>** |",
    "~~~\n<script>window.__pwned=1</script>\n~~~~~~\n<iframe srcdoc='<script>x</script>'>",
    "`` ` `` <b>**unclosed ``` fence",
    "[" * 3000 + "](javascript:alert(1))" + "*_`~" * 500,
    ">" * 500 + " deep",
    "\n".join(" " * i + "- x <img src=x onerror=alert(1)>" for i in range(0, 200, 2)),
]


async def test_the_renderer_keeps_a_hostile_corpus_inert(browser: Browser) -> None:
    """markdown.js alone, on inputs meant to break out: only safe nodes come out."""
    page, problems = await new_page(browser)
    await page.set_content("<!doctype html><title>clean</title><div id='messages'></div>")
    await page.add_script_tag(path=str(ROOT / "templates" / "static" / "markdown.js"))
    for source in RENDERER_CORPUS:
        await page.evaluate(
            """s => { const root = document.querySelector('#messages');
                      root.replaceChildren(Markdown.render(s)); }""",
            source,
        )
        bad = await page.evaluate(
            HOSTILE_DOM_CHECK.replace("!/^https?:/.test(node.href)", "!/^https:/.test(node.href)")
        )
        assert bad == [], (source[:80], bad)
        assert await page.evaluate("window.__pwned") is None
        assert await page.title() == "clean"
    assert problems == []


def _table(columns: int, rows: int, row: str = "|") -> str:
    header = "|" + "|".join(f"h{k}" for k in range(columns)) + "|"
    rule = "|" + "|".join("-" for _ in range(columns)) + "|"
    return "\n".join([header, rule, *([row] * rows)])


# (source, what it must become): huge tables cost at most their cells, never rows x columns.
HUGE_TABLES = [
    (_table(1000, 4000), "text"),  # wide header, rows of just "|": 4 million cells before
    (_table(64, 6000), "table"),  # within the caps: each row is its one (empty) cell
    (_table(64, 200, "|" + "x|" * 64), "text"),  # 64 x 201 cells: over the cell cap
]
RENDER_TIMED = """s => { const root = document.querySelector('#messages');
  const started = performance.now();
  root.replaceChildren(Markdown.render(s));
  return [performance.now() - started, root.querySelectorAll('td, th').length,
          root.querySelectorAll('.code-block.table-as-text').length]; }"""


async def test_the_renderer_bounds_a_huge_table(browser: Browser) -> None:
    """A table cannot make rows x columns nodes: past the caps it is plain text, fast."""
    page, problems = await new_page(browser)
    await page.set_content("<!doctype html><title>clean</title><div id='messages'></div>")
    await page.add_script_tag(path=str(ROOT / "templates" / "static" / "markdown.js"))
    for source, shape in HUGE_TABLES:
        timings = []
        for _ in range(3):  # up to three tries: a loaded box may stall one run
            elapsed, table_cells, as_text = await page.evaluate(RENDER_TIMED, source)
            timings.append(elapsed)
            if elapsed < 1000:
                break
        assert min(timings) < 1000, (source[:40], timings)
        if shape == "text":
            assert (table_cells, as_text) == (0, 1)
            shown = await page.locator("#messages .table-as-text pre").text_content()
            assert shown == source
        else:
            assert as_text == 0 and table_cells == 64 + 6000  # short rows are not padded
    # A short row keeps only its own cells; a long one is cut at the header's width.
    await page.evaluate(
        "s => document.querySelector('#messages').replaceChildren(Markdown.render(s))",
        "| a | b | c |\n|---|---|---|\n| 1 |\n| 1 | 2 | 3 | 4 |",
    )
    counts = await page.eval_on_selector_all(
        "#messages tbody tr", "rows => rows.map(r => r.cells.length)"
    )
    assert counts == [1, 3]
    assert problems == []
