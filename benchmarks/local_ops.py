"""Local operation costs of crdtcache next to in-process caches and a local Redis.

What is measured
----------------
1. **GET, local hit** (SPEC section 4: ``await cache.get`` <= 2 us median, goal <= 1 us;
   ``SyncCache.get`` <= 1 us, goal <= 2x cachetools ``LRUCache.get``). Rows:
   ``await Cache.get`` on ``backend="memory"`` and on a lone ``backend="p2p"`` node
   (``discovery="none"``, no peer), ``SyncCache.get`` (memory backend; the caller's
   thread answers a hit, the node's loop thread idles), cachetools ``LRUCache.get`` and
   ``TTLCache.get``, cashews ``cache.get`` (``setup("mem://")``), aiocache
   ``SimpleMemoryCache.get`` and redis-py async ``GET`` on 127.0.0.1:6379. Reference
   rows give the floors: a plain ``dict.get``, ``await`` of an ``async def`` that
   returns at once (what any async API pays per call), and ``Cache._read`` (the
   crdtcache hit path without its coroutine).
2. **SET** per sync strategy: ``await Cache.set`` on the memory backend, and on a p2p
   node with one peer connected over loopback for write-behind, write-through and
   on-demand; ``SyncCache.set``; cachetools ``LRUCache[key] = value``; cashews and
   aiocache ``set``; redis-py async ``SET``. The figure is the caller's wait: a
   write-behind or on-demand set returns before anything is sent (the flush is paid
   later in the loop and is not in the figure; ``replication.py`` measures it), a
   write-through set returns when the peer acknowledged having applied it.
3. **Bytes per entry** (SPEC: <= 150 bytes beyond key and value objects, goal <= 120;
   cachetools LRUCache 110). A fresh process per variant builds the key and value
   strings first, then starts ``tracemalloc``, builds the empty cache, and inserts
   1,000,000 entries (200,000 with ``--quick``). Per entry = (traced bytes after the
   inserts - traced bytes of the empty cache) / entries: the key and value objects
   were allocated before tracing began, so they are not counted; what remains is the
   dict slots, entry objects, stamps, expiries and bookkeeping. The peak during the
   inserts (a dict resize holds both tables) is reported too. Variants: ``Cache``
   memory backend (``max_size=None``) without TTL and with ``default_ttl``, cachetools
   ``LRUCache`` and ``TTLCache``. Values are 32-char strings (a dict value is stored
   as msgpack bytes, which would count as value, not overhead). Dict tables grow by
   doubling, so the figure depends on the entry count (1M and 200k differ).

   *How the Cache is filled.* tracemalloc charges every allocation, and ``await
   cache.set`` makes a dozen transient ones (coroutines, change records, delta queue),
   so a million of them take minutes under tracing. The 1M fill therefore makes the
   replica write that ``Cache.set`` ends in (``replica.set(key, value, now, expires)``
   with the expiry from ``Expiries.at(now, ttl)``, which the writes of one millisecond
   share: the same entry, stamp, expiry float, tier accounting and expiry bucket)
   and skips what ``Cache.set`` adds around it only transiently (the change record
   and the queued delta, which the memory runtime drops). To show both leave the same
   structure at rest, each worker first fills 20,000 entries both ways and reports
   both figures ("fill check"); a gap over 2 bytes is flagged.

How
---
Everything runs in one process and one event loop (uvloop if installed, as
``SyncCache`` uses; ``--no-uvloop`` for asyncio's). Each cache is filled with 1000
``str`` keys holding 32-char string values and 1000 holding a small dict
(``{"id", "name", "active", "score", "tags"}``, about 50 bytes of msgpack); a batch
cycles through the keys of one kind. Timing is timeit-style: a batch is a Python loop
``for k in keys: [await] op(k)`` timed with ``perf_counter_ns`` with the garbage
collector off, sized to about 0.25 ms after a warm-up batch (at least 5 operations,
so Redis and write-through batches last longer). Short batches keep most of them
clear of a preemption when the machine is busy: a batch the scheduler interrupted
shows in the p99, not in the median. Rounds run one batch of every row, in a new
random order each round, so that drift in the machine's load is spread over all rows;
between batches the loop runs once (``asyncio.sleep(0)``), and after a write-behind or
on-demand batch until the node's send queue is empty, so that its flush lands in no
other row's batch. Reported: the median over batches of the
per-batch mean ns/op, and the 99th percentile of those batch means. The loop itself
costs a few ns per operation (the empty-loop row); no row subtracts it.

Ratios: ``xLRU`` is the row's median over cachetools ``LRUCache`` (``get`` or
``__setitem__``) for the same value kind, ``xRedis`` over redis-py ``GET``/``SET``.
``copy`` says whether a dict value comes back as a fresh object (crdtcache decodes
its stored msgpack on each hit so callers never alias the replica -- this dict holds a
list; a flat one is copied from a decoded original instead, see ``flat_reads.py``; Redis rows pay
``json.loads``/``json.dumps``) or as the very object stored (cachetools, cashews'
and aiocache's memory backends hand out the same dict: free, but aliased).

Peers of the p2p set rows are ``python -m crdtcache.transport`` processes (one per
strategy, each in its own cluster so the three nodes do not mesh). cashews is set up
with ``size=100000`` (its default of 1000 would evict the benchmark's keys) and
``check_interval=0`` (its 1-s expiry sweep would otherwise run inside other rows'
batches); neither changes its get path.

Run ``python benchmarks/local_ops.py`` (under 2 minutes on 2 cores: 115 s with the
machine at load average 5, most of it the traced 1M-entry fills) or ``--quick`` (about
35 s); ``--no-memory`` skips bytes per entry. ``--profile`` also writes cProfile
summaries of the crdtcache get and set paths to
``benchmarks/results/local_ops_profile.txt``. Writes
``benchmarks/results/local_ops.json``. Other work on the machine skews the figures:
the load average is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from crdtcache import Cache, PeerError, SyncCache
from crdtcache.cache._loop import new_event_loop
from crdtcache.cache._options import SyncStrategy
from crdtcache.core._entry import Expiries

RESULTS = Path(__file__).resolve().parent / "results"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
NKEYS = 1000  # keys per value kind
BATCH_NS = 250_000  # target duration of one timed batch
MIN_BATCH, MAX_BATCH = 5, 20_000  # operations per batch
TTL = 3600.0  # seconds, where a TTL is used
TARGETS = {
    "get_must_ns": 2000.0,
    "get_goal_ns": 1000.0,
    "sync_get_must_ns": 1000.0,
    "sync_get_goal_x_lru": 2.0,
    "overhead_must_bytes": 150.0,
    "overhead_goal_bytes": 120.0,
}

perf_ns = time.perf_counter_ns


# ------------------------------------------------------------------ data
def str_value(i: int) -> str:
    return f"value-{i:08d}-".ljust(32, "x")


def dict_value(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"user-{i}", "active": True, "score": 12.5, "tags": ["a", "b"]}


def dataset(prefix: str) -> dict[str, list[tuple[str, Any]]]:
    """Key/value pairs per value kind, keys namespaced by ``prefix``."""
    return {
        "str": [(f"{prefix}s:{i}", str_value(i)) for i in range(NKEYS)],
        "dict": [(f"{prefix}d:{i}", dict_value(i)) for i in range(NKEYS)],
    }


# ------------------------------------------------------------ batch runners
Runner = Callable[[list[Any]], Any]


def sync_get(fn: Callable[[str], Any]) -> Runner:
    def run(seq: list[Any]) -> int:
        t0 = perf_ns()
        for k in seq:
            fn(k)
        return perf_ns() - t0

    return run


def async_get(fn: Callable[[str], Awaitable[Any]]) -> Runner:
    async def run(seq: list[Any]) -> int:
        t0 = perf_ns()
        for k in seq:
            await fn(k)
        return perf_ns() - t0

    return run


def sync_set(fn: Callable[[str, Any], Any]) -> Runner:
    def run(seq: list[Any]) -> int:
        t0 = perf_ns()
        for k, v in seq:
            fn(k, v)
        return perf_ns() - t0

    return run


def async_set(fn: Callable[[str, Any], Awaitable[Any]]) -> Runner:
    async def run(seq: list[Any]) -> int:
        t0 = perf_ns()
        for k, v in seq:
            await fn(k, v)
        return perf_ns() - t0

    return run


def empty_loop(seq: list[Any]) -> int:
    t0 = perf_ns()
    for _ in seq:
        pass
    return perf_ns() - t0


async def _noop(key: str) -> str:
    return key


@dataclass
class Row:
    """One timed operation: a label, its section and value kind, and its batch runner."""

    label: str
    section: str  # "get" or "set"
    kind: str  # "str" or "dict"
    run: Runner
    is_async: bool
    items: list[Any]  # keys (get) or (key, value) pairs (set) the batches cycle over
    copy: str = ""  # "fresh" / "alias" for dict values
    group: str = ""  # "crdtcache", "peer" or "ref"
    settle: Callable[[], Awaitable[None]] | None = None  # run after each batch
    seq: list[Any] = field(default_factory=list)
    samples: list[float] = field(default_factory=list)  # ns/op per batch

    async def batch(self, seq: list[Any]) -> int:
        result = self.run(seq)
        ns: int = await result if self.is_async else result
        return ns


def percentile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# --------------------------------------------------------------- the peers
class PeerProcess:
    """A bare crdtcache node in a subprocess (``python -m crdtcache.transport``)."""

    def __init__(self, node_id: str, cluster: str, seed: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "crdtcache.transport",
                "--node-id",
                node_id,
                "--cluster",
                cluster,
                "--seed",
                seed,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            env=env,
            text=True,
        )

    def errors(self) -> str:
        """The last lines the peer wrote to stderr."""
        self.stderr.seek(0)
        return "".join(self.stderr.readlines()[-15:])

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(OSError):
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


async def p2p_with_peer(
    strategy: SyncStrategy, stack: contextlib.AsyncExitStack, peers: list[PeerProcess]
) -> Cache:
    """A started p2p node with one peer process connected (``strategy`` sync)."""
    cluster = f"local-ops-{strategy}-{os.getpid()}"
    cache = Cache(
        backend="p2p",
        discovery="none",
        cluster=cluster,
        sync_strategy=strategy,
        node_id=f"bench-{strategy}",
    )
    await stack.enter_async_context(cache)
    assert cache.address is not None
    peer = PeerProcess(f"peer-{strategy}", cluster, cache.address)
    peers.append(peer)
    try:
        await cache.wait_for_peers(1, timeout=20)
    except PeerError as exc:
        raise SystemExit(
            f"the {strategy} peer did not connect: {exc}\npeer stderr:\n{peer.errors()}"
        ) from None
    return cache


def drained(cache: Cache) -> Callable[[], Awaitable[None]]:
    """After a batch: wait (at most 0.2 s) until the node sent what the batch queued."""

    async def settle() -> None:
        engine = cache._engine  # read-only peek at the send queue
        deadline = time.monotonic() + 0.2
        while engine is not None and engine.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.001)

    return settle


# ------------------------------------------------------------ the timed run
async def build_rows(stack: contextlib.AsyncExitStack, peers: list[PeerProcess]) -> list[Row]:
    import cachetools
    import redis.asyncio as aredis
    from aiocache import SimpleMemoryCache
    from cashews import cache as cashews_cache

    rows: list[Row] = []
    data = dataset("")
    sets = dataset("w:")

    def add_get(label: str, group: str, copy: str, make: Callable[[str], Row]) -> None:
        for kind in ("str", "dict"):
            row = make(kind)
            row.label, row.group, row.copy = label, group, copy if kind == "dict" else ""
            rows.append(row)

    def get_row(kind: str, run: Runner, is_async: bool) -> Row:
        return Row("", "get", kind, run, is_async, [k for k, _ in data[kind]])

    def set_row(label: str, group: str, kind: str, run: Runner, is_async: bool, **kw: Any) -> Row:
        return Row(label, "set", kind, run, is_async, list(sets[kind]), group=group, **kw)

    # crdtcache
    mem = Cache(backend="memory")
    await stack.enter_async_context(mem)
    p2p = Cache(backend="p2p", discovery="none")
    await stack.enter_async_context(p2p)
    sync = SyncCache(backend="memory")
    sync.start()
    stack.callback(sync.close)
    for kind in ("str", "dict"):
        for k, v in data[kind]:
            await mem.set(k, v)
            await p2p.set(k, v)
            sync.set(k, v)
    add_get(
        "await Cache.get (memory)",
        "crdtcache",
        "fresh",
        lambda k: get_row(k, async_get(mem.get), True),
    )
    add_get(
        "await Cache.get (p2p, 1 node)",
        "crdtcache",
        "fresh",
        lambda k: get_row(k, async_get(p2p.get), True),
    )
    add_get(
        "SyncCache.get (memory)",
        "crdtcache",
        "fresh",
        lambda k: get_row(k, sync_get(sync.get), False),
    )

    # in-process peers
    lru: cachetools.LRUCache[str, Any] = cachetools.LRUCache(maxsize=10_000)
    ttlc: cachetools.TTLCache[str, Any] = cachetools.TTLCache(maxsize=10_000, ttl=TTL)
    cashews_cache.setup("mem://", size=100_000, check_interval=0)
    stack.push_async_callback(cashews_cache.close)
    aio = SimpleMemoryCache()
    stack.push_async_callback(aio.close)
    for kind in ("str", "dict"):
        for k, v in data[kind]:
            lru[k] = v
            ttlc[k] = v
            await cashews_cache.set(k, v)
            await aio.set(k, v)
    add_get(
        "cachetools LRUCache.get", "peer", "alias", lambda k: get_row(k, sync_get(lru.get), False)
    )
    add_get(
        "cachetools TTLCache.get", "peer", "alias", lambda k: get_row(k, sync_get(ttlc.get), False)
    )
    add_get(
        "cashews mem:// get",
        "peer",
        "alias",
        lambda k: get_row(k, async_get(cashews_cache.get), True),
    )
    add_get(
        "aiocache SimpleMemoryCache.get",
        "peer",
        "alias",
        lambda k: get_row(k, async_get(aio.get), True),
    )

    # Redis (keys namespaced by pid; deleted at the end)
    prefix = f"crdtcache-bench:local_ops:{os.getpid()}:"
    rds = aredis.Redis(host=REDIS_HOST, port=REDIS_PORT, decode_responses=True)
    stack.push_async_callback(rds.aclose)
    await rds.ping()
    written = [prefix + k for kind in ("str", "dict") for k, _ in (*data[kind], *sets[kind])]
    stack.push_async_callback(lambda: rds.delete(*written))
    async with rds.pipeline(transaction=False) as pipe:
        for k, v in data["str"]:
            pipe.set(prefix + k, v)
        for k, v in data["dict"]:
            pipe.set(prefix + k, json.dumps(v))
        await pipe.execute()

    async def redis_get(k: str) -> Any:
        return await rds.get(prefix + k)

    async def redis_get_json(k: str) -> Any:
        raw = await rds.get(prefix + k)
        assert raw is not None
        return json.loads(raw)

    async def redis_set(k: str, v: Any) -> Any:
        return await rds.set(prefix + k, v)

    async def redis_set_json(k: str, v: Any) -> Any:
        return await rds.set(prefix + k, json.dumps(v))

    for kind, fn in (("str", redis_get), ("dict", redis_get_json)):
        rows.append(
            Row(
                "redis-py async GET",
                "get",
                kind,
                async_get(fn),
                True,
                [k for k, _ in data[kind]],
                copy="fresh" if kind == "dict" else "",
                group="peer",
            )
        )

    # reference floors
    plain = {k: v for kind in ("str", "dict") for k, v in data[kind]}
    add_get(
        "(ref) plain dict.get", "ref", "alias", lambda k: get_row(k, sync_get(plain.get), False)
    )
    add_get(
        "(ref) await async def: return", "ref", "", lambda k: get_row(k, async_get(_noop), True)
    )
    add_get(
        "(ref) Cache._read, no coroutine",
        "ref",
        "fresh",
        lambda k: get_row(k, sync_get(mem._read), False),
    )
    rows.append(
        Row(
            "(ref) empty loop",
            "get",
            "str",
            empty_loop,
            False,
            [k for k, _ in data["str"]],
            group="ref",
        )
    )

    # sets
    strategies = {}
    for strategy in ("write-behind", "write-through", "on-demand"):
        strategies[strategy] = await p2p_with_peer(strategy, stack, peers)
    for kind in ("str", "dict"):
        rows.append(
            set_row("await Cache.set (memory)", "crdtcache", kind, async_set(mem.set), True)
        )
        for strategy, node in strategies.items():
            settle = None if strategy == "write-through" else drained(node)
            rows.append(
                set_row(
                    f"await Cache.set (p2p {strategy}, 1 peer)",
                    "crdtcache",
                    kind,
                    async_set(node.set),
                    True,
                    settle=settle,
                )
            )
        rows.append(set_row("SyncCache.set (memory)", "crdtcache", kind, sync_set(sync.set), False))
        rows.append(
            set_row("cachetools LRUCache[k] = v", "peer", kind, sync_set(lru.__setitem__), False)
        )
        rows.append(set_row("cashews mem:// set", "peer", kind, async_set(cashews_cache.set), True))
        rows.append(
            set_row("aiocache SimpleMemoryCache.set", "peer", kind, async_set(aio.set), True)
        )
        rows.append(
            set_row(
                "redis-py async SET",
                "peer",
                kind,
                async_set(redis_set if kind == "str" else redis_set_json),
                True,
            )
        )
    return rows


async def calibrate(row: Row) -> None:
    """Warm up, then size the row's batch to about BATCH_NS."""
    warm = [row.items[i % len(row.items)] for i in range(200)]
    await row.batch(warm)
    if row.settle is not None:
        await row.settle()
    per_op = max(await row.batch(warm) / len(warm), 1.0)
    if row.settle is not None:
        await row.settle()
    n = int(min(MAX_BATCH, max(MIN_BATCH, BATCH_NS / per_op)))
    row.seq = [row.items[i % len(row.items)] for i in range(n)]


