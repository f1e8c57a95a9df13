"""``crdtcache demo``: quiet, truthful, explained, and in one process per node on request."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "crdtcache.cli"]
pytestmark = pytest.mark.timeout(180)


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "demo", *args], capture_output=True, text=True, timeout=150)


def test_a_clean_run_logs_no_warning_and_explains_its_figures() -> None:
    done = demo("--nodes", "5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr and "ERROR" not in done.stderr, done.stderr
    out = done.stdout
    # Nodes get the first node's address as a seed as well as mDNS: the header says both.
    assert "(cluster 'demo-" in out and "discovery: mDNS + a seed" in out
    assert "every node holds it: convergence time" in out
    assert "(convergence time: one write, from set() on the writer" in out
    assert "sync latency p50" in out
    assert "(sync latency: stamp to apply of every write it received, mostly the burst" in out


def test_without_mdns_the_header_says_seed_only() -> None:
    done = demo("--nodes", "3", "--burst", "100", "--no-mdns")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "discovery: a seed (the first node)" in done.stdout
    assert "mDNS" not in done.stdout


def test_processes_run_one_node_per_process_and_still_converge() -> None:
    done = demo("--nodes", "3", "--burst", "300", "--no-mdns", "--processes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    out = done.stdout
    assert "on 127.0.0.1 in 3 processes" in out
    pids = re.findall(r"listening on 127\.0\.0\.1:\d+ {2}\(pid (\d+)\)", out)
    assert len(pids) == 3 and len(set(pids)) == 3, out
    assert "every node holds it: convergence time" in out
    assert "all 3 replicas identical" in out and "gone on every node" in out
    assert re.search(r"3 instances, sync latency p50 [\d.]+ ms", out), out
