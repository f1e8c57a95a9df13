"""Cache events (``on``) and ``on_change``: what fires, with what, and robustness."""

from __future__ import annotations

import asyncio
import logging

import pytest

from crdtcache import Cache, CacheEvent, ChangeEvent, ConfigError
from crdtcache.core import PeerEvent

from .conftest import FakeClock, memory_cache, remote_push


def record(cache: Cache, *names: str) -> list[CacheEvent]:
    seen: list[CacheEvent] = []
    for name in names:
        cache.on(name, seen.append)
    return seen


async def test_hit_miss_set_delete_invalidate_events(cache: Cache) -> None:
    seen = record(cache, "hit", "miss", "set", "delete", "invalidate")
    await cache.set("k", 1)
    await cache.get("k")
    await cache.get("nope")
    await cache.delete("k")
    await cache.set("j", 1)
    await cache.invalidate("j")
    await cache.set("p:1", 1)
    await cache.invalidate_pattern("p:*")
    assert [(e.name, e.key) for e in seen] == [
        ("set", "k"),
        ("hit", "k"),
        ("miss", "nope"),
        ("delete", "k"),
        ("set", "j"),
        ("invalidate", "j"),
        ("set", "p:1"),
        ("invalidate", "p:1"),
    ]
    assert seen[1].source == "local"
    assert seen[0].origin == "me" and seen[0].remote is False
    assert seen[-1].pattern == "p:*"


async def test_eviction_events_for_explicit_removals(cache: Cache) -> None:
    seen = record(cache, "eviction")
    await cache.set("a", 1)
    await cache.delete("a")
    await cache.delete("never-there")
    await cache.set("b", 1)
    await cache.clear()
    assert [(e.key, e.reason) for e in seen] == [("a", "explicit"), ("b", "explicit")]
    assert (await cache.get_statistics()).evictions.explicit == 2


async def test_expire_event_when_collected(clock: FakeClock) -> None:
    changes: list[ChangeEvent] = []
    async with memory_cache(clock, on_change=changes.append) as cache:
        seen = record(cache, "expire", "eviction")
        await cache.set("k", 1, ttl=1)
        clock.advance(10)
        assert cache._runtime is not None
        cache._runtime.tick()  # type: ignore[attr-defined]  # LocalRuntime: collect now
    assert [(e.name, e.key, e.reason) for e in seen] == [
        ("eviction", "k", "ttl"),
        ("expire", "k", None),
    ]
    assert [c.operation for c in changes] == ["set", "expire"]


async def test_on_change_reports_local_and_remote(clock: FakeClock) -> None:
    changes: list[ChangeEvent] = []
    async with memory_cache(clock, node_id="me", on_change=changes.append) as cache:
        await cache.set("k", 1)
        await cache.invalidate("k")
        remote_push(cache, {"r": 2}, origin="peer")
        await cache.invalidate_pattern("r*")
    assert [(c.key, c.operation, c.origin, c.remote) for c in changes] == [
        ("k", "set", "me", False),
        ("k", "invalidate", "me", False),
        ("r", "set", "peer", True),
        ("r", "invalidate", "me", False),
    ]
    assert changes[-1].pattern == "r*"
    assert changes[0].ts > 0


async def test_remote_changes_fire_events_and_time_sync_latency(
    cache: Cache, clock: FakeClock
) -> None:
    seen = record(cache, "set")
    remote_push(cache, {"r": 1}, origin="peer", at=clock.now - 0.004)
    assert seen[0].remote is True and seen[0].origin == "peer"
    stats = await cache.get_statistics()
    assert stats.cluster.sync_latency_ms.samples == 1
    assert stats.cluster.sync_latency_ms.p50 == pytest.approx(4.0, abs=1.0)
    assert stats.cluster.last_sync_time == clock.now


async def test_async_callbacks_are_run(cache: Cache) -> None:
    done = asyncio.Event()

    async def callback(event: CacheEvent) -> None:
        done.set()

    cache.on("set", callback)
    await cache.set("k", 1)
    await asyncio.wait_for(done.wait(), 1)


async def test_raising_callbacks_are_logged_not_raised(
    cache: Cache, caplog: pytest.LogCaptureFixture
) -> None:
    def bad(event: CacheEvent) -> None:
        raise RuntimeError("boom")

    async def bad_async(event: CacheEvent) -> None:
        raise RuntimeError("async boom")

    good: list[CacheEvent] = []
    cache.on("set", bad)
    cache.on("set", bad_async)
    cache.on("set", good.append)
    with caplog.at_level(logging.ERROR):
        await cache.set("k", 1)
        await asyncio.sleep(0.01)
    assert await cache.get("k") == 1
    assert len(good) == 1
    assert "boom" in caplog.text and "async boom" in caplog.text


async def test_on_change_that_raises_does_not_break_writes(clock: FakeClock) -> None:
    def bad(change: ChangeEvent) -> None:
        raise ValueError("nope")

    async with memory_cache(clock, on_change=bad) as cache:
        await cache.set("k", 1)
        assert await cache.get("k") == 1


async def test_unsubscribe(cache: Cache) -> None:
    seen: list[CacheEvent] = []
    unsubscribe = cache.on("set", seen.append)
    await cache.set("a", 1)
    unsubscribe()
    unsubscribe()  # idempotent
    await cache.set("b", 1)
    assert [e.key for e in seen] == ["a"]


async def test_on_validates(cache: Cache) -> None:
    with pytest.raises(ConfigError, match="unknown event"):
        cache.on("hits", print)
    with pytest.raises(ConfigError, match="callable"):
        cache.on("hit", "not callable")  # type: ignore[arg-type]


async def test_pending_callback_tasks_are_cancelled_at_close(clock: FakeClock) -> None:
    started = asyncio.Event()

    async def slow(event: CacheEvent) -> None:
        started.set()
        await asyncio.sleep(60)

    cache = memory_cache(clock)
    await cache.start()
    cache.on("set", slow)
    await cache.set("k", 1)
    await started.wait()
    await asyncio.wait_for(cache.close(), 2)


async def test_peer_events(cache: Cache) -> None:
    seen = record(cache, "peer_up", "peer_down")
    cache._on_peer(PeerEvent("p1", "alive", None))
    cache._on_peer(PeerEvent("p1", "suspect", "alive"))
    cache._on_peer(PeerEvent("p1", "alive", "suspect"))  # recovered: not a new peer
    cache._on_peer(PeerEvent("p1", "dead", "alive"))
    cache._on_peer(PeerEvent("p1", "alive", "dead"))
    assert [(e.name, e.peer) for e in seen] == [
        ("peer_up", "p1"),
        ("peer_down", "p1"),
        ("peer_up", "p1"),
    ]
    assert seen[0].address is None
