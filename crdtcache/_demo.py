"""``crdtcache demo``: N nodes on loopback, a write spreading, a burst, a pattern invalidation.

The script (:func:`run_demo`) talks to its nodes through :class:`DemoNode`, which has
two forms: :class:`LocalNode`, a :class:`~crdtcache.Cache` in this process, and
:class:`ProcessNode`, a :class:`~crdtcache.Cache` in a process of its own (``--processes``)
that this module also runs as ``python -m crdtcache._demo`` and drives with one JSON
line per request on its stdin and one per answer on its stdout.

Times are taken with ``time.perf_counter``, the system-wide monotonic clock on Linux,
macOS and Windows, so that readings of different processes on one machine compare.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Protocol, TextIO

from crdtcache import Cache, CacheEvent, PeerError
from crdtcache.cache import _loop
from crdtcache.cache._options import CacheOptions, DiscoveryMode

__all__ = ["DEMO_MESH_TIMEOUT", "DemoNode", "LocalNode", "ProcessNode", "run_demo"]

#: How long the demo waits for the mesh to form.
DEMO_MESH_TIMEOUT: Final = 5.0
#: How long a node process may take to start and report its address.
PROCESS_START_TIMEOUT: Final = 30.0
#: The write-behind batch interval of the demo's nodes (the library's default), in ms.
SYNC_INTERVAL_MS: Final = round(1000 * CacheOptions().sync_interval)

log = logging.getLogger(__name__)


class DemoNode(Protocol):
    """One node of the demo, wherever it runs."""

    node_id: str
    address: str
    dashboard_url: str | None
    pid: int

    async def wait_for_peers(self, count: int, timeout: float) -> bool:
        """Whether ``count`` peers connected within ``timeout`` seconds."""
        ...

    async def watch(self, key: str) -> None:
        """Note the time ``key`` first arrives from a peer."""
        ...

    async def arrival(self, key: str) -> float | None:
        """When the watched ``key`` arrived (``perf_counter``), or None."""
        ...

    async def set(self, key: str, value: Any) -> float:
        """Write ``key``; returns the ``perf_counter`` reading just before the write."""
        ...

    async def get(self, key: str) -> Any:
        """Read ``key``."""
        ...

    async def write_many(self, items: Sequence[tuple[str, Any]]) -> None:
        """Write every ``(key, value)`` in order."""
        ...

    async def digest(self, keys: Sequence[str]) -> str:
        """A hash of the values this node serves for ``keys``."""
        ...

    async def count(self, pattern: str) -> int:
        """How many live keys match ``pattern``."""
        ...

    async def invalidate_pattern(self, pattern: str) -> None:
        """Invalidate every key matching ``pattern``."""
        ...

    async def statistics(self) -> dict[str, Any]:
        """Instances, sync latency p50/p99 (ms), frames and bytes sent."""
        ...

    async def close(self) -> None:
        """Stop the node."""
        ...


# ------------------------------------------------------------------ a node here
class LocalNode:
    """A demo node in this process."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.node_id = cache.node_id
        self.address = cache.address or ""
        self.dashboard_url = cache.dashboard_url
        self.pid = os.getpid()
        self._arrived: dict[str, float] = {}
        self._watched: set[str] = set()
        cache.on("set", self._seen)

    @classmethod
    async def start(cls, **options: Any) -> LocalNode:
        """Start a p2p cache with ``options``."""
        cache = Cache(backend="p2p", **options)
        await cache.start()
        return cls(cache)

    def _seen(self, event: CacheEvent) -> None:
        if event.remote and event.key in self._watched:
            self._arrived.setdefault(event.key, time.perf_counter())

    async def wait_for_peers(self, count: int, timeout: float) -> bool:
        """See :class:`DemoNode`."""
        try:
            await self.cache.wait_for_peers(count, timeout=timeout)
        except PeerError:
            return False
        return True

    async def watch(self, key: str) -> None:
        """See :class:`DemoNode`."""
        self._watched.add(key)

    async def arrival(self, key: str) -> float | None:
        """See :class:`DemoNode`."""
        return self._arrived.get(key)

    async def set(self, key: str, value: Any) -> float:
        """See :class:`DemoNode`."""
        start = time.perf_counter()
        await self.cache.set(key, value)
        return start

    async def get(self, key: str) -> Any:
        """See :class:`DemoNode`."""
        return await self.cache.get(key)

    async def write_many(self, items: Sequence[tuple[str, Any]]) -> None:
        """See :class:`DemoNode`."""
        for key, value in items:
            await self.cache.set(key, value)

    async def digest(self, keys: Sequence[str]) -> str:
        """See :class:`DemoNode`."""
        values = [await self.cache.get(k) for k in keys]
        return hashlib.sha256(json.dumps(values).encode()).hexdigest()

    async def count(self, pattern: str) -> int:
        """See :class:`DemoNode`."""
        return len(await self.cache.keys(pattern))

    async def invalidate_pattern(self, pattern: str) -> None:
        """See :class:`DemoNode`."""
        await self.cache.invalidate_pattern(pattern)

    async def statistics(self) -> dict[str, Any]:
        """See :class:`DemoNode`."""
        stats = await self.cache.get_statistics()
        latency = stats.cluster.sync_latency_ms
        return {
            "instances": stats.cluster.instances,
            "p50": latency.p50,
            "p99": latency.p99,
            "frames": stats.traffic.frames_sent,
            "bytes": stats.traffic.bytes_sent,
        }

    async def close(self) -> None:
        """See :class:`DemoNode`."""
        await self.cache.close()


