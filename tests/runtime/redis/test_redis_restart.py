"""A Redis of the test's own, killed and restarted: reconnection, resubscription, hot tiers."""

from __future__ import annotations

import pytest
import redis

from crdtcache import PeerError
from crdtcache.cache._cache import ABSENT
from tests.runtime.redis.redis_helpers import (
    RedisServer,
    alive_peers,
    eventually,
    redis_caches,
    runtime,
    wait_for,
)

# What a caller sees while Redis is down: a PeerError naming the server.
UNREACHABLE = r"Redis at redis://127.0.0.1:\d+/0 (is )?unreachable"


async def test_restart_reconnects_resubscribes_and_drops_hot_tiers(
    own_redis: RedisServer,
) -> None:
    a, b = await redis_caches(2, url=own_redis.url, cluster="c", sync_strategy="write-through")
    try:
        await a.set("k", "v1")
        assert await b.get("k") == "v1"
        assert b._read("k") == "v1"  # held in b's hot tier

        own_redis.kill()
        # Both pub/sub links break at once: no invalidation can arrive any more, so
        # the hot tiers go, and operations fail cleanly instead of serving guesses.
        await wait_for(
            lambda: not runtime(a).protocol.subscribed and not runtime(b).protocol.subscribed
        )
        assert b._read("k") is ABSENT
        with pytest.raises(PeerError, match=UNREACHABLE):
            await a.set("k", "v2")
        assert a._read("k") is ABSENT  # nothing half-written: not applied here either
        with pytest.raises(PeerError, match=UNREACHABLE):
            await b.get("k")
        with pytest.raises(PeerError, match=UNREACHABLE):
            await a.invalidate_pattern("*")
        assert any("unreachable" in r for r in b.health().reasons)
        assert not b.health().healthy

        own_redis.start()  # same port, empty: it kept nothing (--save "")
        await wait_for(
            lambda: runtime(a).protocol.subscribed and runtime(b).protocol.subscribed, timeout=10
        )
        assert (
            runtime(b).redis_statistics().reconnects == 1
            and runtime(a).redis_statistics().reconnects == 1
        )
        await wait_for(lambda: alive_peers(a) == 1 and alive_peers(b) == 1)
        # A copy kept across the outage would now be stale: Redis lost "v1".
        assert await b.get("k") is None
        await a.set("k", "v3")  # scripts reloaded (NOSCRIPT), announced, acknowledged
        assert await b.get("k") == "v3"
        await a.set("k", "v4")
        assert b._read("k") in ("v4", ABSENT)
        assert await b.get("k") == "v4"
        assert b.health().healthy
    finally:
        for cache in (a, b):
            await cache.close()


async def test_write_behind_writes_accepted_before_an_outage_reach_redis_after_it(
    own_redis: RedisServer,
) -> None:
    a, b = await redis_caches(2, url=own_redis.url, cluster="c")
    try:
        runtime(a).writer.sync_interval = 0.2
        await a.set("queued", 1)  # applied here, waiting for the next batch
        own_redis.kill()
        await wait_for(lambda: not runtime(a).protocol.subscribed)
        assert (
            runtime(a).protocol.outbox.queued or runtime(a).protocol.outbox.inflight
        )  # kept for later, not lost
        own_redis.start()
        await wait_for(
            lambda: runtime(a).protocol.subscribed and runtime(b).protocol.subscribed, timeout=10
        )
        await wait_for(
            lambda: (
                not runtime(a).protocol.outbox.queued and not runtime(a).protocol.outbox.inflight
            ),
            timeout=10,
        )
        await eventually(lambda: b.get("queued"), 1)
    finally:
        for cache in (a, b):
            await cache.close()


async def test_a_lost_subscription_alone_also_drops_the_hot_tier(own_redis: RedisServer) -> None:
    """Redis stays up, only the pub/sub connection dies: invalidations may have been
    missed, so the tier is dropped, and values read meanwhile are not kept."""
    a, b = await redis_caches(2, url=own_redis.url, cluster="c", sync_strategy="write-through")
    try:
        await a.set("k", "v1")
        assert await b.get("k") == "v1" and b._read("k") == "v1"
        admin = redis.Redis.from_url(own_redis.url)
        try:
            admin.client_kill_filter(_type="pubsub")
        finally:
            admin.close()
        await wait_for(lambda: runtime(b).redis_statistics().reconnects == 1, timeout=10)
        assert b._read("k") is ABSENT
        assert await b.get("k") == "v1"  # read from Redis again
        await a.set("k", "v2")
        assert await b.get("k") == "v2"
    finally:
        for cache in (a, b):
            await cache.close()
