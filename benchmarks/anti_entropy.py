"""Anti-entropy cost after a partition, against the divergent data and a full-state transfer.

What is measured
----------------
SPEC section 4: "anti-entropy after a partition with 1 % divergent keys of 100k: must
<= 5x the divergent data, goal <= 2x, measured against full-state transfer".

Two nodes of :class:`~crdtcache.testing.SimulatedNetwork` (the production
:class:`~crdtcache.core.GossipEngine`, default :class:`~crdtcache.core.GossipConfig`,
1 ms links) share ``--keys`` keys (default 100 000, values of ``--value-bytes`` bytes),
written half on each node and replicated by the engines themselves (delta push with
stream claims), so both start with equal entries and equal marks. Then, per scenario:

1. partition the two nodes;
2. write the divergent keys (updates of existing keys) on one side (1 %) or on both
   sides (0.5 % each, disjoint keys); the delta pushes of those writes are blocked;
3. keep the partition for ``1.5 s`` (peers stay alive: repaired by the periodic
   anti-entropy, every 1 s) or ``10 s`` (peers declared dead: repaired when they hear
   each other again);
4. heal, and run until both nodes hold every divergent write (then check that the two
   replicas serve the same map), then 2 s more to catch any redundant late exchange.

Every message delivered after the heal goes through the transport's wire codec
(``crdtcache.transport.encode`` then ``decode``, so the receiver gets what the wire
carried) and is counted: messages, entries, and bytes of the framed body (msgpack, an
entry is ``[key, kind, value, ts, origin, expires]``, plus the 4-byte length header).
The baselines:

* **divergent data**: the bytes the codec spends on the divergent entries alone (a
  Push of exactly those entries minus an empty Push): the least any protocol moves;
* **full-state transfer**: every entry of the replica in ``SyncResponse`` messages of
  ``max_message_entries`` entries each, framed, as the engine sends a full sync.

The simulator starts both nodes together, so their timers (anti-entropy every 1 s,
pings to a dead peer every 2 s) stay in phase; after a long partition the periodic
anti-entropy pull can then fire while the catch-up pull started on reconnection is
still in flight, and the divergent entries are sent twice: the "+2 s" columns show it.

Also timed (median of repeats, wall clock): ``Replica.changes_since`` (what every
anti-entropy request costs the answering node: found in its change log at the cost of
the entries returned, see ``benchmarks/catchup.py`` for the scan it replaced),
``full_state()``, and codec encoding of the divergent and the full payloads.

Run ``python benchmarks/anti_entropy.py`` (about 30 s) or ``--quick`` (10k keys).
Writes ``benchmarks/results/anti_entropy.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from crdtcache.core import Entry, GossipConfig, Message, Push, Stamp, SyncResponse
from crdtcache.testing import SimulatedNetwork
from crdtcache.transport import decode, encode, encode_frame

RESULTS = Path(__file__).resolve().parent / "results"
LINK = 0.001  # one-way delay of the simulated link, seconds
TICK = 0.005
TRAILING = 2.0  # simulated seconds watched after convergence
MUST_RATIO = 5.0
GOAL_RATIO = 2.0


# ------------------------------------------------------------------------- wire
def frame_bytes(m: Message) -> int:
    """Bytes of one message on the wire: the transport's codec body plus frame header."""
    return len(encode_frame(encode(m)))


def entries_bytes(entries: Sequence[tuple[str, Entry]]) -> int:
    """Bytes the codec spends on exactly these entries (the divergent-data baseline)."""
    return len(encode(Push(tuple(entries)))) - len(encode(Push(())))


def full_state_bytes(net: SimulatedNetwork, node: str) -> tuple[int, int]:
    """Bytes and message count of a full-state transfer of ``node``'s replica.

    Chunked by ``max_message_entries`` as the engine chunks a sync response (with
    100-byte values the count limit binds before ``max_message_bytes``).
    """
    replica = net.nodes[node].replica
    entries, patterns = replica.full_state()
    per = net.config.max_message_entries
    chunks = [entries[i : i + per] for i in range(0, len(entries), per)] or [[]]
    marks = dict(replica.marks)
    total = 0
    for i, chunk in enumerate(chunks):
        first = tuple(patterns) if i == 0 else ()
        total += frame_bytes(SyncResponse(1, i, len(chunks), tuple(chunk), first, marks, True))
    return total, len(chunks)