# -------------------------------------------------------- a node in a process
class ProcessNode:
    """A demo node in a process of its own, driven by JSON lines (see the module doc)."""

    def __init__(self, process: asyncio.subprocess.Process, hello: dict[str, Any]) -> None:
        self.process = process
        self.node_id: str = hello["node"]
        self.address: str = hello["address"]
        self.dashboard_url: str | None = hello.get("dashboard")
        self.pid: int = hello["pid"]
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, *, log_level: int, **options: Any) -> ProcessNode:
        """Start ``python -m crdtcache._demo`` with ``options``; wait for its address."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "crdtcache._demo",
            json.dumps({"options": options, "log_level": log_level}),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), PROCESS_START_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise PeerError("a node process did not start in time") from None
        if not line:
            await process.wait()
            raise PeerError(f"a node process exited with status {process.returncode}")
        return cls(process, json.loads(line))

    async def _ask(self, op: str, **args: Any) -> Any:
        process = self.process
        assert process.stdin is not None and process.stdout is not None
        async with self._lock:
            process.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
            await process.stdin.drain()
            line = await process.stdout.readline()
        if not line:
            raise PeerError(f"node process {self.pid} exited (status {process.returncode})")
        return json.loads(line)["result"]

    async def wait_for_peers(self, count: int, timeout: float) -> bool:
        """See :class:`DemoNode`."""
        return bool(await self._ask("wait_for_peers", count=count, timeout=timeout))

    async def watch(self, key: str) -> None:
        """See :class:`DemoNode`."""
        await self._ask("watch", key=key)

    async def arrival(self, key: str) -> float | None:
        """See :class:`DemoNode`."""
        at: float | None = await self._ask("arrival", key=key)
        return at

    async def set(self, key: str, value: Any) -> float:
        """See :class:`DemoNode`."""
        return float(await self._ask("set", key=key, value=value))

    async def get(self, key: str) -> Any:
        """See :class:`DemoNode`."""
        return await self._ask("get", key=key)

    async def write_many(self, items: Sequence[tuple[str, Any]]) -> None:
        """See :class:`DemoNode`."""
        await self._ask("write_many", items=list(items))

    async def digest(self, keys: Sequence[str]) -> str:
        """See :class:`DemoNode`."""
        return str(await self._ask("digest", keys=list(keys)))

    async def count(self, pattern: str) -> int:
        """See :class:`DemoNode`."""
        return int(await self._ask("count", pattern=pattern))

    async def invalidate_pattern(self, pattern: str) -> None:
        """See :class:`DemoNode`."""
        await self._ask("invalidate_pattern", pattern=pattern)

    async def statistics(self) -> dict[str, Any]:
        """See :class:`DemoNode`."""
        stats: dict[str, Any] = await self._ask("statistics")
        return stats

    async def close(self) -> None:
        """Ask the process to close its node and exit; kill it if it does not."""
        process = self.process
        if process.returncode is None:
            assert process.stdin is not None
            with contextlib.suppress(ConnectionError):
                process.stdin.close()  # end of input: the worker closes and exits
            try:
                await asyncio.wait_for(process.wait(), 10.0)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _serve(node: LocalNode, stdin: TextIO, stdout: TextIO) -> None:
    """The worker's loop: one request per line until the end of input."""
    while True:
        line = await asyncio.to_thread(stdin.readline)
        if not line:
            return
        request = json.loads(line)
        op = request.pop("op")
        if op == "write_many":
            request["items"] = [tuple(item) for item in request["items"]]
        method: Callable[..., Awaitable[Any]] = getattr(node, op)
        result = await method(**request)
        stdout.write(json.dumps({"result": result}) + "\n")
        stdout.flush()


