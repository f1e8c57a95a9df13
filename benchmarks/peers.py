"""crdtcache next to the peers a user would pick instead, in one run, as ratios.

Every figure is taken in the same run as the peer figure it is set against, on the same
machine, so that the ratio survives what else the machine is doing (the absolute
figures do not: the load average is printed). Ratios are always crdtcache / peer; the
``better`` column says whether lower (times, bytes) or higher (rates) wins.

What is measured
----------------
1. **Local reads** (this process, one event loop: uvloop if installed). ``SyncCache.get``
   and ``await Cache.get`` (``backend="memory"``) of a 32-char ``str``, a flat dict
   (scalars only) and a nested dict (crdtcache hands out a fresh copy of a dict), next to
   cachetools ``LRUCache.get`` (the very object stored: aliased), ``LRUCache.get`` +
   ``pickle.loads`` (a fresh copy, as crdtcache gives) and **Redis client-side
   caching**: redis-py's own ``cache_config=CacheConfig(...)`` over RESP3 (``CLIENT
   TRACKING``), against a private ``redis-server`` started on a free loopback port,
   every key read once beforehand so that each timed read is a local hit (the dicts are
   stored as JSON, so that row pays ``json.loads``). redis-py refuses servers below 7.4
   for client-side caching; with an older server (tracking exists since 6.0) the
   benchmark lifts that version gate and says so. Timing as in ``local_ops.py``:
   batches of about 0.25 ms, rows in a new random order every round, the collector off
   during a batch; the figure is the median over batches of the mean ns per read.
   (``overhead``) **Sync overhead**: ``await cache.set`` on a p2p node replicating to two
   peers (their own processes; write-behind) against the same call on
   ``backend="memory"`` in the same worker, alternating rounds, writes in batches of 50
   back to back, 2 ms apart (so that write-behind flushes between them): the seed's
   "sync overhead under 5 %" as p50 and p99 over the batches' mean per write.
2. **Visibility on N instances, each its own OS process** (N = 2 and 5). Instance A
   writes ``--writes`` times, open-loop (a gap drawn from 4-12 ms before each write);
   each other instance stamps ``time.monotonic()`` (one system-wide clock on Linux)
   when the write became visible there; a write's figure is the latest stamp over the
   N - 1 others minus the stamp taken just before the write call. Systems:

   * crdtcache p2p, ``write-behind`` and ``write-through``: nodes wired by ``seeds=``
     (``discovery="none"``), each write a new key ``vis:i``; an observer stamps in its
     ``cache.on("set")`` callback (a remote change, called in the loop step that made
     it readable) and afterwards checks ``await cache.get`` returns the value.
   * Redis pub/sub (the floor of any Redis-based invalidation): ``PUBLISH`` -> every
     subscriber received the message.
   * Redis client-side caching: every observer holds the key ``vis`` in its redis-py
     cache; A ``SET``s it; an observer waits for its connection's socket to turn
     readable (the invalidation push), calls ``get`` (which applies the push, misses
     and reads the new value from the server) and stamps when that returns the new
     value. A 5 ms select timeout bounds a push that was read while a reply was
     pending.
   * NATS JetStream KV (nats-py) on a private ``nats-server -js`` (free loopback port,
     its own store directory; file storage, history 1): A ``put``s ``vis.i``, every
     other instance ``watch``es ``vis.*``.

3. **Replicated throughput A -> B** (two processes): A writes ``--updates`` distinct
   keys as fast as it can, then a sentinel; rate = updates / (B saw the sentinel - A
   began). crdtcache write-behind (``await cache.set``, yielding every 1000), NATS KV
   ``put`` (500 in flight at a time; B watches ``tp.*``), and redis-py pipelined
   ``SET`` (pipelines of 1000; Redis holds the data, so B can read it once the last
   pipeline is acknowledged: the figure ends there).
4. **Memory per entry**: a fresh process per variant builds the key and value strings
   (32 chars) first, then starts ``tracemalloc``, builds the empty cache and inserts
   ``--entries`` (200,000) entries, through the public ``await cache.set`` for
   crdtcache: (traced bytes after - traced bytes of the empty cache) / entries, so the
   keys and values themselves are not counted. ``Cache(backend="memory",
   max_size=entries)`` without and with a TTL, cachetools ``LRUCache`` and
   ``TTLCache``.
5. **Restart**: a p2p node with ``persist_path`` is filled with 100,000 entries and
   closed; a fresh process then constructs a new ``Cache`` on the same file: time to
   ``start()`` returning, and to the first successful ``get`` of a persisted key. The
   Redis client-side cache starts empty: a fresh process connects and reads one key
   (time to first read), then reads the 100,000 keys once (re-warm).
6. **Catch-up bytes**: node B (with ``persist_path``) joins A holding 100,000 keys
   (the bytes it receives: a full re-warm), is closed, A overwrites 1 % of the keys,
   B restarts on its file and catches up; bytes are B's
   ``get_statistics().traffic.bytes_received`` at the moment every changed key holds
   its new value (and 1.5 s later, to show anti-entropy rounds after it). Beside it:
   the bytes the private Redis sent and received while the client-side cache re-warmed
   the same 100,000 keys (``INFO stats``).

A peer that is not installed or cannot start is skipped, and the output says why. Each
section runs under a time budget; a section that overruns is reported as such.

Run ``python benchmarks/peers.py`` (full, under 10 minutes on 2 cores) or ``--quick``
(under 2 minutes); ``--only`` picks sections; ``--no-uvloop`` uses asyncio's loop.
Writes ``benchmarks/results/peers.json``, ``peers.md`` (the table),
``peers_visibility.png`` (latency CDFs) and ``peers_ratios.png`` (a bar per ratio). The
private servers and every worker process are stopped on the way out, also on Ctrl-C
or SIGTERM (and, on Linux, when this process dies: they get SIGTERM from the kernel).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import os
import pickle
import platform
import random
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import crdtcache
from crdtcache import Cache, PeerError, SyncCache
from crdtcache.cache._options import SyncStrategy

HERE = Path(__file__).resolve()
RESULTS = HERE.parent / "results"
HOST = "127.0.0.1"
NKEYS = 1000  # keys per value kind in the local-read rows
BATCH_NS = 250_000  # target duration of one timed batch
MIN_BATCH, MAX_BATCH = 5, 20_000
VIS_GAP = (0.004, 0.012)  # open-loop gap before each visibility write, seconds
TP_BATCH = 1000  # crdtcache writer yields to its loop every TP_BATCH writes
NATS_INFLIGHT = 500  # NATS KV puts in flight at a time in the throughput run
REDIS_PIPELINE = 1000
TTL = 3600.0
SECTIONS = ("reads", "overhead", "visibility", "throughput", "memory", "restart", "catchup")

T = TypeVar("T")
clock = time.monotonic
perf_ns = time.perf_counter_ns
log = logging.getLogger("peers")


# ------------------------------------------------------------------ data
def str_value(i: int) -> str:
    return f"value-{i:08d}-".ljust(32, "x")


def flat_value(i: int) -> dict[str, Any]:
    # Flat: every value immutable (a list inside would make it nested, decoded per read).
    return {"id": i, "name": f"user-{i}", "active": True, "score": 12.5, "group": "staff"}


def nested_value(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "profile": {
            "name": f"user-{i}",
            "email": f"user{i}@example.com",
            "address": {"city": "Lyon", "zip": "69001", "geo": [45.76, 4.83]},
        },
        "roles": ["reader", "writer"],
        "prefs": {"theme": "dark", "langs": ["en", "fr"], "notify": {"email": True, "sms": False}},
        "orders": [
            {"id": 1, "total": 9.5, "items": ["a", "b"]},
            {"id": 2, "total": 3.0, "items": ["c"]},
        ],
    }


KINDS: dict[str, Callable[[int], Any]] = {
    "str": str_value,
    "flat dict": flat_value,
    "nested dict": nested_value,
}


def versioned(version: int, i: int) -> str:
    """The 32-char value of key ``i`` at ``version`` (restart and catch-up runs)."""
    return f"v{version}-{i:08d}-".ljust(32, "x")


def percentile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def run_loop(main: Coroutine[Any, Any, T], use_uvloop: bool) -> T:
    """Run a coroutine on uvloop when asked and installed, else on asyncio's loop."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            result: T = uvloop.run(main)
            return result
    return asyncio.run(main)


# ------------------------------------------------------ child processes
try:
    _LIBC: Any = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
except OSError:  # pragma: no cover - no libc to load
    _LIBC = None


