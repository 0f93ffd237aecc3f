"""The SDK gzips request bodies over 4 KiB (unless told not to) and takes compressed replies
(zstd when it can) except from a broker on a loopback address, where replies come plain unless
``compress=True``; seen on the wire through a counting proxy. The logging handler gets it
through the SDK."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest
from lqhttp import unique_topic
from support import BrokerProcess, TopicReader
from wirecount import CountingProxy

from lq_logging import LogQueueHandler
from sdk import Client
from sdk.connections import accept_encoding, is_loopback

RECORD = "x" * 240  # with its JSON envelope, a log record of about 300 bytes


@pytest.fixture
def proxy(broker: BrokerProcess) -> Iterator[CountingProxy]:
    with CountingProxy(broker.url, keep=True) as counting:
        yield counting


def test_batches_over_4_kib_go_gzipped_and_arrive_whole(broker: BrokerProcess,
                                                         proxy: CountingProxy) -> None:
    topic = unique_topic("sdkgz")
    records = [f"{i} {RECORD}" for i in range(200)]
    with Client(proxy.url) as client, client.producer([topic]) as producer:
        proxy.reset()
        producer.send_batch(topic, records)
        sent, _ = proxy.sent, proxy.received
        assert b"Content-Encoding: gzip" in proxy.upstream_bytes
        assert sent * 5 < sum(map(len, records)), f"{sent} bytes sent for a 50 KB batch"
        proxy.reset()
        producer.send_batch(topic, ["small"])  # under 4 KiB: as it is
        assert b"Content-Encoding" not in proxy.upstream_bytes
    assert TopicReader(broker.url, topic).texts_until(201) == [*records, "small"]


def test_compression_can_be_turned_off(broker: BrokerProcess, proxy: CountingProxy) -> None:
    topic = unique_topic("sdkplain")
    records = [f"{i} {RECORD}" for i in range(50)]
    with Client(proxy.url, compress=False) as client:
        with client.producer([topic]) as producer:
            proxy.reset()
            producer.send_batch(topic, records)
            assert b"Content-Encoding" not in proxy.upstream_bytes
            assert proxy.sent > sum(map(len, records))
        with client.consumer([topic]) as consumer:
            proxy.reset()
            got = consumer.receive(topic, max=1000)
            assert b"Content-Encoding" not in proxy.downstream_bytes
            assert proxy.received > sum(map(len, records))
    assert [m.value for m in got] == records


def _reply_coding() -> bytes:
    """The coding the broker answers a compressing SDK with: zstd when both have it."""
    return b"zstd" if accept_encoding().startswith("zstd") else b"gzip"


def _fetch_through(url: str, topic: str, records: list[str], **options: object) -> list[str]:
    with Client(url, **options) as client:
        with client.producer([topic]) as producer:
            producer.send_batch(topic, records)
        with client.consumer([topic]) as consumer:
            return [m.value for m in consumer.fetch(topic, max=1000)[0]]


def test_a_loopback_broker_replies_plain_by_default(broker: BrokerProcess,
                                                    proxy: CountingProxy) -> None:
    topic = unique_topic("sdklo")
    records = [f"{i} {RECORD}" for i in range(300)]
    with Client(proxy.url) as client:
        with client.producer([topic]) as producer:
            producer.send_batch(topic, records)
        with client.consumer([topic]) as consumer:
            proxy.reset()
            got = consumer.fetch(topic, max=1000)[0]
            assert b"Accept-Encoding: identity" in proxy.upstream_bytes
            assert b"Content-Encoding" not in proxy.downstream_bytes
            assert proxy.received > sum(map(len, records))
    assert [m.value for m in got] == records


def test_compress_true_takes_compressed_replies_from_a_loopback_broker(
        broker: BrokerProcess, proxy: CountingProxy) -> None:
    topic = unique_topic("sdkrx")
    records = [f"{i} {RECORD}" for i in range(300)]
    with Client(proxy.url, compress=True) as client:
        with client.producer([topic]) as producer:
            producer.send_batch(topic, records)
        with client.consumer([topic]) as consumer:
            proxy.reset()
            got = consumer.receive(topic, max=1000)
            assert b"Content-Encoding: " + _reply_coding() in proxy.downstream_bytes
            assert proxy.received * 5 < sum(map(len, records))
            proxy.reset()
            fetched = consumer.fetch(topic, offset=0, max=1000)[0]
            assert b"Content-Encoding: " + _reply_coding() in proxy.downstream_bytes
    assert [m.value for m in got] == records == [m.value for m in fetched]


def _outward_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))  # TEST-NET-2: only picks the route
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if is_loopback(address) else address


def test_a_broker_on_another_address_replies_compressed_by_default(
        broker: BrokerProcess) -> None:
    address = _outward_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    topic = unique_topic("sdkfar")
    records = [f"{i} {RECORD}" for i in range(300)]
    with CountingProxy(broker.url, keep=True, host=address) as far:
        got = _fetch_through(far.url, topic, records)
        assert b"Accept-Encoding: " + accept_encoding().encode() in far.upstream_bytes
        assert b"Content-Encoding: " + _reply_coding() in far.downstream_bytes
        far.reset()
        assert _fetch_through(far.url, topic + "-plain", records, compress=False) == records
        assert b"Content-Encoding" not in far.downstream_bytes
    assert got == records


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True), ("LOCALHOST.", True), ("api.localhost", True), ("127.0.0.1", True),
    ("127.3.2.1", True), ("::1", True), ("[::1]", True), ("10.0.0.1", False),
    ("192.0.2.2", False), ("::ffff:10.0.0.1", False), ("example.com", False),
    ("localhost.example.com", False), ("128.0.0.1", False)])
def test_which_hosts_are_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_handler_ships_compressed_batches(broker: BrokerProcess,
                                              proxy: CountingProxy) -> None:
    topic = unique_topic("handlergz")
    logger = logging.getLogger(f"test.compression.{topic}")
    logger.propagate = False
    handler = LogQueueHandler(url=proxy.url, topic=topic)
    logger.addHandler(handler)
    try:
        for i in range(500):
            logger.warning("request %d served %s", i, RECORD)
        handler.flush()
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert b"Content-Encoding: gzip" in proxy.upstream_bytes
    texts = TopicReader(broker.url, topic).until(500)
    assert [t["message"] for t in texts] == [f"request {i} served {RECORD}" for i in range(500)]
