"""Bad input: always a JSON failure with the right code and status, never a 5xx, never HTML.

``lqhttp.parse`` already fails any reply that is a 5xx, not JSON, HTML or a stack trace; these
tests add the exact status and ``error`` code, and check that nothing was appended or moved.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from gunicorn import util
from lqhttp import DIALECTS, Api, raw_exchange, unique_topic
from support import BrokerProcess

from broker.serving import StatusLine, json_error

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def api(broker: BrokerProcess) -> Iterator[Api]:
    with Api(broker.url) as client:
        yield client


@dataclass
class Ctx:
    topic: str
    pid: int
    cid: int


@pytest.fixture
def ctx(api: Api) -> Ctx:
    """A topic with one message, a producer and a consumer registered on it."""
    topic = unique_topic()
    pid = api.producer(topic)
    cid = api.consumer(topic)
    api.produce(topic, pid, "seed")
    return Ctx(topic, pid, cid)


def valid_request(path: str, ctx: Ctx) -> dict[str, Any]:
    """A request that would succeed (every field required)."""
    return {
        "/topics": {"topic_name": unique_topic()},
        "/producer/register": {"topic": ctx.topic},
        "/consumer/register": {"topic": ctx.topic},
        "/producer/produce": {"topic": ctx.topic, "producer_id": ctx.pid, "message": "m"},
        "/consumer/consume": {"topic": ctx.topic, "consumer_id": ctx.cid},
        "/size": {"topic": ctx.topic, "consumer_id": ctx.cid},
        "/consumer/fetch": {"topic": ctx.topic, "consumer_id": ctx.cid},
        "/consumer/commit": {"topic": ctx.topic, "consumer_id": ctx.cid, "offset": 1},
    }[path]


PARAM_ENDPOINTS = [
    ("POST", "/topics"), ("POST", "/producer/register"), ("POST", "/consumer/register"),
    ("POST", "/producer/produce"), ("GET", "/consumer/consume"), ("GET", "/size"),
    ("GET", "/consumer/fetch"), ("POST", "/consumer/commit"),
]
PARAM_PATHS = {path for _, path in PARAM_ENDPOINTS}
ALL_ENDPOINTS = [*PARAM_ENDPOINTS, ("GET", "/topics"), ("GET", "/stats"), ("GET", "/healthz"),
                 ("GET", "/status")]


def assert_untouched(api: Api, ctx: Ctx) -> None:
    """Nothing was appended to the context topic and its consumer did not move."""
    body = api.fetch(ctx.topic, ctx.cid)
    assert body["position"] == 0, body
    assert [m["message"] for m in body["messages"]] == ["seed"], body


# --- malformed bodies ---------------------------------------------------------------------

MALFORMED = {
    "truncated": b'{"topic": "x", ',
    "unquoted-keys": b"{topic: 1}",
    "trailing-garbage": b'{"topic": "x"} garbage',
    "array": b'["topic", "x"]',
    "string": b'"topic"',
    "number": b"42",
    "null": b"null",
    "not-utf8": b'{"topic": "\xff\xfe"}',
    "nan": b'{"topic": NaN}',
    "deeply-nested": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
@pytest.mark.parametrize(("method", "path"), PARAM_ENDPOINTS)
def test_malformed_json(api: Api, ctx: Ctx, method: str, path: str, body: bytes) -> None:
    api.fail(method, path, None, 400, "bad_request", data=body,
             headers={"Content-Type": "application/json"})
    assert_untouched(api, ctx)


# --- missing fields and wrong types -------------------------------------------------------

MISSING = [(m, p, field) for m, p in PARAM_ENDPOINTS
           for field in {"/topics": ["topic_name"], "/producer/register": ["topic"],
                         "/consumer/register": ["topic"],
                         "/producer/produce": ["topic", "producer_id", "message"],
                         "/consumer/commit": ["topic", "consumer_id", "offset"]}.get(
                             p, ["topic", "consumer_id"])]


@pytest.mark.parametrize("dialect", ["query", "form", "json"])
@pytest.mark.parametrize(("method", "path", "field"), MISSING)
def test_missing_field(api: Api, ctx: Ctx, dialect: str, method: str, path: str,
                       field: str) -> None:
    fields = valid_request(path, ctx)
    key = next(k for k in fields if k == field or (field == "topic" and k == "topic_name"))
    del fields[key]
    api.fail(method, path, fields, 400, "bad_request", dialect=dialect)
    assert_untouched(api, ctx)


@pytest.mark.parametrize(("method", "path"), PARAM_ENDPOINTS)
def test_empty_request(api: Api, method: str, path: str) -> None:
    api.fail(method, path, None, 400, "bad_request")
    api.fail(method, path, None, 400, "bad_request", data=b"{}",
             headers={"Content-Type": "application/json"})


ID_BAD = ["abc", "1.5", 1.5, "", None, [1], {"id": 1}, "1e3", " 12 x"]
WRONG_TYPES: list[tuple[str, str, str, Any]] = [
    *[("POST", "/producer/produce", "producer_id", v) for v in ID_BAD],
    *[("GET", "/consumer/consume", "consumer_id", v) for v in ID_BAD],
    *[("GET", "/size", "consumer_id", v) for v in ID_BAD],
    *[("GET", "/consumer/fetch", "consumer_id", v) for v in ID_BAD],
    *[("POST", "/consumer/commit", "consumer_id", v) for v in ID_BAD],
    *[("POST", "/consumer/commit", "offset", v) for v in ["abc", 1.5, None, [1], -1]],
    *[("GET", "/consumer/fetch", "offset", v) for v in ["abc", 1.5, [1], -1]],
    *[("POST", "/producer/produce", "message", v) for v in [123, None, ["m"], {"m": 1}]],
    *[("POST", "/producer/register", "topic", v) for v in [None, ["t"], {"t": 1}]],
    *[("POST", "/topics", "topic_name", v) for v in [None, ["t"], {"t": 1}]],
    *[("GET", "/consumer/consume", "max", v) for v in [0, -1, 1001, 10**12, 2**64, "abc", 1.5]],
    *[("GET", "/consumer/consume", "wait_ms", v) for v in [-1, 30_001, 10**12, "abc", 2.5]],
    *[("GET", "/consumer/fetch", "max", v) for v in [0, 1001, 10**12]],
    *[("GET", "/consumer/fetch", "wait_ms", v) for v in [-1, 30_001, 10**12]],
    *[("POST", "/producer/produce", "seq", v) for v in ["abc", 1.5, [1]]],
    *[("POST", "/consumer/register", "from", v) for v in ["oldest", "", 5]],
]


@pytest.mark.parametrize(("method", "path", "field", "value"), WRONG_TYPES)
def test_wrong_type(api: Api, ctx: Ctx, method: str, path: str, field: str,
                    value: Any) -> None:
    fields = valid_request(path, ctx)
    fields[field] = value
    api.fail(method, path, fields, 400, "bad_request", timeout=5)
    assert_untouched(api, ctx)


@pytest.mark.parametrize("value", [0, -5, 2**53, 2**64, "-5"])
@pytest.mark.parametrize(("method", "path", "field"), [
    ("POST", "/producer/produce", "producer_id"), ("GET", "/consumer/consume", "consumer_id"),
    ("GET", "/size", "consumer_id"), ("POST", "/consumer/commit", "consumer_id")])
def test_out_of_range_ids(api: Api, ctx: Ctx, method: str, path: str, field: str,
                          value: Any) -> None:
    fields = valid_request(path, ctx)
    fields[field] = value
    api.fail(method, path, fields, 400, ("bad_request", "unknown_id"))
    assert_untouched(api, ctx)


@pytest.mark.parametrize("value", [2**64, 10**30, -(2**63) - 1])
def test_an_integer_past_64_bits_is_refused_for_its_range(api: Api, ctx: Ctx, value: int
                                                          ) -> None:
    """Read as the integer it is (orjson makes such numbers floats: the reply then said "must
    be an integer" of an integer)."""
    fields = {"topic": ctx.topic, "producer_id": value, "message": "m"}
    body = api.fail("POST", "/producer/produce", fields, 400, "bad_request")
    expected = "greater than" if value < 0 else "less than"
    assert expected in body["message"] and "must be an integer" not in body["message"], body
    assert_untouched(api, ctx)


@pytest.mark.parametrize("messages", [[], "not-a-list", [1, 2], ["ok", None], {"a": "b"}],
                         ids=["empty", "string", "ints", "null-item", "object"])
def test_bad_batch(api: Api, ctx: Ctx, messages: Any) -> None:
    fields = {"topic": ctx.topic, "producer_id": ctx.pid, "messages": messages}
    api.fail("POST", "/producer/produce", fields, 400, "bad_request")
    assert_untouched(api, ctx)


# --- limits -------------------------------------------------------------------------------

def test_message_at_the_limit_is_accepted(api: Api, ctx: Ctx) -> None:
    text = "x" * MiB
    offsets = api.produce(ctx.topic, ctx.pid, text)["offsets"]
    assert offsets == [1, 1]
    assert api.fetch(ctx.topic, ctx.cid, offset=1)["messages"][0]["message"] == text


@pytest.mark.parametrize("text", ["x" * (MiB + 1), "é" * (MiB // 2 + 1)], ids=["ascii", "utf8"])
@pytest.mark.parametrize("key", ["message", "log_message"])
def test_message_over_the_limit(api: Api, ctx: Ctx, text: str, key: str) -> None:
    fields = {"topic": ctx.topic, "producer_id": ctx.pid, key: text}
    api.fail("POST", "/producer/produce", fields, 413, "too_large")
    assert_untouched(api, ctx)


def test_batch_with_one_oversized_message_appends_nothing(api: Api, ctx: Ctx) -> None:
    fields = {"topic": ctx.topic, "producer_id": ctx.pid,
              "messages": ["small", "y" * (MiB + 1), "small"]}
    api.fail("POST", "/producer/produce", fields, 413, "too_large")
    assert_untouched(api, ctx)


@pytest.mark.parametrize("dialect", ["json", "form"])
def test_body_over_16_mib(api: Api, ctx: Ctx, dialect: str) -> None:
    fields = {"topic": ctx.topic, "producer_id": ctx.pid, "message": "m",
              "padding": "p" * (16 * MiB + 10)}
    api.fail("POST", "/producer/produce", fields, 413, "too_large", dialect=dialect, timeout=60)
    assert_untouched(api, ctx)


def test_batch_of_17_mib_in_1_mib_messages(api: Api, ctx: Ctx) -> None:
    fields = {"topic": ctx.topic, "producer_id": ctx.pid,
              "messages": ["z" * (MiB - 64)] * 17}
    api.fail("POST", "/producer/produce", fields, 413, "too_large", timeout=60)
    assert_untouched(api, ctx)


def test_batch_of_10000_is_accepted_10001_is_too_large(api: Api, ctx: Ctx) -> None:
    too_many = {"topic": ctx.topic, "producer_id": ctx.pid,
                "messages": [f"m{i}" for i in range(10_001)]}
    api.fail("POST", "/producer/produce", too_many, 413, "too_large", timeout=60)
    assert_untouched(api, ctx)

    at_limit = [f"m{i}" for i in range(10_000)]
    assert api.produce(ctx.topic, ctx.pid, messages=at_limit)["offsets"] == [1, 10_000]
    assert api.size(ctx.topic, ctx.cid) == 10_001


def test_long_message_in_query_string_is_json(api: Api, ctx: Ctx) -> None:
    """A classic client may put a multi-kilobyte log line in the query string."""
    fields = {"topic": ctx.topic, "producer_id": ctx.pid, "message": "q" * 6000}
    reply = api.request("POST", "/producer/produce", fields, dialect="query")
    assert reply.code == 200 or (reply.code, reply.body["error"]) == (413, "too_large"), reply


# --- text the databases cannot store as is ---------------------------------------------

ODD_TEXT = {"nul": '"a\\u0000b"', "lone-surrogate": '"a\\ud800b"', "bom": '"\\ufeffx"',
            "control": '"\\u0001\\u001f\\u007f"'}


@pytest.mark.parametrize("field", ["message", "messages", "consumer_name"])
@pytest.mark.parametrize("text", ODD_TEXT.values(), ids=ODD_TEXT.keys())
def test_odd_text_round_trips_or_is_refused(api: Api, ctx: Ctx, text: str, field: str) -> None:
    """NUL (PostgreSQL text refuses it) and a lone surrogate (not UTF-8): stored and returned
    exactly, or refused with bad_request; never a 5xx."""
    expected = json.loads(text)
    if field == "consumer_name":
        body = f'{{"topic": "{ctx.topic}", "consumer_name": {text}}}'
        reply = api.request("POST", "/consumer/register", data=body.encode(),
                            headers={"Content-Type": "application/json"})
        if reply.code == 200:
            again = api.request("POST", "/consumer/register", data=body.encode(),
                                headers={"Content-Type": "application/json"})
            assert again.body["consumer_id"] == reply.body["consumer_id"], again
    else:
        value = f"[{text}]" if field == "messages" else text
        body = f'{{"topic": "{ctx.topic}", "producer_id": {ctx.pid}, "{field}": {value}}}'
        reply = api.request("POST", "/producer/produce", data=body.encode(),
                            headers={"Content-Type": "application/json"})
        if reply.code == 200:
            got = api.fetch(ctx.topic, ctx.cid, offset=1)["messages"]
            assert [m["message"] for m in got] == [expected], got
    if reply.code != 200:
        assert (reply.code, reply.body["error"]) == (400, "bad_request"), reply
        assert_untouched(api, ctx)


# --- topic names --------------------------------------------------------------------------

BAD_NAMES = ["", "-starts-with-dash", ".dot", "_underscore", ":colon", "has space", "a/b",
             "a\\b", "tab\tin", "new\nline", "trailing-newline\n", "ünicode", "a" * 201,
             "semi;colon", "q?x", "pct%41", "emoji-\U0001f600", "nul\x00x"]
GOOD_NAMES = ["a", "0", "A.b_c:d-e", "T-1", "x" * 200, "9lives..::--__"]


BAD_NAME_CASES = [pytest.param(name, dialect, id=f"{dialect}-{name!r:.30}")
                  for name in BAD_NAMES for dialect in ("json", "query", "form")
                  if dialect == "json" or "\x00" not in name]


@pytest.mark.parametrize(("name", "dialect"), BAD_NAME_CASES)
def test_bad_topic_name_is_refused(api: Api, name: str, dialect: str) -> None:
    api.fail("POST", "/topics", {"topic_name": name}, 400, "bad_request", dialect=dialect)
    api.fail("POST", "/producer/register", {"topic": name}, 400, "bad_request", dialect=dialect)
    api.fail("POST", "/consumer/register", {"topic": name}, 400,
             ("bad_request", "unknown_topic"), dialect=dialect)
    assert name not in api.topics()


@pytest.mark.parametrize("name", GOOD_NAMES, ids=[n[:20] for n in GOOD_NAMES])
def test_good_topic_names(api: Api, name: str) -> None:
    api.create_topic(name)
    pid = api.producer(name)
    cid = api.consumer(name)
    api.produce(name, pid, "hello")
    assert api.consume(name, cid).body["message"] == "hello"
    assert name in api.topics()


# --- unknown ids and unregistered topics (every id-taking endpoint) -----------------------

@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/producer/produce"), ("GET", "/consumer/consume"), ("GET", "/size"),
    ("GET", "/consumer/fetch"), ("POST", "/consumer/commit")])
def test_unknown_ids_and_topics(api: Api, ctx: Ctx, method: str, path: str) -> None:
    id_field = "producer_id" if path == "/producer/produce" else "consumer_id"
    fields = valid_request(path, ctx)
    api.fail(method, path, {**fields, id_field: 123456789}, 400, "unknown_id")
    missing = unique_topic("missing")
    api.fail(method, path, {**fields, "topic": missing}, 400, "unknown_topic")
    elsewhere = unique_topic()
    api.create_topic(elsewhere)
    api.fail(method, path, {**fields, "topic": elsewhere}, 400, "not_registered")
    assert missing not in api.topics()
    assert_untouched(api, ctx)


# --- unknown paths and wrong methods ------------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("path", ["/nope", "/producer", "/consumer", "/consumer/consume/x",
                                  "/topics/abc/def", "/favicon.ico", "/size/1", "/%ff",
                                  "/producer/produce.php"])
