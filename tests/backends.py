"""Caches on every backend, for tests that hold on all of them.

``BACKENDS`` names the setups: ``memory``, ``p2p`` (one node), ``p2p-pair`` (two nodes,
write-through, so the second has every write when the first returns), ``redis`` and
``redis-pair`` (two instances of one cluster on the test server; skipped without it,
a failure in CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from crdtcache import Cache
from crdtcache.runtime.redis._runtime import RedisRuntime
from tests.runtime.redis.redis_helpers import (
    REDIS_URL,
    delete_cluster,
    reachable,
    redis_caches,
    unavailable,
)

BACKENDS = ["memory", "p2p", "p2p-pair", "redis", "redis-pair"]


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.005)


async def p2p_caches(count: int, **options: Any) -> list[Cache]:
    """``count`` started p2p caches on loopback that all see each other."""
    caches: list[Cache] = []
    try:
        for i in range(count):
            seeds = [caches[0].address or ""] if caches else []
            cache = Cache(backend="p2p", discovery="none", node_id=f"n{i}", seeds=seeds, **options)
            await cache.start()
            caches.append(cache)
        await wait_for(
            lambda: all(
                c._engine is not None and len(c._engine.live_peers()) == count - 1 for c in caches
            )
        )
    except BaseException:
        for cache in caches:
            await cache.close()
        raise
    return caches


@contextlib.asynccontextmanager
async def caches_on(backend: str, **options: Any) -> AsyncIterator[list[Cache]]:
    """Started caches of ``backend`` (one of :data:`BACKENDS`), closed afterwards."""
    cluster: str | None = None
    saved = (RedisRuntime.heartbeat_interval, RedisRuntime.heartbeat_ttl)
    if backend == "memory":
        caches = [Cache(backend="memory", **options)]
        await caches[0].start()
    elif backend == "p2p":
        caches = await p2p_caches(1, **options)
    elif backend == "p2p-pair":
        options.setdefault("sync_strategy", "write-through")
        caches = await p2p_caches(2, **options)
    elif backend in ("redis", "redis-pair"):
        problem = reachable(REDIS_URL)
        if problem is not None:
            unavailable(f"no Redis at {REDIS_URL}: {problem}")
        cluster = f"test-{uuid.uuid4().hex[:10]}"
        # Instances see each other within tens of milliseconds.
        RedisRuntime.heartbeat_interval, RedisRuntime.heartbeat_ttl = 0.05, 0.3
        if backend == "redis-pair":
            options.setdefault("sync_strategy", "write-through")
        caches = await redis_caches(
            2 if backend == "redis-pair" else 1, url=REDIS_URL, cluster=cluster, **options
        )
    else:
        raise ValueError(f"unknown backend {backend!r}")
    try:
        yield caches
    finally:
        for cache in caches:
            await cache.close()
        RedisRuntime.heartbeat_interval, RedisRuntime.heartbeat_ttl = saved
        if cluster is not None:
            delete_cluster(REDIS_URL, cluster)
