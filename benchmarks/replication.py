"""Replication latency and throughput of crdtcache nodes on loopback, next to Redis.

What is measured
----------------
1. **Write-visible latency** (SPEC section 4: p99 < 20 ms for N = 10 write-behind, goal
   < 10 ms; write-through N = 3 goal < 2 ms). One node writes ``--writes`` keys; each
   other node records the moment the write became readable there. Latency of a write =
   (latest apply time over all N - 1 other nodes) - (time just before ``engine.set``).
   Clusters of N = 3, 10, 25 and 50 real :class:`~crdtcache.transport.Node` s on
   127.0.0.1, full mesh (every node seeds node 0; peer lists complete the mesh), default
   ``GossipConfig`` (``sync_interval`` 5 ms, push to every peer). The N = 25 and 50 rows
   are the sizes the README's full-mesh recommendation is checked at (with 50 nodes
   as processes on 2 cores, each delivery waits for a core: those rows measure the
   machine as much as the protocol).

   * *write-behind*: ``engine.set(...)`` then ``node.wake()``; the node flushes at its
     next flush time. Writes are open-loop: the gap before each write is drawn uniformly
     from [1, 9] ms (mean 5 ms, 200 writes/s), so writes fall at every phase of the 5 ms
     flush timer and the figure includes the wait for the next flush (a write that comes
     more than 5 ms after the previous flush goes out at once).
   * *write-through*: ``engine.set(...)`` then ``await node.flush(ack=True)``; the
     figure is set-to-return time (every live peer acknowledged after applying). Writes
     are sequential with a 1-3 ms pause. Visibility on the others is recorded as well
     and checked to precede the return ("visible before return").

   *How apply time is taken.* Each observer registers ``node.listen(on_changes, ...)``.
   The node calls it right after ``engine.handle`` merged a message, in the same event
   loop step, so the callback sees exactly when a key became readable; the callback
   confirms with ``engine.replica.lookup(key, now)`` and stamps ``time.monotonic()``.
   (The HLC stamp's physical part has only millisecond resolution, too coarse for
   these figures, so it is not used.) ``time.monotonic()`` is ``CLOCK_MONOTONIC`` on
   Linux, one system-wide clock, so stamps taken in different processes compare.

   *Two placements, both reported.* "one loop": all N nodes in this process's event
   loop; they share one core, so each delivery waits behind the other nodes' work
   (the figure is inflated, but free of OS scheduling). "processes": one OS process
   per node (this script re-run with ``--worker``, driven by JSON lines on stdin and
   stdout); this is the honest deployment figure, but on a machine with fewer cores
   than nodes the processes contend for the CPU (the core count and load are printed).

   *With a full cache.* The clusters above hold only the benchmark's own keys. One
   more write-behind run (N = 3, processes) first fills every replica with
   ``--preload`` keys (100k) and records 1000 writes (5 s, one tombstone-collection
   period), so that work proportional to the map's size (anti-entropy answers,
   collection, cyclic GC) shows in the tail.

2. **Throughput between two nodes** (must >= 100k updates/s, goal >= 200k). Node A
   (its own process) writes ``--updates`` small int values as fast as it can (yielding
   to the loop every 1000 writes, ``node.wake()`` each time), then a sentinel key.
   Rate = updates / (time B applied the sentinel - time A began writing); pushes are
   sent in stamp order on one TCP stream, so the sentinel comes last, and B's final
   state is then checked key by key. Workloads: distinct keys (every update travels),
   the same with both nodes in one loop, overwrites of 100 hot keys (the write-behind
   queue coalesces them: entries actually sent are reported), and a *burst*: A writes
   every update before yielding once, so B receives at full speed ("B applying a
   burst" = entries pushed / (B's last apply - B's first apply)). Wall-clock rates
   depend on what else the machine runs, so the CPU time each process spent per
   update (``time.process_time``) is reported too, and the rate those CPU costs allow
   with a core per node ("CPU-bound ceiling"). Entries B received (pushes plus
   anti-entropy answers) and frames dropped by a full send buffer are reported.

3. **Redis peers in the same run** (127.0.0.1:6379). Pub/sub delivery latency with the
   same open-loop schedule: publish (redis.asyncio) -> every subscriber received it,
   with N - 1 subscriber connections (2 and 9), in one loop and with each subscriber
   in its own process, so it compares with the matching crdtcache figure. And redis-py
   pipelined SET throughput: ``--redis-sets`` SETs in pipelines of 1000 (the keys are
   deleted afterwards; nothing else in Redis is touched).

Run ``python benchmarks/replication.py`` (one to two minutes on 2 cores) or
``--quick``; ``--no-uvloop`` to use the default asyncio loop; ``--only`` to run some
parts (results then go to ``replication_only_*.json``); ``--profile`` writes cProfile
summaries of the throughput processes to ``benchmarks/results/replication_profile_*``.
Writes ``benchmarks/results/replication.json`` and ``replication_latency.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import io
import json
import logging
import os
import platform
import pstats
import random
import signal
import sys
import time
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from crdtcache.core import (
    Change,
    GossipConfig,
    GossipEngine,
    HybridClock,
    PeerEvent,
    Replica,
    encode_value,
)
from crdtcache.transport import Node

RESULTS = Path(__file__).resolve().parent / "results"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
BEHIND_GAP = (0.001, 0.009)  # open-loop gap before each write-behind write, seconds
THROUGH_GAP = (0.001, 0.003)  # pause between write-through writes, seconds
HOT_KEYS = 100  # keys of the overwrite workload
BATCH = 1000  # writes between yields in the throughput writer
TARGETS = {
    "behind_p99_must_ms": 20.0,
    "behind_p99_goal_ms": 10.0,
    "through_n3_goal_ms": 2.0,
    "throughput_must": 100_000,
    "throughput_goal": 200_000,
}

T = TypeVar("T")
clock = time.monotonic


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


def loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


# ---------------------------------------------------------------- one node
@dataclass
class _Watch:
    count: int
    applied: list[float | None]
    seen: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Sink:
    sentinel: str
    first: float | None = None
    done_at: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    cpu0: float = field(default_factory=time.process_time)
    cpu: float | None = None
    received0: int = 0


class Member:
    """One node plus the bench logic run next to it (in this process or a worker)."""

    def __init__(self, node_id: str, sync_interval: float) -> None:
        self.engine = GossipEngine(
            Replica(HybridClock(node_id)),
            random.Random(node_id),
            GossipConfig(sync_interval=sync_interval),
        )
        self.node = Node(self.engine, listen="127.0.0.1:0")
        self.node.listen(self._on_changes, self._on_peer)
        self.watches: dict[str, _Watch] = {}
        self.sink_state: _Sink | None = None
        self.profiler: cProfile.Profile | None = None

    async def start(self) -> str:
        await self.node.start()
        assert self.node.address is not None
        return self.node.address

    def seed(self, address: str) -> None:
        self.node.add_seed(address)

    def peers(self) -> int:
        return len(self.node.connected_peers())

    # ---------------------------------------------------------- callbacks
    def _on_changes(self, changes: list[Change]) -> None:
        t = clock()
        sink = self.sink_state
        if sink is not None and sink.done_at is None:
            if sink.first is None:
                sink.first = t
            if sink.sentinel in self.engine.replica.entries:
                sink.done_at = t
                sink.cpu = time.process_time() - sink.cpu0
                sink.done.set()
        if not self.watches:
            return
        now = time.time()
        replica = self.engine.replica
        for c in changes:
            if not c.remote:
                continue
            prefix, _, idx = c.key.partition(":")
            w = self.watches.get(prefix)
            if w is None:
                continue
            i = int(idx)
            if w.applied[i] is None and replica.lookup(c.key, now) is not None:
                w.applied[i] = t
                w.seen += 1
                if w.seen == w.count:
                    w.done.set()

    def _on_peer(self, event: PeerEvent) -> None:
        pass

    # ---------------------------------------------------------- latency
    def observe(self, prefix: str, count: int) -> None:
        self.watches[prefix] = _Watch(count, [None] * count)

    async def collect(self, prefix: str, timeout: float) -> list[float | None]:
        w = self.watches[prefix]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(w.done.wait(), timeout)
        del self.watches[prefix]
        return w.applied

    async def write(
        self, prefix: str, count: int, mode: str, seed: int, gap: Sequence[float]
    ) -> dict[str, Any]:
        """Write ``count`` keys ``prefix:i``; return send (and return) times."""
        engine, node = self.engine, self.node
        rng = random.Random(seed)
        sent: list[float] = []
        returned: list[float] = []
        unacked = 0
        due = clock()
        for i in range(count):
            key = f"{prefix}:{i}"
            if mode == "behind":
                due += rng.uniform(*gap)
                # Behind schedule (the loop was blocked): still yield, as separate
                # request handlers would, so the node can flush between writes.
                await asyncio.sleep(max(0.0, due - clock()))
                t0 = clock()
                engine.set(key, encode_value(key, i), time.time())
                node.wake()
                sent.append(t0)
            else:
                await asyncio.sleep(rng.uniform(*gap))
                t0 = clock()
                engine.set(key, encode_value(key, i), time.time())
                missing = await node.flush(ack=True, timeout=2.0)
                returned.append(clock())
                sent.append(t0)
                unacked += bool(missing)
        return {"sent": sent, "returned": returned, "unacked": unacked}

    # ---------------------------------------------------------- throughput
    def sink(self, sentinel: str) -> None:
        self.sink_state = _Sink(sentinel, received0=self.engine.stats.entries_received)

    async def sink_wait(self, timeout: float, keys: int, total: int) -> dict[str, Any]:
        sink = self.sink_state
        assert sink is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sink.done.wait(), timeout)
        self.sink_state = None
        # Verify the final state: key j last got the largest i < total with i % keys == j.
        entries = self.engine.replica.entries
        wrong = 0
        prefix = sink.sentinel.rpartition(":")[0]
        for j in range(min(keys, total)):
            last = j + keys * ((total - 1 - j) // keys)
            e = entries.get(f"{prefix}:{j}")
            if e is None or e.value != last:
                wrong += 1
        return {
            "first": sink.first,
            "done": sink.done_at,
            "cpu": sink.cpu,
            "wrong": wrong,
            "entries_received": self.engine.stats.entries_received - sink.received0,
            "frames_received": self.node.statistics().frames_received,
        }

    async def blast(self, prefix: str, total: int, keys: int, stream: bool) -> dict[str, Any]:
        """Write ``total`` updates over ``keys`` keys, then a sentinel; flush with ack.

        ``stream``: yield to the loop (and so let the node flush) every ``BATCH``
        writes; otherwise write everything first, so the receiver gets a burst.
        """
        engine, node = self.engine, self.node
        pushed0 = engine.stats.entries_pushed
        cpu0 = time.process_time()
        t0 = clock()
        for i in range(total):
            key = f"{prefix}:{i % keys}"
            engine.set(key, encode_value(key, i), time.time())
            if stream and i % BATCH == BATCH - 1:
                node.wake()
                await asyncio.sleep(0)
        sentinel = f"{prefix}:end"
        engine.set(sentinel, encode_value(sentinel, total), time.time())
        t_written = clock()
        missing = await node.flush(ack=True, timeout=60.0)
        t_acked = clock()
        cpu = time.process_time() - cpu0
        stats = node.statistics()
        return {
            "cpu": cpu,
            "start": t0,
            "written": t_written,
            "acked": t_acked,
            "unacked": len(missing),
            "entries_pushed": engine.stats.entries_pushed - pushed0,
            "frames_sent": stats.frames_sent,
            "frames_dropped": stats.frames_dropped,
            "bytes_sent": stats.bytes_sent,
        }

    # ---------------------------------------------------------- misc
    def profile(self, on: bool, path: str | None = None) -> None:
        if on:
            self.profiler = cProfile.Profile()
            self.profiler.enable()
            return
        if self.profiler is None:
            return
        self.profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(self.profiler, stream=out)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(30)
        if path:
            Path(path).write_text(out.getvalue())
        self.profiler = None

    def stats(self) -> dict[str, Any]:
        s = dataclasses.asdict(self.node.statistics())  # a frozen dataclass now
        s.pop("peer_addresses", None)
        e = self.engine.stats
        s["entries_applied"] = e.entries_applied
        s["events_dropped"] = e.events_dropped
        s["syncs_completed"] = e.syncs_completed
        return s

    async def close(self) -> None:
        await self.node.close()


# ---------------------------------------------------------- redis subscriber
class RedisSub:
    """One pub/sub subscriber connection recording when each message arrived."""

    def __init__(self, channel: str, count: int) -> None:
        self.channel = channel
        self.count = count
        self.received: list[float | None] = [None] * count
        self.seen = 0
        self.done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.Redis(host=REDIS_HOST, port=REDIS_PORT)
        self.pubsub = self.client.pubsub()
        await self.pubsub.subscribe(self.channel)
        while True:  # wait for the subscription to be confirmed
            msg = await self.pubsub.get_message(timeout=1.0)
            if msg is not None and msg["type"] == "subscribe":
                break
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self.seen < self.count:
            msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
            t = clock()
            if msg is None:
                continue
            i = int(msg["data"])
            if self.received[i] is None:
                self.received[i] = t
                self.seen += 1
        self.done.set()

    async def collect(self, timeout: float) -> list[float | None]:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), timeout)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]
            await self.client.aclose()
        return self.received


# ------------------------------------------------------------------ worker
async def worker_main(profile_path: str | None) -> None:
    """Obey JSON-line commands on stdin, answer one JSON line each on stdout."""
    logging.basicConfig(level=logging.ERROR)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    member: Member | None = None
    subs: dict[str, RedisSub] = {}

    def reply(obj: Any) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ready": os.getpid(), "loop": loop_name()})
    try:
        while line := await reader.readline():
            cmd = json.loads(line)
            op = cmd.pop("op")
            if op == "quit":
                break
            if op == "node":
                member = Member(cmd["id"], cmd["sync_interval"])
                reply({"address": await member.start()})
                continue
            if op == "redis_sub":
                sub = subs[cmd["channel"]] = RedisSub(cmd["channel"], cmd["count"])
                await sub.start()
                reply({"ok": True})
                continue
            if op == "redis_collect":
                reply({"received": await subs.pop(cmd["channel"]).collect(cmd["timeout"])})
                continue
            assert member is not None
            if op == "profile":
                name = cmd.get("name", "")
                member.profile(cmd["on"], profile_path and f"{profile_path}_{name}.txt")
                result: Any = True
            else:
                result = getattr(member, op)(**cmd)
                if asyncio.iscoroutine(result):
                    result = await result
            reply({"result": result})
    finally:
        if member is not None:
            await member.close()


# ----------------------------------------------------- members, local or remote
class Remote:
    """A worker process; methods mirror :class:`Member` through JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lock = asyncio.Lock()

    @classmethod
    async def spawn(cls, args: argparse.Namespace, started: list[Remote]) -> Remote:
        """Start a worker; it is put in ``started`` at once, to be stopped even if cancelled."""
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker"]
        if args.no_uvloop:
            argv.append("--no-uvloop")
        if args.profile:
            argv += ["--profile-path", str(RESULTS / "replication_profile")]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 24,
        )
        remote = cls(proc)
        started.append(remote)
        await remote._read()
        return remote

    async def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.proc.pid} exited (code {self.proc.returncode})")
        return json.loads(line)

    async def call(self, op: str, **kw: Any) -> Any:
        assert self.proc.stdin is not None
        async with self.lock:
            self.proc.stdin.write((json.dumps({"op": op, **kw}) + "\n").encode())
            await self.proc.stdin.drain()
            return await self._read()

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
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