async def time_rows(rows: list[Row], rounds: int) -> None:
    for row in rows:
        await calibrate(row)
    rng = random.Random(1)
    order = list(rows)
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            rng.shuffle(order)
            for row in order:
                ns = await row.batch(row.seq)
                row.samples.append(ns / len(row.seq))
                if row.settle is not None:
                    await row.settle()
                await asyncio.sleep(0)
    finally:
        gc.enable()


# ------------------------------------------------------------- bytes/entry
CHECK_ENTRIES = 20_000  # entries of the Cache.set vs replica fill cross-check


async def _cache_bytes(
    keys: list[str], values: list[str], ttl: float | None, public: bool
) -> dict[str, Any]:
    """Traced bytes of a memory-backend Cache before and after holding ``keys``.

    ``public``: fill with ``await cache.set``; else with the replica write that
    ``Cache.set`` ends in (``replica.set(key, value, now, expires)``). Both leave
    the same structure at rest; the replica fill allocates far fewer transient
    objects, which tracemalloc makes expensive (see the module doc).
    """
    cache = Cache(backend="memory", max_size=None, default_ttl=ttl)
    out: dict[str, Any] = {}
    base = tracemalloc.get_traced_memory()[0]
    async with cache:
        await asyncio.sleep(0.01)
        gc.collect()
        empty = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        replica = cache._replica
        assert replica is not None
        expiries = Expiries()  # as Cache.set: the writes of one millisecond share one
        gc.disable()
        for start in range(0, len(keys), 1000):
            stop = min(start + 1000, len(keys))
            if public:
                for i in range(start, stop):
                    await cache.set(keys[i], values[i])
            else:
                for i in range(start, stop):  # the clock and expiry per write, as Cache.set
                    now = time.time()
                    expires = None if ttl is None else expiries.at(now, ttl)
                    replica.set(keys[i], values[i], now, expires)
            await asyncio.sleep(0)  # let the runtime drop the queued deltas
        gc.enable()
        await asyncio.sleep(0.01)
        gc.collect()
        after, peak = tracemalloc.get_traced_memory()
        assert cache._tier.count == len(keys)
        e = cache._entries[keys[-1]]
        # Writes of one millisecond share an expiry object: its cost per entry.
        floats = {id(x.expires): x.expires for x in cache._entries.values()}.values()
        out["anatomy"] = {
            "entry_object": sys.getsizeof(e) + (16 if gc.is_tracked(e) else 0),
            "stamp_int": sys.getsizeof(e.ts),
            "expiry_float": sum(sys.getsizeof(x) for x in floats if x is not None) / len(keys),
        }
    n = len(keys)
    out.update(
        empty_bytes=empty - base,
        bytes_per_entry=(after - empty) / n,
        peak_bytes_per_entry=(peak - empty) / n,
    )
    return out


