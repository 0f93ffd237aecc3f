"""The web page at `/` in real headless Chromium (Debian's `chromium`, driven by Playwright).

A broker with a token; two topics, a named consumer that has read part of one, an unnamed one
on the other. The page asks for the token once (kept in the tab's session), lists the topics,
their counts and lags, and updates by itself after more messages arrive. Skips when Chromium or
Playwright is missing, unless LQ_REQUIRE_BROWSER=1 (CI). WEB_PAGE_SCREENSHOT=PATH saves a
screenshot of the final page there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from lqhttp import Api, unique_topic
from support import BrokerProcess

TOKEN = "web-T0ken"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
REQUIRE_BROWSER = os.environ.get("LQ_REQUIRE_BROWSER") == "1"
WAIT_MS = 10_000  # for anything the page does after a refresh (every 0.5 s here)

pytestmark = pytest.mark.timeout(120)


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright)"
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _browser_missing()
    if reason:
        if REQUIRE_BROWSER:
            pytest.fail(f"LQ_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                      headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def _row(page: Any, topic: str) -> Any:
    return page.locator(f'#topics tbody tr[data-topic="{topic}"]')


def _consumer(page: Any, topic: str, name: str) -> Any:
    return page.locator(f'#consumers tbody tr[data-topic="{topic}"][data-consumer="{name}"]')


def test_page_lists_topics_and_lag_and_follows_new_messages(
        browser: Any, start_broker: Callable[..., BrokerProcess], tmp_path: Path) -> None:
    from playwright.sync_api import expect

    proc = start_broker(f"sqlite:///{tmp_path / 'web.db'}", token=TOKEN)
    orders, audit = unique_topic("web.orders"), unique_topic("web.audit")
    with Api(proc.url, TOKEN) as api:
        pid = api.producer(orders)
        api.produce(orders, pid, messages=[f"order {i}" for i in range(7)])
        api.ok("POST", "/topics", {"topic_name": audit, "retention_messages": 1000,
                                   "retention_ms": 7 * 86_400_000})
        audit_pid = api.producer(audit)
        api.produce(audit, audit_pid, messages=["a", "b", "c"])
        reader = api.consumer(orders, consumer_name="web-reader")
        assert len(api.consume_batch(orders, reader, max=2)) == 2
        api.consumer(audit)  # unnamed, has read nothing

    # The shell and its assets need no token; the data still does.
    assert requests.get(proc.url + "/", timeout=5).status_code == 200
    assert requests.get(proc.url + "/static/app.js", timeout=5).status_code == 200
    refused = requests.get(proc.url + "/stats", timeout=5)
    assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"

    context = browser.new_context(viewport={"width": 1280, "height": 760}, color_scheme="light")
    page = context.new_page()
    foreign: list[str] = []
    problems: list[str] = []
    page.on("request", lambda r: None if r.url.startswith((proc.url, "data:"))
            else foreign.append(r.url))
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error"
            and "401" not in m.text else None)
    try:
        page.goto(proc.url + "/?refresh=0.5")

        # Asked once for the token; a wrong one is refused and asked again.
        expect(page.locator("#login")).to_be_visible(timeout=WAIT_MS)
        page.fill("#token", "wrong")
        page.click("#login button[type=submit]")
        expect(page.locator("#login-error")).to_have_text("That token was refused.",
                                                          timeout=WAIT_MS)
        page.fill("#token", TOKEN)
        page.click("#login button[type=submit]")
        expect(page.locator("#login")).to_be_hidden(timeout=WAIT_MS)

        expect(_row(page, orders).locator(".messages")).to_have_text("7", timeout=WAIT_MS)
        expect(_row(page, orders).locator(".max-lag")).to_have_text("5")
        expect(_row(page, orders).locator(".consumers")).to_have_text("1")
        expect(_row(page, audit).locator(".messages")).to_have_text("3")
        expect(_row(page, audit).locator(".max-lag")).to_have_text("3")
        expect(_row(page, audit).locator(".retention")).to_have_text("7d · 1,000 msgs")
        expect(_row(page, orders).locator(".retention")).to_have_text("default")
        named = _consumer(page, orders, "web-reader")
        expect(named.locator(".position")).to_have_text("2")
        expect(named.locator(".lag")).to_have_text("5")
        expect(_consumer(page, audit, "").locator(".name")).to_have_text("(unnamed)")
        expect(page.locator("#health")).to_have_attribute("data-state", "ok")
        expect(page.locator("#health-text")).to_contain_text("sqlite")
        assert page.evaluate("sessionStorage.getItem('lq.token')") == TOKEN

        # More messages: the page follows by itself, and the rate becomes visible.
        with Api(proc.url, TOKEN) as api:
            api.produce(orders, pid, messages=[f"more {i}" for i in range(40)])
        expect(_row(page, orders).locator(".messages")).to_have_text("47", timeout=WAIT_MS)
        expect(_row(page, orders).locator(".max-lag")).to_have_text("45", timeout=WAIT_MS)
        expect(named.locator(".lag")).to_have_text("45", timeout=WAIT_MS)
        expect(page.locator("#sum-messages")).to_have_text("50", timeout=WAIT_MS)
        expect(_row(page, orders).locator(".spark polyline")).to_have_count(1, timeout=WAIT_MS)

        # The token is kept for the session: a reload does not ask again.
        page.reload()
        expect(_row(page, orders).locator(".messages")).to_have_text("47", timeout=WAIT_MS)
        expect(page.locator("#login")).to_be_hidden()

        screenshot = os.environ.get("WEB_PAGE_SCREENSHOT")
        page.screenshot(path=screenshot or str(tmp_path / "web-page.png"), full_page=True)
    finally:
        context.close()
    assert not foreign, f"the page loaded something from elsewhere: {foreign}"
    assert not problems, f"errors in the page: {problems}"
