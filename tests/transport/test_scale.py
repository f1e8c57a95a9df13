"""50 real p2p nodes on loopback, 10 per OS process: the full mesh forms, a write from
every node reaches every node, and each node's links and memory stay bounded.

The README recommends the full mesh (the default) up to 50 nodes; this is that size.
Bounds here are generous (CI shares two cores with everything else); the figures
themselves come from ``benchmarks/replication.py`` (N = 25 and 50 rows).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

WORKER = Path(__file__).with_name("scale_worker.py")
ROOT = Path(__file__).resolve().parents[2]
NODES = 50
PER_PROCESS = 10
#: Seconds within which every node must link to all others, and hold every write.
MESH_WITHIN = 60.0
CONVERGE_WITHIN = 10.0
#: Resident memory a node may add to its process (50 empty-ish caches, 49 links each).
MAX_RSS_PER_NODE = 4 << 20

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


class Process:
    """One worker process (``scale_worker.py``) holding PER_PROCESS nodes."""

    def __init__(self, first: int, seed: str | None) -> None:
        argv = [sys.executable, str(WORKER), str(first), str(PER_PROCESS)]
        # Not measured by coverage (CI's run patches subprocesses): it would make the
        # 50 nodes several times slower and add nothing the other tests do not cover.
        env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE")}
        self.proc = subprocess.Popen(
            [*argv, *([seed] if seed else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd=ROOT,
            env=env,
        )
        hello = self.read()
        self.addresses: list[str] = hello["addresses"]
        self.base_rss: int = hello["rss"]

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"worker exited with {self.proc.poll()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(AssertionError, BrokenPipeError, OSError):
                self.ask("quit")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def until(probe: Any, timeout: float, what: str) -> float:
    """Poll ``probe`` until true; the seconds it took."""
    began = time.monotonic()
    while not probe():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.1)
    return time.monotonic() - began


def test_fifty_nodes_form_a_full_mesh_and_converge_with_bounded_links_and_memory() -> None:
    processes: list[Process] = []
    try:
        began = time.monotonic()
        processes.append(Process(0, None))
        seed = processes[0].addresses[0]
        for first in range(PER_PROCESS, NODES, PER_PROCESS):
            processes.append(Process(first, seed))

        started = time.monotonic() - began

        def nodes() -> list[dict[str, Any]]:
            return [n for p in processes for n in p.ask("status")["nodes"]]

        formed = until(
            lambda: all(n["live"] == NODES - 1 and n["links"] == NODES - 1 for n in nodes()),
            MESH_WITHIN,
            "full mesh",
        )
        writes = [p.ask("write")["at"] for p in processes]
        held: list[dict[str, Any]] = []

        def converged() -> bool:
            nonlocal held
            held = [n for p in processes for n in p.ask(f"held {NODES}")["nodes"]]
            return all(n["held"] == NODES for n in held)

        until(converged, CONVERGE_WITHIN, "every write on every node")
        # From the last write to the last arrival anywhere (one monotonic clock).
        convergence = max(n["last"] for n in held) - max(writes)
        assert convergence < CONVERGE_WITHIN
        time.sleep(1.0)  # a few heartbeat rounds more: the mesh stays as it is
        statuses = [p.ask("status") for p in processes]
        for status in statuses:
            assert all(n["links"] == NODES - 1 for n in status["nodes"])  # one link per pair
            # Sockets: each link is one fd per end, plus a listener per node, the
            # process's own few (pipes, epoll, the selector's socketpair).
            assert status["fds"] <= PER_PROCESS * (NODES - 1 + 4) + 32
        grown = [s["rss"] - p.base_rss for s, p in zip(statuses, processes, strict=True)]
        assert max(grown) <= PER_PROCESS * MAX_RSS_PER_NODE
        print(
            f"{NODES} nodes in {len(processes)} processes: all started {started:.1f} s, "
            f"full mesh {formed:.1f} s after that; a write from every node held by every "
            f"node {convergence * 1000:.0f} ms after the last write; {NODES - 1} links "
            f"per node; RSS +{max(grown) / PER_PROCESS / 2**20:.1f} MiB per node (worst "
            "process)"
        )
    finally:
        for process in processes:
            process.stop()