def memory_worker(variant: str, entries: int) -> dict[str, Any]:
    """Traced bytes per entry of one cache variant (runs in a fresh process)."""
    keys = [f"key:{i:09d}" for i in range(entries)]
    values = [str_value(i) for i in range(entries)]
    gc.collect()
    tracemalloc.start()
    out: dict[str, Any] = {"variant": variant, "entries": entries}
    t0 = time.perf_counter()
    if variant in ("cachetools LRUCache", "cachetools TTLCache"):
        import cachetools

        base = tracemalloc.get_traced_memory()[0]
        c: Any = (
            cachetools.LRUCache(maxsize=entries)
            if variant == "cachetools LRUCache"
            else cachetools.TTLCache(maxsize=entries, ttl=TTL)
        )
        empty = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for k, v in zip(keys, values, strict=True):
            c[k] = v
        gc.collect()
        after, peak = tracemalloc.get_traced_memory()
        assert len(c) == entries
        out.update(
            empty_bytes=empty - base,
            bytes_per_entry=(after - empty) / entries,
            peak_bytes_per_entry=(peak - empty) / entries,
        )
    else:
        ttl = TTL if variant == "Cache memory, TTL" else None
        loop = new_event_loop()
        try:
            few_keys, few_values = keys[:CHECK_ENTRIES], values[:CHECK_ENTRIES]
            check = {
                how: loop.run_until_complete(
                    _cache_bytes(few_keys, few_values, ttl, public=how == "cache_set")
                )["bytes_per_entry"]
                for how in ("cache_set", "replica_set")
            }
            gc.collect()
            out.update(loop.run_until_complete(_cache_bytes(keys, values, ttl, public=False)))
        finally:
            loop.close()
        out["fill_check"] = {"entries": CHECK_ENTRIES, **check}
    tracemalloc.stop()
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def measure_memory(entries: int) -> list[dict[str, Any]]:
    """Run one fresh process per variant, two at a time (longest first)."""
    shown = ["Cache memory", "Cache memory, TTL", "cachetools LRUCache", "cachetools TTLCache"]
    longest_first = [
        "cachetools TTLCache",
        "Cache memory, TTL",
        "Cache memory",
        "cachetools LRUCache",
    ]

    def run(variant: str) -> dict[str, Any]:
        cmd = [sys.executable, __file__, "--memory-worker", variant, "--entries", str(entries)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"memory worker {variant!r} failed:\n{proc.stderr}")
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(longest_first, pool.map(run, longest_first), strict=True))
    return [results[v] for v in shown]


