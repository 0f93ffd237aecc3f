"""The database schema: tables only. Every statement that reads or writes them is in store/.

Offsets are per topic, gapless, and handed out from `topics.next_offset` under its row lock
(never from a sequence: sequence values commit out of order). Times are microseconds since
the Unix epoch (UTC) in a BIGINT, the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

SCHEMA_VERSION = 2  # 2: lq_leases, lq_holders (new tables: create_all adds them to version 1)

# Constraint names the store maps to domain errors (store/database.py). They are the names
# PostgreSQL gave these constraints before they were named here, so older databases agree.
TOPIC_NAME_KEY = "lq_topics_name_key"
PRODUCER_ID_KEY = "lq_producers_pkey"
CONSUMER_ID_KEY = "lq_consumers_pkey"
CONSUMER_NAME_KEY = "lq_consumers_topic_name"
LEASE_ID_KEY = "lq_leases_pkey"

db = SQLAlchemy(metadata=MetaData())
metadata = db.metadata

# SQLite autoincrements only an INTEGER PRIMARY KEY.
_AutoId = BigInteger().with_variant(Integer(), "sqlite")

schema_version = Table(
    "lq_schema_version", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
)

topics = Table(
    "lq_topics", metadata,
    Column("id", _AutoId, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("next_offset", BigInteger, nullable=False, default=0),
    Column("first_offset", BigInteger, nullable=False, default=0),
    Column("created_us", BigInteger, nullable=False),
    # Retention: NULL is "no limit" (then the broker-wide default applies, if any).
    Column("retention_ms", BigInteger),
    Column("retention_messages", BigInteger),
    UniqueConstraint("name", name=TOPIC_NAME_KEY),
    sqlite_autoincrement=True,  # a deleted topic's id is never reused
)

messages = Table(
    "lq_messages", metadata,
    Column("topic_id", BigInteger, primary_key=True, autoincrement=False),
    Column("msg_offset", BigInteger, primary_key=True, autoincrement=False),
    Column("body", Text, nullable=False),
    Column("ts_us", BigInteger, nullable=False),
)

producers = Table(
    "lq_producers", metadata,
    Column("id", BigInteger, autoincrement=False),
    Column("topic_id", BigInteger, nullable=False, index=True),
    # The last applied idempotent seq and the offsets it got, written in the append transaction.
    Column("last_seq", BigInteger),
    Column("last_first", BigInteger),
    Column("last_last", BigInteger),
    Column("created_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("id", name=PRODUCER_ID_KEY),
)

consumers = Table(
    "lq_consumers", metadata,
    Column("id", BigInteger, autoincrement=False),
    Column("topic_id", BigInteger, nullable=False),
    Column("name", String(200)),
    Column("position", BigInteger, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    # Last time the consumer was used (touched at most every few seconds), for --consumer-ttl.
    Column("active_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("id", name=CONSUMER_ID_KEY),
    Index(CONSUMER_NAME_KEY, "topic_id", "name", unique=True),
)

# Scoped tokens (auth.py): only a token's SHA-256 is kept, so the database never holds one in
# clear. Scopes are topic globs, one per line, per verb; `admin` (0/1) grants everything.
TOKEN_NAME_KEY = "lq_tokens_name_key"
TOKEN_HASH_KEY = "lq_tokens_hash_key"

tokens = Table(
    "lq_tokens", metadata,
    Column("id", _AutoId, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("digest", String(64), nullable=False),  # hex SHA-256 of the token
    Column("produce", Text, nullable=False),
    Column("consume", Text, nullable=False),
    Column("admin", Integer, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("used_us", BigInteger),  # written at most once a minute per broker process
    UniqueConstraint("name", name=TOKEN_NAME_KEY),
    UniqueConstraint("digest", name=TOKEN_HASH_KEY),
)

# Consumer groups: a registration's work handed out in contiguous offset ranges. The
# registration's `position` is then its dispatch cursor; what it has really finished is the
# first offset of its oldest lease (store/leases.py). A row is deleted when its lease is acked.
leases = Table(
    "lq_leases", metadata,
    Column("id", BigInteger, autoincrement=False),  # random, new at each hand-out
    Column("consumer_id", BigInteger, nullable=False),
    Column("topic_id", BigInteger, nullable=False),
    Column("first_offset", BigInteger, nullable=False),
    Column("last_offset", BigInteger, nullable=False),
    Column("expires_us", BigInteger, nullable=False),
    Column("deliveries", Integer, nullable=False),  # 1 at the first hand-out
    Column("holder", String(200)),  # who asked, as the client named itself (for /stats)
    Column("leased_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("id", name=LEASE_ID_KEY),
    Index("lq_leases_consumer", "consumer_id", "first_offset"),
)

# Who asked a registration for leases, and when last (for /stats: holders seen lately). One
# row per (registration, holder), refreshed at most every few seconds; pruned after an hour.
holders = Table(
    "lq_holders", metadata,
    Column("consumer_id", BigInteger, primary_key=True, autoincrement=False),
    Column("holder", String(200), primary_key=True),
    Column("seen_us", BigInteger, nullable=False),
)
