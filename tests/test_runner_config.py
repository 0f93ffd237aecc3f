"""The runner's configuration (TOML and options -> one pydantic model), checked without a
broker: every refusal names the pipeline and the key and says what is allowed. Also: the
library side of lq_logging does not import the command line's toolkit."""

from __future__ import annotations

import subprocess
import sys

from support import clean_env


def test_import_lq_logging_does_not_import_click() -> None:
    """An application that only logs must not pay for (or depend on) click."""
    code = ("import lq_logging, lq_logging.sinks, sys; "
            "assert 'click' not in sys.modules, 'click imported'")
    done = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