# ----------------------------------------------------------------- profile
async def profile_paths(path: Path) -> None:
    """cProfile the crdtcache hit and set paths; write the summaries to ``path``."""
    out = io.StringIO()
    data = dataset("")
    async with Cache(backend="memory") as cache:
        for kind in ("str", "dict"):
            for k, v in data[kind]:
                await cache.set(k, v)
        for kind in ("str", "dict"):
            keys = [k for k, _ in data[kind]] * 100
            pairs = list(data[kind]) * 50
            for what, coro in (
                (f"await Cache.get, {kind} value, {len(keys)} hits", async_get(cache.get)(keys)),
                (
                    f"await Cache.set, {kind} value, {len(pairs)} writes",
                    async_set(cache.set)(pairs),
                ),
            ):
                prof = cProfile.Profile()
                prof.enable()
                await coro
                prof.disable()
                out.write(f"==== {what} (memory backend)\n")
                pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(14)
                await asyncio.sleep(0)
    path.write_text(out.getvalue())


# ------------------------------------------------------------------ output
def fmt_ns(ns: float | None) -> str:
    if ns is None or ns != ns:
        return "-"
    if ns < 10_000:
        return f"{ns:,.0f} ns"
    return f"{ns / 1000:,.1f} us"


def fmt_x(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}x" if x < 0.1 else f"{x:.2f}x" if x < 100 else f"{x:.0f}x"


