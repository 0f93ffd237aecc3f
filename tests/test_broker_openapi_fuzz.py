"""Schemathesis over /openapi.json against a live broker on both databases: no 5xx, and every
status, content type and body matches the schema the broker publishes (generated from the
same declarations it validates with)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support import BrokerProcess

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance," \
         "response_schema_conformance"


def test_fuzzing_finds_no_5xx_and_no_schema_mismatch(broker: BrokerProcess, tmp_path: Path) -> None:
    run = subprocess.run(
        [SCHEMATHESIS, "run", broker.url + "/openapi.json", "--checks", CHECKS,
         "--max-examples", "25", "--seed", "20261124", "--no-color"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-4000:]
    assert "generated" in report and " failed" not in report.split("SUMMARY")[-1], report[-2000:]
