"""Redis mode through a failover: a Redis Cluster primary or a Sentinel primary killed.

What must hold (see ``_runtime``'s "what a failover loses"): after the failover every
instance serves what the promoted replica holds and nothing else (their subscriptions
lapsed with the dead primary, so their hot tiers were dropped); write-behind writes
that were queued or in flight when it died reach the new primary; a write-through
write that returned with ``wait_replicas=1`` survives. What Redis's asynchronous
replication itself can lose -- a write the old primary acknowledged but had not yet
sent to the replica that was promoted -- is lost for every instance alike, and made
deterministic here with ``replication_stalled``.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from crdtcache import Cache, PeerError
from crdtcache.cache._cache import ABSENT
from tests.runtime.redis.redis_helpers import (
    eventually,
    redis_caches,
    runtime,
    sync_client,
    wait_for,
)
from tests.runtime.redis.topologies import (
    RedisClusterTopology,
    RedisSentinelTopology,
    replication_stalled,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

NAME = "failover"


async def in_redis(url: str, keys: list[str]) -> list[str]:
    """Those of ``keys`` whose record holds a value, read straight from Redis (in a
    thread: the instances' loops must not stall)."""

    def read() -> list[str]:
        client = sync_client(url)
        try:
            return [k for k in keys if client.hget(f"crdtcache:{{{NAME}}}:k:{k}", "v")]
        finally:
            client.close()

    return await asyncio.to_thread(read)


def serving(cache: Cache) -> bool:
    rt = runtime(cache)
    outbox = rt.protocol.outbox
    return rt.protocol.subscribed and not outbox.queued and not outbox.inflight


async def converged(caches: list[Cache], keys: list[str], timeout: float = 10.0) -> None:
    """Every instance serving, with nothing queued, and all reading the same values."""
    await wait_for(lambda: all(serving(c) for c in caches), timeout=timeout)
    for key in keys:
        first = await caches[0].get(key)
        for cache in caches[1:]:
            await eventually(lambda c=cache, k=key: c.get(k), first, timeout=timeout)  # type: ignore[misc]


async def writer(cache: Cache, prefix: str, log: dict[str, tuple[float, bool]]) -> None:
    """Write ``prefix:i`` = i until cancelled; log when each set was called and whether
    it returned without error."""
    i = 0
    while True:
        key = f"{prefix}:{i}"
        started = time.monotonic()
        try:
            await cache.set(key, i)
            log[key] = (started, True)
        except PeerError:
            log[key] = (started, False)
            await asyncio.sleep(0.01)
        i += 1
        await asyncio.sleep(0.002)


async def test_cluster_primary_killed_mid_run_every_instance_converges(
    redis_cluster: RedisClusterTopology,
) -> None:
    url = redis_cluster.url
    behind, through, reader = await redis_caches(
        3,
        url=[url, url + "?wait_replicas=1", url],
        cluster=NAME,
        sync_strategy=["write-behind", "write-through", "write-behind"],
    )
    caches = [behind, through, reader]
    behind_log: dict[str, tuple[float, bool]] = {}
    through_log: dict[str, tuple[float, bool]] = {}
    tasks = [
        asyncio.create_task(writer(behind, "b", behind_log)),
        asyncio.create_task(writer(through, "t", through_log)),
    ]
    try:
        await asyncio.sleep(0.5)
        for key in list(behind_log)[:20]:  # the reader holds some of them in its hot tier
            await reader.get(key)
        primary = redis_cluster.primary_for_key(f"crdtcache:{{{NAME}}}:patterns")
        killed_at = time.monotonic()
        report = await asyncio.to_thread(redis_cluster.kill_primary, primary)
        await wait_for(lambda: all(runtime(c).protocol.subscribed for c in caches), timeout=15)
        resubscribed = time.monotonic() - killed_at
        await asyncio.sleep(0.5)  # writes go on after the failover
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    try:
        keys = sorted({*behind_log, *through_log})
        await converged(caches, keys)
        for cache in caches:  # each lost its subscription and dropped its hot tier
            stats = runtime(cache).redis_statistics()
            assert stats.reconnects >= 1 and stats.hot_tier_drops >= 1
        # Write-through with wait_replicas=1: every set that returned is in Redis.
        returned = [k for k, (_, ok) in through_log.items() if ok]
        assert returned and await in_redis(url, returned) == returned
        # Write-behind: every write made once the primary was gone (queued, retried)
        # reached the new primary; earlier ones only if the replica had them.
        after = [k for k, (t, ok) in behind_log.items() if ok and t >= killed_at]
        assert after and await in_redis(url, after) == after
        for key in after + returned:
            assert await reader.get(key) == int(key.split(":")[1])
        print(
            f"cluster failover: promoted after {report.promoted_after:.2f} s, settled "
            f"{report.settled_after:.2f} s, all instances resubscribed {resubscribed:.2f} s "
            f"after the kill; {len(returned)} write-through and {len(after)} write-behind "
            "writes checked"
        )
    finally:
        for cache in caches:
            await cache.close()


async def test_cluster_failover_loses_what_redis_did_not_replicate_for_every_instance(
    redis_cluster: RedisClusterTopology,
) -> None:
    """The boundary, deterministic: the primary acknowledges writes its replica never
    gets (stalled), then dies. A write-through ``set`` returned (acknowledged) and is
    lost -- for its writer too, which held it; with ``wait_replicas=1`` the ``set``
    raised instead. What was replicated before the stall survives everywhere."""
    url = redis_cluster.url
    plain, guarded, reader = await redis_caches(
        3,
        url=[url, url + "?wait_replicas=1", url],
        cluster=NAME,
        sync_strategy="write-through",
    )
    caches = [plain, guarded, reader]
    try:
        await plain.set("safe", "kept")
        await guarded.set("guarded-safe", "kept")  # the replica confirmed it
        assert await reader.get("safe") == "kept"
        primary = redis_cluster.primary_for_key(f"crdtcache:{{{NAME}}}:patterns")
        (replica,) = redis_cluster.replicas_of(primary)
        redis_cluster.wait_replicated(primary)
        guarded.write_timeout = 0.5
        with replication_stalled(primary, replica, f"crdtcache:{{{NAME}}}:filler"):
            await plain.set("lost", "acknowledged")  # returns: Redis's primary took it
            assert plain._read("lost") == "acknowledged"
            assert await reader.get("lost") == "acknowledged"
            with pytest.raises(PeerError, match="wait_replicas"):
                await guarded.set("guarded-lost", "unconfirmed")
            assert runtime(guarded).redis_statistics().writes_unconfirmed == 1
            killed_at = time.monotonic()
            primary.kill()
        report = await asyncio.to_thread(redis_cluster.wait_promoted, primary, [replica], killed_at)
        await wait_for(lambda: all(serving(c) for c in caches), timeout=15)
        for cache in caches:
            assert cache._read("lost") is ABSENT  # no hot tier kept it
            assert await cache.get("lost") is None  # Redis lost it
            assert await cache.get("guarded-lost") is None
            assert await cache.get("safe") == "kept"
            assert await cache.get("guarded-safe") == "kept"
        assert any("replicas" in r for r in guarded.health().reasons)
        await plain.set("after", 1)  # and the cluster goes on
        assert await reader.get("after") == 1
        print(f"stalled-replica failover: promoted after {report.promoted_after:.2f} s")
    finally:
        for cache in caches:
            await cache.close()


async def test_sentinel_failover_instances_resubscribe_drop_hot_tiers_and_serve(
    redis_sentinel: RedisSentinelTopology,
) -> None:
    url = redis_sentinel.url
    a, b = await redis_caches(2, url=url, cluster=NAME)
    try:
        for i in range(10):
            await a.set(f"k{i}", i)
        for i in range(10):
            await eventually(lambda i=i: b.get(f"k{i}"), i)  # type: ignore[misc]
        assert b._read("k0") == 0  # held in b's hot tier
        await asyncio.to_thread(redis_sentinel.wait_replicated)
        runtime(a).writer.sync_interval = 0.5  # these wait in a's outbox through the kill
        queued = [f"queued{i}" for i in range(5)]
        for n, key in enumerate(queued):
            await a.set(key, n)
        killed_at = time.monotonic()
        kill = asyncio.create_task(asyncio.to_thread(redis_sentinel.kill_primary))
        await wait_for(lambda: not any(runtime(c).protocol.subscribed for c in (a, b)), 10)
        assert b._read("k0") is ABSENT  # the link lapsed: the hot tier is dropped
        with pytest.raises(PeerError, match="unreachable"):
            await a.set("refused", 1)  # nothing is applied while a cannot hear others
        report = await kill
        await wait_for(lambda: serving(a) and serving(b), timeout=15)
        resubscribed = time.monotonic() - killed_at
        assert runtime(b).redis_statistics().hot_tier_drops >= 1
        assert runtime(b).redis_statistics().reconnects >= 1
        for i in range(10):
            assert await b.get(f"k{i}") == i  # read again, from the new primary
        for n, key in enumerate(queued):  # retried until the new primary took them
            assert await b.get(key) == n
        assert await b.get("refused") is None
        await b.set("k0", "new")
        await eventually(lambda: a.get("k0"), "new")
        stats = await a.get_statistics()
        assert stats.cluster.instances == 2
        print(
            f"sentinel failover: promoted after {report.promoted_after:.2f} s, both "
            f"instances serving {resubscribed:.2f} s after the kill"
        )
    finally:
        for cache in (a, b):
            await cache.close()