def _die_with_parent() -> None:
    """In a child, before exec: SIGTERM from the kernel when this process dies (Linux)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class PrivateServer:
    """A server process of our own on a free loopback port, with a scratch directory."""

    name = "server"

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = 0
        self.dir: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 10.0) -> None:
        self.dir = tempfile.mkdtemp(prefix=f"crdtcache-peers-{self.name}-")
        for _ in range(3):  # the free port may be taken before the server binds it
            self.port = free_port()
            with open(Path(self.dir) / "server.log", "ab") as logf:
                self.proc = subprocess.Popen(
                    self.argv(),
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches us, and we stop it
                    preexec_fn=_die_with_parent,
                )
            deadline = clock() + timeout
            while clock() < deadline and self.proc.poll() is None:
                if self.ready():
                    return
                time.sleep(0.05)
            self._kill()
        raise RuntimeError(f"{self.name} did not start: {self.log_tail()}")

    def log_tail(self) -> str:
        if self.dir is None:
            return ""
        with contextlib.suppress(OSError):
            return (Path(self.dir) / "server.log").read_text(errors="replace")[-600:]
        return ""

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        self._kill()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


class RedisServer(PrivateServer):
    name = "redis"

    def argv(self) -> list[str]:
        assert self.dir is not None
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir,
            "--daemonize",
            "no",
        ]

    def ready(self) -> bool:
        import redis

        try:
            with redis.Redis(host=HOST, port=self.port, socket_timeout=0.5) as r:
                return bool(r.ping())
        except redis.RedisError:
            return False

    def version(self) -> str:
        import redis

        with redis.Redis(host=HOST, port=self.port) as r:
            return str(r.info("server")["redis_version"])


class NatsServer(PrivateServer):
    name = "nats"

    def argv(self) -> list[str]:
        assert self.dir is not None
        store = str(Path(self.dir) / "js")
        return [self.binary, "-js", "-a", HOST, "-p", str(self.port), "-sd", store]

    def ready(self) -> bool:
        return "Server is ready" in self.log_tail() and _tcp_open(self.port)


def _tcp_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        try:
            s.connect((HOST, port))
        except OSError:
            return False
    return True


# ------------------------------------------------- redis client-side caching
def csc_support(server_version: str | None) -> tuple[bool, str]:
    """Whether redis-py's client-side caching can run on this server, and a note."""
    try:
        import redis
        from redis.cache import CacheConfig  # noqa: F401 - redis-py >= 5.1
        from redis.connection import CacheProxyConnection
    except ImportError:
        return False, "the installed redis-py has no client-side caching (needs >= 5.1)"
    if server_version is None:
        return False, "no Redis server"
    have = tuple(int(x) for x in server_version.split(".")[:3])
    if have < (6, 0):
        return False, f"Redis {server_version} has no CLIENT TRACKING (needs 6.0)"
    gate = str(getattr(CacheProxyConnection, "MIN_ALLOWED_VERSION", "0"))
    if have < tuple(int(x) for x in gate.split(".")):
        return True, (
            f"redis-py {redis.__version__} refuses client-side caching below Redis {gate}; "
            f"gate lifted for Redis {server_version} (RESP3 CLIENT TRACKING exists since 6.0)"
        )
    return True, f"redis-py {redis.__version__}, Redis {server_version}"


def enable_csc(server_version: str) -> None:
    """Let redis-py's client-side caching talk to this server (see :func:`csc_support`)."""
    from redis.connection import CacheProxyConnection

    gate = str(getattr(CacheProxyConnection, "MIN_ALLOWED_VERSION", "0"))
    have = tuple(int(x) for x in server_version.split(".")[:3])
    if have < tuple(int(x) for x in gate.split(".")):
        CacheProxyConnection.MIN_ALLOWED_VERSION = server_version


def csc_client(port: int, max_size: int) -> Any:
    import redis
    from redis.cache import CacheConfig

    return redis.Redis(
        host=HOST,
        port=port,
        protocol=3,
        cache_config=CacheConfig(max_size=max_size),
        decode_responses=True,
    )


