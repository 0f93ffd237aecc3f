"""The transport's retry and failover policy, against local HTTP servers that fail on purpose.

Each :class:`ScriptedServer` is a real ``ThreadingHTTPServer`` on a free port that answers its
requests by a script: ``503``, ``500``, ``400``... (a JSON failure body with that status),
``close`` (the connection is dropped before any answer), ``hang`` (no answer until the test
ends, past the client's read timeout) or ``ok``; the last step repeats. Every request and
every backoff pause goes into one shared ``events`` list, in the order they happen (a request
is synchronous, so the order is deterministic): the tests assert on that order, not on time.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support import free_port

from sdk import (
    BadRequest,
    BrokerUnavailable,
    Client,
    InternalError,
    LogQueueError,
    TooLarge,
    Transport,
    Unauthorized,
    UnencodableRequest,
)

#: status -> the broker's ``error`` code for it.
FAILURES = {400: "bad_request", 401: "unauthorized", 413: "too_large", 500: "internal",
            503: "unavailable"}


class ScriptedServer:
    """An HTTP server answering request ``i`` with ``script[i]`` (the last step repeats)."""

    def __init__(self, name: str, script: list[str], events: list[str]) -> None:
        self.name = name
        self.script = script
        self.events = events
        self.bodies: list[bytes] = []
        self.paths: list[str] = []
        self.release = threading.Event()  # ends the "hang" steps
        self.gate: threading.Barrier | None = None  # when set, answers wait for each other
        self._lock = threading.Lock()
        self._served = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like the broker

            def do_GET(self) -> None:
                server.answer(self)

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    @property
    def requests(self) -> int:
        return len(self.bodies)

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        with self._lock:
            step = self.script[min(self._served, len(self.script) - 1)]
            self._served += 1
            self.bodies.append(body)
            self.paths.append(handler.path)
            self.events.append(self.name)
        if self.gate is not None:
            self.gate.wait(30)
        if step in ("close", "hang"):
            if step == "hang":
                self.release.wait(60)
            handler.close_connection = True  # no answer at all
            return
        status = 200 if step == "ok" else int(step)
        reply = ({"status": "success", "server": self.name} if status == 200 else
                 {"status": "failure", "error": FAILURES[status], "message": f"{step} on purpose"})
        data = json.dumps(reply).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def close(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The shared log of requests (by server name) and backoff pauses (``"pause"``)."""
    log: list[str] = []
    real_sleep = time.sleep
    test_thread = threading.current_thread()

    def sleep(seconds: float) -> None:  # observed, then really slept
        # Only the test's own (the transport's backoff runs in the caller's thread): threads
        # an earlier module left in this worker process sleep through the same function.
        if threading.current_thread() is test_thread:
            log.append("pause")
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    return log


