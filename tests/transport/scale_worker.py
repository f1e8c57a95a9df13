"""One OS process of the 50-node test: ``count`` p2p caches, driven by JSON lines.

Run as ``python scale_worker.py FIRST COUNT [SEED]``: starts caches ``n<FIRST>`` ..
``n<FIRST+COUNT-1>`` on 127.0.0.1 (the first one is the seed when no SEED is given),
prints ``{"addresses": [...], "rss": ...}``, then answers one JSON line per command:

* ``status``: per cache its live peers and open links; the process's RSS and fds;
* ``write N``: each cache sets ``from:<its index>`` (N total keys expected), returns
  when (``time.monotonic``, one clock for every process on Linux);
* ``held``: per cache how many of the N ``from:*`` keys it holds and when the last
  one arrived;
* ``quit``: close every cache and exit.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from crdtcache import Cache, CacheEvent


def rss_bytes() -> int:
    """This process's resident set (Linux ``/proc``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Worker:
    def __init__(self, first: int, count: int, seed: str | None) -> None:
        self.first, self.count, self.seed = first, count, seed
        self.caches: list[Cache] = []
        self.arrivals: list[dict[str, float]] = [{} for _ in range(count)]

    async def start(self) -> list[str]:
        seeds = [self.seed] if self.seed else []
        for i in range(self.count):
            cache = Cache(
                backend="p2p",
                discovery="none",
                node_id=f"n{self.first + i}",
                seeds=seeds,
                max_size=1000,
            )
            await cache.start()
            arrivals = self.arrivals[i]

            def arrived(event: CacheEvent, arrivals: dict[str, float] = arrivals) -> None:
                arrivals.setdefault(event.key, time.monotonic())

            cache.on("set", arrived)
            self.caches.append(cache)
            if not seeds:  # the first cache of the first process seeds everyone
                assert cache.address is not None
                seeds = [cache.address]
        return [c.address or "" for c in self.caches]

    def status(self) -> dict[str, Any]:
        nodes = []
        for cache in self.caches:
            engine = cache._engine
            runtime = cache._runtime
            assert engine is not None and runtime is not None
            nodes.append(
                {
                    "live": len(engine.live_peers()),
                    "links": runtime.statistics().connections,
                }
            )
        return {"nodes": nodes, "rss": rss_bytes(), "fds": open_fds()}

    async def write(self) -> float:
        at = time.monotonic()
        for i, cache in enumerate(self.caches):
            index = self.first + i
            self.arrivals[i].setdefault(f"from:{index}", at)
            await cache.set(f"from:{index}", index)
        return at

    def held(self, total: int) -> list[dict[str, Any]]:
        out = []
        for cache, arrivals in zip(self.caches, self.arrivals, strict=True):
            keys = [f"from:{i}" for i in range(total)]
            held = sum(cache._read(k) == i for i, k in enumerate(keys))
            last = max((arrivals[k] for k in keys if k in arrivals), default=None)
            out.append({"held": held, "last": last})
        return out

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.caches), return_exceptions=True)


async def main() -> None:
    first, count = int(sys.argv[1]), int(sys.argv[2])
    seed = sys.argv[3] if len(sys.argv) > 3 else None
    base_rss = rss_bytes()
    worker = Worker(first, count, seed)
    addresses = await worker.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(obj: Any) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"addresses": addresses, "rss": base_rss})
    while line := (await reader.readline()).decode().strip():
        command, _, arg = line.partition(" ")
        if command == "status":
            reply(worker.status())
        elif command == "write":
            reply({"at": await worker.write()})
        elif command == "held":
            reply({"nodes": worker.held(int(arg))})
        elif command == "quit":
            break
    await worker.close()
    reply({"closed": True})


if __name__ == "__main__":
    asyncio.run(main())
