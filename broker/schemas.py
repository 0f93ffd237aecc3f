"""Each endpoint's request, declared once: validation, aliases and (later) the OpenAPI schema.

Classic clients speak several dialects: the topic arrives as `topic`, `topic_name` or `name`,
the message as `message` or `log_message`, ids as ints or numeric strings. The aliases live
here and nowhere else.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
)
from typing_extensions import TypedDict  # pydantic wants this one before Python 3.12

TOPIC_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$"
MAX_ID = 2**53

TopicName = Annotated[str, StringConstraints(pattern=TOPIC_PATTERN)]
Id = Annotated[int, Field(ge=1, lt=MAX_ID)]
Offset = Annotated[int, Field(ge=0, lt=2**63)]


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


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


RetentionMs = Annotated[int, Field(ge=0, lt=2**53, description="0: no limit by age.")]
RetentionMessages = Annotated[int, Field(ge=0, lt=2**53, description="0: no limit by count.")]


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
    start: Literal["earliest", "latest"] = Field(
        default="earliest", validation_alias=AliasChoices("from", "start"))


class Produce(Request):
    topic: TopicName = _topic
    producer_id: Id
    message: str | None = Field(default=None,
                                validation_alias=AliasChoices("message", "log_message"))
    messages: list[str] | None = Field(default=None, description="An atomic batch.")
    seq: Annotated[int, Field(ge=0, lt=2**63)] | None = Field(
        default=None, description="Idempotence: increasing per (producer, topic).")


class ConsumerRef(Request):
    topic: TopicName = _topic
    consumer_id: Id


class Consume(ConsumerRef):
    max: Annotated[int, Field(ge=1, le=1000)] | None = None
    wait_ms: Annotated[int, Field(ge=0, le=30000)] | None = None


class Fetch(Consume):
    offset: Offset | None = None


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


class Health(Reply):
    pass


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

    @model_serializer(mode="wrap")
    def _keep_null_lease(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """`"lease": null` stays in the JSON although replies drop None fields."""
        data = handler(self)
        data.setdefault("lease", None)
        return data


class LeaseExtended(Reply):
    lease: LeaseOut


TopicStatsOut.model_rebuild()
