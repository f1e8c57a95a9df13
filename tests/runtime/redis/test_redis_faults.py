"""Faults on a Redis of the test's own: lost scripts, a server that stops answering."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from crdtcache import Cache, PeerError
from crdtcache.cache._cache import ABSENT
from tests.runtime.redis.redis_helpers import (
    RedisServer,
    eventually,
    redis_caches,
    runtime,
    wait_for,
)


def admin(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url)


async def test_scripts_flushed_from_the_server_are_sent_again(own_redis: RedisServer) -> None:
    (a,) = await redis_caches(1, url=own_redis.url, cluster="c", sync_strategy="write-through")
    client = admin(own_redis)
    try:
        client.script_flush()
        await a.set("k", 1)  # EVALSHA answers NOSCRIPT; EVAL follows
        assert client.hget("crdtcache:{c}:k:k", "v") is not None
        client.script_flush()
        assert await a.keys() == ["k"]
        client.script_flush()
        runtime(a).writer.sync_interval = 0.001
        await a.set("j", 2)  # the same through a pipeline (NOSCRIPT per call, then EVAL)
        await wait_for(lambda: client.hget("crdtcache:{c}:k:j", "v") is not None)
        assert runtime(a).redis_statistics().scripts_loaded >= 3
    finally:
        client.close()
        await a.close()


async def test_a_write_redis_does_not_answer_in_time_is_dropped_here(
    own_redis: RedisServer,
) -> None:
    a, b = await redis_caches(2, url=own_redis.url, cluster="c", sync_strategy="write-through")
    client = admin(own_redis)
    try:
        a.write_timeout = 0.3
        client.execute_command("CLIENT", "PAUSE", 800, "WRITE")  # scripts wait, reads go on
        with pytest.raises(PeerError, match=r"did not answer within 0.3 s"):
            await a.set("k", "maybe")
        assert a._read("k") is ABSENT  # not left applied here
        # The outcome in Redis is unknown to the writer: the script may still run when
        # the pause ends, or be discarded with the connection the writer gave up. Either
        # way the instances agree with Redis afterwards.
        await asyncio.sleep(0.7)
        stored = client.hget("crdtcache:{c}:k:k", "v")
        expected = None if stored is None else "maybe"
        await eventually(lambda: b.get("k"), expected)
        await eventually(lambda: a.get("k"), expected)
    finally:
        client.close()
        for cache in (a, b):
            await cache.close()


async def test_a_read_redis_does_not_answer_in_time_raises(own_redis: RedisServer) -> None:
    (a,) = await redis_caches(1, url=own_redis.url, cluster="c")
    client = admin(own_redis)
    try:
        a.fetch_timeout = 0.2
        client.execute_command("CLIENT", "PAUSE", 600, "ALL")
        with pytest.raises(PeerError, match=r"did not answer within 0.2 s"):
            await a.get("k")
        await asyncio.sleep(0.7)
        await wait_for(lambda: runtime(a).protocol.subscribed, timeout=10)
        assert await a.get("k", "default") == "default"
    finally:
        client.close()
        await a.close()


async def test_instances_are_reported_to_metrics(own_redis: RedisServer) -> None:
    counts: list[int] = []

    class Recorder:
        def hit(self, source: str) -> None: ...
        def miss(self) -> None: ...
        def eviction(self, reason: str) -> None: ...
        def sync_latency(self, seconds: float) -> None: ...
        def peers(self, count: int) -> None:
            counts.append(count)

    metrics: Any = Recorder()
    (a,) = await redis_caches(1, url=own_redis.url, cluster="c", metrics=metrics)
    try:
        b = Cache(backend="redis", redis_url=own_redis.url, cluster="c", node_id="b")
        await b.start()
        await wait_for(lambda: counts[-1:] == [1])
        await b.close()
        await wait_for(lambda: counts[-1:] == [0])
    finally:
        await a.close()
