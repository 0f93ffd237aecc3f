"""Path 2 of measure.py, consume 1,000 + commit: the layers, the raw SELECT + UPDATE, and the
per-batch costs of building and parsing one reply (pydantic, json, orjson, msgspec when
importable, the SDK's Message objects)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import closing

import requests
from measure import PAYLOAD, ROUNDS, Layer, Sample, in_process, run_layers

from sdk import Client
from sdk.client import messages_from as sdk_messages


def http_consume_step(url: str, session: requests.Session, topic: str,
                      decode: bool) -> Callable[[], None]:
    cid = session.post(url + "/consumer/register", json={"topic": topic}).json()["consumer_id"]

    def step() -> None:
        reply = session.get(url + "/consumer/fetch",
                            params={"topic": topic, "consumer_id": cid, "max": 1000})
        if decode:
            last = json.loads(reply.content)["messages"][-1]["offset"]
        else:  # the last offset without decoding: it is near the end of the body
            tail = reply.content[reply.content.rfind(b'"offset":') + 9:]
            last = int(tail[:tail.index(b",")])
        session.post(url + "/consumer/commit",
                     json={"topic": topic, "consumer_id": cid, "offset": last + 1})

    return step


def consume_layers(url: str, db_url: str, batches: int, pid: int) -> list[tuple[str, Sample]]:
    store, flask_client, client, topic = in_process(url, db_url, "measure-c")
    producer = client.producer([topic])
    for _ in range(batches * (ROUNDS + 1) + 20):
        producer.send_many(topic, [PAYLOAD] * 1000)
    session = requests.Session()
    session.trust_env = False
    store_cid = client.consumer([topic]).register(topic)
    flask_cid = client.consumer([topic]).register(topic)

    def in_store() -> None:
        batch, _pos = store.consumers.fetch(topic, store_cid, 1000)
        store.consumers.commit(topic, store_cid, batch.messages[-1][0] + 1)

    def in_flask() -> None:
        reply = flask_client.get("/consumer/fetch", query_string={
            "topic": topic, "consumer_id": flask_cid, "max": 1000}).get_json()
        flask_client.post("/consumer/commit", json={
            "topic": topic, "consumer_id": flask_cid,
            "offset": reply["messages"][-1]["offset"] + 1})

    consumer = client.consumer([topic])
    zipped = Client(url, compress=True)  # a loopback broker's replies come plain by default
    zipped_consumer = zipped.consumer([topic])

    def sdk_step() -> None:
        batch, _pos = consumer.fetch(topic, max=1000)
        consumer.commit(topic, batch[-1].offset + 1)

    def zipped_step() -> None:
        batch, _pos = zipped_consumer.fetch(topic, max=1000)
        zipped_consumer.commit(topic, batch[-1].offset + 1)

    layers = [
        Layer("Store.fetch + Store.commit in-process (no Flask, no HTTP)", in_store, batches),
        Layer("Flask test client: GET fetch + POST commit, in-process (no HTTP)", in_flask,
              batches),
        Layer("HTTP requests: GET fetch (reply not decoded) + POST commit",
              http_consume_step(url, session, topic, False), batches, pid),
        Layer("HTTP requests: GET fetch + json.loads + POST commit",
              http_consume_step(url, session, topic, True), batches, pid),
        Layer("SDK: Consumer.fetch + Consumer.commit (loopback: replies plain)", sdk_step,
              batches, pid),
        Layer("SDK: the same with compress=True (zstd replies when zstandard is importable)",
              zipped_step, batches, pid),
    ]
    try:
        return run_layers(layers)
    finally:
        client.close()
        zipped.close()


def raw_consume_layer(db: str, batches: int) -> list[tuple[str, Sample]]:
    """SELECT 1,000 rows of lq_messages + UPDATE an lq_consumers position + COMMIT."""
    import psycopg2

    with closing(psycopg2.connect(db)) as conn, conn.cursor() as cur:
        cur.execute("SELECT topic_id, MIN(msg_offset), MAX(msg_offset) FROM lq_messages "
                    "GROUP BY topic_id ORDER BY COUNT(*) DESC LIMIT 1")
        topic_id, low, high = cur.fetchone()
        cur.execute("SELECT id FROM lq_consumers WHERE topic_id = %s LIMIT 1", (topic_id,))
        consumer_id = cur.fetchone()[0]
        position = [low]

        def step() -> None:
            cur.execute("SELECT msg_offset, body, ts_us FROM lq_messages WHERE topic_id = %s "
                        "AND msg_offset >= %s ORDER BY msg_offset LIMIT 1000",
                        (topic_id, position[0]))
            rows = cur.fetchall()
            position[0] = rows[-1][0] + 1 if rows[-1][0] + 1000 < high else low
            cur.execute("UPDATE lq_consumers SET position = %s WHERE id = %s",
                        (position[0], consumer_id))
            conn.commit()

        return run_layers([Layer("PostgreSQL: SELECT 1,000 rows + UPDATE position + COMMIT "
                                 "(psycopg2)", step, batches)])


def reply_costs(calls: int) -> list[tuple[str, Sample]]:
    """One fetch reply of 1,000 messages: building it on the broker, parsing it in the SDK."""
    from broker import schemas as s
    from broker.replies import message_items as api_messages
    from broker.store import Message, iso_time

    stamp = time.time_ns() // 1000
    found = [Message(i, PAYLOAD, stamp) for i in range(1000)]
    items = api_messages(found)
    doc = {"status": "success", "messages": items, "position": 0}
    body = s.FetchedBatch(messages=items, position=0).model_dump_json(exclude_none=True)
    layers = [
        Layer("broker: iso_time x 1,000", lambda: [iso_time(m.ts_us) for m in found], calls),
        Layer("broker: replies.message_items (dicts, iso_time)",
              lambda: api_messages(found), calls),
        Layer("broker: FetchedBatch(...).model_dump_json (pydantic)",
              lambda: s.FetchedBatch(messages=items, position=0).model_dump_json(
                  exclude_none=True), calls),
        Layer("broker: json.dumps of the same dict", lambda: json.dumps(doc), calls),
        Layer("client: json.loads of the reply", lambda: json.loads(body), calls),
        Layer("client: json.loads + the SDK's Message objects (fromisoformat)",
              lambda: sdk_messages("t", json.loads(body)["messages"]), calls),
    ]
    return run_layers(layers + optional_json_layers(doc, body, calls))


def optional_json_layers(doc: dict, body: str, calls: int) -> list[Layer]:
    layers = []
    try:
        import orjson

        layers += [Layer("broker: orjson.dumps", lambda: orjson.dumps(doc), calls),
                   Layer("client: orjson.loads", lambda: orjson.loads(body), calls)]
    except ImportError:
        pass
    try:
        import msgspec

        encoder, decoder = msgspec.json.Encoder(), msgspec.json.Decoder()
        layers += [Layer("broker: msgspec encode", lambda: encoder.encode(doc), calls),
                   Layer("client: msgspec decode", lambda: decoder.decode(body), calls)]
    except ImportError:
        pass
    return layers