def csc_socket(client: Any) -> socket.socket | None:
    """The socket under a client-side-caching client's one connection, if reachable."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        inner = getattr(conn, "_conn", conn)
        sock = getattr(inner, "_sock", None)
        return sock if isinstance(sock, socket.socket) else None
    finally:
        pool.release(conn)


# ------------------------------------------------------------- local reads
@dataclass
class ReadRow:
    """One timed read: label, value kind, batch runner, keys and per-batch ns/op."""

    label: str
    kind: str
    fn: Callable[[str], Any]  # one read
    run: Callable[[list[str]], Any]  # a timed batch of reads
    is_async: bool
    keys: list[str]
    seq: list[str] = field(default_factory=list)
    samples: list[float] = field(default_factory=list)

    async def batch(self, seq: list[str]) -> int:
        result = self.run(seq)
        ns: int = await result if self.is_async else result
        return ns


def sync_reads(fn: Callable[[str], Any]) -> Callable[[list[str]], int]:
    def run(seq: list[str]) -> int:
        t0 = perf_ns()
        for k in seq:
            fn(k)
        return perf_ns() - t0

    return run


def async_reads(fn: Callable[[str], Awaitable[Any]]) -> Callable[[list[str]], Awaitable[int]]:
    async def run(seq: list[str]) -> int:
        t0 = perf_ns()
        for k in seq:
            await fn(k)
        return perf_ns() - t0

    return run


def unpickled(get: Callable[[str], Any]) -> Callable[[str], Any]:
    loads = pickle.loads

    def read(key: str) -> Any:
        return loads(get(key))

    return read


def json_loaded(get: Callable[[str], Any]) -> Callable[[str], Any]:
    loads = json.loads

    def read(key: str) -> Any:
        return loads(get(key))

    return read


async def local_reads(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    data = {
        kind: [(f"{kind.split()[0]}:{i}", make(i)) for i in range(NKEYS)]
        for kind, make in KINDS.items()
    }
    rows: list[ReadRow] = []

    def add(label: str, kind: str, fn: Callable[[str], Any], is_async: bool) -> None:
        keys = [k for k, _ in data[kind]]
        run = (async_reads if is_async else sync_reads)(fn)
        rows.append(ReadRow(label, kind, fn, run, is_async, keys))

    async with contextlib.AsyncExitStack() as stack:
        mem = Cache(backend="memory")
        await stack.enter_async_context(mem)
        sync = SyncCache(backend="memory")
        sync.start()
        stack.callback(sync.close)
        for kind, pairs in data.items():
            for k, v in pairs:
                await mem.set(k, v)
                sync.set(k, v)
            add("await Cache.get", kind, mem.get, True)
            add("SyncCache.get", kind, sync.get, False)
        if ctx.cachetools:
            import cachetools

            lru: Any = cachetools.LRUCache(maxsize=10 * NKEYS)
            pickled: Any = cachetools.LRUCache(maxsize=10 * NKEYS)
            for kind, pairs in data.items():
                for k, v in pairs:
                    lru[k] = v
                    pickled[k] = pickle.dumps(v, pickle.HIGHEST_PROTOCOL)
                add("cachetools LRUCache.get", kind, lru.get, False)
                if kind != "str":
                    add("LRUCache.get + pickle.loads", kind, unpickled(pickled.get), False)
        if ctx.csc_ok:
            import redis

            assert ctx.redis is not None
            enable_csc(ctx.redis_version or "0")
            plain = redis.Redis(host=HOST, port=ctx.redis.port)
            stack.callback(plain.close)
            client = csc_client(ctx.redis.port, max_size=10 * NKEYS)
            stack.callback(client.close)
            for kind, pairs in data.items():
                pipe = plain.pipeline(transaction=False)
                for k, v in pairs:
                    pipe.set(k, v if kind == "str" else json.dumps(v))
                pipe.execute()
                for k, _ in pairs:
                    client.get(k)  # cached and tracked from now on
                get = client.get
                if kind == "str":
                    add("Redis CSC GET", kind, get, False)
                else:
                    add("Redis CSC GET + json.loads", kind, json_loaded(get), False)
            cached = client.get_cache().size
            if cached < 3 * NKEYS:
                ctx.note(f"redis CSC cached only {cached} of {3 * NKEYS} keys")

        # Each row must return the stored value (a fresh copy or not) before it is timed.
        expected = {k: v for pairs in data.values() for k, v in pairs}
        for row in rows:
            k = row.keys[7]
            value = await row.fn(k) if row.is_async else row.fn(k)
            if value != expected[k]:
                raise AssertionError(f"{row.label} ({row.kind}) returned {value!r}")
        await time_reads(rows, args.rounds)
    out: dict[str, Any] = {}
    for row in rows:
        out.setdefault(row.label, {})[row.kind] = {
            "median_ns": statistics.median(row.samples),
            "p99_batch_ns": percentile(row.samples, 0.99),
            "batches": len(row.samples),
            "ops_per_batch": len(row.seq),
        }
    return out


async def time_reads(rows: list[ReadRow], rounds: int) -> None:
    rng = random.Random(1)
    for row in rows:  # size each row's batch to about BATCH_NS
        probe = row.keys[: min(50, len(row.keys))]
        await row.batch(probe)
        per_op = max(1.0, await row.batch(probe) / len(probe))
        n = int(min(MAX_BATCH, max(MIN_BATCH, BATCH_NS / per_op)))
        row.seq = [row.keys[(i * 7) % len(row.keys)] for i in range(n)]
        await row.batch(row.seq)
    for _ in range(rounds):
        order = rows[:]
        rng.shuffle(order)
        for row in order:
            gc.disable()
            try:
                ns = await row.batch(row.seq)
            finally:
                gc.enable()
            row.samples.append(ns / len(row.seq))
            await asyncio.sleep(0)


# ------------------------------------------------------------------ worker
async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


class Agent:
    """What one worker process does: every public coroutine is a command."""

    def __init__(self) -> None:
        self.stack = contextlib.AsyncExitStack()
        self.cache: Cache | None = None
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.thread_error: str | None = None
        self.clients: dict[str, Any] = {}
        self.csc_mode = ""
        self._watch(0)
        self._tp_reset()

    # ------------------------------------------------------------ state
    def _watch(self, count: int) -> None:
        self.seen: list[float | None] = [None] * count
        self.seen_count = 0
        self.done = asyncio.Event()

    def _saw(self, i: int, t: float) -> None:
        if 0 <= i < len(self.seen) and self.seen[i] is None:
            self.seen[i] = t
            self.seen_count += 1
            if self.seen_count == len(self.seen):
                self.done.set()

    def _tp_reset(self) -> None:
        self.tp_first: float | None = None
        self.tp_done_at: float | None = None
        self.tp_count = 0
        self.tp_done = asyncio.Event()

    def _tp_event(self, end: bool) -> None:
        t = clock()
        if self.tp_first is None:
            self.tp_first = t
        self.tp_count += 1
        if end and self.tp_done_at is None:
            self.tp_done_at = t
            self.tp_done.set()

    def _on_set(self, event: crdtcache.CacheEvent) -> None:
        key = event.key
        if not event.remote or key is None:
            return
        if key.startswith("vis:"):
            self._saw(int(key[4:]), clock())
        elif key.startswith("tp:"):
            self._tp_event(key == "tp:end")

    async def reset(self) -> bool:
        """Close everything this worker holds: caches, clients, tasks, threads."""
        if self.thread is not None:
            self.stop.set()
            await asyncio.to_thread(self.thread.join, 5.0)
            self.thread = None
        stack, self.stack = self.stack, contextlib.AsyncExitStack()
        await stack.aclose()
        self.cache = None
        self.clients = {}
        self.stop = threading.Event()
        self.thread_error = None
        self._watch(0)
        self._tp_reset()
        return True

    # -------------------------------------------------------- crdtcache
    async def crdt_start(
        self,
        cluster: str,
        strategy: SyncStrategy = "write-behind",
        seeds: Sequence[str] = (),
        max_size: int = 10_000,
        persist_path: str | None = None,
        node_id: str | None = None,
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        cache = Cache(
            backend="p2p",
            discovery="none",
            listen=f"{HOST}:0",
            cluster=cluster,
            seeds=list(seeds),
            sync_strategy=strategy,
            max_size=max_size,
            persist_path=persist_path,
            node_id=node_id,
        )
        cache.on("set", self._on_set)
        await cache.start()
        start_s = time.perf_counter() - t0
        self.stack.push_async_callback(cache.close)
        self.cache = cache
        return {"address": cache.address, "start_s": start_s, "node_id": cache.node_id}

    async def memory_start(self) -> bool:
        """A ``backend="memory"`` cache (the baseline of the sync overhead), set up as
        :meth:`crdt_start` sets up a p2p one (its ``set`` listener included)."""
        cache = Cache(backend="memory", max_size=1_000_000)
        cache.on("set", self._on_set)
        await cache.start()
        self.stack.push_async_callback(cache.close)
        self.cache = cache
        return True

    async def set_times(self, count: int, gap_ms: float, batch: int = 50) -> list[float]:
        """Microseconds per ``await cache.set``: the mean of each batch of ``batch``
        back-to-back writes, batches ``gap_ms`` apart (the loop then sends them).

        Back to back because a write right after the loop woke from a sleep pays for
        cold CPU caches, which swamps what is measured here; the gap lets write-behind
        flush between batches, as a real caller's other work would.
        """
        assert self.cache is not None
        cache = self.cache
        value = str_value(0)
        keys = [f"ov:{i}" for i in range(count)]
        out: list[float] = []
        for start in range(0, count, batch):
            await asyncio.sleep(gap_ms / 1000)
            t0 = perf_ns()
            for key in keys[start : start + batch]:
                await cache.set(key, value)
            out.append((perf_ns() - t0) / 1000 / len(keys[start : start + batch]))
        return out

    async def crdt_wait(self, peers: int, timeout: float = 20.0) -> int:
        assert self.cache is not None
        return await self.cache.wait_for_peers(peers, timeout=timeout)

    async def crdt_close(self) -> bool:
        """Close the node (flushing its file) and forget it."""
        cache, self.cache = self.cache, None
        if cache is not None:
            await cache.close()
        return True

    async def traffic(self) -> dict[str, Any]:
        assert self.cache is not None
        stats = await self.cache.get_statistics()
        return {**asdict(stats.traffic), "held": stats.local.size}

    async def fill(self, prefix: str, count: int, version: int = 0, step: int = 1) -> float:
        assert self.cache is not None
        cache = self.cache
        t0 = time.perf_counter()
        for n, i in enumerate(range(0, count, step)):
            await cache.set(f"{prefix}:{i}", versioned(version, i))
            if n % TP_BATCH == TP_BATCH - 1:
                await asyncio.sleep(0)
        return time.perf_counter() - t0

    async def wait_held(self, count: int, timeout: float) -> dict[str, Any]:
        """Wait until this node holds ``count`` values; its traffic at that moment."""
        assert self.cache is not None
        t0 = clock()
        held = 0
        while clock() - t0 < timeout:
            held = (await self.cache.get_statistics()).local.size
            if held >= count:
                break
            await asyncio.sleep(0.1)
        return {"seconds": clock() - t0, "held": held, **(await self.traffic())}

    async def wait_values(
        self, prefix: str, count: int, step: int, version: int, timeout: float
    ) -> dict[str, Any]:
        """Wait until keys ``range(0, count, step)`` hold ``version``; traffic then."""
        assert self.cache is not None
        cache = self.cache
        pending = {f"{prefix}:{i}": versioned(version, i) for i in range(0, count, step)}
        t0 = clock()
        while pending and clock() - t0 < timeout:
            for k, v in list(pending.items()):
                if await cache.get(k) == v:
                    del pending[k]
            if pending:
                await asyncio.sleep(0.005)
        return {"seconds": clock() - t0, "missing": len(pending), **(await self.traffic())}

    async def restart_fill(self, path: str, node_id: str, count: int) -> dict[str, Any]:
        await self.crdt_start(
            f"restart-{node_id}", persist_path=path, node_id=node_id, max_size=count + 10
        )
        fill_s = await self.fill("rs", count)
        t0 = time.perf_counter()
        await self.crdt_close()
        close_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in Path(path).parent.glob(Path(path).name + "*"))
        return {"fill_s": fill_s, "close_s": close_s, "file_bytes": size}

    async def restart_open(self, path: str, node_id: str, count: int) -> dict[str, Any]:
        key, want = f"rs:{count // 2}", versioned(0, count // 2)
        t0 = time.perf_counter()
        cache = Cache(
            backend="p2p",
            discovery="none",
            listen=f"{HOST}:0",
            cluster=f"restart-{node_id}",
            persist_path=path,
            node_id=node_id,
            max_size=count + 10,
        )
        await cache.start()
        t1 = time.perf_counter()
        try:
            while await cache.get(key) != want and time.perf_counter() - t0 < 30:
                await asyncio.sleep(0.001)
            t2 = time.perf_counter()
            held = (await cache.get_statistics()).local.size
        finally:
            await cache.close()
        return {"start_s": t1 - t0, "first_get_s": t2 - t0, "held": held}

    # ----------------------------------------------------------- redis
    async def redis_fill(self, port: int, prefix: str, count: int) -> float:
        import redis

        t0 = time.perf_counter()
        with redis.Redis(host=HOST, port=port) as r:
            for start in range(0, count, REDIS_PIPELINE):
                pipe = r.pipeline(transaction=False)
                for i in range(start, min(count, start + REDIS_PIPELINE)):
                    pipe.set(f"{prefix}:{i}", versioned(0, i))
                pipe.execute()
        return time.perf_counter() - t0

    async def csc_warm(
        self, port: int, version: str, prefix: str, count: int, timeout: float
    ) -> dict[str, Any]:
        """Connect a client-side cache, read one key, then re-warm ``count`` keys."""
        import redis

        enable_csc(version)
        with redis.Redis(host=HOST, port=port) as plain:

            def net() -> tuple[int, int]:
                s = plain.info("stats")
                return int(s["total_net_input_bytes"]), int(s["total_net_output_bytes"])

            t0 = time.perf_counter()
            client = csc_client(port, max_size=count + 10)
            try:
                first = client.get(f"{prefix}:0")
                t1 = time.perf_counter()
                in0, out0 = net()
                read = 0
                for i in range(count):
                    client.get(f"{prefix}:{i}")
                    read += 1
                    if i % 1000 == 0 and time.perf_counter() - t0 > timeout:
                        break
                t2 = time.perf_counter()
                in1, out1 = net()
                cached = client.get_cache().size
            finally:
                client.close()
        return {
            "first_read_s": t1 - t0,
            "first_ok": first == versioned(0, 0),
            "rewarm_s": t2 - t0,
            "rewarmed": read,
            "cached": cached,
            "server_bytes_in": in1 - in0,
            "server_bytes_out": out1 - out0,
        }

    async def redis_pipelined_set(self, port: int, count: int) -> dict[str, Any]:
        import redis

        with redis.Redis(host=HOST, port=port) as r:
            cpu0 = time.process_time()
            t0 = clock()
            for start in range(0, count, REDIS_PIPELINE):
                pipe = r.pipeline(transaction=False)
                for i in range(start, min(count, start + REDIS_PIPELINE)):
                    pipe.set(f"tp:{i}", i)
                pipe.execute()
            r.set("tp:end", count)
            t1 = clock()
            cpu = time.process_time() - cpu0
            last = r.get(f"tp:{count - 1}")
        return {"start": t0, "done": t1, "cpu": cpu, "ok": last == str(count - 1).encode()}

    # ------------------------------------------------------ connections
    async def _aredis(self, port: int) -> Any:
        import redis.asyncio as aredis

        client = aredis.Redis(host=HOST, port=port)
        self.stack.push_async_callback(client.aclose)
        return client

    async def _kv(self, port: int, bucket: str, create: bool) -> Any:
        import nats

        nc = await nats.connect(f"nats://{HOST}:{port}", allow_reconnect=False)
        self.stack.push_async_callback(nc.close)
        js = nc.jetstream()
        if create:
            kv = await js.create_key_value(bucket=bucket, history=1)

            async def drop() -> None:
                with contextlib.suppress(Exception):
                    await js.delete_key_value(bucket)

            self.stack.push_async_callback(drop)
            return kv
        return await js.key_value(bucket)

    async def _watch_kv(self, kv: Any, pattern: str) -> None:
        watcher = await kv.watch(pattern)

        async def run() -> None:
            async for entry in watcher:
                t = clock()
                if entry is None:
                    continue
                key = entry.key
                if key.startswith("vis."):
                    self._saw(int(key[4:]), t)
                elif key.startswith("tp."):
                    self._tp_event(key == "tp.end")

        task = asyncio.get_running_loop().create_task(run())
        self.stack.push_async_callback(_cancel, task)
        self.stack.push_async_callback(watcher.stop)

    # ------------------------------------------------------ visibility
    async def vis_prepare(self, system: str, port: int = 0, bucket: str = "") -> bool:
        """The writer's connections (before the observers start)."""
        if system == "redis-pubsub":
            self.clients["w"] = await self._aredis(port)
        elif system == "redis-csc":
            self.clients["w"] = await self._aredis(port)
            await self.clients["w"].set("vis", -1)
        elif system == "nats-kv":
            self.clients["w"] = await self._kv(port, bucket, create=True)
        return True

    async def vis_observe(
        self,
        system: str,
        count: int,
        port: int = 0,
        bucket: str = "",
        channel: str = "",
        version: str = "",
    ) -> bool:
        self._watch(count)
        if system.startswith("crdt"):
            return True  # the on("set") callback is in place since crdt_start
        if system == "redis-pubsub":
            client = await self._aredis(port)
            pubsub = client.pubsub()
            self.stack.push_async_callback(pubsub.aclose)
            await pubsub.subscribe(channel)
            deadline = clock() + 10
            while clock() < deadline:  # wait for the subscription to be confirmed
                msg = await pubsub.get_message(timeout=1.0)
                if msg is not None and msg["type"] == "subscribe":
                    break
            task = asyncio.get_running_loop().create_task(self._pubsub(pubsub))
            self.stack.push_async_callback(_cancel, task)
        elif system == "redis-csc":
            enable_csc(version)
            ready = threading.Event()
            loop = asyncio.get_running_loop()
            self.thread = threading.Thread(
                target=self._csc_observer, args=(port, ready, loop), daemon=True
            )
            self.thread.start()
            await asyncio.to_thread(ready.wait, 10.0)
            if self.thread_error:
                raise RuntimeError(self.thread_error)
        elif system == "nats-kv":
            kv = await self._kv(port, bucket, create=False)
            await self._watch_kv(kv, "vis.*")
        return True

    async def _pubsub(self, pubsub: Any) -> None:
        while True:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            t = clock()
            if msg is not None:
                self._saw(int(msg["data"]), t)

    def _csc_observer(
        self, port: int, ready: threading.Event, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Thread: wait for the invalidation push, re-read, stamp the new value."""
        client = None
        try:
            client = csc_client(port, max_size=100)
            client.get("vis")  # cached and tracked from now on
            sock = csc_socket(client)
            self.csc_mode = "select on the socket" if sock is not None else "poll every 1 ms"
            ready.set()
            last = None
            while not self.stop.is_set():
                if sock is not None:
                    select.select([sock], [], [], 0.005)
                else:
                    time.sleep(0.001)
                value = client.get("vis")
                t = clock()
                if value is not None and value != last:
                    last = value
                    loop.call_soon_threadsafe(self._saw, int(value), t)
        except Exception as exc:
            self.thread_error = f"{type(exc).__name__}: {exc}"
        finally:
            ready.set()
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()

    async def vis_write(
        self, system: str, count: int, seed: int, gap: Sequence[float], channel: str = ""
    ) -> dict[str, Any]:
        write: Callable[[int], Awaitable[Any]]
        if system.startswith("crdt"):
            cache = self.cache
            assert cache is not None
            write = lambda i: cache.set(f"vis:{i}", i)  # noqa: E731
        elif system == "redis-pubsub":
            client = self.clients["w"]
            write = lambda i: client.publish(channel, i)  # noqa: E731
        elif system == "redis-csc":
            client = self.clients["w"]
            write = lambda i: client.set("vis", i)  # noqa: E731
        else:
            kv = self.clients["w"]
            write = lambda i: kv.put(f"vis.{i}", str(i).encode())  # noqa: E731
        rng = random.Random(seed)
        sent: list[float] = []
        returned: list[float] = []
        errors = 0
        due = clock()
        for i in range(count):
            due += rng.uniform(*gap)
            await asyncio.sleep(max(0.0, due - clock()))
            t0 = clock()
            try:
                await write(i)
            except PeerError:  # write-through: a peer did not ack in time
                errors += 1
            sent.append(t0)
            returned.append(clock())
        return {"sent": sent, "returned": returned, "errors": errors}

    async def vis_collect(self, timeout: float) -> dict[str, Any]:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), timeout)
        wrong = 0
        if self.cache is not None:
            for i, t in enumerate(self.seen):
                if t is not None and await self.cache.get(f"vis:{i}") != i:
                    wrong += 1
        return {"seen": self.seen, "wrong": wrong, "csc_mode": self.csc_mode}

    # ------------------------------------------------------ throughput
    async def tp_sink(self, system: str, port: int = 0, bucket: str = "") -> bool:
        self._tp_reset()
        if system == "nats-kv":
            kv = await self._kv(port, bucket, create=False)
            await self._watch_kv(kv, "tp.*")
        return True

    async def tp_prepare(self, system: str, port: int = 0, bucket: str = "") -> bool:
        if system == "nats-kv":
            self.clients["w"] = await self._kv(port, bucket, create=True)
        return True

    async def tp_blast(self, system: str, count: int) -> dict[str, Any]:
        cpu0 = time.process_time()
        t0 = clock()
        if system == "crdt":
            cache = self.cache
            assert cache is not None
            for i in range(count):
                await cache.set(f"tp:{i}", i)
                if i % TP_BATCH == TP_BATCH - 1:
                    await asyncio.sleep(0)
            await cache.set("tp:end", count)
        else:
            kv = self.clients["w"]
            for start in range(0, count, NATS_INFLIGHT):
                stop = min(count, start + NATS_INFLIGHT)
                await asyncio.gather(*(kv.put(f"tp.{i}", b"%d" % i) for i in range(start, stop)))
            await kv.put("tp.end", b"%d" % count)
        return {"start": t0, "written": clock(), "cpu": time.process_time() - cpu0}

    async def tp_wait(self, count: int, timeout: float) -> dict[str, Any]:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.tp_done.wait(), timeout)
        wrong = None
        if self.cache is not None:
            wrong = 0
            for i in range(count):
                if await self.cache.get(f"tp:{i}") != i:
                    wrong += 1
        return {
            "first": self.tp_first,
            "done": self.tp_done_at,
            "events": self.tp_count,
            "wrong": wrong,
        }


async def worker_main() -> None:
    """Obey JSON-line commands on stdin, answer one JSON line each on stdout."""
    logging.basicConfig(level=logging.ERROR)
    proto = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies goes to the coordinator
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    agent = Agent()

    def reply(obj: Any) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    reply({"ready": os.getpid()})
    try:
        while line := await reader.readline():
            cmd = json.loads(line)
            op = cmd.pop("op")
            if op == "quit":
                break
            try:
                if op.startswith("_") or not hasattr(agent, op):
                    raise ValueError(f"unknown command {op!r}")
                result = await getattr(agent, op)(**cmd)
            except Exception as exc:
                reply({"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()})
            else:
                reply({"result": result})
    finally:
        await agent.reset()


# -------------------------------------------------------- the coordinator
class WorkerError(RuntimeError):
    """A worker process failed a command or exited."""


class Worker:
    """A worker process (this script with ``--worker``), driven by JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lock = asyncio.Lock()

    @classmethod
    async def spawn(cls, args: argparse.Namespace, started: list[Worker]) -> Worker:
        """Start a worker; it goes in ``started`` at once, to be stopped even if cancelled."""
        argv = [sys.executable, str(HERE), "--worker"]
        if args.no_uvloop:
            argv.append("--no-uvloop")
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 24,
            preexec_fn=_die_with_parent,
        )
        worker = cls(proc)
        started.append(worker)
        await asyncio.wait_for(worker._read(), 60)
        return worker

    async def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise WorkerError(f"worker {self.proc.pid} exited (code {self.proc.returncode})")
        return json.loads(line)

    async def call(self, op: str, *, within: float | None = None, **kw: Any) -> Any:
        """Run ``op(**kw)`` in the worker; ``within`` seconds for the answer (default:
        the command's own ``timeout`` plus 60)."""
        assert self.proc.stdin is not None
        if within is None:
            within = float(kw.get("timeout", 0.0)) + 60.0
        async with self.lock:
            self.proc.stdin.write((json.dumps({"op": op, **kw}) + "\n").encode())
            await self.proc.stdin.drain()
            answer = await asyncio.wait_for(self._read(), within)
        if "error" in answer:
            raise WorkerError(f"{op}: {answer['error']}\n{answer.get('trace', '')}")
        return answer["result"]

    async def quit(self) -> None:
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b'{"op": "quit"}\n')
            await self.proc.stdin.drain()
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5.0)
        except (TimeoutError, asyncio.CancelledError):
            self.proc.kill()
            await self.proc.wait()


