"""The HTTP API: the classic queue contract and its extensions.

A view takes the parsed request, calls one store method and returns a reply model: no SQL,
no transactions. How a view is declared, routed, authorised and parsed is endpoints.py.
"""

from __future__ import annotations

import json
import secrets
from importlib.metadata import PackageNotFoundError, version

from flask import Response, current_app

from . import auth, metrics, replies
from . import schemas as s
from .endpoints import ENDPOINTS, bp, endpoint
from .errors import BadRequest, QueueEmpty, TooLarge
from .replies import Encoded
from .store import AppendRequest, ConsumerInfo, LeaseInfo, Row, Store, get_store, iso_time
from .token_schemas import CreateToken, TokenCreated, TokenList, TokenOut, TokenRef


def _store() -> Store:
    return get_store(current_app)


def _consumed(rows: list[Row]) -> None:
    metrics.consumed([row[1] for row in rows])


# --- topics ----------------------------------------------------------------------------------
@endpoint("POST", "/topics", s.CreateTopic, s.TopicCreated, scope="admin")
def create_topic(req: s.CreateTopic) -> s.TopicCreated:
    """Create a topic (`topic_name`), optionally with its retention."""
    _store().topics.create(req.topic, req.retention_ms, req.retention_messages)
    return s.TopicCreated(message=f"Topic '{req.topic}' created successfully")


@endpoint("PATCH", "/topics", s.SetRetention, s.Done, scope="admin")
def set_retention(req: s.SetRetention) -> s.Done:
    """Change a topic's retention (`retention_ms`, `retention_messages`; 0 = no limit)."""
    _store().topics.set_retention(req.topic, req.retention_ms, req.retention_messages)
    return s.Done(message=f"Retention of topic '{req.topic}' updated")


@endpoint("DELETE", "/topics", s.TopicRef, s.Done, scope="admin")
def delete_topic(req: s.TopicRef) -> s.Done:
    """Delete a topic: its messages, registrations and counters. The name can be reused."""
    _store().topics.delete(req.topic)
    return s.Done(message=f"Topic '{req.topic}' deleted")


@endpoint("GET", "/topics/describe", s.TopicRef, s.TopicDescription, scope="consume")
def describe_topic(req: s.TopicRef) -> s.TopicDescription:
    """A topic's offsets, retention, producers and consumers (names and lags, no ids)."""
    info = _store().topics.describe(req.topic)
    return s.TopicDescription(
        topic=info.topic, messages=info.next_offset - info.first_offset,
        first_offset=info.first_offset, next_offset=info.next_offset,
        retention_ms=info.retention_ms, retention_messages=info.retention_messages,
        created=iso_time(info.created_us), producers=info.producers,
        consumers=[_consumer_out(c) for c in info.consumers])


@endpoint("GET", "/topics", None, s.TopicList)
def list_topics() -> s.TopicList:
    """List the names of the topics the token may read."""
    return s.TopicList(topics=[t for t in _store().topics.names() if auth.readable(t)])


# --- producers -------------------------------------------------------------------------------
@endpoint("POST", "/producer/register", s.RegisterProducer, s.ProducerRegistered, scope="produce")
def register_producer(req: s.RegisterProducer) -> s.ProducerRegistered:
    """Register a producer for a topic, creating the topic if it is missing."""
    return s.ProducerRegistered(producer_id=_store().producers.register(req.topic))


@endpoint("POST", "/producer/unregister", s.ProducerRef, s.Done, scope="produce")
def unregister_producer(req: s.ProducerRef) -> s.Done:
    """Remove a producer's registration for a topic."""
    _store().producers.unregister(req.topic, req.producer_id)
    return s.Done(message="Producer unregistered")


def _check_batch(bodies: list[str]) -> int:
    """The batch's total UTF-8 size, once it is within the limits and storable."""
    if not bodies:
        raise BadRequest("'messages' is empty")
    max_batch = current_app.config["LQ_MAX_BATCH"]
    if len(bodies) > max_batch:
        raise TooLarge(f"a batch holds at most {max_batch} messages, not {len(bodies)}")
    limit = current_app.config["LQ_MAX_MESSAGE_BYTES"]
    try:
        total, largest = s.storable_sizes(bodies)
    except ValueError as exc:
        raise BadRequest(f"a message cannot be stored: {exc}") from None
    if largest > limit:
        raise TooLarge(f"a message is at most {limit} bytes, not {largest}")
    return total


@endpoint("POST", "/producer/produce", s.Produce, s.Produced, scope="produce")
def produce(req: s.Produce) -> s.Produced:
    """Append `message`, or the batch `messages` atomically; `seq` makes a retry safe."""
    if (req.message is None) == (req.messages is None):
        raise BadRequest("give either 'message' (or 'log_message') or 'messages'")
    bodies = [req.message] if req.messages is None else req.messages
    refusal, total = None, 0
    try:
        total = _check_batch(bodies)
    except (BadRequest, TooLarge) as exc:
        refusal = exc  # the store still answers a retry of an applied seq
    result = _store().producers.append(req.topic, AppendRequest(req.producer_id, bodies, req.seq),
                                       refusal)
    if not result.duplicate:
        metrics.produced(len(bodies), total)
    if result.first is None:
        return s.Produced(duplicate=True)
    return s.Produced(offsets=[result.first, result.last], duplicate=result.duplicate or None)


