"""What storing own writes before sending them costs (``persist_path``), beside no file.

What is measured
----------------
Two p2p nodes on loopback in one event loop (uvloop when installed): A writes, B
listens. Rows, each with and without ``persist_path`` on A:

* **visible on B, write-behind**: from ``await a.set`` to B's ``set`` event, p50 / p99
  over ``--writes`` writes spaced 2 ms apart (an idle link: the worst case for the
  group commit, which then stores one write per transaction);
* **write-through return**: ``await a.set`` with ``sync_strategy="write-through"``;
* **throughput**: ``--burst`` write-behind writes in a row, until B holds the last one
  (a steady stream: commits group many writes each);
* **caller's wait**: ``await a.set`` alone (write-behind returns before any IO).

The durable rows pay one SQLite commit (WAL, ``synchronous=NORMAL``) per batch of own
writes before they leave the node. Run: ``python benchmarks/durability.py [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from crdtcache import Cache, CacheEvent
from crdtcache.cache import _loop

RESULTS = Path(__file__).resolve().parent / "results"


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _pair(strategy: str, path: str | None) -> tuple[Cache, Cache]:
    a = Cache(
        backend="p2p",
        discovery="none",
        node_id="a",
        persist_path=path,
        sync_strategy=strategy,  # type: ignore[arg-type]  # one of the three
    )
    await a.start()
    b = Cache(backend="p2p", discovery="none", node_id="b", seeds=[a.address or ""])
    await b.start()
    await a.wait_for_peers(1)
    await b.wait_for_peers(1)
    return a, b


async def _visibility(path: str | None, writes: int) -> tuple[float, float]:
    a, b = await _pair("write-behind", path)
    arrived: dict[str, float] = {}
    b.on("set", lambda e: arrived.setdefault(e.key or "", time.perf_counter()))
    latencies = []
    try:
        for i in range(writes):
            key = f"v{i}"
            start = time.perf_counter()
            await a.set(key, i)
            while key not in arrived:
                await asyncio.sleep(0)
            latencies.append((arrived[key] - start) * 1000)
            await asyncio.sleep(0.002)
    finally:
        await b.close()
        await a.close()
    return statistics.median(latencies), _pct(latencies, 0.99)


async def _write_through(path: str | None, writes: int) -> tuple[float, float]:
    a, b = await _pair("write-through", path)
    waits = []
    try:
        for i in range(writes):
            start = time.perf_counter()
            await a.set(f"t{i}", i)
            waits.append((time.perf_counter() - start) * 1000)
    finally:
        await b.close()
        await a.close()
    return statistics.median(waits), _pct(waits, 0.99)


async def _throughput(path: str | None, burst: int) -> tuple[float, float]:
    a, b = await _pair("write-behind", path)
    done = asyncio.Event()
    last = f"b{burst - 1}"

    def seen(event: CacheEvent) -> None:
        if event.key == last:
            done.set()

    b.on("set", seen)
    try:
        start = time.perf_counter()
        set_wait = 0.0
        for i in range(burst):
            t0 = time.perf_counter()
            await a.set(f"b{i}", i)
            set_wait += time.perf_counter() - t0
            if i % 100 == 99:
                await asyncio.sleep(0)  # let the loop send while writing
        await asyncio.wait_for(done.wait(), 30)
        elapsed = time.perf_counter() - start
    finally:
        await b.close()
        await a.close()
    return burst / elapsed, set_wait / burst * 1e6


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        for label, durable in (("no file", False), ("persist_path", True)):
            path = str(Path(folder) / f"{label.replace(' ', '_')}.db") if durable else None
            vis = await _visibility(path, args.writes)
            path2 = str(Path(folder) / "wt.db") if durable else None
            wt = await _write_through(path2, args.writes)
            path3 = str(Path(folder) / "tp.db") if durable else None
            rate, set_us = await _throughput(path3, args.burst)
            rows[label] = {
                "visible_p50_ms": vis[0],
                "visible_p99_ms": vis[1],
                "write_through_p50_ms": wt[0],
                "write_through_p99_ms": wt[1],
                "throughput_per_s": rate,
                "set_wait_us": set_us,
            }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer writes")
    args = parser.parse_args()
    args.writes = 200 if args.quick else 1000
    args.burst = 10_000 if args.quick else 50_000
    rows = _loop.run(_run(args))
    print(f"{'':28}| {'no file':>16} | {'persist_path':>16} | ratio")
    print("-" * 78)
    for name, fmt in (
        ("visible_p50_ms", "{:.3f} ms"),
        ("visible_p99_ms", "{:.3f} ms"),
        ("write_through_p50_ms", "{:.3f} ms"),
        ("write_through_p99_ms", "{:.3f} ms"),
        ("throughput_per_s", "{:,.0f}/s"),
        ("set_wait_us", "{:.2f} us"),
    ):
        plain, durable = rows["no file"][name], rows["persist_path"][name]
        print(
            f"{name:28}| {fmt.format(plain):>16} | {fmt.format(durable):>16} | "
            f"{durable / plain:.2f}x"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "durability.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {RESULTS / 'durability.json'}")


if __name__ == "__main__":
    main()