async def _worker(config: dict[str, Any]) -> int:
    node = await LocalNode.start(**config["options"])
    try:
        hello = {
            "node": node.node_id,
            "address": node.address,
            "dashboard": node.dashboard_url,
            "pid": node.pid,
        }
        sys.stdout.write(json.dumps(hello) + "\n")
        sys.stdout.flush()
        await _serve(node, sys.stdin, sys.stdout)
    finally:
        await node.close()
    return 0


# ------------------------------------------------------------------ the script
def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _failed(text: str) -> int:
    """Say on stderr what did not happen; the demo's status is then 1."""
    sys.stderr.write(f"crdtcache demo: {text}\n")
    sys.stderr.flush()
    return 1


async def _poll(check: Callable[[], Awaitable[bool]], timeout: float, step: float) -> float | None:
    """Seconds until ``check()`` held, or None after ``timeout``."""
    start = time.perf_counter()
    while not await check():
        if time.perf_counter() - start > timeout:
            return None
        await asyncio.sleep(step)
    return time.perf_counter() - start


async def _start_nodes(args: argparse.Namespace, cluster: str) -> list[DemoNode]:
    discovery: DiscoveryMode = "none" if args.no_mdns else "mdns"
    common: dict[str, Any] = {"cluster": cluster, "discovery": discovery}
    if args.processes:

        async def start(**options: Any) -> DemoNode:
            level = logging.getLogger().getEffectiveLevel()
            return await ProcessNode.start(log_level=level, **options)
    else:

        async def start(**options: Any) -> DemoNode:
            return await LocalNode.start(**options)

    first = await start(**common, dashboard=args.dashboard)
    nodes = [first]
    try:
        # Seeds are dialled in every discovery mode, so the demo forms a mesh even
        # where multicast is unavailable; with mDNS the nodes also find each other.
        others = [start(**common, seeds=[first.address]) for _ in range(args.nodes - 1)]
        if args.processes:  # processes start in parallel; caches here one by one
            started = await asyncio.gather(*others, return_exceptions=True)
        else:
            started = [await o for o in others]
        nodes += [n for n in started if not isinstance(n, BaseException)]
        failed = [n for n in started if isinstance(n, BaseException)]
        if failed:
            raise failed[0]
    except BaseException:
        await asyncio.gather(*(n.close() for n in nodes), return_exceptions=True)
        raise
    return nodes


async def run_demo(args: argparse.Namespace) -> int:
    """Run the demo (``crdtcache demo``); returns the exit status."""
    n: int = args.nodes
    cluster = f"demo-{random.getrandbits(24):06x}"
    where = f"in {n} processes" if args.processes else "in this process"
    found = "a seed (the first node)" if args.no_mdns else "mDNS + a seed (the first node)"
    _out(f"starting {n} nodes on 127.0.0.1 {where} (cluster {cluster!r}; discovery: {found})")
    nodes = await _start_nodes(args, cluster)
    try:
        return await _script(args, nodes)
    finally:
        await asyncio.gather(*(node.close() for node in nodes), return_exceptions=True)