def summarize(rows: list[Row]) -> dict[str, dict[str, dict[str, Any]]]:
    res: dict[str, dict[str, dict[str, Any]]] = {"get": {}, "set": {}}
    for row in rows:
        res[row.section].setdefault(row.label, {})[row.kind] = {
            "median_ns": statistics.median(row.samples),
            "p99_batch_ns": percentile(row.samples, 0.99),
            "min_batch_ns": min(row.samples),
            "batches": len(row.samples),
            "ops_per_batch": len(row.seq),
            "fresh_copy": {"fresh": True, "alias": False}.get(row.copy),
        }
    for section, base_lru, base_redis in (
        ("get", "cachetools LRUCache.get", "redis-py async GET"),
        ("set", "cachetools LRUCache[k] = v", "redis-py async SET"),
    ):
        for kinds in res[section].values():
            for kind, r in kinds.items():
                lru = res[section].get(base_lru, {}).get(kind)
                rds = res[section].get(base_redis, {}).get(kind)
                r["x_lru"] = r["median_ns"] / lru["median_ns"] if lru else None
                r["x_redis"] = r["median_ns"] / rds["median_ns"] if rds else None
    return res


def print_section(title: str, table: dict[str, dict[str, Any]], order: list[str]) -> None:
    head = f"{'':44} | {'str value':^36} | {'small dict value':^44}"
    sub = (
        f"{title:44} | {'median':>9} {'p99':>9} {'xLRU':>7} {'xRedis':>7} |"
        f" {'median':>9} {'p99':>9} {'xLRU':>7} {'xRedis':>7} {'copy':>5}"
    )
    print(head)
    print(sub)
    print("-" * len(sub))
    for label in order:
        kinds = table[label]
        cells = []
        for kind in ("str", "dict"):
            r = kinds.get(kind)
            if r is None:
                cells.append(f"{'':>9} {'':>9} {'':>7} {'':>7}")
                continue
            cells.append(
                f"{fmt_ns(r['median_ns']):>9} {fmt_ns(r['p99_batch_ns']):>9}"
                f" {fmt_x(r['x_lru']):>7} {fmt_x(r['x_redis']):>7}"
            )
        copy = kinds.get("dict", {}).get("fresh_copy")
        flag = {True: "fresh", False: "alias", None: ""}[copy]
        print(f"{label:44} | {cells[0]} | {cells[1]} {flag:>5}")
    print()


