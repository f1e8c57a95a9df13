"""What ``Cache.get_statistics()`` and ``Cache.health()`` return, and the latency window."""

from __future__ import annotations

import dataclasses
from array import array
from dataclasses import dataclass
from typing import Any, Final

from crdtcache.runtime._protocol import RuntimeStatistics

__all__ = [
    "LATENCY_WINDOW",
    "CacheStatistics",
    "ClusterStatistics",
    "Counters",
    "EvictionStatistics",
    "Health",
    "LatencyStatistics",
    "LatencyWindow",
    "OverallStatistics",
    "PeerStatistics",
    "TierStatistics",
    "TrafficStatistics",
]

#: Latency samples kept (the most recent ones) for percentiles.
LATENCY_WINDOW: Final = 2048


@dataclass(frozen=True, slots=True)
class LatencyStatistics:
    """Percentiles in milliseconds over the most recent samples (None without samples)."""

    p50: float | None
    p99: float | None
    samples: int


class LatencyWindow:
    """The most recent ``size`` latency samples, in a fixed buffer (bounded memory)."""

    __slots__ = ("_buf", "_next", "count")

    def __init__(self, size: int = LATENCY_WINDOW) -> None:
        self._buf = array("d", bytes(8 * size))
        self._next = 0
        #: Samples added since creation.
        self.count = 0

    def add(self, ms: float) -> None:
        """Record one sample (milliseconds)."""
        buf = self._buf
        buf[self._next] = ms
        self._next = (self._next + 1) % len(buf)
        self.count += 1

    def summary(self) -> LatencyStatistics:
        """p50 and p99 of the samples in the window."""
        return self.since(0)

    def since(self, count: int) -> LatencyStatistics:
        """p50 and p99 of the samples added after ``count`` had been reached.

        Only samples still in the window count: ``since(c)`` taken every second
        gives per-second percentiles (the dashboard's charts) as long as fewer than
        the window's size arrive per second, and the most recent ones otherwise.
        """
        size = len(self._buf)
        n = min(self.count - max(0, count), size)
        if n <= 0:
            return LatencyStatistics(None, None, 0)
        start, end = self._next - n, self._next
        buf = self._buf
        ordered = sorted(buf[start:end] if start >= 0 else buf[start:] + buf[:end])
        return LatencyStatistics(
            round(ordered[(n - 1) // 2], 3), round(ordered[min(n - 1, (99 * n) // 100)], 3), n
        )


@dataclass(frozen=True, slots=True)
class TierStatistics:
    """Lookups served by one tier; ``size`` is what it holds."""

    hits: int
    misses: int
    hit_rate: float
    size: int


@dataclass(frozen=True, slots=True)
class OverallStatistics:
    """Lookups answered by either tier, over all lookups."""

    hit_rate: float


@dataclass(frozen=True, slots=True)
class EvictionStatistics:
    """Values that left the local tier, by reason.

    ``ttl``: expired; ``size`` / ``memory``: pushed out by ``max_size`` /
    ``max_memory``; ``explicit``: deleted or invalidated (here or on a peer).
    """

    ttl: int = 0
    size: int = 0
    memory: int = 0
    explicit: int = 0


@dataclass(frozen=True, slots=True)
class PeerStatistics:
    """One peer as this node sees it (``state``: alive, suspect or dead)."""

    id: str
    address: str | None
    state: str


@dataclass(frozen=True, slots=True)
class ClusterStatistics:
    """Membership and replication health.

    ``instances`` counts this node and its live peers. ``last_sync_time`` is the wall
    time this node last applied a change from a peer (None before any).
    ``sync_latency_ms`` runs from a write's origin stamp to its apply here, so it
    includes clock offset between the nodes.
    """

    instances: int
    peers: tuple[PeerStatistics, ...]
    last_sync_time: float | None
    sync_latency_ms: LatencyStatistics


@dataclass(frozen=True, slots=True)
class TrafficStatistics:
    """Peer traffic since start (zero without a network)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    frames_received: int = 0


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    """A snapshot of one cache's counters; :meth:`as_dict` for JSON."""

    node_id: str
    backend: str
    sync_strategy: str
    local: TierStatistics
    distributed: TierStatistics
    overall: OverallStatistics
    evictions: EvictionStatistics
    cluster: ClusterStatistics
    traffic: TrafficStatistics
    #: Write-through: time from the local apply to every live peer's ack.
    write_ack_ms: LatencyStatistics
    #: Values from peers refused by the schema, stamps refused for clock drift.
    refused_values: int
    refused_drift: int

    def as_dict(self) -> dict[str, Any]:
        """The statistics as nested dicts (JSON-ready)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class Health:
    """A 0-100 score (100: nothing wrong) and the reasons for each point taken off."""

    score: int
    reasons: tuple[str, ...]

    @property
    def healthy(self) -> bool:
        """True when the score is at least 70."""
        return self.score >= 70


def rate(hits: int, misses: int) -> float:
    """``hits / (hits + misses)``, 0.0 before any lookup."""
    total = hits + misses
    return hits / total if total else 0.0


@dataclass(slots=True)
class Counters:
    """The cache's own counters, written on the hot paths, read by :meth:`snapshot`.

    Hits are counted from ``SyncCache`` caller threads too (see :mod:`._sync`):
    ``+=`` on an attribute has no switch point under the GIL, and these are
    statistics by contract.
    """

    local_hits: int = 0
    local_misses: int = 0
    dist_hits: int = 0
    dist_misses: int = 0
    writes: int = 0
    ack_failures: int = 0
    last_sync: float | None = None
    evictions: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(("ttl", "size", "memory", "explicit"), 0)
    )
    sync_window: LatencyWindow = dataclasses.field(default_factory=LatencyWindow)
    ack_window: LatencyWindow = dataclasses.field(default_factory=LatencyWindow)

    def hit_rate(self) -> float:
        """Lookups answered by either tier, over all lookups."""
        return rate(self.local_hits + self.dist_hits, self.local_misses - self.dist_hits)

    def snapshot(
        self,
        *,
        node_id: str,
        backend: str,
        sync_strategy: str,
        held: int,
        live_keys: int,
        runtime: RuntimeStatistics,
        refused_values: int,
        refused_drift: int,
    ) -> CacheStatistics:
        """The counters with what the tier, the runtime and the engine report."""
        hits, misses = self.local_hits, self.local_misses
        dh, dm = self.dist_hits, self.dist_misses
        return CacheStatistics(
            node_id=node_id,
            backend=backend,
            sync_strategy=sync_strategy,
            local=TierStatistics(hits, misses, rate(hits, misses), held),
            distributed=TierStatistics(dh, dm, rate(dh, dm), live_keys),
            overall=OverallStatistics(self.hit_rate()),
            evictions=EvictionStatistics(**self.evictions),
            cluster=ClusterStatistics(
                instances=runtime.instances,
                peers=tuple(PeerStatistics(p.id, p.address, p.state) for p in runtime.peers),
                last_sync_time=self.last_sync,
                sync_latency_ms=self.sync_window.summary(),
            ),
            traffic=TrafficStatistics(
                bytes_sent=runtime.bytes_sent,
                bytes_received=runtime.bytes_received,
                frames_sent=runtime.frames_sent,
                frames_received=runtime.frames_received,
            ),
            write_ack_ms=self.ack_window.summary(),
            refused_values=refused_values,
            refused_drift=refused_drift,
        )