# --- consumers -------------------------------------------------------------------------------
@endpoint("POST", "/consumer/register", s.RegisterConsumer, s.ConsumerRegistered, scope="consume")
def register_consumer(req: s.RegisterConsumer) -> s.ConsumerRegistered:
    """Register a consumer for an existing topic; a `consumer_name` makes it resumable."""
    consumer_id = _store().consumers.register(req.topic, req.consumer_name, req.start)
    return s.ConsumerRegistered(consumer_id=consumer_id)


@endpoint("POST", "/consumer/unregister", s.ConsumerRef, s.Done, scope="consume")
def unregister_consumer(req: s.ConsumerRef) -> s.Done:
    """Remove a consumer's registration (and its position) for a topic."""
    _store().consumers.unregister(req.topic, req.consumer_id)
    return s.Done(message="Consumer unregistered")


@endpoint("GET", "/consumer/consume", s.Consume, s.ClassicMessage, s.MessageBatch,
          scope="consume", compress=True)
def consume(req: s.Consume) -> s.ClassicMessage | Encoded:
    """Take the next message (classic), or with `max`/`wait_ms` a batch, long-polling."""
    if req.max is None and req.wait_ms is None:
        batch = _store().consumers.consume(req.topic, req.consumer_id, 1)
        _consumed(batch.messages)
        if not batch.messages:
            raise QueueEmpty(f"Queue for topic '{req.topic}' is empty")
        offset, body, _ts = batch.messages[0]
        return s.ClassicMessage(message=body, log_message=body, offset=offset,
                                skipped=batch.skipped or None)
    wait = (req.wait_ms or 0) / 1000
    with metrics.waiting(wait):
        batch = _store().consumers.consume(req.topic, req.consumer_id, req.max or 100, wait,
                                           req.max_bytes)
    _consumed(batch.messages)
    return replies.batch(batch.messages, batch.skipped)  # s.MessageBatch


@endpoint("GET", "/consumer/fetch", s.Fetch, s.FetchedBatch, scope="consume", compress=True)
def fetch(req: s.Fetch) -> Encoded:
    """Read a batch from `offset` (default: the position) without moving the position."""
    wait = (req.wait_ms or 0) / 1000
    with metrics.waiting(wait):
        batch, position = _store().consumers.fetch(req.topic, req.consumer_id, req.max or 100,
                                                   wait, req.offset, req.start, req.max_bytes)
    _consumed(batch.messages)
    return replies.batch(batch.messages, batch.skipped, position)  # s.FetchedBatch


@endpoint("POST", "/consumer/commit", s.Commit, s.Position, scope="consume")
def commit(req: s.Commit) -> s.Position:
    """Move the position forward to `offset`, the next message to read."""
    return s.Position(position=_store().consumers.commit(req.topic, req.consumer_id, req.offset))


@endpoint("GET", "/size", s.ConsumerRef, s.Size, scope="consume")
def size(req: s.ConsumerRef) -> s.Size:
    """How many messages wait at or after the consumer's position."""
    return s.Size(size=_store().consumers.size(req.topic, req.consumer_id))


def _consumer_out(c: ConsumerInfo) -> s.ConsumerOut:
    return s.ConsumerOut(name=c.name, position=c.position, lag=c.lag, leases=c.leases,
                         holders=c.holders, active=iso_time(c.active_us) if c.active_us else None)


# --- consumer groups: leases -----------------------------------------------------------------
def _lease_out(lease: LeaseInfo) -> s.LeaseOut:
    return s.LeaseOut(id=lease.id, first=lease.first, last=lease.last,
                      expires=iso_time(lease.expires_us), deliveries=lease.deliveries)


@endpoint("POST", "/consumer/lease", s.LeaseRequest, s.LeasedMessages, scope="consume",
          compress=True)
def lease(req: s.LeaseRequest) -> Encoded:
    """Hand out the oldest expired lease, else the next range of up to `max` messages, for
    `lease_ms`; long-polls up to `wait_ms` for work. With `ack`, that lease is acked first,
    in the same transaction."""
    wait = (req.wait_ms or 0) / 1000
    with metrics.waiting(wait):
        found = _store().leases.lease(req.topic, req.consumer_id, req.max or 100, req.lease_ms,
                                      wait, req.holder, req.max_bytes, req.ack)
    _consumed(found.messages)
    return replies.leased(found.lease, found.messages, found.skipped, req.ack)


@endpoint("POST", "/consumer/ack", s.LeaseRef, s.Position, scope="consume")
def ack(req: s.LeaseRef) -> s.Position:
    """The lease's range is done; 409 lease_lost when it went to another holder."""
    return s.Position(position=_store().leases.ack(req.topic, req.consumer_id, req.lease))


