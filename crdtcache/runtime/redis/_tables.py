"""Redis mode's bookkeeping, no IO: outbox, instances, ack waiters, pattern tombstones.

Each is a small state machine that :class:`~crdtcache.runtime.redis._protocol.RedisProtocol`
drives and a property test can drive alone:

* :class:`Outbox` holds this node's writes until Redis has them: the newest per key
  (a later write of a key replaces a queued one), bounded by :data:`MAX_OUTBOX`, and
  cut into batches of at most ``MAX_BATCH`` writes and about :data:`MAX_BATCH_BYTES`.
  A batch being written is *in flight*; reads consult both (they are this node's
  writes). A batch that failed goes back unless something newer was queued meanwhile.
* :class:`InstanceTable`: the other instances, ``alive`` or ``dead``. Hearing from one
  (a message, a heartbeat listing) makes it alive; missing from a heartbeat listing
  makes it dead (listed :data:`DEAD_LISTED` seconds); a leave forgets it.
* :class:`AckWaiters`: for each write-through write, the instances that must still
  acknowledge it. A waiter completes exactly once: when the last of them acked or
  stopped, or when the link is lost (no ack can arrive then); the instances that
  did not ack stay readable until it is released.
* :class:`PatternBook`: which known pattern tombstone covers a write, the version of
  the patterns hash this instance holds every tombstone of, and the cleanups it owes.
  The version rises only in sequence (an announcement out of sequence means one was
  missed) and is set by a full load; a WRITE given a version Redis does not hold
  answers "recheck" for writes a newer tombstone might cover (see
  :mod:`._protocol`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Final

from crdtcache.core import ALIVE, DEAD, Entry, PatternTombstone, PeerEvent, Replica
from crdtcache.core._entry import compile_pattern
from crdtcache.core._hlc import ts_at
from crdtcache.core._values import stored_size
from crdtcache.runtime._protocol import PeerState
from crdtcache.runtime.redis._messages import MAX_BATCH

__all__ = [
    "DEAD_LISTED",
    "MAX_BATCH_BYTES",
    "MAX_OUTBOX",
    "AckWaiters",
    "InstanceTable",
    "Outbox",
    "PatternBook",
    "batches",
]

#: Write-behind writes accepted but not yet in Redis; a full queue refuses new writes.
MAX_OUTBOX: Final = 100_000
#: About the bytes of one batch: a batch holds Redis for about a microsecond per
#: write, so it stays short.
MAX_BATCH_BYTES: Final = 4 << 20
#: Seconds a dead instance stays listed in the statistics.
DEAD_LISTED: Final = 60.0

Write = tuple[str, Entry]


def batches(entries: Iterable[Write]) -> Iterator[list[Write]]:
    """``entries`` in batches of at most MAX_BATCH writes and about MAX_BATCH_BYTES."""
    batch: list[Write] = []
    size = 0
    for key, e in entries:
        if batch and (len(batch) == MAX_BATCH or size > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append((key, e))
        size += len(key) + stored_size(e.value)
    if batch:
        yield batch


class Outbox:
    """This node's writes not in Redis yet (see module doc)."""

    def __init__(self) -> None:
        #: Newest queued write per key, and pattern tombstones, in write order.
        self.queued: dict[str, Entry] = {}
        self.patterns: list[PatternTombstone] = []
        #: Writes in a batch being written right now.
        self.inflight: dict[str, Entry] = {}

    @property
    def full(self) -> bool:
        """Whether a new write must be refused (MAX_OUTBOX queued)."""
        return len(self.queued) >= MAX_OUTBOX

    def __bool__(self) -> bool:
        return bool(self.queued or self.patterns)

    def put(self, entries: Iterable[Write], patterns: list[PatternTombstone]) -> None:
        """Queue new local writes (a key's newer write replaces its queued one)."""
        queued = self.queued
        for key, entry in entries:
            queued[key] = entry
        if patterns:
            self.patterns.extend(patterns)

    def take_all(self) -> tuple[list[Write], list[PatternTombstone]]:
        """Everything queued (write-through writes it at once)."""
        entries, patterns = list(self.queued.items()), self.patterns
        self.queued, self.patterns = {}, []
        return entries, patterns

    def next_batch(self) -> tuple[list[Write], list[PatternTombstone]]:
        """The oldest batch of writes and every queued pattern tombstone, taken out."""
        batch = next(batches(self.queued.items()), [])
        for key, _ in batch:
            del self.queued[key]
        patterns, self.patterns = self.patterns, []
        return batch, patterns

    def own(self, key: str) -> Entry | None:
        """This node's newest write of ``key`` Redis may not show yet.

        A queued write is newer than one in flight: it was queued after that batch
        was taken (and a failed batch goes back only where nothing newer is queued).
        """
        return self.queued.get(key) or self.inflight.get(key)

    def pending(self) -> Iterator[Write]:
        """Every write Redis may not show yet (in flight first, then queued)."""
        return itertools.chain(self.inflight.items(), self.queued.items())

    def sending(self, entries: list[Write]) -> None:
        """``entries`` are in a batch on its way to Redis.

        A key already in flight with a newer write (batches overlap, see the batch
        writer) keeps that one: it is the write of the key Redis may not show yet.
        """
        inflight = self.inflight
        for key, e in entries:
            current = inflight.get(key)
            if current is None or (current.ts, current.origin) < (e.ts, e.origin):
                inflight[key] = e

    def sent(self, entries: list[Write]) -> None:
        """The batch holding ``entries`` was answered (or failed)."""
        inflight = self.inflight
        for key, e in entries:
            if inflight.get(key) is e:
                del inflight[key]

    def requeue(self, entries: list[Write], patterns: list[PatternTombstone]) -> None:
        """Queue again writes that did not reach Redis, unless a newer one is queued."""
        for key, e in entries:
            newer = self.queued.get(key)
            if newer is None or (newer.ts, newer.origin) < (e.ts, e.origin):
                self.queued[key] = e
        self.patterns[:0] = patterns


