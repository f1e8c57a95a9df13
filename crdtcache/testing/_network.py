"""A seeded, deterministic simulated network that drives real gossip engines.

Theory of operation
-------------------
One event queue, ordered by (simulated time, sequence number), holds message
deliveries, node ticks and flushes. A local write schedules its node's flush at the
engine's flush deadline, as the p2p node does (at once on an idle node; within
``sync_interval`` when flushes come close together), so a lone write's delay is only
the network's. Every random choice (loss, duplication, delay, which
peer a gossip round picks) comes from one ``random.Random(seed)``, and nothing reads
the real clock, so the same seed gives the same run, event for event.

Faults: per-message loss and duplication, random delay (which reorders), partitions
(sets of nodes that cannot reach each other, checked at send and at delivery), node
crash and restart with its state kept or lost, and a per-node clock offset.

*Persistence* (``persist_interval``): each node stores a copy of its replica in batches,
every ``persist_interval`` seconds and at once when own writes wait to be stored, the
way ``persist_path`` does; a crashed node restarts from its last stored copy (the
real ``StoredState.build_replica``), so what it applied after that batch is lost.
``durable_sends`` (the default) models the rule that a node sends none of its own
writes before storing them; without it, the simulator shows the divergence that rule
prevents.

The engines are the production :class:`~crdtcache.core.GossipEngine`: the simulator
replaces sockets and clocks, never protocol logic. Messages can optionally travel
through an encode/decode round trip (``codec``) to exercise the wire format too.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from crdtcache.core import (
    Change,
    GossipConfig,
    GossipEngine,
    HybridClock,
    Message,
    Outgoing,
    Replica,
    Resolver,
    Stamp,
    decode_value,
    encode_value,
    pack_ts,
)
from crdtcache.core._entry import TOMBSTONE, lineage
from crdtcache.store._sqlite import StoredState

__all__ = ["NetworkStatistics", "SimNode", "SimulatedNetwork", "Write"]

EPOCH = 1_700_000_000.0
#: A write as replicas and messages carry it: (is a pattern, key or pattern, stamp).
_WriteId = tuple[bool, str, Stamp]


@dataclass(frozen=True, slots=True)
class Write:
    """One write made through the simulator, for checking replicas against a model.

    Examples:
        >>> from crdtcache.testing import SimulatedNetwork
        >>> net = SimulatedNetwork(2, seed=1)
        >>> stamp = net.set("n0", "k", "v")
        >>> (write,) = net.writes
        >>> write.node, write.key, write.value, write.kind, write.stamp == stamp
        ('n0', 'k', 'v', 'set', True)
    """

    node: str
    key: str
    value: Any
    stamp: Stamp
    expires: float | None
    kind: Literal["set", "delete", "pattern", "incr", "touch"]


@dataclass(slots=True)
class NetworkStatistics:
    """What the simulated network carried and dropped.

    Examples:
        >>> from crdtcache.testing import SimulatedNetwork
        >>> net = SimulatedNetwork(3, seed=1, loss=0.3)
        >>> net.run(1.0)
        >>> net.stats.lost > 0 and net.stats.delivered > net.stats.lost
        True
    """

    sent: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    blocked: int = 0
    entries_delivered: int = 0


@dataclass
class SimNode:
    """A node of the simulated network: an engine plus its fault state.

    Examples:
        >>> from crdtcache.testing import SimulatedNetwork
        >>> net = SimulatedNetwork(["a", "b"], seed=1)
        >>> net.crash("b")
        >>> [(node.id, node.up) for node in net.nodes.values()]
        [('a', True), ('b', False)]
    """

    id: str
    engine: GossipEngine
    clock_offset: float = 0.0
    up: bool = True
    generation: int = 0
    #: With ``persist_interval``: the node's last stored replica.
    stored: StoredState | None = None
    commit_due: bool = False
    #: A flush event is queued (writes until it runs travel in it).
    flush_due: bool = False
    changes: list[Change] = field(default_factory=list)

    @property
    def replica(self) -> Replica:
        """The node's replica."""
        return self.engine.replica