@endpoint("POST", "/consumer/extend", s.ExtendLease, s.LeaseExtended, scope="consume")
def extend(req: s.ExtendLease) -> s.LeaseExtended:
    """Keep a lease `lease_ms` from now, for a holder still at work."""
    found = _store().leases.extend(req.topic, req.consumer_id, req.lease, req.lease_ms)
    return s.LeaseExtended(lease=_lease_out(found))


@endpoint("POST", "/consumer/release", s.LeaseRef, s.Done, scope="consume")
def release(req: s.LeaseRef) -> s.Done:
    """Give a lease back unfinished: it is handed out again at once."""
    _store().leases.release(req.topic, req.consumer_id, req.lease)
    return s.Done(message=f"Lease {req.lease} released")


# --- operations ------------------------------------------------------------------------------
@endpoint("GET", "/stats", s.StatsQuery, s.Stats)
def stats(req: s.StatsQuery) -> s.Stats:
    """Per topic the token may read: messages, offsets, consumers, the largest lag, and each
    registration's lag, leases, holders and last use (no ids); `active=1h` leaves out the
    registrations idle longer."""
    return s.Stats(topics=[
        s.TopicStatsOut(topic=t.topic, messages=t.messages, first_offset=t.first_offset,
                        next_offset=t.next_offset, consumers=t.consumers, max_lag=t.max_lag,
                        registrations=[_consumer_out(c) for c in t.registrations])
        for t in _store().topics.stats(req.active) if auth.readable(t.topic)])


@endpoint("GET", "/topics/tail", s.TailRequest, s.TopicTail, scope="consume", compress=True)
def tail(req: s.TailRequest) -> s.TopicTail:
    """Read messages by offset (without one, the last `max`) with no registration: nothing
    is registered and no consumer's position moves."""
    found = _store().history.tail(req.topic, req.offset, req.max, req.max_bytes)
    return s.TopicTail(messages=replies.message_items(found.messages),
                       first_offset=found.first_offset,
                       next_offset=found.next_offset)


@endpoint("GET", "/topics/history", s.HistoryRequest, s.TopicHistory, scope="consume")
def history(req: s.HistoryRequest) -> s.TopicHistory:
    """Messages appended in each of the last `seconds` seconds (default 60), from their append
    times: what the web page's sparklines start from."""
    found = _store().history.appends(req.topic, req.seconds)
    return s.TopicHistory(topic=req.topic, start=iso_time(found.start_s * 1_000_000),
                          appends=found.counts, exact=found.exact, next_offset=found.next_offset)


@endpoint("GET", "/healthz", None, s.Health)
def healthz() -> s.Health:
    """200 when the database answers, else 503; needs no token. Says which PostgreSQL
    host it writes to."""
    return s.Health(database=_store().ping())


@endpoint("GET", "/status", None, s.Status)
def status() -> s.Status:
    """The database kind and the broker's version, when the database answers."""
    store = _store()
    store.ping()
    return s.Status(database=store.dialect, version=broker_version())


# --- tokens ----------------------------------------------------------------------------------
@endpoint("POST", "/tokens", CreateToken, TokenCreated, scope="admin")
def create_token(req: CreateToken) -> TokenCreated:
    """Create a token with topic globs per verb; the reply is the only time it is shown."""
    if not (req.produce or req.consume or req.admin):
        raise BadRequest("a token needs 'produce' or 'consume' globs, or 'admin'")
    if not req.admin and auth.get_auth(current_app).is_off():
        raise BadRequest("the first token must be an admin token (or start the broker with "
                         "LQ_TOKEN): this one turns auth on, and no one could manage tokens")
    name = req.name or f"token-{secrets.token_hex(4)}"
    token, digest = auth.new_token()
    _store().tokens.create(name, digest, tuple(req.produce), tuple(req.consume), req.admin)
    auth.get_auth(current_app).forget()
    return TokenCreated(name=name, token=token, produce=req.produce, consume=req.consume,
                        admin=req.admin)


@endpoint("GET", "/tokens", None, TokenList, scope="admin")
def list_tokens() -> TokenList:
    """Every token's name, scopes, creation and last use (never the token)."""
    return TokenList(tokens=[
        TokenOut(name=t.name, produce=list(t.produce), consume=list(t.consume), admin=t.admin,
                 created=iso_time(t.created_us),
                 last_used=iso_time(t.used_us) if t.used_us else None)
        for t in _store().tokens.all()])


@endpoint("DELETE", "/tokens", TokenRef, s.Done, scope="admin")
def revoke_token(req: TokenRef) -> s.Done:
    """Revoke a token: every broker on the database refuses it within a second."""
    _store().tokens.revoke(req.name)
    auth.get_auth(current_app).forget()
    return s.Done(message=f"Token '{req.name}' revoked")


@bp.get("/openapi.json", strict_slashes=False)
def openapi() -> Response:
    from .openapi import document

    body = json.dumps(document(ENDPOINTS, broker_version()))
    return Response(body, mimetype="application/json")


def broker_version() -> str:
    try:
        return version("logqueue")
    except PackageNotFoundError:
        return "unknown"
