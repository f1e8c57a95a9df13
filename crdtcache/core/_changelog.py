"""Per-origin change logs: what a peer lacks, found at the cost of what changed.

Theory of operation
-------------------
A peer asking for anti-entropy sends its marks, and needs exactly the entries of each
origin ``o`` stamped above ``marks[o]`` (see :mod:`crdtcache.core._replica`). A scan
of the map finds them at the cost of its size, however few they are. A
:class:`ChangeLog` finds them at the cost of the answer: per origin it lists the keys
whose entry that origin wrote, in *chunks* ordered by stamp. It stores keys only (a
pointer each): an entry, and its stamp, is looked up in the map when needed.

Invariants, per origin:

* Each chunk has a stamp range ``[lo, hi]``; the ranges are disjoint and increasing
  (``hi[i] < lo[i + 1]``). Within a chunk, keys are in arrival order.
* *Live position.* Every key of the map whose entry this origin wrote is listed in the
  one chunk whose range holds the entry's stamp.
* *Stale positions.* A key overwritten or removed is not searched for (that would read
  every key of its chunk on a write): its old position stays, and that chunk counts
  one more stale position. A position is stale when the map says so (the key is gone,
  or its entry is another origin's, or stamped outside the chunk's range); a key
  rewritten within one chunk may be listed twice there, and a query answers it once.
* *Bounded memory.* A chunk more than half stale is compacted, at the cost of its
  keys, paid for by the writes that made them stale: positions stay within twice the
  entries. A chunk left with less than a quarter of :data:`CHUNK` joins a neighbour,
  so chunks stay mostly full whatever is overwritten.

*Writes.* The replica tells the log of every change to the map, with the entry
replaced (:meth:`ChangeLog.replaced`, :meth:`ChangeLog.removed`). Writes in stamp
order (this node's own, a stream from their origin) append to the last chunk, and
start a new one after :data:`CHUNK` keys; a key rewritten while its position is in
the last chunk (a hot key) does not move at all: the range grows to its new stamp. A
write arriving out of order (an anti-entropy answer, a restore, a forwarded write) goes
into the chunk whose range holds its stamp, or next to the gap it falls in; a chunk
grown past twice :data:`CHUNK` is split by stamp.

*Reads.* :meth:`ChangeLog.since` costs, per origin with anything above its mark, one
bisect of the chunk maxima, the chunk the mark falls in and the positions after it:
the changes, their stale positions (at most as many again) and one chunk, not the map.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from crdtcache.core._entry import Entry

__all__ = ["CHUNK", "ChangeLog", "ChangeLogStatistics", "MapScan"]

#: Keys a chunk fills up to before a new one starts. The chunk a mark falls in is
#: examined whole: a larger chunk saves a little memory per entry and costs each query
#: that much more.
CHUNK: Final = 64


@dataclass(frozen=True, slots=True)
class ChangeLogStatistics:
    """The size of a :class:`ChangeLog` and the work its queries did."""

    #: Origins with at least one chunk.
    origins: int
    chunks: int
    #: Keys listed, live and stale.
    positions: int
    #: Stale positions counted and not compacted yet.
    stale: int
    #: Positions examined by every query so far (what queries cost).
    examined: int


class _OriginLog:
    """One origin's chunks: parallel lists of stamp ranges, keys and stale counts."""

    __slots__ = ("hi", "keys", "lo", "stale")

    def __init__(self, key: str, ts: int) -> None:
        self.lo = [ts]
        self.hi = [ts]
        self.keys = [[key]]
        self.stale = [0]

    def chunk_of(self, ts: int) -> int:
        """The chunk whose range holds ``ts`` (-1: none)."""
        i = bisect_left(self.hi, ts)
        if i < len(self.hi) and self.lo[i] <= ts:
            return i
        return -1

    def insert_chunk(self, i: int, lo: int, hi: int, keys: list[str]) -> None:
        self.lo.insert(i, lo)
        self.hi.insert(i, hi)
        self.keys.insert(i, keys)
        self.stale.insert(i, 0)

    def drop_chunk(self, i: int) -> None:
        del self.lo[i], self.hi[i], self.keys[i], self.stale[i]

    def join_small(self, i: int) -> None:
        """Join chunk ``i`` (compacted: no stale position) to its smaller neighbour if
        both fit in one. Their ranges are adjacent: the joined range overlaps no other."""
        keys = self.keys
        left = len(keys[i - 1]) if i > 0 else CHUNK
        right = len(keys[i + 1]) if i + 1 < len(keys) else CHUNK
        if len(keys[i]) + min(left, right) > CHUNK:
            return
        a = i - 1 if left <= right else i
        keys[a] += keys[a + 1]
        self.hi[a] = self.hi[a + 1]
        self.stale[a] += self.stale[a + 1]
        self.drop_chunk(a + 1)


