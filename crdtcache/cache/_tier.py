"""The local tier: how many values this node holds, and which it gives up under pressure.

Theory of operation
-------------------
The replica keeps one :class:`Entry` per key; the tier bounds how many of them *hold a
value* (``max_size``) and how many bytes those take (``max_memory``: key length plus
:func:`stored_size` of the value). Eviction is local: :meth:`Replica.evict` leaves a
``NOT_HELD`` stub with the stamp, so nothing is replicated and a later read may fetch
the value from a peer.

*Accounting.* The tier is a :class:`~crdtcache.core.ReplicaObserver` of the replica
(:meth:`LocalTier.attach`): the replica reports every replacement ``(key, old, new)``
whatever caused it: a local write, a merge, a fetch filling a stub, a pattern
tombstone, collection. ``count`` and ``nbytes`` are therefore exact without a per-key
side table, and the tier sees each remote value before it becomes readable, which is
where the schema gate (``admit``) refuses invalid ones: such a value is stored as a
``NOT_HELD`` stub of the same stamp, exactly as if it had arrived and been evicted, so
the replica still converges on stamps while this node never serves the value.

*Replacement: CLOCK with epoch marks, an approximation of LRU.* The hand walks the
held keys in passes; each pass starts from a fresh list of them and bumps ``epoch``.
A hit stores the current epoch in the key's mark; the hand spares a key marked during
this pass or the previous one and evicts the first other key (an expired value is
never spared). Writes do not mark: a value written but not read since the hand last
came by goes before one that was read, so a stream of writes never read again (a scan)
cannot push out the keys being read, which a mark-on-write CLOCK lets happen once
every key in the ring looks recent. The key being written is spared by the eviction
its own write triggers (``keep``): it is the most recently used key.

*Entries without a value.* Stubs (a value evicted, or never held) and tombstones keep a
stamp each, so a peer that writes many keys would leave as many behind however small
``max_size``. They are counted too (``stubs``, ``stub_bytes``: key length plus
:data:`STUB_BYTES` each), and bounded: at most :data:`STUBS_PER_VALUE` times
``max_size`` of them, and within ``max_memory`` with the values (values are evicted
first, while stubs take no more than half of it). Past a bound the oldest stamps go,
by :meth:`Replica.shed <crdtcache.core.Replica.shed>` (this node's own writes are never
shed; the replica then refuses older writes for keys it no longer holds: at worst a
miss), or outright for a node whose replica is not the authority (``forget``).

Marks live in one ``bytearray`` indexed by the key's hash. Two keys may share a mark,
which can spare a cold key undeservedly but never costs a recently used key its
protection, since marks are never cleared, only outdated by later epochs. So a hit is
one byte store that needs no lock (a ``SyncCache`` caller thread may do it; a lost
store costs one key its protection), and the tier costs about 1 byte per entry at rest
plus, while evicting, the list of keys the hand has still to visit (8 bytes per held
key) -- where an ``OrderedDict`` costs ~90 bytes per key and must be reordered under a
lock on each hit.
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Final

from crdtcache.core import NOT_HELD, TOMBSTONE, Entry, Replica
from crdtcache.core._counter import Counter
from crdtcache.core._entry import stub_of
from crdtcache.core._values import stored_size

__all__ = ["MAX_REFERENCE_BITS", "STUBS_PER_VALUE", "STUB_BYTES", "LocalTier"]

#: Stubs and tombstones kept at most per value ``max_size`` allows.
STUBS_PER_VALUE: Final = 16
#: What an entry without a value costs beyond its key (dict slot, entry, stamp), bytes.
STUB_BYTES: Final = 150

#: Upper bound on the reference-bit array (bytes); larger tiers share bits.
MAX_REFERENCE_BITS: Final = 1 << 22
_MIN_REFERENCE_BITS: Final = 1 << 10

Admit = Callable[[str, Entry], bool]


def _cap(bound: int | None) -> int:
    return sys.maxsize if bound is None else bound


def _held(entry: Entry | None) -> bool:
    return entry is not None and entry.value is not TOMBSTONE and entry.value is not NOT_HELD


class LocalTier:
    """Bounds and accounts for the values one replica holds (see module doc).

    ``admit(key, entry)`` is asked about every held value written by another node;
    False makes it a stub. ``on_over`` is called whenever a value is added while a
    bound is exceeded, so the owner can schedule :meth:`evict_over` (which must not
    run re-entrantly, inside the replica operation that called ``on_over``).
    """

    def __init__(
        self,
        *,
        node: str,
        max_size: int | None,
        max_memory: int | None,
        admit: Admit | None = None,
        on_over: Callable[[], None] | None = None,
    ) -> None:
        self.node = node
        self.max_size = max_size
        self.max_memory = max_memory
        self.admit = admit
        self.on_over = on_over
        #: Held values and their bytes (key length + stored size).
        self.count = 0
        self.nbytes = 0
        #: Entries without a value (stubs and tombstones), and their estimated bytes.
        self.stubs = 0
        self.stub_bytes = 0
        #: Most stubs and tombstones kept (None: bounded by ``max_memory`` only, if set).
        self.max_stubs = None if max_size is None else STUBS_PER_VALUE * max_size
        # The bounds as plain ints (no bound: the largest int), so that ``over``, asked
        # on every write, is three comparisons.
        self._size_cap = _cap(max_size)
        self._stub_cap = _cap(self.max_stubs)
        self._memory_cap = _cap(max_memory)
        #: Stubs and tombstones given up for room.
        self.shed = 0
        #: Remote values refused by ``admit``.
        self.refused = 0
        #: Keys whose held value was removed (deleted, invalidated, expired) since
        #: the owner last cleared it: tells an explicit or TTL eviction from a stub's.
        self.left: set[str] = set()
        nbits = _MIN_REFERENCE_BITS
        while nbits < min(max_size or 1 << 16, MAX_REFERENCE_BITS):
            nbits <<= 1
        #: Epoch marks (see module doc): a hit sets ``bits[hash(key) & mask] = epoch``.
        self.bits = bytearray(nbits)
        self.mask = nbits - 1
        #: The hand's pass number, modulo 256 (starts where untouched marks look old).
        self.epoch = 2
        self._ring: list[str] = []
        self._hand = 0

    # ---------------------------------------------------------- accounting
    def attach(self, replica: Replica) -> None:
        """Observe ``replica`` from now on and count what it holds (idempotent)."""
        if self not in replica.observers:
            replica.observe(self)
        self.recount(replica.entries.items())

    def recount(self, items: Iterable[tuple[str, Entry]]) -> None:
        """Recompute ``count`` and ``nbytes`` from scratch."""
        count = nbytes = stubs = stub_bytes = 0
        for key, e in items:
            if _held(e):
                count += 1
                nbytes += len(key) + stored_size(e.value)
            else:
                stubs += 1
                stub_bytes += len(key) + STUB_BYTES
        self.count, self.nbytes = count, nbytes
        self.stubs, self.stub_bytes = stubs, stub_bytes

    def replacing(self, key: str, old: Entry | None, new: Entry) -> Entry:
        """Account for ``new`` replacing ``old``; returns the entry to store instead."""
        value = new.value
        held = value is not TOMBSTONE and value is not NOT_HELD
        # The schema gate runs first: if it raises, nothing has been counted yet.
        if held and self.admit is not None and new.origin != self.node and not self.admit(key, new):
            self.refused += 1
            new = stub_of(new)
            held = False
        if old is not None:
            self._leave(key, old, removed=value is TOMBSTONE)
        if not held:
            self.stubs += 1
            self.stub_bytes += len(key) + STUB_BYTES
            if self.on_over is not None and self.over:
                self.on_over()
            return new
        self.count += 1
        self.nbytes += len(key) + stored_size(value)
        if self.on_over is not None and self.over:
            self.on_over()
        return new

    def removed(self, key: str, old: Entry) -> None:
        """Account for ``old`` leaving the map."""
        self._leave(key, old, removed=True)

    def _leave(self, key: str, old: Entry, *, removed: bool) -> None:
        value = old.value
        if value is not TOMBSTONE and value is not NOT_HELD:
            self.count -= 1
            self.nbytes -= len(key) + stored_size(value)
            if removed:
                self.left.add(key)
        else:
            self.stubs -= 1
            self.stub_bytes -= len(key) + STUB_BYTES

    @property
    def over(self) -> bool:
        """True while a bound is exceeded."""
        return (
            self.count > self._size_cap
            or self.stubs > self._stub_cap
            or self.nbytes + self.stub_bytes > self._memory_cap
        )

    def _stubs_first(self) -> bool:
        """Whether the next room must come from stubs rather than values."""
        if self.max_stubs is not None and self.stubs > self.max_stubs:
            return True
        memory = self.max_memory
        return (
            memory is not None
            and self.nbytes + self.stub_bytes > memory
            and (self.stub_bytes > memory // 2 or self.count == 0)
        )

    def _shed(self, replica: Replica, *, forget: bool, keep: Collection[str]) -> int:
        """Give up a batch of stubs and tombstones, the oldest stamps first; how many.

        A batch takes them down to 90% of ``max_stubs``, or to a quarter of
        ``max_memory``, so that the scan it takes is paid once per many entries.
        """
        if self.max_stubs is not None and self.stubs > self.max_stubs:
            excess = self.stubs - self.max_stubs * 9 // 10
        else:
            assert self.max_memory is not None  # (_stubs_first said so)
            average = self.stub_bytes // max(1, self.stubs)
            excess = (self.stub_bytes - self.max_memory // 4) // max(1, average) + 1
        node = replica.node
        oldest = heapq.nsmallest(
            excess,
            (
                (e.ts, k)
                for k, e in replica.entries.items()
                if not _held(e) and (forget or e.origin != node) and k not in keep
            ),
        )
        for _, key in oldest:
            if forget:
                replica.drop(key)
            else:
                replica.shed(key)
        self.shed += len(oldest)
        return len(oldest)

    def _new_pass(self, entries: Mapping[str, Entry], *, forget: bool) -> bool:
        """Start a pass of the clock hand over every held value; False if none is."""
        # Counters are never evicted to stubs (see Replica.evict), only dropped.
        self._ring = [
            k for k, e in entries.items() if _held(e) and (forget or type(e.value) is not Counter)
        ]
        self._hand = 0
        self.epoch = (self.epoch + 1) & 0xFF
        return bool(self._ring)

    def _reason(
        self, key: str, e: Entry, now: float, passes: int, keep: Collection[str]
    ) -> str | None:
        """Why ``key`` goes now (ttl, size or memory), or None if it is spared."""
        if key in keep and passes < 4:
            return None
        expired = e.expires is not None and e.expires <= now
        # Spare keys used in this pass or the last. Within one call nothing else
        # marks keys on this thread, so the third pass finds unmarked ones; past it,
        # marks from caller threads are ignored so they cannot stall eviction.
        if (
            not expired
            and passes < 3
            and (self.epoch - self.bits[hash(key) & self.mask]) & 0xFF <= 1
        ):
            return None
        if expired:
            return "ttl"
        if self.max_size is not None and self.count > self.max_size:
            return "size"
        return "memory"

    def touch(self, key: str) -> None:
        """Mark ``key`` recently used (safe from any thread)."""
        self.bits[hash(key) & self.mask] = self.epoch

    # ------------------------------------------------------------ eviction
    def evict_over(
        self, replica: Replica, now: float, *, forget: bool, keep: Collection[str] = ()
    ) -> list[tuple[str, str]]:
        """Evict until both bounds hold; returns ``(key, reason)`` for each eviction.

        ``reason`` is ``"ttl"`` (already expired), ``"size"`` or ``"memory"``. With
        ``forget`` the entry is dropped outright instead of kept as a stub: for a node
        that has no peer to fetch it from again. ``keep`` (keys just written or being
        fetched) go last: only if they alone break ``max_memory``.
        """
        evicted: list[tuple[str, str]] = []
        entries = replica.entries
        passes = 0
        while self.over:
            if self._stubs_first():
                if not self._shed(replica, forget=forget, keep=keep):
                    break  # nothing left that may be shed (this node's own writes)
                continue
            if self._hand >= len(self._ring):
                if not self._new_pass(entries, forget=forget):
                    break  # nothing evictable is held: only counters or stubs
                passes += 1
            key = self._ring[self._hand]
            self._hand += 1
            e = entries.get(key)
            if e is None or not _held(e):
                continue
            reason = self._reason(key, e, now, passes, keep)
            if reason is None:
                continue
            if forget:
                replica.drop(key)
            elif not replica.evict(key):
                continue  # became a counter since the ring was built
            self.left.discard(key)
            evicted.append((key, reason))
        if self._hand >= len(self._ring):
            self._ring = []
            self._hand = 0
        return evicted
