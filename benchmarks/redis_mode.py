"""Redis mode next to plain redis-py on the same server, in one run.

What is measured
----------------
1. **GET.** ``await Cache.get`` in redis mode when the key is in the instance's hot tier
   (a local hit: no Redis round trip), and when it is not (a miss that goes to Redis:
   one HMGET, the record decoded and validated, merged into the hot tier; a cache with
   ``local_max_size=1`` cycling over 1000 keys, so every read misses and evicts the
   previous key). Beside them redis-py's async ``GET`` of the same value (a str; for
   the dict, ``GET`` plus ``json.loads``, since a Redis client must decode something to
   hand out a fresh object too) and ``HMGET`` of the three fields the cache reads.
   Ratios: ``xGET`` is the row's median over redis-py ``GET`` of the same value kind.
2. **SET, caller's wait.** ``await Cache.set`` per strategy, with a second instance of
   the cluster subscribed (so invalidations fan out, and write-through waits for its
   acknowledgement), beside redis-py ``SET``. A write-behind set returns after the
   local apply; its Redis write happens in the next batch.
   Each write-behind and on-demand batch is followed by a pause until its writes are
   in Redis and announced (not timed), so that the flush lands in no other row.
3. **Throughput**, writes per second until every write is in Redis: 20,000 sets in a
   row from one task; write-behind counts until its outbox is empty, write-through
   waits for each set. Beside them redis-py ``SET`` one at a time and pipelined in
   batches of 512 (what the write-behind batches are, minus the Lua script, the
   stamps and the invalidations); the ratio of the pipelined SET to write-behind is
   printed (issue #16 wants at most 1.5). Both use the same parser: hiredis when it
   is installed (``pip install 'crdtcache[redis]'`` brings it), which the last line
   names.
4. **Visibility**: from ``await a.set`` (write-behind and write-through) to the ``set``
   event on the second instance (its invalidation applied): p50 and p99 over 300
   writes 10 ms apart; the write-behind figure includes the ``sync_interval`` (5 ms)
   that a write after a quiet spell waits for its batch (under a steady stream,
   batches leave back to back and a write waits less).

How: one process, one event loop (uvloop if installed), Redis at ``--url`` (default
127.0.0.1:6379, a cluster name of the run's own, deleted afterwards). GET and SET rows
run in rounds, one batch per row per round in a random order, a batch being about 2 ms
of operations; reported is the median over batches of the per-batch mean (us/op) and
the 99th percentile of those means. Other work on the machine skews the figures: the
load average is printed. Results go to ``benchmarks/results/redis_mode.json``.

Run: ``python benchmarks/redis_mode.py`` (about a minute) or ``--quick``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis as sync_redis
import redis.asyncio as aredis
from redis.utils import HIREDIS_AVAILABLE

from crdtcache import Cache, CacheEvent
from crdtcache.cache._loop import new_event_loop
from crdtcache.runtime.redis._runtime import RedisRuntime

RESULTS = Path(__file__).parent / "results" / "redis_mode.json"
KEYS = 1000
#: Write-behind throughput must be within this factor of redis-py's pipelined SET.
PIPELINED_RATIO_MUST = 1.5


def str_value(i: int) -> str:
    return f"value-{i:026d}"  # 32 characters


def dict_value(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"user {i}", "active": True, "score": i / 7, "tags": ["a", "b"]}


def percentile(xs: list[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


Op = Callable[[str], Awaitable[Any]]


class Row:
    """One timed operation over a list of keys; collects per-batch means in us."""

    def __init__(
        self,
        label: str,
        kind: str,
        op: Op,
        keys: list[str],
        settle: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.label = label
        self.settle = settle
        self.kind = kind
        self.op = op
        self.keys = keys
        self.batch = 10
        self.means: list[float] = []
        self._at = 0

    async def calibrate(self, target_s: float) -> None:
        started = time.perf_counter()
        for key in self.keys[:20]:
            await self.op(key)
        per_op = (time.perf_counter() - started) / 20
        self.batch = max(5, min(len(self.keys), int(target_s / max(per_op, 1e-7))))

    async def run_batch(self) -> None:
        keys = self.keys
        op = self.op
        n = self.batch
        start = self._at
        seq = [keys[(start + i) % len(keys)] for i in range(n)]
        self._at = (start + n) % len(keys)
        t0 = time.perf_counter_ns()
        for key in seq:
            await op(key)
        self.means.append((time.perf_counter_ns() - t0) / n / 1000.0)

    def summary(self) -> dict[str, float]:
        return {
            "median_us": round(statistics.median(self.means), 3),
            "p99_batch_us": round(percentile(self.means, 0.99), 3),
            "batches": len(self.means),
            "ops_per_batch": self.batch,
        }


async def rounds(rows: list[Row], count: int, target_s: float) -> None:
    for row in rows:
        await row.calibrate(target_s)
    rng = random.Random(1)
    for _ in range(count):
        order = rows[:]
        rng.shuffle(order)
        for row in order:
            await row.run_batch()
            await asyncio.sleep(0)
            if row.settle is not None:
                await row.settle()


def outbox_empty(cache: Cache) -> Callable[[], bool]:
    rt = cache._runtime
    assert isinstance(rt, RedisRuntime)
    outbox = rt.protocol.outbox
    return lambda: not outbox.queued and not outbox.inflight


def drained(cache: Cache) -> Callable[[], Awaitable[None]]:
    """Wait until a write-behind batch is in Redis and announced, so that its cost
    lands in no other row's batch."""
    empty = outbox_empty(cache)

    async def settle() -> None:
        await wait_until(empty)
        await asyncio.sleep(0.002)  # the other instance handles the announcement

    return settle


