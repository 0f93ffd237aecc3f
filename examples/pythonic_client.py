"""The Pythonic API: send, send_many, receive with a long-poll, and an at-least-once stream.

Start a broker first (``lq broker``), then run::

    python examples/pythonic_client.py [URL ...]   # several urls fail over in order
"""

from __future__ import annotations

import sys

from sdk import Client, LogQueueError


def main(urls: list[str]) -> None:
    with Client(urls or ["localhost:5000"]) as client:
        producer = client.producer()
        offset = producer.send("example-pythonic", "order 1 created")
        first, last = producer.send_many("example-pythonic", ["order 2 created",
                                                              "order 3 created"])
        print(f"sent offsets {offset}, {first}..{last}")

        # At most once: the position moves as the broker answers.
        peek = client.consumer(["example-pythonic"], start="latest")  # registers now
        producer.send("example-pythonic", "order 4 created")
        for msg in peek.receive("example-pythonic", max=10, wait=1.0):
            print("received", msg.offset, msg.value)

        # At least once: a named consumer resumes where it left off on the next run.
        billing = client.consumer(name="billing")
        for msg in billing.stream("example-pythonic", batch=100, wait=1.0, until_empty=True):
            print("billing", msg.offset, msg.value, msg.ts)

        for stats in client.stats():
            print(stats)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except LogQueueError as exc:
        sys.exit(f"error: {exc!r}")