@pytest.fixture
def serve(events: list[str]) -> Iterator[Callable[..., ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(name: str, *script: str) -> ScriptedServer:
        servers.append(ScriptedServer(name, list(script), events))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def transport(*servers: ScriptedServer, **options: object) -> Transport:
    options = {"retries": 5, "backoff": 0.001, "backoff_max": 0.002, **options}
    return Transport([s.url for s in servers], **options)  # type: ignore[arg-type]


# --- what is retried -------------------------------------------------------------------------
def test_5xx_and_lost_connections_are_retried_with_the_same_body(serve, events) -> None:
    a = serve("A", "503", "close", "500", "ok")
    with transport(a) as t:
        assert t.post("/producer/produce", {"seq": 7, "messages": ["m"]}) == {
            "status": "success", "server": "A"}
    assert events == ["A", "pause", "A", "pause", "A", "pause", "A"]  # one url: pause each time
    assert len(set(a.bodies)) == 1 and json.loads(a.bodies[0])["seq"] == 7


def test_a_read_timeout_is_retried(serve, events) -> None:
    a = serve("A", "hang", "ok")
    with transport(a, read_timeout=0.3) as t:
        assert t.get("/topics")["server"] == "A"
    assert events == ["A", "pause", "A"]


@pytest.mark.parametrize(("step", "error"), [("400", BadRequest), ("401", Unauthorized),
                                             ("413", TooLarge)])
def test_4xx_is_raised_at_once(serve, events, step: str, error: type[LogQueueError]) -> None:
    a = serve("A", step, "ok")
    b = serve("B", "ok")
    with transport(a, b) as t, pytest.raises(error) as info:
        t.get("/topics")
    assert info.value.status == int(step) and info.value.message == f"{step} on purpose"
    assert events == ["A"]  # not retried, not failed over, no pause
    assert t.url == a.url


def test_when_retries_run_out_the_last_failure_is_raised(serve, events) -> None:
    a = serve("A", "503")
    with transport(a, retries=2) as t, pytest.raises(BrokerUnavailable) as info:
        t.get("/topics")
    assert info.value.status == 503 and isinstance(info.value, ConnectionError)
    assert events == ["A", "pause", "A", "pause", "A"]

    b = serve("B", "500")
    with transport(b, retries=1) as t, pytest.raises(InternalError):
        t.get("/topics")
    assert a.requests == 3 and b.requests == 2


def test_retry_false_sends_once(serve, events) -> None:
    a = serve("A", "503", "ok")
    with transport(a) as t, pytest.raises(BrokerUnavailable):
        t.request("GET", "/topics", retry=False)
    assert events == ["A"]


def test_no_server_at_all_is_broker_unavailable_without_status() -> None:
    with Transport(f"127.0.0.1:{free_port()}", retries=1, backoff=0.001) as t, \
            pytest.raises(BrokerUnavailable) as info:
        t.get("/topics")
    assert info.value.status is None
    assert isinstance(info.value.__cause__, ConnectionError)  # refused: the OS's error


# --- failover --------------------------------------------------------------------------------
def test_failover_tries_the_next_url_at_once_and_sticks_to_it(serve, events) -> None:
    a = serve("A", "503")
    b = serve("B", "ok")
    with transport(a, b) as t:
        assert t.get("/topics")["server"] == "B"
        assert events == ["A", "B"]  # no pause: B had not failed yet
        assert t.url == b.url
        t.get("/topics")
        t.post("/producer/produce", {"seq": 1})
        assert events == ["A", "B", "B", "B"]  # sticky: A is not tried again

        b.script, a.script = ["close"], ["ok"]  # now B goes away and A is back
        assert t.get("/topics")["server"] == "A"
        assert events == ["A", "B", "B", "B", "B", "A"]
        assert t.url == a.url


def test_threads_that_see_one_url_fail_move_on_once(serve, events) -> None:
    """Four threads fail on A at the same moment: A -> B once, not A -> B -> A -> B -> A."""
    a = serve("A", "503")
    b = serve("B", "ok")
    a.gate = threading.Barrier(4)  # A answers only when all four requests are in
    answers: list[str] = []
    with transport(a, b) as t:
        threads = [threading.Thread(target=lambda: answers.append(t.get("/topics")["server"]))
                   for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        assert answers == ["B"] * 4
        assert t.url == b.url
    assert sorted(events) == ["A"] * 4 + ["B"] * 4  # no pause: each thread saw only A fail


def test_backoff_pauses_only_after_every_url_failed(serve, events) -> None:
    a = serve("A", "503")
    b = serve("B", "close")
    c = serve("C", "503")
    with transport(a, b, c, retries=7) as t, pytest.raises(BrokerUnavailable):
        t.get("/topics")
    assert events == ["A", "B", "C", "pause", "A", "B", "C", "pause", "A", "B"]


# --- requests that cannot be encoded ---------------------------------------------------------
@pytest.mark.parametrize(("method", "params"), [
    ("POST", {"topic": "app", "messages": ["fine", "lone \ud800 surrogate"]}),
    ("GET", {"topic": "\udcff"}),
    ("POST", {"topic": "app", "messages": [b"bytes are not JSON"]}),
])
def test_an_unencodable_request_is_refused_before_sending(serve, events, method: str,
                                                          params: dict) -> None:
    a = serve("A", "ok")
    with transport(a) as t, pytest.raises(UnencodableRequest) as info:
        t.request(method, "/producer/produce", params)
    assert isinstance(info.value, BadRequest) and isinstance(info.value, ValueError)
    assert info.value.code == "unencodable" and info.value.status is None
    assert events == []  # nothing was sent, nothing retried


def test_a_token_that_http_cannot_carry_is_refused(serve, events) -> None:
    a = serve("A", "ok")
    with Transport(a.url, token="jeton-\u2713") as t, pytest.raises(UnencodableRequest):
        t.get("/topics")
    assert events == []


def test_a_producer_batch_with_a_lone_surrogate_raises_the_sdk_error(serve, events) -> None:
    a = serve("A", "ok")
    with Client(a.url) as client, pytest.raises(UnencodableRequest) as info:
        client.producer().send_batch("app", ["fine", "\ud800"], producer_id=1, seq=1)
    assert "surrogates not allowed" in info.value.message
    assert events == []
