"""examples/structlog_app.py against a real broker: structlog's key-value fields arrive under
the record's ``extra``, next to the usual ``message``, ``level`` and ``logger``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support import BrokerProcess, clean_env

from sdk import Client

EXAMPLE = Path(__file__).parent.parent / "examples" / "structlog_app.py"


def test_structlog_fields_land_in_extra(sqlite_broker: BrokerProcess, tmp_path: Path) -> None:
    topic = "structlog-example"
    result = subprocess.run([sys.executable, str(EXAMPLE), "--url", sqlite_broker.url,
                             "--topic", topic],
                            env=clean_env(LQ_SPOOL_DIR=str(tmp_path / "spool")),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    # the console handler renders the same records with structlog's ProcessorFormatter
    assert "order created" in result.stderr and "order_id=42" in result.stderr

    with Client(sqlite_broker.url) as client:
        messages, _ = client.consumer().fetch(topic, offset=0, max=100)
    records = [json.loads(m.value) for m in messages]  # the handler flushed them at exit
    assert [(r["message"], r["level"], r["logger"]) for r in records] == [
        ("order created", "INFO", "shop.orders"),
        ("payment slow", "WARNING", "shop.orders"),
        ("payment failed", "ERROR", "shop.orders"),
    ]
    created, slow, failed = records
    assert created["extra"] == {"order_id": 42, "customer": "ada", "request_id": "req-7"}
    assert slow["extra"] == {"order_id": 42, "seconds": 3.5, "request_id": "req-7"}
    assert failed["extra"] == {"order_id": 42, "request_id": "req-7"}
    assert "ValueError: card declined" in failed["exception"]  # exc_info=True passed through
    # the call site is the application's, not structlog's
    assert (created["module"], created["function"]) == ("structlog_app", "main")
    assert created["service"] == "example-structlog"
