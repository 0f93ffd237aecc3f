"""The web page at `/` in real headless Chromium (Debian's `chromium`, driven by Playwright).

A broker with a token; two topics, a named consumer that has read part of one, an unnamed one
on the other. The page asks for the token once (kept in the tab's session), lists the topics,
their counts and lags, and updates by itself after more messages arrive. Then, on a broker
without a token: "loading" until the first data, sparklines that start from the broker's last
minute, each registration's leases, holders and last use (idle ones hidden on request), and a
live tail filtered exactly as `lq tail` filters (the page's render.js is run against
sdk/render.py). Skips when Chromium or Playwright is missing, unless LQ_REQUIRE_BROWSER=1 (CI).
WEB_PAGE_SCREENSHOT=PATH saves a screenshot of the first test's final page there
(docs/web_page_screenshot.py makes docs/web-page.png).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from lqhttp import Api, unique_topic
from support import BrokerProcess, execute_sql

from sdk.render import RecordFilter, format_text, parse_record

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
    proc = start_broker(f"sqlite:///{tmp_path / 'web.db'}", token=TOKEN)
    orders, audit = unique_topic("web.orders"), unique_topic("web.audit")
    pid = _two_topics_and_two_consumers(proc.url, orders, audit)

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
        _log_in_after_a_wrong_token(page)
        _expect_topics_and_consumers(page, orders, audit)
        assert page.evaluate("sessionStorage.getItem('lq.token')") == TOKEN
        _expect_it_follows_new_messages(page, proc.url, orders, pid)
        screenshot = os.environ.get("WEB_PAGE_SCREENSHOT")
        page.screenshot(path=screenshot or str(tmp_path / "web-page.png"), full_page=True)
    finally:
        context.close()
    assert not foreign, f"the page loaded something from elsewhere: {foreign}"
    assert not problems, f"errors in the page: {problems}"


def _two_topics_and_two_consumers(url: str, orders: str, audit: str) -> int:
    """`orders`: 7 messages, a named consumer that read 2; `audit`: 3 messages, a retention,
    an unnamed consumer that read nothing. Returns the producer id on `orders`."""
    with Api(url, TOKEN) as api:
        pid = api.producer(orders)
        api.produce(orders, pid, messages=[f"order {i}" for i in range(7)])
        api.ok("POST", "/topics", {"topic_name": audit, "retention_messages": 1000,
                                   "retention_ms": 7 * 86_400_000})
        audit_pid = api.producer(audit)
        api.produce(audit, audit_pid, messages=["a", "b", "c"])
        reader = api.consumer(orders, consumer_name="web-reader")
        assert len(api.consume_batch(orders, reader, max=2)) == 2
        api.consumer(audit)  # unnamed, has read nothing
    return pid


def _log_in_after_a_wrong_token(page: Any) -> None:
    """Asked once for the token; a wrong one is refused and asked again."""
    from playwright.sync_api import expect

    expect(page.locator("#login")).to_be_visible(timeout=WAIT_MS)
    page.fill("#token", "wrong")
    page.click("#login button[type=submit]")
    expect(page.locator("#login-error")).to_have_text("That token was refused.",
                                                      timeout=WAIT_MS)
    page.fill("#token", TOKEN)
    page.click("#login button[type=submit]")
    expect(page.locator("#login")).to_be_hidden(timeout=WAIT_MS)


def _expect_topics_and_consumers(page: Any, orders: str, audit: str) -> None:
    """What _two_topics_and_two_consumers made: counts, lags, retention, consumers, health."""
    from playwright.sync_api import expect

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


def _expect_it_follows_new_messages(page: Any, url: str, orders: str, pid: int) -> None:
    """More messages: the page follows by itself, and the rate becomes visible; the token is
    kept for the session, so a reload does not ask again."""
    from playwright.sync_api import expect

    with Api(url, TOKEN) as api:
        api.produce(orders, pid, messages=[f"more {i}" for i in range(40)])
    named = _consumer(page, orders, "web-reader")
    expect(_row(page, orders).locator(".messages")).to_have_text("47", timeout=WAIT_MS)
    expect(_row(page, orders).locator(".max-lag")).to_have_text("45", timeout=WAIT_MS)
    expect(named.locator(".lag")).to_have_text("45", timeout=WAIT_MS)
    expect(page.locator("#sum-messages")).to_have_text("50", timeout=WAIT_MS)
    expect(_row(page, orders).locator(".spark polyline")).to_have_count(1, timeout=WAIT_MS)

    page.reload()
    expect(_row(page, orders).locator(".messages")).to_have_text("47", timeout=WAIT_MS)
    expect(page.locator("#login")).to_be_hidden()


# --- a broker without a token: loading, history, registrations, the tail -----------------------
@pytest.fixture(scope="module")
def open_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    base = tmp_path_factory.mktemp("web-open")
    with BrokerProcess(f"sqlite:///{base / 'web.db'}", log_path=base / "broker.log") as proc:
        yield proc


@pytest.fixture
def page(browser: Any, open_broker: BrokerProcess) -> Iterator[Any]:
    """A page of the token-less broker; no error may show in its console."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda exc: problems.append(str(exc)))
    tab.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    try:
        yield tab
    finally:
        context.close()
    assert not problems, f"errors in the page: {problems}"


