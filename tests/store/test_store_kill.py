"""A node killed with SIGKILL mid-stream leaves a readable store holding every committed
batch, whole, and its next incarnation never issues a stamp it issued before."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crdtcache.store._sqlite import ReplicaStore

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

# The node: resumes from the store, then writes batches of ``per_batch`` keys as fast
# as it can. "issued" is printed before a batch is written, "committed" after.
NODE = """
import sys, time
from crdtcache.store._sqlite import ReplicaStore, StoreBatch
from crdtcache.core import HybridClock, Replica

path, run, per_batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = ReplicaStore(path)
state = store.open()
if state is None:
    store.initialize("killed")
    replica = Replica(HybridClock("killed"))
else:
    replica = state.build_replica(time.time())
batch = 0
while True:
    now = time.time()
    keys = [f"{run}:{batch}:{i}" for i in range(per_batch)]
    for key in keys:
        replica.set(key, batch, now)
    print("issued", replica.clock.last_ts, flush=True)
    store.write(StoreBatch.capture(replica, keys))
    print("committed", batch, replica.clock.last_ts, flush=True)
    batch += 1
"""


def _run_and_kill(path: Path, run: str, per_batch: int, rng: random.Random) -> list[str]:
    """Start the node, let it commit a few batches, SIGKILL it; return its output."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen(
        [sys.executable, "-c", NODE, str(path), run, str(per_batch)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        committed = 0
        deadline = time.monotonic() + 60
        while committed < 3 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            committed += line.startswith("committed")
        assert committed >= 3, proc.stderr.read() if proc.stderr else ""
        time.sleep(rng.uniform(0, 0.05))  # somewhere in a later batch
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # The kill may cut the last line short ("issu"): only whole lines say anything.
    return [line for line in lines + out.splitlines(keepends=True) if line.endswith("\n")]


@pytest.mark.parametrize("per_batch", [10, 3000])
def test_kill_minus_nine_keeps_every_committed_batch_whole(tmp_path: Path, per_batch: int) -> None:
    path = tmp_path / "node.db"
    rng = random.Random(per_batch)
    issued_before = -1
    for run in ("r0", "r1", "r2"):
        lines = _run_and_kill(path, run, per_batch, rng)
        issued = [int(line.split()[1]) for line in lines if line.startswith("issued")]
        committed = [line.split() for line in lines if line.startswith("committed")]
        # A restarted node issues stamps above everything its earlier runs issued,
        # committed or not.
        assert min(issued) > issued_before
        issued_before = max(issued)

        store = ReplicaStore(path)
        state = store.open()
        store.close()
        assert state is not None and state.node_id == "killed"
        stored = dict(state.entries)
        per_batch_found: dict[str, int] = {}
        for key in stored:
            key_run, batch, _ = key.split(":")
            if key_run == run:
                per_batch_found[batch] = per_batch_found.get(batch, 0) + 1
        # Every batch reported committed is there; every batch there is whole.
        for _, batch, _ in committed:
            assert per_batch_found.get(batch) == per_batch, batch
        assert all(count == per_batch for count in per_batch_found.values())
        assert state.clock_ts >= int(committed[-1][2])
