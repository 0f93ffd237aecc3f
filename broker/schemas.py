"""Each endpoint's request, declared once: validation, aliases and (later) the OpenAPI schema.

Classic clients speak several dialects: the topic arrives as `topic`, `topic_name` or `name`,
the message as `message` or `log_message`, ids as ints or numeric strings. The aliases live
here and nowhere else. The token endpoints' models are token_schemas.py.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    WithJsonSchema,
    model_serializer,
)
from typing_extensions import TypedDict  # pydantic wants this one before Python 3.12

TOPIC_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$"
MAX_ID = 2**53

MiB = 1024 * 1024
_DIGITS = re.compile(r"\s*[+-]?[0-9]+\s*")


def _integer(value: Any) -> Any:
    """An int, or a string of digits (the query and form dialects send nothing else); not a
    boolean (an int to Python), not a float, not "1.0" or "1_000"."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be an integer")
    if isinstance(value, str) and not _DIGITS.fullmatch(value):
        raise ValueError("must be an integer")
    return value


Integer = Annotated[int, BeforeValidator(_integer)]
TopicName = Annotated[str, StringConstraints(pattern=TOPIC_PATTERN)]
Id = Annotated[Integer, Field(ge=1, lt=MAX_ID)]
Offset = Annotated[Integer, Field(ge=0, lt=2**63)]


