"""Every statement the broker runs, as named constants grouped by noun.

Only the store's modules use these. The dialects (dialect.py) choose between the few that
differ between SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import bindparam, text

# A registration's position: the first offset of its oldest outstanding lease, else its
# `position` column (with leases, the dispatch cursor). `c` is the lq_consumers row.
POSITION_OF_C = ("COALESCE((SELECT MIN(l.first_offset) FROM lq_leases l "
                 "WHERE l.consumer_id = c.id), c.position)")

# --- topics ------------------------------------------------------------------------------------
INSERT_TOPIC = text(
    "INSERT INTO lq_topics (name, next_offset, first_offset, created_us, retention_ms, "
    "retention_messages) VALUES (:name, 0, 0, :now, :retention_ms, :retention_messages)")
INSERT_TOPIC_IF_MISSING = text(
    "INSERT INTO lq_topics (name, next_offset, first_offset, created_us) "
    "VALUES (:name, 0, 0, :now) ON CONFLICT (name) DO NOTHING")
SELECT_TOPIC_ID = text("SELECT id FROM lq_topics WHERE name = :name")
SELECT_TOPIC_NAMES = text("SELECT name FROM lq_topics ORDER BY id")
SELECT_TOPIC_BOUNDS = text("SELECT first_offset, next_offset FROM lq_topics WHERE id = :topic")
LOCK_TOPIC_COUNTER_PG = text("SELECT next_offset FROM lq_topics WHERE id = :topic FOR UPDATE")
LOCK_TOPIC_COUNTER_SQLITE = text(  # the write transaction's BEGIN IMMEDIATE is the lock
    "SELECT next_offset FROM lq_topics WHERE id = :topic")
SET_TOPIC_RETENTION = text(
    "UPDATE lq_topics SET retention_ms = :retention_ms, retention_messages = :retention_messages "
    "WHERE id = :topic")
SELECT_TOPIC = text(
    "SELECT name, first_offset, next_offset, retention_ms, retention_messages, created_us "
    "FROM lq_topics WHERE id = :topic")
# Per registration: name, position, last activity, leases outstanding, holders seen since.
_REGISTRATION = (
    f"c.name, {POSITION_OF_C}, c.active_us, "
    "(SELECT COUNT(*) FROM lq_leases l WHERE l.consumer_id = c.id), "
    "(SELECT COUNT(*) FROM lq_holders h WHERE h.consumer_id = c.id AND h.seen_us >= :since)")
SELECT_TOPIC_CONSUMERS = text(
    f"SELECT {_REGISTRATION} FROM lq_consumers c WHERE c.topic_id = :topic "
    "ORDER BY c.created_us")
SELECT_REGISTRATIONS = text(  # every topic's, for /stats
    f"SELECT t.name, {_REGISTRATION} FROM lq_consumers c JOIN lq_topics t ON t.id = c.topic_id "
    "WHERE c.active_us >= :active_since ORDER BY c.topic_id, c.created_us")
COUNT_TOPIC_PRODUCERS = text("SELECT COUNT(*) FROM lq_producers WHERE topic_id = :topic")
DELETE_TOPIC = (
    text("DELETE FROM lq_messages WHERE topic_id = :topic"),
    text("DELETE FROM lq_producers WHERE topic_id = :topic"),
    text("DELETE FROM lq_leases WHERE topic_id = :topic"),
    text("DELETE FROM lq_consumers WHERE topic_id = :topic"),
    text("DELETE FROM lq_topics WHERE id = :topic"),
)
SELECT_STATS = text(  # the counts per registration come from SELECT_REGISTRATIONS
    "SELECT name, first_offset, next_offset FROM lq_topics ORDER BY id")

# --- retention ---------------------------------------------------------------------------------
SELECT_RETAINED_TOPICS = text(
    "SELECT id, first_offset, next_offset, retention_ms, retention_messages FROM lq_topics "
    "WHERE next_offset > first_offset")
SELECT_OFFSET_TIMES = text(
    "SELECT msg_offset, ts_us FROM lq_messages WHERE topic_id = :topic AND msg_offset >= :start "
    "ORDER BY msg_offset LIMIT :limit")
PRUNE_MESSAGES = text(
    "DELETE FROM lq_messages WHERE topic_id = :topic AND msg_offset >= :start "
    "AND msg_offset < :cut")
MOVE_FIRST_OFFSET = text(
    "UPDATE lq_topics SET first_offset = :cut WHERE id = :topic AND first_offset < :cut")
EXPIRE_CONSUMERS = text("DELETE FROM lq_consumers WHERE name IS NULL AND active_us < :cutoff")
TRY_PRUNE_LOCK = text("SELECT pg_try_advisory_lock(:key)")
PRUNE_UNLOCK = text("SELECT pg_advisory_unlock(:key)")

# --- producers ---------------------------------------------------------------------------------
INSERT_PRODUCER = text(
    "INSERT INTO lq_producers (id, topic_id, created_us) VALUES (:id, :topic, :now)")
SELECT_PRODUCER_TOPIC = text("SELECT topic_id FROM lq_producers WHERE id = :id")
SELECT_PRODUCER_SEQ = text(
    "SELECT id, last_seq, last_first, last_last FROM lq_producers "
    "WHERE topic_id = :topic AND id = :id")
DELETE_PRODUCER = text("DELETE FROM lq_producers WHERE id = :id AND topic_id = :topic")

# --- appends (appends.py): through the driver, plain DB-API strings ----------------------------
# PostgreSQL: BEGIN, the counter row locked, then (a statement of its own, so with a snapshot
# taken under the lock) the counter and the producers' seq state, in one round trip.
# PostgreSQL: prepared statements (prepared.py), sent as EXECUTEs, several per query string.
LOCK_COUNTER_PG = text("SELECT next_offset FROM lq_topics WHERE id = :topic FOR UPDATE")
READ_PRODUCER_SEQS_PG = text(
    "SELECT t.next_offset, p.id, p.last_seq, p.last_first, p.last_last FROM lq_topics t "
    "LEFT JOIN lq_producers p ON p.topic_id = t.id AND p.id = ANY(:ids) WHERE t.id = :topic")
APPEND_MESSAGE_PG = text("INSERT INTO lq_messages (topic_id, msg_offset, body, ts_us) "
                         "VALUES (:topic, :offset, :body, :ts)")
SET_COUNTER_PG = text("UPDATE lq_topics SET next_offset = :next WHERE id = :topic")
SET_PRODUCER_SEQ_PG = text("UPDATE lq_producers SET last_seq = :seq, last_first = :first, "
                           "last_last = :last WHERE id = :id")
APPEND_TYPES_PG = {"ids": "bigint[]", "body": "text"}  # the others: bigint
# SQLite: the write transaction's BEGIN IMMEDIATE is the lock.
READ_COUNTER_SQLITE = "SELECT next_offset FROM lq_topics WHERE id = ?"
PRODUCER_SEQS_SQLITE = (  # {ids}: one "?" per producer id
    "SELECT id, last_seq, last_first, last_last FROM lq_producers "
    "WHERE topic_id = ? AND id IN ({ids})")
SET_COUNTER_SQLITE = "UPDATE lq_topics SET next_offset = ? WHERE id = ?"
SET_PRODUCER_SEQ_SQLITE = (
    "UPDATE lq_producers SET last_seq = ?, last_first = ?, last_last = ? WHERE id = ?")

# --- consumers ---------------------------------------------------------------------------------
INSERT_CONSUMER = text(
    "INSERT INTO lq_consumers (id, topic_id, name, position, created_us, active_us) "
    "VALUES (:id, :topic, :name, :position, :now, :now)")
TOUCH_CONSUMER = text("UPDATE lq_consumers SET active_us = :now WHERE id = :id")
SELECT_CONSUMER_TOPIC = text("SELECT topic_id FROM lq_consumers WHERE id = :id")
SELECT_NAMED_CONSUMER = text(
    "SELECT id FROM lq_consumers WHERE topic_id = :topic AND name = :name")
SELECT_CONSUMER_LAG = text(
    f"SELECT {POSITION_OF_C}, t.first_offset, t.next_offset FROM lq_consumers c "
    "JOIN lq_topics t ON t.id = c.topic_id WHERE c.id = :id")
SET_CONSUMER_POSITION = text("UPDATE lq_consumers SET position = :position WHERE id = :id")
SELECT_CONSUMER_POSITION = text("SELECT position FROM lq_consumers WHERE id = :id")
# consume, fetch and commit refuse a registration that hands out leases (consumers.py).
_LEASES_OUT = "EXISTS (SELECT 1 FROM lq_leases l WHERE l.consumer_id = c.id)"
# A fetch's one look at the registration: its position, and whether leases are out.
SELECT_CONSUMER_READ = text(f"SELECT c.position, {_LEASES_OUT} FROM lq_consumers c "
                            "WHERE c.id = :id")
# A commit's: the position, the topic's end, leases out. Locked on PostgreSQL, so commits
# and lease hand-outs (LOCK_CONSUMER_PG) of one registration take turns, and the position
# answered is the one after every earlier commit.
_COMMIT_LOOK = (f"SELECT c.position, t.next_offset, {_LEASES_OUT} FROM lq_consumers c "
                "JOIN lq_topics t ON t.id = c.topic_id WHERE c.id = :id")
LOCK_CONSUMER_COMMIT_PG = text(_COMMIT_LOOK + " FOR UPDATE OF c")
LOCK_CONSUMER_COMMIT_SQLITE = text(_COMMIT_LOOK)  # the write transaction's BEGIN IMMEDIATE
DELETE_CONSUMER = text("DELETE FROM lq_consumers WHERE id = :id AND topic_id = :topic")

# A page of messages from a start offset carrying at most :max_bytes of text (UTF-8), and
# always the first: a running total over the LIMITed range scan (octet_length reads a TOASTed
# body's size without fetching it), so the bodies past the bound never leave the server.
_PAGE_WITHIN_PG = (
    "SELECT msg_offset, body, ts_us FROM ("
    "  SELECT msg_offset, body, ts_us, ROW_NUMBER() OVER w AS n, "
    "         SUM(octet_length(body)) OVER w AS upto "
    "  FROM (SELECT msg_offset, body, ts_us FROM lq_messages "
    "        WHERE topic_id = :topic AND msg_offset >= {start} "
    "        ORDER BY msg_offset LIMIT :limit) AS page "
    "  WINDOW w AS (ORDER BY msg_offset ROWS UNBOUNDED PRECEDING)) AS sized "
    "WHERE upto <= :max_bytes OR n = 1")

# One round trip on PostgreSQL: lock the position, read the range after it, move it past.
# The position is a scalar subquery (an InitPlan), so the read is an index range scan that
# starts at the position; a join with `cur` read the topic from offset 0 and filtered.
TAKE_MESSAGES_PG = text(
    "WITH cur AS (SELECT position FROM lq_consumers WHERE id = :id FOR UPDATE), "
    f"taken AS ({_PAGE_WITHIN_PG.format(start='(SELECT position FROM cur)')}), "
    "moved AS (UPDATE lq_consumers SET position = (SELECT MAX(msg_offset) + 1 FROM taken) "
    "          WHERE id = :id AND EXISTS (SELECT 1 FROM taken)) "
    "SELECT msg_offset, body, ts_us, (SELECT position FROM cur) FROM taken "
    "ORDER BY msg_offset")

# A fetch on PostgreSQL, one statement (so one round trip, in autocommit: one snapshot): a
# header row (NULL, 'leased' when leases are out, the position) when the registration exists,
# then the page from :offset (else the position). Offsets are dense from the topic's first
# offset (pruning deletes a prefix and moves first_offset in one transaction), so the page is
# also bounded above, start + limit: whatever plan the server picks without statistics (a
# topic just filled), it reads those rows only (an unbounded range was read whole, then
# sorted: 5 ms for 17,000 rows). The page is read once (MATERIALIZED) and bounded by
# :max_bytes as _PAGE_WITHIN_PG bounds it; but the window, which costs the server about
# 0.3 ms per 1,000 rows, runs only when the page's plain sum of sizes is over the bound. Each
# branch is gated by a one-time filter, and the header (a CTE scan, never run by a parallel
# worker) comes first; a CTE scan reads its rows in the order they were stored (the page's),
# the window's in its own order.
FETCH_PG = text(
    f"WITH reg AS (SELECT c.position, {_LEASES_OUT} AS leased, t.first_offset "
    "             FROM lq_consumers c JOIN lq_topics t ON t.id = c.topic_id WHERE c.id = :id), "
    "start AS (SELECT GREATEST(COALESCE(CAST(:offset AS bigint), position), first_offset) AS at "
    "          FROM reg), "
    "page AS MATERIALIZED (SELECT msg_offset, body, ts_us FROM lq_messages "
    "  WHERE topic_id = :topic AND msg_offset >= (SELECT at FROM start) "
    "  AND msg_offset < (SELECT at FROM start) + :limit ORDER BY msg_offset LIMIT :limit), "
    "fits AS (SELECT COALESCE(SUM(octet_length(body)), 0) <= :max_bytes AS ok FROM page) "
    "SELECT NULL, CASE WHEN leased THEN 'leased' END, position FROM reg "
    "UNION ALL (SELECT * FROM page WHERE (SELECT ok FROM fits)) "
    "UNION ALL (SELECT msg_offset, body, ts_us FROM ("
    "  SELECT msg_offset, body, ts_us, ROW_NUMBER() OVER w AS n, "
    "         SUM(octet_length(body)) OVER w AS upto FROM page "
    "  WINDOW w AS (ORDER BY msg_offset ROWS UNBOUNDED PRECEDING)) AS sized "
    "  WHERE (upto <= :max_bytes OR n = 1) AND NOT (SELECT ok FROM fits))")
# A commit on PostgreSQL, one statement: the look of LOCK_CONSUMER_COMMIT_PG, and the move when
# the offset is ahead of the position, within the topic and no leases are out; answers the
# look and the position moved to (NULL: not moved).
COMMIT_PG = text(
    f"WITH look AS (SELECT c.position, t.next_offset, {_LEASES_OUT} AS leased "
    "              FROM lq_consumers c JOIN lq_topics t ON t.id = c.topic_id "
    "              WHERE c.id = :id FOR UPDATE OF c), "
    "moved AS (UPDATE lq_consumers SET position = :offset WHERE id = :id AND EXISTS "
    "          (SELECT 1 FROM look WHERE position < :offset AND :offset <= next_offset "
    "           AND NOT leased) RETURNING position) "
    "SELECT position, next_offset, leased, (SELECT position FROM moved) FROM look")

# --- leases (consumer groups) ------------------------------------------------------------------
# A hand-out's one look at the registration, locked: its dispatch cursor, the topic's bounds,
# and when its soonest lease expires (the expired ones are looked for only when one is due).
_LEASE_LOOK = ("SELECT c.position, t.first_offset, t.next_offset, "
               "       (SELECT MIN(l.expires_us) FROM lq_leases l WHERE l.consumer_id = c.id) "
               "FROM lq_consumers c JOIN lq_topics t ON t.id = c.topic_id WHERE c.id = :id")
LOCK_CONSUMER_PG = text(_LEASE_LOOK + " FOR UPDATE OF c")
LOCK_CONSUMER_SQLITE = text(_LEASE_LOOK)  # the write transaction's BEGIN IMMEDIATE is the lock
# Whether a hand-out may find work, read without a write lock: the dispatch cursor, the
# topic's end, and when the soonest lease expires.
SELECT_LEASE_WORK = text(
    "SELECT c.position, t.next_offset, "
    "       (SELECT MIN(l.expires_us) FROM lq_leases l WHERE l.consumer_id = c.id) "
    "FROM lq_consumers c JOIN lq_topics t ON t.id = c.topic_id WHERE c.id = :id")
SELECT_EXPIRED_LEASE = text(
    "SELECT id, first_offset, last_offset, deliveries FROM lq_leases "
    "WHERE consumer_id = :consumer AND expires_us <= :now ORDER BY first_offset LIMIT 1")
# Taken for a redelivery only while still expired: an extend that committed first keeps it.
TAKE_EXPIRED_LEASE = text("DELETE FROM lq_leases WHERE id = :lease AND expires_us <= :now")
INSERT_LEASE = text(  # a taken random id inserts nothing (rowcount 0): no savepoint needed
    "INSERT INTO lq_leases (id, consumer_id, topic_id, first_offset, last_offset, expires_us, "
    "deliveries, holder, leased_us) VALUES (:id, :consumer, :topic, :first, :last, :expires, "
    ":deliveries, :holder, :now) ON CONFLICT (id) DO NOTHING")
ACK_LEASE = text("DELETE FROM lq_leases WHERE id = :lease AND consumer_id = :consumer")
EXTEND_LEASE = text(
    "UPDATE lq_leases SET expires_us = :expires WHERE id = :lease AND consumer_id = :consumer "
    "RETURNING first_offset, last_offset, deliveries")
RELEASE_LEASE = text(
    "UPDATE lq_leases SET expires_us = 0 WHERE id = :lease AND consumer_id = :consumer")
SEEN_HOLDER = text(
    "INSERT INTO lq_holders (consumer_id, holder, seen_us) VALUES (:consumer, :holder, :now) "
    "ON CONFLICT (consumer_id, holder) DO UPDATE SET seen_us = excluded.seen_us")
PRUNE_HOLDERS = text(
    "DELETE FROM lq_holders WHERE seen_us < :cutoff OR NOT EXISTS "
    "(SELECT 1 FROM lq_consumers c WHERE c.id = lq_holders.consumer_id)")
DELETE_CONSUMER_LEASES = text("DELETE FROM lq_leases WHERE consumer_id = :consumer")
DELETE_ORPHAN_LEASES = text(  # of registrations unregistered or expired
    "DELETE FROM lq_leases WHERE NOT EXISTS "
    "(SELECT 1 FROM lq_consumers c WHERE c.id = lq_leases.consumer_id)")

# --- messages ----------------------------------------------------------------------------------
SELECT_MESSAGES = text(
    "SELECT msg_offset, body, ts_us FROM lq_messages "
    "WHERE topic_id = :topic AND msg_offset >= :start ORDER BY msg_offset LIMIT :limit")
SELECT_MESSAGES_WITHIN_PG = text(_PAGE_WITHIN_PG.format(start=":start") + " ORDER BY msg_offset")
# Appends go through the driver's cursor (see dialect.py): plain DB-API strings.
COPY_MESSAGES = "COPY lq_messages (topic_id, msg_offset, body, ts_us) FROM STDIN"
INSERT_MESSAGE_SQLITE = (
    "INSERT INTO lq_messages (topic_id, msg_offset, body, ts_us) VALUES (?, ?, ?, ?)")
INSERT_MESSAGE_PG = (
    "INSERT INTO lq_messages (topic_id, msg_offset, body, ts_us) VALUES (%s, %s, %s, %s)")

# --- wake-ups across processes (PostgreSQL; through the driver: plain DB-API strings) ----------
NOTIFY_CHANNEL = "lq_append"
LISTENER_NAME = "logqueue-listen"  # the application_name of every LISTEN connection
# A hint needs no durability: its transaction commits without waiting for the WAL flush.
NOTIFY_TOPICS = (
    "SET LOCAL synchronous_commit TO off; "
    "SELECT pg_notify(%(channel)s, CAST(t AS text)) FROM unnest(CAST(%(ids)s AS bigint[])) AS t")
LISTEN = f"LISTEN {NOTIFY_CHANNEL}"
NAME_LISTENER = "SELECT set_config('application_name', %(name)s, false)"
# Whether a LISTEN connection of another process is open on this database.
OTHER_LISTENERS = (
    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name = %(name)s AND pid <> %(pid)s)")

# --- history: reads of the past without a registration (the web page) -----------------------
# Appends per second over an offset range, from the messages' append times (a range scan on
# the primary key, bounded by the caller).
SELECT_APPENDS_PER_SECOND = text(
    "SELECT ts_us / 1000000, COUNT(*) FROM lq_messages "
    "WHERE topic_id = :topic AND msg_offset >= :start AND msg_offset < :stop "
    "GROUP BY ts_us / 1000000")
# The append times of chosen offsets: one primary-key probe each.
SELECT_TIMES_AT = text(
    "SELECT msg_offset, ts_us FROM lq_messages WHERE topic_id = :topic AND msg_offset IN :offsets"
).bindparams(bindparam("offsets", expanding=True))

# --- schema and health -------------------------------------------------------------------------
LOCK_SCHEMA_PG = text("SELECT pg_advisory_xact_lock(:key)")
SHOW_MAX_CONNECTIONS_PG = text("SHOW max_connections")
PING = text("SELECT 1")
SHOW_SYNC_STANDBY_NAMES_PG = text("SHOW synchronous_standby_names")
SHOW_SYNC_COMMIT_PG = text("SHOW synchronous_commit")
SELECT_REPLICA_STATES_PG = text("SELECT sync_state FROM pg_stat_replication")

# --- tokens ------------------------------------------------------------------------------------
INSERT_TOKEN = text(
    "INSERT INTO lq_tokens (name, digest, produce, consume, admin, created_us) "
    "VALUES (:name, :digest, :produce, :consume, :admin, :now)")
SELECT_TOKEN = text(  # by the unique index on digest: one indexed lookup per token
    "SELECT produce, consume, admin, used_us FROM lq_tokens WHERE digest = :digest")
TOUCH_TOKEN = text("UPDATE lq_tokens SET used_us = :now WHERE digest = :digest")
SELECT_TOKENS = text(
    "SELECT name, produce, consume, admin, created_us, used_us FROM lq_tokens ORDER BY id")
ANY_TOKEN = text("SELECT 1 FROM lq_tokens LIMIT 1")
DELETE_TOKEN = text("DELETE FROM lq_tokens WHERE name = :name")
