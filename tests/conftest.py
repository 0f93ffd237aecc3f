"""Fixtures shared by every test module: real brokers, fresh databases, no mocks."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from runner_helpers import RunnerProcess
from support import BrokerProcess, create_pg_database, drop_pg_database, postgres_available

from sdk import Client

# The tests choose their own configuration; a developer's environment must not leak in.
_KEEP = ("LQ_REQUIRE_POSTGRES", "LQ_REQUIRE_BROWSER")
for _key in [k for k in os.environ if k.startswith("LQ_") and k not in _KEEP]:
    del os.environ[_key]

REQUIRE_POSTGRES = os.environ.get("LQ_REQUIRE_POSTGRES") == "1"

# The modules that take longest (minutes on a loaded machine), started first: pytest-xdist
# hands out whole modules in collection order, so one of these started last would be the
# suite's tail while the other workers sit idle.
SLOW_MODULES = ("test_cli", "test_cli_tail", "test_runner_delivery", "test_broker_openapi_fuzz",
                "test_sdk_classic", "test_broker_tokens", "test_handler_outage",
                "test_broker_workload", "test_broker_leases", "test_runner_sinks")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.module.__name__ if item.module else ""
        return SLOW_MODULES.index(name) if name in SLOW_MODULES else len(SLOW_MODULES)

    items.sort(key=rank)  # stable: the order within a module, and of the rest, is kept


def _module_slug(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^a-z0-9]+", "_", request.module.__name__.lower())[-30:]


@pytest.fixture(scope="module")
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL database for this test module, dropped afterwards."""
    reason = postgres_available()
    if reason:
        if REQUIRE_POSTGRES:
            pytest.fail(f"LQ_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    url = create_pg_database(_module_slug(request))
    yield url
    drop_pg_database(url)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Each storage test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "logqueue.db"
        return f"sqlite:///{path}"
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="module")
def broker(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One real `lq broker` per module and database."""
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with BrokerProcess(db_url, log_path=log) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(broker: BrokerProcess) -> Iterator[Client]:
    """An SDK client of the module's broker (a module may define its own)."""
    with Client(broker.url) as c:
        yield c


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[Callable[..., BrokerProcess]]:
    """Start extra brokers (custom args, tokens, several on one database); all stopped after."""
    started: list[BrokerProcess] = []

    def start(db_url: str, **kwargs: object) -> BrokerProcess:
        kwargs.setdefault("log_path", tmp_path / f"broker{len(started)}.log")
        proc = BrokerProcess(db_url, **kwargs).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def sqlite_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One SQLite broker per module, for the runner tests: what they need from a broker is its
    contract, which both backends honour (the broker's own tests cover both)."""
    base = tmp_path_factory.mktemp("runner-broker")
    with BrokerProcess(f"sqlite:///{base / 'lq.db'}", log_path=base / "broker.log") as proc:
        yield proc


@pytest.fixture
def runners() -> Iterator[list[RunnerProcess]]:
    """Collects the `lq consume` processes a test starts (``start_runner``); any still running
    is stopped after the test."""
    started: list[RunnerProcess] = []
    yield started
    for runner in started:
        runner.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def sink_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database for the SQL sink: a SQLite file, then this module's PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'records.db'}"
    return request.getfixturevalue("pg_url")
