"""Convergence of a simulated cluster after one write and after a burst of writes.

What is measured
----------------
For N = 2 .. 100 nodes of :class:`~crdtcache.testing.SimulatedNetwork` (the production
:class:`~crdtcache.core.GossipEngine` driven by a seeded event queue), how many gossip
*rounds* pass between a write and the moment every node holds it:

* **one write** made on a random node: done when ``SimulatedNetwork.has(key, stamp)``;
* **a burst** of ``--burst`` writes (distinct keys) made at the same instant on random
  nodes: done when every node holds every write, then ``converged()`` is checked.

Definition of a round
---------------------
Every message takes exactly ``d`` seconds (``delay=(d, d)``), every node is ticked every
``d`` (``tick=d``) and flushes its queued deltas every ``d`` (``sync_interval=d``). One
round is therefore ``d`` of simulated time: one network hop, and one flush period.
``rounds = (time the last node got the write - time of the write) / d``; this includes
the wait (under one round) for the writer's next flush. Relays are sent as soon as a
push is received, so a write that travels h hops arrives after wait + h rounds.
Convergence is checked every ``d / 10``, so values are exact to 0.1 round.

Two runs per (mode, N, seed)
----------------------------
* **end-to-end**: all other timings at their defaults (``anti_entropy_interval`` 1 s =
  200 rounds of 5 ms, heartbeats 0.5 s): rounds until every node holds the write, by
  whatever mechanism (delta push, epidemic relay, or anti-entropy).
* **push-only**: the same with anti-entropy pushed out of reach
  (``anti_entropy_interval`` = 1e6 s after the initial sync), to see the epidemic by
  itself: the share of nodes a push wave reaches ("reach") and the round at which its
  last new node was reached ("wave").

The cluster is built (every pair calls ``add_peer``, which sends an initial sync
request), then left to settle for 0.1 s plus a random part of one anti-entropy interval,
so that writes fall at a random phase of the nodes' anti-entropy timers. The simulator
starts every node within one tick, so their anti-entropy timers fire together; in a
real cluster they are spread, which makes the tail of the end-to-end figure (the
slowest of several nodes waiting for anti-entropy) somewhat longer than shown here.

Modes: epidemic ``GossipConfig(fanout=3)`` and push-to-every-peer ``fanout=None``, with
no loss for every N, and with 10 % message loss for N = 100.

Reference lines (SPEC section 4): must ``<= c * log2(N)`` rounds; goal ``<= 8`` rounds for
100 nodes at fanout 3; Serf's model (https://www.serf.io/docs/internals/simulator.html,
fanout 3 with each message re-broadcast several times) gives about 10 rounds.

Run ``python benchmarks/sim_convergence.py`` (about 80 s on an idle 2-core machine) or
``--quick`` (N <= 50, 2 seeds, bursts of 20: a few seconds).
Writes ``benchmarks/results/sim_convergence.json`` and ``sim_convergence.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from crdtcache.core import GossipConfig, Stamp
from crdtcache.testing import SimulatedNetwork

RESULTS = Path(__file__).resolve().parent / "results"
ROUND_DEFINITION = (
    "round = d seconds of simulated time, where d is the fixed one-way message delay "
    "(delay=(d, d)), the tick interval and GossipConfig.sync_interval: one hop and one "
    "flush period. rounds = (time the last node holds the write - time of the write) / d, "
    "including the wait (< 1 round) for the writer's next flush; sampled every d/10."
)
SETTLE = 0.1  # seconds of simulated time for the initial syncs between all pairs
NO_ANTI_ENTROPY = 1e6  # an anti-entropy interval no run reaches
TIMEOUT = 30.0  # simulated seconds before a run is declared not converged
GOAL_ROUNDS = 8
SERF_ROUNDS = 10


def _holds(entries: dict[str, Any], key: str, stamp: Stamp) -> bool:
    e = entries.get(key)
    return e is not None and (e.ts, e.origin) >= (stamp.ts, stamp.node)


class Tracker:
    """Which (node, write) pairs are still missing; re-checks only those."""

    def __init__(self, net: SimulatedNetwork, writes: Sequence[tuple[str, Stamp]]) -> None:
        self.net = net
        self.total = len(net.nodes) * len(writes)
        self.missing = {node: list(writes) for node in net.nodes}

    def update(self) -> int:
        """Drop what arrived; return how many pairs are still missing."""
        left = 0
        for node in list(self.missing):
            entries = self.net.nodes[node].replica.entries
            still = [(k, s) for k, s in self.missing[node] if not _holds(entries, k, s)]
            if still:
                self.missing[node] = still
                left += len(still)
            else:
                del self.missing[node]
        return left


def _data_messages(net: SimulatedNetwork) -> int:
    return sum(n.engine.stats.pushes_sent + n.engine.stats.relays_sent for n in net.nodes.values())


def _write(
    net: SimulatedNetwork, rng: random.Random, keys: Sequence[str]
) -> list[tuple[str, Stamp]]:
    ids = list(net.nodes)
    return [(key, net.set(rng.choice(ids), key, f"v-{key}")) for key in keys]


def until_all_hold(
    net: SimulatedNetwork, writes: Sequence[tuple[str, Stamp]], d: float, timeout: float
) -> float | None:
    """Run until every node holds every write; return the simulated seconds, or None."""
    tracker = Tracker(net, writes)
    start = net.now
    while tracker.update():
        if net.now - start >= timeout:
            return None
        net.run(d / 10)
    return net.now - start


def push_wave(
    net: SimulatedNetwork, writes: Sequence[tuple[str, Stamp]], d: float, window: int
) -> tuple[float, float]:
    """Run ``window`` rounds; return (share of node-write pairs reached, round of last gain)."""
    tracker = Tracker(net, writes)
    start = net.now
    left = tracker.update()
    last_gain = 0.0
    while net.now - start < window * d and left:
        net.run(d / 10)
        now_left = tracker.update()
        if now_left < left:
            last_gain = (net.now - start) / d
        left = now_left
    return 1 - left / tracker.total, last_gain


def trial(
    n: int, fanout: int | None, loss: float, seed: int, d: float, burst: int
) -> dict[str, Any]:
    """One seed of one (mode, N): an end-to-end run and a push-only run."""
    rng = random.Random(f"bench-{n}-{fanout}-{loss}-{seed}")
    cfg = GossipConfig(fanout=fanout, sync_interval=d)
    net = SimulatedNetwork(n, seed=seed, config=cfg, loss=loss, delay=(d, d), tick=d)
    net.run(SETTLE + rng.random() * cfg.anti_entropy_interval)

    before = _data_messages(net)
    single = until_all_hold(net, _write(net, rng, ["single"]), d, TIMEOUT)
    pushes = _data_messages(net) - before

    net.run(rng.random() * cfg.anti_entropy_interval)
    keys = [f"burst:{i}" for i in range(burst)]
    burst_time = until_all_hold(net, _write(net, rng, keys), d, TIMEOUT)
    if burst_time is not None and not net.converged():
        raise AssertionError(f"N={n} seed={seed}: every write held but views differ")

    # Push-only: the epidemic by itself, anti-entropy out of reach after the first sync.
    quiet = GossipConfig(fanout=fanout, sync_interval=d, anti_entropy_interval=NO_ANTI_ENTROPY)
    pnet = SimulatedNetwork(n, seed=seed, config=quiet, loss=loss, delay=(d, d), tick=d)
    pnet.run(SETTLE)
    window = 4 * math.ceil(math.log2(max(n, 2))) + 20
    reach, wave = push_wave(pnet, _write(pnet, rng, ["single"]), d, window)
    burst_reach, burst_wave = push_wave(pnet, _write(pnet, rng, keys), d, window)

    def rounds(t: float | None) -> float | None:
        return None if t is None else round(t / d, 1)

    return {
        "seed": seed,
        "single_rounds": rounds(single),
        "single_push_messages": pushes,
        "burst_rounds": rounds(burst_time),
        "push_reach": reach,
        "push_wave_rounds": round(wave, 1),
        "burst_push_reach": burst_reach,
        "burst_push_wave_rounds": round(burst_wave, 1),
    }


def summarize(values: Sequence[float | None]) -> dict[str, float | None]:
    """Median, mean and max of a metric over seeds (None if any run did not converge)."""
    if not values or any(v is None for v in values):
        return {"median": None, "mean": None, "max": None}
    done = [float(v) for v in values if v is not None]
    return {"median": statistics.median(done), "mean": statistics.fmean(done), "max": max(done)}


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "timeout" if v is None else format(v, spec)


def _mode(fanout: int | None) -> str:
    return "all peers" if fanout is None else f"fanout {fanout}"


def print_tables(rows: list[dict[str, Any]], d: float, burst: int) -> None:
    """The two result tables, one line per (mode, loss, N)."""
    print()
    print(f"One write: rounds until every node holds it  (1 round = {d * 1000:g} ms)")
    head = (
        f"{'mode':<10} {'loss':>5} {'N':>4} | {'rounds med':>10} {'max':>7} | "
        f"{'ms med':>8} {'max':>8} | {'push msgs':>9} | {'push-only reach':>15} "
        f"{'wave rnds':>9} | {'c=rounds/log2N':>14}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        s = r["single_rounds"]
        med = s["median"]
        c = "-" if med is None or r["n"] < 2 else f"{med / math.log2(r['n']):.1f}"
        print(
            f"{_mode(r['fanout']):<10} {r['loss']:>5.0%} {r['n']:>4} | "
            f"{_fmt(med):>10} {_fmt(s['max']):>7} | "
            f"{_fmt(None if med is None else med * d * 1000):>8} "
            f"{_fmt(None if s['max'] is None else s['max'] * d * 1000):>8} | "
            f"{r['single_push_messages']['median']:>9.0f} | "
            f"{r['push_reach']['mean']:>14.1%}  {_fmt(r['push_wave_rounds']['median']):>9} | "
            f"{c:>14}"
        )
    print()
    print(f"Burst of {burst} writes on random nodes: rounds until every node holds all")
    head = (
        f"{'mode':<10} {'loss':>5} {'N':>4} | {'rounds med':>10} {'max':>7} | "
        f"{'push-only reach':>15} {'wave rnds':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        b = r["burst_rounds"]
        print(
            f"{_mode(r['fanout']):<10} {r['loss']:>5.0%} {r['n']:>4} | "
            f"{_fmt(b['median']):>10} {_fmt(b['max']):>7} | "
            f"{r['burst_push_reach']['mean']:>14.1%}  "
            f"{_fmt(r['burst_push_wave_rounds']['median']):>9}"
        )
    print()
    print("push msgs: Push messages (own flushes + relays) sent for the one write.")
    print("push-only reach / wave: share of nodes (burst: node-write pairs) the push wave")
    print("reaches with anti-entropy disabled (mean), and the round of its last new node")
    print("(median). rounds/log2N: the c that the median end-to-end figure needs.")


def plot(
    rows: list[dict[str, Any]], sizes: Sequence[int], path: Path, interval_rounds: float
) -> None:
    """Rounds vs N (median with max) beside c*log2(N), the SPEC goal and Serf's model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharey=True)
    fanout_used = next((r["fanout"] for r in rows if r["fanout"] is not None), 3)
    xs = [n for n in sizes if n >= 2]
    for ax, metric, title in (
        (axes[0], "single", "one write"),
        (axes[1], "burst", "burst of writes"),
    ):
        for fanout, color in ((fanout_used, "tab:blue"), (None, "tab:green")):
            line = [r for r in rows if r["fanout"] == fanout and r["loss"] == 0]
            ns = [r["n"] for r in line]
            med = [r[f"{metric}_rounds"]["median"] for r in line]
            top = [r[f"{metric}_rounds"]["max"] for r in line]
            label = f"{_mode(fanout)}: end-to-end (median, bar to max)"
            ax.plot(ns, med, "o-", color=color, label=label)
            for n, m, t in zip(ns, med, top, strict=True):
                if m is not None and t is not None:
                    ax.plot([n, n], [m, t], "-", color=color, alpha=0.5)
                    ax.plot([n], [t], "_", color=color, markersize=10)
            key = "push_wave_rounds" if metric == "single" else "burst_push_wave_rounds"
            wave = [r[key]["median"] for r in line]
            ax.plot(ns, wave, "s--", color=color, alpha=0.6, label=f"{_mode(fanout)}: push wave")
            if fanout is not None:
                reach = "push_reach" if metric == "single" else "burst_push_reach"
                for r, w in zip(line, wave, strict=True):
                    if w is not None and r["n"] >= 10:
                        share = r[reach]["mean"]
                        ax.annotate(
                            f"{share:.0%}",
                            (r["n"], w),
                            textcoords="offset points",
                            xytext=(0, -13),
                            ha="center",
                            fontsize=7,
                            color=color,
                        )
            for r in rows:
                if r["fanout"] == fanout and r["loss"] > 0:
                    ax.plot(
                        [r["n"]],
                        [r[f"{metric}_rounds"]["median"]],
                        "x",
                        color=color,
                        markersize=10,
                        label=f"{_mode(fanout)}, {r['loss']:.0%} loss (median)",
                    )
        for c, style in ((1, ":"), (2, "-.")):
            ax.plot(xs, [c * math.log2(n) for n in xs], style, color="grey", label=f"{c}·log2(N)")
        ax.axhline(
            GOAL_ROUNDS, color="tab:red", lw=1, label="SPEC goal: 8 rounds (N=100, fanout 3)"
        )
        ax.axhline(
            interval_rounds,
            color="black",
            lw=0.8,
            ls=":",
            label=f"anti_entropy_interval = {interval_rounds:.0f} rounds",
        )
        ax.plot(
            [100],
            [SERF_ROUNDS],
            "*",
            color="tab:purple",
            markersize=14,
            label="Serf/memberlist model: ≈10 rounds (N=100)",
        )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(list(sizes))
        ax.set_xticklabels([str(n) for n in sizes])
        ax.set_xlabel("nodes N")
        ax.set_title(f"crdtcache, {title} (%: share the push wave reaches)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("rounds until every node holds the write(s)")
    handles, labels = axes[0].get_legend_handles_labels()
    seen: dict[str, Any] = {}
    for h, lab in zip(handles, labels, strict=True):
        seen.setdefault(lab, h)
    fig.legend(seen.values(), seen.keys(), loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer nodes, seeds and writes")
    parser.add_argument("--sizes", type=int, nargs="+", help="cluster sizes N")
    parser.add_argument("--seeds", type=int, help="seeds per (mode, N) (default 5)")
    parser.add_argument("--burst", type=int, help="writes in the burst (default 100)")
    parser.add_argument("--hop-ms", type=float, default=5.0, help="d: delay, tick, sync interval")
    parser.add_argument("--fanout", type=int, default=3, help="fanout of the epidemic mode")
    parser.add_argument("--loss", type=float, default=0.10, help="loss rate of the lossy rows")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for json and png")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)

    sizes = args.sizes or ([2, 5, 10, 20, 50] if args.quick else [2, 5, 10, 20, 50, 100])
    seeds = args.seeds or (2 if args.quick else 5)
    burst = args.burst or (20 if args.quick else 100)
    d = args.hop_ms / 1000
    lossy_n = max(sizes)
    modes = [(args.fanout, 0.0), (None, 0.0), (args.fanout, args.loss), (None, args.loss)]

    print("crdtcache simulated convergence")
    print(ROUND_DEFINITION)
    print(
        f"d = {d * 1000:g} ms; seeds per row = {seeds}; burst = {burst} writes; "
        f"other GossipConfig fields at their defaults (anti_entropy_interval = "
        f"{GossipConfig().anti_entropy_interval:g} s = "
        f"{GossipConfig().anti_entropy_interval / d:.0f} rounds)."
    )
    started = time.perf_counter()
    rows = []
    for fanout, loss in modes:
        for n in sizes if loss == 0 else [lossy_n]:
            runs = [trial(n, fanout, loss, seed, d, burst) for seed in range(seeds)]
            row: dict[str, Any] = {"fanout": fanout, "loss": loss, "n": n, "runs": runs}
            for metric in (
                "single_rounds",
                "single_push_messages",
                "burst_rounds",
                "push_reach",
                "push_wave_rounds",
                "burst_push_reach",
                "burst_push_wave_rounds",
            ):
                row[metric] = summarize([run[metric] for run in runs])
            rows.append(row)
            print(
                f"  {_mode(fanout)}, loss {loss:.0%}, N={n}: done "
                f"({time.perf_counter() - started:.1f} s)",
                file=sys.stderr,
            )
    print_tables(rows, d, burst)
    elapsed = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "sim_convergence",
        "round_definition": ROUND_DEFINITION,
        "hop_seconds": d,
        "seeds": seeds,
        "burst_writes": burst,
        "config_defaults": {
            "anti_entropy_interval": GossipConfig().anti_entropy_interval,
            "heartbeat_interval": GossipConfig().heartbeat_interval,
            "max_hops": GossipConfig().max_hops,
        },
        "spec": {
            "must": "<= c*log2(N) rounds",
            "goal_rounds_n100_fanout3": GOAL_ROUNDS,
            "serf_model_rounds_n100": SERF_ROUNDS,
            "serf_model_reference": "https://www.serf.io/docs/internals/simulator.html",
        },
        "python": platform.python_version(),
        "wall_seconds": round(elapsed, 1),
        "rows": rows,
    }
    json_path = args.out / "sim_convergence.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {json_path}")
    if not args.no_plot:
        png = args.out / "sim_convergence.png"
        plot(rows, sizes, png, GossipConfig().anti_entropy_interval / d)
        print(f"wrote {png}")
    print(f"total {elapsed:.1f} s")


if __name__ == "__main__":
    main()