# ------------------------------------------------------------------- traffic meter
@dataclass
class Meter:
    """Counts what the network delivers while ``on``, by message type (a codec hook)."""

    on: bool = False
    messages: Counter[str] = field(default_factory=Counter)
    entries: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)

    def __call__(self, message: Message) -> Message:
        if self.on:
            kind = type(message).__name__
            self.messages[kind] += 1
            self.entries[kind] += len(getattr(message, "entries", ()))
            body = encode(message)
            self.bytes[kind] += len(encode_frame(body))
            # The receiver gets what the wire carried.
            return cast(Message, decode(body))
        return message

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {
            kind: {"messages": n, "entries": self.entries[kind], "bytes": self.bytes[kind]}
            for kind, n in sorted(self.messages.items())
        }

    def reset(self) -> None:
        self.messages.clear()
        self.entries.clear()
        self.bytes.clear()


# ------------------------------------------------------------------------ scenario
def build(keys: int, value_bytes: int, seed: int) -> tuple[SimulatedNetwork, Meter, float]:
    """Two nodes sharing ``keys`` keys, replicated by the engines; returns build seconds."""
    started = time.perf_counter()
    meter = Meter()
    net = SimulatedNetwork(["a", "b"], seed=seed, delay=(LINK, LINK), tick=TICK, codec=meter)
    net.run(0.05)
    value = "v" * value_bytes
    for i in range(keys):
        net.set("a" if i % 2 == 0 else "b", f"key:{i:06d}", value)
    a, b = net.nodes["a"].replica, net.nodes["b"].replica
    deadline = net.now + 5.0
    while net.now < deadline and (len(a) < keys or len(b) < keys):
        net.run(0.05)
    net.run(0.1)
    if a.changes_since(b.marks)[0] or b.changes_since(a.marks)[0] or a.marks != b.marks:
        raise AssertionError("shared state did not settle with equal marks")
    return net, meter, time.perf_counter() - started


def _until(net: SimulatedNetwork, writes: Sequence[tuple[str, Stamp]], timeout: float) -> float:
    """Run until both nodes hold every write; the simulated seconds it took."""
    start = net.now
    missing = list(writes)
    while missing:
        missing = [(k, s) for k, s in missing if not net.has(k, s)]
        if missing and net.now - start > timeout:
            raise AssertionError(f"{len(missing)} divergent writes not repaired in {timeout} s")
        if missing:
            net.run(0.001)
    return net.now - start


def scenario(
    name: str,
    split: dict[str, int],
    partition: float,
    *,
    keys: int,
    value_bytes: int,
    seed: int,
) -> dict[str, Any]:
    """Build, partition, write the divergent keys, heal, and meter the repair."""
    net, meter, build_seconds = build(keys, value_bytes, seed)
    rng = random.Random(f"{name}-{seed}")
    chosen = rng.sample(range(keys), sum(split.values()))
    net.partition(["a"], ["b"])
    writes: list[tuple[str, Stamp]] = []
    pos = 0
    value = "w" * value_bytes
    for node, count in split.items():
        for i in chosen[pos : pos + count]:
            key = f"key:{i:06d}"
            writes.append((key, net.set(node, key, value)))
        pos += count
    net.run(partition)
    divergent = [(k, net.nodes[s.node].replica.entries[k]) for k, s in writes]
    div_bytes = entries_bytes(divergent)
    full_bytes, full_messages = full_state_bytes(net, "a")

    net.heal()
    meter.reset()
    meter.on = True
    repair_seconds = _until(net, writes, timeout=30.0)
    repair = meter.snapshot()
    meter.reset()
    net.run(TRAILING)
    meter.on = False
    trailing = meter.snapshot()
    if not net.converged():
        raise AssertionError(f"{name}: replicas differ after the repair")

    sent_bytes = sum(v["bytes"] for v in repair.values())
    sent_entries = sum(v["entries"] for v in repair.values())
    total_bytes = sent_bytes + sum(v["bytes"] for v in trailing.values())
    total_entries = sent_entries + sum(v["entries"] for v in trailing.values())
    stats = {nid: n.engine.stats for nid, n in net.nodes.items()}
    return {
        "scenario": name,
        "partition_seconds": partition,
        "keys": keys,
        "value_bytes": value_bytes,
        "divergent_keys": len(writes),
        "divergent_bytes": div_bytes,
        "full_state_bytes": full_bytes,
        "full_state_messages": full_messages,
        "repair_seconds": round(repair_seconds, 4),
        "repair_messages": sum(v["messages"] for v in repair.values()),
        "repair_entries": sent_entries,
        "repair_bytes": sent_bytes,
        "ratio_to_divergent": sent_bytes / div_bytes,
        "ratio_to_full_state": sent_bytes / full_bytes,
        "episode_entries": total_entries,
        "episode_bytes": total_bytes,
        "episode_ratio_to_divergent": total_bytes / div_bytes,
        "episode_ratio_to_full_state": total_bytes / full_bytes,
        "repair_by_type": repair,
        "trailing_by_type": trailing,
        "full_syncs_sent": sum(s.full_syncs_sent for s in stats.values()),
        "build_seconds": round(build_seconds, 2),
    }


