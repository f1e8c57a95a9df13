"""What a local hit on a list or dict costs: decoded on every read, or copied (flat).

What is measured
----------------
Issue #15 item 3: a flat list or dict (items all str, int, float, bool, None or bytes)
is read as a shallow copy of an original decoded once (``core.FlatReads``) instead of
being decoded from its msgpack bytes on every hit. Target: ``SyncCache.get`` of a flat
dict <= 1.5x cachetools ``LRUCache.get``.

Rows (``SyncCache`` on the memory backend, the caller's thread answers a hit):

* ``SyncCache.get`` of a 32-char str (nothing to copy: the floor of a hit);
* ``SyncCache.get`` of a flat dict (``{"id", "name", "active", "score", "tag"}``),
  as now (*copied*), and as before (*decoded*: the same cache made to decode every read,
  as ``_read`` did, plus one dict lookup), in the same run; run from a checkout older
  than ``FlatReads``, every row decodes;
* ``SyncCache.get`` of ``benchmarks/local_ops.py``'s small dict (it holds a list of
  tags: nested, so still decoded on every read);
* cachetools ``LRUCache.get`` of the flat dict (hands out the stored dict itself).

Timing as in ``local_ops.py``: batches of ``for k in keys: get(k)`` over 1000 keys with
the garbage collector off, rows in a new random order each round, the median of the
per-batch mean ns/op (and the 99th percentile of those means).

Memory: bytes per entry (``tracemalloc``) of a memory-backend cache holding
``--entries`` flat dicts (200,000), filled, then after every key was read once: what
keeping decoded originals costs (bounded: two generations of ``FLAT_READ_BYTES`` of
packed values, whatever the number of entries).

Run ``python benchmarks/flat_reads.py`` (about 40 s) or ``--quick``. Writes
``benchmarks/results/flat_reads.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import cachetools

from crdtcache import Cache, SyncCache
from crdtcache.core import _values, decode_value, encode_value

# 0 in a checkout from before FlatReads: every row decodes there.
FLAT_READ_BYTES: int = getattr(_values, "FLAT_READ_BYTES", 0)

RESULTS = Path(__file__).resolve().parent / "results"
NKEYS = 1000
TARGET_X_LRU = 1.5


def flat_dict(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"user-{i}", "active": True, "score": 12.5, "tag": "a"}


def nested_dict(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"user-{i}", "active": True, "score": 12.5, "tags": ["a", "b"]}


def decode_every_read(cache: SyncCache) -> None:
    """Make ``cache`` read as ``Cache._read`` did before ``FlatReads``: a full decode
    per hit (plus the one dict lookup that finds no kept original)."""
    inner: Any = cache._cache
    inner._flat_copier = {}.get
    inner._flat = SimpleNamespace(decode=decode_value)


def batch(get: Callable[[str], Any], keys: list[str]) -> float:
    t0 = time.perf_counter_ns()
    for k in keys:
        get(k)
    return (time.perf_counter_ns() - t0) / len(keys)


def timings(rounds: int) -> dict[str, dict[str, float]]:
    rows: dict[str, tuple[Callable[[str], Any], list[str]]] = {}
    lru: cachetools.LRUCache[str, Any] = cachetools.LRUCache(maxsize=10 * NKEYS)
    copied = SyncCache(backend="memory", max_size=None)
    decoded = SyncCache(backend="memory", max_size=None)
    copied.start()
    decoded.start()
    try:
        if FLAT_READ_BYTES:
            decode_every_read(decoded)
        kinds = {
            "str": lambda i: f"value-{i:08d}-".ljust(32, "x"),
            "flat": flat_dict,
            "nested": nested_dict,
        }
        for kind, make in kinds.items():
            for i in range(NKEYS):
                copied.set(f"{kind}:{i}", make(i))
                decoded.set(f"{kind}:{i}", make(i))
                lru[f"{kind}:{i}"] = make(i)
        keys = {kind: [f"{kind}:{i}" for i in range(NKEYS)] for kind in kinds}
        rows = {
            "cachetools LRUCache.get, flat dict": (lru.get, keys["flat"]),
            "SyncCache.get, str": (copied.get, keys["str"]),
            "SyncCache.get, flat dict, copied (now)": (copied.get, keys["flat"]),
            "SyncCache.get, flat dict, decoded (before)": (decoded.get, keys["flat"]),
            "SyncCache.get, nested dict (decoded)": (copied.get, keys["nested"]),
        }
        samples: dict[str, list[float]] = {label: [] for label in rows}
        order = list(rows)
        for get, ks in rows.values():  # warm up (and fill the kept originals)
            batch(get, ks)
        gc.collect()
        gc.disable()
        try:
            for _ in range(rounds):
                random.shuffle(order)
                for label in order:
                    get, ks = rows[label]
                    samples[label].append(batch(get, ks))
        finally:
            gc.enable()
    finally:
        copied.close()
        decoded.close()
    lru_ns = statistics.median(samples["cachetools LRUCache.get, flat dict"])
    out = {}
    for label, xs in samples.items():
        median = statistics.median(xs)
        out[label] = {
            "median_ns": median,
            "p99_batch_ns": sorted(xs)[int(0.99 * (len(xs) - 1))],
            "x_lru": median / lru_ns,
        }
    return out


async def _bytes_per_entry(entries: int) -> dict[str, Any]:
    stored = [encode_value("k", flat_dict(i)) for i in range(entries)]
    keys = [f"user:{i:09d}" for i in range(entries)]
    gc.collect()
    tracemalloc.start()
    async with Cache(backend="memory", max_size=None) as cache:
        replica = cache._replica
        assert replica is not None
        gc.collect()
        empty = tracemalloc.get_traced_memory()[0]
        now = time.time()
        for key, value in zip(keys, stored, strict=True):
            replica.set(key, value, now)
        gc.collect()
        filled = tracemalloc.get_traced_memory()[0]
        for key in keys:
            cache._read(key)
        gc.collect()
        read = tracemalloc.get_traced_memory()[0]
        kept = len(cache._flat) if FLAT_READ_BYTES else 0
    tracemalloc.stop()
    return {
        "entries": entries,
        "bytes_per_entry_filled": (filled - empty) / entries,
        "bytes_per_entry_after_reading_all": (read - empty) / entries,
        "kept_originals": kept,
        "kept_bytes": read - filled,
        "flat_read_bytes": FLAT_READ_BYTES,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true", help="60 rounds, 20,000 entries")
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.entries = 60, 20_000
    rows = timings(args.rounds)
    memory = asyncio.run(_bytes_per_entry(args.entries))
    print(f"{'local hit':<44} {'median':>9} {'p99':>9} {'xLRU':>6}")
    for label, r in rows.items():
        median, p99, x = r["median_ns"], r["p99_batch_ns"], r["x_lru"]
        print(f"{label:<44} {median:>6.0f} ns {p99:>6.0f} ns {x:>5.2f}x")
    now = rows["SyncCache.get, flat dict, copied (now)"]["x_lru"]
    print(f"\ntarget: SyncCache.get of a flat dict <= {TARGET_X_LRU}x LRUCache.get: {now:.2f}x")
    print(
        f"bytes/entry, {memory['entries']} flat dicts: {memory['bytes_per_entry_filled']:.1f} "
        f"filled, {memory['bytes_per_entry_after_reading_all']:.1f} after reading every key "
        f"({memory['kept_originals']} originals kept, {memory['kept_bytes'] / 1024:.0f} KiB)"
    )
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        out = {
            "meta": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "rounds": args.rounds,
                "keys": NKEYS,
                "quick": args.quick,
            },
            "target_x_lru": TARGET_X_LRU,
            "timing": rows,
            "memory": memory,
        }
        (RESULTS / "flat_reads.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
