"""get_statistics and health."""

from __future__ import annotations

import json

from crdtcache import Cache, CacheStatistics
from crdtcache.cache._statistics import LatencyWindow
from crdtcache.core import PeerEvent

from .conftest import FakeClock, memory_cache, remote_push


async def test_statistics_fields_and_rates(cache: Cache) -> None:
    await cache.set("a", 1)
    await cache.set("b", 2)
    for _ in range(3):
        await cache.get("a")
    await cache.get("zz")
    stats = await cache.get_statistics()
    assert isinstance(stats, CacheStatistics)
    assert (stats.local.hits, stats.local.misses, stats.local.size) == (3, 1, 2)
    assert stats.local.hit_rate == 0.75
    assert stats.overall.hit_rate == 0.75
    assert (stats.distributed.hits, stats.distributed.misses, stats.distributed.size) == (0, 0, 2)
    assert stats.distributed.hit_rate == 0.0
    assert stats.cluster.instances == 1
    assert stats.cluster.peers == ()
    assert stats.cluster.last_sync_time is None
    assert stats.traffic.bytes_sent == 0
    assert (stats.node_id, stats.backend, stats.sync_strategy) == ("me", "memory", "write-behind")
    as_dict = stats.as_dict()
    assert as_dict["local"]["hits"] == 3
    assert as_dict["evictions"] == {"ttl": 0, "size": 0, "memory": 0, "explicit": 0}
    json.dumps(as_dict)


async def test_peers_in_statistics(cache: Cache) -> None:
    remote_push(cache, {"k": 1}, origin="p1")
    remote_push(cache, {"j": 1}, origin="p2")
    assert cache._engine is not None
    cache._engine.peers["p2"].state = "suspect"
    stats = await cache.get_statistics()
    assert [(p.id, p.state, p.address) for p in stats.cluster.peers] == [
        ("p1", "alive", None),
        ("p2", "suspect", None),
    ]
    assert stats.cluster.instances == 3


def test_latency_window() -> None:
    window = LatencyWindow(size=100)
    assert window.summary().p50 is None
    for ms in range(1, 201):  # only the last 100 are kept
        window.add(float(ms))
    summary = window.summary()
    assert (summary.p50, summary.p99, summary.samples) == (150.0, 200.0, 100)
    assert window.count == 200


async def test_health_of_a_quiet_cache_is_full(cache: Cache) -> None:
    health = cache.health()
    assert (health.score, health.reasons, health.healthy) == (100, (), True)


async def test_health_not_running() -> None:
    cache = memory_cache()
    assert cache.health().score == 0
    assert cache.health().reasons == ("not running",)


async def test_health_deductions(clock: FakeClock) -> None:
    async with memory_cache(clock, max_size=10) as cache:
        for i in range(200):
            await cache.set(f"k{i}", i)  # constant eviction pressure
            await cache.get(f"missing{i}")  # and a poor hit rate
        remote_push(cache, {"old": 1}, origin="slow", at=clock.now - 5)  # 5 s behind
        assert cache._engine is not None
        cache._on_peer(PeerEvent("slow", "dead", "alive"))
        cache._engine.peers["slow"].state = "dead"
        cache._engine.stats.refused_drift = 2
        cache._engine.stats.events_dropped = 1
        cache._counters.ack_failures = 1
        health = cache.health()
    text = " | ".join(health.reasons)
    for words in [
        "down: slow",
        "sync latency",
        "hit rate",
        "local tier is small",
        "clock drift",
        "not acknowledged",
        "events dropped",
    ]:
        assert words in text
    assert 0 <= health.score < 70 and not health.healthy
