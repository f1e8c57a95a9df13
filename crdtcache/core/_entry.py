"""Entries of the LWW-register map, pattern tombstones and the changes a merge reports."""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

import msgspec

from crdtcache.core._hlc import Stamp

__all__ = [
    "NOT_HELD",
    "NO_STAMP",
    "TOMBSTONE",
    "Amended",
    "Change",
    "ChangeKind",
    "EXPIRY_SHARE_SECONDS",
    "Entry",
    "Expiries",
    "Lineage",
    "PatternTombstone",
    "compile_pattern",
    "lineage",
    "stub_of",
    "with_value",
]


class _Marker:
    """A named sentinel (compared by identity)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: Stored value of a deleted key.
TOMBSTONE: Final = _Marker("TOMBSTONE")
#: Stored value of a key whose stamp this node knows but whose value it does not hold
#: (evicted locally, or replicated on-demand): a read must fetch it from a peer.
NOT_HELD: Final = _Marker("NOT_HELD")


class Entry(msgspec.Struct, gc=False):
    """One register of the map: a stored value (or marker), its stamp and absolute expiry.

    Entries are never mutated once built; a replica replaces them. The stamp is kept
    flattened (``ts``, ``origin``) rather than as a :class:`Stamp` because this object
    exists once per key and its size is the cache's per-entry overhead. For the same
    reason it is a ``msgspec.Struct`` with ``gc=False``: 48 bytes, where a slotted
    class costs 64 (its 16-byte GC header). Nothing it holds can form a reference
    cycle back to it (values are stored forms: scalars, bytes, counters, markers), so
    the cycle collector never needs to see it, and a million entries no longer make
    every full collection walk a million objects. Equality is by type and content, in
    field order; entries are not hashable (they are never keys).
    """

    value: object
    ts: int
    origin: str
    expires: float | None = None

    @property
    def stamp(self) -> Stamp:
        """The entry's HLC stamp."""
        return Stamp(self.ts, self.origin)

    @property
    def deleted(self) -> bool:
        """True for a tombstone."""
        return self.value is TOMBSTONE

    @property
    def held(self) -> bool:
        """True when this node holds a live value (not a tombstone or a stub)."""
        return self.value is not TOMBSTONE and self.value is not NOT_HELD

    def expired(self, now: float) -> bool:
        """True once the absolute expiry has passed."""
        return self.expires is not None and self.expires <= now

    def __repr__(self) -> str:
        return f"Entry({self.value!r}, {self.stamp!r}, expires={self.expires!r})"


#: How much earlier than ``now + ttl`` a local write may expire, so that the writes of
#: a burst share one expiry object (see :class:`Expiries`), seconds.
EXPIRY_SHARE_SECONDS: Final = 0.001


class Expiries:
    """The absolute expiries of local writes: ``now + ttl``, one float shared by a burst.

    An expiry is a float object, 24 bytes kept once per entry with a TTL. Writes whose
    ``now + ttl`` falls less than :data:`EXPIRY_SHARE_SECONDS` after the expiry handed
    out last get that same object instead, so a burst of writes with one TTL keeps one
    float per millisecond rather than one per entry. Such an entry expires at most
    that much *early*: the safe side for a cache, which must never serve a value for
    longer than its TTL. An expiry at or before ``now`` is never shared, so a write is
    live when it is made, as with the exact sum.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = -math.inf

    def at(self, now: float, seconds: float) -> float:
        """The expiry of a write made at ``now`` for ``seconds``: shared, or ``now + seconds``."""
        expires = now + seconds
        last = self._last  # read once: a caller thread may write meanwhile
        if last <= expires < last + EXPIRY_SHARE_SECONDS and last > now:
            return last
        self._last = expires
        return expires


#: Which write a value descends from: ``(ts, origin, born)`` (see :class:`Amended`).
Lineage = tuple[int, str, bool]
#: The lineage stamp of a counter started where nothing was ever written.
NO_STAMP: Final = (0, "")


class Amended(Entry, gc=False):
    """An entry changed since its value was written: touched, or a counter.

    ``(ts, origin)`` stamp the newest change (what marks, streams and anti-entropy
    count); ``(vts, vorigin, born)`` is the value's *lineage*, the write it descends
    from, and last-writer-wins compares lineages first (see
    :mod:`crdtcache.core._replica`). So a ``touch`` -- the same value, a new expiry --
    can never carry an old value back over a newer ``set`` made elsewhere: that set's
    lineage is newer than the touched value's, whatever the touch's own stamp.

    ``born`` marks a counter started on a key that held no live value: its lineage is
    the stamp of what was there (a tombstone, an expired value, a pattern tombstone,
    or :data:`NO_STAMP` for nothing at all), and ``born`` ranks it just above that
    stamp, so every node that starts the counter from the same state starts the same
    lineage, and their increments merge.
    """

    # Defaults only because a msgspec field without one may not follow ``expires``;
    # every constructor passes the lineage.
    vts: int = 0
    vorigin: str = ""
    born: bool = False

    def __repr__(self) -> str:
        return (
            f"Amended({self.value!r}, {self.stamp!r}, expires={self.expires!r}, "
            f"lineage={self.vts}@{self.vorigin or '-'}{'+' if self.born else ''})"
        )


def lineage(e: Entry) -> Lineage:
    """The write ``e``'s value descends from: its own stamp, unless :class:`Amended`."""
    if type(e) is Amended:
        return e.vts, e.vorigin, e.born
    return e.ts, e.origin, False


def with_value(e: Entry, value: object) -> Entry:
    """``e`` with another stored value (a stub, a tombstone), its stamps and lineage kept."""
    if type(e) is Amended:
        return Amended(value, e.ts, e.origin, e.expires, e.vts, e.vorigin, e.born)
    return Entry(value, e.ts, e.origin, e.expires)


def stub_of(e: Entry) -> Entry:
    """``e`` as a stub: its stamps and lineage without the value (``NOT_HELD``)."""
    return with_value(e, NOT_HELD)


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a glob (``fnmatch`` syntax, case-sensitive) to a regex."""
    return re.compile(fnmatch.translate(pattern))


@dataclass(frozen=True, slots=True)
class PatternTombstone:
    """ "Every key matching ``pattern`` stamped at or before ``(ts, origin)`` is gone."

    One replicated entry for ``invalidate_pattern`` and ``clear`` (pattern ``*``),
    whatever the number of keys it covers, including keys not received yet.
    """

    pattern: str
    ts: int
    origin: str

    @property
    def stamp(self) -> Stamp:
        """The tombstone's HLC stamp."""
        return Stamp(self.ts, self.origin)


ChangeKind = Literal["set", "delete", "invalidate", "expire"]


class Change(NamedTuple):
    """A visible change to a key applied to a replica (what ``on_change`` reports).

    ``remote`` is True when it came from another node; ``origin`` is the node that
    made the write. ``pattern`` is set when a pattern tombstone caused it. (A named
    tuple rather than a dataclass: one is built per write, and it is half the cost.)
    """

    key: str
    kind: ChangeKind
    origin: str
    ts: int
    remote: bool
    pattern: str | None = None
