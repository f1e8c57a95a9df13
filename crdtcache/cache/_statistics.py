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
    """Percentiles in milliseconds over the most recent samples (None without samples).

    Examples:
        ```python
        import crdtcache

        async with crdtcache.Cache(backend="memory") as cache:
            latency = (await cache.get_statistics()).cluster.sync_latency_ms
            assert (latency.p50, latency.p99, latency.samples) == (None, None, 0)
        ```
    """

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
    """Lookups served by one tier; ``size`` is what it holds.

    Examples:
        ```python
        import crdtcache

        async with crdtcache.Cache(backend="memory") as cache:
            await cache.set("k", "v")
            await cache.get("k")
            await cache.get("absent")
            local = (await cache.get_statistics()).local
            assert (local.hits, local.misses, local.hit_rate, local.size) == (1, 1, 0.5, 1)
        ```
    """

    hits: int
    misses: int
    hit_rate: float
    size: int


@dataclass(frozen=True, slots=True)
class OverallStatistics:
    """Lookups answered by either tier, over all lookups.

    Examples:
        ```python
        import crdtcache

        async with crdtcache.Cache(backend="memory") as cache:
            await cache.get("absent")
            assert (await cache.get_statistics()).overall.hit_rate == 0.0
        ```
    """

    hit_rate: float


@dataclass(frozen=True, slots=True)
class EvictionStatistics:
    """Values that left the local tier, by reason.

    ``ttl``: expired; ``size`` / ``memory``: pushed out by ``max_size`` /
    ``max_memory``; ``explicit``: deleted or invalidated (here or on a peer).

    Examples:
        ```python
        import crdtcache

        async with crdtcache.Cache(backend="memory", max_size=2) as cache:
            for key in ("a", "b", "c"):
                await cache.set(key, key)
            await cache.delete("c")
            evictions = (await cache.get_statistics()).evictions
            assert (evictions.size, evictions.explicit) == (1, 1)
        ```
    """

    ttl: int = 0
    size: int = 0
    memory: int = 0
    explicit: int = 0


@dataclass(frozen=True, slots=True)
class PeerStatistics:
    """One peer as this node sees it (``state``: alive, suspect or dead).

    Examples:
        ```python
        import crdtcache

        async with crdtcache.Cache(backend="p2p", discovery="none", node_id="a") as a:
            async with crdtcache.Cache(
                backend="p2p", discovery="none", node_id="b", seeds=[a.address]
            ) as b:
                await b.wait_for_peers(1)
                (peer,) = (await b.get_statistics()).cluster.peers
                assert peer.id.startswith("a") and peer.state == "alive"
                assert peer.address == a.address
        ```
    """

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

    Examples:
        ```python
        import asyncio
        import crdtcache

        async with crdtcache.Cache(backend="p2p", discovery="none") as a:
            async with crdtcache.Cache(backend="p2p", discovery="none", seeds=[a.address]) as b:
                await b.wait_for_peers(1)
                await a.set("k", "v", ttl=60)
                while await b.get("k") is None:  # write-behind: within a batch or two
                    await asyncio.sleep(0.005)
                cluster = (await b.get_statistics()).cluster
                assert cluster.instances == 2 and cluster.last_sync_time is not None
                assert cluster.sync_latency_ms.samples == 1
        ```
    """

    instances: int
    peers: tuple[PeerStatistics, ...]
    last_sync_time: float | None
    sync_latency_ms: LatencyStatistics


@dataclass(frozen=True, slots=True)
class TrafficStatistics:
    """Peer traffic since start (zero without a network).

    Examples:
        ```python
        import crdtcache

        async with crdtcache.Cache(backend="p2p", discovery="none") as a:
            async with crdtcache.Cache(backend="p2p", discovery="none", seeds=[a.address]) as b:
                await b.wait_for_peers(1)
                traffic = (await b.get_statistics()).traffic
                assert traffic.frames_sent > 0 and traffic.bytes_received > 0
        ```
    """

    bytes_sent: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    frames_received: int = 0


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    """A snapshot of one cache's counters; :meth:`as_dict` for JSON.

    What ``await cache.get_statistics()`` returns.

    Examples:
        ```python
        import json
        import crdtcache

        async with crdtcache.Cache(backend="memory") as cache:
            await cache.set("k", "v")
            stats = await cache.get_statistics()
            print(stats.backend, stats.sync_strategy, stats.local.size)
            # memory write-behind 1
            assert json.loads(json.dumps(stats.as_dict()))["local"]["size"] == 1
        ```
    """

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
    """A 0-100 score (100: nothing wrong) and the reasons for each point taken off.

    What ``cache.health()`` returns (a plain method: it never waits or raises).

    Examples:
        >>> import crdtcache
        >>> crdtcache.Cache(backend="memory").health()  # not started
        Health(score=0, reasons=('not running',))
        >>> crdtcache.Health(85, ("-15: 1 peer(s) down: b",)).healthy
        True
    """

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
        """Lookups answered by either tier, over all lookups.

        Examples:
            ```python
            import crdtcache

            async with crdtcache.Cache(backend="memory") as cache:
                await cache.get("absent")
                assert (await cache.get_statistics()).overall.hit_rate == 0.0
            ```
        """
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
