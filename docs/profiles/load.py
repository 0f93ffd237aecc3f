"""The client side of a profile: one lagging path through the SDK, for a fixed time.

    python docs/profiles/load.py --url http://127.0.0.1:PORT --path single --seconds 15
    python docs/profiles/load.py --url http://127.0.0.1:PORT --path consume --seconds 15

``single``: ``Producer.send`` of one 300-byte JSON log record per call. ``consume``:
``Consumer.fetch(max=1000)`` + ``Consumer.commit`` over a topic it fills first (a fresh
consumer starts again at the beginning when it reaches the end). Run under py-spy by
record.py; prints the calls and msg/s it managed.
"""

from __future__ import annotations

import argparse
import json
import time

from sdk import Client

PAYLOAD = json.dumps({"ts": "2026-01-01T12:00:00.000000+00:00", "level": "INFO",
                      "logger": "shop.orders", "message": "order 1 created " + "x" * 190})


def single(client: Client, topic: str, deadline: float) -> int:
    producer = client.producer([topic])
    sent = 0
    while time.monotonic() < deadline:
        producer.send(topic, PAYLOAD)
        sent += 1
    return sent


def consume(client: Client, topic: str, deadline: float) -> int:
    consumer = client.consumer([topic])
    got = 0
    while time.monotonic() < deadline:
        batch, _position = consumer.fetch(topic, max=1000)
        if not batch:
            consumer = client.consumer([topic])  # from the beginning again
            continue
        consumer.commit(topic, batch[-1].offset + 1)
        got += len(batch)
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--path", choices=("single", "consume"), required=True)
    parser.add_argument("--topic", required=True, help="an existing topic (filled for consume)")
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    with Client(args.url) as client:
        start = time.monotonic()
        run = single if args.path == "single" else consume
        moved = run(client, args.topic, start + args.seconds)
        elapsed = time.monotonic() - start
    print(f"{args.path}: {moved} messages in {elapsed:.1f} s = {moved / elapsed:,.0f} msg/s")


if __name__ == "__main__":
    main()
