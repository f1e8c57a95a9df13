"""A read-only view of one cache, for the dashboard and other tools.

Nothing outside the cache layer reaches into a cache's private members: what a tool
may read is here, typed, and none of it changes the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crdtcache.cache._events import CacheEvent
from crdtcache.cache._options import CacheOptions
from crdtcache.cache._statistics import CacheStatistics, Health, LatencyStatistics
from crdtcache.core import PeerInfo
from crdtcache.core._hlc import ts_ms
from crdtcache.metrics import Metrics

if TYPE_CHECKING:
    from crdtcache.cache._cache import Cache

__all__ = ["CacheView", "PeerRow", "peer_rows"]


@dataclass(frozen=True, slots=True)
class PeerRow:
    """One peer (p2p) or other instance (redis) as this node sees it.

    ``behind_ms``: how far this node's mark for the peer trails the newest write it
    has seen from it (None when unknown); ``last_write_ms``: how long ago that write
    was stamped; ``last_heard_ms``: since the peer was last heard (in redis mode: since
    the instance's last heartbeat in Redis or message). In redis mode ``address`` is the host and
    process id the instance stored with its heartbeat.
    """

    id: str
    address: str | None
    state: str
    linked: bool
    last_heard_ms: int | None
    behind_ms: int | None
    last_write_ms: int | None


class CacheView:
    """Read-only access to a cache (see module doc). Cheap to make: one per use."""

    __slots__ = ("_cache",)

    def __init__(self, cache: Cache) -> None:
        self._cache = cache

    @property
    def node_id(self) -> str:
        """The node's id."""
        return self._cache.node_id

    @property
    def address(self) -> str | None:
        """``host:port`` the node listens on (None without a network)."""
        return self._cache.address

    @property
    def options(self) -> CacheOptions:
        """The cache's validated options (frozen)."""
        return self._cache._config

    @property
    def metrics(self) -> Metrics | None:
        """The exporter given as ``metrics=``, if any."""
        return self._cache._config.metrics

    @property
    def memory_bytes(self) -> int:
        """Bytes of keys and values held here (what ``max_memory`` bounds)."""
        return self._cache._tier.nbytes

    async def statistics(self) -> CacheStatistics:
        """``Cache.get_statistics()``."""
        return await self._cache.get_statistics()

    def health(self) -> Health:
        """``Cache.health()``."""
        return self._cache.health()

    def on(self, event: str, callback: Callable[[CacheEvent], Any]) -> Callable[[], None]:
        """``Cache.on()``: events are read-only too."""
        return self._cache.on(event, callback)

    @property
    def sync_samples(self) -> int:
        """Replication latency samples taken since start."""
        return self._cache._counters.sync_window.count

    def sync_latency_since(self, samples: int) -> LatencyStatistics:
        """Replication latency percentiles of the samples taken after ``samples``."""
        return self._cache._counters.sync_window.since(samples)

    def peers(self, now: float) -> Sequence[PeerRow]:
        """Every peer or instance with its state and lag, sorted by id."""
        cache = self._cache
        parts = cache._parts
        if parts is None:
            return ()
        stats = parts.runtime.statistics()
        addresses = {p.id: p.address for p in stats.peers}
        engine_peers = parts.engine.peers
        if not engine_peers:  # redis mode: instances, known from their heartbeats
            return tuple(
                PeerRow(p.id, p.label, p.state, True, _age_ms(p.last_heard, now), None, None)
                for p in stats.peers
            )
        replica = parts.replica
        return peer_rows(engine_peers.values(), addresses, replica.marks, replica.high, now)


def _age_ms(at: float | None, now: float) -> int | None:
    return None if at is None else max(0, round((now - at) * 1000.0))


def peer_rows(
    peers: Iterable[PeerInfo],
    addresses: Mapping[str, str | None],
    marks: Mapping[str, int],
    high: Mapping[str, int],
    now: float,
) -> tuple[PeerRow, ...]:
    """One row per gossip peer, sorted by id, with its lag figures (see :class:`PeerRow`).

    ``marks`` and ``high`` are the replica's: per origin, up to where everything is
    held, and the newest write seen.
    """
    now_ms = now * 1000.0
    rows = []
    for p in sorted(peers, key=lambda p: p.id):
        seen = high.get(p.id)
        mark = marks.get(p.id)
        if seen is None:
            behind: int | None = 0
        elif mark is None:
            behind = None
        else:
            behind = max(0, ts_ms(seen) - ts_ms(mark))
        rows.append(
            PeerRow(
                p.id,
                addresses.get(p.id),
                p.state,
                p.linked,
                max(0, round(now_ms - p.last_heard * 1000.0)),
                behind,
                None if seen is None else max(0, round(now_ms - ts_ms(seen))),
            )
        )
    return tuple(rows)
