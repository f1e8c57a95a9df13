"""Restart on a large ``persist_path``: time to the first served read, and to fully loaded.

A p2p node (discovery off) is filled with ``--entries`` (100,000) keys of 32-char values
and closed; then, in a fresh process each time (as after a real restart), a new
``Cache`` is built on the same file and timed from its construction:

* ``start()`` returned;
* the first ``get`` of a key in the middle of the file returned its value;
* every stored row is in memory (``await cache.keys()`` waits for the load and lists
  every key; on a build that loads everything before ``start()`` returns, the same).

Run ``python benchmarks/restart.py`` (``--runs`` restarts, median and best shown). To
compare two trees on one machine, put each first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import crdtcache
from crdtcache import Cache


async def fill(path: str, count: int) -> None:
    """Write ``count`` keys through the public API, then close (the last batch)."""
    cache = Cache(
        backend="p2p", discovery="none", listen="127.0.0.1:0", persist_path=path,
        node_id="restart", max_size=count + 10,
    )  # fmt: skip
    async with cache:
        for start in range(0, count, 1000):
            await cache.set_many({f"rs:{i}": f"{i:032d}" for i in range(start, start + 1000)})


async def reopen(path: str, count: int) -> dict[str, float]:
    """Time one restart on ``path`` (see the module doc)."""
    key, want = f"rs:{count // 2}", f"{count // 2:032d}"
    t0 = time.perf_counter()
    cache = Cache(
        backend="p2p", discovery="none", listen="127.0.0.1:0", persist_path=path,
        node_id="restart", max_size=count + 10,
    )  # fmt: skip
    await cache.start()
    started = time.perf_counter() - t0
    try:
        got = await cache.get(key)
        first = time.perf_counter() - t0
        assert got == want, got
        keys = await cache.keys()
        loaded = time.perf_counter() - t0
        assert len(keys) == count, len(keys)
    finally:
        await cache.close()
    return {"start_s": started, "first_get_s": first, "loaded_s": loaded}


def main() -> None:
    """Parse arguments, fill a store once, time ``--runs`` restarts on it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, path = args.child
        if mode == "fill":
            asyncio.run(fill(path, args.entries))
        else:
            print(json.dumps(asyncio.run(reopen(path, args.entries))))
        return
    print(f"crdtcache from {Path(crdtcache.__file__).parent}", flush=True)
    with tempfile.TemporaryDirectory(prefix="crdtcache-restart-") as tmp:
        path = str(Path(tmp) / "node.db")
        child = [sys.executable, __file__, "--entries", str(args.entries), "--child"]
        subprocess.run([*child, "fill", path], check=True)
        runs = [
            json.loads(subprocess.run([*child, "open", path], check=True, capture_output=True,
                                      text=True).stdout)
            for _ in range(args.runs)
        ]  # fmt: skip
    print(f"{args.entries:,} entries, {args.runs} restarts (median / best):")
    for label, name in (
        ("start() returned", "start_s"),
        ("first get served", "first_get_s"),
        ("fully loaded", "loaded_s"),
    ):
        xs = [r[name] * 1000 for r in runs]
        print(f"  {label:18} {statistics.median(xs):7.0f} ms / {min(xs):5.0f} ms")


if __name__ == "__main__":
    main()