class Handle:
    """A cluster member the coordinator drives: in this loop or in a worker process."""

    def __init__(self, local: Member | None = None, remote: Remote | None = None) -> None:
        self.local = local
        self.remote = remote

    async def call(self, op: str, **kw: Any) -> Any:
        if self.remote is not None:
            return (await self.remote.call(op, **kw))["result"]
        assert self.local is not None
        result = getattr(self.local, op)(**kw)
        if asyncio.iscoroutine(result):
            result = await result
        return result

    async def close(self) -> None:
        if self.remote is not None:
            await self.remote.quit()
        elif self.local is not None:
            await self.local.close()


class Cluster:
    """N members wired into a full mesh through node 0."""

    def __init__(self, args: argparse.Namespace, n: int, processes: bool) -> None:
        self.args = args
        self.n = n
        self.processes = processes
        self.members: list[Handle] = []

    async def __aenter__(self) -> Cluster:
        try:
            await self._build()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _build(self) -> None:
        tag = uuid.uuid4().hex[:6]
        if self.processes:
            started: list[Remote] = []
            try:
                remotes = await asyncio.gather(
                    *(Remote.spawn(self.args, started) for _ in range(self.n))
                )
            finally:
                self.members = [Handle(remote=r) for r in started]
            self.members = [Handle(remote=r) for r in remotes]
            addresses = [
                (await r.call("node", id=f"n{i}-{tag}", sync_interval=self.args.sync_interval))[
                    "address"
                ]
                for i, r in enumerate(remotes)
            ]
        else:
            locals_ = [Member(f"n{i}-{tag}", self.args.sync_interval) for i in range(self.n)]
            self.members = [Handle(local=m) for m in locals_]
            addresses = [await m.start() for m in locals_]
        for m in self.members[1:]:
            await m.call("seed", address=addresses[0])
        deadline = clock() + 15.0 + self.n  # 50 processes on 2 cores take a while
        while True:
            counts = [await m.call("peers") for m in self.members]
            if all(c == self.n - 1 for c in counts):
                break
            if clock() > deadline:
                raise RuntimeError(f"mesh did not form: peer counts {counts}")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # initial anti-entropy exchanges

    async def close(self) -> None:
        await asyncio.gather(*(m.close() for m in self.members), return_exceptions=True)


