"""Shared by the core tests: replicas and entries, lawful resolvers, engines joined by a
link, and checks on simulated clusters."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

from hypothesis import settings

from crdtcache.core import (
    TOMBSTONE_GRACE,
    Entry,
    GossipConfig,
    GossipEngine,
    HybridClock,
    Message,
    Outgoing,
    PatternTombstone,
    Replica,
    Resolver,
    Stamp,
    Version,
    last_writer_wins,
    pack_ts,
)
from crdtcache.testing import SimulatedNetwork

#: A fixed wall-clock origin (seconds since the epoch) for every test.
T0 = 1_700_000_000.0


def budget(fraction: float) -> int:
    """Examples for a property test, scaled from the active profile's ``max_examples``."""
    return max(1, int(settings.default.max_examples * fraction))


def ts(wall: float, logical: int = 0) -> int:
    """The packed HLC ``ts`` of a wall time in seconds."""
    return pack_ts(int(wall * 1000), logical)


def make_replica(
    node: str = "a",
    *,
    grace: float = TOMBSTONE_GRACE,
    resolver: Resolver | None = None,
    max_drift: float = 60.0,
) -> Replica:
    """A fresh replica for ``node``."""
    clock = HybridClock(node, max_drift=max_drift)
    return Replica(clock, resolver=resolver, tombstone_grace=grace)


def make_entry(value: object, wall: float, origin: str, *, expires: float | None = None) -> Entry:
    """An entry written by ``origin`` at ``wall`` seconds."""
    return Entry(value, ts(wall), origin, expires)


def merge_state(dst: Replica, src: Replica, now: float) -> Replica:
    """Merge every pattern tombstone and entry ``src`` holds into ``dst``; return ``dst``."""
    for tomb in list(src.patterns.values()):
        dst.merge_pattern(tomb, now)
    for key, e in list(src.entries.items()):
        dst.merge_entry(key, e, now)
    return dst


def merged(*states: Replica, now: float = T0) -> Replica:
    """A fresh replica holding the merge of ``states``, in that order."""
    out = make_replica("m")
    for state in states:
        merge_state(out, state, now)
    return out


def apply_deltas(
    deltas: Iterable[tuple[str, Entry] | PatternTombstone],
    now: float = T0,
    resolver: Resolver | None = None,
) -> Replica:
    """A fresh replica built by merging ``deltas`` in order."""
    out = make_replica("m", resolver=resolver)
    for delta in deltas:
        if isinstance(delta, PatternTombstone):
            out.merge_pattern(delta, now)
        else:
            out.merge_entry(delta[0], delta[1], now)
    return out


def observable(r: Replica, now: float) -> tuple[dict[str, Any], frozenset[PatternTombstone]]:
    """What merge laws compare: the visible state at ``now`` and the pattern tombstones."""
    return r.visible(now), frozenset(r.patterns.values())


def full(r: Replica) -> tuple[dict[str, tuple[object, int, str, float | None]], frozenset[Any]]:
    """Every stored entry (tombstones included) and pattern tombstone, as plain data."""
    entries = {k: (e.value, e.ts, e.origin, e.expires) for k, e in r.entries.items()}
    return entries, frozenset(r.patterns.values())


# ------------------------------------------------------------------ resolvers
def max_value_wins(local: Version, remote: Version) -> Version:
    """Lawful: a value beats a delete, then the greater value, then the greater stamp."""

    def rank(v: Version) -> tuple[bool, int, Stamp]:
        return (not v.deleted, -1 if v.deleted else v.value, v.stamp)

    return remote if rank(remote) > rank(local) else local


def deletes_win(local: Version, remote: Version) -> Version:
    """Lawful: any delete beats any value, then the greater stamp."""
    return remote if (remote.deleted, remote.stamp) > (local.deleted, local.stamp) else local


#: Lawful resolvers by name (integer values only for ``max value``).
RESOLVERS: dict[str, Resolver] = {
    "max value": max_value_wins,
    "deletes win": deletes_win,
    "lww": last_writer_wins,
}


# -------------------------------------------------------- simulated clusters
#: Clock offsets in simulated clusters stay within this bound (seconds): views are
#: compared this far ahead of simulated time, where every node has seen every expiry.
MAX_OFFSET = 0.2


def views(sim: SimulatedNetwork, at: float) -> dict[str, dict[str, tuple[Any, Stamp]]]:
    """Every live node's visible state at the common time ``at``: key -> (value, stamp)."""
    return {
        n.id: {k: (v, stamp) for k, (v, stamp, _) in n.replica.visible(at).items()}
        for n in sim.live_nodes()
    }


