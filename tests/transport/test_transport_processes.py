"""Three nodes as separate OS processes; one is SIGKILLed mid-stream and restarted."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest


class NodeProcess:
    def __init__(self, node_id: str, seeds: list[str]) -> None:
        args = [sys.executable, "-m", "crdtcache.transport", "--node-id", node_id]
        for seed in seeds:
            args += ["--seed", seed]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        ready = self.read()
        self.address: str = ready["address"]

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"node process exited with {self.proc.poll()}")
        result: dict[str, Any] = json.loads(line)
        return result

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def dump(self) -> dict[str, Any]:
        data: dict[str, Any] = self.ask("dump")["data"]
        return data

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(AssertionError, BrokenPipeError, OSError):
                self.ask("quit")
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _until(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.mark.timeout(120)
def test_sigkilled_node_restarts_and_all_converge() -> None:
    a = NodeProcess("proc-a", [])
    b = NodeProcess("proc-b", [a.address])
    c = NodeProcess("proc-c", [a.address])
    nodes = [a, b, c]
    try:
        _until(lambda: len(b.ask("stats")["peers"]) == 2 and len(c.ask("stats")["peers"]) == 2)
        for i in range(300):
            writer = nodes[i % 2]  # a and b write; c is the victim
            writer.ask(f"set k{i % 50} {json.dumps({'i': i})}")
            if i == 150:
                c.kill()
        # A node without persistence comes back as a new node id (it lost its data).
        c2 = NodeProcess("proc-c2", [b.address])
        nodes[2] = c2
        c2.ask('set from-c2 "hello"')
        for i in range(300, 320):
            a.ask(f"set k{i % 50} {json.dumps({'i': i})}")
        _until(lambda: a.dump() == b.dump() == c2.dump())
        final = a.dump()
        assert final["from-c2"] == "hello"
        assert final["k19"] == {"i": 319}
        assert final["k49"] == {"i": 299}
        assert len(final) == 51
    finally:
        for node in nodes:
            node.stop()