def verdicts(res: dict[str, Any]) -> list[dict[str, Any]]:
    get = res["timing"]["get"]
    out = []
    lru = get["cachetools LRUCache.get"]["str"]["median_ns"]
    for label, must, goal, unit in (
        ("await Cache.get (memory)", TARGETS["get_must_ns"], TARGETS["get_goal_ns"], "ns"),
        (
            "SyncCache.get (memory)",
            TARGETS["sync_get_must_ns"],
            TARGETS["sync_get_goal_x_lru"] * lru,
            f"ns (goal = 2 x LRUCache.get {lru:.0f} ns)",
        ),
    ):
        for kind in ("str", "dict"):
            v = get[label][kind]["median_ns"]
            out.append(
                {
                    "figure": f"{label}, {kind} value, median",
                    "value": v,
                    "must": must,
                    "goal": goal,
                    "unit": unit,
                    "must_met": v <= must,
                    "goal_met": v <= goal,
                }
            )
    for m in res.get("memory", []):
        if m["variant"].startswith("Cache"):
            v = m["bytes_per_entry"]
            out.append(
                {
                    "figure": f"overhead per entry, {m['variant']}",
                    "value": v,
                    "must": TARGETS["overhead_must_bytes"],
                    "goal": TARGETS["overhead_goal_bytes"],
                    "unit": "bytes",
                    "must_met": v <= TARGETS["overhead_must_bytes"],
                    "goal_met": v <= TARGETS["overhead_goal_bytes"],
                }
            )
    return out