def in_agreement(sim: SimulatedNetwork, *, model: bool = True) -> bool:
    """Every live node serves the same as the model (or, without it, as each other)."""
    at = sim.now + MAX_OFFSET
    seen = list(views(sim, at).values())
    expected = sim.expected(at) if model else seen[0]
    return all(view == expected for view in seen)


def converge(sim: SimulatedNetwork, timeout: float = 30.0, *, model: bool = True) -> bool:
    """Run until :func:`in_agreement` holds; False if ``timeout`` simulated seconds pass."""
    return sim.run_until(lambda: in_agreement(sim, model=model), timeout, 0.05) is not None


def describe(sim: SimulatedNetwork) -> str:
    """The seed, the model and every live node's view: the message of a failed check."""
    at = sim.now + MAX_OFFSET
    lines = [f"failing seed {sim.seed}", f"expected {sim.expected(at)}"]
    lines += [f"{node}: {view}" for node, view in views(sim, at).items()]
    return "\n".join(lines)


# --------------------------------------------------------------------- engines
#: Fast timings for engine tests (seconds).
FAST = GossipConfig(
    sync_interval=0.01,
    anti_entropy_interval=0.25,
    heartbeat_interval=0.1,
    suspect_after=0.5,
    dead_after=1.5,
    gc_interval=1.0,
    exchange_timeout=1.0,
)


def make_engine(
    node: str,
    config: GossipConfig | None = None,
    *,
    seed: int = 0,
    grace: float = TOMBSTONE_GRACE,
    resolver: Resolver | None = None,
) -> GossipEngine:
    """An engine for ``node`` with a seeded random source."""
    replica = make_replica(node, grace=grace, resolver=resolver)
    return GossipEngine(replica, random.Random(seed), config or FAST)


class Link:
    """Engines joined by a perfect, synchronous link (FIFO), with an optional filter.

    ``drop(sender, receiver, message)`` returning True loses that message. Every
    message delivered is recorded in ``log`` as ``(sender, receiver, message)``.
    """

    def __init__(
        self,
        engines: Iterable[GossipEngine],
        drop: Callable[[str, str, Message], bool] | None = None,
    ) -> None:
        self.engines = {e.node: e for e in engines}
        self.drop = drop
        self.log: list[tuple[str, str, Message]] = []

    def __getitem__(self, node: str) -> GossipEngine:
        return self.engines[node]

    def deliver(self, sender: str, outgoing: Iterable[Outgoing], now: float) -> None:
        """Deliver ``outgoing`` from ``sender`` and every reply it causes, until quiet."""
        queue = [(sender, o.peer, o.message) for o in outgoing]
        while queue:
            src, dst, message = queue.pop(0)
            if self.drop is not None and self.drop(src, dst, message):
                continue
            self.log.append((src, dst, message))
            replies = self.engines[dst].handle(src, message, now)
            queue += [(dst, o.peer, o.message) for o in replies]

    def flush(self, node: str, now: float) -> None:
        """Flush ``node``'s queued deltas and deliver them."""
        self.deliver(node, self.engines[node].flush(now)[0], now)

    def sync(self, node: str, peer: str, now: float) -> None:
        """Run one anti-entropy exchange started by ``node`` with ``peer``."""
        self.deliver(node, self.engines[node].sync_with(peer, now), now)

    def tick_all(self, now: float) -> None:
        """Tick every engine and deliver what the ticks send."""
        for node, engine in self.engines.items():
            self.deliver(node, engine.tick(now), now)

    def sent(self, kind: type) -> list[tuple[str, str, Any]]:
        """Delivered messages of one type."""
        return [item for item in self.log if isinstance(item[2], kind)]


def linked(
    *nodes: str,
    config: GossipConfig | None = None,
    now: float = T0,
    drop: Callable[[str, str, Message], bool] | None = None,
    grace: float = TOMBSTONE_GRACE,
) -> Link:
    """Engines for ``nodes`` that know each other, initial exchanges done."""
    link = Link((make_engine(n, config, seed=i, grace=grace) for i, n in enumerate(nodes)), drop)
    for node in nodes:
        for peer in nodes:
            if peer != node:
                link.deliver(node, link[node].add_peer(peer, now), now)
    for engine in link.engines.values():
        engine.drain_changes()
        engine.drain_peer_events()
    link.log.clear()
    return link