# ------------------------------------------------------------------ figures
def summary(values: Sequence[float], missing: int = 0) -> dict[str, Any]:
    """Percentiles in milliseconds (nearest rank) of values in seconds."""
    xs = sorted(values)
    if not xs:
        return {"count": 0, "missing": missing}

    def pct(p: float) -> float:
        return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs) + 0.5) - 1))] * 1000

    return {
        "count": len(xs),
        "missing": missing,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": xs[-1] * 1000,
        "mean_ms": sum(xs) / len(xs) * 1000,
    }


def latest(applied: Sequence[Sequence[float | None]], i: int) -> float | None:
    """When write ``i`` was applied on the last observer (None if one never did)."""
    times = [a[i] for a in applied]
    return None if any(t is None for t in times) else max(t for t in times if t is not None)


def all_visible(
    sent: Sequence[float], applied: Sequence[Sequence[float | None]]
) -> list[float | None]:
    """Per write: latest apply time over the observers minus send time (None if missed)."""
    out: list[float | None] = []
    for i, t0 in enumerate(sent):
        t = latest(applied, i)
        out.append(None if t is None else t - t0)
    return out


async def measure_latency(cluster: Cluster, mode: str, count: int, seed: int) -> dict[str, Any]:
    writer, observers = cluster.members[0], cluster.members[1:]
    # Warm-up: a few writes that are not recorded.
    warm = f"w{mode}{seed}"
    for o in observers:
        await o.call("observe", prefix=warm, count=20)
    gap = BEHIND_GAP if mode == "behind" else THROUGH_GAP
    await writer.call("write", prefix=warm, count=20, mode=mode, seed=seed, gap=gap)
    for o in observers:
        await o.call("collect", prefix=warm, timeout=2.0)
    await asyncio.sleep(0.05)

    prefix = f"l{mode}{seed}"
    for o in observers:
        await o.call("observe", prefix=prefix, count=count)
    written = await writer.call("write", prefix=prefix, count=count, mode=mode, seed=seed, gap=gap)
    applied = [await o.call("collect", prefix=prefix, timeout=5.0) for o in observers]
    vis = all_visible(written["sent"], applied)
    result: dict[str, Any] = {
        "visible": summary([v for v in vis if v is not None], sum(v is None for v in vis)),
        "raw_visible_ms": [None if v is None else round(v * 1000, 4) for v in vis],
    }
    if mode == "through":
        ret = [r - s for s, r in zip(written["sent"], written["returned"], strict=True)]
        last = [latest(applied, i) for i in range(count)]
        before = sum(
            1 for t, r in zip(last, written["returned"], strict=True) if t is not None and t <= r
        )
        result["returned"] = summary(ret)
        result["returned"]["unacked"] = written["unacked"]
        result["visible_before_return"] = before
        result["raw_returned_ms"] = [round(v * 1000, 4) for v in ret]
    return result


