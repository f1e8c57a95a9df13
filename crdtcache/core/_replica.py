"""The replica: an LWW-register map with pattern tombstones, per-origin marks and GC.

Theory of operation
-------------------
State is ``entries`` (key -> :class:`Entry`), ``patterns`` (glob -> newest
:class:`PatternTombstone`), ``marks`` and ``collected``. Merging is a join: per key
the winner of the resolver (LWW by HLC stamp by default), per pattern the newest
stamp, per origin the greatest mark; so merge is commutative, associative and
idempotent, and replicas that have merged the same writes in any order are equal.

*Lineages: touches and counters.* An :class:`~crdtcache.core._entry.Amended` entry
carries, besides its own stamp, the stamp of the write its value descends from (its
lineage: see :func:`~crdtcache.core._entry.lineage`). Last-writer-wins orders entries
by lineage first, then by stamp, so a ``touch`` (same value, new expiry, new stamp)
replaces only copies of the same value, never a newer ``set`` made meanwhile, and a
pattern tombstone covers an entry by its lineage. Two copies of one lineage of which
one is a counter (:mod:`~crdtcache.core._counter`) are *joined*, not chosen between:
per node the greater totals, the later expiry. A join that equals neither copy is
*minted*: stored under a fresh stamp of this node, like a local write, and handed to
:attr:`Replica.on_mint` so that it is sent on (marks promise that a node holds every
write up to them or something that beats it; the minted entry is that something, and
only a stamp of its own gets it to peers whose marks cover both copies' stamps).

*Pattern tombstones.* An entry covered by a pattern tombstone (key matches, stamp at
or before the tombstone's) is removed on sight and refused on arrival, so a read never
has to consult patterns and the map holds only uncovered entries. With a custom
resolver, a pattern tombstone is a delete of every key it matches, stamped like it:
"covered" means the resolver ranks that delete above the entry (under last-writer-wins
the same thing), so the outcome does not depend on what arrived first. Among
themselves, tombstones of one pattern are last-writer-wins.

*Marks.* ``marks[o] = S`` promises: for every write by origin ``o`` stamped at or
before ``S``, this replica holds that write or something that beats it (or has
collected what beat it). A local write raises the node's own mark; other marks rise
only by a complete exchange (:meth:`changes_since` on the peer, then
:meth:`advance_marks`) or by a gap-free stream from the origin. A peer that sends
its marks therefore needs exactly the entries stamped above them: catch-up costs
what differs, not the size of the map. Finding those entries costs what differs too:
a change log (:mod:`~crdtcache.core._changelog`), told of every change to the map
beside the observers, lists each origin's keys by stamp.

*Collection and the resurrection rule.* Tombstones (and values past their expiry,
which first shrink to tombstones) are kept for ``tombstone_grace`` seconds after
their stamp, then dropped; ``collected[o]`` remembers the greatest stamp dropped per
origin. A peer whose mark for ``o`` is below it may hold a value that a collected
tombstone deleted, so it is sent the full state instead of a delta, and drops every
entry the full state does not list but the sender's marks cover (:meth:`forget_unlisted`).
A *write* delayed in flight longer than the grace period can still reappear, as in
Cassandra's ``gc_grace_seconds``: keep the grace period well above the longest
partition you expect a node to come back from with its state.

*Shedding and the floor.* A node short of room may forget a stub or a tombstone
written by another node, stamp and all (:meth:`shed`; its own writes are never shed,
so every write is kept by its origin until superseded or collected). Forgetting a
stamp would let an older write of that key win again here, so the replica keeps one
number, ``floor``: the greatest stamp it ever shed. A remote write for a key it does
not hold, stamped at or below the floor, is refused (counted in ``refused_floor``):
such a key reads as absent, *at worst a miss*, never as an older version. Writes above
the floor are taken as usual, so the floor costs only writes older than what was shed.

Shedding also breaks the promise of marks for the keys shed, and the promise others
take from this node's answers. So a node with a floor answers anti-entropy
(:meth:`answer_terms`) with its marks only for origins the requester already covers up
to the floor (above it this node is complete: nothing above the floor was shed or
refused), and never with a full state (whose forget rule would make the requester
drop what this node merely shed): a requester behind the floor gets the entries, and
raises its marks from a peer that shed nothing, or from the stream of their origin.
A restart forgets the floor (it is not stored): a key shed before may then take an
older write from a peer that lags behind.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, Protocol

from crdtcache._errors import CacheError, ClockDriftError
from crdtcache.core._changelog import ChangeLog, ChangeLogStatistics, MapScan
from crdtcache.core._counter import Counter
from crdtcache.core._entry import (
    NO_STAMP,
    NOT_HELD,
    TOMBSTONE,
    Amended,
    Change,
    Entry,
    PatternTombstone,
    compile_pattern,
    lineage,
    stub_of,
    with_value,
)
from crdtcache.core._hlc import HybridClock, Stamp, ts_at, ts_ms
from crdtcache.core._patterns import (
    MAX_PATTERN_TOMBSTONES,
    PatternIndex,
    PatternLimitError,
    literal_prefix,
    union_of,
)
from crdtcache.core._resolver import Resolver, Version
from crdtcache.core._values import decode_value

__all__ = [
    "TOMBSTONE_GRACE",
    "MintListener",
    "Replica",
    "ReplicaObserver",
    "collect_due_ms",
    "collection_horizon",
]

log = logging.getLogger(__name__)

#: Default seconds a tombstone is kept after its stamp before it may be collected.
TOMBSTONE_GRACE: Final = 3600.0

_Matcher = re.Pattern[str]


def collection_horizon(now: float, grace: float) -> int:
    """The collection rule: tombstones (and expired values) stamped at or below the
    returned ``ts`` may be dropped at ``now``; so may pattern tombstones.

    The one definition shared by the replica, the SQLite store and Redis mode.
    """
    return ts_at(now - grace)


def collect_due_ms(ts: int, grace: float) -> int:
    """Wall time (ms) from which a tombstone stamped ``ts`` may be collected."""
    return ts_ms(ts) + int(grace * 1000)


class ReplicaObserver(Protocol):
    """Told of every change to a replica's entry map, whatever caused it.

    A local write, a merge, a fetch filling a stub, a pattern tombstone, a full
    resync, an eviction or collection: each goes through :meth:`Replica._put` or
    :meth:`Replica._pop`, which call the observers in order. The local tier keeps its
    byte and count accounting exact this way, and persistence learns which keys to
    write. Observers must not mutate the replica (they run inside its operations).
    """

    def replacing(self, key: str, old: Entry | None, new: Entry) -> Entry:
        """``new`` is about to replace ``old``; return the entry to store instead.

        Returning a ``NOT_HELD`` stub of ``new``'s stamp keeps the stamp (the replica
        converges on it) without holding the value: how the schema gate refuses a
        remote value this node must never serve.
        """
        ...

    def removed(self, key: str, old: Entry) -> None:
        """``old`` left the map (dropped by a pattern, a resync, collection, eviction)."""
        ...


#: Told of every entry the replica minted by joining two copies of a counter.
MintListener = Callable[[str, Entry], None]


def _beats(ts: int, origin: str, other: Entry) -> bool:
    return ts > other.ts or (ts == other.ts and origin > other.origin)


def _expiry_stamp(e: Entry) -> tuple[int, str]:
    """The stamp of the write that set ``e``'s expiry (a counter keeps its own)."""
    value = e.value
    if type(value) is Counter:
        return value.xts, value.xorigin
    return e.ts, e.origin


