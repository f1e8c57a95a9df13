"""The package logger: silent until the application configures logging."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import crdtcache

ROOT = Path(__file__).resolve().parents[1]

# A warning from a crdtcache module, with and without logging configured.
_WARN = """
import logging, sys
import crdtcache
if sys.argv[1] == "configured":
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")
logging.getLogger("crdtcache.transport._node").warning("a peer left")
"""


def _stderr(mode: str) -> str:
    run = subprocess.run(
        [sys.executable, "-c", _WARN, mode],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert run.returncode == 0, run.stderr
    return run.stderr


def test_the_package_logger_has_a_null_handler() -> None:
    handlers = logging.getLogger(crdtcache.__name__).handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


def test_nothing_is_printed_unless_the_application_configures_logging() -> None:
    assert _stderr("unconfigured") == ""
    assert _stderr("configured") == "crdtcache.transport._node a peer left\n"
