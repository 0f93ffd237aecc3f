"""Where a batch's producer id and seq come from: the handler's no-duplicate rule.

The broker appends a batch under a (producer id, seq) once, and drops a seq at or below
the last one it applied for that id as a duplicate. So a retry, or a replay after a crash,
must repeat the batch's first (producer id, seq), and on each producer id the seqs must
rise in the order the batches are *sent*. :class:`Seqs` keeps two producer ids, each
taking its seqs in its own send order:

* ``at_write``: a batch written to the spool gets its seq as it is written, in the ``b``
  line itself, from the *write* producer. The spool is sent in the order it is written,
  so no further write is needed before the send. Only possible once that producer is
  registered (:meth:`Seqs.warm`, with the first seq given at send time).
* ``at_send``: any other batch (in memory, spooled before the first registration, a part
  of a refused batch, a batch from an adopted spool that never had one) gets its seq just
  before it is sent, from the *send* producer; a spooled one has it written durably first.

Batches given a seq at write time are sent after every batch given one earlier on the same
id (the spool's order), and batches given one at send time are given it in send order:
neither id ever sees a seq below one it already applied, so nothing is dropped, and a
repeat is always the same (id, seq), so nothing is appended twice.
"""

from __future__ import annotations

from collections.abc import Callable

from sdk import Producer


class Seqs:
    """The two producers (see the module docstring); only the sender thread uses them."""

    def __init__(self, make_producer: Callable[[], Producer]) -> None:
        self._make = make_producer
        self._send: Producer | None = None
        self._write: Producer | None = None

    def at_send(self, topic: str) -> tuple[int, int]:
        """A new (producer id, seq) for a batch about to be sent (registers if needed)."""
        if self._send is None:
            self._send = self._make()
        pid = self._send.register(topic)
        return pid, self._send.next_seq(topic, pid)

    def at_write(self, topic: str) -> tuple[int, int] | None:
        """A new (producer id, seq) for a batch being written to the spool, or ``None`` when
        the write producer is not registered yet (the batch then gets one at send time)."""
        producer = self._write
        if producer is None:
            return None
        pid = producer.producer_ids.get(topic)
        if pid is None:
            return None
        return pid, producer.next_seq(topic, pid)

    def warm(self, topic: str) -> None:
        """Register the write producer (once the broker answers), so later spool writes can
        carry their seq. Raises what registration raises."""
        if self._write is None:
            self._write = self._make()
        self._write.register(topic)

    def send(self, topic: str, messages: list[str], producer_id: int | None,
             seq: int | None) -> None:
        """Send one batch under its own (producer id, seq)."""
        if self._send is None:
            self._send = self._make()
        self._send.send_batch(topic, messages, producer_id=producer_id, seq=seq)

    def ready(self, topic: str) -> bool:
        return self._write is not None and topic in self._write.producer_ids

    def forget(self) -> None:
        """The broker does not know our producer ids (a new database): register anew."""
        self._send = self._write = None


__all__ = ["Seqs"]