async def wait_until(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        await asyncio.sleep(0.0005)


async def pair(url: str, cluster: str, **options: Any) -> tuple[Cache, Cache]:
    a = Cache(backend="redis", redis_url=url, cluster=cluster, node_id="bench-a", **options)
    b = Cache(backend="redis", redis_url=url, cluster=cluster, node_id="bench-b", **options)
    await a.start()
    await b.start()

    def sees_other() -> bool:
        return all(
            any(p.state == "alive" for p in c._runtime.statistics().peers)  # type: ignore[union-attr]
            for c in (a, b)
        )

    await wait_until(sees_other, 10)
    return a, b


async def bench(url: str, quick: bool) -> dict[str, Any]:
    cluster = f"bench-{uuid.uuid4().hex[:8]}"
    count = 60 if quick else 300
    target = 0.002
    throughput_n = 4000 if quick else 20_000
    client = aredis.Redis.from_url(url)
    data: dict[str, list[Any]] = {
        "str": [str_value(i) for i in range(KEYS)],
        "dict": [dict_value(i) for i in range(KEYS)],
    }
    keys = {kind: [f"{kind}:{i}" for i in range(KEYS)] for kind in data}
    results: dict[str, Any] = {"get": {}, "set": {}, "throughput": {}, "visibility": {}}
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)

        # ------------------------------------------------------------- GET
        hot, other = await pair(url, cluster)
        cold = Cache(
            backend="redis", redis_url=url, cluster=cluster, node_id="bench-cold", local_max_size=1
        )
        await cold.start()
        for cache in (hot, other, cold):
            stack.push_async_callback(cache.close)
        plain = {kind: [f"plain:{k}" for k in keys[kind]] for kind in keys}
        for kind, values in data.items():
            for key, pkey, value in zip(keys[kind], plain[kind], values, strict=True):
                await hot.set(key, value)
                await client.set(pkey, value if kind == "str" else json.dumps(value))
        await wait_until(outbox_empty(hot))
        for kind in keys:
            for key in keys[kind]:
                await hot.get(key)  # into hot's hot tier
        assert hot._tier.count == 2 * KEYS

        async def redis_get_json(key: str) -> Any:
            raw = await client.get(key)
            assert raw is not None
            return json.loads(raw)

        def hmget(kind: str) -> Op:
            prefix = f"crdtcache:{{{cluster}}}:k:"

            async def op(key: str) -> Any:
                return await client.hmget(prefix + key, "s", "v", "x")

            return op

        get_rows: list[Row] = []
        for kind in keys:
            get_rows += [
                Row("await Cache.get, hot-tier hit", kind, hot.get, keys[kind]),
                Row("await Cache.get, miss to Redis", kind, cold.get, keys[kind]),
                Row(
                    "redis-py GET" + (" + json.loads" if kind == "dict" else ""),
                    kind,
                    client.get if kind == "str" else redis_get_json,
                    plain[kind],
                ),
                Row("redis-py HMGET (the cache's read)", kind, hmget(kind), keys[kind]),
            ]
        await rounds(get_rows, count, target)
        for row in get_rows:
            results["get"].setdefault(row.label, {})[row.kind] = row.summary()
        assert (await hot.get_statistics()).local.hits > 0

        # ------------------------------------------------------------- SET
        set_rows: list[Row] = []
        for strategy in ("write-behind", "write-through", "on-demand"):
            a, b = await pair(url, f"{cluster}-{strategy}", sync_strategy=strategy)
            stack.push_async_callback(b.close)
            stack.push_async_callback(a.close)
            for kind in keys:
                by_key = dict(zip(keys[kind], data[kind], strict=True))

                def setter(cache: Cache, values: dict[str, Any] = by_key) -> Op:
                    async def op(key: str) -> None:
                        await cache.set(key, values[key])

                    return op

                set_rows.append(
                    Row(f"await Cache.set, {strategy}", kind, setter(a), keys[kind], drained(a))
                )
        for kind in keys:
            by_plain_key = dict(zip(plain[kind], data[kind], strict=True))

            def plain_set(kind: str = kind, values: dict[str, Any] = by_plain_key) -> Op:
                async def op(key: str) -> None:
                    value = values[key]
                    await client.set(key, value if kind == "str" else json.dumps(value))

                return op

            set_rows.append(Row("redis-py SET", kind, plain_set(), plain[kind]))
        await rounds(set_rows, max(20, count // 3), target)
        for row in set_rows:
            results["set"].setdefault(row.label, {})[row.kind] = row.summary()

        # ------------------------------------------------------ throughput
        value = str_value(7)

        async def cache_throughput(strategy: str) -> float:
            a, b = await pair(url, f"{cluster}-tp-{strategy}", sync_strategy=strategy)
            try:
                started = time.perf_counter()
                for i in range(throughput_n):
                    await a.set(f"tp:{i}", value)
                await wait_until(outbox_empty(a))
                return throughput_n / (time.perf_counter() - started)
            finally:
                await a.close()
                await b.close()

        async def redis_throughput(pipelined: bool) -> float:
            started = time.perf_counter()
            if pipelined:
                for start in range(0, throughput_n, 512):
                    pipe = client.pipeline(transaction=False)
                    for i in range(start, min(throughput_n, start + 512)):
                        pipe.set(f"plain:tp:{i}", value)
                    await pipe.execute()
            else:
                for i in range(throughput_n):
                    await client.set(f"plain:tp:{i}", value)
            return throughput_n / (time.perf_counter() - started)

        tp: dict[str, list[float]] = {}
        runs: tuple[tuple[str, Callable[[], Awaitable[float]]], ...]
        for _ in range(3):
            runs = (
                (
                    "Cache.set write-behind (until all in Redis)",
                    lambda: cache_throughput("write-behind"),
                ),
                ("Cache.set write-through", lambda: cache_throughput("write-through")),
                ("redis-py SET, one at a time", lambda: redis_throughput(False)),
                ("redis-py SET, pipelined by 512", lambda: redis_throughput(True)),
            )
            for label, run in runs:
                tp.setdefault(label, []).append(await run())
        results["throughput"] = {
            label: {"median_per_s": round(statistics.median(v)), "runs": [round(x) for x in v]}
            for label, v in tp.items()
        }

        # ------------------------------------------------------ visibility
        for strategy in ("write-behind", "write-through"):
            results["visibility"][f"set on A -> event on B, {strategy}"] = await visibility(
                url, f"{cluster}-vis-{strategy}", strategy, 60 if quick else 300
            )
    # Delete the run's keys (SCAN, like the cache).
    admin = sync_redis.Redis.from_url(url)
    try:
        for pattern in (f"crdtcache:{{{cluster}*", "plain:*"):
            names = list(admin.scan_iter(match=pattern, count=1000))
            for start in range(0, len(names), 1000):
                admin.delete(*names[start : start + 1000])
    finally:
        admin.close()
    return results


async def visibility(url: str, cluster: str, strategy: str, n: int) -> dict[str, float]:
    """From ``await a.set`` to the ``set`` event on the other instance, in ms."""
    a, b = await pair(url, cluster, sync_strategy=strategy)
    try:
        arrived: dict[str, float] = {}
        waiting: dict[str, asyncio.Event] = {}

        def on_set(event: CacheEvent) -> None:
            if event.key is None:
                return
            arrived.setdefault(event.key, time.perf_counter())
            flag = waiting.get(event.key)
            if flag is not None:
                flag.set()

        b.on("set", on_set)
        samples: list[float] = []
        for i in range(n):
            key = f"vis:{i}"
            flag = waiting[key] = asyncio.Event()
            started = time.perf_counter()
            await a.set(key, i)
            await asyncio.wait_for(flag.wait(), 5)
            samples.append((arrived[key] - started) * 1000)
            # Isolated writes: one arriving while a batch is in flight would leave with
            # the next batch at once, without waiting for sync_interval.
            await asyncio.sleep(0.01)
        return {
            "p50_ms": round(statistics.median(samples), 3),
            "p99_ms": round(percentile(samples, 0.99), 3),
            "samples": len(samples),
        }
    finally:
        await a.close()
        await b.close()


def table(results: dict[str, Any]) -> str:
    lines: list[str] = []
    get = results["get"]
    lines.append(f"{'GET (us/op)':46} {'kind':5} {'median':>9} {'p99 batch':>10} {'xGET':>7}")
    for label, kinds in get.items():
        for kind, s in kinds.items():
            base = get["redis-py GET" + (" + json.loads" if kind == "dict" else "")][kind]
            ratio = s["median_us"] / base["median_us"]
            lines.append(
                f"{label:46} {kind:5} {s['median_us']:9.2f} {s['p99_batch_us']:10.2f} {ratio:7.2f}"
            )
    lines.append("")
    lines.append(
        f"{'SET, caller waits (us/op)':46} {'kind':5} {'median':>9} {'p99 batch':>10} {'xSET':>7}"
    )
    sets = results["set"]
    for label, kinds in sets.items():
        for kind, s in kinds.items():
            ratio = s["median_us"] / sets["redis-py SET"][kind]["median_us"]
            lines.append(
                f"{label:46} {kind:5} {s['median_us']:9.2f} {s['p99_batch_us']:10.2f} {ratio:7.2f}"
            )
    lines.append("")
    lines.append(f"{'Throughput (writes/s, 1 task)':52} {'median':>9} {'xSET':>7}")
    tp = results["throughput"]
    one = tp["redis-py SET, one at a time"]["median_per_s"]
    for label, s in tp.items():
        lines.append(f"{label:52} {s['median_per_s']:9d} {s['median_per_s'] / one:7.2f}")
    wb = tp["Cache.set write-behind (until all in Redis)"]["median_per_s"]
    wt = tp["Cache.set write-through"]["median_per_s"]
    piped = tp["redis-py SET, pipelined by 512"]["median_per_s"]
    lines.append(f"{'write-behind / write-through':52} {wb / wt:9.1f}x")
    lines.append(
        f"{'redis-py pipelined SET / write-behind':52} {piped / wb:9.2f}x"
        f"   (issue #16: at most {PIPELINED_RATIO_MUST}x)"
    )
    lines.append("")
    lines.append(f"{'Visibility on the other instance':52} {'p50 ms':>9} {'p99 ms':>9}")
    for label, s in results["visibility"].items():
        lines.append(f"{label:52} {s['p50_ms']:9.3f} {s['p99_ms']:9.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    loop = new_event_loop(use_uvloop=not args.no_uvloop)
    load_start = os.getloadavg()
    started = time.perf_counter()
    try:
        results = loop.run_until_complete(bench(args.url, args.quick))
    finally:
        loop.close()
    info = sync_redis.Redis.from_url(args.url).info("server")
    results["meta"] = {
        "loop": type(loop).__module__.split(".")[0],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "redis_version": info.get("redis_version"),
        "parser": "hiredis" if HIREDIS_AVAILABLE else "python",
        "quick": args.quick,
        "seconds": round(time.perf_counter() - started, 1),
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "command": " ".join(["python", *sys.argv]),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    meta = results["meta"]
    print(
        f"\n{meta['loop']} loop, {meta['parser']} parser, Redis {meta['redis_version']}, "
        f"{meta['seconds']} s, "
        f"load average {meta['loadavg_start'][0]:.1f} -> {meta['loadavg_end'][0]:.1f}; "
        f"written to {RESULTS}"
    )


if __name__ == "__main__":
    main()