def test_unknown_path_is_json_404(api: Api, method: str, path: str) -> None:
    body = api.fail(method, path, {"topic": "x"}, 404, "not_found")
    assert body["status"] == "failure"


ALLOWED = {path: method for method, path in ALL_ENDPOINTS if path != "/topics"}
WRONG_METHODS = [(m, p) for p in ALLOWED for m in ("GET", "POST", "PUT", "DELETE", "PATCH")
                 if m != ALLOWED[p]] + [("PUT", "/topics")]


@pytest.mark.parametrize(("method", "path"), WRONG_METHODS)
def test_wrong_method_is_json_405(api: Api, ctx: Ctx, method: str, path: str) -> None:
    fields = valid_request(path, ctx) if path in PARAM_PATHS else None
    api.fail(method, path, fields, 405, "method_not_allowed")
    assert_untouched(api, ctx)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_extra_fields_of_every_type_are_ignored(api: Api, ctx: Ctx, dialect: str) -> None:
    extra = {"unused": "x"} if dialect in ("query", "form") else {
        "unused": {"nested": [1, None, True]}, "another": None}
    fields = {"topic": ctx.topic, "producer_id": ctx.pid, "message": "m", **extra}
    assert api.ok("POST", "/producer/produce", fields, dialect=dialect)["offsets"] == [1, 1]


