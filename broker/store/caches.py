"""In-process caches of what does not change once written: a topic's id, a registration's
topic. They only save a round trip; the database stays the authority.

A delete in another process can make an entry stale (a topic deleted, perhaps re-created
under a new id). Every path that depends on an entry meets the database (the counter row,
the registration row), notices, evicts the entry and retries once (`retry_stale_topic`), so
answers are the database's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from sqlalchemy import Connection, TextClause

from ..errors import NotRegistered, UnknownId, UnknownTopic
from . import queries as q

if TYPE_CHECKING:
    from .database import Database

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

CACHE_LIMIT = 100_000  # entries per in-process cache


def remember(cache: dict[K, V], key: K, value: V) -> None:
    """Past CACHE_LIMIT entries a cache starts again, so a long-running broker's memory
    stays bounded however many clients come and go."""
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[key] = value


class StaleTopic(UnknownTopic):
    """A cached topic id turned out deleted: the operation is retried once with a fresh lookup."""


class RegistrationGone(UnknownId):
    """A registration row is missing: unregistered, or its whole topic deleted meanwhile."""

    def __init__(self, kind: str, reg_id: int) -> None:
        super().__init__(f"{kind} id {reg_id} is unknown")
        self.kind = kind
        self.reg_id = reg_id


class RegisteredElsewhere(NotRegistered):
    """A registration row names another topic id than the one cached for the topic's name:
    registered for another topic, or for this topic re-created since the id was cached."""

    def __init__(self, kind: str, reg_id: int) -> None:
        super().__init__(f"{kind} {reg_id} is not registered for this topic")
        self.kind = kind
        self.reg_id = reg_id


class Registrations:
    """Which topic each producer (or consumer) id is registered for."""

    def __init__(self, db: Database, kind: str, select_topic: TextClause,
                 delete: TextClause) -> None:
        self.db = db
        self.kind = kind
        self._select_topic = select_topic
        self._delete = delete
        self._topics: dict[int, int] = {}

    def check(self, reg_id: int, topic_id: int, conn: Connection | None = None) -> None:
        """UnknownId or NotRegistered unless `reg_id` is registered for `topic_id`."""
        registered = self._topics.get(reg_id)
        if registered is not None and registered != topic_id:
            self._topics.pop(reg_id)  # maybe stale (a topic deleted and re-created): ask
            registered = None
        if registered is None:
            with self.db.transaction(conn=conn) as tx:
                registered = tx.execute(self._select_topic, {"id": reg_id}).scalar()
            if registered is None:
                raise UnknownId(f"{self.kind} id {reg_id} is unknown")
            remember(self._topics, reg_id, registered)
        if registered != topic_id:
            raise RegisteredElsewhere(self.kind, reg_id)

    def unregister(self, topic_id: int, reg_id: int) -> None:
        self.check(reg_id, topic_id)
        with self.db.transaction(write=True) as conn:
            deleted = conn.execute(self._delete, {"id": reg_id, "topic": topic_id}).rowcount
        self.forget(reg_id)
        if not deleted:
            raise UnknownId(f"{self.kind} id {reg_id} is unknown")

    def remember(self, reg_id: int, topic_id: int) -> None:
        remember(self._topics, reg_id, topic_id)

    def forget(self, reg_id: int) -> None:
        self._topics.pop(reg_id, None)

    def forget_topic(self, topic_id: int) -> None:
        for reg_id in [r for r, t in self._topics.items() if t == topic_id]:
            self._topics.pop(reg_id, None)


class Caches:
    """Topic ids by name, and the producer and consumer registrations."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._topic_ids: dict[str, int] = {}
        self.producers = Registrations(db, "producer", q.SELECT_PRODUCER_TOPIC,
                                       q.DELETE_PRODUCER)
        self.consumers = Registrations(db, "consumer", q.SELECT_CONSUMER_TOPIC,
                                       q.DELETE_CONSUMER)
        self.registrations = {"producer": self.producers, "consumer": self.consumers}
        self._on_forget: list[Callable[[int], None]] = []

    def topic_id(self, name: str, conn: Connection | None = None) -> int:
        """The topic's id (cached), or UnknownTopic."""
        topic_id = self._topic_ids.get(name)
        if topic_id is not None:
            return topic_id
        with self.db.transaction(conn=conn) as tx:
            topic_id = tx.execute(q.SELECT_TOPIC_ID, {"name": name}).scalar()
        if topic_id is None:
            raise UnknownTopic(f"Topic '{name}' does not exist")
        remember(self._topic_ids, name, topic_id)
        return topic_id

    def on_forget_topic(self, callback: Callable[[int], None]) -> None:
        """Call `callback(topic_id)` whenever a topic's entries are evicted."""
        self._on_forget.append(callback)

    def forget_topic(self, name: str, topic_id: int) -> None:
        self._topic_ids.pop(name, None)
        for registrations in self.registrations.values():
            registrations.forget_topic(topic_id)
        for callback in self._on_forget:
            callback(topic_id)

    def topic_gone(self, name: str) -> NoReturn:
        """The topic's row is missing: deleted (perhaps by another process, perhaps re-created
        since). A cached id is evicted and the operation retried (StaleTopic)."""
        topic_id = self._topic_ids.get(name)
        if topic_id is not None:
            self.forget_topic(name, topic_id)
            raise StaleTopic(f"Topic '{name}' does not exist")
        raise UnknownTopic(f"Topic '{name}' does not exist")

    def is_stale(self, name: str) -> bool:
        """Whether the cached id of `name` is no longer its id (then it is evicted)."""
        cached = self._topic_ids.get(name)
        if cached is None:
            return False
        with self.db.transaction() as conn:
            current = conn.execute(q.SELECT_TOPIC_ID, {"name": name}).scalar()
        if current == cached:
            return False
        self.forget_topic(name, cached)
        return True


def retry_stale_topic(method: Callable[..., T]) -> Callable[..., T]:
    """Retry once when a cached topic id turned out deleted. Decorated methods belong to an
    object with `caches` and take the topic's name first, so a missing registration can tell
    "topic gone" from "id gone"."""

    @functools.wraps(method)
    def retry(self: Any, topic: str, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, topic, *args, **kwargs)
        except StaleTopic:
            return method(self, topic, *args, **kwargs)
        except (RegistrationGone, RegisteredElsewhere) as missed:
            # Before "unknown id" or "not registered": is the cached topic id still the
            # topic's? If not (deleted, perhaps re-created elsewhere), retry with the new one.
            self.caches.registrations[missed.kind].forget(missed.reg_id)
            if not self.caches.is_stale(topic):
                raise
            return method(self, topic, *args, **kwargs)

    return retry
