"""/metrics: Prometheus text that prometheus_client parses, with counters matching the traffic,
summed across gunicorn workers."""

from __future__ import annotations

import requests
from lqhttp import metric, scrape


def test_metrics_count_the_traffic_across_two_workers(db_url: str, start_broker) -> None:
    broker = start_broker(db_url, args=["--workers", "2", "--threads", "8"])
    url = broker.url
    session = requests  # a new connection per request, so both workers serve some
    before = scrape(url)
    pid = session.post(url + "/producer/register", json={"topic": "metered"}).json()["producer_id"]
    sizes = 0
    for i in range(30):  # 30 single messages, then 5 batches of 10: 80 messages
        message = f"message-{i}-é"
        sizes += len(message.encode())
        assert session.post(url + "/producer/produce", json={
            "topic": "metered", "producer_id": pid, "message": message}).ok
    for b in range(5):
        batch = [f"b{b}-{k}" for k in range(10)]
        sizes += sum(len(m.encode()) for m in batch)
        assert session.post(url + "/producer/produce", json={
            "topic": "metered", "producer_id": pid, "messages": batch}).ok
    for _ in range(7):  # 7 failures: an unknown producer id
        assert session.post(url + "/producer/produce", json={
            "topic": "metered", "producer_id": 12345, "message": "x"}).status_code == 400
    cid = session.post(url + "/consumer/register", json={"topic": "metered"}).json()["consumer_id"]
    taken = session.get(url + "/consumer/consume", params={
        "topic": "metered", "consumer_id": cid, "max": 50}).json()["messages"]
    assert len(taken) == 50

    after = scrape(url)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("lq_http_requests_total", endpoint="/producer/produce", method="POST",
                 status="200") == 35
    assert delta("lq_http_requests_total", endpoint="/producer/produce", method="POST",
                 status="400") == 7
    assert delta("lq_produced_messages_total") == 80
    assert delta("lq_produced_bytes_total") == sizes
    assert delta("lq_produce_batch_size_count") == 35
    assert delta("lq_produce_batch_size_sum") == 80
    assert delta("lq_consumed_messages_total") == 50
    assert delta("lq_http_request_seconds_count", endpoint="/consumer/consume") == 1
    assert metric(after, "lq_topic_messages", topic="metered") == 80
    assert metric(after, "lq_topic_max_lag", topic="metered") == 30
    assert metric(after, "lq_database_up") == 1
    assert metric(after, "lq_longpoll_waiters") == 0
