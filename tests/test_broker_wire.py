"""The wire's edges (issues 18 and 20): how parameters arrive (curl's form-labelled JSON,
invalid UTF-8, strict integers), bodies past the limit, bounded replies (`max_bytes`), and
compression both ways, with an inflation bomb refused before the worker holds it."""

from __future__ import annotations

import gzip
import http.client
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from lqhttp import Api, raw_exchange, unique_topic
from support import BrokerProcess

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def api(broker: BrokerProcess) -> Iterator[Api]:
    with Api(broker.url) as client:
        yield client


def produce_batch(api: Api, topic: str, messages: list[str]) -> int:
    """A new topic holding `messages`; the id of a consumer at its start."""
    pid = api.producer(topic)
    cid = api.consumer(topic)
    api.produce(topic, pid, messages=messages)
    return cid


# --- parameters -----------------------------------------------------------------------------

def curl_post(path: str, body: bytes) -> bytes:
    """The bytes `curl -X POST localhost:5000PATH -d BODY` sends (curl 7.88)."""
    return (f"POST {path} HTTP/1.1\r\nHost: localhost:5000\r\nUser-Agent: curl/7.88.1\r\n"
            f"Accept: */*\r\nContent-Length: {len(body)}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n\r\n"
            ).encode() + body


def test_curl_d_with_a_json_body_is_read_as_json(broker: BrokerProcess, api: Api) -> None:
    topic = unique_topic("curl")
    status, headers, body = raw_exchange(broker.url, curl_post(
        "/topics", json.dumps({"topic_name": topic}, separators=(",", ":")).encode()))
    assert (status, json.loads(body)["status"]) == (200, "success"), body
    assert topic in api.topics()
    status, _, body = raw_exchange(broker.url, curl_post(
        "/producer/register", b'{"topic": "%s"}' % topic.encode()))
    pid = json.loads(body)["producer_id"]
    # A message with the characters a form would split or decode: = & + %
    message = "a=b&c+d 100%25 é"
    status, _, body = raw_exchange(broker.url, curl_post("/producer/produce", json.dumps(
        {"topic": topic, "producer_id": pid, "message": message}).encode()))
    assert status == 200, body
    # --data-urlencode: the form's only name is the JSON object
    encoded = requests.utils.quote(json.dumps({"topic": topic, "producer_id": pid,
                                               "message": "two"}), safe="")
    status, _, body = raw_exchange(broker.url, curl_post("/producer/produce", encoded.encode()))
    assert status == 200, body
    cid = api.consumer(topic)
    assert [m["message"] for m in api.consume_batch(topic, cid)] == [message, "two"]


def test_a_real_form_body_still_reads_as_a_form(api: Api) -> None:
    topic = unique_topic("form")
    api.ok("POST", "/topics", {"topic_name": topic}, dialect="form")
    pid = api.producer(topic)
    api.ok("POST", "/producer/produce", {"topic": topic, "producer_id": pid,
                                         "message": '{"looks": "like json"}'}, dialect="form")
    cid = api.consumer(topic)
    assert [m["message"] for m in api.consume_batch(topic, cid)] == ['{"looks": "like json"}']


def test_invalid_utf8_in_the_query_or_a_form_is_a_400(api: Api) -> None:
    topic = unique_topic("utf8")
    pid = api.producer(topic)
    cid = api.consumer(topic)
    base = f"/producer/produce?topic={topic}&producer_id={pid}"
    for path, body in ((base + "&message=%ff", None), (base + "&message=ok%C3", None),
                       ("/producer/produce", f"topic={topic}&producer_id={pid}&message=%ff")):
        reply = api.request("POST", path, data=body, headers={
            "Content-Type": "application/x-www-form-urlencoded"} if body else None)
        assert (reply.code, reply.body["error"]) == (400, "bad_request"), reply
        assert "UTF-8" in reply.body["message"]
    api.ok("POST", base + "&message=%C3%A9")  # valid UTF-8 still goes through
    assert [m["message"] for m in api.consume_batch(topic, cid)] == ["é"]


def test_a_doubled_slash_answers_a_json_redirect_after_the_token(
        start_broker, tmp_path: Path) -> None:
    proc = start_broker(f"sqlite:///{tmp_path / 'r.db'}", token="s3cret")
    with Api(proc.url) as anonymous, Api(proc.url, token="s3cret") as api:
        anonymous.fail("GET", "/topics//", None, 401, "unauthorized")
        reply = api.request("GET", "/topics//")
        assert reply.code == 308 and reply.body["error"] == "moved", reply
        resp = requests.get(proc.url + "/topics//", headers=proc.headers(),
                            allow_redirects=False, timeout=10)
        assert resp.headers["Location"].endswith("/topics/")
        assert requests.get(proc.url + "/topics//", headers=proc.headers(),
                            timeout=10).json()["status"] == "success"  # followed


