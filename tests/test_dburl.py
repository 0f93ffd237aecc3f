"""Database URLs: libpq's multi-host form reaches psycopg2 as libpq's host and port lists,
every other form passes through, and no password is ever printed.

What psycopg2 receives is read from SQLAlchemy's own psycopg2 dialect (the code that turns
the URL into connect arguments at run time); the last tests start a real `lq broker`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2
from sqlalchemy.engine import make_url
from support import LQ, BrokerProcess, clean_env, free_port

from broker.app import database_url
from broker.dburl import displayed, host_count, normalize, primary_first
from sdk import Client


def connect_args(url: str) -> dict[str, Any]:
    """The keyword arguments psycopg2.connect gets for ``url`` (as the broker builds it)."""
    return PGDialect_psycopg2().create_connect_args(make_url(database_url(url)))[1]


@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql://u@db1:5432,db2:5433/lq?target_session_attrs=read-write",
     {"user": "u", "dbname": "lq", "host": "db1,db2", "port": "5432,5433",
      "target_session_attrs": "read-write"}),
    ("postgresql://u:p%40ss:w@db1,db2,db3/lq",  # no ports: libpq's default for each
     {"user": "u", "password": "p@ss:w", "dbname": "lq", "host": "db1,db2,db3", "port": ",,"}),
    ("postgres://u@db1:5432,db2/lq",  # one port given, the other default
     {"user": "u", "dbname": "lq", "host": "db1,db2", "port": "5432,"}),
    ("postgresql://u@%2Fvar%2Frun%2Fpg:5432,db2:5432/lq",  # a unix socket in the list
     {"user": "u", "dbname": "lq", "host": "/var/run/pg,db2", "port": "5432,5432"}),
    ("postgresql://u@[::1]:5432,[fe80::2]:5433/lq?sslmode=require",
     {"user": "u", "dbname": "lq", "host": "::1,fe80::2", "port": "5432,5433",
      "sslmode": "require"}),
    ("postgresql://u@db1:5432/lq",  # one host: SQLAlchemy's parse, as before
     {"user": "u", "dbname": "lq", "host": "db1", "port": 5432}),
    ("postgresql:///lq?host=/tmp/sockets",  # a unix socket as a query host
     {"dbname": "lq", "host": "/tmp/sockets"}),
    ("postgresql://u@/lq?host=db1:5432&host=db2:5433",  # SQLAlchemy's own multi-host form
     {"user": "u", "dbname": "lq", "host": "db1,db2", "port": "5432,5433"}),
])
def test_what_psycopg2_receives(url: str, expected: dict[str, Any]) -> None:
    assert connect_args(url) == expected


@pytest.mark.parametrize(("url", "hosts"), [
    ("postgresql://u@db1:5432,db2:5433/lq", 2),
    ("postgresql://u@a,b,c/lq", 3),
    ("postgresql://u@db1/lq", 1),
    ("postgresql:///lq?host=/tmp", 1),
    ("postgresql://u@/lq?host=db1:1&host=db2:2", 2),
    ("/var/lib/lq.db", 0),
])
def test_host_count(url: str, hosts: int) -> None:
    assert host_count(database_url(url)) == hosts


@pytest.mark.parametrize("url", [
    "sqlite:////var/lib/lq.db", "postgresql://u@db1/lq", "postgresql+psycopg2://u@h:1/x",
    "mysql://u@a,b/x",
])
def test_other_urls_pass_through(url: str) -> None:
    assert normalize(url) == url


@pytest.mark.parametrize(("url", "reason"), [
    ("postgresql://u@db1:5432,db2:x/lq", "cannot read the host"),
    ("postgresql://u@db1:5432,db2:70000/lq", "out of range"),
    ("postgresql://u@db1,,db2/lq", "empty host"),
    ("postgresql://u@db1,db2/lq?host=db3", "not both"),
])
def test_bad_multi_host_urls(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        normalize(url)


@pytest.mark.parametrize("url", [
    "postgresql://u:s3cret@db1:5432,db2:5433/lq",
    "postgresql://u:s3cret@db1/lq",
    "postgresql://u:s3cret@db1:5432,db2:x/lq",
])
def test_displayed_hides_the_password(url: str) -> None:
    """As typed (SQLAlchemy cannot parse the multi-host ones: masked by pattern) or as the
    broker uses it."""
    for form in (url, normalize(url) if ":x/" not in url else url):
        shown = displayed(form)
        assert "s3cret" not in shown and "u:***@" in shown, shown


def test_displayed_multi_host_is_readable() -> None:
    shown = displayed(database_url("postgresql://u:pw@db1:5432,db2:5433/lq"))
    assert shown == "postgresql+psycopg2://u:***@/lq?host=db1,db2&port=5432,5433"


def test_broker_refuses_a_bad_url_without_printing_the_password() -> None:
    result = subprocess.run([LQ, "broker", "--port", str(free_port()),
                             "--db", "postgresql://u:s3cret@db1:5432,db2:x/lq"],
                            env=clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "cannot read the host 'db2:x'" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout


@pytest.mark.parametrize(("params", "found", "expected"), [
    ({"host": "a,b,c", "port": "1,2,3"}, ("b", 2), {"host": "b,a,c", "port": "2,1,3"}),
    ({"host": "a,b", "port": "5"}, ("b", 5), {"host": "b,a", "port": "5,5"}),
    ({"host": "a,b"}, ("b", 5432), {"host": "b,a", "port": "5432,5432"}),
    ({"host": "a,b", "port": "1,2"}, ("c", 2), {"host": "a,b", "port": "1,2"}),
    ({"host": "a", "port": 1}, ("a", 1), {"host": "a", "port": 1}),
])
def test_primary_first(params: dict[str, Any], found: tuple[str, int],
                       expected: dict[str, Any]) -> None:
    assert primary_first({**params, "dbname": "lq"}, *found) == {**expected, "dbname": "lq"}


def test_broker_says_why_every_host_failed() -> None:
    """libpq explains each host on its own lines: all of them reach the message."""
    dead = [free_port(), free_port()]
    result = subprocess.run([LQ, "broker", "--port", str(free_port()), "--db",
                             f"postgresql://u@127.0.0.1:{dead[0]},127.0.0.1:{dead[1]}/lq"],
                            env=clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    for port in dead:
        assert f'connection to server at "127.0.0.1", port {port} failed' in result.stderr


def test_broker_serves_on_a_multi_host_url(pg_url: str, tmp_path: Path) -> None:
    """A dead first host, then the real one: libpq moves on, and the broker warns that
    there is no synchronous standby (the test cluster has none)."""
    dead = free_port()
    url = pg_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{dead},127.0.0.1:5432/")
    assert url != pg_url
    log = tmp_path / "broker.log"
    broker = BrokerProcess(url, log_path=log, args=["--workers", "1", "--threads", "4"])
    with broker, Client(broker.url) as client:
        assert client.producer().send_many("multi-host", ["a", "b"]) == (0, 1)
        assert [m.value for m in client.consumer().receive("multi-host")] == ["a", "b"]
    text = log.read_text()
    assert f"host=127.0.0.1,127.0.0.1&port={dead},5432" in text
    assert "warning: the URL names 2 database hosts but the primary has no synchronous" in text