class SimulatedNetwork:
    """N gossip engines joined by a lossy, reordering, partitionable simulated network.

    ``delay`` is a (min, max) range in seconds; ``loss`` and ``duplicate`` are
    probabilities per message; ``clock_offsets`` maps node ids to seconds added to
    their local clocks; ``tick`` is how often each node's engine is ticked.

    Examples:
        >>> from crdtcache.testing import SimulatedNetwork
        >>> net = SimulatedNetwork(5, seed=1, loss=0.1, delay=(0.001, 0.05))
        >>> net.partition(["n0", "n1"], ["n2", "n3", "n4"])
        >>> _ = net.set("n0", "k", "left")
        >>> _ = net.set("n3", "k", "right")  # same instant: the greater node id wins
        >>> net.run(1.0)
        >>> net.view("n0")["k"][0], net.view("n3")["k"][0]
        ('left', 'right')
        >>> net.heal()
        >>> net.run_until(net.converged, timeout=10) is not None
        True
        >>> net.view("n0") == net.expected() and net.view("n0")["k"][0] == "right"
        True
    """

    def __init__(
        self,
        nodes: int | Iterable[str] = 3,
        *,
        seed: int = 0,
        config: GossipConfig | None = None,
        loss: float = 0.0,
        duplicate: float = 0.0,
        delay: tuple[float, float] = (0.001, 0.005),
        tick: float = 0.005,
        clock_offsets: Mapping[str, float] | None = None,
        max_drift: float = 60.0,
        tombstone_grace: float = 3600.0,
        resolver: Resolver | None = None,
        codec: Callable[[Message], Message] | None = None,
        start: float = EPOCH,
        persist_interval: float | None = None,
        durable_sends: bool = True,
        commit_delay: float = 0.001,
    ) -> None:
        if not 0 <= loss < 1 or not 0 <= duplicate < 1:
            raise ValueError("loss and duplicate are probabilities in [0, 1)")
        if not 0 <= delay[0] <= delay[1]:
            raise ValueError("delay must be a (min, max) range with 0 <= min <= max")
        ids = [f"n{i}" for i in range(nodes)] if isinstance(nodes, int) else list(nodes)
        self.rng = random.Random(seed)
        self.seed = seed
        self.config = config or GossipConfig()
        self.loss = loss
        self.duplicate = duplicate
        self.delay = delay
        self.tick_interval = tick
        self.max_drift = max_drift
        self.tombstone_grace = tombstone_grace
        self.resolver = resolver
        self.codec = codec
        self.persist_interval = persist_interval
        self.durable_sends = durable_sends
        self.commit_delay = commit_delay
        self.now = start
        self.stats = NetworkStatistics()
        self.writes: list[Write] = []
        # Writes lost with a node's state, and writes only messages in flight still carry.
        self._lost: set[_WriteId] = set()
        self._fragile: set[_WriteId] = set()
        self._queue: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self._groups: list[frozenset[str]] | None = None
        self.nodes: dict[str, SimNode] = {}
        # Engine node id -> simulated node (they differ after a restart that lost state).
        self._route: dict[str, str] = {}
        offsets = dict(clock_offsets or {})
        for node_id in ids:
            self.nodes[node_id] = SimNode(node_id, self._engine(node_id), offsets.get(node_id, 0.0))
            self._route[node_id] = node_id
        for node in self.nodes.values():
            for other in ids:
                if other != node.id:
                    self._send(node.id, node.engine.add_peer(other, self.local_time(node.id)))
            self._schedule(self.now + self.rng.random() * tick, "tick", node.id)
            if persist_interval is not None:
                node.stored = self._stored_copy(node)
                if durable_sends:
                    node.engine.durable = -1
                self._schedule(self.now + self.rng.random() * persist_interval, "persist", node.id)

    def _engine(self, node_id: str, replica: Replica | None = None) -> GossipEngine:
        if replica is None:
            clock = HybridClock(node_id, max_drift=self.max_drift)
            replica = Replica(clock, resolver=self.resolver, tombstone_grace=self.tombstone_grace)
        return GossipEngine(replica, self.rng, self.config)

    # ------------------------------------------------------------------ time
    def local_time(self, node: str) -> float:
        """The wall clock of ``node`` (simulated time plus its offset)."""
        return self.now + self.nodes[node].clock_offset

    def _schedule(self, when: float, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, kind, payload))

    def step(self) -> bool:
        """Process the next event; False when nothing is scheduled."""
        if not self._queue:
            return False
        when, _, kind, payload = heapq.heappop(self._queue)
        self.now = max(self.now, when)
        if kind in ("persist", "commit"):
            node = self.nodes.get(payload)
            if node is not None:
                if node.up:
                    self._persist(node)
                if kind == "persist":
                    assert self.persist_interval is not None
                    self._schedule(self.now + self.persist_interval, "persist", node.id)
        elif kind == "flush":
            node = self.nodes.get(payload)
            if node is not None:
                node.flush_due = False
                if node.up:
                    now = self.local_time(node.id)
                    if node.engine.flush_due(now):
                        self._send(node.id, node.engine.flush(now)[0])
                    else:
                        self._wake(node)  # a tick flushed first; anything left waits
        elif kind == "tick":
            node = self.nodes.get(payload)
            if node is not None:
                if node.up:
                    self._send(node.id, node.engine.tick(self.local_time(node.id)))
                    self._drain(node)
                self._schedule(self.now + self.tick_interval, "tick", node.id)
        else:
            sender, sender_id, receiver, receiver_id, message = payload
            self._deliver(sender, sender_id, receiver, receiver_id, message)
        return True

    def run(self, duration: float) -> None:
        """Run for ``duration`` simulated seconds."""
        end = self.now + duration
        while self._queue and self._queue[0][0] <= end:
            self.step()
        self.now = end

    def run_until(
        self, done: Callable[[], bool], timeout: float, check_every: float = 0.001
    ) -> float | None:
        """Run until ``done()`` holds (checked every ``check_every`` s); return the time taken.

        Returns None if ``timeout`` simulated seconds pass first.
        """
        start = self.now
        while self.now - start < timeout:
            if done():
                return self.now - start
            self.run(check_every)
        return self.now - start if done() else None

    # ------------------------------------------------------------- messages
    def _send(self, sender: str, outgoing: Iterable[Outgoing]) -> None:
        sender_id = self.nodes[sender].engine.node
        for peer_id, message in outgoing:
            self.stats.sent += 1
            peer = self._route.get(peer_id, peer_id)
            if not self.reachable(sender, peer):
                self.stats.blocked += 1
                continue
            if self.rng.random() < self.loss:
                self.stats.lost += 1
                continue
            copies = 2 if self.rng.random() < self.duplicate else 1
            self.stats.duplicated += copies - 1
            for _ in range(copies):
                lag = self.delay[0] + self.rng.random() * (self.delay[1] - self.delay[0])
                self._schedule(self.now + lag, "msg", (sender, sender_id, peer, peer_id, message))

    def _deliver(
        self, sender: str, sender_id: str, receiver: str, receiver_id: str, message: Message
    ) -> None:
        node = self.nodes.get(receiver)
        if (
            node is None
            or not node.up
            or not self.reachable(sender, receiver)
            # Sent to an engine that has since restarted without state: its connections
            # died with it, so an answer to its requests never reaches its successor.
            or node.engine.node != receiver_id
        ):
            self.stats.blocked += 1
        else:
            if self.codec is not None:
                message = self.codec(message)
            self.stats.delivered += 1
            self.stats.entries_delivered += len(getattr(message, "entries", ()))
            self._send(receiver, node.engine.handle(sender_id, message, self.local_time(receiver)))
            self._drain(node)
        if self._fragile:
            self._forget_lost(self._fragile)

    # ----------------------------------------------------------- persistence
    def _stored_copy(self, node: SimNode) -> StoredState:
        r = node.replica
        return StoredState(
            path="simulated",
            node_id=r.node,
            clock_ts=r.clock.last_ts,
            entries=tuple(r.entries.items()),
            patterns=tuple(r.patterns.values()),
            marks=dict(r.marks),
            collected=dict(r.collected),
        )

    def _persist(self, node: SimNode) -> None:
        """A batch: store the replica; own writes stored may now leave the node."""
        node.commit_due = False
        node.stored = self._stored_copy(node)
        engine = node.engine
        if engine.durable is not None:
            engine.made_durable(node.stored.marks.get(engine.node, -1))
            self._wake(node)

    def _commit_soon(self, node: SimNode) -> None:
        # What the p2p runtime does: own writes waiting to be stored ask for a batch now.
        if node.engine.awaiting_durability and not node.commit_due:
            node.commit_due = True
            self._schedule(self.now + self.commit_delay, "commit", node.id)

    def _wake(self, node: SimNode) -> None:
        """What the p2p node does once a write is queued: flush at the engine's deadline."""
        if node.flush_due:
            return  # the flush already queued will carry it
        deadline = node.engine.flush_deadline()
        if deadline is None:
            return  # nothing may leave yet (stored writes wake the node again)
        node.flush_due = True
        # The deadline is on the node's clock; the queue runs on simulated time.
        self._schedule(max(self.now, deadline - node.clock_offset), "flush", node.id)

    def _written(self, node: SimNode) -> None:
        """After a local write: ask for a batch to store it, and for a flush."""
        self._commit_soon(node)
        self._wake(node)

    def _drain(self, node: SimNode) -> None:
        node.changes.extend(node.engine.drain_changes())
        node.engine.drain_peer_events()

    # -------------------------------------------------------------- writes
    def set(self, node: str, key: str, value: Any, ttl: float | None = None) -> Stamp:
        """Write ``key`` on ``node`` (applied locally now, gossiped later)."""
        n = self._live(node)
        now = self.local_time(node)
        expires = None if ttl is None else now + ttl
        entry = n.engine.set(key, encode_value(key, value), now, expires)
        self._written(n)
        self.writes.append(Write(node, key, value, entry.stamp, expires, "set"))
        return entry.stamp

    def delete(self, node: str, key: str) -> Stamp:
        """Delete ``key`` on ``node``."""
        n = self._live(node)
        n.engine.delete(key, self.local_time(node))
        self._written(n)
        entry = n.replica.entries[key]
        self.writes.append(Write(node, key, None, entry.stamp, None, "delete"))
        return entry.stamp

    def incr(self, node: str, key: str, delta: int = 1, ttl: float | None = None) -> Stamp:
        """Add ``delta`` to the counter ``key`` on ``node``; ``ttl`` if it starts one.

        The counter's value must be held on ``node`` (raises ``LookupError`` for a
        stub) and be an int (``TypeError`` otherwise).
        """
        n = self._live(node)
        now = self.local_time(node)
        expires = None if ttl is None else now + ttl
        entry = n.engine.incr(key, delta, now, expires, _as_int)
        if entry is None:
            raise LookupError(f"{key!r} is a stub on {node}: fetch it first")
        self._wake(n)
        self.writes.append(Write(node, key, delta, entry.stamp, entry.expires, "incr"))
        return entry.stamp

    def touch(self, node: str, key: str, ttl: float | None) -> Stamp | None:
        """Give ``key`` on ``node`` a new expiry (None: none); None if it is not live there.

        ``expected`` does not model touches or counters: check them by their own
        properties.
        """
        n = self._live(node)
        now = self.local_time(node)
        entry = n.engine.touch(key, now, None if ttl is None else now + ttl)
        if entry is None:
            return None
        self._wake(n)
        self.writes.append(Write(node, key, None, entry.stamp, entry.expires, "touch"))
        return entry.stamp

    def invalidate_pattern(self, node: str, pattern: str) -> Stamp:
        """Invalidate every key matching ``pattern``, from ``node``."""
        n = self._live(node)
        n.engine.invalidate_pattern(pattern, self.local_time(node))
        self._written(n)
        tomb = n.replica.patterns[pattern]
        self.writes.append(Write(node, pattern, None, tomb.stamp, None, "pattern"))
        return tomb.stamp

    def _live(self, node: str) -> SimNode:
        n = self.nodes[node]
        if not n.up:
            raise RuntimeError(f"node {node} is down")
        return n

    # --------------------------------------------------------------- faults
    def reachable(self, a: str, b: str) -> bool:
        """True if the current partition lets ``a`` and ``b`` talk."""
        if self._groups is None:
            return True
        return any(a in g and b in g for g in self._groups)

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the network: nodes talk only within their group (unlisted: alone)."""
        self._groups = [frozenset(g) for g in groups]

    def isolate(self, node: str) -> None:
        """Cut ``node`` off from every other node."""
        others = [n for n in self.nodes if n != node]
        self.partition([node], others)

    def heal(self) -> None:
        """Remove every partition."""
        self._groups = None

    def crash(self, node: str) -> None:
        """Stop ``node``: it processes nothing and messages to it are lost."""
        self.nodes[node].up = False

    def restart(self, node: str, *, keep_state: bool = True) -> None:
        """Restart a crashed ``node``, with its replica (as persisted) or with none.

        Its unflushed deltas are lost either way (they live in memory); a restart that
        keeps state keeps its clock's highest stamp, as persistence does. A restart
        without state comes back under a new engine node id (``"n1~1"``): a node that
        lost its data must never speak for its earlier writes (its marks would claim
        writes it no longer holds), which is also what ``Cache`` does without
        ``persist_path``. The simulated node keeps its name for the caller.
        """
        n = self.nodes[node]
        old = n.engine.replica
        if keep_state and n.stored is not None:
            # From the last batch stored, as ``persist_path`` would: later writes are lost.
            replica = n.stored.build_replica(
                self.local_time(node),
                resolver=self.resolver,
                tombstone_grace=self.tombstone_grace,
                max_drift=self.max_drift,
            )
        elif keep_state:
            replica = old
        else:
            n.generation += 1
            new_id = f"{node}~{n.generation}"
            clock = HybridClock(new_id, max_drift=self.max_drift, last_ts=old.clock.last_ts)
            replica = Replica(clock, resolver=self.resolver, tombstone_grace=self.tombstone_grace)
            self._route[new_id] = node
        n.engine = self._engine(node, replica)
        n.commit_due = False
        if not keep_state and n.stored is not None:
            n.stored = self._stored_copy(n)  # the new identity starts an empty file
        if n.stored is not None and self.durable_sends:
            n.engine.durable = n.stored.marks.get(replica.node, -1) if keep_state else -1
        if not keep_state or n.stored is not None:
            self._forget_lost({_write_id(w) for w in self.writes} - self._lost)
        n.up = True
        for other in self.nodes.values():
            if other.id != node:
                self._send(node, n.engine.add_peer(other.engine.node, self.local_time(node)))

    def _forget_lost(self, writes: Iterable[_WriteId]) -> None:
        """Move the ``writes`` that nothing carries any more to the lost writes.

        A write is carried while a replica holds it (the same stamp) or a message in
        flight does; one that only messages carry stays a candidate until they land.
        Writes older than the tombstone grace are kept: collection drops those on
        purpose, and the model must still let them beat older values.
        """
        held: set[_WriteId] = set()
        for n in self.nodes.values():
            held.update((False, k, Stamp(e.ts, e.origin)) for k, e in n.replica.entries.items())
            # A touched value still carries the write it descends from.
            held.update((False, k, Stamp(*lineage(e)[:2])) for k, e in n.replica.entries.items())
            held.update((True, p.pattern, p.stamp) for p in n.replica.patterns.values())
        flying: set[_WriteId] = set()
        for _, _, kind, payload in self._queue:
            if kind == "msg":
                message = payload[-1]
                flying.update((False, k, e.stamp) for k, e in getattr(message, "entries", ()))
                flying.update((True, p.pattern, p.stamp) for p in getattr(message, "patterns", ()))
        collectable = pack_ts(int((self.now - self.tombstone_grace) * 1000))
        uncarried = frozenset(writes) - held
        self._lost |= {w for w in uncarried - flying if w[2].ts > collectable}
        self._fragile = set(uncarried & flying)

    # ------------------------------------------------------------- checking
    def live_nodes(self) -> list[SimNode]:
        """Nodes that are up."""
        return [n for n in self.nodes.values() if n.up]

    def view(self, node: str) -> dict[str, tuple[Any, Stamp]]:
        """What ``node`` serves right now: key -> (value, stamp) of live entries."""
        now = self.local_time(node)
        return {k: (v, s) for k, (v, s, _) in self.nodes[node].replica.visible(now).items()}

    def converged(self) -> bool:
        """True when every live node serves the same keys, values and stamps."""
        views = [self.view(n.id) for n in self.live_nodes()]
        return all(v == views[0] for v in views[1:])

    def has(self, key: str, stamp: Stamp) -> bool:
        """True when every live node holds ``key`` at ``stamp`` or newer."""
        for n in self.live_nodes():
            e = n.replica.entries.get(key)
            if e is None or (e.ts, e.origin) < (stamp.ts, stamp.node):
                return False
        return True

    def expected(self, now: float | None = None) -> dict[str, tuple[Any, Stamp]]:
        """The reference model: per key the greatest-stamped write, unless deleted,
        covered by a later pattern invalidation, or expired at ``now``.

        Writes lost with a node's state (a restart without it, when no other replica
        and no message in flight carried them) are left out; writes held only by a
        node that is down still count. Increments and touches are not modelled (they
        are left out): counters and expiries are checked by their own properties.
        """
        now = self.now if now is None else now
        best: dict[str, Write] = {}
        writes = [w for w in self.writes if _write_id(w) not in self._lost]
        patterns = [w for w in writes if w.kind == "pattern"]
        for w in writes:
            if w.kind in ("pattern", "incr", "touch"):
                continue
            cur = best.get(w.key)
            if cur is None or w.stamp > cur.stamp:
                best[w.key] = w
        out: dict[str, tuple[Any, Stamp]] = {}
        for key, w in best.items():
            if w.kind == "delete" or (w.expires is not None and w.expires <= now):
                continue
            if any(p.stamp >= w.stamp and _glob(p.key, key) for p in patterns):
                continue
            out[key] = (w.value, w.stamp)
        return out


def _as_int(stored: object) -> int:
    value = decode_value(stored)
    if type(value) is not int:
        raise TypeError(f"not an int: {type(value).__name__}")
    return value


def _write_id(w: Write) -> _WriteId:
    """What identifies a write among everything replicas and messages carry."""
    return (w.kind == "pattern", w.key, w.stamp)


def _glob(pattern: str, key: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(key, pattern)


# Re-exported for tests that look at raw entries.
TOMBSTONE_MARKER = TOMBSTONE
