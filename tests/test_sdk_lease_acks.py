"""A named consumer's stream acks each finished lease inside the request for the next one (one
request per batch), only once the loop has finished the lease's messages; and, through a
broker that ignores the lease request's `ack` (an older one: here a real broker behind a real
HTTP proxy that strips the field), it falls back to an ack of its own."""

from __future__ import annotations

import gzip
import http.client
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
from lqhttp import metric, scrape
from support import BrokerProcess, wait_until

from sdk import Client, Consumer
from sdk.exceptions import LeaseLost

BATCH = 20
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class AckStrippingProxy:
    """An HTTP proxy in front of a broker that counts requests by path and removes the `ack`
    field from lease request bodies, as a broker from before that field would ignore it."""

    def __init__(self, upstream: str) -> None:
        self.requests: Counter[str] = Counter()
        self.stripped = 0
        self._lock = threading.Lock()
        host, port = upstream.removeprefix("http://").rsplit(":", 1)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                self._forward(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

            def _forward(self, body: bytes | None) -> None:
                path = self.path.split("?", 1)[0].rstrip("/")
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in HOP_BY_HOP}
                if body is not None and path == "/consumer/lease":
                    body, headers = proxy.strip(body, headers)
                with proxy._lock:
                    proxy.requests[path] += 1
                upstream_conn = http.client.HTTPConnection(host, int(port), timeout=60)
                try:
                    upstream_conn.request(self.command, self.path, body=body, headers=headers)
                    reply = upstream_conn.getresponse()
                    data = reply.read()
                    self.send_response(reply.status)
                    for name, value in reply.getheaders():
                        if name.lower() not in HOP_BY_HOP:
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    upstream_conn.close()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def strip(self, body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        """The JSON body without `ack` (inflated first when the client gzipped it)."""
        if headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
            headers = {k: v for k, v in headers.items() if k.lower() != "content-encoding"}
        fields = orjson.loads(body)
        if fields.pop("ack", None) is not None:
            with self._lock:
                self.stripped += 1
        return orjson.dumps(fields), headers

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def topic(client: Client) -> str:
    name = f"ack-{uuid.uuid4().hex[:12]}"
    client.create_topic(name)
    with client.producer() as producer:
        producer.send_many(name, [f"m{i}" for i in range(5 * BATCH)])
    return name


@pytest.fixture
def proxy(broker: BrokerProcess) -> Iterator[AckStrippingProxy]:
    stripping = AckStrippingProxy(broker.url)
    yield stripping
    stripping.close()


def _lease_and_ack_requests(url: str) -> dict[str, float]:
    samples = scrape(url)
    return {path: metric(samples, "lq_http_requests_total", endpoint=path, method="POST",
                         status="200") for path in ("/consumer/lease", "/consumer/ack")}


def _drain(consumer: Consumer, topic: str, lag_at: dict[int, int]) -> list[int]:
    """The offsets a stream of ``consumer`` yields; at each offset in ``lag_at``, the
    registration's lag (what the broker counts as not yet acked) seen then."""
    offsets = []
    for msg in consumer.stream(topic, batch=BATCH, wait=0, until_empty=True):
        offsets.append(msg.offset)
        if msg.offset in lag_at:
            lag_at[msg.offset] = consumer.size(topic)
    return offsets


def test_a_stream_acks_each_lease_with_the_request_for_the_next(
        client: Client, topic: str, broker: BrokerProcess) -> None:
    """5 leases: the first request carries no ack, each next one acks the lease before it,
    the last (finding no work, so the stream ends) acks the fifth. No ack of its own."""
    before = _lease_and_ack_requests(broker.url)
    lag_at = {BATCH - 1: -1, BATCH + 5: -1}
    with Consumer(client, name="one-request") as consumer:
        assert _drain(consumer, topic, lag_at) == list(range(5 * BATCH))
        assert consumer.size(topic) == 0, "the last lease was not acked"
    after = _lease_and_ack_requests(broker.url)
    counts = {path: after[path] - before[path] for path in after}
    assert counts == {"/consumer/lease": 6, "/consumer/ack": 0}, counts
    # At least once: a lease is acked only after the loop finished its last message.
    assert lag_at == {BATCH - 1: 5 * BATCH, BATCH + 5: 4 * BATCH}, lag_at


def test_a_broker_that_ignores_the_ack_field_gets_acks_of_their_own(
        topic: str, proxy: AckStrippingProxy) -> None:
    lag_at = {BATCH - 1: -1, BATCH + 5: -1}
    with Consumer(proxy.url, name="old-broker") as consumer:
        assert _drain(consumer, topic, lag_at) == list(range(5 * BATCH))
        assert consumer.size(topic) == 0, "the last lease was not acked"
    assert proxy.stripped == 5, "the proxy did not strip the acks: this test tests nothing"
    assert proxy.requests["/consumer/lease"] == 6
    assert proxy.requests["/consumer/ack"] == 5, proxy.requests
    assert lag_at == {BATCH - 1: 5 * BATCH, BATCH + 5: 4 * BATCH}, lag_at


def test_a_lost_ack_through_such_a_broker_hands_out_nothing(
        client: Client, topic: str, proxy: AckStrippingProxy) -> None:
    """The lease request succeeded, its ack (sent apart) finds the lease gone: lease() raises
    LeaseLost and gives back what it was handed, which the next asker gets at once."""
    with Consumer(proxy.url, name="lost-old") as mine, Consumer(client, name="lost-old") as other:
        held = mine.lease(topic, max=BATCH, lease_ms=50)
        assert held is not None and (held.first, held.last) == (0, BATCH - 1)
        # Asked before the lease expires, the other holder would get the next range instead.
        wait_until(lambda: datetime.now(UTC) > held.expires, timeout=15,
                   message="the lease's expiry (the broker's clock: this machine's)")
        theirs = other.lease(topic, max=BATCH)
        assert theirs is not None and (theirs.first, theirs.deliveries) == (0, 2), theirs
        with pytest.raises(LeaseLost):
            mine.lease(topic, max=BATCH, ack=held)
        assert proxy.stripped == 1 and proxy.requests["/consumer/release"] == 1
        again = other.lease(topic, max=BATCH)
        assert again is not None and (again.first, again.last, again.deliveries) == (
            BATCH, 2 * BATCH - 1, 2), "the range handed out with the lost ack was kept"
        other.ack(theirs)
        other.ack(again)