@contextlib.asynccontextmanager
async def workers(args: argparse.Namespace, n: int) -> AsyncIterator[list[Worker]]:
    started: list[Worker] = []
    try:
        await asyncio.gather(*(Worker.spawn(args, started) for _ in range(n)))
        yield started
    finally:
        # Shielded: the workers are stopped even when the section was cancelled.
        await asyncio.shield(asyncio.gather(*(w.quit() for w in started)))


@dataclass
class Context:
    """What is available in this run, the private servers, and notes for the output."""

    cachetools: bool = False
    redis: RedisServer | None = None
    redis_version: str | None = None
    csc_ok: bool = False
    nats: NatsServer | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def skip(self, peer: str, why: str) -> None:
        self.skipped[peer] = why
        print(f"  skipped {peer}: {why}", flush=True)


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found is None:
        for d in ("/usr/sbin", "/usr/local/sbin", "/usr/local/bin"):
            if os.access(f"{d}/{name}", os.X_OK):
                return f"{d}/{name}"
    return found


def setup_peers(ctx: Context, stack: contextlib.ExitStack, args: argparse.Namespace) -> None:
    try:
        import cachetools  # noqa: F401

        ctx.cachetools = True
    except ImportError:
        ctx.skip("cachetools", "not installed (pip install cachetools)")
    try:
        import redis  # noqa: F401
    except ImportError:
        ctx.skip("Redis (pub/sub, client-side caching, pipelined SET)", "redis-py not installed")
    else:
        binary = find_binary("redis-server")
        if binary is None:
            ctx.skip("Redis (pub/sub, client-side caching, pipelined SET)", "no redis-server")
        else:
            server = RedisServer(binary)
            stack.callback(server.stop)
            try:
                server.start()
            except Exception as exc:
                ctx.skip("Redis (pub/sub, client-side caching, pipelined SET)", str(exc))
            else:
                ctx.redis, ctx.redis_version = server, server.version()
                print(f"  private redis-server {ctx.redis_version} on {HOST}:{server.port}")
                ok, why = csc_support(ctx.redis_version)
                ctx.csc_ok = ok
                if ok:
                    ctx.note(f"Redis client-side caching: {why}")
                else:
                    ctx.skip("Redis client-side caching", why)
    if not args.nats:
        ctx.skip("NATS JetStream KV", "--no-nats")
        return
    try:
        import nats  # noqa: F401
    except ImportError:
        ctx.skip("NATS JetStream KV", "nats-py not installed (pip install nats-py)")
        return
    binary = find_binary("nats-server")
    if binary is None:
        ctx.skip("NATS JetStream KV", "no nats-server binary")
        return
    nats_server = NatsServer(binary)
    stack.callback(nats_server.stop)
    try:
        nats_server.start()
    except Exception as exc:
        ctx.skip("NATS JetStream KV", str(exc))
        return
    ctx.nats = nats_server
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    print(f"  private {version.strip()} -js on {HOST}:{nats_server.port}")