# --------------------------------------------------------------------------- timing
def timed(fn: Callable[[], object], repeat: int, *, collect: bool = True) -> float:
    """Median wall-clock milliseconds of ``fn()`` over ``repeat`` calls.

    With ``collect=False`` the cyclic garbage collector is off while timing, which
    separates the work itself from the GC passes its allocations trigger.
    """
    samples = []
    enabled = gc.isenabled()
    try:
        if not collect:
            gc.disable()
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1000)
    finally:
        if enabled:
            gc.enable()
    return statistics.median(samples)


def scan_timings(keys: int, value_bytes: int, seed: int, repeat: int) -> list[dict[str, Any]]:
    """Time the anti-entropy building blocks on a ``keys``-entry replica."""
    net, _, _ = build(keys, value_bytes, seed)
    a = net.nodes["a"].replica
    in_sync = dict(net.nodes["b"].replica.marks)
    rng = random.Random(seed)
    for i in rng.sample(range(keys), keys // 100):
        net.set("a", f"key:{i:06d}", "w" * value_bytes)
    behind = in_sync  # b's marks from before the 1 % writes on a
    divergent, _ = a.changes_since(behind)
    everything, _ = a.full_state()
    rows = [
        ("changes_since, peer in sync", lambda: a.changes_since(a.marks), 0),
        ("changes_since, peer 1% behind", lambda: a.changes_since(behind), len(divergent)),
        ("full_state()", a.full_state, len(everything)),
        ("needs_full_state", lambda: a.needs_full_state(behind), 0),
        ("codec encode, 1% entries", lambda: encode(Push(tuple(divergent))), len(divergent)),
        ("codec encode, full state", lambda: encode(Push(tuple(everything))), len(everything)),
    ]
    out = []
    for label, fn, returned in rows:
        ms = timed(fn, repeat)
        out.append(
            {
                "operation": label,
                "entries_in_map": len(a),
                "returned": returned,
                "median_ms": ms,
                "ns_per_map_entry": ms * 1e6 / len(a),
                "median_ms_gc_off": timed(fn, repeat, collect=False),
            }
        )
    return out


# --------------------------------------------------------------------------- output
def print_tables(results: list[dict[str, Any]], timings: list[dict[str, Any]]) -> None:
    """The repair table, the per-type breakdown and the scan timings."""
    print()
    head = (
        f"{'scenario':<18} {'part.':>5} {'div.keys':>8} | {'repair: msgs':>12} {'entries':>7} "
        f"{'bytes':>8} {'ms':>5} | {'+2 s: entries':>13} {'bytes':>8} | {'div. bytes':>10} "
        f"{'x div':>5} {'+2 s':>5} | {'full bytes':>10} {'x full +2 s':>11}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        worst = r["episode_ratio_to_divergent"]
        verdict = "goal" if worst <= GOAL_RATIO else "must" if worst <= MUST_RATIO else "FAIL"
        print(
            f"{r['scenario']:<18} {r['partition_seconds']:>4g}s {r['divergent_keys']:>8} | "
            f"{r['repair_messages']:>12} {r['repair_entries']:>7} {r['repair_bytes']:>8} "
            f"{r['repair_seconds'] * 1000:>5.0f} | {r['episode_entries']:>13} "
            f"{r['episode_bytes']:>8} | {r['divergent_bytes']:>10} "
            f"{r['ratio_to_divergent']:>4.2f}x {worst:>4.2f}x | {r['full_state_bytes']:>10} "
            f"{r['episode_ratio_to_full_state']:>10.2%}  {verdict}"
        )
    print()
    print("repair: every message delivered from the heal until both nodes hold every divergent")
    print("  write (sync requests, responses and pings), and the simulated ms it took.")
    print("+2 s: the same plus everything delivered in the 2 s after (a redundant exchange")
    print("  shows up here as entries sent again).")
    print("x div: bytes / divergent bytes (SPEC must <= 5x, goal <= 2x; the verdict uses +2 s).")
    print("x full +2 s: bytes incl. the 2 s after / bytes of a full-state transfer.")
    print()
    print("Messages by type (repair window | following 2 s):")
    for r in results:
        parts = []
        for kind, v in r["repair_by_type"].items():
            parts.append(f"{kind} {v['messages']}x/{v['entries']}e/{v['bytes']}B")
        late = [
            f"{kind} {v['messages']}x/{v['entries']}e/{v['bytes']}B"
            for kind, v in r["trailing_by_type"].items()
        ]
        print(f"  {r['scenario']}, {r['partition_seconds']:g}s: {', '.join(parts)}")
        print(f"  {'':<{len(r['scenario'])}}   then: {', '.join(late) or 'nothing'}")
    print()
    head = (
        f"{'operation':<30} {'map':>7} {'returned':>8} | {'median ms':>9} {'ns/entry':>8} | "
        f"{'ms, gc off':>10}"
    )
    print(head)
    print("-" * len(head))
    for t in timings:
        print(
            f"{t['operation']:<30} {t['entries_in_map']:>7} {t['returned']:>8} | "
            f"{t['median_ms']:>9.2f} {t['ns_per_map_entry']:>8.0f} | "
            f"{t['median_ms_gc_off']:>10.2f}"
        )
    print("Wall-clock medians in this process (GC on, as a cache runs); 'gc off' repeats the")
    print("timing with the cyclic collector disabled, to show what the allocations cost in GC.")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k keys, fewer repeats")
    parser.add_argument("--keys", type=int, help="shared keys (default 100000)")
    parser.add_argument("--value-bytes", type=int, default=100, help="bytes per value")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, help="repeats per timing (default 20)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the json")
    args = parser.parse_args(argv)
    keys = args.keys or (10_000 if args.quick else 100_000)
    repeat = args.repeat or (5 if args.quick else 20)
    one_pct = max(1, keys // 100)
    half = max(1, keys // 200)

    print("crdtcache anti-entropy after a partition")
    print(
        f"{keys} shared keys, {args.value_bytes}-byte str values, 2 nodes, default "
        f"GossipConfig (anti_entropy_interval {GossipConfig().anti_entropy_interval:g} s, "
        f"dead_after {GossipConfig().dead_after:g} s), {LINK * 1000:g} ms links"
    )
    started = time.perf_counter()
    plan = [
        ("1% on one side", {"a": one_pct}, 1.5),
        ("1% on one side", {"a": one_pct}, 10.0),
        ("0.5% on each side", {"a": half, "b": half}, 1.5),
        ("0.5% on each side", {"a": half, "b": half}, 10.0),
    ]
    results = []
    for name, split, partition in plan:
        results.append(
            scenario(
                name, split, partition, keys=keys, value_bytes=args.value_bytes, seed=args.seed
            )
        )
        print(
            f"  {name}, {partition:g} s: done ({time.perf_counter() - started:.1f} s)",
            file=sys.stderr,
        )
    timings = scan_timings(keys, args.value_bytes, args.seed, repeat)
    print_tables(results, timings)
    elapsed = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "anti_entropy.json"
    path.write_text(
        json.dumps(
            {
                "benchmark": "anti_entropy",
                "keys": keys,
                "value_bytes": args.value_bytes,
                "seed": args.seed,
                "wire": "crdtcache.transport codec (encode) + 4-byte frame header",
                "spec": {"must_ratio": MUST_RATIO, "goal_ratio": GOAL_RATIO},
                "python": platform.python_version(),
                "msgpack": ".".join(map(str, msgpack.version)),
                "wall_seconds": round(elapsed, 1),
                "scenarios": results,
                "timings": timings,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {path}")
    print(f"total {elapsed:.1f} s")


if __name__ == "__main__":
    main()