INTEGER_FIELDS = [
    ("PATCH", "/topics", "retention_messages"), ("PATCH", "/topics", "retention_ms"),
    ("POST", "/topics", "retention_ms"), ("POST", "/producer/produce", "seq"),
    ("POST", "/producer/produce", "producer_id"), ("GET", "/consumer/consume", "consumer_id"),
    ("GET", "/consumer/consume", "max"), ("GET", "/consumer/consume", "wait_ms"),
    ("GET", "/consumer/consume", "max_bytes"), ("GET", "/consumer/fetch", "offset"),
    ("POST", "/consumer/commit", "offset"),
]


@pytest.mark.parametrize(("method", "path", "field"), INTEGER_FIELDS)
@pytest.mark.parametrize("value", [False, True, 1.0, "1.0", "1_0"])
def test_booleans_and_floats_are_not_integers(api: Api, method: str, path: str, field: str,
                                               value: object) -> None:
    topic = unique_topic("int")
    pid = api.producer(topic)
    cid = api.consumer(topic)
    fields = {"topic": topic, "topic_name": unique_topic(), "producer_id": pid,
              "consumer_id": cid, "message": "m", "offset": 0, field: value}
    body = api.fail(method, path, fields, 400, "bad_request")
    assert field in body["message"], body
    assert api.size(topic, cid) == 0


def test_numeric_strings_stay_integers(api: Api) -> None:
    topic = unique_topic("intstr")
    api.ok("POST", "/topics", {"topic_name": topic, "retention_messages": "5"}, dialect="form")
    assert api.ok("GET", "/topics/describe", {"topic": topic})["retention_messages"] == 5
    api.ok("PATCH", "/topics", {"topic": topic, "retention_ms": " 60000 ",
                                "retention_messages": "7"})
    pid = api.producer(topic)
    api.ok("POST", "/producer/produce", {"topic": topic, "producer_id": str(pid),
                                         "message": "m", "seq": "0"})
    described = api.ok("GET", "/topics/describe", {"topic": topic}, dialect="query")
    assert (described["retention_messages"], described["retention_ms"]) == (7, 60000)


def test_a_chunked_body_over_the_limit_is_413(broker: BrokerProcess) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"topic_name": "'
        for _ in range(17):
            yield b"a" * MiB
        yield b'"}'

    host, port = broker.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/topics", body=chunks(), encode_chunked=True,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    assert (resp.status, body["error"]) == (413, "too_large"), body


# --- max_bytes ------------------------------------------------------------------------------

def test_max_bytes_bounds_consume_and_fetch_in_utf8_bytes(api: Api) -> None:
    topic = unique_topic("bytes")
    messages = [f"{i}" + "é" * 499 for i in range(10)]  # 999 bytes, 500 characters each
    cid = produce_batch(api, topic, messages)
    fetched = api.fetch(topic, cid, max_bytes=3000)["messages"]
    assert [m["message"] for m in fetched] == messages[:3]  # 2997 bytes; a fourth passes
    assert [m["message"] for m in api.fetch(topic, cid, max_bytes=1)["messages"]] == messages[:1]
    taken: list[str] = []
    while batch := api.ok("GET", "/consumer/consume", {"topic": topic, "consumer_id": cid,
                                                      "max": 100, "max_bytes": 2000})["messages"]:
        assert len(batch) == 2, batch  # 1998 bytes
        taken += [m["message"] for m in batch]
    assert taken == messages  # in order, every one, once
    for bad in (0, 16 * MiB + 1):
        api.fail("GET", "/consumer/fetch", {"topic": topic, "consumer_id": cid,
                                            "max_bytes": bad}, 400, "bad_request")


def test_replies_are_bounded_by_default_and_carry_one_message_at_least(api: Api) -> None:
    topic = unique_topic("big")
    big = [f"{i:07d}" + "x" * (1_000_000 - 7) for i in range(10)]  # 10 MB in one batch
    cid = produce_batch(api, topic, big)
    fetched = api.fetch(topic, cid, max=100)["messages"]
    assert [m["message"] for m in fetched] == big[:8]  # 8 MB: within the 8 MiB default
    first = api.ok("GET", "/consumer/consume", {"topic": topic, "consumer_id": cid,
                                                "max": 100, "max_bytes": 10})["messages"]
    assert [m["message"] for m in first] == big[:1]
    rest = api.consume_batch(topic, cid, max=100)
    assert [m["message"] for m in rest] == big[1:9]
    assert [m["message"] for m in api.consume_batch(topic, cid)] == big[9:]


# --- compression ----------------------------------------------------------------------------

