"""warm_up, refresh, the cached decorator."""

from __future__ import annotations

import asyncio
import logging

import pytest

from crdtcache import Cache, ConfigError, cached

from .conftest import FakeClock, memory_cache, remote_push


async def test_warm_up_sync_and_async(clock: FakeClock) -> None:
    async def fill(cache: Cache) -> None:
        await cache.set("warm", 1)

    async with memory_cache(clock, warm_up=fill) as cache:
        assert await cache.get("warm") == 1

    pending: list[asyncio.Future[None]] = []

    def fill_sync(cache: Cache) -> None:
        pending.append(asyncio.ensure_future(cache.set("later", 2)))

    async with memory_cache(clock, warm_up=fill_sync) as cache:
        await asyncio.sleep(0)
        assert await cache.get("later") == 2


async def test_failing_warm_up_is_logged(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(cache: Cache) -> None:
        raise RuntimeError("warm-up bug")

    with caplog.at_level(logging.ERROR):
        async with memory_cache(clock, warm_up=broken) as cache:
            await cache.set("k", 1)
    assert "warm-up bug" in caplog.text


async def test_refresh_round_reloads_own_live_keys(clock: FakeClock) -> None:
    loads: list[str] = []

    async def reload(key: str) -> str:
        loads.append(key)
        return key.upper()

    async with memory_cache(clock, refresh=reload, refresh_interval=3600) as cache:
        await cache.set("a", "old")
        await cache.set("b", "old", ttl=1)
        await cache.set("gone", "old")
        await cache.delete("gone")
        remote_push(cache, {"theirs": "old"})
        clock.advance(2)
        assert await cache._refresh_round() == 1
        assert loads == ["a"]
        assert await cache.get("a") == "A"
        assert await cache.get("theirs") == "old"


async def test_refresh_errors_keep_the_value(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def reload(key: str) -> object:
        if key == "boom":
            raise RuntimeError("source down")
        return object()  # cannot be stored

    async with memory_cache(clock, refresh=reload, refresh_interval=3600) as cache:
        await cache.set("boom", 1)
        await cache.set("odd", 2)
        with caplog.at_level(logging.WARNING):
            assert await cache._refresh_round() == 0
        assert (await cache.get("boom"), await cache.get("odd")) == (1, 2)
        assert "source down" in caplog.text and "cannot be stored" in caplog.text


async def test_refresh_does_not_resurrect_a_key_deleted_meanwhile(clock: FakeClock) -> None:
    async def reload(key: str) -> int:
        await cache.delete(key)  # deleted while the reload was in flight
        return 2

    async with memory_cache(clock, refresh=reload, refresh_interval=3600) as cache:
        await cache.set("k", 1)
        assert await cache._refresh_round() == 0
        assert await cache.get("k") is None


async def test_refresh_runs_periodically() -> None:
    loads: list[str] = []
    async with memory_cache(refresh=lambda k: loads.append(k) or 1, refresh_interval=0.01) as cache:
        await cache.set("k", 0)
        for _ in range(100):
            if len(loads) >= 2:
                break
            await asyncio.sleep(0.01)
        assert len(loads) >= 2
        assert await cache.get("k") == 1


async def test_cached_decorator_with_a_template(cache: Cache) -> None:
    calls = 0

    @cached(cache, key="user:{user_id}", ttl=60)
    async def load_user(user_id: int, verbose: bool = False) -> dict[str, int]:
        nonlocal calls
        calls += 1
        return {"id": user_id}

    assert await load_user(1) == {"id": 1}
    assert await load_user(user_id=1) == {"id": 1}
    assert await load_user(2) == {"id": 2}
    assert calls == 2
    assert await cache.keys() == ["user:1", "user:2"]
    assert load_user.__name__ == "load_user"


async def test_cached_default_and_callable_keys(cache: Cache) -> None:
    @cached(cache)
    def square(x: int) -> int:
        return x * x

    @cached(cache, key=lambda x: f"cube:{x}")
    def cube(x: int) -> int:
        return x**3

    assert await square(3) == 9
    assert await cube(2) == 8
    assert await cache.keys() == sorted(
        ["cube:2", f"{__name__}.test_cached_default_and_callable_keys.<locals>.square:x=3"]
    )


def test_cached_validation(cache: Cache) -> None:
    with pytest.raises(ConfigError):
        cached(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        cached(cache, key=5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        cached(cache, ttl=-1)
