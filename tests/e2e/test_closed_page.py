"""The closed page: a browser at an address outside UI_IP_ALLOWLIST gets the styled page
that says how to open the UI, from Caddy and from the sidecar alike; an API client (no
``text/html`` in ``Accept``) gets the JSON error ``ui_closed``."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser

from sidecar.settings import UiSettings
from sidecar.ui.guard import CLOSED_ADDRESS

from ..conftest import TOKEN, gateway_yaml, mock_backend_yaml
from .stack import ROOT, GatewayStack

pytestmark = pytest.mark.timeout(180)
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
SCREENSHOTS = ROOT / "var" / "screenshots"
CLOSED_JSON = {
    "error": {
        "message": "The UI is not open to this address (UI_IP_ALLOWLIST)",
        "type": "permission_error",
        "param": None,
        "code": "ui_closed",
    }
}


def page_text_without_address(html: str, address: str) -> str:
    assert html.count(address) >= 1, html
    return html.replace(address, "ADDRESS")


def assert_closed_page(html: str, address: str, headers: Any) -> None:
    assert headers["Content-Type"].startswith("text/html")
    assert f'<code id="client-ip">{address}</code>' in html
    assert "UI_IP_ALLOWLIST" in html and "How to open it" in html
    assert "{{" not in html and "<script" not in html
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert "frame-ancestors 'none'" in csp
    assert headers["X-Frame-Options"] == "DENY"
    assert "Accept" in headers.getall("Vary")
    assert "Server" not in headers


# -- through real Caddy ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    gateway = GatewayStack(
        tmp_path_factory.mktemp("closed"),
        (ROOT / "gateway.yaml").read_text(),
        TOKEN,
        UI_IP_ALLOWLIST="127.0.0.1/32",
    ).start()
    try:
        yield gateway
    finally:
        gateway.stop()


async def fetch(
    stack: GatewayStack, path: str, source_ip: str, method: str = "GET", **headers: str
) -> tuple[int, str, Any]:
    connector = aiohttp.TCPConnector(local_addr=(source_ip, 0), ssl=stack.ssl_context())
    async with (
        aiohttp.ClientSession(connector=connector, skip_auto_headers=["Accept"]) as session,
        session.request(method, f"{stack.base_url}{path}", headers=headers) as response,
    ):
        return response.status, await response.text(), response.headers.copy()


async def test_caddy_gives_browsers_the_page_and_clients_json(stack: GatewayStack) -> None:
    for path in ("/ui", "/ui/", "/ui/admin/users", "/ui/static/app.css", "/ui/nowhere"):
        status, html, headers = await fetch(stack, path, "127.0.0.2", Accept=BROWSER_ACCEPT)
        assert status == 403, (path, html[:200])
        assert_closed_page(html, "127.0.0.2", headers)
        assert "X-Request-Id" not in headers  # Caddy answered: the sidecar never saw it

    # Not a browser asking for a page: JSON, in the UI API's shape.
    for method, path, accept in (
        ("GET", "/ui", None),
        ("GET", "/ui", "*/*"),
        ("GET", "/ui", "application/json"),
        ("GET", "/ui/api/conversations", BROWSER_ACCEPT),
        ("POST", "/ui/api/auth/login", BROWSER_ACCEPT),
        ("POST", "/ui", BROWSER_ACCEPT),
        ("GET", "/ui/heartmula/audio/x.wav", BROWSER_ACCEPT),
    ):
        headers = {"Accept": accept} if accept else {}
        status, body, response_headers = await fetch(stack, path, "127.0.0.2", method, **headers)
        assert status == 403, (method, path, body)
        assert response_headers["Content-Type"] == "application/json", (method, path)
        assert json.loads(body) == CLOSED_JSON, (method, path, body)
        assert "Accept" in response_headers.getall("Vary")
        assert "Server" not in response_headers

    # An allowed address still reaches the sidecar's UI.
    status, html, headers = await fetch(stack, "/ui", "127.0.0.1", Accept=BROWSER_ACCEPT)
    assert status == 200 and headers["X-Request-Id"].startswith("req-")


async def test_caddy_and_the_sidecar_serve_the_same_page(
    stack: GatewayStack, make_gateway: Any, start_mock: Any
) -> None:
    _, from_caddy, _ = await fetch(stack, "/ui", "127.0.0.2", Accept=BROWSER_ACCEPT)
    backend = await start_mock()
    client = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend)), ui_ip_allowlist=()
    )
    response = await client.get("/ui", headers={"Accept": BROWSER_ACCEPT})
    from_sidecar = await response.text()
    assert response.status == 403
    assert page_text_without_address(from_caddy, "127.0.0.2") == page_text_without_address(
        from_sidecar, "127.0.0.1"
    )
    template = (ROOT / "templates" / "closed.html").read_text()
    assert template.count(CLOSED_ADDRESS) == 1
    assert re.sub(r"\{\{\.RemoteIP\}\}", "ADDRESS", template) == page_text_without_address(
        from_sidecar, "127.0.0.1"
    )


@pytest.mark.parametrize("templates", ["empty", "elsewhere"])
async def test_caddy_finds_the_page_when_the_templates_dir_is_empty_or_elsewhere(
    tmp_path: Any, templates: str
) -> None:
    """``.env.example`` once shipped ``GATEWAY_TEMPLATES_DIR=`` (set, but empty): that has
    to mean the default ``templates/``, as it does for the sidecar, not a root of ``*``."""
    env = {"GATEWAY_TEMPLATES_DIR": ""}
    marker = ""
    if templates == "elsewhere":
        elsewhere = tmp_path / "my-templates"
        shutil.copytree(ROOT / "templates", elsewhere)
        marker = "<!-- served from my-templates -->"
        page = (elsewhere / "closed.html").read_text()
        (elsewhere / "closed.html").write_text(page.replace("</body>", marker + "</body>"))
        env["GATEWAY_TEMPLATES_DIR"] = str(elsewhere)
    gateway = GatewayStack(
        tmp_path / "data",
        (ROOT / "gateway.yaml").read_text(),
        TOKEN,
        UI_IP_ALLOWLIST="127.0.0.1/32",
        **env,
    ).start()
    try:
        status, html, headers = await fetch(gateway, "/ui", "127.0.0.2", Accept=BROWSER_ACCEPT)
    finally:
        gateway.stop()
    assert status == 403, html[:300]
    assert_closed_page(html, "127.0.0.2", headers)
    assert "X-Request-Id" not in headers
    assert marker in html


@pytest.fixture(scope="module")
def closed_to_loopback(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    """The UI open only to an address the browser cannot have."""
    gateway = GatewayStack(
        tmp_path_factory.mktemp("closed-browser"),
        (ROOT / "gateway.yaml").read_text(),
        TOKEN,
        UI_IP_ALLOWLIST="192.0.2.1/32",
    ).start()
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.mark.parametrize("width,height", [(1280, 800), (390, 844)], ids=["desktop", "phone"])
async def test_chromium_shows_the_styled_page(
    browser: Browser, closed_to_loopback: GatewayStack, width: int, height: int
) -> None:
    context = await browser.new_context(
        ignore_https_errors=True, viewport={"width": width, "height": height}
    )
    page = await context.new_page()
    violations: list[str] = []
    page.on("console", lambda message: violations.append(message.text))
    response = await page.goto(f"{closed_to_loopback.base_url}/ui")
    assert response is not None and response.status == 403
    assert await page.title() == "UI closed · Local AI Gateway"
    assert await page.locator("#client-ip").text_content() == "127.0.0.1"
    # The inline style applied under the page's CSP: the card is laid out and framed.
    style = await page.evaluate(
        """() => {
            const main = getComputedStyle(document.querySelector('main'));
            return {font: getComputedStyle(document.body).fontFamily,
                    radius: main.borderTopLeftRadius,
                    maxWidth: main.maxWidth};
        }"""
    )
    assert "system-ui" in style["font"], style
    assert style["maxWidth"] != "none", style
    assert await page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )
    assert not [text for text in violations if "Content Security Policy" in text], violations
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"closed-{width}.png"), full_page=True)
    await context.close()


# -- the sidecar directly -------------------------------------------------------------------


@pytest.mark.parametrize("accounts", [False, True], ids=["accounts-off", "accounts-on"])
async def test_the_sidecar_gives_browsers_the_page_and_clients_json(
    make_gateway: Any, start_mock: Any, accounts: bool
) -> None:
    backend = await start_mock()
    client = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend)),
        ui=UiSettings(accounts=accounts),
        ui_ip_allowlist=(),
    )
    for path in ("/ui", "/ui/login", "/ui/admin/users", "/ui/static/app.css"):
        response = await client.get(path, headers={"Accept": BROWSER_ACCEPT})
        html = await response.text()
        assert response.status == 403, (path, html[:200])
        assert_closed_page(html, "127.0.0.1", response.headers)
        head = await client.head(path, headers={"Accept": BROWSER_ACCEPT})
        assert head.status == 403 and head.content_type == "text/html"

    for method, path, accept in (
        ("GET", "/ui", None),
        ("GET", "/ui", "*/*"),
        ("GET", "/ui/api/conversations", BROWSER_ACCEPT),
        ("POST", "/ui/api/auth/login", BROWSER_ACCEPT),
        ("POST", "/ui", BROWSER_ACCEPT),
    ):
        response = await client.request(
            method,
            path,
            headers={"Accept": accept} if accept else {},
            skip_auto_headers=["Accept"],
        )
        assert response.status == 403, (method, path)
        assert response.content_type == "application/json", (method, path)
        assert await response.json() == CLOSED_JSON
        assert "Accept" in response.headers.getall("Vary")
