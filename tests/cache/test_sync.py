"""SyncCache: the blocking API, used from threads."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from crdtcache import (
    CacheError,
    CacheEvent,
    ConfigError,
    PeerError,
    SyncCache,
    ValidationError,
    cached,
)


@pytest.fixture
def sync_cache() -> Iterator[SyncCache]:
    with SyncCache(backend="memory", node_id="s") as cache:
        yield cache


def test_basic_operations(sync_cache: SyncCache) -> None:
    c = sync_cache
    assert (c.node_id, c.address) == ("s", None)
    c.set("user:1", {"name": "A"}, ttl=60)
    c.set("user:2", 2)
    assert c.get("user:1") == {"name": "A"}
    assert c.get("nope", "d") == "d"
    assert c.keys("user:*") == ["user:1", "user:2"]
    assert c.delete("user:2") is True
    assert c.invalidate("user:1") is True
    c.set("a", 1)
    c.set("b", 1)
    assert c.invalidate_pattern("a*") == 1
    assert c.clear() == 1
    assert c.keys() == []
    stats = c.get_statistics()
    assert stats.local.hits == 1 and stats.local.misses == 1
    assert c.health().score == 100
    assert "SyncCache" in repr(c)


def test_no_aliasing(sync_cache: SyncCache) -> None:
    sync_cache.set("k", {"l": [1]})
    got = sync_cache.get("k")
    got["l"].append(2)
    assert sync_cache.get("k") == {"l": [1]}


def test_local_hits_are_served_in_the_calling_thread(sync_cache: SyncCache) -> None:
    sync_cache.set("k", "v")
    loop = sync_cache._loop
    assert loop is not None
    blocked = threading.Event()
    release = threading.Event()

    def block() -> None:
        blocked.set()
        release.wait(5)

    loop.call_soon_threadsafe(block)
    blocked.wait(5)
    try:
        assert sync_cache.get("k") == "v"  # answered while the loop thread is busy
    finally:
        release.set()


def test_concurrent_readers_and_writers(sync_cache: SyncCache) -> None:
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        for i in range(200):
            sync_cache.set(f"k{i % 20}", {"n": n, "i": i})

    def reader() -> None:
        for i in range(2000):
            value = sync_cache.get(f"k{i % 20}")
            if value is not None and set(value) != {"n", "i"}:
                errors.append(AssertionError(value))

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(writer, n) for n in range(3)] + [
            pool.submit(reader) for _ in range(5)
        ]
        for f in futures:
            f.result()
    assert not errors
    stats = sync_cache.get_statistics()
    assert stats.local.hits + stats.local.misses == 5 * 2000


def test_get_or_set_single_flight_across_threads(sync_cache: SyncCache) -> None:
    calls = 0
    lock = threading.Lock()

    def loader() -> list[int]:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(0.05)
        return [1, 2]

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: sync_cache.get_or_set("k", loader), range(10)))
    assert calls == 1
    assert results == [[1, 2]] * 10
    results[0].append(3)
    assert results[1] == [1, 2]


def test_get_or_set_errors_and_async_loader(sync_cache: SyncCache) -> None:
    def broken() -> int:
        raise KeyError("nope")

    with pytest.raises(KeyError):
        sync_cache.get_or_set("k", broken)

    async def async_loader() -> int:
        await asyncio.sleep(0)
        return 5

    assert sync_cache.get_or_set("k", async_loader) == 5
    with pytest.raises(ConfigError):
        sync_cache.get_or_set("j", lambda: 1, ttl=-5)


def test_schema_errors_propagate() -> None:
    with SyncCache(backend="memory", schema=lambda v: isinstance(v, int)) as c:
        with pytest.raises(ValidationError):
            c.set("k", "text")
        with pytest.raises(ValidationError):
            c.get_or_set("k", lambda: "text")


def test_hit_events_reach_callbacks_in_the_loop_thread(sync_cache: SyncCache) -> None:
    seen: list[tuple[str, str | None, int]] = []
    got = threading.Event()

    def on_hit(event: CacheEvent) -> None:
        seen.append((event.name, event.source, threading.get_ident()))
        got.set()

    sync_cache.on("hit", on_hit)
    sync_cache.set("k", 1)
    sync_cache.get("k")
    assert got.wait(2)
    assert seen[0][:2] == ("hit", "local")
    assert sync_cache._thread is not None and seen[0][2] == sync_cache._thread.ident


def test_calling_from_the_loop_thread_is_refused(sync_cache: SyncCache) -> None:
    errors: list[BaseException] = []
    done = threading.Event()

    def on_set(event: CacheEvent) -> None:
        try:
            sync_cache.set("other", 1)
        except CacheError as exc:
            errors.append(exc)
        done.set()

    sync_cache.on("set", on_set)
    sync_cache.set("k", 1)
    assert done.wait(2)
    assert "own event-loop thread" in str(errors[0])


def test_lifecycle() -> None:
    cache = SyncCache(backend="memory")
    with pytest.raises(CacheError, match="not started"):
        cache.set("k", 1)
    cache.start()
    cache.start()
    cache.set("k", 1)
    cache.close()
    cache.close()
    with pytest.raises(CacheError, match="the cache is closed"):
        cache.get("k")


def test_a_closed_sync_cache_says_closed() -> None:
    cache = SyncCache(backend="memory")
    cache.start()
    cache.close()
    for call in (lambda: cache.set("k", 1), cache.get_statistics, lambda: cache.keys()):
        with pytest.raises(CacheError, match=r"^the cache is closed$"):
            call()
    with pytest.raises(CacheError, match="closed cache cannot be restarted"):
        cache.start()
    never_started = SyncCache(backend="memory")
    never_started.close()  # final, as Cache.close() is
    with pytest.raises(CacheError, match="closed cache cannot be restarted"):
        never_started.start()


def test_health_is_available_in_every_state_like_the_async_cache() -> None:
    cache = SyncCache(backend="memory")
    assert cache.health() == cache._cache.health()  # what Cache.health() says unstarted
    assert (cache.health().score, cache.health().reasons) == (0, ("not running",))
    with cache:
        assert cache.health().score == 100
        from_callback: list[int] = []
        cache.on("set", lambda event: from_callback.append(cache.health().score))
        cache.set("k", 1)
        deadline = time.monotonic() + 5
        while not from_callback and time.monotonic() < deadline:
            time.sleep(0.005)
        assert from_callback == [100]  # in the loop thread, no deadlock, no error
    assert cache.health().reasons == ("not running",)


def test_wait_for_peers() -> None:
    with SyncCache(backend="p2p", discovery="none", node_id="w0") as first:
        with pytest.raises(PeerError, match="0 of 1 peers"):
            first.wait_for_peers(1, timeout=0.05)
        assert first.address is not None
        with SyncCache(backend="p2p", discovery="none", node_id="w1", seeds=[first.address]):
            assert first.wait_for_peers(1, timeout=10) == 1
    with pytest.raises(CacheError, match="closed"):
        first.wait_for_peers()


def test_start_failure_stops_the_thread() -> None:
    cache = SyncCache(backend="p2p", discovery="none", listen="203.0.113.1:1")
    before = threading.active_count()
    with pytest.raises(CacheError):
        cache.start()
    assert threading.active_count() == before


def test_a_failed_start_leaves_no_task_behind(caplog: pytest.LogCaptureFixture) -> None:
    # The examples' second start on taken ports printed "Task was destroyed but it is
    # pending!" per instance: what a failed start left running died with the loop.
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        cache = SyncCache(
            backend="p2p", discovery="static", listen=f"127.0.0.1:{port}", seeds=["127.0.0.1:9"]
        )
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            with pytest.raises(PeerError):
                cache.start()
            gc.collect()
    assert "destroyed but it is pending" not in caplog.text


def test_warm_up_and_refresh_run_outside_the_loop_thread() -> None:
    threads: list[int] = []

    def warm(c: SyncCache) -> None:
        threads.append(threading.get_ident())
        c.set("w", 1)

    def refresh(key: str) -> int:
        threads.append(threading.get_ident())
        return 2

    with SyncCache(backend="memory", warm_up=warm, refresh=refresh, refresh_interval=0.01) as c:
        assert c.get("w") == 1
        deadline = time.monotonic() + 2
        while c.get("w") != 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.get("w") == 2
        assert c._thread is not None
        assert threads[0] == threading.get_ident()
        assert c._thread.ident not in threads


def test_failing_warm_up_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def warm(c: SyncCache) -> None:
        raise RuntimeError("warm failure")

    with SyncCache(backend="memory", warm_up=warm) as c:
        c.set("k", 1)
    assert "warm failure" in caplog.text
    with pytest.raises(ConfigError):
        SyncCache(backend="memory", warm_up=5)


def test_cached_with_a_sync_cache(sync_cache: SyncCache) -> None:
    calls = 0

    @cached(sync_cache, key="sq:{x}")
    def square(x: int) -> int:
        nonlocal calls
        calls += 1
        return x * x

    assert square(4) == 16
    assert square(4) == 16
    assert calls == 1


def test_cached_with_a_sync_cache_keeps_the_kind_and_can_invalidate(
    sync_cache: SyncCache,
) -> None:
    calls = 0

    @cached(sync_cache, key="sq:{x}")
    def square(x: int) -> int:
        nonlocal calls
        calls += 1
        return x * x

    assert not inspect.iscoroutinefunction(square)
    assert square.key(4) == square.key(x=4) == "sq:4"
    assert square(4) == 16
    assert square.invalidate(4) is True
    assert sync_cache.get("sq:4") is None
    assert square(4) == 16
    assert calls == 2

    async def fetch(x: int) -> int:
        return x

    with pytest.raises(ConfigError, match=r"plain def.*async.*async Cache"):
        cached(sync_cache)(fetch)
    with pytest.raises(ConfigError, match="names 'y'"):
        cached(sync_cache, key="sq:{y}")(square)


def test_invalidation_rule_event_emitted_in_another_loop() -> None:
    from crdtcache import EventBus, InvalidationRule

    bus = EventBus()
    with SyncCache(
        backend="memory", event_bus=bus, invalidation_rules=[InvalidationRule("u", "user:{id}")]
    ) as c:
        c.set("user:1", 1)
        asyncio.run(bus.emit("u", {"id": 1}))  # a different loop, in this thread
        assert c.get("user:1") is None
