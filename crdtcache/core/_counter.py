"""Convergent counters: what ``incr`` and ``decr`` store (p2p and memory mode).

Theory of operation
-------------------
A :class:`Counter` is a PN-counter (Shapiro et al., 2011). Every node that changed it
keeps its own two totals in it, ``up`` (the sum of its positive deltas) and ``down``
(the sum of its negative ones, as a positive number); a node only ever raises its
own. Two copies of one counter merge by taking, per node, the greater ``up`` and the
greater ``down`` (:meth:`Counter.join`): that is commutative, associative and
idempotent, so nodes that have seen the same increments hold the same counter, in
whatever order, with whatever duplicates and losses on the way. An increment is
never lost by a merge: it lives in its node's totals, which only grow. The value is
``start + sum(up) - sum(down)``.

A counter is the value of a register entry, and which counter it is, is said by the
entry's *lineage* (:class:`~crdtcache.core._entry.Amended`): copies of the same
lineage merge, a newer lineage replaces an older one whole. ``start`` is the int the
counter was started from (the value a ``set`` had written, or 0). A counter also
carries the stamp of the write that set its expiry (``xts``, ``xorigin``): an
increment keeps the expiry it found, a ``touch`` sets a new one, and of two copies the
expiry set later wins, whatever order the increments came in.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, NamedTuple

__all__ = ["MAX_COUNTER_NODES", "MAX_TOTAL", "Counter", "CounterError", "Part"]

#: Most nodes whose totals one counter keeps (a local increment beyond refuses).
MAX_COUNTER_NODES: Final = 4096
#: Largest ``up`` or ``down`` total of one node (what msgpack carries as an integer).
MAX_TOTAL: Final = (1 << 64) - 1


class CounterError(ValueError):
    """A local increment that the counter cannot take (too many nodes, overflow)."""


class Part(NamedTuple):
    """One node's totals in a counter."""

    node: str
    up: int
    down: int


class Counter:
    """One PN-counter (immutable; see the module doc).

    ``parts`` are sorted by node id, at most one per node, so equal counters compare
    equal and pack to the same bytes.
    """

    __slots__ = ("parts", "start", "xorigin", "xts")

    def __init__(self, start: int, parts: tuple[Part, ...], xts: int, xorigin: str) -> None:
        self.start = start
        self.parts = parts
        self.xts = xts
        self.xorigin = xorigin

    @property
    def total(self) -> int:
        """The counter's value."""
        return self.start + sum(p.up - p.down for p in self.parts)

    def add(self, node: str, delta: int) -> Counter:
        """This counter after ``node`` added ``delta`` (negative: subtracted).

        Raises :class:`CounterError` if the counter already counts
        :data:`MAX_COUNTER_NODES` other nodes or ``node``'s total would pass
        :data:`MAX_TOTAL`.
        """
        parts = {p.node: p for p in self.parts}
        part = parts.get(node)
        if part is None:
            if len(parts) >= MAX_COUNTER_NODES:
                raise CounterError(
                    f"the counter already counts {MAX_COUNTER_NODES} nodes; set it again "
                    "to start a new one"
                )
            part = Part(node, 0, 0)
        up, down = (part.up + delta, part.down) if delta >= 0 else (part.up, part.down - delta)
        if up > MAX_TOTAL or down > MAX_TOTAL:
            raise CounterError(f"the counter's total for this node would pass {MAX_TOTAL}")
        parts[node] = Part(node, up, down)
        return Counter(self.start, tuple(sorted(parts.values())), self.xts, self.xorigin)

    def join(self, other: Counter) -> Counter:
        """Both copies merged: per node the greater totals (see the module doc).

        The expiry stamp is the later one; ``start`` is the greater (copies of one
        lineage have the same, so this only keeps the join well defined for junk).
        """
        merged: dict[str, Part] = {p.node: p for p in self.parts}
        for p in other.parts:
            mine = merged.get(p.node)
            if mine is not None:
                p = Part(p.node, max(mine.up, p.up), max(mine.down, p.down))
            merged[p.node] = p
        xts, xorigin = max((self.xts, self.xorigin), (other.xts, other.xorigin))
        return Counter(max(self.start, other.start), tuple(sorted(merged.values())), xts, xorigin)

    def with_expiry_stamp(self, xts: int, xorigin: str) -> Counter:
        """This counter whose expiry was set by the write stamped ``(xts, xorigin)``."""
        return Counter(self.start, self.parts, xts, xorigin)

    @classmethod
    def started(cls, start: int, xts: int, xorigin: str, parts: Iterable[Part] = ()) -> Counter:
        """A counter of ``start`` (plus ``parts``), its expiry set at ``(xts, xorigin)``."""
        return cls(start, tuple(sorted(parts)), xts, xorigin)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Counter):
            return NotImplemented
        return (
            self.start == other.start
            and self.parts == other.parts
            and self.xts == other.xts
            and self.xorigin == other.xorigin
        )

    def __hash__(self) -> int:
        return hash((self.start, self.parts, self.xts, self.xorigin))

    def __repr__(self) -> str:
        return f"Counter({self.total}, start={self.start}, parts={len(self.parts)})"