# --- HTTP that gunicorn refuses before the app sees it ------------------------------------

RAW_REQUESTS = {
    "nul-in-header-value": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Trace: a\x00b\r\n\r\n",
                            400, "bad_request"),
    "control-in-header-value": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Trace: a\x01b\r\n\r\n",
                                400, "bad_request"),
    "invalid-header-name": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",
                            400, "bad_request"),
    "garbage-request-line": (b"garbage\r\n\r\n", 400, "bad_request"),
    "invalid-method": (b"G@T /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    "over-long-header": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000
                         + b"\r\n\r\n", 431, "too_large"),
}


@pytest.mark.parametrize(("request_bytes", "status", "error"), RAW_REQUESTS.values(),
                         ids=RAW_REQUESTS.keys())
def test_http_gunicorn_refuses_is_a_json_failure(broker: BrokerProcess, request_bytes: bytes,
                                                 status: int, error: str) -> None:
    code, headers, body = raw_exchange(broker.url, request_bytes)
    assert b"<html" not in body.lower(), body
    assert (code, headers.get("content-type")) == (status, "application/json"), (headers, body)
    assert int(headers["content-length"]) == len(body)
    reply = json.loads(body)
    assert reply["status"] == "failure" and reply["error"] == error, reply
    assert isinstance(reply["message"], str) and reply["message"], reply
    Api(broker.url).ok("GET", "/healthz")


