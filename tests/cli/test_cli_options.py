"""CLI options: --version, help with defaults, logging options anywhere, node's output."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import crdtcache
from crdtcache.core import PROTOCOL_VERSION

CLI = [sys.executable, "-m", "crdtcache.cli"]


def test_version() -> None:
    done = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip() == f"crdtcache {crdtcache.__version__} (protocol {PROTOCOL_VERSION})"


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_command_has_a_description_and_every_option_says_its_default() -> None:
    from crdtcache.cli import _parser

    parser = _parser()
    commands = _commands(parser)
    assert set(commands) == {"demo", "node", "get", "set", "stats", "simulate"}
    for name, command in [("crdtcache", parser), *commands.items()]:
        if name != "crdtcache":
            assert command.description, name
        for action in command._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            assert action.help and "default" in action.help, (name, action.option_strings)


def test_node_help_names_the_defaults_of_its_options() -> None:
    shown = subprocess.run(
        [*CLI, "node", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    flat = " ".join(shown.split())
    for text in (
        "(default: random",
        "(default: default)",
        "(default: 127.0.0.1:7946; the library's default is 127.0.0.1:0)",
        "(default: mdns;",
        "repeat for more (default: none)",
        "exit statuses",
    ):
        assert text in flat, text


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["stats", "h:1"], logging.WARNING),
        (["-v", "stats", "h:1"], logging.INFO),
        (["stats", "h:1", "-v"], logging.INFO),
        (["stats", "-vv", "h:1"], logging.DEBUG),
        (["-v", "stats", "h:1", "-v"], logging.DEBUG),
        (["--log-level", "error", "stats", "h:1"], logging.ERROR),
        (["stats", "h:1", "--log-level", "DEBUG"], logging.DEBUG),
        (["--log-level", "error", "demo", "--log-level", "info"], logging.INFO),
        (["simulate", "--log-level", "warning", "-vv"], logging.WARNING),
    ],
)
def test_logging_options_work_before_and_after_the_command(argv: list[str], level: int) -> None:
    from crdtcache.cli import _log_level, _parser

    assert _log_level(_parser().parse_args(argv)) == level


@contextlib.contextmanager
def _node_with_a_dashboard(*options: str) -> Iterator[str]:
    """``crdtcache node`` with a dashboard on a free port; yields the URL it printed,
    then stops it (SIGTERM) and checks it exited cleanly."""
    pytest.importorskip("aiohttp")
    argv = [*CLI, "node", "--listen", "127.0.0.1:0", "--discovery", "none", *options]
    node = subprocess.Popen(
        [*argv, "--dashboard", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert node.stdout is not None
        yield json.loads(node.stdout.readline())["dashboard"]
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(10)
    assert node.returncode == 0


@pytest.mark.timeout(120)
def test_node_prints_its_dashboard_url() -> None:
    with _node_with_a_dashboard() as url:
        assert url.startswith("http://127.0.0.1:") and not url.startswith("http://127.0.0.1:0")
        with urllib.request.urlopen(url.rstrip("/") + "/healthz", timeout=10) as reply:
            assert reply.status == 200


@pytest.mark.timeout(120)
def test_a_node_with_a_secret_prints_its_dashboard_url_with_the_token(tmp_path: Path) -> None:
    # With a secret the dashboard needs its token, on loopback too: the URL printed
    # must open it as it is.
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 32)
    with _node_with_a_dashboard("--secret-file", str(secret)) as url:
        base, _, query = url.partition("?")
        assert query.startswith("token=")
        with urllib.request.urlopen(f"{base}api/stats?{query}", timeout=10) as reply:
            assert reply.status == 200
