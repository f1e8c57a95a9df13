"""The replica as redis mode's hot tier: the invalidation merge and the read race. No IO.

Redis holds the cluster's data; each instance's :class:`~crdtcache.core.Replica` is
only its *hot tier*: values it read or wrote, bounded by ``local_max_size`` /
``max_memory`` (the cache's tier) and by ``local_ttl`` seconds per value (here). It
never keeps stubs or tombstones longer than a read in flight needs them: Redis has
them. Values leave through :meth:`Replica.evict` and keys through
:meth:`Replica.drop`, so the replica's observers (the cache's tier) see every one.

Theory of operation
-------------------
*Invalidation merge.* An announced write (a part of a writes message) for a key the
tier holds is merged by stamp: an older or equal stamp changes nothing; a newer one
replaces the local copy with the inline value, or else drops it (the next read
fetches from Redis). A key not held is left alone -- unless a read of it is in flight.

*The race* between a reader's fetch and a concurrent write, which both go through
Redis: the reader R sends HMGET and the writer's script W commits and publishes at
some point of Redis's serial order (a single server is linearizable; with replicas,
reads go to the primary like writes).

* HMGET before W: R gets the old stamp s1; W's announcement (s2 > s1) reaches R after
  that. If R merged the old value first, the announcement replaces it. If the
  announcement arrived first -- possible, pub/sub and replies travel on different
  connections -- R was fetching the key, so the announcement is kept as a stub with
  s2 (not dropped, as for keys not held), and the late reply with s1 loses to it; R
  reads again and gets s2 (:meth:`HotTier.read_reply` lists it in ``again``; after
  :data:`FETCH_ATTEMPTS` reads the caller gets a miss rather than an old value).
* HMGET after W: R reads s2 itself.

No interleaving leaves R holding s1 after W's announcement has been processed. With
write-through, the writer returns only after every live instance processed it, hence
"no instance serves a stale copy after a write returned"; with write-behind and
on-demand the window is the batch interval plus pub/sub delivery (``local_ttl``
bounds it even if announcements are lost).

*Listening.* Values are kept only while :attr:`HotTier.listening` (the subscription is
up): a read that started or ended while it was not is served once and not kept, and
:meth:`HotTier.drop_all` empties the tier when invalidations may have been missed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from crdtcache._errors import ClockDriftError
from crdtcache.core import DEFAULT_MAX_VALUE_BYTES, NOT_HELD, TOMBSTONE, Change, Entry, Replica
from crdtcache.core._format import InvalidRecord, blob_stored
from crdtcache.runtime.redis._messages import AnnouncedWrite

__all__ = ["FETCH_ATTEMPTS", "HotTier", "ReadOutcome"]

log = logging.getLogger(__name__)

#: Reads of one key retried when an invalidation overtook the reply (module doc).
FETCH_ATTEMPTS: Final = 3

Write: TypeAlias = tuple[str, Entry]


@dataclass(frozen=True, slots=True)
class ReadOutcome:
    """After a read reply: keys to read again, and values to serve once but not keep."""

    again: list[str]
    unkept: list[Write]


def _newer(a: Entry, b: Entry) -> bool:
    return (a.ts, a.origin) > (b.ts, b.origin)


class HotTier:
    """What reads, announcements and commits do to the hot tier (see module doc).

    ``covered(key, ts, origin)`` tells whether a known pattern tombstone covers a
    write; ``on_drift`` is told of every stamp refused for clock drift;
    ``max_value_bytes`` is this instance's limit for values announced inline.
    """

    def __init__(
        self,
        replica: Replica,
        *,
        local_ttl: float | None,
        covered: Callable[[str, int, str], bool],
        on_drift: Callable[[], None],
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    ) -> None:
        self.replica = replica
        self._max_value_bytes = max_value_bytes
        self.listening = False
        #: How many times the tier was emptied because invalidations may have been missed.
        self.drops = 0
        self._local_ttl = local_ttl
        self._covered = covered
        self._on_drift = on_drift
        # Reads in flight per key: an invalidation for such a key is kept as a stub.
        self._fetching: dict[str, int] = {}
        # local_ttl deadlines, in insertion (hence deadline) order.
        self._deadlines: dict[str, float] = {}

    # ----------------------------------------------------------------- reads
    def reading(self, keys: Sequence[str]) -> None:
        """A read of ``keys`` starts."""
        for key in keys:
            self._fetching[key] = self._fetching.get(key, 0) + 1

    def read_done(self, keys: Sequence[str], now: float) -> None:
        """The read of ``keys`` is over (answered or not)."""
        for key in keys:
            left = self._fetching[key] - 1
            if left:
                self._fetching[key] = left
            else:
                del self._fetching[key]
                self.settle(key, now)

    def read_reply(
        self,
        keys: Sequence[str],
        records: Sequence[Entry | None],
        own: Callable[[str], Entry | None],
        *,
        keep: bool,
        now: float,
    ) -> ReadOutcome:
        """Merge what a read returned, and ``own(key)``: this node's unwritten write."""
        again: list[str] = []
        unkept: list[Write] = []
        for key, record in zip(keys, records, strict=True):
            if record is not None:
                self.merge_quietly(key, record, now)
            mine = own(key)
            if mine is not None:  # this node's write, not yet (or just) in Redis
                self.merge_quietly(key, mine, now)
            local = self.replica.entries.get(key)
            if local is None:
                continue
            if local.value is NOT_HELD and (record is None or _newer(local, record)):
                again.append(key)  # an invalidation overtook the reply: read again
            elif local.held:
                if keep and self.listening:
                    self._time(key, now)
                else:
                    # Read while invalidations could be missed: serve it to this
                    # caller (who reads it right after), keep nothing.
                    unkept.append((key, local))
        return ReadOutcome(again, unkept)

    # --------------------------------------------------------- announcements
    def apply(self, write: AnnouncedWrite, now: float) -> Change | None:
        """Merge one announced write; the change to report, if any.

        Raises :class:`ClockDriftError` (nothing changed) for a stamp too far ahead.
        Every write is announced once, so each is reported once -- also when a read
        fetched it before its announcement arrived -- unless this node knows something
        newer (the write lost here) or a pattern tombstone covers it.
        """
        key, ts, origin, expires, deleted, blob = write
        replica = self.replica
        replica.clock.observe(ts, now)
        local = replica.entries.get(key)
        if local is not None or key in self._fetching:
            value: object = TOMBSTONE if deleted else NOT_HELD
            if blob is not None and local is not None and local.held:
                try:
                    # Update in place, no read needed.
                    value = blob_stored(blob, max_value_bytes=self._max_value_bytes)
                except InvalidRecord:
                    value = NOT_HELD
            replica.merge_entry(key, Entry(value, ts, origin, expires), now, observed=True)
            self.settle(key, now)
        if local is not None and (local.ts, local.origin) > (ts, origin):
            return None
        if self._covered(key, ts, origin):
            return None
        return Change(key, "delete" if deleted else "set", origin, ts, True)

    def committed(self, key: str, e: Entry, now: float) -> None:
        """Redis holds ``e``: make the tier agree (it may hold an older fetch)."""
        local = self.replica.entries.get(key)
        if local is None:
            return
        if local is not e and _newer(e, local):
            self.merge_quietly(key, e, now)
        self.settle(key, now)

    def stale(self, key: str, e: Entry, now: float) -> None:
        """Redis holds ``e`` (restored): a held older copy becomes a stub, then goes."""
        if key in self.replica.entries:
            self.merge_quietly(key, Entry(NOT_HELD, e.ts, e.origin, e.expires), now)
            self.settle(key, now)

    # ---------------------------------------------------------------- upkeep
    def merge_quietly(self, key: str, entry: Entry, now: float) -> None:
        """Merge without reporting: a fetch or a commit is not a new change."""
        try:
            self.replica.merge_entry(key, entry, now)
        except ClockDriftError as exc:
            self._on_drift()
            log.error("refused the Redis record of %r: %s", key, exc)

    def settle(self, key: str, now: float) -> None:
        """Keep only held values (and stubs a read in flight needs)."""
        e = self.replica.entries.get(key)
        if e is None:
            return
        if e.held:
            if self.listening:
                self._time(key, now)
            return
        if key not in self._fetching:
            self.replica.drop(key)  # a stub or tombstone: Redis has it, nothing to keep here

    def drop(self, key: str, e: Entry) -> None:
        """Drop ``e`` if it is still there (no event: not a change)."""
        replica = self.replica
        if replica.entries.get(key) is not e:
            return
        if e.held:
            replica.evict(key)  # through a stub: an eviction, not a delete, for the tier
        if key not in self._fetching:
            replica.drop(key)

    def drop_all(self) -> None:
        """Forget every local copy: invalidations may have been missed."""
        replica = self.replica
        dropped = 0
        for key, e in list(replica.entries.items()):
            if e.held:
                replica.evict(key)
                dropped += 1
            if key not in self._fetching:
                replica.drop(key)
        self._deadlines.clear()
        if dropped:
            self.drops += 1
            log.info("dropped %d values from the hot tier (pub/sub link lost)", dropped)

    # ------------------------------------------------------------- local_ttl
    def _time(self, key: str, now: float) -> None:
        if self._local_ttl is None:
            return
        deadlines = self._deadlines
        deadlines.pop(key, None)
        deadlines[key] = now + self._local_ttl

    def deadline(self) -> float | None:
        """When :meth:`expire` has work next (None: no value is timed)."""
        return next(iter(self._deadlines.values()), None)

    def expire(self, now: float) -> list[str]:
        """Evict values held longer than ``local_ttl``; returns their keys."""
        deadlines = self._deadlines
        replica = self.replica
        evicted: list[str] = []
        while deadlines:
            key, deadline = next(iter(deadlines.items()))
            if deadline > now:
                break
            del deadlines[key]
            e = replica.entries.get(key)
            if e is not None and e.held and key not in self._fetching:
                replica.evict(key)
                replica.drop(key)
                evicted.append(key)
        return evicted