class InstanceTable:
    """The other instances of the cluster as this one sees them (see module doc)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.states: dict[str, str] = {}
        #: When each instance was last heard: its last heartbeat (from Redis's clock,
        #: in ours) or message, whichever is later.
        self.beats: dict[str, float] = {}
        #: How each instance describes itself (host and process), once read.
        self.described: dict[str, str] = {}
        self._dead_at: dict[str, float] = {}

    def live(self) -> set[str]:
        """The instances alive now."""
        return {p for p, state in self.states.items() if state == ALIVE}

    def peers(self) -> tuple[PeerState, ...]:
        """Every listed instance, by id, with its description and last heartbeat."""
        return tuple(
            PeerState(p, None, state, self.beats.get(p), self.described.get(p))
            for p, state in sorted(self.states.items())
        )

    def beat(self, peer: str, at: float) -> None:
        """``peer`` was heard at ``at`` (a heartbeat, or a message; if it is listed)."""
        if peer in self.states and at > self.beats.get(peer, at - 1):
            self.beats[peer] = at

    def describe(self, peer: str, description: str) -> None:
        """What ``peer`` says it is (if it is still listed)."""
        if peer in self.states:
            self.described[peer] = description

    def seen(self, peer: str) -> PeerEvent | None:
        """``peer`` was heard from; the event if it was not alive before."""
        previous = self.states.get(peer)
        if previous == ALIVE or peer == self.node:
            return None
        self.states[peer] = ALIVE
        self._dead_at.pop(peer, None)
        return PeerEvent(peer, ALIVE, previous)

    def gone(self, peer: str, now: float, *, forget: bool = False) -> PeerEvent | None:
        """``peer`` stopped: forgotten if it said goodbye, else listed dead for a while."""
        previous = self.states.get(peer)
        if previous != ALIVE:
            return None
        if forget:
            self._forget(peer)
        else:
            self.states[peer] = DEAD
            self._dead_at[peer] = now
        return PeerEvent(peer, DEAD, previous)

    def listed(self, members: set[str], now: float) -> list[PeerEvent]:
        """A heartbeat listed ``members`` as the live instances: the transitions."""
        events = [e for e in map(self.seen, sorted(members)) if e is not None]
        for peer, state in list(self.states.items()):
            if state == ALIVE and peer not in members:
                event = self.gone(peer, now)
                if event is not None:
                    events.append(event)
        return events

    def prune(self, now: float) -> None:
        """Forget instances dead for longer than :data:`DEAD_LISTED`."""
        for peer, died in list(self._dead_at.items()):
            if now - died > DEAD_LISTED:
                del self._dead_at[peer]
                self._forget(peer)

    def _forget(self, peer: str) -> None:
        self.states.pop(peer, None)
        self.beats.pop(peer, None)
        self.described.pop(peer, None)


class AckWaiters:
    """Who must still acknowledge each write-through write (see module doc)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._missing: dict[int, set[str]] = {}
        self._open: set[int] = set()

    def expect(self, instances: set[str]) -> int:
        """A waiter for ``instances``; its id, or 0 when there is nobody to wait for."""
        if not instances:
            return 0
        ack_id = next(self._ids)
        self._missing[ack_id] = set(instances)
        self._open.add(ack_id)
        return ack_id

    def missing(self, ack_id: int) -> frozenset[str]:
        """The instances that have not acknowledged ``ack_id`` (yet)."""
        return frozenset(self._missing.get(ack_id, ()))

    def release(self, ack_id: int) -> None:
        """Forget ``ack_id`` (its writer stopped waiting)."""
        self._missing.pop(ack_id, None)
        self._open.discard(ack_id)

    def acked(self, sender: str, ids: Iterable[int]) -> list[int]:
        """``sender`` acknowledged ``ids``; returns the waiters this completed."""
        done: list[int] = []
        for ack_id in ids:
            missing = self._missing.get(ack_id)
            if missing is not None:
                missing.discard(sender)
                if not missing:
                    done += self._complete([ack_id])
        return done

    def gone(self, peer: str) -> list[int]:
        """``peer`` stopped: nobody waits for it; returns the waiters this completed."""
        emptied = []
        for ack_id, missing in self._missing.items():
            missing.discard(peer)
            if not missing:
                emptied.append(ack_id)
        return self._complete(emptied)

    def complete_all(self) -> list[int]:
        """No acknowledgement can arrive (link lost): every open waiter completes."""
        return self._complete(list(self._open))

    def _complete(self, ids: list[int]) -> list[int]:
        done = [i for i in ids if i in self._open]
        self._open.difference_update(done)
        return done