def storable_size(text: str) -> int:
    """The UTF-8 size of text both databases store as given: valid Unicode, no NUL
    (PostgreSQL cannot store it). ValueError says why other text is refused."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode (a lone surrogate)") from None
    if "\x00" in text:
        raise ValueError("NUL characters are not allowed")
    return size


def storable_sizes(texts: list[str]) -> tuple[int, int]:
    """(total, largest) UTF-8 size of a batch, checked as :func:`storable_size` checks one
    text. Log lines are mostly ASCII: then one pass in C over the joined batch does it."""
    joined = "".join(texts)
    if joined.isascii():
        if "\x00" in joined:
            raise ValueError("NUL characters are not allowed")
        return len(joined), max(map(len, texts), default=0)
    sizes = [storable_size(text) for text in texts]
    return sum(sizes), max(sizes, default=0)


def _storable(text: str) -> str:
    storable_size(text)
    return text


Name = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_storable)]

_topic = Field(validation_alias=AliasChoices("topic", "topic_name", "name"),
               description="The topic; also accepted as `topic_name` or `name`.")


def start_point(value: Any) -> Any:
    """`from`: 'earliest', 'latest', or a time as microseconds since the epoch (UTC): an
    ISO-8601 time (UTC unless it gives an offset) or a duration back from now ('10m')."""
    from .retention import parse_duration_ms  # retention imports the store

    if not isinstance(value, str):
        raise ValueError("give earliest, latest, an ISO-8601 time or a duration such as 10m")
    text = value.strip()
    if text in ("earliest", "latest"):
        return text
    if text.lower() in ("none", "forever", "off"):  # durations, but no point in time
        raise ValueError(f"not a point in time: {text!r}")
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        try:
            back_ms = parse_duration_ms(text)
        except ValueError:
            raise ValueError(f"not earliest, latest, an ISO-8601 time or a duration such as "
                             f"10m or 2h: {text[:64]!r}") from None
        return int(datetime.now(UTC).timestamp() * 1_000_000) - back_ms * 1000
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000)


#: Where reading starts: a position name, or the first message appended at or after a time.
Start = Annotated[Literal["earliest", "latest"] | int, BeforeValidator(start_point),
                  WithJsonSchema({"type": "string", "examples": ["earliest", "latest", "10m",
                                                                 "2024-05-01T12:00:00Z"]})]


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


RetentionMs = Annotated[Integer, Field(ge=0, lt=2**53, description="0: no limit by age.")]
RetentionMessages = Annotated[Integer, Field(ge=0, lt=2**53,
                                             description="0: no limit by count.")]


class CreateTopic(Request):
    topic: TopicName = Field(validation_alias=AliasChoices("topic_name", "topic", "name"))
    retention_ms: RetentionMs | None = None
    retention_messages: RetentionMessages | None = None


class TopicRef(Request):
    topic: TopicName = _topic


class SetRetention(TopicRef):
    retention_ms: RetentionMs | None = None
    retention_messages: RetentionMessages | None = None


class ProducerRef(Request):
    topic: TopicName = _topic
    producer_id: Id


class RegisterProducer(Request):
    topic: TopicName = _topic


class RegisterConsumer(Request):
    topic: TopicName = _topic
    consumer_name: Name | None = Field(
        default=None, description="Same name and topic, same id: a restarted runner resumes.")
    start: Start = Field(
        default="earliest", validation_alias=AliasChoices("from", "start"),
        description="earliest, latest, an ISO-8601 time or a duration back from now (10m): "
                    "a time starts at the first message appended at or after it.")


class Produce(Request):
    topic: TopicName = _topic
    producer_id: Id
    message: str | None = Field(default=None,
                                validation_alias=AliasChoices("message", "log_message"))
    messages: list[str] | None = Field(default=None, description="An atomic batch.")
    seq: Annotated[Integer, Field(ge=0, lt=2**63)] | None = Field(
        default=None, description="Idempotence: increasing per (producer, topic).")


class ConsumerRef(Request):
    topic: TopicName = _topic
    consumer_id: Id


class Consume(ConsumerRef):
    max: Annotated[Integer, Field(ge=1, le=1000)] | None = None
    wait_ms: Annotated[Integer, Field(ge=0, le=30000)] | None = None
    max_bytes: Annotated[Integer, Field(ge=1, le=16 * MiB)] = Field(
        default=8 * MiB, description="Message text a batch reply carries at most (UTF-8 "
                                     "bytes); always at least one message.")


class Fetch(Consume):
    offset: Offset | None = None
    start: Start | None = Field(
        default=None, validation_alias=AliasChoices("from", "start"),
        description="Without `offset`: read from here (as on register) instead of the position.")


class Commit(ConsumerRef):
    offset: Offset


# --- replies ---------------------------------------------------------------------------------
class Reply(BaseModel):
    """A success body. Fields left as None are omitted from the JSON."""

    model_config = ConfigDict(extra="forbid")
    status: Literal["success"] = "success"


class Failure(BaseModel):
    status: Literal["failure"] = "failure"
    error: str = Field(description="A machine-readable code, e.g. unknown_topic.")
    message: str = Field(description="What went wrong, for people.")


class TopicCreated(Reply):
    message: str


class TopicList(Reply):
    topics: list[str]


class ProducerRegistered(Reply):
    producer_id: int


class ConsumerRegistered(Reply):
    consumer_id: int


class Produced(Reply):
    offsets: list[int] | None = Field(default=None, description="[first, last]; absent for a "
                                      "duplicate below the last seq.")
    duplicate: bool | None = None


_skipped = Field(default=None, description="Messages removed by retention before the consumer "
                                           "read them; present only when some were.")


class ClassicMessage(Reply):
    message: str
    log_message: str
    offset: int
    skipped: int | None = _skipped


# A TypedDict, not a model: pydantic checks a list of them without building an object per
# message, which dominated the cost of a 1,000-message consume.
class MessageOut(TypedDict):
    """One message of a consume or fetch reply."""

    offset: int
    message: str
    ts: Annotated[str, Field(description="The broker's append time, ISO-8601 UTC.")]


class MessageBatch(Reply):
    messages: list[MessageOut]
    skipped: int | None = _skipped


class FetchedBatch(MessageBatch):
    position: int = Field(description="The consumer's committed position.")


class Position(Reply):
    position: int


class Size(Reply):
    size: int


class TopicStatsOut(BaseModel):
    topic: str
    messages: int
    first_offset: int
    next_offset: int
    consumers: int
    max_lag: int
    registrations: list[ConsumerOut] | None = Field(
        default=None, description="Each consumer registration: lag, leases, holders, last use.")


class Stats(Reply):
    topics: list[TopicStatsOut]


def _idle_bound(value: Any) -> Any:
    """`active`: a duration ('1h'); 0 or 'none' is no bound."""
    from .retention import parse_duration_ms  # retention imports the store

    if not isinstance(value, str):
        raise ValueError("give a duration such as 1h or 30m")
    return parse_duration_ms(value) or None


class StatsQuery(Request):
    active: Annotated[int | None, BeforeValidator(_idle_bound), WithJsonSchema(
        {"type": "string", "examples": ["1h"]})] = Field(default=None, description=(
            "Only registrations used within this long: the rest are left out of the counts."))


class TailRequest(TopicRef):
    offset: Offset | None = Field(default=None, description="Default: the last `max` messages.")
    max: Annotated[Integer, Field(ge=1, le=1000)] = 100
    max_bytes: Annotated[Integer, Field(ge=1, le=16 * MiB)] = Field(
        default=MiB, description="Message text a reply carries at most; at least one message.")


class TopicTail(Reply):
    messages: list[MessageOut]
    first_offset: int
    next_offset: int


class HistoryRequest(TopicRef):
    seconds: Annotated[Integer, Field(ge=1, le=300)] = 60


class TopicHistory(Reply):
    topic: str
    start: str = Field(description="The first second's start, ISO-8601 UTC.")
    appends: list[int] = Field(description="Appends per second, oldest first; the last: now.")
    exact: bool = Field(description="False: estimated from a sample (a busy minute).")
    next_offset: int


class Health(Reply):
    database: str | None = Field(
        default=None, description="host:port of the PostgreSQL server the broker writes to "
        "(it changes at a failover); absent on SQLite.")


class Done(Reply):
    message: str


class ConsumerOut(BaseModel):
    name: str | None = Field(default=None,
                             description="Set for named consumers; ids are never shown.")
    position: int
    lag: int
    leases: int = Field(default=0, description="Leases outstanding (consumer groups).")
    holders: int = Field(default=0, description="Lease holders seen in the last minute.")
    active: str | None = Field(default=None, description="Last use, ISO-8601 UTC (to within "
                                                         "30 s).")


class TopicDescription(Reply):
    topic: str
    messages: int
    first_offset: int
    next_offset: int
    retention_ms: int | None = None
    retention_messages: int | None = None
    created: str
    producers: int
    consumers: list[ConsumerOut]


class Status(Reply):
    database: str
    version: str


# --- consumer groups: leases -------------------------------------------------------------------
LeaseMs = Annotated[int, Field(ge=1, le=3_600_000, description="How long the lease holds, in ms.")]


class LeaseRequest(Consume):
    lease_ms: LeaseMs = 30_000
    holder: Name | None = Field(default=None, description="Who asks (e.g. host:pid), for /stats.")
    ack: Id | None = Field(
        default=None, description="The asker's previous lease, acked in the same transaction "
        "before the hand-out (one request and one commit per range instead of two); 409 "
        "lease_lost, and nothing handed out, when it is no longer this registration's.")


class LeaseRef(ConsumerRef):
    lease: Id = Field(description="The lease id a lease reply gave.")


class ExtendLease(LeaseRef):
    lease_ms: LeaseMs = 30_000


class LeaseOut(BaseModel):
    id: int
    first: int = Field(description="The first offset of the range.")
    last: int = Field(description="The last offset of the range (inclusive).")
    expires: str = Field(description="When another asker may get it, ISO-8601 UTC.")
    deliveries: int = Field(description="1 at the first hand-out; more for a redelivery.")


class LeasedMessages(Reply):
    lease: LeaseOut | None = Field(description="null (and no messages) when there was no work.")
    messages: list[MessageOut]
    skipped: int | None = _skipped
    acked: int | None = Field(default=None, description="The `ack` lease, acked (a broker "
                              "that leaves this out ignored `ack`: ack it on its own).")

    @model_serializer(mode="wrap")
    def _keep_null_lease(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """`"lease": null` stays in the JSON although replies drop None fields."""
        data = handler(self)
        data.setdefault("lease", None)
        return data


class LeaseExtended(Reply):
    lease: LeaseOut


TopicStatsOut.model_rebuild()