async def preload(cluster: Cluster, keys: int) -> None:
    """Fill every replica with ``keys`` entries written on node 0."""
    writer, observers = cluster.members[0], cluster.members[1:]
    for o in observers:
        await o.call("sink", sentinel="pre:end")
    await writer.call("blast", prefix="pre", total=keys, keys=keys, stream=True)
    for o in observers:
        got = await o.call("sink_wait", timeout=120.0, keys=keys, total=keys)
        if got["done"] is None or got["wrong"]:
            raise RuntimeError(f"preload incomplete: {got}")
    await asyncio.sleep(0.5)


async def latency_suite(args: argparse.Namespace, processes: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in args.sizes:
        async with Cluster(args, n, processes) as cluster:
            for mode in ("behind", "through"):
                res = await measure_latency(cluster, mode, args.writes, seed=n)
                out[f"N{n}_{mode}"] = res
                place = "processes" if processes else "one loop"
                v = res["visible"]
                line = f"  {place:9} N={n:<2} {mode:7}: visible p50 {v['p50_ms']:.2f} ms"
                line += f" p99 {v['p99_ms']:.2f} ms"
                if mode == "through":
                    line += f", return p99 {res['returned']['p99_ms']:.2f} ms"
                print(line, flush=True)
            out[f"N{n}_stats"] = [await m.call("stats") for m in cluster.members]
    if processes and args.preload:
        # The same with every replica holding many keys: background work that scans
        # the whole map (anti-entropy answers, tombstone collection every 5 s) shows.
        async with Cluster(args, 3, processes) as cluster:
            await preload(cluster, args.preload)
            res = await measure_latency(cluster, "behind", args.preload_writes, seed=33)
            out["N3_behind_preloaded"] = res
            v = res["visible"]
            print(
                f"  {'processes':9} N=3  behind with {args.preload} keys held: visible p50 "
                f"{v['p50_ms']:.2f} ms p99 {v['p99_ms']:.2f} ms max {v['max_ms']:.0f} ms",
                flush=True,
            )
    return out


async def throughput(
    args: argparse.Namespace, processes: bool, keys: int, stream: bool, profile: str = ""
) -> dict[str, Any]:
    total = args.updates
    async with Cluster(args, 2, processes) as cluster:
        a, b = cluster.members
        # Warm-up.
        await b.call("sink", sentinel="warm:end")
        await a.call("blast", prefix="warm", total=2000, keys=2000, stream=True)
        await b.call("sink_wait", timeout=10.0, keys=2000, total=2000)
        prefix = f"t{keys}"
        if profile:
            await a.call("profile", on=True)
            await b.call("profile", on=True)
        await b.call("sink", sentinel=f"{prefix}:end")
        sent = await a.call("blast", prefix=prefix, total=total, keys=keys, stream=stream)
        got = await b.call("sink_wait", timeout=60.0, keys=keys, total=total)
        if profile:
            await a.call("profile", on=False, name=f"{profile}_sender")
            await b.call("profile", on=False, name=f"{profile}_receiver")
    ok = got["done"] is not None and got["wrong"] == 0
    elapsed = (got["done"] - sent["start"]) if got["done"] else None
    return {
        "processes": processes,
        "stream": stream,
        "updates": total,
        "keys": keys,
        "complete": ok,
        "wrong_keys_at_b": got["wrong"],
        "seconds": elapsed,
        "updates_per_s": total / elapsed if ok and elapsed else None,
        "writer_updates_per_s": total / (sent["written"] - sent["start"]),
        "receiver_entries_per_s": (
            sent["entries_pushed"] / (got["done"] - got["first"])
            if ok and got["first"] and got["done"] > got["first"]
            else None
        ),
        "sender_cpu_us_per_update": sent["cpu"] / total * 1e6,
        "receiver_cpu_us_per_update": got["cpu"] / total * 1e6 if got["cpu"] else None,
        "entries_sent": sent["entries_pushed"],
        "entries_received_at_b": got["entries_received"],
        "frames_dropped": sent["frames_dropped"],
        "bytes_sent": sent["bytes_sent"],
        "unacked": sent["unacked"],
    }


# ------------------------------------------------------------------ redis
async def redis_pubsub(args: argparse.Namespace, subs: int, processes: bool) -> dict[str, Any]:
    import redis.asyncio as aioredis

    count = args.writes
    channel = f"crdtcache-bench:{uuid.uuid4().hex}"
    remotes: list[Remote] = []
    locals_: list[RedisSub] = []
    pub = aioredis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    try:
        if processes:
            await asyncio.gather(*(Remote.spawn(args, remotes) for _ in range(subs)))
            for r in remotes:
                await r.call("redis_sub", channel=channel, count=count + 20)
        else:
            locals_ = [RedisSub(channel, count + 20) for _ in range(subs)]
            for s in locals_:
                await s.start()
        rng = random.Random(subs)
        sent: list[float] = []
        due = clock()
        for i in range(count + 20):  # the first 20 are a warm-up
            due += rng.uniform(*BEHIND_GAP)
            await asyncio.sleep(max(0.0, due - clock()))
            sent.append(clock())
            await pub.publish(channel, str(i))
        if processes:
            received = [
                (await r.call("redis_collect", channel=channel, timeout=5.0))["received"]
                for r in remotes
            ]
        else:
            received = [await s.collect(5.0) for s in locals_]
    finally:
        await pub.aclose()
        await asyncio.gather(*(r.quit() for r in remotes), return_exceptions=True)
    vis = all_visible(sent, received)[20:]
    res: dict[str, Any] = {
        "subscribers": subs,
        "processes": processes,
        "delivered_all": summary([v for v in vis if v is not None], sum(v is None for v in vis)),
        "raw_ms": [None if v is None else round(v * 1000, 4) for v in vis],
    }
    d = res["delivered_all"]
    place = "processes" if processes else "one loop"
    print(
        f"  redis pub/sub {place:9} {subs} subscribers: p50 {d['p50_ms']:.2f} ms "
        f"p99 {d['p99_ms']:.2f} ms",
        flush=True,
    )
    return res


def redis_pipelined_set(total: int, pipeline: int = 1000) -> dict[str, Any]:
    import redis

    r = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    prefix = f"crdtcache-bench:{uuid.uuid4().hex[:8]}:"
    try:
        # Warm-up pipeline.
        p = r.pipeline(transaction=False)
        for i in range(pipeline):
            p.set(f"{prefix}w{i}", i)
        p.execute()
        t0 = clock()
        for start in range(0, total, pipeline):
            p = r.pipeline(transaction=False)
            for i in range(start, min(total, start + pipeline)):
                p.set(f"{prefix}{i}", i)
            p.execute()
        elapsed = clock() - t0
    finally:
        for start in range(0, total, 10_000):
            r.delete(*(f"{prefix}{i}" for i in range(start, min(total, start + 10_000))))
        r.delete(*(f"{prefix}w{i}" for i in range(pipeline)))
        r.close()
    rate = total / elapsed
    print(f"  redis-py pipelined SET: {rate:,.0f} SET/s", flush=True)
    return {"sets": total, "pipeline": pipeline, "seconds": elapsed, "sets_per_s": rate}


def redis_available() -> bool:
    try:
        import redis

        return bool(redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=1).ping())
    except Exception:
        return False


