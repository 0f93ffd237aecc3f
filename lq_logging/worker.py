"""One thread per (pipeline, topic): fetch a batch, deliver it, commit after it.

A :class:`TopicWorker` gets everything it uses passed in: its pipeline, its consumer, the
runner's :class:`~lq_logging.gate.Gate` (the stop logic), a :class:`BrokerWatch` (what is said
while the broker does not answer) and a :class:`Progress` (what the status line counts).

Failures: the broker down or answering 5xx is retried with backoff (capped at
:data:`BACKOFF_MAX` seconds) for as long as it takes, and said in one line every
:data:`REPORT_EVERY` seconds, whatever the number of workers. Refusals that retrying cannot fix
(a refused token, a deleted topic) stop the pipeline.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import orjson

from lq_logging.gate import Gate
from lq_logging.pipeline import Pipeline, PipelineFailed
from lq_logging.sinks import Entry, Interrupted
from sdk import Client, Consumer, LogQueueError, Message
from sdk.exceptions import (
    BadRequest,
    BrokerUnavailable,
    Forbidden,
    NotRegistered,
    Unauthorized,
    UnknownId,
    UnknownTopic,
)

#: What a fetch returns: the messages and the consumer's position.
Fetched = tuple[list[Message], int]

#: Refusals that mean the topic or the registration no longer exists: retrying cannot help.
GONE = (UnknownTopic, UnknownId, NotRegistered)

#: Digits enough for an integer orjson would not keep whole (decode_entries): every digit
#: byte mapped to "0", every other byte to a space.
_DIGITS_AS_ZERO = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_NINETEEN_DIGITS = b"0" * 19

#: The longest wait between two tries of a broker call, in seconds.
BACKOFF_MAX = 5.0
#: While the broker does not answer, one line at most this often (seconds).
REPORT_EVERY = 5.0


def gone_reason(what: str, exc: Exception) -> str:
    """One wording for "the topic or registration vanished", whichever call noticed it
    (a delete can land between a fetch and its commit)."""
    return (f"{what}: the topic or this consumer's registration is gone (deleted, or "
            f"expired by --consumer-ttl): {exc}")


def decode_entries(topic: str, messages: Sequence[Message]) -> list[Entry]:
    """A batch's entries, as :meth:`Entry.decode` makes them. A record parses with orjson
    (3 times faster than json on log records: the batch's decoding was a quarter of a
    runner's CPU); what orjson refuses (a lone surrogate escape, NaN, not JSON at all) goes
    through ``Entry.decode``, which parses as json does, and so does a batch with 19 digits
    in a row somewhere: orjson makes an integer past 64 bits a float, json keeps it whole."""
    if _long_number([m.value for m in messages]):
        return [Entry.decode(topic, m.offset, m.value, m.ts) for m in messages]
    entries = []
    for m in messages:
        raw = m.value
        if raw[:1] == "{":
            try:
                record = orjson.loads(raw)
            except ValueError:  # orjson.JSONDecodeError
                record = None
            if record.__class__ is dict:
                entries.append(Entry(topic, m.offset, record, raw, m.ts))
                continue
        entries.append(Entry.decode(topic, m.offset, raw, m.ts))
    return entries


def _long_number(texts: list[str]) -> bool:
    """Whether 19 digits in a row occur in ``texts`` (bytes.translate and a substring search:
    a regular expression took longer than the parse it guards)."""
    joined = "\n".join(texts).encode("utf-8", "surrogatepass")
    return _NINETEEN_DIGITS in joined.translate(_DIGITS_AS_ZERO)


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def outage_reason(exc: BaseException) -> str:
    """A few words for why no broker answered: ``connection refused``, ``timed out``, ``HTTP
    503: ...``, instead of the whole urllib3 chain."""
    for cause in _causes(exc):
        if isinstance(cause, socket.gaierror):
            return "host not found"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ConnectionResetError):
            return "connection reset"
        if isinstance(cause, TimeoutError) or "Timeout" in type(cause).__name__:
            return "timed out"
    status = getattr(exc, "status", None)
    if status:
        message = str(getattr(exc, "message", None) or exc)
        return message if message.startswith("HTTP ") else f"HTTP {status}: {message}"
    return f"{type(exc).__name__}: {exc}"


class BrokerWatch:
    """Says that the broker does not answer: at once, then one line every ``every`` seconds
    while it lasts (shared by every worker: one line, not one per worker), and once when it
    answers again.

    Args:
        urls: the broker url(s), as configured.
        say: one diagnostic line.
    """

    def __init__(self, urls: str, say: Callable[[str], None],
                 every: float = REPORT_EVERY) -> None:
        self.urls = urls
        self._say = say
        self._every = every
        self._lock = threading.Lock()
        self._down = False
        self._next = 0.0

    def failed(self, what: str, exc: LogQueueError) -> None:
        if isinstance(exc, BrokerUnavailable) and exc.status is None:
            line = f"broker {self.urls} not answering ({outage_reason(exc)}); retrying"
        elif isinstance(exc, BrokerUnavailable):
            line = f"broker {self.urls} unavailable ({outage_reason(exc)}); retrying"
        else:
            line = f"broker {self.urls}: {what} failed ({exc}); retrying"
        with self._lock:
            now = time.monotonic()
            self._down = True
            if now < self._next:
                return
            self._next = now + self._every
        self._say(line)

    def answered(self) -> None:
        with self._lock:
            if not self._down:
                return
            self._down = False
            self._next = 0.0
        self._say(f"broker {self.urls} answers again")


class Progress:
    """What the workers report: records delivered, and when the last of them is ready
    (``on_ready`` runs then, once)."""

    def __init__(self, workers: int, on_ready: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._waiting = workers
        self._on_ready = on_ready
        self.records = 0

    def delivered(self, count: int) -> None:
        with self._lock:
            self.records += count

    def ready(self) -> None:
        with self._lock:
            self._waiting -= 1
            last = self._waiting == 0
        if last:
            self._on_ready()


class TopicWorker(threading.Thread):
    """Fetch -> deliver -> commit for one topic of one pipeline.

    Prefetch: once a batch is in hand, the next one (from the offset after its last message,
    the position does not move) is fetched on a short-lived daemon thread while this one is
    written, flushed and committed. Commits stay in order and only follow a written batch; a
    prefetched batch is only ever used as the batch from exactly the offset just committed
    (otherwise, or when the prefetch failed, it is fetched again), and dropped when stopping.

    ``until_empty``: fetch without long-polling, and end at the first empty fetch.
    """

    def __init__(self, pipeline: Pipeline, topic: str, consumer: Consumer, *, gate: Gate,
                 watch: BrokerWatch, progress: Progress, prefetch: bool = True,
                 until_empty: bool = False) -> None:
        super().__init__(name=f"lq-consume:{pipeline.name}:{topic}", daemon=True)
        self.pipeline = pipeline
        self.topic = topic
        self.consumer = consumer
        self.gate = gate
        self.watch = watch
        self.progress = progress
        self.prefetch = prefetch
        self.until_empty = until_empty
        self.wait_s = 0.0 if until_empty else pipeline.config.wait
        self._busy = False

    def run(self) -> None:
        try:
            self._run()
        except PipelineFailed as exc:
            self.gate.fail(self.pipeline, str(exc))
        except Interrupted as exc:
            self.gate.interrupt(self.pipeline, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must still stop the pipeline loudly
            self.gate.fail(self.pipeline, f"unexpected {type(exc).__name__}: {exc}")
        finally:
            # Only now, with a failure or interruption recorded: the main thread decides the
            # exit status as soon as no worker is busy.
            self._leave_busy()

    def _enter_busy(self) -> bool:
        self._busy = self.gate.enter_busy(self.pipeline)
        return self._busy

    def _leave_busy(self) -> None:
        if self._busy:
            self._busy = False
            self.gate.leave_busy()

    def _broker(self, what: str, call: Callable[[], Any]) -> Any:
        """Call the broker until it answers, backing off while it is down; ``None`` when
        asked to stop meanwhile. Refusals that retrying cannot fix stop the pipeline."""
        delay = 0.5
        while self.gate.keep_going(self.pipeline):
            try:
                result = call()
            except (Unauthorized, Forbidden) as exc:
                raise PipelineFailed(f"the broker refused the token ({what}): {exc}") from exc
            except BadRequest as exc:
                raise PipelineFailed(f"the broker refused {what}: {exc}") from exc
            except GONE as exc:
                raise PipelineFailed(gone_reason(what, exc)) from exc
            except LogQueueError as exc:
                self.watch.failed(f"{what} on {self.topic!r}", exc)
                self.gate.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            self.watch.answered()
            return result
        return None

    def _register(self) -> bool:
        client = self.consumer.client
        done = self._broker("creating the topic", lambda: _create_topic(client, self.topic))
        if not done:
            return False
        return bool(self._broker("registering the consumer",
                                 lambda: self.consumer.register(self.topic)))

    def _fetch(self, offset: int | None) -> Fetched:
        return self.consumer.fetch(self.topic, offset=offset, max=self.pipeline.config.batch,
                                   wait=self.wait_s)

    def _run(self) -> None:
        if not self._register():
            return
        self.progress.ready()
        offset: int | None = None
        ahead: tuple[int, Future[Fetched]] | None = None  # (its offset, the fetch)
        while self.gate.keep_going(self.pipeline):
            fetched = self._prefetched(ahead, offset)
            ahead = None
            if fetched is None:
                fetched = self._broker("fetch", lambda at=offset: self._fetch(at))
            if fetched is None:
                return
            messages, position = fetched
            if not self._enter_busy():
                return  # stopping: abandon the fetch; nothing was written
            if offset is None:
                offset = position
            if messages:
                next_offset = messages[-1].offset + 1
                if self.prefetch:
                    ahead = (next_offset, self._prefetch(next_offset))
                entries = decode_entries(self.topic, messages)
                self.pipeline.deliver(self.topic, entries)
                offset = max(next_offset, self._commit(next_offset))
                self.progress.delivered(len(messages))
            self._leave_busy()
            if not messages and self.until_empty:
                return

    def _prefetch(self, offset: int) -> Future[Fetched]:
        """Fetch from ``offset`` on a daemon thread (one try: a failure is left to the next
        regular fetch, which backs off and reports)."""
        future: Future[Fetched] = Future()

        def fetch() -> None:
            try:
                future.set_result(self._fetch(offset))
            except BaseException as exc:  # noqa: BLE001 - handed to the worker
                future.set_exception(exc)

        threading.Thread(target=fetch, name=f"{self.name}:prefetch", daemon=True).start()
        return future

    @staticmethod
    def _prefetched(ahead: tuple[int, Future[Fetched]] | None,
                    offset: int | None) -> Fetched | None:
        """The prefetched batch when it starts at ``offset`` and its fetch succeeded."""
        if ahead is None or ahead[0] != offset:
            return None  # none, or the commit moved elsewhere (another runner, same name)
        try:
            return ahead[1].result()
        except LogQueueError:
            return None

    def _commit(self, offset: int) -> int:
        return self._finish(f"the commit of offset {offset}",
                            lambda: self.consumer.commit(self.topic, offset))

    def _finish(self, what: str, call: Callable[[], Any]) -> Any:
        """Commit (or ack), retrying while the broker is down (each try is the SDK's own
        retries). Once stopping, a failed try is the last: the batch is written but not
        committed, and :class:`Interrupted` says it is delivered again. A stop request during
        the wait between tries still gets one more try ("finish the batch")."""
        delay = 0.5
        while True:
            try:
                result = call()
            except GONE as exc:
                raise PipelineFailed(gone_reason(what, exc)) from exc
            except (Unauthorized, BadRequest) as exc:
                raise PipelineFailed(f"the broker refused {what} on {self.topic!r}: "
                                     f"{exc}") from exc
            except LogQueueError as exc:
                if self.gate.stopping:
                    raise Interrupted(
                        f"stopped before {what} on {self.topic!r} succeeded ({exc}); the "
                        "batch was written and is delivered again") from exc
                self.watch.failed(f"{what} on {self.topic!r}", exc)
                self.gate.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            self.watch.answered()
            return result


__all__ = ["BrokerWatch", "Progress", "TopicWorker", "decode_entries", "gone_reason",
           "outage_reason"]


def _create_topic(client: Client, topic: str) -> bool:
    """Create the topic if it is missing. A consume-only token may not create topics: then
    the topic must exist already, and registering says so if it does not."""
    with contextlib.suppress(Forbidden):
        client.create_topic(topic, exist_ok=True)
    return True
