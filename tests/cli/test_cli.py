"""The command line: the demo, a standalone node, and get/set/stats against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from crdtcache.cli import main

CLI = [sys.executable, "-m", "crdtcache.cli"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_demo_runs_and_reports_convergence() -> None:
    done = run("demo", "--nodes", "4", "--burst", "300", "--no-mdns")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "full mesh of 4 nodes formed" in done.stdout
    assert "every node holds it: convergence time" in done.stdout
    assert "all 4 replicas identical" in done.stdout
    assert "gone on every node" in done.stdout


def test_simulate_converges(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--nodes", "20", "--loss", "0.1"]) == 0
    assert "converged in" in capsys.readouterr().out


@pytest.mark.timeout(120)
def test_node_serves_get_set_stats(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    node = subprocess.Popen(
        [
            *CLI,
            "node",
            "--listen",
            "127.0.0.1:0",
            "--discovery",
            "none",
            "--cluster",
            "cli",
            "--persist",
            str(db),
            "--node-id",
            "shell-node",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert node.stdout is not None
        info = json.loads(node.stdout.readline())
        address = info["address"]
        assert info["node"] == "shell-node"
        assert run("set", address, "greeting", "hello", "--cluster", "cli").stdout.strip() == "OK"
        done = run("set", address, "user:1", '{"name": "Ada"}', "--json", "--cluster", "cli")
        assert done.returncode == 0, done.stderr
        assert json.loads(run("get", address, "user:1", "--cluster", "cli").stdout) == {
            "name": "Ada"
        }
        missing = run("get", address, "nobody", "--cluster", "cli")
        assert missing.returncode == 1 and "(absent)" in missing.stdout
        stats = json.loads(run("stats", address, "--cluster", "cli").stdout)
        assert stats["node_id"] == "shell-node"
        # Clients said goodbye: the node does not count them as members.
        assert stats["cluster"]["instances"] == 1
        # Refused by the handshake, said on stderr with its own status (issue 14; it
        # was status 1 and "could not connect" on stdout after 5 s).
        wrong = run("get", address, "greeting", "--cluster", "other")
        assert wrong.returncode == 4 and "not in cluster 'other'" in wrong.stderr
        assert wrong.stdout == ""
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(10)
    assert node.returncode == 0
    assert db.exists() and os.path.getsize(db) > 0


@pytest.mark.timeout(120)
def test_get_set_need_the_cluster_secret(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"a-cluster-secret-of-32-bytes-ok!\n")
    node = subprocess.Popen(
        [
            *CLI,
            "node",
            "--listen",
            "127.0.0.1:0",
            "--discovery",
            "none",
            "--secret-file",
            str(secret),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert node.stdout is not None
        address = json.loads(node.stdout.readline())["address"]
        done = run("set", address, "k", "v", "--secret-file", str(secret))
        assert done.stdout.strip() == "OK", done.stdout + done.stderr
        assert json.loads(run("get", address, "k", "--secret-file", str(secret)).stdout) == "v"
        refused = run("get", address, "k")
        assert refused.returncode == 4 and "requires a cluster secret" in refused.stderr
        assert refused.stdout == ""
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(10)
