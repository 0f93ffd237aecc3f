"""The classic API: create a topic, produce, consume.

Start a broker first (``lq broker``), then run::

    python examples/classic_client.py [URL]      # URL defaults to localhost:5000
"""

from __future__ import annotations

import contextlib
import sys

from sdk import MyQueue, QueueEmpty, TopicExists


def main(url: str = "localhost:5000") -> None:
    queue = MyQueue(url)
    with contextlib.suppress(TopicExists):  # a second run finds it there
        queue.createTopic("example-classic")
    print("topics:", queue.get_all_topics())

    producer = queue.createProducer(["example-classic"])
    for i in range(3):
        producer.enqueue(f"hello {i}", "example-classic")

    consumer = queue.createConsumer(["example-classic"])
    print("waiting:", consumer.getSize("example-classic"))
    while True:
        try:
            print("got:", consumer.dequeue("example-classic"))
        except QueueEmpty:
            break
    queue.close()


if __name__ == "__main__":
    main(*sys.argv[1:2])
