"""The SDK gzips request bodies over 4 KiB (unless told not to) and takes compressed replies,
seen on the wire through a counting proxy; the logging handler gets it through the SDK."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from lqhttp import unique_topic
from support import BrokerProcess, TopicReader
from wirecount import CountingProxy

from lq_logging import LogQueueHandler
from sdk import Client

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


def test_consume_replies_come_gzipped_and_decoded(broker: BrokerProcess,
                                                   proxy: CountingProxy) -> None:
    topic = unique_topic("sdkrx")
    records = [f"{i} {RECORD}" for i in range(300)]
    with Client(proxy.url) as client:
        with client.producer([topic]) as producer:
            producer.send_batch(topic, records)
        with client.consumer([topic]) as consumer:
            proxy.reset()
            got = consumer.receive(topic, max=1000)
            assert b"Content-Encoding: gzip" in proxy.downstream_bytes
            assert proxy.received * 5 < sum(map(len, records))
    assert [m.value for m in got] == records


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
