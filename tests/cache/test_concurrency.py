"""Concurrent callers of one cache, and of several nodes: nothing lost, one winner.

Threads call a :class:`SyncCache` (the shape of a WSGI app), so increments and adds
really interleave. Before ``incr`` existed, 8 threads x 250 increments through a
read-then-write adapter ended at 418, not 2000.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from crdtcache import SyncCache
from tests.backends import caches_on, wait_for

THREADS = 8
INCREMENTS = 250
SINGLE = ["memory", "p2p", "redis"]


def hammer(call: Callable[[], Any], threads: int = THREADS, times: int = 1) -> list[Any]:
    """``call()`` from ``threads`` threads at once, ``times`` each; every result."""
    start = threading.Barrier(threads)

    def worker() -> list[Any]:
        start.wait()
        return [call() for _ in range(times)]

    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(worker) for _ in range(threads)]
        return [r for f in futures for r in f.result()]


def sync_cache(backend: str, cluster: str | None = None, **options: Any) -> SyncCache:
    if backend == "redis":
        options.update(redis_url=redis_url(), cluster=cluster or "default")
    elif backend == "p2p":
        options.setdefault("discovery", "none")
    return SyncCache(backend=backend, **options)


def redis_url() -> str:
    from tests.runtime.redis.redis_helpers import REDIS_URL, reachable, unavailable

    problem = reachable(REDIS_URL)
    if problem is not None:
        unavailable(f"no Redis at {REDIS_URL}: {problem}")
    return REDIS_URL


@pytest.fixture
def cluster() -> Any:
    from tests.runtime.redis.redis_helpers import REDIS_URL, delete_cluster

    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    delete_cluster(REDIS_URL, name)


@pytest.mark.parametrize("backend", SINGLE)
def test_eight_threads_incrementing_one_node_count_every_increment(
    backend: str, cluster: str
) -> None:
    with sync_cache(backend, cluster) as cache:
        results = hammer(lambda: cache.incr("hits"), times=INCREMENTS)
        assert cache.get("hits") == THREADS * INCREMENTS
        # Every caller saw a different count: no two increments were merged into one.
        assert sorted(results) == list(range(1, THREADS * INCREMENTS + 1))


@pytest.mark.parametrize("backend", SINGLE)
def test_of_eight_threads_adding_one_key_exactly_one_wins(backend: str, cluster: str) -> None:
    with sync_cache(backend, cluster) as cache:
        for round_ in range(5):
            key = f"lock:{round_}"
            results = hammer(lambda key=key: cache.add(key, threading.get_ident(), ttl=30))
            assert sorted(results) == [False] * (THREADS - 1) + [True]


def test_three_p2p_nodes_incrementing_concurrently_converge_to_every_increment() -> None:
    first = sync_cache("p2p", node_id="n0")
    first.start()
    try:
        others = [sync_cache("p2p", node_id=f"n{i}", seeds=[first.address]) for i in range(1, 3)]
        for node in others:
            node.start()
        caches = [first, *others]
        try:
            for cache in caches:
                cache.wait_for_peers(2, timeout=10)
            results = hammer(
                lambda: [c.incr("hits") for c in caches], threads=THREADS, times=INCREMENTS
            )
            assert len(results) == THREADS * INCREMENTS
            total = 3 * THREADS * INCREMENTS
            asyncio.run(wait_for(lambda: all(c.get("hits") == total for c in caches), 20))
        finally:
            for node in others:
                node.close()
    finally:
        first.close()


async def test_two_redis_instances_adding_one_key_exactly_one_wins() -> None:
    async with caches_on("redis-pair", sync_strategy="write-behind") as (a, b):
        for round_ in range(20):
            key = f"lock:{round_}"
            results = await asyncio.gather(
                *(cache.add(key, cache.node_id, ttl=30) for cache in (a, b, a, b))
            )
            assert sorted(results) == [False, False, False, True], results
            winner = await a.get(key)
            assert await b.get(key) == winner


async def test_two_p2p_nodes_adding_at_once_both_win_and_keep_one_value() -> None:
    """The documented limit of p2p add: no consensus, so both are told True."""
    async with caches_on("p2p-pair", sync_strategy="write-behind") as (a, b):
        assert await asyncio.gather(a.add("k", "a"), b.add("k", "b")) == [True, True]
        await wait_for(lambda: a._read("k") == b._read("k") and a._read("k") in ("a", "b"))
