"""Schemathesis over /openapi.json against a live broker on both databases: no 5xx, and every
status, content type and body matches the schema the broker publishes (generated from the
same declarations it validates with). The broker has a bootstrap admin token, which the fuzzer
sends, so scoped auth is on its path too (tokens it creates turn nothing off)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import BrokerProcess

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance," \
         "response_schema_conformance"


ADMIN = "fuzz-admin-token"


@pytest.fixture(scope="module")
def secured(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    log = tmp_path_factory.mktemp("fuzz") / "broker.log"
    with BrokerProcess(db_url, token=ADMIN, log_path=log) as proc:
        yield proc


def test_fuzzing_finds_no_5xx_and_no_schema_mismatch(secured: BrokerProcess,
                                                     tmp_path: Path) -> None:
    run = subprocess.run(
        [SCHEMATHESIS, "run", secured.url + "/openapi.json", "--checks", CHECKS,
         "--header", f"Authorization: Bearer {ADMIN}",
         "--max-examples", "25", "--seed", "20261124", "--no-color"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-4000:]
    assert "generated" in report and " failed" not in report.split("SUMMARY")[-1], report[-2000:]
