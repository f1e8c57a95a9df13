"""get_or_set: cache-aside with single flight."""

from __future__ import annotations

import asyncio

import pytest

from crdtcache import Cache, ConfigError, SerializationError


async def test_loads_once_for_concurrent_callers(cache: Cache) -> None:
    calls = 0

    async def loader() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        return {"n": 42}

    results = await asyncio.gather(*(cache.get_or_set("k", loader) for _ in range(10)))
    assert calls == 1
    assert results == [{"n": 42}] * 10
    results[0]["n"] = 0  # each caller has its own copy
    assert results[1] == {"n": 42}
    assert await cache.get("k") == {"n": 42}
    assert await cache.get_or_set("k", loader) == {"n": 42}
    assert calls == 1


async def test_sync_loader_and_ttl(cache: Cache, clock) -> None:  # type: ignore[no-untyped-def]
    assert await cache.get_or_set("k", lambda: "v", ttl=5) == "v"
    clock.advance(6)
    assert await cache.get_or_set("k", lambda: "w", ttl=5) == "w"


async def test_loader_error_reaches_every_waiter_and_is_not_cached(cache: Cache) -> None:
    calls = 0

    async def loader() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise LookupError("db down")

    results = await asyncio.gather(
        *(cache.get_or_set("k", loader) for _ in range(5)), return_exceptions=True
    )
    assert calls == 1
    assert all(isinstance(r, LookupError) for r in results)
    assert await cache.get_or_set("k", lambda: 1) == 1


async def test_unstorable_loaded_value_raises(cache: Cache) -> None:
    with pytest.raises(SerializationError):
        await cache.get_or_set("k", lambda: object())
    assert await cache.get("k") is None


async def test_bad_ttl_is_refused_before_loading(cache: Cache) -> None:
    called = False

    def loader() -> int:
        nonlocal called
        called = True
        return 1

    with pytest.raises(ConfigError):
        await cache.get_or_set("k", loader, ttl=-1)
    assert not called


async def test_cancelled_leader_lets_a_waiter_load(cache: Cache) -> None:
    calls = 0
    gate = asyncio.Event()

    async def loader() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            await gate.wait()  # the first load never finishes: its caller is cancelled
        return calls

    leader = asyncio.ensure_future(cache.get_or_set("k", loader))
    await asyncio.sleep(0.01)
    waiter = asyncio.ensure_future(cache.get_or_set("k", loader))
    await asyncio.sleep(0.01)
    leader.cancel()
    assert await asyncio.wait_for(waiter, 1) == 2
    with pytest.raises(asyncio.CancelledError):
        await leader


async def test_cancelled_waiter_does_not_disturb_the_leader(cache: Cache) -> None:
    async def loader() -> int:
        await asyncio.sleep(0.02)
        return 7

    leader = asyncio.ensure_future(cache.get_or_set("k", loader))
    await asyncio.sleep(0.005)
    waiter = asyncio.ensure_future(cache.get_or_set("k", loader))
    await asyncio.sleep(0.005)
    waiter.cancel()
    assert await leader == 7
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_counts_a_miss_then_hits(cache: Cache) -> None:
    await cache.get_or_set("k", lambda: 1)
    await cache.get_or_set("k", lambda: 1)
    stats = await cache.get_statistics()
    assert (stats.local.hits, stats.local.misses) == (1, 1)
