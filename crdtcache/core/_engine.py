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
visible changes, peer state changes and finished waits are taken with
:meth:`drain_changes`, :meth:`drain_peer_events` and :meth:`drain_completions`.

Four mechanisms, each enough for one job:

1. *Delta push.* Queued deltas are flushed as a :class:`Push` to every live peer
   (``fanout=None``), or to ``fanout`` random peers who relay what was new to them
   (epidemic mode, for large clusters; see :mod:`~crdtcache.core._batches`). The
   engine says when (:meth:`~GossipEngine.flush_deadline`), the driver arms its timer:
   an idle engine's write is due at once; once ``flush_burst`` flushes have gone out
   close together, writes coalesce into the next flush, due within ``sync_interval``
   (adaptive batching: lone writes are not held back, bursts still travel together).
   A node's own push to a peer that saw all its earlier pushes claims a gap-free range
   of its stamps, which lets the receiver raise its mark for the node without
   anti-entropy. A write-through flush asks for acks; an
   :class:`~crdtcache.core._completion.AckDone` says when every peer applied it.
2. *Anti-entropy.* Every ``anti_entropy_interval`` the engine sends its marks to a
   random live peer, which answers with what lies above them (split into parts, built
   a slice at a time, one answer per peer at a bounded rate: see
   :mod:`~crdtcache.core._answers`); the receiver adopts the answerer's marks once all
   parts have merged, and only for the exchange it has in flight with that peer (an
   answer nobody asked for is merged like a relay; marks beyond ``max_drift`` are
   refused). A receiver that sees the requester ahead asks back (push-pull). A peer
   that comes back up is synced with at once: catch-up, not flush.
3. *Membership.* Every message is a sign of life; quiet links carry :class:`Ping`.
   A peer silent for ``suspect_after`` is suspect, for ``dead_after`` dead (the
   transition table of :mod:`~crdtcache.core._membership`), and forgotten after
   ``forget_dead_after``; the table holds at most ``max_peers``. Nobody waits for a
   lost peer: the acks and fetches it owed complete without it.
4. *Collection.* Every ``gc_interval`` the replica drops expired tombstones.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from crdtcache._errors import CacheError, ClockDriftError
from crdtcache.core._answers import SyncAnswers
from crdtcache.core._batches import ENTRY_OVERHEAD, Chunk, RelayQueue, chunk, retransmits_for
from crdtcache.core._completion import AckDone, Completion, FetchDone, Waits
from crdtcache.core._config import EngineStatistics, GossipConfig, RandomSource
from crdtcache.core._counter import Counter
from crdtcache.core._entry import NOT_HELD, Change, Entry, PatternTombstone, stub_of
from crdtcache.core._membership import (
    ALIVE,
    DEAD,
    SUSPECT,
    Membership,
    PeerEvent,
    PeerInfo,
)
from crdtcache.core._messages import (
    Ack,
    Fetch,
    FetchReply,
    Message,
    Outgoing,
    Ping,
    Push,
    SyncRequest,
    SyncResponse,
)
from crdtcache.core._patterns import PatternLimitError
from crdtcache.core._replica import Replica
from crdtcache.core._throttle import LogThrottle
from crdtcache.core._values import stored_size

__all__ = [
    "ALIVE",
    "DEAD",
    "MAX_PENDING_EVENTS",
    "SUSPECT",
    "AckDone",
    "Completion",
    "EngineStatistics",
    "FetchDone",
    "GossipConfig",
    "GossipEngine",
    "Outgoing",
    "PeerEvent",
    "PeerInfo",
    "RandomSource",
]

log = logging.getLogger(__name__)

#: Undrained changes and peer events kept before the oldest are dropped (and counted).
MAX_PENDING_EVENTS: Final = 100_000


@dataclass(slots=True)
class _Inbound:
    peer: str
    started: float
    parts: int
    seen: set[int] = field(default_factory=set)
    ok: bool = True
    listed: set[str] | None = None