def test_the_worker_reads_the_status_gunicorn_picks() -> None:
    """The JSON answer keeps gunicorn's status: it is read from gunicorn's own error writer."""
    seen = StatusLine()
    util.write_error(seen, 431, "Request Header Fields Too Large", "<p>ignored</p>")
    assert (seen.status, seen.reason) == (431, "Request Header Fields Too Large")


def test_an_error_gunicorn_did_not_answer_is_a_json_500() -> None:
    head, _, body = json_error(0, "", RuntimeError("a bug")).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert json.loads(body) == {"status": "failure", "error": "internal",
                                "message": "internal error (a bug): see the broker's log"}


@pytest.mark.parametrize("chunked_body", [b"zz\r\nabc\r\n0\r\n\r\n", b"3\r\nabcXY0\r\n\r\n"],
                         ids=["bad-chunk-size", "missing-chunk-terminator"])
def test_a_body_the_server_cannot_read_is_a_json_400(broker: BrokerProcess,
                                                     chunked_body: bytes) -> None:
    request_bytes = (b"POST /topics HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked_body)
    code, headers, body = raw_exchange(broker.url, request_bytes)
    assert (code, headers.get("content-type")) == (400, "application/json"), (headers, body)
    reply = json.loads(body)
    assert reply["error"] == "bad_request" and "body" in reply["message"], reply
    Api(broker.url).ok("GET", "/healthz")
