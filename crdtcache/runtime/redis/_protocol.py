"""Redis mode's replication protocol, without IO (h11 / aioquic style).

:class:`RedisProtocol` makes every decision of one instance: what an announced write
does to the hot tier, which fetched value may be kept, what a batch of writes looks
like and what each answer to it means, when a pattern tombstone forces a recheck, who
must still acknowledge a write-through write, which instances are alive. It reads no
clock (the runtime passes ``now``), touches no socket and awaits nothing: the runtime
(:mod:`._runtime`) feeds it what Redis answered and what the channels carried, sends
what it returns, and turns its events (:meth:`RedisProtocol.drain_events`) into
listener calls and resolved futures. It is composed of parts a test can drive
alone: the formats (:mod:`._messages`), the outbox, instance table, ack waiters and
pattern book (:mod:`._tables`), the hot tier's merge rules (:mod:`._hottier`) and
the write path (:mod:`._writes`).

Theory of operation
-------------------
Redis holds the cluster's data; each instance's :class:`~crdtcache.core.Replica` is
only its *hot tier* (:mod:`._hottier`). The cache writes through the same engine as
in p2p mode; the protocol takes the engine's pending deltas
(:meth:`GossipEngine.take_pending`) into the outbox, and the runtime writes them to
Redis instead of gossiping them.

*Writes* are batched through the outbox and written by one script each, last
writer wins by stamp in Redis; a pattern tombstone a writer has not heard of makes
Redis answer "recheck" (:mod:`._writes` has the whole argument).

*Invalidation merge.* A batch's message carries, per applied write, the key, stamp
and expiry, and with write-behind / write-through small values inline
(:data:`~._messages.MAX_INLINE_VALUE_BYTES`). What a receiver does with it, and why
a read racing with a write cannot keep the older value, is :mod:`._hottier`'s theory. A receiver
acknowledges a message that asked for it once it applied every write in it; the
write-through writer waits until every live instance acknowledged or stopped (or
names the ones that did not).

*Subscription loss.* While the pub/sub link is down an instance cannot hear
invalidations, so when the link is found down the whole hot tier is dropped, writes
are refused (nothing is applied), waiters stop waiting (no ack can arrive), and reads
are served without keeping what they fetch. After resubscribing (and before serving
from the tier again) the tier is dropped once more -- reads in flight may have
refilled it -- and the pattern tombstones are reloaded.

*Instances* renew a heartbeat every ``heartbeat_interval``; each answer lists the live
ones, from which :class:`~._tables.InstanceTable` derives who joined and who died;
join and leave announcements make a clean start or stop visible at once.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import msgpack

from crdtcache._errors import ClockDriftError, PeerError
from crdtcache.core import (
    DEAD,
    TOMBSTONE,
    Change,
    Entry,
    GossipEngine,
    HybridClock,
    PatternTombstone,
    PeerEvent,
    Replica,
)
from crdtcache.core._format import InvalidRecord, check_node
from crdtcache.core._hlc import ts_seconds
from crdtcache.runtime._protocol import Problem
from crdtcache.runtime.redis._hottier import HotTier, ReadOutcome
from crdtcache.runtime.redis._messages import (
    Acks,
    InvalidMessage,
    Join,
    KeyLayout,
    Leave,
    Message,
    PatternRecorded,
    ScriptCalls,
    Writes,
    decode_acks,
    decode_message,
    encode_acks,
    parse_expiry,
    parse_patterns,
    parse_stamp,
    record_entry,
    sent_by,
)
from crdtcache.runtime.redis._tables import (
    MAX_OUTBOX,
    AckWaiters,
    InstanceTable,
    Outbox,
    PatternBook,
)
from crdtcache.runtime.redis._writes import WritePath

__all__ = [
    "AckDone",
    "AcksDue",
    "ChangesMade",
    "CleanupDue",
    "Evicted",
    "Event",
    "ProtocolCounters",
    "RedisProtocol",
    "literal_prefix",
]

log = logging.getLogger(__name__)


Write: TypeAlias = tuple[str, Entry]


# ------------------------------------------------------------------ events
@dataclass(frozen=True, slots=True)
class ChangesMade:
    """Visible changes to report (``on_changes``)."""

    changes: list[Change]


@dataclass(frozen=True, slots=True)
class Evicted:
    """The hot tier dropped a held value on its own (``on_evict``)."""

    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class AckDone:
    """The write-through waiter ``ack_id`` completed (see :class:`~._tables.AckWaiters`)."""

    ack_id: int


@dataclass(frozen=True, slots=True)
class AcksDue:
    """Acknowledgements wait to be sent (:meth:`RedisProtocol.take_acks`)."""


@dataclass(frozen=True, slots=True)
class CleanupDue:
    """A pattern cleanup waits to run (:meth:`RedisProtocol.next_cleanup`)."""


Event: TypeAlias = ChangesMade | PeerEvent | Evicted | AckDone | AcksDue | CleanupDue


@dataclass(slots=True)
class ProtocolCounters:
    """What the protocol counted since start (the write path counts its own)."""

    reconnects: int = 0
    junk_messages: int = 0
    refused_records: int = 0
    refused_drift: int = 0


def literal_prefix(pattern: str) -> str:
    """The part of an fnmatch glob before its first wildcard."""
    for i, c in enumerate(pattern):
        if c in "*?[":
            return pattern[:i]
    return pattern


class RedisProtocol:
    """One instance's side of redis mode, without IO (see module doc).

    ``where`` names the Redis server in messages (``"Redis at <url>"``, no password).
    A write that cannot be kept consistent raises :class:`PeerError`; junk from Redis
    or a channel is counted and dropped.
    """

    def __init__(
        self,
        engine: GossipEngine,
        *,
        cluster: str,
        inline: bool,
        local_ttl: float | None,
        where: str,
    ) -> None:
        self.engine = engine
        self.replica = engine.replica
        self.node = engine.node
        self.layout = KeyLayout.of(cluster, self.node)
        self.where = where
        self.counters = ProtocolCounters()
        self.patterns = PatternBook(self.replica)
        self.calls = ScriptCalls(self.layout, self.node, self.replica)
        self.hot = HotTier(
            self.replica,
            local_ttl=local_ttl,
            covered=self.covered,
            on_drift=self._drift,
            max_value_bytes=engine.config.max_value_bytes,
        )
        self.outbox = Outbox()
        self.writes = WritePath(
            self.replica,
            outbox=self.outbox,
            patterns=self.patterns,
            calls=self.calls,
            hot=self.hot,
            inline=inline,
            on_drift=self._drift,
            on_recorded=self.schedule_cleanup,
        )
        self.acks = AckWaiters()
        self.instances = InstanceTable(self.node)
        # The link (module doc, subscription loss); ``subscribed`` is the tier's
        # ``listening``: one fact, kept in one place.
        self.epoch = 0
        self.down_since: float | None = None
        self.down_reason = "not connected yet"
        self.server_offset = 0.0
        self._acks_out: dict[str, list[int]] = {}
        self._events: list[Event] = []
        self._packed_node: bytes = msgpack.packb(self.node)

    def drain_events(self) -> list[Event]:
        """The events since the last call, in order."""
        events, self._events = self._events, []
        return events

    def _drift(self) -> None:
        self.counters.refused_drift += 1

    # ================================================================== link
    @property
    def subscribed(self) -> bool:
        """Whether the subscription is up (invalidations are heard)."""
        return self.hot.listening

    @subscribed.setter
    def subscribed(self, value: bool) -> None:
        self.hot.listening = value

    def link_up(self) -> None:
        """The subscription is confirmed: every write committed from now on reaches us."""
        first = self.epoch == 0
        self.epoch += 1
        if not first:
            self.counters.reconnects += 1
            self.hot.drop_all()
        self.subscribed = True

    def link_ready(self, now: float) -> float | None:
        """Serving again; returns how long the link was down (None: it never was)."""
        down, self.down_since = self.down_since, None
        self.down_reason = ""
        return None if down is None else now - down

    def link_lost(self, reason: str, now: float) -> bool:
        """The subscription is down: drop the tier, stop waiting; True if it was up."""
        was = self.subscribed
        self.subscribed = False
        self.down_reason = reason
        if self.down_since is None:
            self.down_since = now
        self.hot.drop_all()
        self._acks_done(self.acks.complete_all())
        return was

    def closed(self) -> None:
        """The runtime stopped: nothing is served or acknowledged any more."""
        self.subscribed = False
        self._acks_done(self.acks.complete_all())

    def note_down(self, reason: str) -> None:
        """Redis failed for ``reason`` (shown while the link is down)."""
        self.down_reason = reason

    def check_writable(self) -> None:
        """Raise :class:`PeerError` before a write that could not be kept consistent."""
        if not self.subscribed:
            raise PeerError(
                f"{self.where} is unreachable ({self.down_reason}); nothing was written"
            )
        if self.outbox.full:
            raise PeerError(
                f"{len(self.outbox.queued)} write-behind writes are waiting for Redis "
                "(MAX_OUTBOX); nothing was written"
            )

    def problems(self, now: float, *, running: bool) -> list[Problem]:
        """What is wrong with this instance, for the health score."""
        c = self.counters
        problems: list[Problem] = []
        if not self.subscribed and running:
            since = f" for {now - self.down_since:.0f} s" if self.down_since else ""
            problems.append(Problem(50, f"{self.where} unreachable{since}: {self.down_reason}"))
        if len(self.outbox.queued) > MAX_OUTBOX // 2:
            queued = len(self.outbox.queued)
            problems.append(Problem(10, f"{queued} write-behind writes waiting for Redis"))
        w = self.writes.counters
        if w.dropped or w.errors:
            lost = w.dropped + w.errors
            problems.append(Problem(20, f"{lost} writes could not be stored in Redis"))
        if w.unconfirmed:
            problems.append(Problem(10, f"{w.unconfirmed} writes not confirmed by Redis replicas"))
        if c.junk_messages or c.refused_records:
            junk = c.junk_messages + c.refused_records
            problems.append(Problem(5, f"{junk} malformed messages or records"))
        if abs(self.server_offset) > 1.0:
            offset = self.server_offset
            problems.append(Problem(10, f"clock differs from Redis's by {offset:+.1f} s"))
        return problems

    # ================================================================= reads
    def reading(self, keys: Sequence[str]) -> None:
        """A read of ``keys`` starts (until :meth:`read_done`)."""
        self.take()
        self.hot.reading(keys)

    def read_token(self) -> int:
        """Taken as each read request goes out; :meth:`read_reply` wants it back."""
        return self.epoch

    def read_reply(
        self, keys: Sequence[str], records: Sequence[Entry | None], token: int, now: float
    ) -> ReadOutcome:
        """Merge what one read returned (see :mod:`._hottier`).

        What it fetched is kept only if the link is up and has not been lost since the
        request went out (``token``, from :meth:`read_token`, names the subscription
        it went out under; every resubscription starts a new one).
        """
        keep = token == self.epoch
        return self.hot.read_reply(keys, records, self.outbox.own, keep=keep, now=now)

    def read_done(self, keys: Sequence[str], now: float) -> None:
        """The read of ``keys`` is over (answered or not)."""
        self.hot.read_done(keys, now)

    def record_of_row(self, key: str, row: Sequence[Any]) -> Entry | None:
        """The entry of an HMGET ``s v x`` answer (None: absent or refused)."""
        stamp, blob, expires = row
        if stamp is None:
            return None
        try:
            return record_entry(
                key, stamp, blob, expires, max_value_bytes=self.engine.config.max_value_bytes
            )
        except InvalidRecord as exc:
            # Someone else's data under our prefix, or damage: never served.
            self.counters.refused_records += 1
            log.error("refusing the Redis record of %r: %s", key, exc)
            return None

    def live_record(self, key: str, record: Entry | None, now: float) -> bool:
        """Whether ``key`` is live: Redis's record, or this node's newer unwritten write."""
        self.take()
        own = self.outbox.own(key)
        if own is not None and (
            record is None or (own.ts, own.origin) > (record.ts, record.origin)
        ):
            record = own
        return (
            record is not None
            and record.value is not TOMBSTONE
            and not record.expired(now)
            and not self.covered(key, record.ts, record.origin)
        )

    def stat_view(
        self, key: str, row: Sequence[Any], now: float, *, count: bool = True
    ) -> tuple[int, str, bool] | None:
        """``(ts, origin, live)`` of a STAT answer (None: absent, or refused)."""
        if row[0] is None:
            return None
        try:
            ts, origin = parse_stamp(row[0])
            expires = parse_expiry(row[1])
        except InvalidRecord:
            self.counters.refused_records += count
            return None
        live = bool(row[2]) and (expires is None or expires > now)
        return ts, origin, live and not self.covered(key, ts, origin)

    def key_view(
        self, view: dict[str, tuple[int, str, bool]], pattern: str, now: float
    ) -> list[str]:
        """Sorted live keys of Redis's ``view``, or of this node's writes where newer."""
        self.take()
        match = self.patterns.matcher(pattern)
        for key, e in itertools.chain(self.replica.entries.items(), self.outbox.pending()):
            if match(key):
                seen = view.get(key)
                if seen is None or (e.ts, e.origin) > seen[:2]:
                    # A queued write this node's own pattern tombstone covers is gone
                    # (it will never be written), like a record in Redis it covers.
                    live = e.value is not TOMBSTONE and not e.expired(now)
                    view[key] = (e.ts, e.origin, live and not self.covered(key, e.ts, e.origin))
        return sorted(k for k, (_, _, live) in view.items() if live)

    def matching(self, pattern: str, page: Iterable[tuple[bytes, str]]) -> list[tuple[bytes, str]]:
        """The ``(record name, key)`` pairs of ``page`` whose key matches the glob."""
        match = self.patterns.matcher(pattern)
        return [(name, key) for name, key in page if match(key)]

    # ============================================================== channels
    def receive(self, channel: object, data: object, now: float) -> None:
        """Handle one message from a subscribed channel (junk is counted and dropped)."""
        try:
            if channel == self.layout.ack_channel:
                self.receive_acks(decode_acks(data))
            elif not sent_by(data, self._packed_node):  # our own: nothing to apply
                self.receive_invalidation(decode_message(data), now)
        except InvalidMessage as exc:
            self.counters.junk_messages += 1
            log.warning("dropped a malformed message on %r: %s", channel, exc)

    def receive_acks(self, msg: Acks) -> None:
        """Another instance acknowledged writes of this one."""
        self._acks_done(self.acks.acked(msg.sender, msg.ids))

    def receive_invalidation(self, msg: Message, now: float) -> None:
        """Apply an announcement from the invalidation channel (module doc)."""
        sender = msg.sender
        if sender == self.node:
            return
        if isinstance(msg, Leave):
            self._peer_event(self.instances.gone(sender, now, forget=True))
            return
        self._peer_event(self.instances.seen(sender))
        self.instances.beat(sender, now)
        if isinstance(msg, Join):
            return
        changes: list[Change] = []
        if isinstance(msg, PatternRecorded):
            applied = self._apply_pattern(msg, now, changes)
        else:
            applied = self._apply_writes(msg, now, changes)
        if changes:
            self._events.append(ChangesMade(changes))
        # Not all applied, not acknowledged: a write-through writer names this node.
        if msg.ack and applied:
            if not self._acks_out:
                self._events.append(AcksDue())
            self._acks_out.setdefault(sender, []).append(msg.ack)

    def _apply_pattern(self, msg: PatternRecorded, now: float, changes: list[Change]) -> bool:
        try:
            changes += self.replica.merge_pattern(msg.tomb, now)
        except ClockDriftError as exc:
            return self._refused(msg.sender, exc)
        self.patterns.recorded(msg.version)
        return True

    def _apply_writes(self, msg: Writes, now: float, changes: list[Change]) -> bool:
        applied = True
        for write in msg.writes:
            try:
                change = self.hot.apply(write, now)
            except ClockDriftError as exc:
                applied = self._refused(msg.sender, exc)
                continue
            if change is not None:
                changes.append(change)
        return applied

    def _refused(self, sender: str, exc: ClockDriftError) -> bool:
        self.counters.refused_drift += 1
        log.error("refused an invalidation from %s: %s", sender, exc)
        return False

    def take_acks(self) -> list[tuple[bytes, bytes]]:
        """``(channel, message)``: one acknowledgement per writer of everything handled."""
        acks, self._acks_out = self._acks_out, {}
        return [
            (self.layout.acks_to(writer), encode_acks(self.node, ids))
            for writer, ids in acks.items()
        ]

    # ================================================================ writes
    def take(self) -> None:
        """Move the engine's pending local writes to the outbox."""
        self.outbox.put(*self.engine.take_pending())

    def expect_acks(self) -> int:
        """A waiter for every live instance's ack of the next write; 0 if none is live."""
        return self.acks.expect(self.instances.live())

    def conditional_done(
        self, key: str, entry: Entry, now: float, *, replaced: tuple[int, str] | None = None
    ) -> None:
        """Redis applied a conditional write of this instance: hold it and report it.

        ``entry`` is the write (see :mod:`._conditional`); a touch carries no value and
        names the stamp it ``replaced``: a held copy of that write takes the touch's
        stamp and expiry, any other copy is dropped (the next read fetches it).
        """
        hot = self.hot
        if replaced is not None:
            local = self.replica.entries.get(key)
            if local is not None and local.held and (local.ts, local.origin) == replaced:
                hot.merge_quietly(
                    key, Entry(local.value, entry.ts, entry.origin, entry.expires), now
                )
                hot.settle(key, now)
            elif local is not None:
                hot.drop(key, local)
        else:
            hot.merge_quietly(key, entry, now)
            hot.settle(key, now)
        self._events.append(ChangesMade([Change(key, "set", self.node, entry.ts, False)]))

    # ============================================================== hot tier
    def hot_deadline(self) -> float | None:
        """When :meth:`expire_hot` has work next (None: no value is timed)."""
        return self.hot.deadline()

    def expire_hot(self, now: float) -> None:
        """Evict values held longer than ``local_ttl`` (events: :class:`Evicted`)."""
        self._events += [Evicted(key, "ttl") for key in self.hot.expire(now)]

    # ============================================================== patterns
    def covered(self, key: str, ts: int, origin: str) -> bool:
        """Whether a known pattern tombstone covers a write of ``key`` at ``(ts, origin)``."""
        return self.patterns.covered(key, ts, origin)

    def patterns_loaded(self, raw: Any, now: float) -> list[PatternTombstone]:
        """Merge the patterns hash (HGETALL); returns the tombstones not cleaned up yet."""
        loaded = parse_patterns(raw)
        for problem in loaded.refused:
            self.counters.refused_records += 1
            log.error("refusing a pattern tombstone in Redis: %s", problem)
        changes = self.merge_patterns(loaded.tombs, now)
        if changes:
            self._events.append(ChangesMade(changes))
        # HGETALL is atomic: every tombstone up to this version is merged now. (Not
        # max(): a Redis restarted empty counts again from 0.)
        self.patterns.version = loaded.version
        return loaded.unclean()

    def merge_patterns(self, tombs: Iterable[PatternTombstone], now: float) -> list[Change]:
        """Merge pattern tombstones into the hot tier; returns the keys they removed."""
        changes: list[Change] = []
        for tomb in tombs:
            try:
                changes += self.replica.merge_pattern(tomb, now)
            except ClockDriftError as exc:
                self.counters.refused_drift += 1
                log.error("refused the pattern tombstone %r: %s", tomb.pattern, exc)
        return changes

    def schedule_cleanup(self, tomb: PatternTombstone) -> None:
        """Delete ``tomb``'s records (event: :class:`CleanupDue`)."""
        self.patterns.schedule_cleanup(tomb)
        self._events.append(CleanupDue())

    def next_cleanup(self) -> PatternTombstone | None:
        """The next cleanup to run, taken out (None: none waits)."""
        return self.patterns.next_cleanup()

    # ============================================================= instances
    def heartbeat_answered(self, answer: Sequence[Any], now: float, ttl: float = 0.0) -> bool:
        """Apply a HEARTBEAT answer; True if a pattern announcement was missed (reload).

        Each live instance's heartbeat expiry, less ``ttl`` (every instance renews its
        own with the same one), says when it last beat: its ``last_heard``.
        """
        members, version, server_ms = answer[:3]
        expiries = answer[3] if len(answer) > 3 else [None] * len(members)
        self.server_offset = now - server_ms / 1000.0
        live: dict[str, float | None] = {}
        for member, expiry in zip(members, expiries, strict=False):
            with contextlib.suppress(UnicodeDecodeError, InvalidRecord, ValueError, TypeError):
                beat = None if expiry is None else (float(expiry) - server_ms) / 1000.0 - ttl
                live[check_node(member.decode())] = beat
        live.pop(self.node, None)
        for event in self.instances.listed(set(live), now):
            self._peer_event(event)
        for peer, beat in live.items():
            if beat is not None and ttl:
                self.instances.beat(peer, now + min(0.0, beat))
        return version is not None and int(version) != self.patterns.version

    def _peer_event(self, event: PeerEvent | None) -> None:
        if event is None:
            return
        if event.state == DEAD:  # nobody waits for an instance that stopped
            self._acks_done(self.acks.gone(event.peer))
        self._events.append(event)

    def _acks_done(self, ids: list[int]) -> None:
        self._events += [AckDone(i) for i in ids]

    # ===================================================== snapshot, restore
    def snapshot_replica(self, records: list[Write], now: float) -> Replica:
        """A replica of Redis's ``records`` and of this node's unwritten writes."""
        self.take()
        replica = self.replica
        newest = max([replica.clock.last_ts, *(e.ts for _, e in records)])
        copy = Replica(
            HybridClock(self.node, last_ts=newest), tombstone_grace=replica.tombstone_grace
        )
        merge_now = ts_seconds(newest)
        for tomb in replica.patterns.values():
            copy.merge_pattern(tomb, max(merge_now, now))
        for key, record in itertools.chain(records, self.outbox.pending()):
            copy.merge_entry(key, record, merge_now, observed=True)
        return copy

    def restored(self, applied: list[Write], now: float) -> list[Change]:
        """Restored writes Redis applied: held copies go stale; one change each."""
        changes: list[Change] = []
        for key, e in applied:
            self.hot.stale(key, e, now)
            changes.append(Change(key, "delete" if e.deleted else "set", e.origin, e.ts, True))
        return changes
