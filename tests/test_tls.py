"""TLS: `lq broker --certfile --keyfile` serves HTTPS only, with a certificate this module makes.
The SDK, the CLI, the handler and the runner work over ``https://`` with the CA file and refuse
without it; plain HTTP to the TLS port fails cleanly (and the broker goes on serving).
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from lqhttp import unique_topic
from runner_helpers import read_jsonl, run_once
from support import LQ, BrokerProcess, clean_env

from lq_logging.handler import LogQueueHandler
from sdk import BrokerUnavailable, Client, MyQueue

ADMIN = "tls-admin-token"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: it is its own CA file."""
    base = tmp_path_factory.mktemp("tls")
    certfile, keyfile = base / "cert.pem", base / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(keyfile), "-out", str(certfile)],
                   check=True, capture_output=True, timeout=60)
    return certfile, keyfile


def start_tls_broker(db: str, cert: tuple[Path, Path], log: Path,
                     monkeypatch: pytest.MonkeyPatch, *args: str) -> BrokerProcess:
    proc = BrokerProcess(db, token=ADMIN, log_path=log,
                         args=["--certfile", str(cert[0]), "--keyfile", str(cert[1]), *args])
    proc.url = f"https://127.0.0.1:{proc.port}"
    with monkeypatch.context() as patch:  # only the readiness check trusts the CA this way
        patch.setenv("REQUESTS_CA_BUNDLE", str(cert[0]))
        return proc.start()


@pytest.fixture(scope="module")
def tls_broker(cert: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[BrokerProcess]:
    base = tmp_path_factory.mktemp("tls-broker")
    with pytest.MonkeyPatch.context() as monkeypatch:
        proc = start_tls_broker(f"sqlite:///{base / 'lq.db'}", cert, base / "broker.log",
                                monkeypatch)
    try:
        yield proc
    finally:
        proc.stop()


def test_sdk_works_over_https_with_the_ca_file_and_refuses_without(
        tls_broker: BrokerProcess, cert: tuple[Path, Path]) -> None:
    topic = unique_topic("tls")
    with Client(tls_broker.url, token=ADMIN, verify=str(cert[0])) as client:
        client.create_topic(topic)
        client.producer().send_many(topic, ["a", "b"])
        got = [m.value for m in client.consumer().receive(topic, max=10)]
        assert got == ["a", "b"]
    with MyQueue(tls_broker.url, token=ADMIN, verify=str(cert[0])) as queue:
        assert topic in queue.get_all_topics()
    with Client(tls_broker.url, token=ADMIN, retries=0) as client, \
            pytest.raises(BrokerUnavailable) as refused:
        client.topics()
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value), refused.value
    with pytest.raises(ValueError, match="no CA file"):
        Client(tls_broker.url, verify=str(cert[0]) + ".missing")


def lq(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LQ, *args], env=clean_env(LQ_TOKEN=ADMIN, **env),
                          capture_output=True, text=True, timeout=60)


def test_cli_works_over_https_with_cacert_and_refuses_without(
        tls_broker: BrokerProcess, cert: tuple[Path, Path]) -> None:
    topic = unique_topic("tls-cli")
    made = lq("topics", "create", topic, "--url", tls_broker.url, "--cacert", str(cert[0]))
    assert made.returncode == 0, made.stderr
    listed = lq("topics", "--url", tls_broker.url, LQ_CACERT=str(cert[0]))
    assert listed.returncode == 0 and topic in listed.stdout.split(), listed.stderr
    refused = lq("topics", "--url", tls_broker.url)
    assert refused.returncode == 1, refused
    assert "TLS" in refused.stderr and "--cacert" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr


def test_handler_and_runner_work_over_https_with_the_ca_file(
        tls_broker: BrokerProcess, cert: tuple[Path, Path], tmp_path: Path) -> None:
    topic = unique_topic("tls-log")
    handler = LogQueueHandler(tls_broker.url, topic, token=ADMIN, verify=str(cert[0]),
                              spool_dir=str(tmp_path / "spool"), timeout=10)
    logger = logging.Logger("tls-test")
    logger.addHandler(handler)
    for i in range(20):
        logger.warning("record %d", i)
    handler.close()
    assert handler.stats()["sent"] == 20, handler.stats()
    out = tmp_path / "out.jsonl"
    args = ["--url", tls_broker.url, "--topic", topic, "--sink", f"file:{out}", "--until-empty"]
    run = run_once([*args, "--cacert", str(cert[0])], tmp_path, env={"LQ_TOKEN": ADMIN})
    assert run.returncode == 0, run.stderr
    assert [r["message"] for r in read_jsonl(out)] == [f"record {i}" for i in range(20)]
    dry = run_once(["--url", tls_broker.url, "--topic", topic, "--sink", "stdout", "--dry-run"],
                   tmp_path, env={"LQ_TOKEN": ADMIN})
    assert dry.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in dry.stderr, dry.stderr


def test_handler_without_the_ca_file_delivers_nothing(
        tls_broker: BrokerProcess, cert: tuple[Path, Path], tmp_path: Path) -> None:
    topic = unique_topic("tls-nocert")
    handler = LogQueueHandler(tls_broker.url, topic, token=ADMIN, overflow="drop",
                              spool_dir=str(tmp_path / "spool"), timeout=1)
    logger = logging.Logger("tls-nocert")
    logger.addHandler(handler)
    logger.warning("never delivered")
    handler.flush()
    stats = handler.stats()
    handler.close()
    assert stats["sent"] == 0 and "CERTIFICATE_VERIFY_FAILED" in str(stats["last_error"]), stats
    with Client(tls_broker.url, token=ADMIN, verify=str(cert[0])) as client:
        assert topic not in client.topics()


def test_plain_http_to_the_tls_port_fails_cleanly(tls_broker: BrokerProcess,
                                                  cert: tuple[Path, Path]) -> None:
    plain = tls_broker.url.replace("https://", "http://")
    for _ in range(3):
        with pytest.raises(requests.ConnectionError):
            requests.get(plain + "/healthz", timeout=5)
    with Client(plain, token=ADMIN, retries=0) as client, pytest.raises(BrokerUnavailable):
        client.topics()
    # The broker goes on serving HTTPS.
    reply = requests.get(tls_broker.url + "/status", verify=str(cert[0]), timeout=5,
                         headers={"Authorization": f"Bearer {ADMIN}"})
    assert reply.status_code == 200 and json.loads(reply.text)["status"] == "success"
    assert "Traceback" not in tls_broker.tail_log()


def test_dev_server_serves_https_too(cert: tuple[Path, Path], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    proc = start_tls_broker(f"sqlite:///{tmp_path / 'dev.db'}", cert, tmp_path / "dev.log",
                            monkeypatch, "--dev")
    try:
        with Client(proc.url, token=ADMIN, verify=str(cert[0])) as client:
            assert client.healthy()
    finally:
        proc.stop()
