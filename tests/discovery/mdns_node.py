"""One discovering node, run as a separate process by the mDNS tests.

Prints one JSON object per line: ``started`` (with what it announces), ``found`` and
``lost`` as MDNSDiscovery reports them, ``stats`` when asked, ``closed`` (with how long
close took). Commands on stdin: ``stats``; ``close`` (or stdin closing) makes it close
and exit. ``--lifetime`` bounds how long it can outlive a test that forgot it.

    python mdns_node.py --cluster c1 --node a --host 127.0.0.1 --port 7001
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
import time
from typing import Any

from crdtcache.discovery import MDNSDiscovery, PeerAddress

T0 = time.monotonic()


def emit(event: str, **fields: Any) -> None:
    fields.update(event=event, t=round(time.monotonic() - T0, 4))
    print(json.dumps(fields), flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--report-interval", type=float, default=5.0)
    parser.add_argument("--lifetime", type=float, default=30.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    discovery = MDNSDiscovery(args.cluster, report_interval=args.report_interval)

    def found(address: PeerAddress) -> None:
        emit("found", node=address.node_id, host=address.host, port=address.port)

    def lost(node_id: str) -> None:
        emit("lost", node=node_id)

    await discovery.start(args.node, PeerAddress(args.host, args.port), found, lost)
    announced = discovery.announced
    assert announced is not None
    emit("started", node=args.node, hosts=list(announced.hosts), port=announced.port)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.lifetime
    while True:
        line = loop.run_in_executor(None, sys.stdin.readline)
        try:
            command = (await asyncio.wait_for(line, deadline - loop.time())).strip()
        except TimeoutError:
            emit("lifetime")
            break
        if command == "stats":
            emit("stats", stats=dataclasses.asdict(discovery.statistics()))
        else:  # "close", or "" when stdin closed
            break
    start = time.monotonic()
    await discovery.close()
    emit(
        "closed",
        took=round(time.monotonic() - start, 4),
        stats=dataclasses.asdict(discovery.statistics()),
    )


if __name__ == "__main__":
    asyncio.run(main())
    # The executor thread may still block on stdin.readline: leave without joining it.
    sys.stdout.flush()
    import os

    os._exit(0)
