"""The ``crdtcache`` command line: ``demo``, ``node``, ``get``, ``set``, ``stats``, ``simulate``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from crdtcache import Cache, CacheError, CacheEvent, ConfigError, PeerError
from crdtcache.cache import _loop
from crdtcache.cache._options import DiscoveryMode

__all__ = ["main"]

#: How long ``demo`` waits for mDNS before it wires the nodes by their addresses.
DEMO_MESH_TIMEOUT = 5.0


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------ demo
async def _wait(predicate: Any, timeout: float, step: float = 0.0005) -> float | None:
    start = time.perf_counter()
    while not await predicate():
        if time.perf_counter() - start > timeout:
            return None
        await asyncio.sleep(step)
    return time.perf_counter() - start


async def _demo(args: argparse.Namespace) -> int:
    n: int = args.nodes
    if not 2 <= n <= 50:
        _out("demo: --nodes must be between 2 and 50")
        return 2
    cluster = f"demo-{random.getrandbits(24):06x}"
    discovery: DiscoveryMode = "none" if args.no_mdns else "mdns"
    _out(f"starting {n} nodes on 127.0.0.1 (cluster {cluster!r}, discovery: {discovery})")
    first = Cache(backend="p2p", cluster=cluster, discovery=discovery, dashboard=args.dashboard)
    await first.start()
    caches = [first]
    try:
        for _ in range(n - 1):
            # Seeds are dialled in every discovery mode, so the demo forms a mesh even
            # where multicast is unavailable; with mDNS the nodes also find each other.
            cache = Cache(
                backend="p2p", cluster=cluster, discovery=discovery, seeds=[first.address or ""]
            )
            await cache.start()
            caches.append(cache)
        start = time.perf_counter()
        try:
            await asyncio.gather(
                *(c.wait_for_peers(n - 1, timeout=DEMO_MESH_TIMEOUT) for c in caches)
            )
        except PeerError:
            _out("the mesh did not form in time")
            return 1
        _out(f"full mesh of {n} nodes formed in {1000 * (time.perf_counter() - start):.0f} ms:")
        for c in caches:
            _out(f"  node {c.node_id}  listening on {c.address}")
        if args.dashboard:
            _out(f"dashboard: {first.dashboard_url}")

        _out("")
        _out(f"node {caches[0].node_id} writes user:42 = {{'name': 'Alice'}} ...")
        arrived: dict[str, float] = {caches[0].node_id: 0.0}

        def arrival(node: str) -> Any:
            def seen(event: CacheEvent) -> None:
                if event.key == "user:42" and event.remote:
                    arrived.setdefault(node, time.perf_counter() - start)

            return seen

        watching = [c.on("set", arrival(c.node_id)) for c in caches[1:]]
        start = time.perf_counter()
        await caches[0].set("user:42", {"name": "Alice"})

        async def all_arrived() -> bool:
            return len(arrived) == n

        await _wait(all_arrived, 5.0, 0.0002)
        for unsubscribe in watching:
            unsubscribe()
        for c in caches:
            at = arrived.get(c.node_id)
            if at is None:
                _out(f"  {c.node_id:>14}  -- not yet")
                continue
            bar = "#" * max(1, int(at * 4000))
            _out(f"  {c.node_id:>14}  {1000 * at:6.2f} ms  {bar[:40]}")
        if len(arrived) < n:
            _out("the write did not reach every node")
            return 1
        convergence = max(arrived.values())
        value = await caches[-1].get("user:42")
        _out(
            f"every node holds it: convergence time {1000 * convergence:.2f} ms; "
            f"node {caches[-1].node_id} reads {value!r}"
        )

        _out("")
        burst = args.burst
        _out(f"{burst} writes from random nodes (write-behind, batched every 5 ms) ...")
        rng = random.Random(7)
        start = time.perf_counter()
        keys = sorted({f"item:{i % 200}" for i in range(burst)})
        for i in range(burst):
            await rng.choice(caches).set(f"item:{i % 200}", i)

        async def identical() -> bool:
            # Converged when every node serves the same value for every key.
            views = [[await c.get(k) for k in keys] for c in caches]
            return all(view == views[0] for view in views[1:])

        views = await _wait(identical, 10.0, 0.002)
        if views is None:
            _out("the replicas did not converge")
            return 1
        elapsed = 1000 * (time.perf_counter() - start)
        _out(f"all {n} replicas identical {elapsed:.1f} ms after the first write")

        _out("")
        _out(
            f"node {caches[1].node_id} invalidates 'item:*' (one replicated pattern tombstone) ..."
        )
        await caches[1].invalidate_pattern("item:*")

        async def all_gone() -> bool:
            return not any([await c.keys("item:*") for c in caches])

        took = await _wait(all_gone, 5.0)
        if took is None:
            _out("the invalidation did not reach every node")
            return 1
        _out(f"gone on every node within {1000 * took:.2f} ms")

        stats = await caches[0].get_statistics()
        lat = stats.cluster.sync_latency_ms
        _out("")
        _out(
            f"node {caches[0].node_id}: {stats.cluster.instances} instances, "
            f"sync latency p50 {lat.p50:.2f} ms / p99 {lat.p99:.2f} ms, "
            f"{stats.traffic.frames_sent} frames and {stats.traffic.bytes_sent} bytes sent"
        )
        if args.dashboard:
            _out("serving the dashboard until Ctrl-C ...")
            await _until_interrupted()
        return 0
    finally:
        await asyncio.gather(*(c.close() for c in caches), return_exceptions=True)


async def _until_interrupted() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # non-Unix loops
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


# ------------------------------------------------------------------ node
async def _node(args: argparse.Namespace) -> int:
    cache = Cache(
        backend="p2p",
        node_id=args.node_id,
        cluster=args.cluster,
        listen=args.listen,
        discovery=args.discovery,
        seeds=tuple(args.seed),
        persist_path=args.persist,
        dashboard=args.dashboard,
        secret=_secret(args),
    )
    await cache.start()
    _out(json.dumps({"node": cache.node_id, "address": cache.address, "cluster": args.cluster}))
    try:
        await _until_interrupted()
    finally:
        await cache.close()
    return 0


def _secret(args: argparse.Namespace) -> bytes | None:
    """The cluster secret from ``--secret-file`` (surrounding whitespace stripped)."""
    if args.secret_file is None:
        return None
    try:
        with open(args.secret_file, "rb") as f:
            return f.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the secret file: {exc}") from exc


# ------------------------------------------------------- talking to a node
async def _client(args: argparse.Namespace) -> int:
    from crdtcache.transport import NodeClient

    async with NodeClient(args.address, cluster=args.cluster, secret=_secret(args)) as client:
        if args.command == "get":
            found, value = await client.get(args.key)
            if not found:
                _out("(absent)")
                return 1
            _out(json.dumps(value, default=repr))
        elif args.command == "set":
            value = json.loads(args.value) if args.json else args.value
            await client.set(args.key, value, ttl=args.ttl)
            _out("OK")
        else:
            _out(json.dumps(await client.stats(), indent=2, default=repr))
    return 0


# ------------------------------------------------------------- simulate
def _simulate(args: argparse.Namespace) -> int:
    from crdtcache.core import GossipConfig
    from crdtcache.testing import SimulatedNetwork

    config = GossipConfig(fanout=args.fanout, sync_interval=0.005)
    net = SimulatedNetwork(
        args.nodes, seed=args.seed, config=config, loss=args.loss, delay=(0.001, 0.010)
    )
    net.run(0.1)
    stamp = net.set("n0", "greeting", "hello")
    _out(f"simulated cluster of {args.nodes} nodes, fanout {args.fanout}, loss {args.loss:.0%}")
    holders_before = 0
    start = net.now
    while net.now - start < 10.0:
        holders = sum(1 for n in net.nodes.values() if "greeting" in net.view(n.id))
        if holders != holders_before:
            bar = "#" * holders + "." * (args.nodes - holders)
            _out(f"  t={1000 * (net.now - start):7.1f} ms  [{bar}] {holders}/{args.nodes}")
            holders_before = holders
        if net.has("greeting", stamp):
            _out(f"converged in {1000 * (net.now - start):.1f} ms of simulated time")
            return 0
        net.run(0.001)
    _out("did not converge within 10 s of simulated time")
    return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crdtcache", description="A peer-to-peer replicated cache."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="N nodes on loopback: watch a write spread")
    demo.add_argument("--nodes", type=int, default=5)
    demo.add_argument("--burst", type=int, default=2000, help="writes in the burst step")
    demo.add_argument("--no-mdns", action="store_true", help="wire the nodes by address only")
    demo.add_argument("--dashboard", metavar="HOST:PORT", help="serve the first node's dashboard")
    demo.set_defaults(run=_demo)

    node = sub.add_parser("node", help="run one node until interrupted")
    node.add_argument("--node-id")
    node.add_argument("--cluster", default="default")
    node.add_argument("--listen", default="127.0.0.1:7946")
    node.add_argument("--discovery", choices=("mdns", "static", "none"), default="mdns")
    node.add_argument("--seed", action="append", default=[], metavar="HOST:PORT")
    node.add_argument("--persist", metavar="PATH", help="SQLite file for the replica")
    node.add_argument("--dashboard", metavar="HOST:PORT")
    node.add_argument("--secret-file", metavar="PATH", help="file holding the cluster secret")
    node.set_defaults(run=_node)

    for name, helptext in (
        ("get", "read a key from a running node"),
        ("set", "write a key through a running node"),
        ("stats", "statistics of a running node"),
    ):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("address", metavar="HOST:PORT", help="the node's peer address")
        cmd.add_argument("--cluster", default="default")
        cmd.add_argument("--secret-file", metavar="PATH", help="file holding the cluster secret")
        if name in ("get", "set"):
            cmd.add_argument("key")
        if name == "set":
            cmd.add_argument("value")
            cmd.add_argument("--json", action="store_true", help="parse VALUE as JSON")
            cmd.add_argument("--ttl", type=float)
        cmd.set_defaults(run=_client)

    sim = sub.add_parser("simulate", help="a simulated cluster (no sockets)")
    sim.add_argument("--nodes", type=int, default=50)
    sim.add_argument("--fanout", type=int, default=3)
    sim.add_argument("--loss", type=float, default=0.05)
    sim.add_argument("--seed", type=int, default=1)
    sim.set_defaults(run=_simulate, sync=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if getattr(args, "sync", False):
            result: int = args.run(args)
        else:
            result = _loop.run(args.run(args))
    except CacheError as exc:
        _out(f"crdtcache: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