def print_report(res: dict[str, Any], rows: list[Row]) -> None:
    order = {
        s: list(dict.fromkeys(r.label for r in rows if r.section == s)) for s in ("get", "set")
    }
    print_section("GET, local hit (per op)", res["timing"]["get"], order["get"])
    print_section("SET (caller's wait, per op)", res["timing"]["set"], order["set"])
    if res.get("memory"):
        lru = next(m for m in res["memory"] if m["variant"] == "cachetools LRUCache")
        print(
            f"{'Bytes per entry (beyond key and value)':44} | {'entries':>9} {'at rest':>9}"
            f" {'xLRU':>7} {'peak':>9}"
        )
        print("-" * 86)
        for m in res["memory"]:
            print(
                f"{m['variant']:44} | {m['entries']:>9,} {m['bytes_per_entry']:>9.1f}"
                f" {fmt_x(m['bytes_per_entry'] / lru['bytes_per_entry']):>7}"
                f" {m['peak_bytes_per_entry']:>9.1f}"
            )
        for m in res["memory"]:
            if "anatomy" in m:
                a = m["anatomy"]
                rest = m["bytes_per_entry"] - sum(a.values())
                print(
                    f"  {m['variant']}: Entry object {a['entry_object']} B (with any GC"
                    f" header), stamp int {a['stamp_int']} B, expiry float"
                    f" {a['expiry_float']:.1f} B, rest (dict slot, bookkeeping) {rest:.1f} B"
                )
                fc = m["fill_check"]
                gap = abs(fc["cache_set"] - fc["replica_set"])
                print(
                    f"    fill check at {fc['entries']:,} entries: await Cache.set"
                    f" {fc['cache_set']:.1f} B, replica fill {fc['replica_set']:.1f} B"
                    + ("" if gap <= 2 else "  <-- MISMATCH: the 1M figure may be off")
                )
        print()
    print("SPEC section 4 targets")
    for v in res["verdicts"]:
        unit = v["unit"].split(" ", 1)
        note = f" {unit[1]}" if len(unit) > 1 else ""
        print(
            f"  {v['figure']:55} {v['value']:8.1f} {unit[0]:5}  must <= {v['must']:.0f}:"
            f" {'met' if v['must_met'] else 'NOT met':7}  goal <= {v['goal']:.0f}:"
            f" {'met' if v['goal_met'] else 'NOT met':7}{note}"
        )