def _cap_patterns(part: Chunk, cap: int) -> list[Chunk]:
    """Cut ``part`` so that no piece holds more than ``cap`` pattern tombstones.

    Items stay in stamp order across the pieces (entries and tombstones interleaved as
    in ``part``), so that the stream claims of consecutive pushes still chain.
    """
    entries, patterns = part
    if len(patterns) <= cap:
        return [part]
    items = sorted(
        [(e.ts, 0, i) for i, (_, e) in enumerate(entries)]
        + [(p.ts, 1, i) for i, p in enumerate(patterns)]
    )
    pieces: list[Chunk] = [([], [])]
    for _, is_pattern, i in items:
        if is_pattern:
            if len(pieces[-1][1]) == cap:
                pieces.append(([], []))
            pieces[-1][1].append(patterns[i])
        else:
            pieces[-1][0].append(entries[i])
    return pieces


class GossipEngine:
    """One node's gossip protocol, driven by ``handle`` and ``tick`` (see module doc)."""

    def __init__(
        self, replica: Replica, rng: RandomSource, config: GossipConfig | None = None
    ) -> None:
        self.replica = replica
        self.node = replica.node
        self.rng = rng
        self.config = config or GossipConfig()
        self.membership = Membership(self.node, self.config.max_peers)
        self.stats = EngineStatistics()
        self._pending: dict[str, Entry] = {}
        self._pending_patterns: list[PatternTombstone] = []
        # Our pushes chain: each holds all our writes stamped in (previous upto, upto].
        self._stream_upto = replica.marks.get(replica.node, -1)
        # Adaptive batching: flushes of own writes that may go out at once (a token
        # bucket: ``flush_burst`` tokens, refilled at that many per ``sync_interval``),
        # as the budget stood at ``_budget_at``. While it lasts, the link counts as idle.
        self._flush_budget = float(self.config.flush_burst)
        self._budget_at = 0.0
        # When flush() last ran: epidemic relays alone are retransmitted once per
        # ``sync_interval`` after it.
        self._last_flush = 0.0
        # Drawn at the first tick, so that nodes started together do not sync in step.
        self._next_sync: float | None = None
        self._next_gc = 0.0
        self._next_membership = 0.0
        # Epidemic mode: items to relay on the next flushes, with the sends left.
        self._relay = RelayQueue()
        self._exchange_seq = 0
        self._inbound: dict[tuple[str, int], _Inbound] = {}
        # Answers to peers' anti-entropy requests, built a slice at a time.
        self._answers = SyncAnswers(self.config, self.stats, self.node)
        self._waits = Waits()
        self._changes: deque[Change] = deque(maxlen=MAX_PENDING_EVENTS)
        self._peer_events: deque[PeerEvent] = deque(maxlen=MAX_PENDING_EVENTS)
        self._completions: deque[Completion] = deque(maxlen=MAX_PENDING_EVENTS)
        #: With ``persist_path``: this node's own writes are durable up to this stamp,
        #: and none stamped above it may leave the node (in a push, an anti-entropy
        #: answer or a fetch reply) before the driver reports it durable
        #: (:meth:`made_durable`). A node killed after sending a write it had not
        #: stored would restart without it while its peers hold it, and its marks would
        #: then claim it. None: no durability to wait for.
        self._durable: int | None = None
        # See hold_exchanges.
        self._exchanges_held = False
        # A join the replica minted is this node's write: it goes out like one.
        replica.on_mint = self._queue_minted
        # Refusals are caused by peers: a burst of lines per kind, then counts.
        self._log = LogThrottle(log)

    # ------------------------------------------------------------------ peers
    @property
    def peers(self) -> dict[str, PeerInfo]:
        """Every known peer by id (the :class:`Membership` table)."""
        return self.membership.peers

    def add_peer(self, peer: str, now: float) -> list[Outgoing]:
        """Start gossiping with ``peer`` (idempotent); returns a catch-up request."""
        event = self.membership.add(peer, now)
        if event is None:
            return []
        self._peer_event(event)
        return self._pull(peer, now)

    def remove_peer(self, peer: str) -> None:
        """Forget ``peer`` (it left the cluster for good)."""
        event = self.membership.remove(peer)
        self._answers.forget(peer)
        if event is not None:
            self._peer_event(event)
            self._peer_gone(peer)

    def peer_reachable(self, peer: str, now: float) -> list[Outgoing]:
        """The driver has a (new) link to ``peer``: catch up with it now."""
        info = self.membership.get(peer)
        if info is None:
            return self.add_peer(peer, now)
        self._peer_event(self.membership.heard(info, now))
        return self._pull(peer, now)

    def peer_unreachable(self, peer: str, now: float) -> None:
        """The driver lost its link to ``peer``: suspect it now rather than wait.

        Until :meth:`peer_reachable` or a message from it, it is sent no pushes, and
        write-through waits and fetches stop waiting for it.
        """
        info = self.membership.get(peer)
        if info is None:
            return
        info.pulling = None
        self._answers.forget(peer)  # nothing can be sent to it now
        self._peer_gone(peer)
        self._peer_event(self.membership.unlinked(info))

    @property
    def exchanges_held(self) -> bool:
        """Whether anti-entropy is held (:meth:`hold_exchanges`)."""
        return self._exchanges_held

    def hold_exchanges(self) -> None:
        """Start and answer no anti-entropy exchange until :meth:`release_exchanges`.

        For a replica whose marks claim more than its map holds yet (a store still
        loading): an answer would pass those marks to a peer, and a full state
        received would forget only what is loaded. Requests wait; pushes, acks and
        fetches go on as usual.
        """
        self._exchanges_held = True
        self._answers.held = True

    def release_exchanges(self, now: float) -> None:
        """Answer the requests that waited, and pull from a peer at the next tick."""
        self._exchanges_held = False
        self._answers.held = False
        self._next_sync = now  # catch up at once: that is what a restart needs

    def set_congested(self, peer: str, congested: bool) -> None:
        """The driver's word on ``peer``'s send buffer: while full, no answer is built
        or sent to it (it would only be dropped)."""
        self._answers.congested(peer, congested)

    def live_peers(self) -> list[str]:
        """Ids of peers not considered dead and not known to be unreachable."""
        return self.membership.live()

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

    def add(
        self, key: str, stored: object, now: float, expires: float | None = None
    ) -> Entry | None:
        """Write ``key`` only if it has no live value here; the entry, or None if it had.

        Atomic among the callers of this engine (it never waits). Not across nodes: two
        nodes adding at once both succeed, and last-writer-wins keeps one value.
        """
        if self.replica.lookup(key, now) is not None:
            return None
        return self.set(key, stored, now, expires)

    def touch(self, key: str, now: float, expires: float | None) -> Entry | None:
        """Give the live value of ``key`` a new expiry and queue it; None if absent."""
        entry = self.replica.touch(key, now, expires)
        if entry is not None:
            self._queue_local(key, entry)
        return entry

    def incr(
        self,
        key: str,
        delta: int,
        now: float,
        expires: float | None,
        as_int: Callable[[object], int],
    ) -> Entry | None:
        """Add ``delta`` to the counter of ``key`` and queue it (see :meth:`Replica.incr`)."""
        entry = self.replica.incr(key, delta, now, expires, as_int)
        if entry is not None:
            self._queue_local(key, entry)
        return entry

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

    def _queue_minted(self, key: str, entry: Entry) -> None:
        # Reported by the merge that minted it; only queued here. Its stamp is the
        # newest this node issued, so _pending stays in stamp order.
        self._pending.pop(key, None)
        self._pending[key] = entry

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

    # ------------------------------------------------------------ durability
    @property
    def durable(self) -> int | None:
        """Own writes stamped above this wait to be stored (None: no gate; see __init__)."""
        return self._durable

    @durable.setter
    def durable(self, ts: int | None) -> None:
        self._durable = ts
        self._answers.durable = ts  # answers started from now on hold back the rest

    def made_durable(self, ts: int) -> None:
        """The driver stored this node's own writes up to ``ts``: they may leave now."""
        if self._durable is not None and ts > self._durable:
            self.durable = ts

    @property
    def awaiting_durability(self) -> bool:
        """Whether own writes are queued that must be stored before they can be sent."""
        durable = self.durable
        if durable is None:
            return False
        # Both queues are in stamp order: their newest item decides (no scan per write).
        pending, patterns = self._pending, self._pending_patterns
        if pending and next(reversed(pending.values())).ts > durable:
            return True
        return bool(patterns) and patterns[-1].ts > durable

    def _take_sendable(self) -> tuple[list[tuple[str, Entry]], list[PatternTombstone]]:
        """Take the queued own writes that may leave (all of them, without a gate)."""
        durable = self.durable
        if durable is None:
            entries = list(self._pending.items())
            patterns = self._pending_patterns
            self._pending = {}
            self._pending_patterns = []
            return entries, patterns
        entries = [(k, e) for k, e in self._pending.items() if e.ts <= durable]
        for key, _ in entries:
            del self._pending[key]
        patterns = [p for p in self._pending_patterns if p.ts <= durable]
        self._pending_patterns = [p for p in self._pending_patterns if p.ts > durable]
        return entries, patterns

    def _sendable(self) -> bool:
        """Whether queued own writes may leave now (the durability gate allowing)."""
        pending, patterns = self._pending, self._pending_patterns
        durable = self._durable
        if durable is None:
            return bool(pending) or bool(patterns)
        # Both queues are in stamp order: their oldest item decides (no scan per write).
        return (bool(pending) and next(iter(pending.values())).ts <= durable) or (
            bool(patterns) and patterns[0].ts <= durable
        )

    # ------------------------------------------------------------ delta push
    def flush_deadline(self) -> float | None:
        """When :meth:`flush` is next due; None when nothing queued may leave.

        A time at or before now means at once: the flush budget is not spent (the link
        is idle, so a lone write is not held back). Once ``flush_burst`` flushes went
        out close together, writes coalesce until the budget refills, at most
        ``sync_interval / flush_burst`` after the last flush, so never more than
        ``sync_interval`` after they were queued. Writes held by the durability gate
        have no deadline: :meth:`made_durable` releases them, and the driver then asks
        again. The driver arms a timer for this time (or flushes now); nothing is due
        on an idle engine, so idle ticks arm no timer.
        """
        cfg = self.config
        due: float | None = None
        if self._sendable():
            wait = max(0.0, 1.0 - self._flush_budget) * cfg.sync_interval / cfg.flush_burst
            due = self._budget_at + wait
        if self._relay:
            relays = self._last_flush + cfg.sync_interval
            due = relays if due is None else min(due, relays)
        return due

    def flush_due(self, now: float) -> bool:
        """Whether :meth:`flush` is due at ``now`` (see :meth:`flush_deadline`)."""
        due = self.flush_deadline()
        # Before the last flush: the wall clock stepped back, by an unknown amount, and
        # waiting for it to catch up could take long. Flush now (the budget restarts).
        return due is not None and (now >= due or now < self._budget_at)

    def _spend_flush(self, now: float) -> None:
        """Take one flush from the budget, refilled for the time since it was last taken."""
        cfg = self.config
        # A wall clock may step back: no refill then, and none is taken in advance.
        refill = max(0.0, now - self._budget_at) * cfg.flush_burst / cfg.sync_interval
        budget = min(float(cfg.flush_burst), self._flush_budget + refill)
        self._flush_budget = max(0.0, budget - 1.0)
        self._budget_at = now

    def flush(self, now: float, *, ack: bool = False) -> tuple[list[Outgoing], int]:
        """Push queued deltas to peers now, whether due or not (see :meth:`flush_due`).

        With ``ack=True`` the pushes ask for acknowledgements; the returned id is
        then awaited with :meth:`unacked` (0 when nothing needed acknowledging).
        """
        self._last_flush = now
        entries, patterns = self._take_sendable()
        if not entries and not patterns:
            relays = self._retransmit(now)
            if ack:
                # Our writes may have left in a push that asked for no ack (the flush
                # timer took them first): an empty push that does ask acts as a barrier,
                # since a link delivers in order.
                barrier = self._barrier(now)
                if barrier is not None:
                    return relays + barrier[0], barrier[1]
            return relays, 0
        self._spend_flush(now)
        if not self.peers:
            # Nobody to tell (a lone node, the memory backend): just keep the stream
            # chain, so that the first push to a later peer claims the right range.
            self._stream_upto = max(
                [e.ts for _, e in entries] + [p.ts for p in patterns], default=self._stream_upto
            )
            return [], 0
        if self.config.on_demand:
            # A counter travels whole: a stub of it could replace a peer's copy, and
            # the totals only this node holds would be lost.
            entries = [
                (k, stub_of(e) if e.held and type(e.value) is not Counter else e)
                for k, e in entries
            ]
        chunks = self._chunk(entries, patterns)
        targets = self._targets(exclude=())
        ack_id = 0
        if ack and targets:
            ack_id = self._waits.expect_acks(targets)
        out: list[Outgoing] = []
        since = self._stream_upto
        last = len(chunks) - 1
        for i, (chunk_entries, chunk_patterns) in enumerate(chunks):
            upto = max(
                [e.ts for _, e in chunk_entries] + [p.ts for p in chunk_patterns], default=since
            )
            # The claim is a fact about the message; a receiver that missed an earlier
            # push has a mark below ``since`` and so does not advance on it. Only the
            # last push of the batch asks for an ack: a link delivers in order, so its
            # ack says the whole batch was applied (one ack per batch, not per part).
            asks = ack_id if i == last else 0
            push = Push(
                tuple(chunk_entries), tuple(chunk_patterns), self.node, since, upto, 0, asks
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

    def _queue_relay(
        self,
        entries: Sequence[tuple[str, Entry]],
        patterns: Sequence[PatternTombstone],
        *,
        already_sent: bool,
    ) -> None:
        sends = self.config.retransmits
        if sends is None:
            sends = retransmits_for(len(self.peers))
        self._relay.queue(entries, patterns, sends - already_sent)

    def _retransmit(self, now: float) -> list[Outgoing]:
        """Epidemic mode: send queued relays to ``fanout`` random peers, once per flush."""
        if not self._relay:
            return []
        entries, patterns = self._relay.take()
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
        ack_id = self._waits.expect_acks(targets)
        push = Push((), (), None, -1, -1, 0, ack_id)
        for peer in targets:
            self.peers[peer].last_sent = now
        return [Outgoing(peer, push) for peer in targets], ack_id

    def unacked(self, ack_id: int) -> frozenset[str]:
        """Peers that have not yet acknowledged push ``ack_id`` (empty when done)."""
        return self._waits.unacked(ack_id)

    def forget_ack(self, ack_id: int) -> None:
        """Stop tracking push ``ack_id`` (the waiter gave up or finished)."""
        self._waits.forget_ack(ack_id)

    def _peer_gone(self, peer: str) -> None:
        """Nobody waits for a lost peer: acks and fetches it owed may complete now."""
        for done in self._waits.peer_lost(peer):
            self._complete(done)

    def _chunk(
        self, entries: Sequence[tuple[str, Entry]], patterns: Sequence[PatternTombstone]
    ) -> list[Chunk]:
        cfg = self.config
        chunks = chunk(entries, patterns, cfg.max_message_entries, cfg.max_message_bytes)
        if len(patterns) <= cfg.max_message_patterns:
            return chunks
        return [part for c in chunks for part in _cap_patterns(c, cfg.max_message_patterns)]

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
        """Process one message from ``sender``; return what to send in reply.

        A sender the full peer table has no room for is ignored (and counted).
        """
        out = self._heard(sender, now)
        if sender not in self.membership:
            self.stats.ignored_messages += 1
            return []
        if isinstance(message, Push):
            out += self._on_push(sender, message, now)
        elif isinstance(message, SyncRequest):
            out += self._on_sync_request(sender, message, now)
        elif isinstance(message, SyncResponse):
            out += self._on_sync_response(sender, message, now)
        elif isinstance(message, Ack):
            self._complete(self._waits.acked(message.ack, sender))
        elif isinstance(message, Fetch):
            out.append(Outgoing(sender, self._on_fetch(message, now)))
        elif isinstance(message, FetchReply):
            self._merge(sender, message.entries, (), now)
            wanted = self._waits.fetch_keys(message.request)
            missing = [k for k in wanted if self._stub(k, now)]
            self._complete(self._waits.answered(message.request, sender, missing))
        elif not isinstance(message, Ping):
            raise TypeError(f"not a gossip message: {type(message).__name__}")
        return out

    def _heard(self, sender: str, now: float) -> list[Outgoing]:
        info = self.membership.get(sender)
        if info is None:
            return self.add_peer(sender, now)
        event = self.membership.heard(info, now)
        if event is not None:
            self._peer_event(event)
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
        if patterns:
            # New here only if it replaced what we held (which may be this very object
            # when messages are not copied, as in the simulator).
            held = {t.pattern: replica.patterns.get(t.pattern) for t in patterns}
            removed, taken, refused = replica.merge_patterns(patterns, now)
            fresh_patterns = [t for t in taken if held[t.pattern] is not t]
            for change in removed:
                self._change(change)
            for exc in refused:
                ok = self._refuse(sender, exc, now)
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
                ok = self._refuse(sender, exc, now)
                continue
            if merged is not None:
                applied += 1
                fresh.append((key, entry))
                self._change(merged)
        self.stats.entries_received += len(entries)
        self.stats.entries_applied += applied
        return fresh, fresh_patterns, ok

    def _refuse(self, sender: str, exc: CacheError, now: float) -> bool:
        """Count a refused item (its marks then stay where they are); returns False.

        A stamp beyond ``max_drift`` and a pattern tombstone beyond the replica's cap are
        refusals, not junk: the link stays, and the item is asked for again later.
        """
        if isinstance(exc, PatternLimitError):
            self.stats.refused_patterns += 1
            kind, level = "refused pattern tombstones", logging.WARNING
        else:
            self.stats.refused_drift += 1
            kind, level = "refused stamps", logging.ERROR
        self._log.log(now, kind, level, "refused an item from %s: %s", sender, exc)
        return False

    def _on_push(self, sender: str, m: Push, now: float) -> list[Outgoing]:
        fresh, fresh_patterns, ok = self._merge(sender, m.entries, m.patterns, now)
        out: list[Outgoing] = []
        if (
            ok
            and m.origin is not None
            and m.origin == sender
            and self._marks_within_drift(sender, {sender: m.upto}, now)
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
        if self._exchanges_held or (not force and self._pulling()):
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
        # The answer is built in slices (see crdtcache.core._answers): the first now,
        # the rest on later ticks, so that no request holds the node up for long.
        self._answers.request(sender, m, now)
        out = self._answers.step(self.replica, now, only=sender)
        info = self.peers[sender]
        if out:
            info.last_sent = now
        # Push-pull: the requester has writes we lack; ask for them in the same round.
        marks = self.replica.marks
        if info.pulling is None and any(ts > marks.get(o, -1) for o, ts in m.marks.items()):
            out += self._pull(sender, now)
        return out

    def _answer_step(self, now: float) -> list[Outgoing]:
        out = self._answers.step(self.replica, now)
        for peer in {o.peer for o in out}:
            info = self.peers.get(peer)
            if info is not None:
                info.last_sent = now
        return out

    def _on_sync_response(self, sender: str, m: SyncResponse, now: float) -> list[Outgoing]:
        if not 0 <= m.part < m.parts:
            raise ValueError("sync response part out of range")
        key = (sender, m.exchange)
        state = self._inbound.get(key)
        info = self.peers.get(sender)
        if state is None:
            if info is None or info.pulling != m.exchange:
                return self._unsolicited(sender, m, now)
            state = _Inbound(sender, now, m.parts, listed=set() if m.full else None)
            self._inbound[key] = state
        elif m.parts != state.parts or m.full != (state.listed is not None):
            state.ok = False  # parts that disagree about the answer: adopt and forget nothing
        if m.part in state.seen:
            return []  # a duplicate: merging again would be harmless, but skip the work
        state.seen.add(m.part)
        if info is not None and info.pulling == m.exchange:
            info.pull_activity = now
        _, _, ok = self._merge(sender, m.entries, m.patterns, now)
        state.ok = state.ok and ok
        if state.listed is not None:
            state.listed.update(k for k, _ in m.entries)
        if len(state.seen) == state.parts:
            self._sync_answered(state, m, now)
        return []

    def _sync_answered(self, state: _Inbound, m: SyncResponse, now: float) -> None:
        """Every part of an anti-entropy answer is in: adopt its marks (and, for a full
        state, forget what it did not list), unless a part disagreed or failed."""
        sender = state.peer
        del self._inbound[(sender, m.exchange)]
        info = self.peers.get(sender)
        if info is not None and info.pulling == m.exchange:
            info.pulling = None
        if not state.ok or not self._marks_within_drift(sender, m.marks, now):
            return
        if state.listed is not None:
            for change in self.replica.forget_unlisted(state.listed, m.marks):
                self._change(change)
        self.replica.advance_marks(m.marks)
        self.stats.syncs_completed += 1

    def _unsolicited(self, sender: str, m: SyncResponse, now: float) -> list[Outgoing]:
        """A sync answer to no pull of ours in flight: its entries only, like a relay.

        Its marks and its ``full`` flag mean something only for an exchange this node
        started with that peer: adopting marks nobody asked for would stop this node
        asking for what it lacks, and the forget rule of a full answer would drop every
        entry the marks "cover" (an unsolicited full answer wiped a node). The entries
        are merged like any push (no marks move), so a late part is not lost.
        """
        self.stats.unsolicited_responses += 1
        log.debug("sync answer %d from %s answers no pull of ours", m.exchange, sender)
        self._merge(sender, m.entries, m.patterns, now)
        return []

    def _marks_within_drift(self, sender: str, marks: Mapping[str, int], now: float) -> bool:
        """Whether ``marks`` may be adopted: none is more than ``max_drift`` ahead.

        A mark claims every write up to it; one from the future would make this node
        stop asking for writes not made yet, and is refused like a drifting stamp.
        """
        highest = max(marks.values(), default=-1)
        if self.replica.clock.within_drift(highest, now):
            return True
        self.stats.refused_drift += 1
        self._log.log(
            now,
            "refused stamps",
            logging.ERROR,
            "refused the marks of %s: beyond max_drift",
            sender,
        )
        return False

    # ---------------------------------------------------------------- fetch
    def fetch(self, keys: Sequence[str], now: float) -> list[Outgoing]:
        """Ask live peers for values of ``keys``; the messages of :meth:`start_fetch`."""
        return self.start_fetch(keys, now)[1]

    def start_fetch(self, keys: Sequence[str], now: float) -> tuple[int, list[Outgoing]]:
        """Ask live peers for values of ``keys`` (on-demand mode or after eviction).

        Returns the request id and the messages; a :class:`FetchDone` for that id
        follows once every key arrived or every asked peer answered or was lost. The
        id is 0 (and nothing is sent or tracked) when there is no live peer to ask.
        """
        targets = self._targets(exclude=())
        if not targets:
            return 0, []
        request = self._waits.expect_fetch(targets, keys)
        msg = Fetch(request, tuple(keys))
        return request, [Outgoing(peer, msg) for peer in targets]

    def forget_fetch(self, request: int) -> None:
        """Stop tracking fetch ``request`` (the waiter gave up or finished)."""
        self._waits.forget_fetch(request)

    def _stub(self, key: str, now: float) -> bool:
        """Whether ``key`` is known here only by its stamp (a fetch would fill it)."""
        e = self.replica.lookup(key, now)
        return e is not None and not e.held

    def _on_fetch(self, m: Fetch, now: float) -> FetchReply:
        # One reply, so it is cut at about max_message_bytes (always one value, which
        # the frame limit leaves room for): the asker counts the rest as not sent and
        # asks for them again one by one.
        found: list[tuple[str, Entry]] = []
        budget = self.config.max_message_bytes
        durable = self.durable
        for key in m.keys:
            e = self.replica.lookup(key, now)
            if e is None or e.value is NOT_HELD:
                continue
            if durable is not None and e.origin == self.node and e.ts > durable:
                continue  # not stored yet: it may not leave (see ``durable``)
            cost = len(key) + ENTRY_OVERHEAD + stored_size(e.value)
            if found and cost > budget:
                break
            budget -= cost
            found.append((key, e))
        return FetchReply(m.request, tuple(found))

    # ------------------------------------------------------------------ time
    def tick(self, now: float) -> list[Outgoing]:
        """Advance timers: flush deltas, heartbeats, membership, anti-entropy, collection."""
        cfg = self.config
        out: list[Outgoing] = []
        if self.flush_due(now):
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
        if self._answers.pending():
            out += self._answer_step(now)
        if now >= self._next_gc:
            self._next_gc = now + cfg.gc_interval
            dropped, expired = self.replica.collect(now)
            self.stats.collected += dropped
            for change in expired:
                self._change(change)
        self._log.flush(now)
        stale = [k for k, s in self._inbound.items() if now - s.started > cfg.exchange_timeout]
        for k in stale:
            del self._inbound[k]
            owner = self.peers.get(k[0])
            if owner is not None and owner.pulling == k[1]:
                owner.pulling = None
        return out

    def _check_membership(self, now: float) -> list[Outgoing]:
        cfg = self.config
        for event in self.membership.check(now, cfg.suspect_after, cfg.dead_after):
            self._peer_event(event)
            if event.state == DEAD:
                self._peer_gone(event.peer)
        # Dead long enough: forgotten (a node id used once, then gone, is not kept).
        self.membership.forget_dead(now, cfg.forget_dead_after)
        due = self.membership.due_pings(now, cfg.heartbeat_interval)
        return [Outgoing(peer, Ping(0)) for peer in due]

    def next_deadline(self) -> float:
        """The earliest time :meth:`tick` has work to do (for drivers that sleep)."""
        soon = min(self._next_gc, self._next_membership)
        if self._next_sync is not None:
            soon = min(soon, self._next_sync)
        flush = self.flush_deadline()
        if flush is not None:
            soon = min(soon, flush)
        answers = self._answers.next_time()
        if answers is not None:
            soon = min(soon, answers)
        return soon

    # ---------------------------------------------------------------- events
    def _change(self, change: Change) -> None:
        if len(self._changes) == MAX_PENDING_EVENTS:
            self.stats.events_dropped += 1
        self._changes.append(change)

    def _peer_event(self, event: PeerEvent | None) -> None:
        if event is None:
            return
        if len(self._peer_events) == MAX_PENDING_EVENTS:
            self.stats.events_dropped += 1
        self._peer_events.append(event)

    def _complete(self, done: Completion | None) -> None:
        if done is None:
            return
        if len(self._completions) == MAX_PENDING_EVENTS:
            self.stats.events_dropped += 1
        self._completions.append(done)

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

    def drain_completions(self) -> list[Completion]:
        """Write-through acks and fetches finished since the last call.

        See :class:`~crdtcache.core._completion.AckDone` and ``FetchDone``.
        """
        out = list(self._completions)
        self._completions.clear()
        return out