def _join(a: Entry, b: Entry) -> tuple[Counter, float | None] | None:
    """Two held copies of one lineage joined, if either is a counter (module doc).

    The counter holds every node's greater totals; the expiry is the one set later
    (of two set by one write, the later instant: the join must not depend on order).
    None when the copies are not joined but chosen between (no counter, or a stub).
    """
    av, bv = a.value, b.value
    if type(av) is not Counter and type(bv) is not Counter:
        return None
    if av is TOMBSTONE or av is NOT_HELD or bv is TOMBSTONE or bv is NOT_HELD:
        return None
    ax, bx = _expiry_stamp(a), _expiry_stamp(b)
    if ax > bx:
        expires = a.expires
    elif bx > ax:
        expires = b.expires
    else:
        expires = None if a.expires is None or b.expires is None else max(a.expires, b.expires)
    if type(av) is Counter and type(bv) is Counter:
        return av.join(bv), expires
    counter = av if type(av) is Counter else bv
    assert type(counter) is Counter
    return counter.with_expiry_stamp(*max(ax, bx)), expires


def _lineage_covered(e: Amended, tomb: PatternTombstone) -> bool:
    """Whether ``tomb`` covers an amended entry: by its lineage (module doc)."""
    if e.born:  # born on that very stamp (or after): ranks just above it
        return (e.vts, e.vorigin) < (tomb.ts, tomb.origin)
    return (e.vts, e.vorigin) <= (tomb.ts, tomb.origin)


def _covers(tomb: PatternTombstone, e: Entry) -> bool:
    """Whether ``tomb`` covers ``e``: by its lineage for an amended entry."""
    if isinstance(e, Amended):
        return _lineage_covered(e, tomb)
    return e.ts < tomb.ts or (e.ts == tomb.ts and e.origin <= tomb.origin)


def _value_stamp(e: Entry) -> int:
    """The ``ts`` a pattern tombstone is compared with (an amended entry's lineage)."""
    return e.vts if isinstance(e, Amended) else e.ts


