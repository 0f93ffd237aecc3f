"""Make docs/web-page.png: a broker with a minute of real traffic, then the page in Chromium.

    python docs/web_page_screenshot.py [OUT.png]     # about 70 s; needs Playwright and chromium

Four topics fed through LogQueueHandler at rates that change over the minute, a consumer
group of two runners holding leases, named consumers ahead and behind, and an unnamed one
idle for two hours (hidden by the page's idle filter). The page opens after the traffic, so
its sparklines come from the broker's history; its live tail follows app.web at WARNING.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
import sqlalchemy as sa

from lq_logging import LogQueueHandler

ROOT = Path(__file__).resolve().parent.parent
TRAFFIC_S = 55  # before the page opens; the traffic goes on while it is open
# topic -> (messages per second at the peak, loggers)
TOPICS = {
    "app.web": (120, ["shop.web", "shop.web.checkout", "shop.db.pool"]),
    "app.worker": (35, ["worker.jobs", "worker.mail"]),
    "audit": (12, ["audit"]),
    "billing.events": (20, ["billing", "billing.invoices"]),
}
MESSAGES = ["GET /cart 200 in 41 ms", "order %d paid", "job %d done", "invoice %d sent",
            "pool at 80%% of 20 connections", "retrying payment %d (attempt 2)"]


def _start_broker(db: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    lq = str(Path(sys.executable).with_name("lq"))
    proc = subprocess.Popen([lq, "broker", "--port", str(port), "--db", f"sqlite:///{db}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(url + "/healthz", timeout=1).ok:
                return proc, url
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the broker did not start")
        time.sleep(0.1)


def _post(url: str, path: str, **fields: object) -> dict:
    body = requests.post(url + path, json=fields, timeout=10).json()
    assert body["status"] == "success", body
    return body


def _setup(url: str) -> dict[str, int]:
    _post(url, "/topics", topic_name="app.web", retention_ms=7 * 86_400_000)
    _post(url, "/topics", topic_name="app.worker", retention_ms=3 * 86_400_000)
    _post(url, "/topics", topic_name="audit", retention_messages=1_000_000)
    _post(url, "/topics", topic_name="billing.events")
    ids = {}
    for topic, name in [("app.web", "es-sink"), ("app.web", "archiver"),
                        ("app.worker", "alerts"), ("billing.events", "ledger")]:
        ids[name] = _post(url, "/consumer/register", topic=topic, consumer_name=name)["consumer_id"]
    ids["unnamed"] = _post(url, "/consumer/register", topic="audit")["consumer_id"]
    return ids


def _traffic(url: str, ids: dict[str, int], stop: threading.Event) -> None:
    handlers = {topic: LogQueueHandler(url=url, topic=topic, fields={"env": "prod"})
                for topic in TOPICS}
    loggers = {}
    for topic, (_, names) in TOPICS.items():
        for name in names:
            logger = logging.getLogger(name)
            logger.propagate = False
            logger.setLevel(logging.DEBUG)
            logger.addHandler(handlers[topic])
            loggers[name] = logger
    rng = random.Random(7)
    start = time.monotonic()
    while not stop.is_set():
        elapsed = time.monotonic() - start
        for topic, (peak, names) in TOPICS.items():
            phase = hash(topic) % 7
            rate = peak * (0.55 + 0.45 * math.sin(elapsed / 6 + phase))
            for _ in range(rng.randint(0, max(1, int(rate / 5)))):
                _log(loggers[rng.choice(names)], rng)
        _consume(url, ids, elapsed)
        stop.wait(0.2)
    for handler in handlers.values():
        handler.close()


def _log(logger: logging.Logger, rng: random.Random) -> None:
    level = rng.choices([logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR],
                        [2, 14, 3, 0.3])[0]
    text = rng.choice(MESSAGES)
    if level == logging.ERROR:
        try:
            raise TimeoutError("the payment provider did not answer in 5 s")
        except TimeoutError:
            logger.exception("payment %d failed", rng.randint(1000, 9999))
        return
    logger.log(level, text % rng.randint(1000, 9999) if "%d" in text else text.replace("%%", "%"))


def _consume(url: str, ids: dict[str, int], elapsed: float) -> None:
    """The group leases and acks; archiver and ledger keep up; alerts falls behind."""
    for holder in ("web-1:4121", "web-2:977"):
        lease = _post(url, "/consumer/lease", topic="app.web", consumer_id=ids["es-sink"],
                      max=60, holder=holder, lease_ms=20_000)["lease"]
        if lease and (elapsed % 10 > 2 or holder == "web-1:4121"):  # web-2 lags at times
            _post(url, "/consumer/ack", topic="app.web", consumer_id=ids["es-sink"],
                  lease=lease["id"])
    for name, topic in [("archiver", "app.web"), ("ledger", "billing.events"),
                        ("alerts", "app.worker")]:
        if name == "alerts" and int(elapsed) % 4:
            continue
        found = requests.get(url + "/consumer/fetch", params={
            "topic": topic, "consumer_id": ids[name], "max": 40}, timeout=10).json()["messages"]
        if found:
            _post(url, "/consumer/commit", topic=topic, consumer_id=ids[name],
                  offset=found[-1]["offset"] + 1)


def _shoot(url: str, out: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=os.environ.get("CHROMIUM_PATH",
                                                                    "/usr/bin/chromium"),
                                     args=["--headless", "--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url + "/?refresh=1")
        expect(page.locator("#dashboard")).to_be_visible(timeout=20_000)
        page.select_option("#tail-topic", "app.web")
        page.select_option("#tail-level", "WARNING")
        expect(page.locator("#tail-lines li").first).to_be_visible(timeout=20_000)
        page.wait_for_timeout(2500)  # a few live refreshes after the history
        page.screenshot(path=str(out), full_page=True)
        browser.close()


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "web-page.png"
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "lq.db"
        proc, url = _start_broker(db)
        try:
            ids = _setup(url)
            engine = sa.create_engine(f"sqlite:///{db}")
            with engine.begin() as conn:  # an unnamed consumer nobody used for two hours
                conn.execute(sa.text("UPDATE lq_consumers SET active_us = active_us - :age "
                                     "WHERE name IS NULL"), {"age": 2 * 3600 * 1_000_000})
            engine.dispose()
            stop = threading.Event()
            traffic = threading.Thread(target=_traffic, args=(url, ids, stop))
            traffic.start()
            try:
                stop.wait(TRAFFIC_S)
                _shoot(url, out)
            finally:
                stop.set()
                traffic.join()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