# ------------------------------------------------------------- visibility
def vis_systems(ctx: Context) -> list[str]:
    systems = ["crdt-behind", "crdt-through"]
    if ctx.redis is not None:
        systems.append("redis-pubsub")
    if ctx.csc_ok:
        systems.append("redis-csc")
    if ctx.nats is not None:
        systems.append("nats-kv")
    return systems


SYSTEM_NAMES = {
    "crdt-behind": "crdtcache write-behind",
    "crdt-through": "crdtcache write-through",
    "redis-pubsub": "Redis pub/sub (floor)",
    "redis-csc": "Redis CSC invalidate + re-read",
    "nats-kv": "NATS JetStream KV watch",
}


def lat_summary(xs: Sequence[float], missing: int) -> dict[str, Any]:
    if not xs:
        return {"count": 0, "missing": missing}
    return {
        "count": len(xs),
        "missing": missing,
        "p50_ms": percentile(xs, 0.5) * 1000,
        "p90_ms": percentile(xs, 0.9) * 1000,
        "p99_ms": percentile(xs, 0.99) * 1000,
        "max_ms": max(xs) * 1000,
    }


async def vis_run(
    pool: list[Worker], system: str, args: argparse.Namespace, ctx: Context
) -> dict[str, Any]:
    n = len(pool)
    writer, observers = pool[0], pool[1:]
    tag = uuid.uuid4().hex[:8]
    conn: dict[str, Any] = {}
    if system.startswith("redis"):
        assert ctx.redis is not None
        conn = {"port": ctx.redis.port}
    elif system == "nats-kv":
        assert ctx.nats is not None
        conn = {"port": ctx.nats.port, "bucket": f"vis{n}_{tag}"}
    try:
        if system.startswith("crdt"):
            strategy = "write-through" if system == "crdt-through" else "write-behind"
            first = await writer.call("crdt_start", cluster=tag, strategy=strategy)
            await asyncio.gather(
                *(
                    o.call("crdt_start", cluster=tag, strategy=strategy, seeds=[first["address"]])
                    for o in observers
                )
            )
            # A full mesh: the observers learn each other from the writer's peer list.
            await asyncio.gather(*(w.call("crdt_wait", peers=n - 1) for w in pool))
        await writer.call("vis_prepare", system=system, **conn)
        await asyncio.gather(
            *(
                o.call(
                    "vis_observe",
                    system=system,
                    count=args.writes,
                    channel=f"vis-{tag}",
                    version=ctx.redis_version or "",
                    **conn,
                )
                for o in observers
            )
        )
        w = await writer.call(
            "vis_write",
            within=args.writes * 0.1 + 30,
            system=system,
            count=args.writes,
            seed=n,
            gap=VIS_GAP,
            channel=f"vis-{tag}",
        )
        seen = await asyncio.gather(*(o.call("vis_collect", timeout=3.0) for o in observers))
    finally:
        await asyncio.gather(*(p.call("reset", within=20) for p in pool))
    vis: list[float | None] = []
    for i, t0 in enumerate(w["sent"]):
        stamps = [s["seen"][i] for s in seen]
        vis.append(None if None in stamps else max(stamps) - t0)
    got = [v for v in vis if v is not None]
    res: dict[str, Any] = {
        "visible": lat_summary(got, len(vis) - len(got)),
        "raw_ms": [None if v is None else round(v * 1000, 4) for v in vis],
        "wrong_values": sum(s["wrong"] for s in seen),
        "write_errors": w["errors"],
    }
    if system == "crdt-through":
        ret = [b - a for a, b in zip(w["sent"], w["returned"], strict=True)]
        res["returned"] = lat_summary(ret, 0)
    if system == "redis-csc":
        res["csc_mode"] = seen[0]["csc_mode"]
    v = res["visible"]
    extra = ""
    if "returned" in res:
        extra = f"; set() returned p50 {res['returned']['p50_ms']:.2f} ms"
    if v["count"]:
        print(
            f"  N={n} {SYSTEM_NAMES[system]:32} p50 {v['p50_ms']:7.2f} ms  "
            f"p99 {v['p99_ms']:7.2f} ms  ({v['missing']} missed, "
            f"{res['wrong_values']} wrong){extra}",
            flush=True,
        )
    else:
        print(f"  N={n} {SYSTEM_NAMES[system]:32} nothing seen", flush=True)
    return res


