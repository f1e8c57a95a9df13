"""The multi-node behaviour of the cache API, run against both backends: p2p and redis.

Moving from p2p to Redis is configuration: every test here builds its instances with
``Backend.start`` and then uses nothing but the public API (plus ``_read``, the local
tier's hit path, to tell what an instance holds locally).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from crdtcache import (
    Cache,
    CacheEvent,
    EventBus,
    InvalidationRule,
    PeerError,
    SyncCache,
)
from crdtcache.cache._cache import ABSENT
from crdtcache.core import Push
from tests.runtime.redis.redis_helpers import eventually, redis_caches, runtime, wait_for


class Backend:
    """Starts instances of one backend and knows its few backend-specific levers."""

    def __init__(self, name: str, request: pytest.FixtureRequest) -> None:
        self.name = name
        self.request = request
        self.caches: list[Cache] = []
        self._redis: dict[str, Any] | None = None

    def options(self) -> dict[str, Any]:
        """What a cache of this backend is configured with (the only difference)."""
        if self.name == "p2p":
            return {"backend": "p2p", "discovery": "none"}
        if self._redis is None:
            topology = self.name.partition("-")[2] or "single"
            url = self.request.getfixturevalue(f"{topology}_redis_url")
            name = self.request.getfixturevalue("cache_cluster")(url)
            self._redis = {"backend": "redis", "redis_url": url, "cluster": name}
        return dict(self._redis)

    async def start(self, count: int = 2, **options: Any) -> list[Cache]:
        if self.name.startswith("redis"):
            base = self.options()
            caches = await redis_caches(
                count, url=base["redis_url"], cluster=base["cluster"], **options
            )
        else:
            caches = []
            for i in range(count):
                per_node = {k: v[i] if isinstance(v, list) else v for k, v in options.items()}
                seeds = [caches[0].address] if caches else []
                cache = Cache(**self.options(), node_id=f"n{i}", seeds=seeds, **per_node)
                await cache.start()
                self.fast(cache)
                caches.append(cache)
            await wait_for(
                lambda: all(len(c._engine.live_peers()) == count - 1 for c in caches)  # type: ignore[union-attr]
            )
        self.caches += caches
        return caches

    async def join(self, **options: Any) -> Cache:
        """One more instance, started, that finds the others by itself."""
        if self.name.startswith("redis"):
            cache = Cache(**self.options(), node_id="late", **options)
        else:
            seeds = [self.caches[0].address or ""] if self.caches else []
            cache = Cache(**self.options(), node_id="late", seeds=seeds, **options)
        await cache.start()
        if self.name == "p2p":
            self.fast(cache)
        self.caches.append(cache)
        return cache

    @staticmethod
    def fast(cache: Cache) -> None:
        engine = cache._engine
        assert engine is not None
        engine.config = dataclasses.replace(
            engine.config, heartbeat_interval=0.05, suspect_after=0.2, dead_after=0.4
        )

    def deafen(self, cache: Cache) -> None:
        """Make ``cache`` apply (and acknowledge) no remote write from now on."""
        if self.name.startswith("redis"):
            runtime(cache).protocol.receive_invalidation = lambda msg, now: None  # type: ignore[method-assign]
            return
        engine = cache._engine
        assert engine is not None
        handle = engine.handle

        def deaf(sender: str, message: Any, now: float) -> Any:
            return [] if isinstance(message, Push) else handle(sender, message, now)

        engine.handle = deaf  # type: ignore[method-assign]

    async def close(self) -> None:
        for cache in self.caches:
            await cache.close()


@pytest.fixture(
    params=[
        "p2p",
        "redis",
        pytest.param("redis-cluster", marks=pytest.mark.slow),
        pytest.param("redis-sentinel", marks=pytest.mark.slow),
    ]
)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    b = Backend(request.param, request)
    yield b
    await b.close()


@pytest.fixture
async def pair(backend: Backend) -> list[Cache]:
    return await backend.start(2)


async def test_a_write_is_readable_on_b(pair: list[Cache]) -> None:
    a, b = pair
    await a.set("user:1", {"name": "Alice"}, ttl=60)
    await eventually(lambda: b.get("user:1"), {"name": "Alice"})
    await b.set("user:2", 2)
    await eventually(lambda: a.keys("user:*"), ["user:1", "user:2"])
    assert await b.delete("user:1") is True
    await eventually(lambda: a.get("user:1"), None)
    assert await a.delete("user:1") is False


async def test_invalidate_reaches_the_other_local_tier(pair: list[Cache]) -> None:
    a, b = pair
    await a.set("k", "v1")
    await eventually(lambda: b.get("k"), "v1")
    assert b._read("k") == "v1"  # held in b's local tier now
    removed: list[CacheEvent] = []
    b.on("delete", removed.append)
    assert await a.invalidate("k") is True
    await wait_for(lambda: b._read("k") is ABSENT)
    assert await b.get("k") is None
    await wait_for(lambda: bool(removed))
    assert (removed[0].key, removed[0].origin, removed[0].remote) == ("k", a.node_id, True)


async def test_pattern_invalidation_reaches_the_other_local_tier(pair: list[Cache]) -> None:
    a, b = pair
    for i in range(5):
        await a.set(f"p:{i}", i)
    await a.set("q", "kept")
    for i in range(5):
        await eventually(lambda i=i: b.get(f"p:{i}"), i)  # type: ignore[misc]
    await eventually(lambda: b.get("q"), "kept")
    seen: list[CacheEvent] = []
    b.on("invalidate", seen.append)
    await a.invalidate_pattern("p:*")
    await wait_for(lambda: all(b._read(f"p:{i}") is ABSENT for i in range(5)))
    assert b._read("q") == "kept"
    await wait_for(lambda: len(seen) == 5)
    assert {(e.pattern, e.remote, e.origin) for e in seen} == {("p:*", True, a.node_id)}
    await eventually(lambda: b.keys(), ["q"])
    await eventually(lambda: a.keys(), ["q"])
    await b.clear()
    await eventually(lambda: a.keys(), [])
    await wait_for(lambda: a._read("q") is ABSENT)


async def test_write_through_leaves_no_stale_copy(backend: Backend) -> None:
    a, b, c = await backend.start(3, sync_strategy="write-through")
    await a.set("k", "old")
    # Returned only once every other instance applied it: no waiting needed.
    assert await b.get("k") == "old" and await c.get("k") == "old"
    assert b._read("k") == "old"  # b holds it locally
    await a.set("k", "new")
    assert b._read("k") in ("new", ABSENT)  # never the old copy
    assert await b.get("k") == "new" and await c.get("k") == "new"
    await b.invalidate("k")
    assert a._read("k") is ABSENT and await c.get("k") is None
    stats = await a.get_statistics()
    assert stats.write_ack_ms.samples == 2 and stats.write_ack_ms.p50 is not None


async def test_write_through_names_the_instances_that_did_not_ack(backend: Backend) -> None:
    a, b = await backend.start(2, sync_strategy="write-through")
    backend.deafen(b)
    a.write_timeout = 0.2
    with pytest.raises(PeerError, match=b.node_id.split("~")[0]) as info:
        await a.set("k", 1)
    assert "applied on this node" in str(info.value)
    assert await a.get("k") == 1  # stays applied here
    assert any("not acknowledged" in r for r in a.health().reasons)
    # get_or_set logs the timeout instead: the value is what the caller wants.
    assert await a.get_or_set("j", lambda: 2) == 2


async def test_remote_events_and_statistics(pair: list[Cache]) -> None:
    a, b = pair
    seen: list[CacheEvent] = []
    b.on("set", seen.append)
    await a.set("k", 1)
    await wait_for(lambda: bool(seen))
    # Without persist_path a given node id gets a per-start suffix.
    assert a.node_id.split("~")[0] in ("n0", "r0") and "~" in a.node_id
    assert (seen[0].key, seen[0].origin, seen[0].remote) == ("k", a.node_id, True)
    await eventually(lambda: b.get("k"), 1)
    assert await b.get("k") == 1
    stats = await b.get_statistics()
    assert stats.backend == backend_of(b)
    assert stats.cluster.instances == 2
    assert [(p.id, p.state) for p in stats.cluster.peers] == [(a.node_id, "alive")]
    assert stats.cluster.peers[0].address == a.address
    assert stats.cluster.sync_latency_ms.samples >= 1
    assert stats.cluster.last_sync_time is not None
    assert stats.traffic.frames_received > 0 and stats.traffic.bytes_sent > 0
    # The second read is a local hit on both backends; the first was local (p2p: the
    # value was pushed) or distributed (redis: fetched into the hot tier).
    assert stats.local.hits >= 1
    assert stats.local.hits + stats.distributed.hits >= 2
    assert stats.overall.hit_rate > 0
    assert stats.distributed.size == 1
    assert stats.as_dict()["cluster"]["instances"] == 2


def backend_of(cache: Cache) -> str:
    return cache._config.backend


async def test_peer_up_and_down_events(backend: Backend) -> None:
    (a,) = await backend.start(1)
    ups: list[CacheEvent] = []
    downs: list[CacheEvent] = []
    a.on("peer_up", ups.append)
    a.on("peer_down", downs.append)
    b = await backend.join()
    await wait_for(lambda: bool(ups))
    assert ups[0].peer == b.node_id
    await b.close()
    await wait_for(lambda: bool(downs), timeout=5)
    assert downs[0].peer == b.node_id
    # b left with a goodbye: it is forgotten, not held against a's health.
    assert not any(b.node_id in r for r in a.health().reasons)
    assert (await a.get_statistics()).cluster.instances == 1


async def test_an_event_on_one_instance_invalidates_every_instance(backend: Backend) -> None:
    bus = EventBus()
    rules = [InvalidationRule(event="user:updated", pattern="user:{id}")]
    a, b = await backend.start(2, event_bus=[bus, None], invalidation_rules=[rules, ()])
    await b.set("user:7", {"v": 1})
    await eventually(lambda: a.get("user:7"), {"v": 1})
    await eventually(lambda: b.get("user:7"), {"v": 1})
    await bus.emit("user:updated", {"data": {"id": 7}})  # only a listens
    await eventually(lambda: b.get("user:7"), None)


async def test_an_evicted_value_is_served_again(backend: Backend) -> None:
    bound = "local_max_size" if backend.name.startswith("redis") else "max_size"
    a, b = await backend.start(2, **{bound: [10_000, 2]})
    events: list[CacheEvent] = []
    b.on("eviction", events.append)
    for key in "abcd":
        await a.set(key, key.upper())
    if backend.name == "p2p":  # values are pushed to b
        await eventually(lambda: b.keys(), ["a", "b", "c", "d"])
    else:  # values enter b's hot tier when b reads them
        for key in "abcd":
            await eventually(lambda key=key: b.get(key), key.upper())  # type: ignore[misc]
    await wait_for(lambda: b._tier.count == 2)
    assert {e.reason for e in events} == {"size"}
    # (Looked up without _read, which would count hits and mark the keys recently used.)
    evicted = [k for k in "abcd" if (e := b._entries.get(k)) is None or not e.held]
    assert len(evicted) == 2
    before = (await b.get_statistics()).distributed.hits
    assert await b.get(evicted[0]) == evicted[0].upper()
    assert (await b.get_statistics()).distributed.hits == before + 1
    assert await a.get(evicted[0]) == evicted[0].upper()  # a never lost it


async def test_a_remote_value_the_schema_refuses_is_not_served(backend: Backend) -> None:
    a, b = await backend.start(2, schema=[None, lambda v: isinstance(v, int)])
    await a.set("good", 1)
    await a.set("bad", "text")
    await eventually(lambda: b.get("good"), 1)
    await eventually(lambda: a.keys(), ["bad", "good"])
    assert await b.get("bad") is None
    assert (await b.get_statistics()).refused_values >= 1


async def test_get_or_set_fills_once_for_the_cluster(pair: list[Cache]) -> None:
    a, b = pair
    calls = 0

    async def load() -> dict[str, int]:
        nonlocal calls
        calls += 1
        return {"total": 42}

    assert await a.get_or_set("report", load, ttl=30) == {"total": 42}
    await eventually(lambda: b.get("report"), {"total": 42})
    assert await b.get_or_set("report", load) == {"total": 42}
    assert calls == 1


def test_sync_caches_replicate(backend: Backend) -> None:
    options = backend.options()
    with SyncCache(**options, node_id="s0") as s0:
        more = {"seeds": [s0.address]} if backend.name == "p2p" else {}
        with SyncCache(**options, node_id="s1", **more) as s1:
            s0.set("k", [1, 2])
            deadline = time.monotonic() + 5
            while s1.get("k") is None and time.monotonic() < deadline:
                time.sleep(0.005)
            assert s1.get("k") == [1, 2]
            s1.delete("k")
            deadline = time.monotonic() + 5
            while s0.get("k") is not None and time.monotonic() < deadline:
                time.sleep(0.005)
            assert s0.get("k") is None