class Replica:
    """One node's copy of the map. Pure: every method takes ``now`` from the caller.

    ``change_log=False`` for a replica no peer will ask what it lacks (one without
    peers): :meth:`changes_since` then scans the map instead of keeping a log.
    """

    def __init__(
        self,
        clock: HybridClock,
        *,
        resolver: Resolver | None = None,
        tombstone_grace: float = TOMBSTONE_GRACE,
        max_patterns: int = MAX_PATTERN_TOMBSTONES,
        change_log: bool = True,
    ) -> None:
        if tombstone_grace <= 0:
            raise ValueError("tombstone_grace must be positive")
        self.clock = clock
        self.node = clock.node
        self.resolver = resolver
        self.tombstone_grace = tombstone_grace
        self.entries: dict[str, Entry] = {}
        self.patterns: dict[str, PatternTombstone] = {}
        self.marks: dict[str, int] = {}
        self.collected: dict[str, int] = {}
        #: Per origin, the greatest stamp ever merged from it (an upper bound of what
        #: this replica holds from it): lets :meth:`changes_since` skip its scan.
        self.high: dict[str, int] = {}
        # Keys whose entry will need collecting, bucketed by the whole second when it
        # falls due (expiry, or stamp + grace for a tombstone): :meth:`collect` walks
        # only due buckets. A key rewritten within one bucket is listed once, so this
        # costs about one pointer per mortal entry (a dict or set would cost ~40 B).
        self._due: dict[int, list[str]] = {}
        # Per origin, the keys of ``entries`` by stamp: :meth:`changes_since` finds what
        # a peer lacks at the cost of what changed, not of the map. (Not kept where no
        # peer will ask: ``change_log=False``.)
        self._log: ChangeLog | MapScan = (
            ChangeLog(self.entries) if change_log else MapScan(self.entries)
        )
        # The pattern tombstones (``patterns``), indexed by literal prefix.
        self._pattern_index = PatternIndex(self.patterns, max_patterns)
        #: Remote entries refused for clock drift.
        self.refused_drift = 0
        #: The greatest stamp shed for lack of room (-1: none); see the module doc.
        self.floor = -1
        #: Entries shed, and remote writes refused for being at or below the floor.
        self.shed_entries = 0
        self.refused_floor = 0
        #: Told of every change to ``entries`` (see :class:`ReplicaObserver`).
        self.observers: tuple[ReplicaObserver, ...] = ()
        #: Told of every entry minted by a join (module doc): the engine sends it on.
        self.on_mint: MintListener | None = None
        #: Called with the key of every remote entry before it is merged, while set: a
        #: store still loading puts the key's stored row in first, so that an older
        #: remote write loses to it at once (``crdtcache.store._loading``).
        self.before_merge: Callable[[str], None] | None = None

    def observe(self, observer: ReplicaObserver) -> None:
        """Add ``observer``; it sees every later change to the entry map."""
        self.observers = (*self.observers, observer)

    # ------------------------------------------------------------ mutation
    # The only two places that change ``entries``: observers see everything.
    def _put(
        self, key: str, entry: Entry, previous: Entry | None, *, relist: bool = False
    ) -> Entry:
        # Computed before any observer is told: nothing after the first one can fail.
        # (An observer may store a NOT_HELD stub instead, with the same due second.)
        due = self._due_second(entry)
        for observer in self.observers:
            entry = observer.replacing(key, previous, entry)
        if (
            due is not None
            and not relist
            and previous is not None
            and self._due_second(previous) == due
        ):
            due = None  # already listed under that second
        self.entries[key] = entry
        self._log.replaced(key, previous, entry)  # after: a split reads the map
        if due is not None:
            self._list(key, due)
        return entry

    def _pop(self, key: str) -> Entry:
        old = self.entries.pop(key)
        self._log.removed(key, old)
        for observer in self.observers:
            observer.removed(key, old)
        return old

    # ----------------------------------------------------------------- reading
    def lookup(self, key: str, now: float) -> Entry | None:
        """The live entry for ``key`` (not deleted, not expired), or None.

        Its value may be ``NOT_HELD``: the stamp is known but the value must be fetched.
        """
        e = self.entries.get(key)
        if e is None or e.value is TOMBSTONE or (e.expires is not None and e.expires <= now):
            return None
        return e

    def live_keys(self, now: float) -> Iterator[str]:
        """Keys with a live (unexpired, undeleted) entry, held or not."""
        for key, e in self.entries.items():
            if e.value is not TOMBSTONE and (e.expires is None or e.expires > now):
                yield key

    def visible(self, now: float) -> dict[str, tuple[Any, Stamp, float | None]]:
        """The state a reader sees at ``now``: key -> (decoded value, stamp, expiry)."""
        return {
            key: (
                decode_value(e.value) if e.value is not NOT_HELD else NOT_HELD,
                e.stamp,
                e.expires,
            )
            for key, e in self.entries.items()
            if e.value is not TOMBSTONE and (e.expires is None or e.expires > now)
        }

    # ------------------------------------------------------------ local writes
    def _write(self, key: str, value: object, now: float, expires: float | None) -> Entry:
        ts = self.clock.tick(now)
        entry = Entry(value, ts, self.node, expires)
        if self.resolver is not None:
            local = self.entries.get(key)
            if local is not None:
                entry = self._resolve(key, local, entry)
            elif (tomb := self._pattern_beats(key, entry)) is not None:
                # The resolver ranks a matching pattern tombstone above this write:
                # the key stays deleted, as under that tombstone's delete.
                entry = Entry(TOMBSTONE, tomb.ts, tomb.origin)
        entry = self._put(key, entry, self.entries.get(key))
        self.marks[self.node] = ts
        self.high[self.node] = ts
        return entry

    def _due_second(self, entry: Entry) -> int | None:
        if entry.value is TOMBSTONE:
            return math.ceil(collect_due_ms(entry.ts, self.tombstone_grace) / 1000.0)
        if entry.expires is not None:
            return math.ceil(entry.expires)
        return None

    def _list(self, key: str, due: int) -> None:
        bucket = self._due.get(due)
        if bucket is None:
            self._due[due] = [key]
        else:
            bucket.append(key)

    def set(self, key: str, stored: object, now: float, expires: float | None = None) -> Entry:
        """Write a stored value (see :func:`encode_value`) with an optional absolute expiry."""
        return self._write(key, stored, now, expires)

    def delete(self, key: str, now: float) -> Entry:
        """Delete ``key`` with a tombstone (replicated like a write)."""
        return self._write(key, TOMBSTONE, now, None)

    def touch(self, key: str, now: float, expires: float | None) -> Entry | None:
        """Give the live value of ``key`` a new absolute expiry (None: none); None if absent.

        Written as an :class:`~crdtcache.core._entry.Amended` entry of the value's
        lineage: it never replaces a newer write made elsewhere (module doc). The value
        itself is not rewritten, and need not be held here (a stub is touched too).
        """
        e = self.lookup(key, now)
        if e is None:
            return None
        ts = self.clock.tick(now)
        value = e.value
        if type(value) is Counter:
            value = value.with_expiry_stamp(ts, self.node)
        entry = self._put(key, Amended(value, ts, self.node, expires, *lineage(e)), e)
        self.marks[self.node] = ts
        self.high[self.node] = ts
        return entry

    def incr(
        self,
        key: str,
        delta: int,
        now: float,
        expires: float | None,
        as_int: Callable[[object], int],
    ) -> Entry | None:
        """Add ``delta`` to the counter of ``key``; the new entry, None if not held here.

        A live counter gets this node's ``delta``; a live value becomes a counter
        starting at ``as_int(stored value)`` (which raises for a value that is not an
        int); both keep their expiry. Where no value is live, a counter of ``delta``
        starts, expiring at ``expires``, born on whatever was there (module doc of
        :mod:`~crdtcache.core._entry`). Returns None, changing nothing, when the live
        value is a stub: the caller fetches it first. Raises
        :class:`~crdtcache.core._counter.CounterError` for a counter that cannot take
        ``delta`` (nothing changes either).
        """
        e = self.entries.get(key)
        start: Counter | None = None
        if e is not None and e.value is not TOMBSTONE and not e.expired(now):
            if e.value is NOT_HELD:
                return None
            start = e.value if type(e.value) is Counter else None
            if start is None:
                start = Counter.started(as_int(e.value), e.ts, e.origin)
            vts, vorigin, born = lineage(e)
            expires = e.expires
        else:
            dead = (e.ts, e.origin) if e is not None else NO_STAMP
            vts, vorigin = max(dead, self._newest_tomb(key))
            born = True
        ts = self.clock.tick(now)
        if start is None:
            start = Counter.started(0, ts, self.node)
        counter = start.add(self.node, delta)
        entry = self._put(key, Amended(counter, ts, self.node, expires, vts, vorigin, born), e)
        self.marks[self.node] = ts
        self.high[self.node] = ts
        return entry

    def invalidate_pattern(self, pattern: str, now: float) -> tuple[PatternTombstone, list[Change]]:
        """Remove every key matching ``pattern``, as one replicated pattern tombstone."""
        stamp = self.clock.now(now)
        tomb = PatternTombstone(pattern, stamp.ts, self.node)
        changes = self._apply_pattern(tomb, remote=False)  # may raise: nothing changed
        self.marks[self.node] = stamp.ts
        return tomb, changes

    # ----------------------------------------------------------------- merging
    def _resolve(self, key: str, local: Entry, remote: Entry) -> Entry:
        assert self.resolver is not None
        lv = Version(key, _view(local), local.stamp, local.expires, local.value is TOMBSTONE)
        rv = Version(key, _view(remote), remote.stamp, remote.expires, remote.value is TOMBSTONE)
        winner = self.resolver(lv, rv)
        if winner is rv:
            return remote
        if winner is lv:
            return local
        raise TypeError("conflict_resolver must return one of its two arguments")

    def _pattern_beats(self, key: str, entry: Entry) -> PatternTombstone | None:
        """With a resolver: a pattern tombstone matching ``key`` that it ranks above ``entry``."""
        for matcher, tomb in self._pattern_index.candidates(key):
            if matcher.match(key):
                deletion = Entry(TOMBSTONE, tomb.ts, tomb.origin)
                if self._resolve(key, entry, deletion) is deletion:
                    return tomb
        return None

    def _covered(self, key: str, ts: int, origin: str) -> bool:
        index = self._pattern_index
        if ts > index.max_ts:
            return False
        for matcher, tomb in index.candidates(key):
            if (ts < tomb.ts or (ts == tomb.ts and origin <= tomb.origin)) and matcher.match(key):
                return True
        return False

    def _entry_covered(self, key: str, e: Entry) -> bool:
        """Whether a pattern tombstone covers ``e`` (an amended entry: by its lineage)."""
        if type(e) is not Amended:
            return self._covered(key, e.ts, e.origin)
        if e.vts > self._pattern_index.max_ts:
            return False
        return any(
            _lineage_covered(e, tomb) and matcher.match(key)
            for matcher, tomb in self._pattern_index.candidates(key)
        )

    def _newest_tomb(self, key: str) -> tuple[int, str]:
        """The stamp of the newest pattern tombstone matching ``key`` (``NO_STAMP``: none)."""
        newest = NO_STAMP
        for matcher, tomb in self._pattern_index.candidates(key):
            if (tomb.ts, tomb.origin) > newest and matcher.match(key):
                newest = (tomb.ts, tomb.origin)
        return newest

    def merge_entry(
        self, key: str, entry: Entry, now: float, *, observed: bool = False
    ) -> Change | None:
        """Merge one remote entry; return the visible change, or None if it lost.

        Raises :class:`ClockDriftError` (nothing changed) if its stamp is too far ahead.
        ``observed=True`` says the caller already passed a stamp at least as great
        to ``clock.observe`` (one drift check per message instead of per entry).
        """
        if self.before_merge is not None:
            self.before_merge(key)
        if not self._admissible(key, entry, now, observed):
            return None
        local = self.entries.get(key)
        if local is not None:
            if local.ts == entry.ts and local.origin == entry.origin:
                # The same write: fill in a value this node did not hold, else keep ours.
                if local.value is NOT_HELD and entry.value is not NOT_HELD:
                    self._put(key, entry, local)
                return None
            if self.resolver is None:
                if type(local) is not Entry or type(entry) is not Entry:  # amended
                    return self._merge_lineages(key, local, entry, now)
                if not _beats(entry.ts, entry.origin, local):
                    return None
            elif self._resolve(key, local, entry) is local:
                return None
        self._put(key, entry, local)
        return Change(
            key, "delete" if entry.value is TOMBSTONE else "set", entry.origin, entry.ts, True
        )

    def _admissible(self, key: str, entry: Entry, now: float, observed: bool) -> bool:
        """Whether a remote entry may be compared with ours at all: not below the floor,
        not covered by a pattern tombstone. Raises :class:`ClockDriftError` for a stamp
        too far ahead (see :meth:`merge_entry`)."""
        if not observed:
            try:
                self.clock.observe(entry.ts, now)
            except ClockDriftError:
                self.refused_drift += 1
                raise
        if entry.ts > self.high.get(entry.origin, -1):
            self.high[entry.origin] = entry.ts  # an upper bound: raising it is always safe
        if entry.ts <= self.floor and key not in self.entries:
            # This key may have been shed with a newer stamp: never let an older win.
            self.refused_floor += 1
            return False
        # Everything that can fail (a resolver is user code) runs before the map changes.
        if self.resolver is None:
            return not self._entry_covered(key, entry)
        return not (self.patterns and self._pattern_beats(key, entry) is not None)

    def _merge_lineages(self, key: str, local: Entry, entry: Entry, now: float) -> Change | None:
        """Last-writer-wins where either copy is amended: lineage first (module doc)."""
        mine, theirs = lineage(local), lineage(entry)
        if mine != theirs:
            if theirs < mine:
                return None
            self._put(key, entry, local)
            return Change(key, "delete" if entry.deleted else "set", entry.origin, entry.ts, True)
        joined = _join(local, entry)
        newer = (entry.ts, entry.origin) > (local.ts, local.origin)
        if joined is not None:
            counter, expires = joined
            if local.value == counter and local.expires == expires:
                if not (newer and entry.value == counter and entry.expires == expires):
                    return None  # ours holds everything theirs does
            elif not (entry.value == counter and entry.expires == expires):
                return self._mint(key, local, counter, expires, now)
        elif not newer:
            return None
        self._put(key, entry, local)
        return Change(key, "delete" if entry.deleted else "set", entry.origin, entry.ts, True)

    def _mint(
        self, key: str, local: Entry, counter: Counter, expires: float | None, now: float
    ) -> Change:
        """Store a join of ``local``'s lineage under a fresh stamp of this node, and tell
        :attr:`on_mint`."""
        ts = self.clock.tick(now)
        minted = Amended(counter, ts, self.node, expires, *lineage(local))
        minted_entry = self._put(key, minted, local)
        self.marks[self.node] = ts
        self.high[self.node] = ts
        if self.on_mint is not None:
            self.on_mint(key, minted_entry)
        return Change(key, "set", self.node, ts, True)

    def merge_pattern(self, tomb: PatternTombstone, now: float) -> list[Change]:
        """Merge a remote pattern tombstone; return the keys it removed.

        Raises :class:`ClockDriftError` or :class:`PatternLimitError` (nothing changed).
        """
        try:
            self.clock.observe(tomb.ts, now)
        except ClockDriftError:
            self.refused_drift += 1
            raise
        return self._apply_pattern(tomb, remote=True)

    def merge_patterns(
        self, tombs: Sequence[PatternTombstone], now: float
    ) -> tuple[list[Change], list[PatternTombstone], list[CacheError]]:
        """Merge the remote pattern tombstones of one message, with one scan of the map.

        The outcome is that of :meth:`merge_pattern` on each in turn, but the map is
        scanned once for all of them (through the union of their globs), not once each.
        Returns the keys removed, the tombstones that were new here, and one error per
        tombstone refused (:class:`ClockDriftError`, :class:`PatternLimitError`; the
        others still apply).
        """
        refused: list[CacheError] = []
        if self.resolver is not None:  # a resolver decides key by key: one at a time
            changes: list[Change] = []
            fresh: list[PatternTombstone] = []
            for tomb in tombs:
                try:
                    changes += self.merge_pattern(tomb, now)
                except (ClockDriftError, PatternLimitError) as exc:
                    refused.append(exc)
                    continue
                if self.patterns.get(tomb.pattern) is tomb:
                    fresh.append(tomb)
            return changes, fresh, refused
        newest: dict[str, PatternTombstone] = {}
        for tomb in tombs:
            try:
                self.clock.observe(tomb.ts, now)
            except ClockDriftError as exc:
                self.refused_drift += 1
                refused.append(exc)
                continue
            held = newest.get(tomb.pattern) or self.patterns.get(tomb.pattern)
            if held is None or (held.ts, held.origin) < (tomb.ts, tomb.origin):
                newest[tomb.pattern] = tomb
        index = self._pattern_index
        accepted: list[PatternTombstone] = []
        new = new_unanchored = 0
        for pattern, tomb in newest.items():
            if not index.admits(pattern, new, new_unanchored):
                refused.append(index.refusal(pattern, new, new_unanchored))
                continue
            accepted.append(tomb)
            if pattern not in self.patterns:
                new += 1
                new_unanchored += not literal_prefix(pattern)
        return self._remove_covered(accepted, remote=True), accepted, refused

    def _apply_pattern(self, tomb: PatternTombstone, *, remote: bool) -> list[Change]:
        current = self.patterns.get(tomb.pattern)
        if current is not None and (current.ts, current.origin) >= (tomb.ts, tomb.origin):
            return []
        index = self._pattern_index
        if not index.admits(tomb.pattern):
            raise index.refusal(tomb.pattern)  # before any work: nothing changed
        if self.resolver is None:
            return self._remove_covered([tomb], remote=remote)
        matcher = compile_pattern(tomb.pattern)
        deletion = Entry(TOMBSTONE, tomb.ts, tomb.origin)
        # The resolver (user code) may raise: every decision is taken before any change.
        gone = [
            (key, tomb)
            for key, e in self.entries.items()
            if matcher.match(key) and self._resolve(key, e, deletion) is deletion
        ]
        return self._hold_patterns([(tomb, matcher)], gone, remote=remote)

    def _remove_covered(self, tombs: list[PatternTombstone], *, remote: bool) -> list[Change]:
        """Hold ``tombs`` (each admitted, newer than its glob's) and drop what they cover.

        One pass of the union of their globs over the map finds the candidates; each is
        given to the first tombstone (in order) that covers it.
        """
        if not tombs:
            return []
        compiled = [(tomb, compile_pattern(tomb.pattern)) for tomb in tombs]
        entries = self.entries
        newest = max(t.ts for t in tombs)
        union = union_of(m for _, m in compiled)
        candidates = [k for k in filter(union.match, entries) if _value_stamp(entries[k]) <= newest]
        gone: list[tuple[str, PatternTombstone]] = []
        for tomb, matcher in compiled:
            if not candidates:
                break
            rest: list[str] = []
            for key in candidates:
                e = entries[key]
                if _covers(tomb, e) and matcher.match(key):
                    gone.append((key, tomb))
                else:
                    rest.append(key)
            candidates = rest
        return self._hold_patterns(compiled, gone, remote=remote)

    def _hold_patterns(
        self,
        compiled: list[tuple[PatternTombstone, re.Pattern[str]]],
        gone: list[tuple[str, PatternTombstone]],
        *,
        remote: bool,
    ) -> list[Change]:
        """File the tombstones and drop the keys they cover (decided by the caller)."""
        for tomb, matcher in compiled:
            self._pattern_index.put(tomb, matcher)  # admitted already: cannot raise
            if tomb.ts > self.high.get(tomb.origin, -1):
                self.high[tomb.origin] = tomb.ts
        changes: list[Change] = []
        for key, tomb in gone:
            e = self._pop(key)
            if e.value is not TOMBSTONE:
                changes.append(
                    Change(key, "invalidate", tomb.origin, tomb.ts, remote, tomb.pattern)
                )
        return changes

    # ------------------------------------------------------------ anti-entropy
    def changes_since(
        self, marks: Mapping[str, int]
    ) -> tuple[list[tuple[str, Entry]], list[PatternTombstone]]:
        """Everything stamped above the peer's ``marks``: what it may lack.

        Costs what it returns (plus a little per origin), not the size of the map: the
        entries come from the change log (:mod:`crdtcache.core._changelog`).
        """
        if all(ts <= marks.get(origin, -1) for origin, ts in self.high.items()):
            return [], []  # nothing here is newer than what the peer covers
        entries = self._log.since(marks)
        assert entries is not None  # (no limit: always an answer)
        patterns = [p for p in self.patterns.values() if p.ts > marks.get(p.origin, -1)]
        return entries, patterns

    def entries_since(self, marks: Mapping[str, int], limit: int) -> list[tuple[str, Entry]] | None:
        """The entries of :meth:`changes_since`, or None if finding them would examine
        more than ``limit`` keys (the caller then scans the map in slices instead)."""
        if all(ts <= marks.get(origin, -1) for origin, ts in self.high.items()):
            return []
        return self._log.since(marks, limit)

    def change_log_statistics(self) -> ChangeLogStatistics:
        """The size of the change log behind :meth:`changes_since`, and its work."""
        return self._log.statistics()

    def full_state(self) -> tuple[list[tuple[str, Entry]], list[PatternTombstone]]:
        """Every entry and pattern tombstone (for a peer that must resync)."""
        return list(self.entries.items()), list(self.patterns.values())

    def needs_full_state(self, marks: Mapping[str, int]) -> bool:
        """True if a peer with ``marks`` may hold values deleted by collected tombstones."""
        return any(marks.get(origin, -1) < ts for origin, ts in self.collected.items())

    def ahead_of(self, marks: Mapping[str, int]) -> bool:
        """True if this replica has writes a peer with ``marks`` has not covered."""
        return any(ts > marks.get(origin, -1) for origin, ts in self.marks.items())

    def advance_marks(self, marks: Mapping[str, int]) -> None:
        """Raise marks to a peer's after merging everything it sent above ours."""
        own = self.marks
        for origin, ts in marks.items():
            if ts > own.get(origin, -1):
                own[origin] = ts

    def advance_stream(self, origin: str, since: int, upto: int) -> bool:
        """Raise ``origin``'s mark for a gap-free batch of its writes in ``(since, upto]``."""
        if origin == self.node or self.marks.get(origin, -1) < since:
            return False
        if upto > self.marks.get(origin, -1):
            self.marks[origin] = upto
        return True

    def forget_unlisted(self, listed: Iterable[str], marks: Mapping[str, int]) -> list[Change]:
        """After a full-state transfer: drop entries the sender covers but no longer has.

        Those were deleted on the sender and the tombstone collected since.
        """
        keep = set(listed)
        gone = [
            key
            for key, e in self.entries.items()
            if key not in keep and e.ts <= marks.get(e.origin, -1)
        ]
        changes = []
        for key in gone:
            e = self._pop(key)
            if e.value is not TOMBSTONE:
                changes.append(Change(key, "delete", e.origin, e.ts, True))
        return changes

    # ---------------------------------------------------------------- locality
    def evict(self, key: str) -> bool:
        """Drop the value of ``key`` locally, keeping its stamp (never replicated).

        False if there is no held value, or it is a counter (never evicted to a stub).
        """
        e = self.entries.get(key)
        if e is None or e.value is TOMBSTONE or e.value is NOT_HELD:
            return False
        if type(e.value) is Counter:
            # A stub cannot be joined: peers' copies could replace it and lose the
            # totals only this node holds. A counter leaves by its TTL, or drop().
            return False
        self._put(key, stub_of(e), e)
        return True

    def shed(self, key: str) -> bool:
        """Forget a stub or tombstone another node wrote, for room; raises the floor.

        Returns False (nothing done) for a held value, this node's own write, or an
        absent key. See the module doc for what the floor then refuses.
        """
        e = self.entries.get(key)
        if e is None or e.held or e.origin == self.node:
            return False
        self._pop(key)
        if e.ts > self.floor:
            self.floor = e.ts
        self.shed_entries += 1
        return True

    def answer_terms(self, asked: Mapping[str, int]) -> tuple[dict[str, int], bool]:
        """The marks to send a peer that asked with ``asked``, and whether the answer is
        a full state (see the module doc: a node with a floor vouches for less)."""
        full = self.needs_full_state(asked)
        floor = self.floor
        if floor < 0:
            return dict(self.marks), full
        collected = self.collected
        marks = {
            origin: ts
            for origin, ts in self.marks.items()
            if asked.get(origin, -1) >= max(floor, collected.get(origin, -1) if full else -1)
        }
        return marks, False

    def drop(self, key: str) -> bool:
        """Forget ``key`` locally, stamp and all (never replicated; see ``evict``).

        Only for a node whose replica is not the authority on stamps (a hot tier in
        front of Redis, or a lone node): elsewhere an older write could win again.
        """
        if key not in self.entries:
            return False
        self._pop(key)
        return True

    # -------------------------------------------------------------- collection
    def collect(self, now: float) -> tuple[int, list[Change]]:
        """Shrink expired values to tombstones, drop tombstones past the grace period.

        With a resolver, expired values are not shrunk but dropped with the tombstones:
        a resolver sees values, and must see the same versions on every node.

        Returns how many entries and patterns were dropped, and the expirations seen.
        """
        horizon_ts = collection_horizon(now, self.tombstone_grace)
        dropped = 0
        expired: list[Change] = []
        for due in [d for d in self._due if d <= now]:
            for key in self._due.pop(due):
                dropped += self._collect_key(key, due, now, horizon_ts, expired)
        for pat, tomb in list(self.patterns.items()):
            if tomb.ts <= horizon_ts:
                self._pattern_index.remove(pat)
                self._raise_collected(tomb.origin, tomb.ts)
                dropped += 1
        return dropped, expired

    def _collect_key(
        self, key: str, due: int, now: float, horizon_ts: int, expired: list[Change]
    ) -> int:
        """Collect one key listed under second ``due``; returns 1 if its entry went."""
        e = self.entries.get(key)
        if e is None:
            return 0
        gone = e.value is TOMBSTONE
        if e.expires is not None and e.expires <= now:
            # (With a resolver an expired value is listed twice: report it once.)
            if not gone and (self.resolver is None or due == math.ceil(e.expires)):
                expired.append(Change(key, "expire", e.origin, e.ts, False))
            gone = True
        if not gone:
            return 0  # rewritten since: listed again under its new due second
        if e.ts <= horizon_ts:
            self._pop(key)
            self._raise_collected(e.origin, e.ts)
            return 1
        if e.value is TOMBSTONE:  # a tombstone listed early: list it again
            self._list(key, self._due_second(e))  # type: ignore[arg-type]  # a tombstone has one
        elif self.resolver is not None:
            # A resolver may rank versions by value: the expired value stays (it reads
            # as absent) until the grace, so that every node resolves against the same
            # version however late it collects.
            grace_due = math.ceil(collect_due_ms(e.ts, self.tombstone_grace) / 1000.0)
            self._list(key, max(grace_due, due + 1))
        else:
            self._put(key, with_value(e, TOMBSTONE), e, relist=True)
        return 0

    def _raise_collected(self, origin: str, ts: int) -> None:
        if ts > self.collected.get(origin, -1):
            self.collected[origin] = ts

    def __len__(self) -> int:
        return len(self.entries)


def _view(e: Entry) -> Any:
    if e.value is TOMBSTONE or e.value is NOT_HELD:
        return None
    return decode_value(e.value)
