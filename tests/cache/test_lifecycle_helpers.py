"""warm_up, refresh, the cached decorator."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from typing import Any

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
        assert await _refresh_round(cache) == 1
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
            assert await _refresh_round(cache) == 0
        assert (await cache.get("boom"), await cache.get("odd")) == (1, 2)
        assert "source down" in caplog.text and "cannot be stored" in caplog.text


async def test_refresh_does_not_resurrect_a_key_deleted_meanwhile(clock: FakeClock) -> None:
    async def reload(key: str) -> int:
        await cache.delete(key)  # deleted while the reload was in flight
        return 2

    async with memory_cache(clock, refresh=reload, refresh_interval=3600) as cache:
        await cache.set("k", 1)
        assert await _refresh_round(cache) == 0
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
    # async def: a plain def on an async Cache is refused (test_cached_keeps_the_kind).
    @cached(cache)
    async def square(x: int) -> int:
        return x * x

    @cached(cache, key=lambda x: f"cube:{x}")
    async def cube(x: int) -> int:
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


def test_cached_keeps_the_kind(cache: Cache) -> None:
    async def load(x: int) -> int:
        return x

    wrapper = cached(cache)(load)
    assert inspect.iscoroutinefunction(wrapper)
    assert inspect.signature(wrapper) == inspect.signature(load)

    def plain(x: int) -> int:
        return x

    with pytest.raises(ConfigError, match=r"async def.*plain\b.*SyncCache"):
        cached(cache)(plain)

    class AsyncCallable:
        async def __call__(self, x: int) -> int:
            return x

    assert inspect.iscoroutinefunction(cached(cache, key="c:{x}")(AsyncCallable()))
    assert inspect.iscoroutinefunction(cached(cache, key="p:{x}")(functools.partial(load)))

    async def stream(x: int) -> Any:
        yield x

    with pytest.raises(ConfigError, match="generator"):
        cached(cache)(stream)


async def test_cached_template_errors_name_the_argument(cache: Cache) -> None:
    async def load_user(user_id: int) -> int:
        return user_id

    with pytest.raises(ConfigError, match=r"names 'uid', which is not an argument of .*load_user"):
        cached(cache, key="user:{uid}")(load_user)
    for positional in ("user:{}", "user:{0}"):
        with pytest.raises(ConfigError, match="must name an argument"):
            cached(cache, key=positional)(load_user)
    with pytest.raises(ConfigError, match="not a format string"):
        cached(cache, key="user:{user_id")(load_user)

    @cached(cache, key="q:{region}:{term}")
    async def search(term: str, **filters: str) -> str:
        return term

    assert await search("x", region="eu") == "x"
    assert await cache.keys("q:*") == ["q:eu:x"]
    with pytest.raises(ConfigError, match="needs argument 'region'"):
        await search("x")

    @cached(cache, key="u:{user.id}")
    async def greet(user: object) -> str:
        return "hi"

    with pytest.raises(ConfigError, match=r"'u:\{user.id\}' cannot be formatted.*AttributeError"):
        await greet(object())
    with pytest.raises(TypeError):
        await greet()  # type: ignore[call-arg]  # a wrong call fails as the function would


async def test_cached_key_and_invalidate(cache: Cache) -> None:
    calls = 0

    @cached(cache, key="user:{user_id}")
    async def load_user(user_id: int, verbose: bool = False) -> dict[str, int]:
        nonlocal calls
        calls += 1
        return {"id": user_id}

    assert load_user.key(7) == load_user.key(user_id=7, verbose=True) == "user:7"
    assert await load_user(7) == {"id": 7}
    assert await load_user(7) == {"id": 7}
    assert calls == 1
    assert await load_user.invalidate(7) is True
    assert await cache.get("user:7") is None
    assert await load_user(7) == {"id": 7}
    assert calls == 2
    assert await load_user.invalidate(8) is False  # nothing cached for that call

    @cached(cache)
    async def square(x: int) -> int:
        return x * x

    assert await square(3) == 9
    assert await cache.keys() == sorted([square.key(3), "user:7"])
    assert square.key(x=3).endswith(".square:x=3")

    @cached(cache, key=lambda x: 5)  # type: ignore[arg-type, return-value]  # a wrong key
    async def odd(x: int) -> int:
        return x

    with pytest.raises(ConfigError, match="returned int, not str"):
        odd.key(1)


async def _refresh_round(cache: Cache) -> int:
    """One refresh round now (instead of waiting for ``refresh_interval``)."""
    assert cache._refresher is not None
    return await cache._refresher.round()
