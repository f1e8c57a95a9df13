"""The ``crdtcache`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _simulate(args: argparse.Namespace) -> int:
    from crdtcache.core import GossipConfig
    from crdtcache.testing import SimulatedNetwork

    config = GossipConfig(fanout=args.fanout, sync_interval=0.005)
    net = SimulatedNetwork(
        args.nodes, seed=args.seed, config=config, loss=args.loss, delay=(0.001, 0.010)
    )
    stamp = net.set("n0", "greeting", "hello")
    print(f"simulated cluster of {args.nodes} nodes, fanout {args.fanout}, loss {args.loss:.0%}")
    holders_before = 0
    took = None
    start = net.now
    while net.now - start < 10.0:
        holders = sum(
            1 for n in net.nodes.values() if net.view(n.id).get("greeting", (None,))[0] == "hello"
        )
        if holders != holders_before:
            bar = "#" * holders + "." * (args.nodes - holders)
            print(f"  t={1000 * (net.now - start):7.1f} ms  [{bar}] {holders}/{args.nodes}")
            holders_before = holders
        if net.has("greeting", stamp):
            took = net.now - start
            break
        net.run(0.001)
    if took is None:
        print("did not converge within 10 s of simulated time")
        return 1
    print(f"converged in {1000 * took:.1f} ms of simulated time; messages: {net.stats}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crdtcache", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="run a simulated cluster and show a write spreading")
    sim.add_argument("--nodes", type=int, default=20)
    sim.add_argument("--fanout", type=int, default=3)
    sim.add_argument("--loss", type=float, default=0.05)
    sim.add_argument("--seed", type=int, default=1)
    sim.set_defaults(func=_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
