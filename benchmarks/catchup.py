"""What finding a peer's missing entries costs: the change log against a scan of the map.

What is measured
----------------
Issue #15 item 6: catch-up must cost the difference, not the map. A node answering an
anti-entropy request needs the entries stamped above the requester's marks
(``Replica.changes_since``). Before the change log that was a scan of every entry
(about 5 ms per 100,000); now the replica's :class:`~crdtcache.core._changelog.ChangeLog`
lists each origin's keys by stamp. Target: <= 0.1 ms for 10 changes among 100,000.

Both are timed in the same run, on the same replica: **scan** is the comprehension
``changes_since`` used to run (kept here as :func:`scan`), **log** is
``Replica.changes_since`` now. Every row checks that both return the same entries.
Scenarios (``--keys`` entries, default 100,000, written by ``--origins`` nodes, 3 by
default: this node's own writes and two peers' merged in stamp order):

* *in order*: the peer lacks ``--changes`` (10) overwrites made since its marks;
* *1 % behind*: it lacks 1 % of the keys;
* *restored*: the same map merged into a fresh replica in a shuffled order (what a
  restore or a full-state transfer does: stamps arrive out of order), then 10 changes;
* *in sync*: the peer lacks nothing (both answer from the per-origin highs).

Timing: median of ``--repeat`` calls (wall clock, garbage collector on).

Memory: the bytes the change log holds per entry, as ``tracemalloc`` attributes them
to allocations made in ``core/_changelog.py``, with ``--memory-keys`` entries (200,000)
written once, then after as many overwrites again (half of them of one hot key: the
stale positions they leave are compacted). ``benchmarks/local_ops.py`` reports the
whole cache's bytes per entry.

Run ``python benchmarks/catchup.py`` (about 20 s) or ``--quick`` (10,000 keys).
Writes ``benchmarks/results/catchup.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from crdtcache.core import Entry, HybridClock, Replica, pack_ts

RESULTS = Path(__file__).resolve().parent / "results"
T0 = 1_700_000_000.0
TARGET_MS = 0.1


def scan(r: Replica, marks: Mapping[str, int]) -> list[tuple[str, Entry]]:
    """``changes_since`` before the change log: every entry of the map looked at."""
    return [(k, e) for k, e in r.entries.items() if e.ts > marks.get(e.origin, -1)]


def stamp(wall: float) -> int:
    return pack_ts(int(wall * 1000), 0)


def build(keys: int, origins: int) -> Replica:
    """A replica of ``keys`` entries, written in turn by ``origins`` nodes (this one first)."""
    r = Replica(HybridClock("a", max_drift=1e9))
    names = "abcdefgh"[:origins]
    for i in range(keys):
        origin = names[i % origins]
        wall = T0 + i * 0.001
        if origin == "a":
            r.set(f"key:{i:07d}", f"value {i}", wall)
        else:
            r.merge_entry(f"key:{i:07d}", Entry(f"value {i}", stamp(wall), origin), wall)
    return r


def reshuffled(r: Replica, seed: int) -> Replica:
    """The same map merged into a fresh replica in a random order (a restore)."""
    items = list(r.entries.items())
    random.Random(seed).shuffle(items)
    out = Replica(HybridClock("a", max_drift=1e9))
    now = T0 + len(items) * 0.001 + 1
    for key, e in items:
        out.merge_entry(key, e, now)
    out.marks.update(r.marks)
    return out


def overwrite(r: Replica, keys: int, count: int, seed: int, wall: float) -> None:
    rng = random.Random(seed)
    for j in range(count):
        r.set(f"key:{rng.randrange(keys):07d}", f"new {j}", wall + j * 0.001)


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median milliseconds of ``repeat`` calls."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def row(label: str, r: Replica, marks: dict[str, int], repeat: int) -> dict[str, Any]:
    expected = scan(r, marks)
    got, _ = r.changes_since(marks)
    if dict(got) != dict(expected) or len(got) != len(expected):
        raise SystemExit(f"{label}: the log and the scan disagree")
    before = r.change_log_statistics().examined
    r.changes_since(marks)
    examined = r.change_log_statistics().examined - before
    scan_ms = timed(lambda: scan(r, marks), repeat)
    log_ms = timed(lambda: r.changes_since(marks), repeat)
    return {
        "scenario": label,
        "entries": len(r),
        "returned": len(expected),
        "examined_by_log": examined,
        "scan_ms": scan_ms,
        "log_ms": log_ms,
        "speedup": scan_ms / log_ms if log_ms else None,
    }


def timings(keys: int, origins: int, changes: int, repeat: int) -> list[dict[str, Any]]:
    r = build(keys, origins)
    in_sync = dict(r.high)
    later = T0 + keys * 0.001 + 10
    out = [row("in sync", r, in_sync, repeat)]
    overwrite(r, keys, changes, 1, later)
    out.append(row(f"in order, {changes} changes", r, in_sync, repeat))
    behind = dict(r.high)
    overwrite(r, keys, keys // 100, 2, later + 100)
    out.append(row("in order, 1% behind", r, behind, repeat))
    restored = reshuffled(r, 3)
    marks = dict(restored.high)
    overwrite(restored, keys, changes, 4, later + 1000)
    out.append(row(f"restored, {changes} changes", restored, marks, repeat))
    return out


def _log_bytes(snapshot: tracemalloc.Snapshot) -> int:
    only = tracemalloc.Filter(True, "*crdtcache/core/_changelog.py")
    return sum(s.size for s in snapshot.filter_traces([only]).statistics("filename"))


def memory(keys: int) -> dict[str, Any]:
    """Bytes the change log holds per entry after a fill, then after overwrites."""
    gc.collect()
    tracemalloc.start()
    r = Replica(HybridClock("a", max_drift=1e9))
    values = [f"value {i}" for i in range(keys)]
    for i in range(keys):
        r.set(f"key:{i:07d}", values[i], T0 + i * 0.0001)
    gc.collect()
    filled = _log_bytes(tracemalloc.take_snapshot())
    rng = random.Random(5)
    wall = T0 + keys * 0.0001 + 1
    for j in range(keys):
        key = "key:0000000" if j % 2 else f"key:{rng.randrange(keys):07d}"
        r.set(key, values[j], wall + j * 0.0001)
    gc.collect()
    rewritten = _log_bytes(tracemalloc.take_snapshot())
    tracemalloc.stop()
    stats = r.change_log_statistics()
    return {
        "entries": keys,
        "log_bytes_per_entry_filled": filled / keys,
        "log_bytes_per_entry_after_overwrites": rewritten / keys,
        "positions_per_entry_after_overwrites": stats.positions / len(r),
        "chunks": stats.chunks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--origins", type=int, default=3)
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=51)
    parser.add_argument("--memory-keys", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true", help="10,000 keys, 20,000 for memory")
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON")
    args = parser.parse_args()
    if args.quick:
        args.keys, args.memory_keys, args.repeat = 10_000, 20_000, 21
    rows = timings(args.keys, args.origins, args.changes, args.repeat)
    mem = memory(args.memory_keys)
    print(
        f"{'changes_since':<28} {'entries':>8} {'returned':>8} {'examined':>8} | "
        f"{'scan ms':>8} {'log ms':>8} {'x':>7}"
    )
    for r in rows:
        speedup = f"{r['speedup']:.0f}x" if r["speedup"] else "-"
        print(
            f"{r['scenario']:<28} {r['entries']:>8} {r['returned']:>8} "
            f"{r['examined_by_log']:>8} | {r['scan_ms']:>8.3f} {r['log_ms']:>8.4f} {speedup:>7}"
        )
    target = next(
        r for r in rows if r["scenario"].startswith("in order,") and "%" not in r["scenario"]
    )
    verdict = "ok" if target["log_ms"] <= TARGET_MS else "OVER"
    print(
        f"\ntarget: {args.changes} changes among {target['entries']} <= {TARGET_MS} ms: "
        f"{target['log_ms']:.4f} ms ({verdict})"
    )
    print(
        f"change log, {mem['entries']} entries: {mem['log_bytes_per_entry_filled']:.1f} B/entry "
        f"filled, {mem['log_bytes_per_entry_after_overwrites']:.1f} B/entry after as many "
        f"overwrites ({mem['positions_per_entry_after_overwrites']:.2f} positions/entry, "
        f"{mem['chunks']} chunks)"
    )
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        out = {
            "meta": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "keys": args.keys,
                "origins": args.origins,
                "repeat": args.repeat,
                "quick": args.quick,
            },
            "target_ms": TARGET_MS,
            "timings": rows,
            "memory": mem,
        }
        (RESULTS / "catchup.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