class ChangeLog:
    """Per origin, the keys of a map's entries by stamp (see the module doc).

    ``entries`` is the map the log indexes; the log reads it, never writes it.
    """

    __slots__ = ("_entries", "_examined", "_origins")

    def __init__(self, entries: Mapping[str, Entry]) -> None:
        self._entries = entries
        self._origins: dict[str, _OriginLog] = {}
        self._examined = 0

    # ------------------------------------------------------------- writing
    def replaced(self, key: str, old: Entry | None, new: Entry) -> None:
        """``new`` is now the entry of ``key`` in the map, in place of ``old``."""
        # On every write: the common steps are inlined (a call costs as much as a step).
        ts, origin = new.ts, new.origin
        if old is not None:
            if old.origin == origin:
                if old.ts == ts:
                    return  # same write (a stub, a filled stub, an expiry): same place
                own = self._origins[origin]
                if old.ts >= own.lo[-1] and ts >= own.hi[-1]:
                    own.hi[-1] = ts  # a key rewritten in the last chunk stays there
                    return
            self._unlist(old)
        log = self._origins.get(origin)  # (after: _unlist may have dropped it)
        if log is None:
            self._origins[origin] = _OriginLog(key, ts)
            return
        hi = log.hi
        last = hi[-1]
        if ts >= last:  # in stamp order: the common case
            keys = log.keys[-1]
            if ts == last or len(keys) < CHUNK:
                keys.append(key)
                hi[-1] = ts
            else:
                log.insert_chunk(len(hi), ts, ts, [key])
            return
        i = bisect_left(hi, ts)  # the first chunk reaching ts (there is one: ts < last)
        lo, chunks = log.lo, log.keys
        if lo[i] <= ts:  # within its range
            chunks[i].append(key)
            if len(chunks[i]) > 2 * CHUNK and lo[i] < hi[i]:  # (one stamp cannot be cut)
                self._split(origin, log, i)
        elif i > 0 and len(chunks[i - 1]) < CHUNK:  # in the gap after chunk i - 1
            chunks[i - 1].append(key)
            hi[i - 1] = ts
        elif len(chunks[i]) < CHUNK:  # in the gap before chunk i
            chunks[i].append(key)
            lo[i] = ts
        else:  # between two full chunks: a chunk of its own
            log.insert_chunk(i, ts, ts, [key])

    def removed(self, key: str, old: Entry) -> None:
        """``old``, the entry of ``key``, left the map."""
        self._unlist(old)

    def _unlist(self, old: Entry) -> None:
        """Count ``old``'s position stale; compact its chunk once half of it is."""
        origin, ts = old.origin, old.ts
        log = self._origins.get(origin)
        if log is None:
            return
        lo = log.lo
        if ts >= lo[-1]:
            i = len(lo) - 1  # a recent write: no bisect
        else:
            i = bisect_left(log.hi, ts)
            if lo[i] > ts:
                return  # (not listed: cannot happen while the invariants hold)
        stale = log.stale[i] + 1
        log.stale[i] = stale
        if 2 * stale > len(log.keys[i]):
            self._compact(origin, log, i)

    def _live(self, origin: str, keys: list[str], lo: int, hi: int) -> list[str]:
        """The live keys of a chunk ranged ``[lo, hi]``, once each, in order."""
        entries = self._entries
        live: dict[str, None] = {}
        for key in keys:
            e = entries.get(key)
            if e is not None and e.origin == origin and lo <= e.ts <= hi:
                live[key] = None
        return list(live)

    def _compact(self, origin: str, log: _OriginLog, i: int) -> None:
        live = self._live(origin, log.keys[i], log.lo[i], log.hi[i])
        if not live:
            log.drop_chunk(i)
            if not log.hi:
                del self._origins[origin]
            return
        log.keys[i] = live
        log.stale[i] = 0
        if len(live) < CHUNK // 4:
            log.join_small(i)

    def _split(self, origin: str, log: _OriginLog, i: int) -> None:
        """Cut an overgrown chunk into chunks of about :data:`CHUNK` keys by stamp.

        A cut never falls between two equal stamps (the ranges must stay disjoint): keys
        sharing one stamp, however many, stay together, in a chunk of their own if they
        are more than fit beside others (a chunk of one stamp is never split again).
        """
        entries = self._entries
        live = self._live(origin, log.keys[i], log.lo[i], log.hi[i])
        live.sort(key=lambda k: entries[k].ts)
        stamps = [entries[k].ts for k in live]
        pieces: list[tuple[int, int]] = []
        start, n = 0, len(live)
        while start < n:
            end = min(start + CHUNK, n)
            if end < n and stamps[end] == stamps[end - 1]:
                group = bisect_left(stamps, stamps[end], start, end)
                end = group if group > start else bisect_right(stamps, stamps[end], end)
            pieces.append((start, end))
            start = end
        log.drop_chunk(i)
        for offset, (start, end) in enumerate(pieces):
            log.insert_chunk(i + offset, stamps[start], stamps[end - 1], live[start:end])
        if not log.hi:
            del self._origins[origin]

    # ------------------------------------------------------------- reading
    def since(
        self, marks: Mapping[str, int], limit: int | None = None
    ) -> list[tuple[str, Entry]] | None:
        """Every ``(key, entry)`` of the map stamped above ``marks`` (its origin's mark).

        With ``limit``, None instead when more than ``limit`` positions would have to
        be examined (the caller then does the work in slices of its own).
        """
        todo: list[tuple[str, int, list[list[str]]]] = []
        count = 0
        for origin, log in self._origins.items():
            mark = marks.get(origin, -1)
            hi = log.hi
            if hi[-1] <= mark:
                continue
            chunks = log.keys[bisect_right(hi, mark) :]
            todo.append((origin, mark, chunks))
            if limit is not None:
                count += sum(map(len, chunks))
                if count > limit:
                    return None
        entries = self._entries
        found: dict[str, Entry] = {}  # (a key listed twice is answered once)
        examined = 0
        for origin, mark, chunks in todo:
            for keys in chunks:
                examined += len(keys)
                for key in keys:
                    e = entries.get(key)
                    if e is not None and e.ts > mark and e.origin == origin:
                        found[key] = e
        self._examined += examined
        return list(found.items())

    def statistics(self) -> ChangeLogStatistics:
        """The log's size now, and the positions its queries examined so far."""
        logs = self._origins.values()
        return ChangeLogStatistics(
            origins=len(self._origins),
            chunks=sum(len(log.hi) for log in logs),
            positions=sum(len(keys) for log in logs for keys in log.keys),
            stale=sum(sum(log.stale) for log in logs),
            examined=self._examined,
        )


class MapScan:
    """A :class:`ChangeLog` stand-in that keeps nothing and scans the map when asked.

    For a replica that never answers a peer (``backend="memory"``, Redis mode's hot
    tier): it saves the log's memory (about 10 B per entry) and its work per write,
    and a rare question (a snapshot's, a test's) still gets the right answer.
    """

    def __init__(self, entries: Mapping[str, Entry]) -> None:
        self._entries = entries
        self._examined = 0

    def replaced(self, key: str, old: Entry | None, new: Entry) -> None:
        """Nothing to note."""

    def removed(self, key: str, old: Entry) -> None:
        """Nothing to note."""

    def since(
        self, marks: Mapping[str, int], limit: int | None = None
    ) -> list[tuple[str, Entry]] | None:
        """As :meth:`ChangeLog.since`, by a scan of the whole map (None past ``limit``)."""
        if limit is not None and len(self._entries) > limit:
            return None
        self._examined += len(self._entries)
        return [(k, e) for k, e in self._entries.items() if e.ts > marks.get(e.origin, -1)]

    def statistics(self) -> ChangeLogStatistics:
        """Nothing listed; the positions scanned so far."""
        return ChangeLogStatistics(0, 0, 0, 0, self._examined)
