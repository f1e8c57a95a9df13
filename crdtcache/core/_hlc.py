"""Hybrid logical clocks (Kulkarni et al., 2014).

Theory of operation
-------------------
A stamp is ``(ts, node)`` where ``ts`` packs the physical part ``l`` (milliseconds)
and the logical counter ``c`` into one integer: ``ts = l << 16 | c``. Comparing
``(ts, node)`` as a tuple is therefore the HLC total order: physical time first,
then the counter, then the node id as tie-break.

Invariants kept by :class:`HybridClock`:

* every stamp it issues is strictly greater than every stamp it issued or received
  before (monotonic even when the wall clock steps back);
* ``l`` never runs ahead of the greatest physical time seen by more than the counter
  can absorb: when ``c`` would overflow 16 bits, ``l`` is bumped by one millisecond;
* a remote stamp whose physical part is more than ``max_drift`` ahead of local
  physical time is refused with :class:`ClockDriftError` and changes nothing.

The clock never reads time itself: callers pass ``now`` (seconds, as ``time.time()``).
"""

from __future__ import annotations

from typing import NamedTuple

from crdtcache._errors import ClockDriftError

__all__ = [
    "LOGICAL_BITS",
    "MAX_DRIFT",
    "MAX_NODE_ID_CHARS",
    "MAX_TS",
    "HybridClock",
    "Stamp",
    "pack_ts",
    "ts_at",
    "ts_ms",
    "ts_seconds",
    "ts_span",
]

#: Bits of the logical counter in a packed ``ts``; nothing outside this module needs it:
#: use :func:`pack_ts`, :func:`ts_ms`, :func:`ts_seconds` and :func:`ts_at`.
LOGICAL_BITS = 16
#: Greatest ``ts`` accepted anywhere (stamps are stored as signed 64-bit integers).
MAX_TS = (1 << 63) - 1
#: Longest node id accepted (on the API and on the wire).
MAX_NODE_ID_CHARS = 128
_LOGICAL_MASK = (1 << LOGICAL_BITS) - 1
#: Default bound on how far a remote stamp may run ahead of local time, in seconds.
MAX_DRIFT = 60.0


def pack_ts(wall_ms: int, logical: int = 0) -> int:
    """Pack a physical time in ms and a logical counter into one comparable integer."""
    return (wall_ms << LOGICAL_BITS) | logical


def ts_ms(ts: int) -> int:
    """The physical part of a packed ``ts``: milliseconds since the epoch."""
    return ts >> LOGICAL_BITS


def ts_seconds(ts: int) -> float:
    """The physical part of a packed ``ts`` in seconds since the epoch."""
    return (ts >> LOGICAL_BITS) / 1000.0


def ts_at(seconds: float) -> int:
    """The smallest ``ts`` stamped at wall time ``seconds`` (counter zero).

    Every stamp issued at or before that millisecond compares at most equal to the
    result with the greatest counter, so ``ts <= ts_at(t)`` reads "stamped before t"
    up to the millisecond, which is how collection horizons are expressed.
    """
    return int(seconds * 1000.0) << LOGICAL_BITS


def ts_span(seconds: float) -> int:
    """How far apart two ``ts`` are whose physical parts differ by ``seconds``."""
    return int(seconds * 1000.0) << LOGICAL_BITS


class Stamp(NamedTuple):
    """A hybrid-logical-clock stamp: ``ts`` (packed time and counter) and the node id.

    Stamps compare as tuples, which is the HLC total order.

    Examples:
        >>> from crdtcache.core import HybridClock, Stamp
        >>> clock = HybridClock("a")
        >>> first, second = clock.now(1000.0), clock.now(1000.0)  # the same millisecond
        >>> first < second, second.wall_ms, second.logical
        (True, 1000000, 1)
        >>> Stamp(first.ts, "a") < Stamp(first.ts, "b")  # a tie: the node id decides
        True
    """

    ts: int
    node: str

    @property
    def wall_ms(self) -> int:
        """The physical part, milliseconds since the epoch."""
        return self.ts >> LOGICAL_BITS

    @property
    def logical(self) -> int:
        """The logical counter."""
        return self.ts & _LOGICAL_MASK

    @property
    def wall(self) -> float:
        """The physical part in seconds since the epoch."""
        return (self.ts >> LOGICAL_BITS) / 1000.0

    def __repr__(self) -> str:
        return f"Stamp({self.wall_ms}.{self.logical}@{self.node})"


def _to_ms(now: float) -> int:
    return int(now * 1000.0)


class HybridClock:
    """One node's hybrid logical clock.

    ``now`` arguments are seconds since the epoch, read by the caller.
    """

    __slots__ = ("_last", "max_drift_ms", "node", "refused")

    def __init__(self, node: str, *, max_drift: float = MAX_DRIFT, last_ts: int = 0) -> None:
        if not isinstance(node, str) or not node or len(node) > MAX_NODE_ID_CHARS:
            raise ValueError(
                f"node id must be a non-empty str of at most {MAX_NODE_ID_CHARS} chars"
            )
        if max_drift <= 0:
            raise ValueError("max_drift must be positive")
        self.node = node
        self.max_drift_ms = int(max_drift * 1000)
        self._last = last_ts
        #: How many remote stamps were refused for drift.
        self.refused = 0

    @property
    def last_ts(self) -> int:
        """The greatest ``ts`` issued or received so far (persist it to survive restarts)."""
        return self._last

    def now(self, now: float) -> Stamp:
        """Issue a stamp for a local event or a send: strictly above everything seen."""
        return Stamp(self.tick(now), self.node)

    def tick(self, now: float) -> int:
        """Like :meth:`now` but return only the packed ``ts`` (the hot path of a write)."""
        pt = int(now * 1000.0) << LOGICAL_BITS
        last = self._last
        # ``| 0`` copies the stamp into an int of exactly its size: CPython's shift and
        # add allocate a spare digit (36 bytes where 32 do), and this int is kept once
        # per entry for as long as the entry lives (issue #15: bytes per entry).
        ts = (pt if pt > last else last + 1) | 0
        # A counter overflow carries into the millisecond part, which keeps ts
        # strictly increasing; it can only happen after 65536 events in one ms.
        self._last = ts
        return ts

    def check(self, remote_ts: int, now: float) -> None:
        """Raise :class:`ClockDriftError` if ``remote_ts`` is too far ahead of ``now``."""
        ahead = (remote_ts >> LOGICAL_BITS) - _to_ms(now)
        if ahead > self.max_drift_ms:
            self.refused += 1
            raise ClockDriftError(
                f"remote stamp is {ahead} ms ahead of local time "
                f"(max_drift is {self.max_drift_ms} ms); refused"
            )

    def within_drift(self, remote_ts: int, now: float) -> bool:
        """Whether ``remote_ts`` is within ``max_drift`` of ``now`` (no counting, no raise)."""
        return (remote_ts >> LOGICAL_BITS) - _to_ms(now) <= self.max_drift_ms

    def observe(self, remote_ts: int, now: float) -> None:
        """Apply the HLC receive rule for a remote ``ts`` (after :meth:`check`).

        Afterwards every stamp this clock issues is greater than ``remote_ts``.
        """
        self.check(remote_ts, now)
        if remote_ts > self._last:
            self._last = remote_ts

    def receive(self, remote_ts: int, now: float) -> Stamp:
        """The full HLC receive event: observe ``remote_ts`` and issue a stamp above it."""
        self.observe(remote_ts, now)
        return self.now(now)
