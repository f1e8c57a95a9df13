"""How long a large value holds up a small one on the link between two p2p nodes.

What is measured
----------------
Values travel whole, one frame each (``wire._framing.frame_limit`` lets frames grow
with ``max_value_bytes``); they are not cut into parts. So a small write queued behind
a large one on the same link waits until the large frame is encoded, written, read,
decoded and merged. Two caches (``backend="p2p"``, write-behind, ``max_value_bytes``
32 MiB) run on 127.0.0.1 in this process's event loop. For each size, node A writes
the large value (``bytes``), then at once a small one; the figure is the time from the
small ``set`` until node B serves it, next to the same small write alone (baseline).
Each size is measured ``--rounds`` times; the median and the worst are printed.

Run: ``python benchmarks/large_values.py`` (a loaded machine inflates the figures; the
ratio to the baseline is what matters).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from crdtcache import Cache

MIB = 1 << 20
SIZES = (0, 1 * MIB, 4 * MIB, 16 * MIB, 32 * MIB - 64)


async def visible(cache: Cache, key: str, value: object, timeout: float = 30.0) -> float:
    """Poll ``cache`` until it serves ``value`` at ``key``; the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while cache._read(key) != value:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key} not visible within {timeout} s")
        await asyncio.sleep(0)
    return time.monotonic()


async def measure(rounds: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}

    def node(node_id: str, seeds: list[str]) -> Cache:
        return Cache(
            backend="p2p",
            discovery="none",
            node_id=node_id,
            seeds=seeds,
            max_value_bytes=32 * MIB,
            max_size=None,
        )

    async with node("a", []) as a, node("b", [a.address or ""]) as b:
        await b.wait_for_peers(1)
        for size in SIZES:
            waits = []
            for r in range(rounds):
                if size:
                    await a.set(f"big{r}", bytes([r % 256]) * size)
                started = time.monotonic()
                await a.set(f"small{size}-{r}", r)
                waits.append(await visible(b, f"small{size}-{r}", r) - started)
                if size:
                    await visible(b, f"big{r}", bytes([r % 256]) * size)
                    await a.delete(f"big{r}")
            label = "alone" if not size else f"behind {size / MIB:.0f} MiB"
            results[label] = {
                "median_ms": statistics.median(waits) * 1000,
                "max_ms": max(waits) * 1000,
            }
            print(
                f"small write {label:>16}: median {results[label]['median_ms']:7.1f} ms, "
                f"worst {results[label]['max_ms']:7.1f} ms"
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "large_values.json"
    )
    args = parser.parse_args()
    results = asyncio.run(measure(args.rounds))
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