async def visibility(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with workers(args, max(args.sizes)) as pool:
        for n in args.sizes:
            for system in vis_systems(ctx):
                try:
                    out[f"N{n}_{system}"] = await vis_run(pool[:n], system, args, ctx)
                except (WorkerError, TimeoutError) as exc:
                    out[f"N{n}_{system}"] = {"error": str(exc).splitlines()[0]}
                    print(f"  N={n} {system}: FAILED {exc}", flush=True)
    return out


# ------------------------------------------------------------- throughput
async def sync_overhead(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    """``await set`` on a p2p node replicating to 2 peers (write-behind) against the same
    call on ``backend="memory"``, in the same worker process, alternating rounds.

    The seed's "sync overhead under 5 %": what replication adds to the caller's wait.
    The peers are processes of their own; writes go in batches of 50, 2 ms apart
    (``Agent.set_times``), and the figures are over the batches' means.
    """
    count = 5000 if args.quick else 20_000
    memory_us: list[float] = []
    p2p_us: list[float] = []
    async with workers(args, 3) as (a, b, c):
        for _ in range(3 if args.quick else 5):
            await a.call("memory_start")
            memory_us += await a.call("set_times", count=count, gap_ms=2.0)
            await a.call("reset")
            tag = uuid.uuid4().hex[:8]
            first = await a.call("crdt_start", cluster=tag, max_size=1_000_000)
            for w in (b, c):
                await w.call("crdt_start", cluster=tag, seeds=[first["address"]])
            await asyncio.gather(*(w.call("crdt_wait", peers=2) for w in (a, b, c)))
            p2p_us += await a.call("set_times", count=count, gap_ms=2.0)
            await asyncio.gather(*(w.call("reset") for w in (a, b, c)))
    out: dict[str, Any] = {
        "memory": {"p50_us": percentile(memory_us, 0.5), "p99_us": percentile(memory_us, 0.99)},
        "p2p": {"p50_us": percentile(p2p_us, 0.5), "p99_us": percentile(p2p_us, 0.99)},
        "writes": len(p2p_us),
    }
    ratio = out["p2p"]["p50_us"] / out["memory"]["p50_us"]
    print(
        f"  await set p50: p2p write-behind, 2 peers {out['p2p']['p50_us']:.1f} us, "
        f"memory {out['memory']['p50_us']:.1f} us: {ratio:.2f}x (p99 "
        f"{out['p2p']['p99_us']:.1f} / {out['memory']['p99_us']:.1f} us)",
        flush=True,
    )
    return out


async def throughput(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    count = args.updates
    budget = 60.0 if args.quick else 180.0
    async with workers(args, 2) as (a, b):
        tag = uuid.uuid4().hex[:8]
        try:
            first = await a.call("crdt_start", cluster=tag, max_size=count + 100)
            await b.call("crdt_start", cluster=tag, seeds=[first["address"]], max_size=count + 100)
            await asyncio.gather(a.call("crdt_wait", peers=1), b.call("crdt_wait", peers=1))
            await b.call("tp_sink", system="crdt")
            sent = await a.call("tp_blast", within=budget, system="crdt", count=count)
            got = await b.call("tp_wait", count=count, timeout=budget)
        except WorkerError as exc:
            out["crdt"] = {"error": str(exc).splitlines()[0]}
        else:
            out["crdt"] = tp_result("crdtcache write-behind", count, sent, got)
            out["crdt"]["bytes_received_b"] = (await b.call("traffic"))["bytes_received"]
        finally:
            await asyncio.gather(a.call("reset"), b.call("reset"))
        if ctx.nats is not None:
            conn: dict[str, Any] = {"port": ctx.nats.port, "bucket": f"tp_{tag}"}
            try:
                await a.call("tp_prepare", system="nats-kv", **conn)
                await b.call("tp_sink", system="nats-kv", **conn)
                sent = await a.call("tp_blast", within=budget, system="nats-kv", count=count)
                got = await b.call("tp_wait", count=0, timeout=budget)
            except WorkerError as exc:
                out["nats"] = {"error": str(exc).splitlines()[0]}
            else:
                out["nats"] = tp_result("NATS KV put -> watch", count, sent, got)
            finally:
                await asyncio.gather(a.call("reset"), b.call("reset"))
        if ctx.redis is not None:
            r = await a.call("redis_pipelined_set", within=budget, port=ctx.redis.port, count=count)
            rate = count / (r["done"] - r["start"])
            out["redis"] = {**r, "updates": count, "updates_per_s": rate}
            print(f"  redis-py pipelined SET: {rate:,.0f}/s (acknowledged by Redis)", flush=True)
    return out


def tp_result(name: str, count: int, sent: dict[str, Any], got: dict[str, Any]) -> dict[str, Any]:
    done = got["done"]
    rate = None if done is None else count / (done - sent["start"])
    res = {
        "updates": count,
        "updates_per_s": rate,
        "writer_seconds": sent["written"] - sent["start"],
        "writer_cpu_s": sent["cpu"],
        "events_at_b": got["events"],
        "wrong_at_b": got["wrong"],
    }
    shown = "never saw the sentinel" if rate is None else f"{rate:,.0f}/s"
    print(
        f"  {name}: {shown} ({got['events']} updates seen by B"
        + ("" if got["wrong"] is None else f", {got['wrong']} wrong")
        + ")",
        flush=True,
    )
    return res


# ---------------------------------------------------------------- memory
MEMORY_VARIANTS = (
    "Cache memory",
    "Cache memory, TTL",
    "cachetools LRUCache",
    "cachetools TTLCache",
)


def memory_worker(variant: str, entries: int) -> dict[str, Any]:
    """Traced bytes per entry of one variant (runs in a fresh process)."""
    keys = [f"key:{i:09d}" for i in range(entries)]
    values = [str_value(i) for i in range(entries)]
    gc.collect()
    out: dict[str, Any] = {"variant": variant, "entries": entries}
    t0 = time.perf_counter()
    if variant.startswith("cachetools"):
        import cachetools

        tracemalloc.start()
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
        held = len(c)
    else:
        ttl = TTL if variant.endswith("TTL") else None

        async def fill() -> tuple[int, int, int, int]:
            tracemalloc.start()
            cache = Cache(backend="memory", max_size=entries)
            await cache.start()
            await asyncio.sleep(0)
            gc.collect()
            empty = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            for start in range(0, entries, TP_BATCH):
                for i in range(start, min(entries, start + TP_BATCH)):
                    await cache.set(keys[i], values[i], ttl=ttl)
                await asyncio.sleep(0)  # as separate requests would: the runtime runs
            await asyncio.sleep(0.01)
            gc.collect()
            after, peak = tracemalloc.get_traced_memory()
            held = (await cache.get_statistics()).local.size
            await cache.close()
            return empty, after, peak, held

        empty, after, peak, held = asyncio.run(fill())
    tracemalloc.stop()
    out.update(
        held=held,
        bytes_per_entry=(after - empty) / entries,
        peak_bytes_per_entry=(peak - empty) / entries,
        seconds=round(time.perf_counter() - t0, 2),
    )
    return out


async def memory(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variant in MEMORY_VARIANTS:
        if variant.startswith("cachetools") and not ctx.cachetools:
            continue
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE),
            "--memory-worker",
            variant,
            "--entries",
            str(args.entries),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            out[variant] = {"error": stderr.decode(errors="replace")[-400:]}
            print(f"  {variant}: FAILED", flush=True)
            continue
        r = out[variant] = json.loads(stdout.decode().strip().splitlines()[-1])
        print(
            f"  {variant:22} {r['bytes_per_entry']:7.1f} B/entry at rest, "
            f"peak {r['peak_bytes_per_entry']:7.1f} ({r['held']:,} held, {r['seconds']} s)",
            flush=True,
        )
    return out


# --------------------------------------------------------------- restart
async def restart(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    count = args.restart_keys
    with tempfile.TemporaryDirectory(prefix="crdtcache-peers-restart-") as tmp:
        path = str(Path(tmp) / "node.db")
        node_id = f"restart-{uuid.uuid4().hex[:6]}"
        async with workers(args, 1) as (w,):
            filled = await w.call(
                "restart_fill", within=120, path=path, node_id=node_id, count=count
            )
            if ctx.redis is not None:
                await w.call(
                    "redis_fill", within=120, port=ctx.redis.port, prefix="rs", count=count
                )
        async with workers(args, 1) as (w,):  # a fresh process, as after a restart
            opened = await w.call(
                "restart_open", within=60, path=path, node_id=node_id, count=count
            )
    out["crdt"] = {**filled, **opened, "entries": count}
    print(
        f"  crdtcache, {count:,} entries persisted ({filled['file_bytes'] / 1e6:.1f} MB): "
        f"start() returned {opened['start_s'] * 1000:.0f} ms, first get "
        f"{opened['first_get_s'] * 1000:.0f} ms, {opened['held']:,} held",
        flush=True,
    )
    if ctx.csc_ok:
        assert ctx.redis is not None
        async with workers(args, 1) as (w,):
            r = await w.call(
                "csc_warm",
                port=ctx.redis.port,
                version=ctx.redis_version,
                prefix="rs",
                count=count,
                timeout=120.0,
            )
        out["csc"] = {**r, "entries": count}
        print(
            f"  Redis CSC: first read {r['first_read_s'] * 1000:.1f} ms after connect, "
            f"{r['rewarmed']:,} keys re-warmed in {r['rewarm_s']:.2f} s "
            f"({(r['server_bytes_in'] + r['server_bytes_out']) / 1e6:.1f} MB through Redis)",
            flush=True,
        )
    return out


# -------------------------------------------------------------- catch-up
async def catchup(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    count = args.catchup_keys
    step = 100  # every 100th key: 1 %
    changed = len(range(0, count, step))
    budget = 60.0 if args.quick else 150.0
    tag = uuid.uuid4().hex[:8]
    out: dict[str, Any] = {"entries": count, "changed": changed}
    with tempfile.TemporaryDirectory(prefix="crdtcache-peers-catchup-") as tmp:
        b_opts = {
            "cluster": tag,
            "persist_path": str(Path(tmp) / "b.db"),
            "node_id": f"catchup-b-{tag[:6]}",
            "max_size": 2 * count,
        }
        async with workers(args, 2) as (a, b):
            first = await a.call("crdt_start", cluster=tag, max_size=2 * count)
            out["fill_s"] = await a.call("fill", within=budget, prefix="cu", count=count)
            seeds = [first["address"]]
            await b.call("crdt_start", seeds=seeds, **b_opts)
            cold = await b.call("wait_held", count=count, timeout=budget)
            await b.call("crdt_close")
            await a.call("fill", within=budget, prefix="cu", count=count, version=1, step=step)
            started = await b.call("crdt_start", seeds=seeds, **b_opts)
            warm = await b.call(
                "wait_values", prefix="cu", count=count, step=step, version=1, timeout=budget
            )
            await asyncio.sleep(1.5)
            settled = await b.call("traffic")
    out["cold_join"] = cold
    out["restart"] = {**warm, "start_s": started["start_s"], "settled": settled}
    # What the changed entries weigh as key + value (the floor of any catch-up).
    out["changed_payload_bytes"] = sum(len(f"cu:{i}") + 32 for i in range(0, count, step))
    print(
        f"  cold join of {count:,} keys: {cold['bytes_received'] / 1e6:.2f} MB received in "
        f"{cold['seconds']:.2f} s ({cold['held']:,} held)\n"
        f"  restart after {changed:,} keys changed: {warm['bytes_received'] / 1e3:.1f} kB "
        f"received when all held the new value ({warm['seconds']:.2f} s, "
        f"{warm['missing']} missing), {settled['bytes_received'] / 1e3:.1f} kB 1.5 s later; "
        f"the changed keys and values weigh {out['changed_payload_bytes'] / 1e3:.1f} kB",
        flush=True,
    )
    return out


# ------------------------------------------------------------------ report
def fmt_ns(ns: float | None) -> str:
    if ns is None:
        return "-"
    return f"{ns:,.0f} ns" if ns < 10_000 else f"{ns / 1000:,.1f} us"


def fmt_lat(d: dict[str, Any] | None) -> str:
    if not d or not d.get("count"):
        return "-"
    miss = f" ({d['missing']} missed)" if d.get("missing") else ""
    return f"{d['p50_ms']:.2f} / {d['p99_ms']:.2f} ms{miss}"


def fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{x / 1000:,.1f}k/s"


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "-"
    if b < 10_000:
        return f"{b:,.0f} B"
    return f"{b / 1e3:,.1f} kB" if b < 1e6 else f"{b / 1e6:,.2f} MB"


def fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1000:,.1f} ms" if s < 1 else f"{s:,.2f} s"


def fmt_x(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}x" if x < 0.1 else f"{x:.2f}x" if x < 100 else f"{x:,.0f}x"


@dataclass
class Line:
    """One row of the table: a crdtcache figure and one peer figure, and their ratio."""

    section: str
    figure: str
    crdt: float | None
    crdt_text: str
    peer: str
    peer_value: float | None
    peer_text: str
    better: str  # "lower" or "higher"
    crdt_p99: float | None = None
    peer_p99: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.crdt is None or not self.peer_value:
            return None
        return self.crdt / self.peer_value

    @property
    def ratio_p99(self) -> float | None:
        if self.crdt_p99 is None or not self.peer_p99:
            return None
        return self.crdt_p99 / self.peer_p99

    def ratio_text(self) -> str:
        if self.crdt_p99 is not None:
            return f"{fmt_x(self.ratio)} / {fmt_x(self.ratio_p99)}"
        return fmt_x(self.ratio)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "ratio_p99": self.ratio_p99}


def build_lines(res: dict[str, Any], ctx: Context, args: argparse.Namespace) -> list[Line]:
    lines: list[Line] = []
    redis_why = next((v for k, v in ctx.skipped.items() if k.startswith("Redis (")), None)

    def why(peer: str) -> str:
        if peer.startswith("cachetools"):
            reason = ctx.skipped.get("cachetools")
        elif "CSC" in peer:
            reason = redis_why or ctx.skipped.get("Redis client-side caching")
        elif "Redis" in peer or "redis" in peer:
            reason = redis_why
        elif "NATS" in peer:
            reason = ctx.skipped.get("NATS JetStream KV")
        else:
            reason = None
        return f"skipped: {reason}" if reason else "not measured"

    def section_error(name: str) -> bool:
        r = res.get(name)
        if r is None:
            return True
        if "error" in r:
            lines.append(Line(name, f"FAILED: {r['error'][:80]}", None, "-", "", None, "", ""))
            return True
        return False

    if not section_error("reads"):
        reads = res["reads"]
        for kind in KINDS:
            peers = ["cachetools LRUCache.get"]
            if kind != "str":
                peers.append("LRUCache.get + pickle.loads")
            peers.append("Redis CSC GET" if kind == "str" else "Redis CSC GET + json.loads")
            for label in ("SyncCache.get", "await Cache.get"):
                c = reads[label][kind]["median_ns"]
                for peer in peers:
                    p = reads.get(peer, {}).get(kind)
                    lines.append(
                        Line(
                            "local read (median)",
                            f"{kind}: {label}",
                            c,
                            fmt_ns(c),
                            peer,
                            p and p["median_ns"],
                            fmt_ns(p["median_ns"]) if p else why(peer),
                            "lower",
                        )
                    )
    if not section_error("overhead"):
        ov = res["overhead"]
        lines.append(
            Line(
                "sync overhead: await set (p50 / p99)",
                "p2p write-behind, 2 peers",
                ov["p2p"]["p50_us"] * 1000,
                f"{ov['p2p']['p50_us']:.1f} / {ov['p2p']['p99_us']:.1f} us",
                'backend="memory"',
                ov["memory"]["p50_us"] * 1000,
                f"{ov['memory']['p50_us']:.1f} / {ov['memory']['p99_us']:.1f} us",
                "lower",
                ov["p2p"]["p99_us"] * 1000,
                ov["memory"]["p99_us"] * 1000,
            )
        )
    if not section_error("visibility"):
        vis = res["visibility"]
        for n in args.sizes:
            for mine in ("crdt-behind", "crdt-through"):
                c = vis.get(f"N{n}_{mine}", {}).get("visible") or {}
                for peer in ("redis-pubsub", "redis-csc", "nats-kv"):
                    p = vis.get(f"N{n}_{peer}", {}).get("visible") or {}
                    lines.append(
                        Line(
                            f"visible on all N={n} (p50 / p99)",
                            SYSTEM_NAMES[mine],
                            c.get("p50_ms"),
                            fmt_lat(c),
                            SYSTEM_NAMES[peer],
                            p.get("p50_ms"),
                            fmt_lat(p) if p.get("count") else why(SYSTEM_NAMES[peer]),
                            "lower",
                            c.get("p99_ms"),
                            p.get("p99_ms"),
                        )
                    )
    if not section_error("throughput"):
        tp = res["throughput"]
        c = tp.get("crdt", {}).get("updates_per_s")
        for key, peer in (
            ("nats", "NATS KV put -> B's watch"),
            ("redis", "redis-py pipelined SET (acked)"),
        ):
            p = tp.get(key, {}).get("updates_per_s")
            lines.append(
                Line(
                    "replicated throughput A->B",
                    f"crdtcache write-behind, {args.updates:,} updates",
                    c,
                    fmt_rate(c),
                    peer,
                    p,
                    fmt_rate(p) if p else why(peer),
                    "higher",
                )
            )
    if not section_error("memory"):
        mem = res["memory"]
        for mine, peer in (
            ("Cache memory", "cachetools LRUCache"),
            ("Cache memory, TTL", "cachetools TTLCache"),
        ):
            c = mem.get(mine, {}).get("bytes_per_entry")
            p = mem.get(peer, {}).get("bytes_per_entry")
            lines.append(
                Line(
                    f"bytes/entry, {args.entries:,} entries",
                    f"Cache(memory{', ttl' if 'TTL' in mine else ''})",
                    c,
                    "-" if c is None else f"{c:.1f} B",
                    peer,
                    p,
                    f"{p:.1f} B" if p else why(peer),
                    "lower",
                )
            )
    if not section_error("restart"):
        rs = res["restart"]
        c, p = rs.get("crdt", {}), rs.get("csc", {})
        peer_first = "Redis CSC: connect -> first read"
        k = f"{args.restart_keys // 1000}k"
        for figure, cv, peer, pv in (
            ("new Cache -> start() returned", c.get("start_s"), peer_first, p.get("first_read_s")),
            ("new Cache -> first get", c.get("first_get_s"), peer_first, p.get("first_read_s")),
            (
                f"{k} entries served locally",
                c.get("start_s"),
                f"Redis CSC re-warm, {k} GETs",
                p.get("rewarm_s"),
            ),
        ):
            lines.append(
                Line(
                    f"restart, {k} persisted",
                    figure,
                    cv,
                    fmt_s(cv),
                    peer,
                    pv,
                    fmt_s(pv) if pv else why(peer),
                    "lower",
                )
            )
    if not section_error("catchup"):
        cu = res["catchup"]
        warm = cu["restart"]["bytes_received"]
        cold = cu["cold_join"]["bytes_received"]
        csc = res.get("restart", {}).get("csc")
        csc_bytes = csc and csc["server_bytes_in"] + csc["server_bytes_out"]
        k = f"{cu['entries'] // 1000}k"
        csc_peer = f"Redis CSC re-warm {k} (bytes through Redis)"
        csc_text = fmt_bytes(csc_bytes) if csc_bytes else why(csc_peer)
        if not csc_bytes and "restart" not in args.only:
            csc_text = "needs the restart section"
        for figure, cv, peer, pv, pt in (
            (
                f"restart after 1 % of {k} changed",
                warm,
                f"crdtcache cold join, {k}",
                cold,
                fmt_bytes(cold),
            ),
            (f"restart after 1 % of {k} changed", warm, csc_peer, csc_bytes, csc_text),
            (f"cold join, {k}", cold, csc_peer, csc_bytes, csc_text),
        ):
            lines.append(
                Line("catch-up bytes received", figure, cv, fmt_bytes(cv), peer, pv, pt, "lower")
            )
    return lines


def markdown(lines: list[Line]) -> str:
    head = (
        "| section | crdtcache figure | crdtcache | peer | peer figure "
        "| ratio crdtcache/peer | better |"
    )
    out = [head, "|---|---|---|---|---|---|---|"]
    for ln in lines:
        cells = (
            ln.section,
            ln.figure,
            ln.crdt_text,
            ln.peer,
            ln.peer_text,
            ln.ratio_text(),
            ln.better,
        )
        out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(out)


def plot_visibility(res: dict[str, Any], path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    vis = res["visibility"]
    every = [x for r in vis.values() if isinstance(r, dict) for x in r.get("raw_ms") or () if x]
    lo = max(0.01, min(every, default=0.1) * 0.8)
    hi = max(every, default=10.0) * 1.25
    fig, axes = plt.subplots(1, len(args.sizes), figsize=(7 * len(args.sizes), 5), squeeze=False)
    styles = {
        "crdt-behind": "-",
        "crdt-through": "-",
        "redis-pubsub": ":",
        "redis-csc": "--",
        "nats-kv": "-.",
    }
    for ax, n in zip(axes[0], args.sizes, strict=True):
        for system, style in styles.items():
            raw = vis.get(f"N{n}_{system}", {}).get("raw_ms")
            xs = sorted(x for x in raw or () if x is not None)
            if not xs:
                continue
            ys = [(i + 1) / len(raw) for i in range(len(xs))]
            ax.step(xs, ys, where="post", linestyle=style, lw=1.6, label=SYSTEM_NAMES[system])
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200) if lo <= t <= hi]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("write on A -> visible on all others (ms, log scale)")
        ax.set_ylabel("fraction of writes")
        ax.set_ylim(0, 1.01)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"N={n} instances, one OS process each")
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        f"Visibility latency CDF, {args.writes} writes spaced {VIS_GAP[0] * 1000:.0f}-"
        f"{VIS_GAP[1] * 1000:.0f} ms ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_ratios(lines: list[Line], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars: list[tuple[str, float]] = []
    for ln in lines:
        section = ln.section.split(" (")[0]
        for tag, r in (("", ln.ratio), (" p99", ln.ratio_p99)):
            if r is None or r <= 0:
                continue
            advantage = 1 / r if ln.better == "lower" else r
            suffix = " p50" if ln.crdt_p99 is not None and not tag else tag
            bars.append((f"{section}: {ln.figure} vs {ln.peer}{suffix}", advantage))
    if not bars:
        return False
    fig, ax = plt.subplots(figsize=(12, 0.24 * len(bars) + 1.8))
    ys = list(range(len(bars)))
    values = [b for _, b in bars]
    ax.barh(ys, values, color=["tab:green" if b >= 1 else "tab:red" for b in values])
    for y, b in zip(ys, values, strict=True):
        right = b >= 1
        x, ha = (b * 1.08, "left") if right else (b * 0.92, "right")
        ax.text(x, y, fmt_x(b), va="center", ha=ha, fontsize=6)
    ax.set_yticks(ys, [label for label, _ in bars], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    lo, hi = min([*values, 1.0]) / 3, max([*values, 1.0]) * 3
    ax.set_xlim(lo, hi)
    ticks = [10.0**e for e in range(-4, 5) if lo <= 10.0**e <= hi]
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xlabel("crdtcache advantage (log scale): > 1 means crdtcache is better")
    ax.set_title(
        "crdtcache vs peers, one run: peer / crdtcache for times and bytes, "
        "crdtcache / peer for rates",
        fontsize=10,
    )
    ax.grid(True, axis="x", which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ------------------------------------------------------------------ main
TITLES = {
    "reads": "local reads (this process)",
    "overhead": "sync overhead: await set, p2p write-behind with 2 peers vs memory",
    "visibility": "visibility on N instances (one OS process each)",
    "throughput": "replicated throughput A -> B",
    "memory": "bytes per entry (fresh process per variant, tracemalloc)",
    "restart": "restart with persist_path",
    "catchup": "catch-up bytes",
}
RUNNERS: dict[str, Callable[[argparse.Namespace, Context], Awaitable[dict[str, Any]]]] = {
    "reads": local_reads,
    "overhead": sync_overhead,
    "visibility": visibility,
    "throughput": throughput,
    "memory": memory,
    "restart": restart,
    "catchup": catchup,
}


async def bench(args: argparse.Namespace) -> tuple[dict[str, Any], Context]:
    # SIGTERM, like Ctrl-C, cancels the run: workers and servers are stopped on the way out.
    task = asyncio.current_task()
    assert task is not None
    with contextlib.suppress(NotImplementedError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    res: dict[str, Any] = {"loop": loop_name, "loadavg_start": os.getloadavg(), "seconds": {}}
    print(
        f"crdtcache {crdtcache.__version__} vs peers: {os.cpu_count()} cores, load average "
        f"{res['loadavg_start'][0]:.2f} (other work on the machine skews the figures), "
        f"loop {loop_name}",
        flush=True,
    )
    ctx = Context()
    with contextlib.ExitStack() as servers:
        print("peers:", flush=True)
        setup_peers(ctx, servers, args)
        for name in SECTIONS:
            if name not in args.only:
                continue
            budget = args.budget * (2 if name == "visibility" else 1)
            print(f"{TITLES[name]}:", flush=True)
            t0 = clock()
            try:
                res[name] = await asyncio.wait_for(RUNNERS[name](args, ctx), budget)
            except TimeoutError:
                res[name] = {"error": f"over its {budget:.0f} s budget"}
                print(f"  stopped: over its {budget:.0f} s budget", flush=True)
            except Exception as exc:
                res[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
                print(f"  FAILED: {exc}", flush=True)
                traceback.print_exc()
            res["seconds"][name] = round(clock() - t0, 1)
            print(f"  ({res['seconds'][name]:.0f} s)", flush=True)
    return res, ctx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (under 2 minutes)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's default loop")
    parser.add_argument("--no-nats", dest="nats", action="store_false", help="skip NATS")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 5])
    parser.add_argument("--rounds", type=int, help="timed batches per read row")
    parser.add_argument("--writes", type=int, help="writes per visibility run")
    parser.add_argument("--updates", type=int, help="updates per throughput run")
    parser.add_argument("--entries", type=int, default=200_000, help="bytes/entry fill")
    parser.add_argument("--restart-keys", type=int, default=100_000)
    parser.add_argument("--catchup-keys", type=int, default=100_000)
    parser.add_argument("--budget", type=float, help="seconds per section (visibility: 2x)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        # Ctrl-C reaches the whole process group: the coordinator shuts workers down.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        run_loop(worker_main(), not args.no_uvloop)
        return
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, args.entries)))
        return
    args.rounds = args.rounds or (200 if args.quick else 800)
    args.writes = args.writes or (300 if args.quick else 1000)
    args.updates = args.updates or (20_000 if args.quick else 100_000)
    args.budget = args.budget or (45.0 if args.quick else 150.0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        res, ctx = run_loop(bench(args), not args.no_uvloop)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: workers and private servers stopped", file=sys.stderr)
        sys.exit(130)
    lines = build_lines(res, ctx, args)
    table = markdown(lines)
    res.update(
        config={
            "quick": args.quick,
            "only": args.only,
            "sizes": args.sizes,
            "rounds": args.rounds,
            "writes": args.writes,
            "vis_gap_s": VIS_GAP,
            "updates": args.updates,
            "entries": args.entries,
            "restart_keys": args.restart_keys,
            "catchup_keys": args.catchup_keys,
            "budget_s": args.budget,
        },
        machine={
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        skipped=ctx.skipped,
        notes=ctx.notes,
        redis_version=ctx.redis_version,
        lines=[ln.as_dict() for ln in lines],
        table=table,
        wall_seconds=round(time.time() - started, 1),
        loadavg_end=os.getloadavg(),
    )
    print()
    print(table)
    print()
    for peer, why in ctx.skipped.items():
        print(f"skipped {peer}: {why}")
    for note in ctx.notes:
        print(f"note: {note}")
    stem = "peers" if set(args.only) == set(SECTIONS) else "peers_only_" + "_".join(args.only)
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    footer = [
        "",
        f"Ratios are crdtcache / peer (latency: p50 / p99). {os.cpu_count()} cores, load "
        f"average {res['loadavg_start'][0]:.1f} at start, {res['loadavg_end'][0]:.1f} at end; "
        f"{'--quick, ' if args.quick else ''}{res['wall_seconds']:.0f} s.",
    ]
    footer += [f"- skipped {peer}: {why}" for peer, why in ctx.skipped.items()]
    footer += [f"- note: {note}" for note in ctx.notes]
    (RESULTS / f"{stem}.md").write_text(table + "\n" + "\n".join(footer) + "\n")
    print(f"\nwrote {RESULTS / stem}.json and {stem}.md", flush=True)
    drawn = []
    if "visibility" in res and "error" not in res["visibility"]:
        plot_visibility(res, RESULTS / f"{stem}_visibility.png", args)
        drawn.append(f"{stem}_visibility.png")
    if plot_ratios(lines, RESULTS / f"{stem}_ratios.png"):
        drawn.append(f"{stem}_ratios.png")
    print(f"drew {' and '.join(drawn) or 'nothing'} ({res['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
