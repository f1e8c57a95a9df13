"""Answers to anti-entropy requests, built and sent a slice at a time.

Theory of operation
-------------------
A :class:`~crdtcache.core._messages.SyncRequest` asks for everything this node holds
above the requester's marks: on a large map that is a scan of every entry, and for a
full state every entry sent. Done at once, one request blocks the node for as long,
and a hundred tiny requests a hundred times over. So an answer is work kept per peer
(:class:`SyncAnswers`) and done in bounded slices:

* *One exchange per peer.* A peer has at most one answer being built and one request
  waiting; a newer request replaces the waiting one (its marks are the newer).
* *Rate.* A peer may have :data:`ANSWER_BURST` answers started at once, then one per
  ``answer_interval`` seconds (a bucket); a request beyond waits for the bucket.
* *Backpressure.* Nothing is built or sent for a peer whose send buffer is full (the
  driver says so with :meth:`SyncAnswers.congested`): its answer waits.
* *Slices.* A step scans at most :data:`SCAN_SLICE` entries, or emits parts worth at
  most :data:`EMIT_SLICE` entries and :data:`EMIT_BYTES` bytes; the engine takes one
  step when a request arrives (a small answer leaves at once) and one per tick.
  At most :data:`MAX_BUILDING` answers hold a snapshot at once.
* *Snapshot.* An answer is the replica as it was when it started: the list of keys and
  the list of entries (references, nothing copied), the marks and the pattern
  tombstones are taken then. Parts sent later hold exactly what the whole answer would
  have held had it been sent at once, so the requester may adopt the marks. A peer
  that lacks little (its missing entries found in the replica's change log by
  examining at most :data:`SCAN_SLICE` keys) gets a snapshot of just those: catching
  up costs the changes, not the map. Only a full state, or a peer far behind, has the
  whole map listed and scanned in slices.
* *Shape.* Pattern tombstones go first (``max_message_patterns`` per part), then the
  entries, cut by ``max_message_entries`` and ``max_message_bytes``. Every part carries
  the total number of parts, so the scan ends before the first part leaves.
* An answer not finished after ``exchange_timeout`` is dropped: its requester gave
  up on it by then.
* *Held.* While the engine holds exchanges (a store still loading), requests wait
  and nothing is built.
* *Durability.* With ``persist_path`` the node's own writes stamped above what it has
  stored (the engine's ``durable``) are left out of the answer and its own mark is cut
  to that stamp: an answer never carries or claims a write the node could lose.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from crdtcache.core._batches import ENTRY_OVERHEAD
from crdtcache.core._config import EngineStatistics, GossipConfig
from crdtcache.core._entry import Entry, PatternTombstone
from crdtcache.core._messages import Outgoing, SyncRequest, SyncResponse
from crdtcache.core._replica import Replica
from crdtcache.core._values import stored_size

__all__ = [
    "ANSWER_BURST",
    "EMIT_BYTES",
    "EMIT_SLICE",
    "MAX_BUILDING",
    "SCAN_SLICE",
    "SyncAnswers",
]

#: Entries scanned per step.
SCAN_SLICE: Final = 8192
#: Entries, and estimated bytes, of the parts emitted per step (at least one part).
EMIT_SLICE: Final = 8192
EMIT_BYTES: Final = 4 << 20
#: Answers a peer may have started at once before its rate applies.
ANSWER_BURST: Final = 4
#: Answers holding a snapshot of the replica at once (others wait their turn).
MAX_BUILDING: Final = 4


@dataclass(slots=True)
class _Answer:
    """One answer being built: its snapshot, what the scan chose, what was sent."""

    peer: str
    exchange: int
    started: float
    asked: Mapping[str, int]
    full: bool
    marks: dict[str, int]
    patterns: list[PatternTombstone]
    keys: list[str]
    entries: list[Entry]
    #: The node's own writes stamped above this are left out (not stored yet).
    held_back: tuple[str, int] | None = None
    scanned: int = 0
    #: Indexes in the snapshot of the entries chosen. (Plain integers in an array: a
    #: list of (key, entry) pairs would be 100,000 tracked objects to allocate, which
    #: sets off the garbage collector in the middle of a step.)
    chosen: array[int] = field(default_factory=lambda: array("q"))
    #: Where each part of entries ends in ``chosen``.
    ends: list[int] = field(default_factory=list)
    count: int = 0
    size: int = 0
    #: The number of parts, known once the scan ended (0 until then).
    parts: int = 0
    sent: int = 0

    @property
    def scanning(self) -> bool:
        return self.parts == 0 or self.scanned < len(self.keys)

    @property
    def done(self) -> bool:
        return self.parts > 0 and self.sent == self.parts


@dataclass(slots=True)
class _Peer:
    """What a peer asked for and may still have answered."""

    tokens: float
    refilled: float
    waiting: SyncRequest | None = None
    answer: _Answer | None = None
    congested: bool = False


class SyncAnswers:
    """The anti-entropy answers of one engine (see the module doc)."""

    __slots__ = ("_config", "_next", "_peers", "durable", "held", "node", "stats")

    def __init__(self, config: GossipConfig, stats: EngineStatistics, node: str = "") -> None:
        self._config = config
        self.stats = stats
        self.node = node
        #: The engine's ``durable`` (None: no gate), read when an answer starts.
        self.durable: int | None = None
        #: While True (the engine's ``hold_exchanges``), requests wait unanswered.
        self.held = False
        self._peers: dict[str, _Peer] = {}
        self._next = 0  # round-robin position

    # ------------------------------------------------------------- requests
    def request(self, peer: str, message: SyncRequest, now: float) -> None:
        """``peer`` asked: its request waits (replacing one still waiting)."""
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _Peer(float(ANSWER_BURST), now)
        if state.waiting is not None:
            self.stats.sync_requests_replaced += 1
        state.waiting = message

    def forget(self, peer: str) -> None:
        """``peer`` is gone: drop what was waiting for it or being built."""
        self._peers.pop(peer, None)

    def congested(self, peer: str, congested: bool) -> None:
        """The driver's word on ``peer``'s send buffer: full (wait) or not."""
        state = self._peers.get(peer)
        if state is not None:
            state.congested = congested

    def pending(self) -> bool:
        """Whether any answer is waiting or being built."""
        return any(s.waiting is not None or s.answer is not None for s in self._peers.values())

    def next_time(self) -> float | None:
        """When a step may next do work (None: nothing to do; in the past: now)."""
        if self.held:
            return None
        soonest: float | None = None
        for state in self._peers.values():
            if state.congested:
                continue
            if state.answer is not None:
                return float("-inf")
            if state.waiting is not None:
                when = state.refilled + max(0.0, 1 - state.tokens) * self._config.answer_interval
                soonest = when if soonest is None else min(soonest, when)
        return soonest

    # ---------------------------------------------------------------- steps
    def step(self, replica: Replica, now: float, only: str | None = None) -> list[Outgoing]:
        """Do one slice of work for one peer, the next in turn.

        With ``only``, just start an answer for that peer if one may start now (and do
        its first slice): a request arriving is not a reason to work on an answer
        already under way, or a burst of requests would drive that work.
        """
        if self.held:
            return []
        if only is not None:
            state = self._peers.get(only)
            if state is None or state.answer is not None:
                return []
            peers = [only]
        else:
            peers = list(self._peers)
        if not peers:
            return []
        building = sum(1 for s in self._peers.values() if s.answer is not None)
        for i in range(len(peers)):
            peer = peers[(self._next + i) % len(peers)]
            state = self._peers.get(peer)
            if state is None or state.congested:
                continue
            answer = state.answer
            if answer is not None and now - answer.started > self._config.exchange_timeout:
                state.answer = answer = None  # its requester gave up on it
            if answer is None:
                if state.waiting is None or building >= MAX_BUILDING:
                    continue
                self._refill(state, now)
                if state.tokens < 1:
                    continue
                state.tokens -= 1
                answer = state.answer = self._start(replica, peer, state.waiting, now)
                state.waiting = None
            if only is None:
                self._next = (self._next + i + 1) % len(peers)
            out = self._work(answer)
            if answer.done:
                state.answer = None
            return out
        return []

    def _refill(self, state: _Peer, now: float) -> None:
        rate = 1.0 / self._config.answer_interval
        state.tokens = min(float(ANSWER_BURST), state.tokens + (now - state.refilled) * rate)
        state.refilled = now

    def _start(self, replica: Replica, peer: str, m: SyncRequest, now: float) -> _Answer:
        """Take the snapshot an answer to ``m`` is built from."""
        asked = m.marks
        marks, full = replica.answer_terms(asked)
        self.stats.full_syncs_sent += full
        held_back = None
        durable = self.durable
        if durable is not None and marks.get(self.node, -1) > durable:
            held_back = (self.node, durable)
            marks = {**marks, self.node: durable}  # never claim what is not stored
        if full:
            patterns = list(replica.patterns.values())
        else:
            patterns = [p for p in replica.patterns.values() if p.ts > asked.get(p.origin, -1)]
        if held_back is not None:
            patterns = [p for p in patterns if p.origin != self.node or p.ts <= durable]  # type: ignore[operator]  # durable is set with held_back
        if not full:
            changed = replica.entries_since(asked, SCAN_SLICE)
            if changed is not None:  # found at the cost of the changes: the answer's own
                keys = [k for k, _ in changed]
                entries = [e for _, e in changed]
                return _Answer(
                    peer, m.exchange, now, asked, full, marks, patterns, keys, entries, held_back
                )
        keys, entries = list(replica.entries), list(replica.entries.values())
        return _Answer(
            peer, m.exchange, now, asked, full, marks, patterns, keys, entries, held_back
        )

    def _pattern_parts(self, answer: _Answer) -> int:
        per_part = min(self._config.max_message_patterns, self._config.max_message_entries)
        return -(-len(answer.patterns) // per_part)

    def _work(self, answer: _Answer) -> list[Outgoing]:
        if answer.scanning:
            self._scan(answer)
            if answer.scanning:
                return []
        return self._emit(answer)

    def _scan(self, answer: _Answer) -> None:
        """Choose the next slice of entries, and note where parts end."""
        cfg = self._config
        keys, entries, asked, full = answer.keys, answer.entries, answer.asked, answer.full
        chosen, ends = answer.chosen, answer.ends
        count, size = answer.count, answer.size
        stop = min(len(keys), answer.scanned + SCAN_SLICE)
        held_back = answer.held_back
        for i in range(answer.scanned, stop):
            e = entries[i]
            if not full and e.ts <= asked.get(e.origin, -1):
                continue
            if held_back is not None and e.origin == held_back[0] and e.ts > held_back[1]:
                continue  # not stored yet (see the module doc, Durability)
            cost = len(keys[i]) + ENTRY_OVERHEAD + stored_size(e.value)
            if count and (count >= cfg.max_message_entries or size + cost > cfg.max_message_bytes):
                ends.append(len(chosen))
                count = size = 0
            chosen.append(i)
            count += 1
            size += cost
        answer.scanned, answer.count, answer.size = stop, count, size
        if stop == len(keys):
            if count:
                ends.append(len(chosen))
            answer.parts = max(1, self._pattern_parts(answer) + len(ends))

    def _emit(self, answer: _Answer) -> list[Outgoing]:
        """The next parts, up to the emission budget of a step (one part at least)."""
        cfg = self._config
        pattern_parts = self._pattern_parts(answer)
        parts = answer.parts
        per_part = min(cfg.max_message_patterns, cfg.max_message_entries)
        out: list[Outgoing] = []
        budget_entries, budget_bytes = EMIT_SLICE, EMIT_BYTES
        while answer.sent < parts and (not out or (budget_entries > 0 and budget_bytes > 0)):
            i = answer.sent
            entries: tuple[tuple[str, Entry], ...] = ()
            patterns: tuple[PatternTombstone, ...] = ()
            if i < pattern_parts:
                patterns = tuple(answer.patterns[i * per_part : (i + 1) * per_part])
                budget_entries -= len(patterns)
            elif answer.ends:
                j = i - pattern_parts
                start = answer.ends[j - 1] if j else 0
                keys, snapshot = answer.keys, answer.entries
                entries = tuple(
                    (keys[k], snapshot[k]) for k in answer.chosen[start : answer.ends[j]]
                )
                budget_entries -= len(entries)
                budget_bytes -= sum(
                    len(k) + ENTRY_OVERHEAD + stored_size(e.value) for k, e in entries
                )
            message = SyncResponse(
                answer.exchange, i, parts, entries, patterns, answer.marks, answer.full
            )
            out.append(Outgoing(answer.peer, message))
            self.stats.sync_entries_sent += len(entries)
            answer.sent += 1
        return out