async def run_timing(args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    loop = asyncio.get_running_loop()
    meta: dict[str, Any] = {"loop": type(loop).__module__.split(".")[0]}
    peers: list[PeerProcess] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            rows = await build_rows(stack, peers)
            t0 = time.perf_counter()
            await time_rows(rows, args.rounds)
            meta["timing_seconds"] = round(time.perf_counter() - t0, 1)
    finally:
        for peer in peers:
            peer.close()
    if args.profile:
        await profile_paths(RESULTS / "local_ops_profile.txt")
    return rows, meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (~30 s)")
    parser.add_argument("--rounds", type=int, help="timed batches per row (default 500, quick 100)")
    parser.add_argument("--entries", type=int, help="entries for bytes/entry (1M, quick 200k)")
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's default loop")
    parser.add_argument("--no-memory", action="store_true", help="skip bytes per entry")
    parser.add_argument("--profile", action="store_true", help="write cProfile summaries")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, args.entries)))
        return
    args.rounds = args.rounds or (100 if args.quick else 500)
    args.entries = args.entries or (200_000 if args.quick else 1_000_000)
    RESULTS.mkdir(exist_ok=True)
    started = time.perf_counter()
    load0 = os.getloadavg()
    print(
        f"crdtcache local ops: python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average {load0[0]:.2f}, {args.rounds} batches per row"
    )
    loop = new_event_loop(use_uvloop=not args.no_uvloop)
    try:
        rows, meta = loop.run_until_complete(run_timing(args))
    finally:
        loop.close()
    res: dict[str, Any] = {
        "meta": {
            **meta,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "quick": args.quick,
            "rounds": args.rounds,
            "keys_per_kind": NKEYS,
            "batch_target_ns": BATCH_NS,
            "loadavg_start": load0,
        },
        "targets": TARGETS,
        "timing": summarize(rows),
    }
    if not args.no_memory:
        t0 = time.perf_counter()
        res["memory"] = measure_memory(args.entries)
        res["meta"]["memory_seconds"] = round(time.perf_counter() - t0, 1)
    res["verdicts"] = verdicts(res)
    res["meta"]["loadavg_end"] = os.getloadavg()
    res["meta"]["seconds"] = round(time.perf_counter() - started, 1)
    print(
        f"loop {meta['loop']}; median and p99 of per-batch mean ns/op; copy: dict value "
        "returned fresh or aliased\n"
    )
    print_report(res, rows)
    print(f"\n{res['meta']['seconds']} s; load average at end {res['meta']['loadavg_end'][0]:.2f}")
    (RESULTS / "local_ops.json").write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {RESULTS / 'local_ops.json'}")


if __name__ == "__main__":
    main()