class PatternBook:
    """The pattern tombstones of ``replica`` as redis mode uses them (see module doc)."""

    def __init__(self, replica: Replica) -> None:
        self._replica = replica
        #: The patterns' version this instance holds every tombstone of.
        self.version = 0
        # Cleanups to run, the newest tombstone per glob.
        self._cleanups: dict[str, PatternTombstone] = {}
        self._matchers: dict[str, Callable[[str], object]] = {}

    def matcher(self, pattern: str) -> Callable[[str], object]:
        """The compiled glob (cached: a glob is matched against many keys)."""
        match = self._matchers.get(pattern)
        if match is None:
            match = self._matchers[pattern] = compile_pattern(pattern).match
        return match

    def covered(self, key: str, ts: int, origin: str) -> bool:
        """Whether a known tombstone covers a write of ``key`` at ``(ts, origin)``."""
        for tomb in self._replica.patterns.values():
            if (ts, origin) <= (tomb.ts, tomb.origin) and self.matcher(tomb.pattern)(key):
                return True
        return False

    def recorded(self, version: int) -> None:
        """A tombstone of ``version`` is held here: the next in sequence raises ours.

        Out of sequence, one in between is missing here: ours stays, and the next
        WRITE of an old enough stamp makes this instance reload them all.
        """
        if version == self.version + 1:
            self.version = version

    def schedule_cleanup(self, tomb: PatternTombstone) -> None:
        """Owe the deletion of ``tomb``'s records (a newer tombstone of a glob replaces it)."""
        current = self._cleanups.get(tomb.pattern)
        if current is None or (current.ts, current.origin) < (tomb.ts, tomb.origin):
            self._cleanups[tomb.pattern] = tomb

    def next_cleanup(self) -> PatternTombstone | None:
        """The next cleanup to run, taken out (None: none is owed)."""
        if not self._cleanups:
            return None
        return self._cleanups.pop(next(iter(self._cleanups)))

    @staticmethod
    def stalled(
        unclean: Iterable[PatternTombstone], now: float, stall: float
    ) -> list[PatternTombstone]:
        """The unclean tombstones over ``stall`` seconds old (their instance may be dead)."""
        horizon = ts_at(now - stall)
        return [t for t in unclean if t.ts < horizon]