async def _script(args: argparse.Namespace, nodes: list[DemoNode]) -> int:
    n = len(nodes)
    start = time.perf_counter()
    meshed = await asyncio.gather(*(x.wait_for_peers(n - 1, DEMO_MESH_TIMEOUT) for x in nodes))
    if not all(meshed):
        return _failed(f"the mesh did not form within {DEMO_MESH_TIMEOUT:g} s")
    _out(f"full mesh of {n} nodes formed in {1000 * (time.perf_counter() - start):.0f} ms:")
    for x in nodes:
        pid = f"  (pid {x.pid})" if args.processes else ""
        _out(f"  node {x.node_id}  listening on {x.address}{pid}")
    if args.dashboard:
        _out(f"dashboard: {nodes[0].dashboard_url}")

    writer, last = nodes[0], nodes[-1]
    _out("")
    _out(f"node {writer.node_id} writes user:42 = {{'name': 'Alice'}} ...")
    await asyncio.gather(*(x.watch("user:42") for x in nodes[1:]))
    began = await writer.set("user:42", {"name": "Alice"})
    arrived: dict[str, float] = {writer.node_id: 0.0}

    async def all_arrived() -> bool:
        for x in nodes[1:]:
            if x.node_id not in arrived and (at := await x.arrival("user:42")) is not None:
                arrived[x.node_id] = max(0.0, at - began)
        return len(arrived) == n

    await _poll(all_arrived, 5.0, 0.0002)
    for x in nodes:
        at = arrived.get(x.node_id)
        if at is None:
            _out(f"  {x.node_id:>14}  -- not yet")
            continue
        bar = "#" * max(1, int(at * 4000))
        _out(f"  {x.node_id:>14}  {1000 * at:6.2f} ms  {bar[:40]}")
    if len(arrived) < n:
        return _failed("the write did not reach every node")
    value = await last.get("user:42")
    _out(
        f"every node holds it: convergence time {1000 * max(arrived.values()):.2f} ms; "
        f"node {last.node_id} reads {value!r}"
    )
    _out("  (convergence time: one write, from set() on the writer to the last on('set') call)")

    burst: int = args.burst
    _out("")
    _out(
        f"{burst} writes from random nodes (write-behind, batched within {SYNC_INTERVAL_MS} ms) ..."
    )
    rng = random.Random(7)
    keys = sorted({f"item:{i % 200}" for i in range(burst)})
    order = [(rng.randrange(n), f"item:{i % 200}", i) for i in range(burst)]
    start = time.perf_counter()
    if args.processes:  # each process writes its share, all at once
        shares: dict[int, list[tuple[str, Any]]] = {i: [] for i in range(n)}
        for i, key, value in order:
            shares[i].append((key, value))
        await asyncio.gather(*(nodes[i].write_many(items) for i, items in shares.items()))
    else:  # one loop here: the writes in their random order
        for i, key, value in order:
            await nodes[i].write_many(((key, value),))

    async def identical() -> bool:
        # Converged when every node serves the same value for every key.
        digests = await asyncio.gather(*(x.digest(keys) for x in nodes))
        return len(set(digests)) == 1

    if await _poll(identical, 10.0, 0.002) is None:
        return _failed("the replicas did not converge")
    elapsed = 1000 * (time.perf_counter() - start)
    _out(f"all {n} replicas identical {elapsed:.1f} ms after the first write")

    _out("")
    _out(f"node {nodes[1].node_id} invalidates 'item:*' (one replicated pattern tombstone) ...")
    start = time.perf_counter()
    await nodes[1].invalidate_pattern("item:*")

    async def all_gone() -> bool:
        return not any(await asyncio.gather(*(x.count("item:*") for x in nodes)))

    took = await _poll(all_gone, 5.0, 0.0005)
    if took is None:
        return _failed("the invalidation did not reach every node")
    _out(f"gone on every node within {1000 * (time.perf_counter() - start):.2f} ms")

    stats = await writer.statistics()
    _out("")
    _out(
        f"node {writer.node_id}: {stats['instances']} instances, "
        f"sync latency p50 {stats['p50']:.2f} ms / p99 {stats['p99']:.2f} ms, "
        f"{stats['frames']} frames and {stats['bytes']} bytes sent"
    )
    _out(
        "  (sync latency: stamp to apply of every write it received, mostly the burst: "
        f"batches of up to {SYNC_INTERVAL_MS} ms, queueing)"
    )
    if args.dashboard:
        _out("serving the dashboard until Ctrl-C ...")
        await until_interrupted()
    return 0


async def until_interrupted() -> None:
    """Wait for SIGINT or SIGTERM (where the loop supports signal handlers)."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # non-Unix loops
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _main(argv: Sequence[str]) -> int:
    """The node process of ``crdtcache demo --processes`` (argument: its JSON config)."""
    config = json.loads(argv[0])
    logging.basicConfig(
        level=config["log_level"], format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C reaches the whole group
        return _loop.run(_worker(config))
    return 130


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
