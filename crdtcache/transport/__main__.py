"""A bare p2p node for scripts and tests: ``python -m crdtcache.transport``.

It runs one node and obeys line commands on stdin, answering one JSON line each on
stdout: ``set KEY VALUE`` (VALUE is JSON), ``del KEY``, ``dump`` (every live key and
value), ``stats``, ``quit``. It prints ``{"ready": ..., "address": ...}`` first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from typing import Any

from crdtcache.core import GossipConfig, GossipEngine, HybridClock, Replica, encode_value
from crdtcache.transport._node import Node


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=repr) + "\n")
    sys.stdout.flush()


async def _serve(args: argparse.Namespace) -> None:
    engine = GossipEngine(
        Replica(HybridClock(args.node_id)),
        random.Random(),
        GossipConfig(anti_entropy_interval=args.anti_entropy),
    )
    node = Node(engine, listen=args.listen, cluster=args.cluster)
    await node.start()
    for seed in args.seed:
        node.add_seed(seed)
    _emit({"ready": args.node_id, "address": node.address})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := (await reader.readline()).decode():
            cmd, _, rest = line.strip().partition(" ")
            now = time.time()
            if cmd == "set":
                key, _, raw = rest.partition(" ")
                engine.set(key, encode_value(key, json.loads(raw)), now)
                node.wake()
                _emit({"ok": True})
            elif cmd == "del":
                _emit({"ok": engine.delete(rest, now)})
                node.wake()
            elif cmd == "dump":
                view = engine.replica.visible(now)
                _emit({"data": {k: v for k, (v, _, _) in view.items()}})
            elif cmd == "stats":
                _emit({"stats": node.statistics(), "peers": sorted(node.connected_peers())})
            elif cmd == "quit":
                break
            else:
                _emit({"error": f"unknown command {cmd!r}"})
    finally:
        await node.close()


def main() -> None:
    """Parse arguments and run the node until stdin closes or ``quit``."""
    parser = argparse.ArgumentParser(prog="python -m crdtcache.transport")
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--cluster", default="default")
    parser.add_argument("--seed", action="append", default=[])
    parser.add_argument("--anti-entropy", type=float, default=0.5)
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