# ------------------------------------------------------------------ report
def fmt_lat(d: dict[str, Any] | None) -> str:
    if not d or not d.get("count"):
        return "n/a"
    miss = f" ({d['missing']} missed)" if d.get("missing") else ""
    return f"{d['p50_ms']:.2f} / {d['p99_ms']:.2f}{miss}"


def fmt_rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 1000:,.0f}k/s"


def table(res: dict[str, Any], args: argparse.Namespace) -> str:
    loop = res["latency_one_loop"]
    procs = res["latency_processes"]
    rp = res.get("redis", {})
    rows: list[tuple[str, ...]] = [
        ("figure (p50 / p99 ms)", "crdtcache 1 loop", "crdtcache procs", "Redis peer", "target")
    ]
    for n in args.sizes:
        subs = n - 1
        rows.append(
            (
                f"visible on all, N={n}, write-behind",
                fmt_lat(loop.get(f"N{n}_behind", {}).get("visible")),
                fmt_lat(procs.get(f"N{n}_behind", {}).get("visible")),
                f"pub/sub {subs} subs: "
                + fmt_lat(rp.get(f"pubsub_{subs}_processes", {}).get("delivered_all")),
                "p99<20 must, <10 goal",
            )
        )
    if "N3_behind_preloaded" in procs:
        rows.append(
            (
                f"  same, N=3, {args.preload // 1000}k keys held",
                "",
                fmt_lat(procs["N3_behind_preloaded"].get("visible")),
                "",
                "p99<20 must, <10 goal",
            )
        )
    for n in args.sizes:
        lr, pr = loop.get(f"N{n}_through", {}), procs.get(f"N{n}_through", {})
        rows.append(
            (
                f"write-through return, N={n}",
                fmt_lat(lr.get("returned")),
                fmt_lat(pr.get("returned")),
                "",
                "<2 goal" if n == 3 else "",
            )
        )
        rows.append(
            (
                f"  visible on all, N={n}, write-through",
                fmt_lat(lr.get("visible")),
                fmt_lat(pr.get("visible")),
                "",
                "",
            )
        )
    for subs in sorted({n - 1 for n in args.sizes}):
        rows.append(
            (
                f"Redis pub/sub, {subs} subs, one loop",
                "",
                "",
                fmt_lat(rp.get(f"pubsub_{subs}_loop", {}).get("delivered_all")),
                "",
            )
        )
    tp = res["throughput"]
    set_rate = rp.get("pipelined_set", {}).get("sets_per_s")
    rows.append(("throughput A->B (updates/s)", "", "", "", ""))

    def rate(name: str, what: str = "updates_per_s") -> str:
        return fmt_rate(tp.get(name, {}).get(what))

    def cpu(name: str) -> str:
        r = tp.get(name, {})
        a, b = r.get("sender_cpu_us_per_update"), r.get("receiver_cpu_us_per_update")
        return f"{a:.1f}, {b:.1f}" if a and b else "n/a"

    def ceiling(name: str) -> str:
        r = tp.get(name, {})
        a, b = r.get("sender_cpu_us_per_update"), r.get("receiver_cpu_us_per_update")
        return fmt_rate(1e6 / max(a, b)) if a and b else "n/a"

    rows += [
        (
            "  distinct keys, end to end",
            rate("distinct_one_loop"),
            rate("distinct_processes"),
            f"pipelined SET {fmt_rate(set_rate)}",
            ">=100k must, 200k goal",
        ),
        (
            "    A's write loop alone",
            rate("distinct_one_loop", "writer_updates_per_s"),
            rate("distinct_processes", "writer_updates_per_s"),
            "",
            "",
        ),
        ("    B applying a burst", "", rate("burst_processes", "receiver_entries_per_s"), "", ""),
        ("    CPU us/update A, B", "", cpu("distinct_processes"), "", ""),
        ("    CPU-bound ceiling", "", ceiling("distinct_processes"), "", ""),
        (f"  overwrites of {HOT_KEYS} keys", "", rate("overwrite_processes"), "", ""),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if k == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = args.sizes
    fig, axes = plt.subplots(2, len(sizes), figsize=(6.5 * len(sizes), 8), squeeze=False)
    lo, hi = 0.05, 1000.0
    bins = [lo * (hi / lo) ** (i / 80) for i in range(81)]
    loop, procs = res["latency_one_loop"], res["latency_processes"]
    rp = res.get("redis", {})

    def hist(ax: Any, raw: Sequence[float | None] | None, label: str, style: str) -> None:
        xs = [min(max(x, lo), hi) for x in raw or () if x is not None]
        if xs:
            ax.hist(xs, bins=bins, histtype="step", label=label, linestyle=style, linewidth=1.4)

    for col, n in enumerate(sizes):
        ax = axes[0][col]
        hist(ax, procs.get(f"N{n}_behind", {}).get("raw_visible_ms"), "crdtcache, processes", "-")
        hist(ax, loop.get(f"N{n}_behind", {}).get("raw_visible_ms"), "crdtcache, one loop", "--")
        if n == 3 and "N3_behind_preloaded" in procs:
            raw = procs["N3_behind_preloaded"]["raw_visible_ms"]
            hist(ax, raw, f"crdtcache, processes, {args.preload} keys held", "-.")
        redis_raw = rp.get(f"pubsub_{n - 1}_processes", {}).get("raw_ms")
        hist(ax, redis_raw, f"Redis pub/sub to {n - 1} subscriber processes", ":")
        ax.axvline(TARGETS["behind_p99_must_ms"], color="red", lw=0.8, label="p99 must (20 ms)")
        ax.axvline(TARGETS["behind_p99_goal_ms"], color="orange", lw=0.8, label="p99 goal (10 ms)")
        ax.set_title(f"N={n}, write-behind: write -> visible on all {n - 1} others")
        ax = axes[1][col]
        hist(ax, procs.get(f"N{n}_through", {}).get("raw_returned_ms"), "processes", "-")
        hist(ax, loop.get(f"N{n}_through", {}).get("raw_returned_ms"), "one loop", "--")
        if n == 3:
            ax.axvline(TARGETS["through_n3_goal_ms"], color="orange", lw=0.8, label="goal (2 ms)")
        ax.set_title(f"N={n}, write-through: set -> flush(ack=True) returned")
    for ax in axes.flat:
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("writes")
        ax.legend(fontsize=7)
    fig.suptitle(
        f"crdtcache replication on loopback: {args.writes} writes per run, "
        f"{args.preload_writes} with {args.preload} keys held "
        f"({os.cpu_count()} cores, {res['loop']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------ main
async def bench(args: argparse.Namespace) -> dict[str, Any]:
    # SIGTERM, like Ctrl-C, cancels the run so that every cluster is closed on the way out.
    task = asyncio.current_task()
    assert task is not None
    with contextlib.suppress(NotImplementedError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    res: dict[str, Any] = {"loop": loop_name(), "loadavg_start": os.getloadavg()}
    print(
        f"event loop: {res['loop']}, {os.cpu_count()} cores, "
        f"load average {res['loadavg_start'][0]:.2f} (other work on the machine skews figures)",
        flush=True,
    )
    res["latency_one_loop"] = res["latency_processes"] = res["throughput"] = {}
    if "latency" in args.only:
        print("write-visible latency:", flush=True)
        res["latency_one_loop"] = await latency_suite(args, processes=False)
        res["latency_processes"] = await latency_suite(args, processes=True)
    if "throughput" in args.only:
        print("throughput between two nodes:", flush=True)
        res["throughput"] = await throughput_suite(args)
    if "redis" not in args.only:
        pass
    elif redis_available():
        print("Redis:", flush=True)
        rp: dict[str, Any] = {}
        for subs in sorted({n - 1 for n in args.sizes}):
            rp[f"pubsub_{subs}_loop"] = await redis_pubsub(args, subs, processes=False)
            rp[f"pubsub_{subs}_processes"] = await redis_pubsub(args, subs, processes=True)
        rp["pipelined_set"] = redis_pipelined_set(args.redis_sets)
        res["redis"] = rp
    else:
        print(f"Redis not reachable on {REDIS_HOST}:{REDIS_PORT}: peers skipped", flush=True)
    return res


async def throughput_suite(args: argparse.Namespace) -> dict[str, Any]:
    tp: dict[str, Any] = {}
    for name, processes, keys, stream in (
        ("distinct_processes", True, args.updates, True),
        ("overwrite_processes", True, HOT_KEYS, True),
        ("burst_processes", True, args.updates, False),
        ("distinct_one_loop", False, args.updates, True),
    ):
        profile = name if args.profile and name in ("distinct_processes", "burst_processes") else ""
        tp[name] = r = await throughput(args, processes, keys, stream, profile)
        detail = (
            f"B applied {fmt_rate(r['receiver_entries_per_s'])} entries"
            if not stream
            else f"A's write loop {fmt_rate(r['writer_updates_per_s'])}"
        )
        cpu_b = r["receiver_cpu_us_per_update"]
        print(
            f"  {name:19}: {fmt_rate(r['updates_per_s'])} end to end ({detail}); CPU per update "
            f"A {r['sender_cpu_us_per_update']:.1f} us, B {cpu_b or 0:.1f} us; "
            f"{r['entries_sent']} entries pushed, {r['entries_received_at_b']} received by B "
            f"(with anti-entropy), {r['frames_dropped']} frames dropped",
            flush=True,
        )
    return tp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer writes and updates")
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's default loop")
    parser.add_argument("--writes", type=int, help="recorded writes per latency run")
    parser.add_argument("--updates", type=int, help="updates per throughput run")
    parser.add_argument("--redis-sets", type=int, default=100_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 10, 25, 50])
    parser.add_argument("--sync-interval", type=float, default=0.005)
    parser.add_argument(
        "--preload",
        type=int,
        help="keys held by every replica in the extra latency run (0: skip that run)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["latency", "throughput", "redis"],
        default=["latency", "throughput", "redis"],
        help="run only these parts",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile throughput processes")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        # Ctrl-C reaches the whole process group: the coordinator shuts workers down.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        run_loop(worker_main(args.profile_path), not args.no_uvloop)
        return
    args.writes = args.writes or (150 if args.quick else 500)
    args.updates = args.updates or (50_000 if args.quick else 200_000)
    if args.preload is None:
        args.preload = 20_000 if args.quick else 100_000
    # Long enough to span one tombstone-collection period (gc_interval, 5 s).
    args.preload_writes = 300 if args.quick else 1000
    if args.quick:
        args.redis_sets = min(args.redis_sets, 20_000)
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        res = run_loop(bench(args), not args.no_uvloop)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: nodes closed, workers stopped", file=sys.stderr)
        sys.exit(130)
    res["config"] = {
        "writes": args.writes,
        "updates": args.updates,
        "redis_sets": args.redis_sets,
        "sizes": args.sizes,
        "sync_interval": args.sync_interval,
        "preload": args.preload,
        "preload_writes": args.preload_writes,
        "only": args.only,
        "behind_gap_s": BEHIND_GAP,
        "through_gap_s": THROUGH_GAP,
        "hot_keys": HOT_KEYS,
        "quick": args.quick,
    }
    res["targets"] = TARGETS
    res["machine"] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    res["wall_seconds"] = time.time() - started
    res["loadavg_end"] = os.getloadavg()
    text = table(res, args)
    print()
    print(text)
    res["table"] = text
    stem = "replication"
    if len(args.only) < 3:  # a partial run does not replace the full results
        stem += "_only_" + "_".join(args.only)
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=1))
    print(f"\nwrote {RESULTS / stem}.json", flush=True)
    if "latency" in args.only:
        plot(res, RESULTS / f"{stem}_latency.png", args)
        print(f"drew {RESULTS / stem}_latency.png", flush=True)
    print(f"({res['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