def test_gzip_produce_and_gzip_consume(broker: BrokerProcess, api: Api) -> None:
    topic = unique_topic("gz")
    pid = api.producer(topic)
    cid = api.consumer(topic)
    records = [json.dumps({"level": "INFO", "message": f"request {i} served", "n": i})
               for i in range(500)]
    raw = json.dumps({"topic": topic, "producer_id": pid, "messages": records}).encode()
    body = api.ok("POST", "/producer/produce", data=gzip.compress(raw), headers={
        "Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert body["offsets"] == [0, 499]
    params = {"topic": topic, "consumer_id": cid, "max": 1000}
    resp = requests.get(broker.url + "/consumer/fetch", params=params, stream=True, timeout=10,
                        headers={"Accept-Encoding": "gzip"})
    wire = resp.raw.read(decode_content=False)
    assert resp.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in resp.headers["Vary"]
    plain = gzip.decompress(wire)
    assert len(wire) * 4 < len(plain)
    assert [m["message"] for m in json.loads(plain)["messages"]] == records
    identity = requests.get(broker.url + "/consumer/fetch", params=params, timeout=10,
                            headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in identity.headers
    assert identity.json() == json.loads(plain)
    small = requests.get(broker.url + "/consumer/fetch", params={**params, "max": 1},
                         timeout=10, headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in small.headers  # under 1 KiB: not worth it
    taken = api.consume_batch(topic, cid, max=1000)  # requests asks for gzip and inflates
    assert [m["message"] for m in taken] == records


def test_zstd_both_ways(broker: BrokerProcess, api: Api) -> None:
    zstandard = pytest.importorskip("zstandard")
    topic = unique_topic("zstd")
    pid = api.producer(topic)
    cid = api.consumer(topic)
    records = [f"line {i} " + "z" * 100 for i in range(200)]
    raw = json.dumps({"topic": topic, "producer_id": pid, "messages": records}).encode()
    api.ok("POST", "/producer/produce", data=zstandard.ZstdCompressor().compress(raw),
           headers={"Content-Encoding": "zstd", "Content-Type": "application/json"})
    resp = requests.get(broker.url + "/consumer/consume", stream=True, timeout=10,
                        params={"topic": topic, "consumer_id": cid, "max": 1000},
                        headers={"Accept-Encoding": "gzip;q=0.5, zstd"})
    assert resp.headers["Content-Encoding"] == "zstd"
    body = json.loads(zstandard.ZstdDecompressor().stream_reader(
        resp.raw.read(decode_content=False)).read())
    assert [m["message"] for m in body["messages"]] == records


def test_bad_encodings_are_refused_with_a_reason(api: Api) -> None:
    topic = unique_topic("enc")
    pid = api.producer(topic)
    cid = api.consumer(topic)
    raw = json.dumps({"topic": topic, "producer_id": pid, "message": "m"}).encode()
    headers = {"Content-Type": "application/json"}
    body = api.fail("POST", "/producer/produce", None, 415, "unsupported_encoding", data=raw,
                    headers={**headers, "Content-Encoding": "br"})
    assert "br" in body["message"]
    for broken in (b"not gzip at all", gzip.compress(raw)[:-12]):
        api.fail("POST", "/producer/produce", None, 400, "bad_request", data=broken,
                 headers={**headers, "Content-Encoding": "gzip"})
    assert api.size(topic, cid) == 0


def gzip_bomb(inflated: int) -> bytes:
    """A JSON body of `inflated` bytes, gzipped: about a thousandth of that on the wire."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [deflater.compress(b'{"topic_name": "')]
    block = b"a" * MiB
    out += [deflater.compress(block) for _ in range(inflated // MiB)]
    return b"".join([*out, deflater.compress(b'"}'), deflater.flush()])


def workers_rss(broker: BrokerProcess) -> int:
    """The resident memory of the broker's workers together, in bytes (from /proc)."""
    arbiter = broker.proc.pid
    children = Path(f"/proc/{arbiter}/task/{arbiter}/children").read_text().split()
    assert children, "the broker has no worker"
    total = 0
    for pid in children:
        status = Path(f"/proc/{pid}/status").read_text()
        total += next(int(line.split()[1]) * 1024 for line in status.splitlines()
                      if line.startswith("VmRSS:"))
    return total


def test_an_inflation_bomb_is_413_and_the_worker_never_holds_it(broker: BrokerProcess,
                                                                  api: Api) -> None:
    bomb = gzip_bomb(100 * MiB)
    assert len(bomb) < 200_000
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    fits = gzip.compress(json.dumps({"topic_name": unique_topic()}).encode())
    api.ok("POST", "/topics", data=fits, headers=headers)  # the code paths are warm
    before = workers_rss(broker)
    for _ in range(6):
        body = api.fail("POST", "/topics", None, 413, "too_large", data=bomb, headers=headers)
        assert "inflates" in body["message"]
    grown = workers_rss(broker) - before
    assert grown < 4 * MiB, f"the workers grew by {grown / MiB:.1f} MiB"
    topic = unique_topic()
    api.ok("POST", "/topics", data=gzip.compress(json.dumps({"topic_name": topic}).encode()),
           headers=headers)
    assert topic in api.topics()
