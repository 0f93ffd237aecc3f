"""What scoped tokens and TLS cost: produce and consume msg/s with a scoped token against no auth,
and over HTTPS against plain HTTP, all in the same run.

    python bench/bench_auth.py                      # SQLite, 4 clients, 3 rounds (~2 minutes)
    python bench/bench_auth.py --db postgresql --clients 8 --rounds 2

Three brokers run side by side, each on its own database (a stored token turns auth on for
every broker on its database): "no auth" (no LQ_TOKEN, no token stored), "scoped token"
(clients send a token with produce and consume globs, so every request hashes it, looks it up
in the per-process cache and matches its topic against the globs) and "TLS" (no auth, HTTPS
with a self-signed certificate; clients verify it). Rounds alternate between the brokers and
the best round of each counts, so a burst of noise on this shared machine hits all three
alike. Target: scoped token >= 0.95 x no auth.

Over HTTP the difference is within this shared machine's noise, so the script also measures
the check itself in process: what the broker does per request for a scoped token (hash the
token, get the cached Access, match the topic against the globs), beside the in-process time
of a produce request of one message (it waits for the commit's fsync) and of a /size request
(a read: CPU only) on the same app.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
from harness import pg_database
from support import BrokerProcess

BODY = "x" * 100  # a 100-byte log line
ADMIN = "bench-admin-token"
GLOBS = ["logs-*", "audit", "app-?", "bench-*"]  # the topic matches the last glob
OPS = (("produce", 1), ("produce", 100), ("consume", 1), ("consume", 1000))


@dataclass
class Target:
    name: str
    url: str
    token: str | None = None
    verify: str | bool = True
    rates: dict[str, list[float]] = field(default_factory=dict)


def _client(args: tuple) -> tuple[int, float]:
    """One client process: `calls` requests of one kind; returns (messages, seconds)."""
    url, token, verify, op, topic, ident, calls, batch = args
    session = requests.Session()
    session.trust_env = False  # as the SDK: no CA bundle or proxy from the environment
    session.verify = verify
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    if op == "produce":
        body = {"topic": topic, "producer_id": ident}
        body.update({"message": BODY} if batch == 1 else {"messages": [BODY] * batch})
        send = lambda: session.post(url + "/producer/produce", json=body)  # noqa: E731
    else:
        params = {"topic": topic, "consumer_id": ident, "max": batch}
        send = lambda: session.get(url + "/consumer/consume", params=params)  # noqa: E731
    moved = 0
    start = time.perf_counter()
    for _ in range(calls):
        response = send()
        assert response.status_code == 200, response.text
        moved += batch if op == "produce" else len(response.json()["messages"])
    return moved, time.perf_counter() - start


def _call(target: Target, path: str, fields: dict) -> dict:
    headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
    with requests.Session() as session:
        session.trust_env = False
        body = session.post(target.url + path, json=fields, headers=headers,
                            verify=target.verify, timeout=30).json()
    assert body["status"] == "success", body
    return body


def one_round(pool: mp.pool.Pool, target: Target, clients: int, scale: float,
              index: int) -> None:
    """Every op once on a fresh topic: produce fills it, consume drains it."""
    topic = f"bench-{index}"
    pid = _call(target, "/producer/register", {"topic": topic})["producer_id"]
    cids = [_call(target, "/consumer/register", {"topic": topic})["consumer_id"]
            for _ in range(clients)]
    for op, batch in OPS:
        per_client = {1: 1500, 100: 150, 1000: 15}[batch]
        calls = max(2, int(per_client * scale))
        idents = [pid] * clients if op == "produce" else cids
        jobs = [(target.url, target.token, target.verify, op, topic, ident, calls, batch)
                for ident in idents]
        results = pool.map(_client, jobs)
        rate = sum(m for m, _ in results) / max(s for _, s in results)
        target.rates.setdefault(f"{op} {batch}/request", []).append(rate)


@contextmanager
def certificate() -> Iterator[tuple[str, str]]:
    with tempfile.TemporaryDirectory(prefix="lq-bench-tls-") as tmp:
        cert, key = f"{tmp}/cert.pem", f"{tmp}/key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", key, "-out", cert], check=True, capture_output=True)
        yield cert, key


@contextmanager
def database(kind: str) -> Iterator[str]:
    if kind == "postgresql":
        with pg_database() as url:
            if url is None:
                raise SystemExit("PostgreSQL does not answer")
            yield url
        return
    with tempfile.TemporaryDirectory(prefix="lq-bench-") as tmp:
        yield f"sqlite:///{Path(tmp) / 'bench.db'}"


def start(stack: ExitStack, kind: str, *, token: str | None = None,
          tls: tuple[str, str] | None = None) -> BrokerProcess:
    workers = "1" if kind == "sqlite" else "2"
    args = ["--workers", workers, "--threads", "32"]
    if tls:
        args += ["--certfile", tls[0], "--keyfile", tls[1]]
    log = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "broker.log"
    proc = BrokerProcess(stack.enter_context(database(kind)), token=token, args=args,
                         log_path=log)
    if tls:
        proc.url = proc.url.replace("http://", "https://")
    saved = os.environ.get("REQUESTS_CA_BUNDLE")
    if tls:
        os.environ["REQUESTS_CA_BUNDLE"] = tls[0]  # for the readiness check only
    try:
        proc.start()
    finally:
        os.environ.pop("REQUESTS_CA_BUNDLE", None)
        if saved is not None:
            os.environ["REQUESTS_CA_BUNDLE"] = saved
    stack.callback(proc.stop)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="work per round (1.0 = full)")
    args = parser.parse_args()
    with ExitStack() as stack:
        cert = stack.enter_context(certificate())
        plain = start(stack, args.db)
        scoped = start(stack, args.db, token=ADMIN)
        tls = start(stack, args.db, tls=cert)
        admin = Target("admin", scoped.url, ADMIN)
        token = _call(admin, "/tokens", {"name": "bench", "produce": GLOBS,
                                         "consume": GLOBS})["token"]
        targets = [Target("no auth", plain.url), Target("scoped token", scoped.url, token),
                   Target("TLS (no auth)", tls.url, verify=cert[0])]
        with mp.Pool(args.clients) as pool:
            for index in range(args.rounds):
                for target in targets:
                    one_round(pool, target, args.clients, args.scale, index)
    report(targets, args)


def in_process(n: int = 50_000) -> tuple[float, float, float]:
    """Microseconds per token check, per in-process produce of one message, per /size."""
    from broker import auth
    from broker.app import create_app
    from broker.models import db
    from broker.store import create_schema

    with tempfile.TemporaryDirectory(prefix="lq-bench-") as tmp:
        app = create_app({"LQ_DATABASE_URL": f"{tmp}/auth.db", "LQ_TOKEN": ADMIN})
        with app.app_context():
            create_schema(db.engine)
        client = app.test_client()
        admin = {"Authorization": f"Bearer {ADMIN}"}
        token = client.post("/tokens", json={"produce": GLOBS, "consume": GLOBS},
                            headers=admin).json["token"]
        checks, header = auth.get_auth(app), f"Bearer {token}"
        checks.access(header)
        start = time.perf_counter()
        for _ in range(n):
            checks.access(header).allows("produce", "bench-1")
        check_us = (time.perf_counter() - start) / n * 1e6
        headers = {"Authorization": header}
        pid = client.post("/producer/register", json={"topic": "bench-1"},
                          headers=headers).json["producer_id"]
        body = {"topic": "bench-1", "producer_id": pid, "message": BODY}
        cid = client.post("/consumer/register", json={"topic": "bench-1"},
                          headers=headers).json["consumer_id"]
        times = []
        for send in (lambda: client.post("/producer/produce", json=body, headers=headers),
                     lambda: client.get("/size", headers=headers,
                                        query_string={"topic": "bench-1", "consumer_id": cid})):
            start = time.perf_counter()
            for _ in range(1000):
                assert send().status_code == 200
            times.append((time.perf_counter() - start) / 1000 * 1e6)
        with app.app_context():
            db.engine.dispose()
    return check_us, times[0], times[1]


def report(targets: list[Target], args: argparse.Namespace) -> None:
    base, scoped, tls = targets
    print(f"\n{args.db}, {args.clients} clients, best of {args.rounds} rounds (msg/s)\n")
    print(f"{'operation':<24}{'no auth':>10}{'scoped':>10}{'ratio':>7}{'TLS':>10}{'ratio':>7}")
    for op in base.rates:
        b, s, t = (max(x.rates[op]) for x in (base, scoped, tls))
        print(f"{op:<24}{b:>10,.0f}{s:>10,.0f}{s / b:>7.2f}{t:>10,.0f}{t / b:>7.2f}")
    check_us, produce_us, size_us = in_process()
    print(f"\nin process: a scoped token check takes {check_us:.1f} us; a produce request of "
          f"one message {produce_us:.0f} us ({check_us / produce_us:.2%} of it), a /size "
          f"request {size_us:.0f} us ({check_us / size_us:.1%})")


if __name__ == "__main__":
    main()
