"""The gossip protocol as a sans-IO state machine.

Theory of operation
-------------------
A :class:`GossipEngine` owns one :class:`Replica` and knows its peers by id. It never
touches a socket or a clock: the driver (the simulator in :mod:`crdtcache.testing`,
or the TCP transport) calls

* the write methods (:meth:`set`, :meth:`delete`, :meth:`invalidate_pattern`), which
  apply locally and queue a delta;
* :meth:`handle` for every message a peer sent, and :meth:`tick` regularly;

and sends each returned :class:`Outgoing` to its peer. Both return only messages;
visible changes and peer state changes are taken with :meth:`drain_changes` and
:meth:`drain_peer_events`.

Four mechanisms, each enough for one job:

1. *Delta push.* Queued deltas are flushed every ``sync_interval`` as a
   :class:`Push` to every live peer (``fanout=None``), or to ``fanout`` random peers
   who relay what was new to them (epidemic mode, for large clusters). A node's own
   push to a peer that saw all its earlier pushes claims a gap-free range of its
   stamps, which lets the receiver raise its mark for the node without anti-entropy.
2. *Anti-entropy.* Every ``anti_entropy_interval`` the engine sends its marks to a
   random live peer, which answers with what lies above them (split into parts); the
   receiver adopts the answerer's marks once all parts have merged. A receiver that
   sees the requester ahead asks back (push-pull). A peer that comes back up is
   synced with at once: catch-up, not flush.
3. *Membership.* Every message is a sign of life; quiet links carry :class:`Ping`.
   A peer silent for ``suspect_after`` is suspect, for ``dead_after`` dead.
4. *Collection.* Every ``gc_interval`` the replica drops expired tombstones.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple, Protocol

from crdtcache._errors import ClockDriftError
from crdtcache.core._entry import NOT_HELD, Change, Entry, PatternTombstone
from crdtcache.core._messages import (
    Ack,
    Fetch,
    FetchReply,
    Message,
    Ping,
    Push,
    SyncRequest,
    SyncResponse,
)
from crdtcache.core._replica import Replica
from crdtcache.core._values import DEFAULT_MAX_VALUE_BYTES, MAX_VALUE_BYTES, stored_size

__all__ = [
    "ALIVE",
    "DEAD",
    "MAX_PENDING_EVENTS",
    "SUSPECT",
    "EngineStatistics",
    "GossipConfig",
    "GossipEngine",
    "Outgoing",
    "PeerEvent",
    "PeerInfo",
    "RandomSource",
]

log = logging.getLogger(__name__)

ALIVE: Final = "alive"
SUSPECT: Final = "suspect"
DEAD: Final = "dead"

#: Undrained changes and peer events kept before the oldest are dropped (and counted).
MAX_PENDING_EVENTS: Final = 100_000
#: Per-entry overhead assumed when budgeting a message, on top of key and value.
_ENTRY_OVERHEAD: Final = 40


class RandomSource(Protocol):
    """Where the engine's randomness comes from (e.g. a seeded ``random.Random``)."""

    def random(self) -> float:
        """A float in [0, 1)."""
        ...


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Timings and limits of a :class:`GossipEngine` (seconds, counts, bytes)."""

    sync_interval: float = 0.005
    fanout: int | None = None
    max_hops: int = 16
    anti_entropy_interval: float = 1.0
    heartbeat_interval: float = 0.5
    suspect_after: float = 2.0
    dead_after: float = 6.0
    gc_interval: float = 5.0
    exchange_timeout: float = 10.0
    max_message_entries: int = 4096
    max_message_bytes: int = 1 << 20
    on_demand: bool = False
    #: Epidemic mode: how many flushes relay each new item; None = ceil(log2(N + 1) / 2).
    retransmits: int | None = None
    #: This node's ``max_value_bytes``: the limit every reader of records applies here
    #: (wire, snapshot, store, Redis), so a runtime finds it on the engine it drives.
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES

    def __post_init__(self) -> None:
        for name in ("sync_interval", "anti_entropy_interval", "heartbeat_interval", "gc_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0 < self.suspect_after <= self.dead_after:
            raise ValueError("need 0 < suspect_after <= dead_after")
        if self.fanout is not None and self.fanout < 1:
            raise ValueError("fanout must be None (every peer) or at least 1")
        if self.max_message_entries < 1 or self.max_message_bytes < 1024:
            raise ValueError("message limits too small")
        if not 1 <= self.max_value_bytes <= MAX_VALUE_BYTES:
            raise ValueError(f"max_value_bytes must be in [1, {MAX_VALUE_BYTES}]")


class Outgoing(NamedTuple):
    """A message for the driver to deliver to ``peer``."""

    peer: str
    message: Message


@dataclass(frozen=True, slots=True)
class PeerEvent:
    """A peer changed state (``alive``, ``suspect`` or ``dead``)."""

    peer: str
    state: str
    previous: str | None


@dataclass(slots=True)
class PeerInfo:
    """What the engine knows of one peer."""

    id: str
    state: str = ALIVE
    last_heard: float = 0.0
    last_sent: float = 0.0
    #: Exchange id of our anti-entropy request in flight to this peer, if any.
    pulling: int | None = None
    #: When that request was sent or last answered in part (to expire a lost one).
    pull_activity: float = 0.0
    #: False while the driver reports no link to the peer: it gets no pushes.
    linked: bool = True


@dataclass(slots=True)
class EngineStatistics:
    """Counters of a :class:`GossipEngine` (monotonic since start)."""

    pushes_sent: int = 0
    entries_pushed: int = 0
    relays_sent: int = 0
    entries_received: int = 0
    entries_applied: int = 0
    sync_requests_sent: int = 0
    sync_entries_sent: int = 0
    full_syncs_sent: int = 0
    syncs_completed: int = 0
    refused_drift: int = 0
    events_dropped: int = 0
    collected: int = 0


@dataclass(slots=True)
class _Inbound:
    peer: str
    started: float
    parts: int
    seen: set[int] = field(default_factory=set)
    ok: bool = True
    listed: set[str] | None = None


class GossipEngine:
    """One node's gossip protocol, driven by ``handle`` and ``tick`` (see module doc)."""

    def __init__(
        self, replica: Replica, rng: RandomSource, config: GossipConfig | None = None
    ) -> None:
        self.replica = replica
        self.node = replica.node
        self.rng = rng
        self.config = config or GossipConfig()
        self.peers: dict[str, PeerInfo] = {}
        self.stats = EngineStatistics()
        self._pending: dict[str, Entry] = {}
        self._pending_patterns: list[PatternTombstone] = []
        # Our pushes chain: each holds all our writes stamped in (previous upto, upto].
        self._stream_upto = replica.marks.get(replica.node, -1)
        self._next_flush = 0.0
        # Drawn at the first tick, so that nodes started together do not sync in step.
        self._next_sync: float | None = None
        self._next_gc = 0.0
        self._next_membership = 0.0
        # Epidemic mode: items to relay on the next flushes, with the sends left.
        self._relay: dict[str, tuple[Entry, int]] = {}
        self._relay_patterns: dict[str, tuple[PatternTombstone, int]] = {}
        self._exchange_seq = 0
        self._inbound: dict[tuple[str, int], _Inbound] = {}
        self._ack_seq = 0
        self._awaiting: dict[int, set[str]] = {}
        self._fetch_seq = 0
        self._changes: deque[Change] = deque(maxlen=MAX_PENDING_EVENTS)
        self._peer_events: deque[PeerEvent] = deque(maxlen=MAX_PENDING_EVENTS)

    # ------------------------------------------------------------------ peers
    def add_peer(self, peer: str, now: float) -> list[Outgoing]:
        """Start gossiping with ``peer`` (idempotent); returns a catch-up request."""
        if peer == self.node:
            raise ValueError("a node is not its own peer")
        info = self.peers.get(peer)
        if info is not None:
            return []
        self.peers[peer] = PeerInfo(peer, ALIVE, last_heard=now, last_sent=now)
        self._peer_event(PeerEvent(peer, ALIVE, None))
        return self._pull(peer, now)

    def remove_peer(self, peer: str) -> None:
        """Forget ``peer`` (it left the cluster for good)."""
        info = self.peers.pop(peer, None)
        if info is not None:
            self._peer_event(PeerEvent(peer, DEAD, info.state))
            self._drop_acks(peer)

    def peer_reachable(self, peer: str, now: float) -> list[Outgoing]:
        """The driver has a (new) link to ``peer``: catch up with it now."""
        info = self.peers.get(peer)
        if info is None:
            return self.add_peer(peer, now)
        self._revive(info, now)
        return self._pull(peer, now)

    def _revive(self, info: PeerInfo, now: float) -> bool:
        """The peer showed life: linked and alive again; True if it was not alive."""
        info.last_heard = now
        info.linked = True
        if info.state == ALIVE:
            return False
        self._set_state(info, ALIVE)
        return True

    def peer_unreachable(self, peer: str, now: float) -> None:
        """The driver lost its link to ``peer``: suspect it now rather than wait.

        Until :meth:`peer_reachable` or a message from it, it is sent no pushes, and
        write-through waits stop waiting for it.
        """
        info = self.peers.get(peer)
        if info is None:
            return
        info.linked = False
        info.pulling = None
        self._drop_acks(peer)
        if info.state == ALIVE:
            self._set_state(info, SUSPECT)

    def live_peers(self) -> list[str]:
        """Ids of peers not considered dead and not known to be unreachable."""
        return [p.id for p in self.peers.values() if p.state != DEAD and p.linked]

    # ---------------------------------------------------------- local writes
    def set(self, key: str, stored: object, now: float, expires: float | None = None) -> Entry:
        """Write locally and queue the delta. ``stored`` comes from ``encode_value``."""
        entry = self.replica.set(key, stored, now, expires)
        self._queue_local(key, entry)
        return entry

    def delete(self, key: str, now: float) -> bool:
        """Delete locally with a tombstone and queue it; True if a live value was there."""
        existed = self.replica.lookup(key, now) is not None
        entry = self.replica.delete(key, now)
        self._queue_local(key, entry)
        return existed

    def invalidate_pattern(self, pattern: str, now: float) -> list[Change]:
        """Remove every key matching ``pattern`` on every node (one pattern tombstone)."""
        tomb, changes = self.replica.invalidate_pattern(pattern, now)
        self._pending_patterns.append(tomb)
        for change in changes:
            self._change(change)
        return changes

    def _queue_local(self, key: str, entry: Entry) -> None:
        if entry.origin != self.node or entry.ts != self.replica.clock.last_ts:
            # A resolver kept an older version (perhaps our own): nothing new to send,
            # and re-queuing an old stamp would break the stamp order of stream claims.
            return
        # Re-inserting moves the key to the end, which keeps _pending in stamp order.
        self._pending.pop(key, None)
        self._pending[key] = entry
        self._change(Change(key, "delete" if entry.deleted else "set", self.node, entry.ts, False))

    @property
    def pending(self) -> int:
        """Local deltas not flushed yet."""
        return len(self._pending) + len(self._pending_patterns)

    def take_pending(self) -> tuple[list[tuple[str, Entry]], list[PatternTombstone]]:
        """Take the queued local deltas instead of pushing them to peers.

        For a driver that ships local writes somewhere else than to gossip peers (the
        redis runtime writes them to a shared store). Entries come in stamp order, at
        most one per key (the newest); afterwards nothing is pending.
        """
        entries = list(self._pending.items())
        patterns = self._pending_patterns
        self._pending = {}
        self._pending_patterns = []
        return entries, patterns

    # ------------------------------------------------------------ delta push
    def flush(self, now: float, *, ack: bool = False) -> tuple[list[Outgoing], int]:
        """Push queued deltas to peers now.

        With ``ack=True`` the pushes ask for acknowledgements; the returned id is
        then awaited with :meth:`unacked` (0 when nothing needed acknowledging).
        """
        self._next_flush = now + self.config.sync_interval
        if not self._pending and not self._pending_patterns:
            relays = self._retransmit(now)
            if ack:
                # Our writes may have left in a push that asked for no ack (the flush
                # timer took them first): an empty push that does ask acts as a barrier,
                # since a link delivers in order.
                barrier = self._barrier(now)
                if barrier is not None:
                    return relays + barrier[0], barrier[1]
            return relays, 0
        entries = list(self._pending.items())
        patterns = self._pending_patterns
        self._pending = {}
        self._pending_patterns = []
        if not self.peers:
            # Nobody to tell (a lone node, the memory backend): just keep the stream
            # chain, so that the first push to a later peer claims the right range.
            self._stream_upto = max(
                [e.ts for _, e in entries] + [p.ts for p in patterns], default=self._stream_upto
            )
            return [], 0
        if self.config.on_demand:
            entries = [
                (k, Entry(NOT_HELD, e.ts, e.origin, e.expires) if e.held else e) for k, e in entries
            ]
        chunks = self._chunk(entries, patterns)
        targets = self._targets(exclude=())
        ack_id = 0
        if ack and targets:
            self._ack_seq += 1
            ack_id = self._ack_seq
            self._awaiting[ack_id] = set(targets)
        out: list[Outgoing] = []
        since = self._stream_upto
        for chunk_entries, chunk_patterns in chunks:
            upto = max(
                [e.ts for _, e in chunk_entries] + [p.ts for p in chunk_patterns], default=since
            )
            # The claim is a fact about the message; a receiver that missed an earlier
            # push has a mark below ``since`` and so does not advance on it.
            push = Push(
                tuple(chunk_entries), tuple(chunk_patterns), self.node, since, upto, 0, ack_id
            )
            for peer in targets:
                out.append(Outgoing(peer, push))
                self.peers[peer].last_sent = now
            since = upto
        self._stream_upto = since
        self.stats.pushes_sent += len(out)
        self.stats.entries_pushed += len(entries) * len(targets)
        if self.config.fanout is not None:
            self._queue_relay(entries, patterns, already_sent=True)
            out += self._retransmit(now)
        return out, ack_id

    def _retransmits(self) -> int:
        if self.config.retransmits is not None:
            return self.config.retransmits
        # Each node relays an item to ``fanout`` peers on this many flushes: the share
        # of nodes an "infect once" epidemic misses (about e^-fanout) drops to about
        # e^-(fanout * retransmits), while rounds stay logarithmic in N.
        return max(1, math.ceil(math.log2(len(self.peers) + 1) / 2))

    def _queue_relay(
        self,
        entries: Sequence[tuple[str, Entry]],
        patterns: Sequence[PatternTombstone],
        *,
        already_sent: bool,
    ) -> None:
        sends = self._retransmits() - already_sent
        if sends <= 0:
            return
        for key, entry in entries:
            self._relay[key] = (entry, sends)
        for tomb in patterns:
            self._relay_patterns[tomb.pattern] = (tomb, sends)

    def _retransmit(self, now: float) -> list[Outgoing]:
        """Epidemic mode: send queued relays to ``fanout`` random peers, once per flush."""
        if not self._relay and not self._relay_patterns:
            return []
        entries = [(k, e) for k, (e, _) in self._relay.items()]
        patterns = [t for t, _ in self._relay_patterns.values()]
        self._relay = {k: (e, n - 1) for k, (e, n) in self._relay.items() if n > 1}
        self._relay_patterns = {
            p: (t, n - 1) for p, (t, n) in self._relay_patterns.items() if n > 1
        }
        out: list[Outgoing] = []
        for chunk_entries, chunk_patterns in self._chunk(entries, patterns):
            relay = Push(tuple(chunk_entries), tuple(chunk_patterns), None, -1, -1, 1, 0)
            for peer in self._targets(exclude=()):
                out.append(Outgoing(peer, relay))
                self.peers[peer].last_sent = now
        self.stats.relays_sent += len(out)
        return out

    def _barrier(self, now: float) -> tuple[list[Outgoing], int] | None:
        targets = self._targets(exclude=())
        if not targets:
            return None
        self._ack_seq += 1
        self._awaiting[self._ack_seq] = set(targets)
        push = Push((), (), None, -1, -1, 0, self._ack_seq)
        for peer in targets:
            self.peers[peer].last_sent = now
        return [Outgoing(peer, push) for peer in targets], self._ack_seq

    def unacked(self, ack_id: int) -> frozenset[str]:
        """Peers that have not yet acknowledged push ``ack_id`` (empty when done)."""
        return frozenset(self._awaiting.get(ack_id, ()))

    def forget_ack(self, ack_id: int) -> None:
        """Stop tracking push ``ack_id`` (the waiter gave up or finished)."""
        self._awaiting.pop(ack_id, None)

    def _drop_acks(self, peer: str) -> None:
        for waiting in self._awaiting.values():
            waiting.discard(peer)

    def _chunk(
        self, entries: Sequence[tuple[str, Entry]], patterns: Sequence[PatternTombstone]
    ) -> list[tuple[list[tuple[str, Entry]], list[PatternTombstone]]]:
        """Split into message-sized chunks in stamp order, so that stream claims chain."""
        cfg = self.config
        items: list[tuple[int, str, Entry | PatternTombstone]] = [(e.ts, k, e) for k, e in entries]
        if patterns:
            items += [(p.ts, p.pattern, p) for p in patterns]
            items.sort(key=lambda item: item[0])
        chunks: list[tuple[list[tuple[str, Entry]], list[PatternTombstone]]] = [([], [])]
        count = size = 0
        for _, key, item in items:
            cost = len(key) + _ENTRY_OVERHEAD
            if isinstance(item, Entry):
                cost += stored_size(item.value)
            if count and (count >= cfg.max_message_entries or size + cost > cfg.max_message_bytes):
                chunks.append(([], []))
                count = size = 0
            if isinstance(item, Entry):
                chunks[-1][0].append((key, item))
            else:
                chunks[-1][1].append(item)
            count += 1
            size += cost
        return chunks

    def _targets(self, exclude: Sequence[str]) -> list[str]:
        live = [
            p.id
            for p in self.peers.values()
            if p.state != DEAD and p.linked and p.id not in exclude
        ]
        fanout = self.config.fanout
        if fanout is None or len(live) <= fanout:
            return live
        return self._sample(live, fanout)

    def _sample(self, items: list[str], k: int) -> list[str]:
        pool = list(items)
        for i in range(k):
            j = i + int(self.rng.random() * (len(pool) - i))
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]

    # --------------------------------------------------------------- receive
    def handle(self, sender: str, message: Message, now: float) -> list[Outgoing]:
        """Process one message from ``sender``; return what to send in reply."""
        out = self._heard(sender, now)
        if isinstance(message, Push):
            out += self._on_push(sender, message, now)
        elif isinstance(message, SyncRequest):
            out += self._on_sync_request(sender, message, now)
        elif isinstance(message, SyncResponse):
            out += self._on_sync_response(sender, message, now)
        elif isinstance(message, Ack):
            waiting = self._awaiting.get(message.ack)
            if waiting is not None:
                waiting.discard(sender)
        elif isinstance(message, Fetch):
            out.append(Outgoing(sender, self._on_fetch(message, now)))
        elif isinstance(message, FetchReply):
            self._merge(sender, message.entries, (), now)
        elif not isinstance(message, Ping):
            raise TypeError(f"not a gossip message: {type(message).__name__}")
        return out

    def _heard(self, sender: str, now: float) -> list[Outgoing]:
        info = self.peers.get(sender)
        if info is None:
            return self.add_peer(sender, now)
        if self._revive(info, now):
            # It was away: catch it (and us) up now rather than at the next round.
            return self._pull(sender, now)
        return []

    def _merge(
        self,
        sender: str,
        entries: Sequence[tuple[str, Entry]],
        patterns: Sequence[PatternTombstone],
        now: float,
    ) -> tuple[list[tuple[str, Entry]], list[PatternTombstone], bool]:
        """Merge remote deltas; return the ones that were new here and whether all merged."""
        replica = self.replica
        fresh: list[tuple[str, Entry]] = []
        fresh_patterns: list[PatternTombstone] = []
        ok = True
        for tomb in patterns:
            held = replica.patterns.get(tomb.pattern)
            try:
                changes = replica.merge_pattern(tomb, now)
            except ClockDriftError as exc:
                ok = self._refuse(sender, exc)
                continue
            # New here only if it replaced what we held (which may be this very object
            # when messages are not copied, as in the simulator).
            if held is not tomb and replica.patterns.get(tomb.pattern) is tomb:
                fresh_patterns.append(tomb)
            for change in changes:
                self._change(change)
        applied = 0
        # One drift check on the greatest stamp covers the whole batch; only when it
        # fails is each entry checked on its own (to refuse just the offenders).
        observed = False
        if entries:
            highest = max(e.ts for _, e in entries)
            clock = replica.clock
            if clock.within_drift(highest, now):
                clock.observe(highest, now)
                observed = True
        for key, entry in entries:
            try:
                merged = replica.merge_entry(key, entry, now, observed=observed)
            except ClockDriftError as exc:
                ok = self._refuse(sender, exc)
                continue
            if merged is not None:
                applied += 1
                fresh.append((key, entry))
                self._change(merged)
        self.stats.entries_received += len(entries)
        self.stats.entries_applied += applied
        return fresh, fresh_patterns, ok

    def _refuse(self, sender: str, exc: ClockDriftError) -> bool:
        self.stats.refused_drift += 1
        log.error("refused an entry from %s: %s", sender, exc)
        return False

    def _on_push(self, sender: str, m: Push, now: float) -> list[Outgoing]:
        fresh, fresh_patterns, ok = self._merge(sender, m.entries, m.patterns, now)
        out: list[Outgoing] = []
        if (
            ok
            and m.origin is not None
            and m.origin == sender
            and not self.replica.advance_stream(m.origin, m.since, m.upto)
        ):
            # A gap: an earlier push from the sender was lost. Ask it for what we
            # miss now instead of waiting for the next anti-entropy round.
            out += self._pull(sender, now)
        if m.ack:
            out.append(Outgoing(sender, Ack(m.ack)))
        if (
            self.config.fanout is not None
            and (fresh or fresh_patterns)
            and m.hops < self.config.max_hops
        ):
            # Relay at once (one round saved), then on the next flushes (_retransmit).
            relay = Push(tuple(fresh), tuple(fresh_patterns), None, -1, -1, m.hops + 1, 0)
            sent = 0
            for peer in self._targets(exclude=(sender,)):
                out.append(Outgoing(peer, relay))
                self.peers[peer].last_sent = now
                sent += 1
            self.stats.relays_sent += sent
            self._queue_relay(fresh, fresh_patterns, already_sent=True)
        return out

    # ----------------------------------------------------------- anti-entropy
    def _pulling(self) -> bool:
        return any(p.pulling is not None for p in self.peers.values())

    def _pull(self, peer: str, now: float, *, force: bool = False) -> list[Outgoing]:
        # One anti-entropy pull in flight at a time: a rejoining node would otherwise
        # receive the same catch-up from every peer at once, and a slow answer would
        # be asked for again by the next timer.
        if not force and self._pulling():
            return []
        info = self.peers[peer]
        self._exchange_seq += 1
        info.pulling = self._exchange_seq
        info.pull_activity = now
        info.last_sent = now
        self.stats.sync_requests_sent += 1
        return [Outgoing(peer, SyncRequest(self._exchange_seq, dict(self.replica.marks)))]

    def sync_with(self, peer: str, now: float) -> list[Outgoing]:
        """Start an anti-entropy exchange with ``peer`` now."""
        if peer not in self.peers:
            raise KeyError(peer)
        return self._pull(peer, now, force=True)

    def _on_sync_request(self, sender: str, m: SyncRequest, now: float) -> list[Outgoing]:
        replica = self.replica
        full = replica.needs_full_state(m.marks)
        entries, patterns = replica.full_state() if full else replica.changes_since(m.marks)
        marks = dict(replica.marks)
        chunks = self._chunk(entries, patterns)
        out = [
            Outgoing(
                sender,
                SyncResponse(m.exchange, i, len(chunks), tuple(ce), tuple(cp), marks, full),
            )
            for i, (ce, cp) in enumerate(chunks)
        ]
        self.stats.sync_entries_sent += len(entries)
        self.stats.full_syncs_sent += full
        info = self.peers[sender]
        info.last_sent = now
        # Push-pull: the requester has writes we lack; ask for them in the same round.
        if info.pulling is None and any(ts > marks.get(o, -1) for o, ts in m.marks.items()):
            out += self._pull(sender, now)
        return out

    def _on_sync_response(self, sender: str, m: SyncResponse, now: float) -> list[Outgoing]:
        if not 0 <= m.part < m.parts:
            raise ValueError("sync response part out of range")
        key = (sender, m.exchange)
        state = self._inbound.get(key)
        if state is None:
            state = _Inbound(sender, now, m.parts, listed=set() if m.full else None)
            self._inbound[key] = state
        if m.part in state.seen:
            return []  # a duplicate: merging again would be harmless, but skip the work
        state.seen.add(m.part)
        info = self.peers.get(sender)
        if info is not None and info.pulling == m.exchange:
            info.pull_activity = now
        _, _, ok = self._merge(sender, m.entries, m.patterns, now)
        state.ok = state.ok and ok
        if state.listed is not None:
            state.listed.update(k for k, _ in m.entries)
        if len(state.seen) < state.parts:
            return []
        del self._inbound[key]
        if info is not None and info.pulling == m.exchange:
            info.pulling = None
        if state.ok:
            if state.listed is not None:
                for change in self.replica.forget_unlisted(state.listed, m.marks):
                    self._change(change)
            self.replica.advance_marks(m.marks)
            self.stats.syncs_completed += 1
        return []

    # ---------------------------------------------------------------- fetch
    def fetch(self, keys: Sequence[str], now: float) -> list[Outgoing]:
        """Ask live peers for values of ``keys`` (on-demand mode or after eviction)."""
        self._fetch_seq += 1
        msg = Fetch(self._fetch_seq, tuple(keys))
        return [Outgoing(peer, msg) for peer in self._targets(exclude=())]

    def _on_fetch(self, m: Fetch, now: float) -> FetchReply:
        found = []
        for key in m.keys:
            e = self.replica.lookup(key, now)
            if e is not None and e.value is not NOT_HELD:
                found.append((key, e))
        return FetchReply(m.request, tuple(found))

    # ------------------------------------------------------------------ time
    def tick(self, now: float) -> list[Outgoing]:
        """Advance timers: flush deltas, heartbeats, membership, anti-entropy, collection."""
        cfg = self.config
        out: list[Outgoing] = []
        if now >= self._next_flush:
            out += self.flush(now)[0]
        if now >= self._next_membership:
            # Membership moves at heartbeat pace; checking it every tick is wasted work.
            self._next_membership = now + cfg.heartbeat_interval / 2
            out += self._check_membership(now)
        # A request (or answer) lost on the way must not block anti-entropy for long:
        # a pull with no progress for most of an interval is given up before the next.
        quiet = 0.9 * cfg.anti_entropy_interval
        for info in self.peers.values():
            if info.pulling is not None and now - info.pull_activity > quiet:
                info.pulling = None
        if self._next_sync is None:
            self._next_sync = now + self.rng.random() * cfg.anti_entropy_interval
        elif now >= self._next_sync:
            self._next_sync = now + cfg.anti_entropy_interval
            live = self.live_peers()
            if live:
                out += self._pull(self._sample(live, 1)[0], now)
        if now >= self._next_gc:
            self._next_gc = now + cfg.gc_interval
            dropped, expired = self.replica.collect(now)
            self.stats.collected += dropped
            for change in expired:
                self._change(change)
        stale = [k for k, s in self._inbound.items() if now - s.started > cfg.exchange_timeout]
        for k in stale:
            del self._inbound[k]
            owner = self.peers.get(k[0])
            if owner is not None and owner.pulling == k[1]:
                owner.pulling = None
        return out

    def _check_membership(self, now: float) -> list[Outgoing]:
        cfg = self.config
        out: list[Outgoing] = []
        for info in self.peers.values():
            silent = now - info.last_heard
            if info.state == ALIVE and silent > cfg.suspect_after:
                self._set_state(info, SUSPECT)
            if info.state == SUSPECT and silent > cfg.dead_after:
                self._set_state(info, DEAD)
                self._drop_acks(info.id)
            interval = cfg.heartbeat_interval * (4 if info.state == DEAD else 1)
            if now - info.last_sent >= interval:
                info.last_sent = now
                out.append(Outgoing(info.id, Ping(0)))
        return out

    def next_deadline(self) -> float:
        """The earliest time :meth:`tick` has work to do (for drivers that sleep)."""
        soon = min(self._next_gc, self._next_membership)
        if self._next_sync is not None:
            soon = min(soon, self._next_sync)
        if self._pending or self._pending_patterns or self._relay or self._relay_patterns:
            soon = min(soon, self._next_flush)
        return soon

    # ---------------------------------------------------------------- events
    def _set_state(self, info: PeerInfo, state: str) -> None:
        previous, info.state = info.state, state
        self._peer_event(PeerEvent(info.id, state, previous))

    def _change(self, change: Change) -> None:
        if len(self._changes) == MAX_PENDING_EVENTS:
            self.stats.events_dropped += 1
        self._changes.append(change)

    def _peer_event(self, event: PeerEvent) -> None:
        if len(self._peer_events) == MAX_PENDING_EVENTS:
            self.stats.events_dropped += 1
        self._peer_events.append(event)

    def drain_changes(self) -> list[Change]:
        """Visible changes applied since the last call (local and remote)."""
        out = list(self._changes)
        self._changes.clear()
        return out

    def drain_peer_events(self) -> list[PeerEvent]:
        """Peer state changes since the last call."""
        out = list(self._peer_events)
        self._peer_events.clear()
        return out