def _poll(tab: Any, predicate: Callable[[], Any], what: str) -> Any:
    """Wait for ``predicate`` while Playwright keeps dispatching the page's events."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        tab.wait_for_timeout(20)
    return found


def test_first_paint_is_loading_and_the_sparkline_starts_with_the_last_minute(
        page: Any, open_broker: BrokerProcess) -> None:
    from playwright.sync_api import expect

    topic = unique_topic("web.hist")
    with Api(open_broker.url) as api:
        pid = api.producer(topic)
        api.produce(topic, pid, messages=[f"a{i}" for i in range(10)])
        api.produce(topic, pid, messages=[f"b{i}" for i in range(15)])
    held: list[Any] = []
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/stats" in r.url else None)
    page.route("**/stats*", lambda route: held.append(route))  # waits until the test lets go
    page.goto(open_broker.url + "/?refresh=300")  # no second poll during the test

    _poll(page, lambda: held, "the page to ask for /stats")
    expect(page.locator("#loading")).to_be_visible()
    expect(page.locator("#loading")).to_contain_text("Loading")
    expect(page.locator("#dashboard")).to_be_hidden()
    held[0].continue_()
    page.unroute("**/stats*")

    expect(page.locator("#dashboard")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#loading")).to_be_hidden()
    rate = _row(page, topic).locator(".rate")
    expect(rate).to_have_attribute("data-history-total", "25", timeout=WAIT_MS)
    expect(rate.locator(".spark")).to_have_attribute("data-points", "60")
    expect(rate.locator(".spark polyline")).to_have_count(1)
    assert len(asked) == 1, asked  # all of it from the first poll


def _record(level: str | None, logger: str | None, message: Any, **extra: Any) -> str:
    record = {"time": "2026-12-02T06:38:16.123456Z", "level": level,
              "levelno": {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}.get(level),
              "logger": logger, "message": message, **extra}
    return json.dumps({k: v for k, v in record.items() if v is not None})


TAIL_MESSAGES = [
    _record("DEBUG", "shop", "cache warm"),
    _record("INFO", "shop.db", "order 42 stored"),
    _record("WARNING", "shop.db.pool", "pool exhausted"),
    _record("ERROR", "shop.dbx", "Timeout talking to dbx",
            exception="Traceback (most recent call last):\nTimeoutError\n"),
    json.dumps({"level": "CRITICAL", "logger": "payments", "message": {"why": "refused"}}),
    "plain text line about order 42",
]


def _tail_lines(tab: Any) -> list[str]:
    return tab.evaluate(
        "[...document.querySelectorAll('#tail-lines li')].map((li) => li.textContent)")


def test_live_tail_shows_and_filters_records_as_lq_tail_does(
        page: Any, open_broker: BrokerProcess) -> None:
    from playwright.sync_api import expect

    topic = unique_topic("web.tail")
    with Api(open_broker.url) as api:
        pid = api.producer(topic)
        api.produce(topic, pid, messages=TAIL_MESSAGES)
        reader = api.consumer(topic, consumer_name="reader")
        api.commit(topic, reader, 2)
        before = api.ok("GET", "/stats")

        def expected(**filters: str) -> list[str]:
            keep, shown = RecordFilter(**filters), []
            # Plain requests: lqhttp refuses a reply that mentions a traceback, as this one does.
            reply = requests.get(open_broker.url + "/topics/tail", params={"topic": topic},
                                 timeout=10).json()
            for m in reply["messages"]:
                record = parse_record(m["message"])
                text = m["message"] if record is None else format_text(
                    record, ts=datetime.fromisoformat(m["ts"]))
                if keep.matches(record, text):
                    shown.append(text)
            return shown

        page.goto(open_broker.url + "/?refresh=0.5")
        expect(page.locator(f'#tail-topic option[value="{topic}"]')).to_have_count(
            1, timeout=WAIT_MS)
        page.select_option("#tail-topic", topic)
        everything = expected()
        assert len(everything) == 6 and "payments: {\"why\": \"refused\"}" in everything[4]
        _poll(page, lambda: _tail_lines(page) == everything, "every message in the tail")
        steps = [({"level": "WARNING"}, {"level": "WARNING"}),
                 ({"logger": "shop.db"}, {"level": "WARNING", "logger": "shop.db"}),
                 ({"level": ""}, {"logger": "shop.db"}),
                 ({"logger": "", "grep": "order 42"}, {"grep": "order 42"}),
                 ({"grep": "re:(?i)timeout|REFUSED"}, {"grep": "re:(?i)timeout|REFUSED"})]
        for change, filters in steps:
            if "level" in change:
                page.select_option("#tail-level", change["level"])
            for field in ("logger", "grep"):
                if field in change:
                    page.fill(f"#tail-{field}", change[field])
            want = expected(**filters)
            assert want and want != everything, filters  # each step shows a proper subset
            _poll(page, lambda want=want: _tail_lines(page) == want, f"the tail with {filters}")

        page.fill("#tail-grep", "re:(")
        expect(page.locator("#tail-status")).to_contain_text("invalid regular expression")
        assert _tail_lines(page) == []
        page.fill("#tail-grep", "")
        api.produce(topic, pid, messages=[_record("INFO", "shop", "new one"), "new plain"])
        _poll(page, lambda: _tail_lines(page) == expected(), "the new messages, followed")

        # Reading the tail registered no one and moved no one.
        after = api.ok("GET", "/stats")
        assert _registrations(after, topic) == _registrations(before, topic) == [
            ("reader", 2, _registrations(before, topic)[0][2])]


def _registrations(stats: dict, topic: str) -> list[tuple[str | None, int, str]]:
    """Who is registered on `topic`, where, and when last used (lag changes as messages come)."""
    row = next(t for t in stats["topics"] if t["topic"] == topic)
    return [(r.get("name"), r["position"], r["active"]) for r in row["registrations"]]


def test_registrations_show_leases_holders_and_idle_ones_hide(
        page: Any, open_broker: BrokerProcess) -> None:
    from playwright.sync_api import expect

    topic = unique_topic("web.group")
    with Api(open_broker.url) as api:
        api.produce(topic, api.producer(topic), messages=[f"m{i}" for i in range(6)])
        group = api.consumer(topic, consumer_name="group")
        api.consumer(topic, consumer_name="stale")
        leased = api.ok("POST", "/consumer/lease", {"topic": topic, "consumer_id": group,
                                                    "max": 2, "holder": "host-a:1"})
        assert leased["lease"]["first"] == 0
    assert execute_sql(open_broker.db_url, "UPDATE lq_consumers SET active_us = :old "
                       "WHERE name = 'stale' AND topic_id = "
                       "(SELECT id FROM lq_topics WHERE name = :topic)",
                       old=time.time_ns() // 1000 - 2 * 3600 * 1_000_000, topic=topic) == 1

    page.goto(open_broker.url + "/?refresh=0.5")
    row = _consumer(page, topic, "group")
    expect(row.locator(".leases")).to_have_text("1", timeout=WAIT_MS)
    expect(row.locator(".holders")).to_have_text("1")
    expect(row.locator(".lag")).to_have_text("6")
    expect(row).to_have_attribute("data-state", "live")
    expect(_row(page, topic).locator(".consumers")).to_have_text("1")
    expect(_consumer(page, topic, "stale")).to_have_count(0)  # idle for 2 h: hidden

    page.uncheck("#hide-idle")
    stale = _consumer(page, topic, "stale")
    expect(stale.locator(".ago")).to_have_text("2h ago", timeout=WAIT_MS)
    expect(stale).to_have_attribute("data-state", "idle")
    expect(_row(page, topic).locator(".consumers")).to_have_text("2")
    page.check("#hide-idle")
    expect(_consumer(page, topic, "stale")).to_have_count(0, timeout=WAIT_MS)


RENDER_CASES = [
    *TAIL_MESSAGES,
    json.dumps({"level": "WARN", "logger": "a.b.", "message": "spelled WARN", "time": 0}),
    json.dumps({"levelno": 45, "message": "no level name", "logger": "", "stack": "s\n\n"}),
    json.dumps({"message": None, "level": 30, "logger": ["x"], "time": True}),
    json.dumps({"message": [1, "two", {"k": None}], "level": "info", "logger": "Shop.DB"}),
    json.dumps({"message": "it's \"quoted\"", "exception": {"type": "E", "n": 1.5}}),
    json.dumps({"message": "m", "logger": {"path": "C:\\tmp", "tab": "\t", "q": "'"}}),
    json.dumps({"no": "message"}), "[1, 2]", "{broken", "",
]
RENDER_FILTERS = [{}, {"level": "WARNING"}, {"level": "warn"}, {"level": "45"},
                  {"logger": "shop.db"}, {"logger": "shop."}, {"logger": "a.b"},
                  {"grep": "order 42"}, {"grep": "re:(?i)timeout|refused"},
                  {"grep": "re:^2026"}, {"grep": "re:\\Aplain"}, {"grep": "re:o\\Z"},
                  {"grep": "re:(?P<q>[\"']).*(?P=q)"}, {"grep": "re:(?s)Traceback.*Error"},
                  {"level": "ERROR", "grep": "re:db"}, {"grep": "re:("}]


def _python_render(ts: str) -> tuple[list[str], list[Any]]:
    texts, records = [], []
    for raw in RENDER_CASES:
        record = parse_record(raw)
        records.append(record)
        texts.append(raw if record is None else format_text(
            record, ts=datetime.fromisoformat(ts)))
    verdicts: list[Any] = []
    for filters in RENDER_FILTERS:
        try:
            keep = RecordFilter(**filters)
        except ValueError:
            verdicts.append("error")
            continue
        verdicts.append([keep.matches(r, t) for r, t in zip(records, texts, strict=True)])
    return texts, verdicts


JS_RENDER = """async ([cases, filters, ts]) => {
  const m = await import("/static/render.js");
  const records = cases.map((raw) => m.parseRecord(raw));
  const texts = cases.map((raw, i) => (records[i] ? m.formatText(records[i], ts) : raw));
  const verdicts = filters.map((f) => {
    let keep;
    try { keep = new m.RecordFilter(f); } catch { return "error"; }
    return records.map((r, i) => keep.matches(r, texts[i]));
  });
  return [texts, verdicts];
}"""


@pytest.mark.parametrize("ts", ["2026-12-02T10:20:56.399843+00:00",
                                "2026-12-02T10:20:56.000000+00:00"])
def test_the_pages_renderer_agrees_with_sdk_render(page: Any, open_broker: BrokerProcess,
                                                   ts: str) -> None:
    page.goto(open_broker.url + "/?refresh=300")
    texts, verdicts = page.evaluate(JS_RENDER, [RENDER_CASES, RENDER_FILTERS, ts])
    want_texts, want_verdicts = _python_render(ts)
    assert texts == want_texts
    for filters, got, want in zip(RENDER_FILTERS, verdicts, want_verdicts, strict=True):
        assert got == want, filters
