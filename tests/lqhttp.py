"""Raw HTTP helpers for the broker tests: plain ``requests``, no SDK.

Every reply goes through :func:`parse`, which enforces the part of the contract that holds for
all responses: JSON (never HTML, never a stack trace), a ``status`` of ``success`` or
``failure``, a failure carries an ``error`` code and a human ``message``, and no 5xx (the
database is up in every test, so a 5xx is a broker bug).
"""

from __future__ import annotations

import itertools
import json
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

ID_LIMIT = 2**53
ID_FIELDS = ("producer_id", "consumer_id")

# How a client sends its parameters; the broker accepts every one of them on every endpoint.
# "json-strids": JSON body with the ids as numeric strings; "json-textplain" and "json-noctype":
# a JSON body whose Content-Type says something else or nothing at all.
DIALECTS = ("query", "form", "json", "json-strids", "json-textplain", "json-noctype")
JSON_DIALECTS = ("json", "json-strids", "json-textplain", "json-noctype")
TOPIC_KEYS = ("topic", "topic_name", "name")
MESSAGE_KEYS = ("message", "log_message")


def unique_topic(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def is_id(value: object) -> bool:
    return type(value) is int and 0 < value < ID_LIMIT


def parse_ts(value: object) -> datetime:
    """An ISO-8601 timestamp; when it carries a zone, it must be UTC."""
    assert isinstance(value, str), f"ts is not a string: {value!r}"
    ts = datetime.fromisoformat(value)
    if ts.tzinfo is not None:
        assert ts.utcoffset().total_seconds() == 0, f"ts is not UTC: {value}"
    else:
        ts = ts.replace(tzinfo=UTC)
    return ts


@dataclass
class Reply:
    code: int
    body: dict[str, Any]
    request: str

    def __str__(self) -> str:
        return f"{self.request} -> {self.code} {json.dumps(self.body)[:400]}"


def _describe(method: str, url: str, kwargs: dict[str, Any]) -> str:
    shown = {k: v for k, v in kwargs.items() if k in ("params", "json", "data", "headers")}
    text = f"{method} {url} {shown!r}"
    return text if len(text) < 600 else text[:600] + "...(truncated)"


def parse(resp: requests.Response, request: str) -> Reply:
    where = f"{request} -> {resp.status_code} {resp.text[:300]!r}"
    assert resp.status_code < 500, f"5xx: {where}"
    ctype = resp.headers.get("Content-Type", "")
    assert ctype.startswith("application/json"), f"not JSON (Content-Type {ctype!r}): {where}"
    assert "<html" not in resp.text.lower() and "Traceback" not in resp.text, f"HTML/trace: {where}"
    try:
        body = resp.json()
    except ValueError as exc:
        raise AssertionError(f"unparseable JSON: {where}") from exc
    assert isinstance(body, dict), f"body is not an object: {where}"
    if resp.status_code == 200:
        assert body.get("status") == "success", f"200 without status success: {where}"
    else:
        assert body.get("status") == "failure", f"{resp.status_code} without failure: {where}"
        assert isinstance(body.get("error"), str) and body["error"], f"no error code: {where}"
        assert isinstance(body.get("message"), str) and body["message"], f"no message: {where}"
    return Reply(resp.status_code, body, request)


class Api:
    """One broker, one ``requests.Session`` (use one Api per thread)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 15.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if token is not None:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.close()

    # --- raw ----------------------------------------------------------------------------

    def request(self, method: str, path: str, fields: dict[str, Any] | None = None, *,
                dialect: str = "json", slash: bool = False, data: Any = None,
                headers: dict[str, str] | None = None, timeout: float | None = None) -> Reply:
        """Send ``fields`` the way ``dialect`` says (or a raw ``data`` body) and parse the reply."""
        kwargs: dict[str, Any] = {"headers": dict(headers or {})}
        if data is not None:
            kwargs["data"] = data
        elif fields is not None:
            if dialect == "query":
                kwargs["params"] = fields
            elif dialect == "form":
                kwargs["data"] = fields
            elif dialect == "json":
                kwargs["json"] = fields
            elif dialect == "json-strids":
                kwargs["json"] = {k: str(v) if k in ID_FIELDS else v for k, v in fields.items()}
            elif dialect == "json-textplain":
                kwargs["data"] = json.dumps(fields).encode()
                kwargs["headers"].setdefault("Content-Type", "text/plain")
            elif dialect == "json-noctype":
                kwargs["data"] = json.dumps(fields).encode()
            else:
                raise ValueError(dialect)
        url = self.url + path + ("/" if slash and not path.endswith("/") else "")
        resp = self.session.request(method, url, timeout=timeout or self.timeout,
                                    allow_redirects=False, **kwargs)
        return parse(resp, _describe(method, url, kwargs))

    def ok(self, method: str, path: str, fields: dict[str, Any] | None = None,
           **kwargs: Any) -> dict[str, Any]:
        reply = self.request(method, path, fields, **kwargs)
        assert reply.code == 200, f"expected 200 success: {reply}"
        return reply.body

    def call(self, method: str, path: str, **fields: Any) -> dict[str, Any]:
        """:meth:`ok` with the fields as keyword arguments (JSON dialect)."""
        return self.ok(method, path, fields)

    def fail(self, method: str, path: str, fields: dict[str, Any] | None, code: int,
             error: str | tuple[str, ...], **kwargs: Any) -> dict[str, Any]:
        reply = self.request(method, path, fields, **kwargs)
        errors = (error,) if isinstance(error, str) else error
        assert (reply.code, reply.body.get("error")) in [(code, e) for e in errors], (
            f"expected {code} {'|'.join(errors)}: {reply}")
        return reply.body

    # --- the endpoints, JSON dialect ------------------------------------------------------

    def create_topic(self, name: str) -> None:
        self.ok("POST", "/topics", {"topic_name": name})

    def topics(self) -> list[str]:
        return self.ok("GET", "/topics")["topics"]

    def producer(self, topic: str) -> int:
        pid = self.ok("POST", "/producer/register", {"topic": topic})["producer_id"]
        assert is_id(pid), pid
        return pid

    def consumer(self, topic: str, **extra: Any) -> int:
        cid = self.ok("POST", "/consumer/register", {"topic": topic, **extra})["consumer_id"]
        assert is_id(cid), cid
        return cid

    def produce(self, topic: str, pid: int, message: str | None = None, *,
                messages: list[str] | None = None, seq: int | None = None) -> dict[str, Any]:
        fields: dict[str, Any] = {"topic": topic, "producer_id": pid}
        if messages is not None:
            fields["messages"] = messages
        else:
            fields["message"] = message
        if seq is not None:
            fields["seq"] = seq
        return self.ok("POST", "/producer/produce", fields)

    def consume(self, topic: str, cid: int) -> Reply:
        """Classic consume: 200 with one message, or 400 queue_empty."""
        return self.request("GET", "/consumer/consume", {"topic": topic, "consumer_id": cid})

    def consume_batch(self, topic: str, cid: int, max: int = 100, wait_ms: int = 0,
                      ) -> list[dict[str, Any]]:
        body = self.ok("GET", "/consumer/consume",
                       {"topic": topic, "consumer_id": cid, "max": max, "wait_ms": wait_ms},
                       timeout=wait_ms / 1000 + self.timeout)
        assert isinstance(body.get("messages"), list), body
        return body["messages"]

    def fetch(self, topic: str, cid: int, **extra: Any) -> dict[str, Any]:
        return self.ok("GET", "/consumer/fetch", {"topic": topic, "consumer_id": cid, **extra},
                       timeout=extra.get("wait_ms", 0) / 1000 + self.timeout)

    def commit(self, topic: str, cid: int, offset: int) -> int:
        return self.ok("POST", "/consumer/commit",
                       {"topic": topic, "consumer_id": cid, "offset": offset})["position"]

    def size(self, topic: str, cid: int) -> int:
        return self.ok("GET", "/size", {"topic": topic, "consumer_id": cid})["size"]

    def read_all(self, topic: str, cid: int) -> list[dict[str, Any]]:
        """Every message from offset 0 through fetch (no position moves)."""
        out: list[dict[str, Any]] = []
        while True:
            batch = self.fetch(topic, cid, offset=len(out), max=1000)["messages"]
            if not batch:
                return out
            out.extend(batch)


class Brokers:
    """Several brokers on one database, one :class:`Api` each: each call goes to the next."""

    def __init__(self, urls: Sequence[str]) -> None:
        self._apis = itertools.cycle([Api(url) for url in urls])

    def call(self, method: str, path: str, **fields: Any) -> dict[str, Any]:
        return next(self._apis).call(method, path, **fields)


def first_answer(urls: Sequence[str], method: str, path: str, fields: dict[str, Any],
                 attempts: int = 20) -> dict[str, Any]:
    """The body of the first broker, tried in turn, that answers other than 503 or with a
    refused connection: while one of them is killed, the survivor answers."""
    for url in itertools.islice(itertools.cycle(urls), attempts):
        try:
            response = requests.request(method, url + path, json=fields, timeout=10)
        except requests.ConnectionError:
            continue
        if response.status_code != 503:
            return response.json()
    raise AssertionError(f"no broker answered {method} {path}")


def raw_exchange(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as is over a socket; return the status, headers and body of the reply
    (read to the end: a refused request closes the connection)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip()
               for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


# --- /metrics -------------------------------------------------------------------------------

def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of the broker's /metrics, by (name, sorted labels)."""
    response = requests.get(url.rstrip("/") + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples: dict[tuple[str, tuple], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def warm_up_long_polls(api: Api) -> None:
    """One short long-poll: a broker process's first one waits until it LISTENs (PostgreSQL),
    and a test's waiter that read its topic that late could find a message without being
    woken."""
    topic = unique_topic("warm")
    api.producer(topic)
    assert api.consume_batch(topic, api.consumer(topic), wait_ms=1) == []


def longpoll_waiters(url: str) -> float:
    """How many requests wait in a long-poll on the broker now (all its workers)."""
    return metric(scrape(url), "lq_longpoll_waiters")
