"""add, incr and touch in redis mode: the ADD, INCR and TOUCH scripts and their answers.

Redis decides these, so they hold across instances; each answer the scripts give is
driven here against the real server: 64-bit arithmetic in Lua (whose numbers are
doubles), every msgpack width of an int, expiries kept or replaced, records a pattern
tombstone covers, pattern tombstones the caller has not loaded, stamps Redis holds
newer, and stamps too far ahead of the server's clock.
"""

from __future__ import annotations

import asyncio
import time

import msgpack
import pytest
import redis

from crdtcache import PeerError, ValidationError
from crdtcache.runtime.redis._messages import parse_stamp, stamp_text
from tests.runtime.redis.redis_helpers import eventually, redis_caches, runtime

INT64_MAX = (1 << 63) - 1


def record(cluster: str, key: str) -> str:
    return f"crdtcache:{{{cluster}}}:k:{key}"


@pytest.mark.parametrize(
    "start", [0, 5, 127, -1, -32, -33, 200, -200, 70_000, -70_000, 1 << 40, -(1 << 40)]
)
async def test_incr_counts_exactly_from_every_msgpack_width(
    redis_url: str, cluster: str, start: int
) -> None:
    (cache,) = await redis_caches(1, url=redis_url, cluster=cluster)
    try:
        await cache.set("n", start)
        assert await cache.incr("n", 3) == start + 3
        assert await cache.decr("n", 10) == start - 7
        cache._replica.entries.clear()  # type: ignore[union-attr]  # read it from Redis
        assert await cache.get("n") == start - 7
    finally:
        await cache.close()


async def test_incr_is_exact_beyond_2_53_and_refuses_to_overflow_64_bits(
    redis_url: str, cluster: str
) -> None:
    (cache,) = await redis_caches(1, url=redis_url, cluster=cluster)
    try:
        await cache.set("n", (1 << 53) + 1)
        assert await cache.incr("n", 2) == (1 << 53) + 3  # a double would say 2**53 + 4
        await cache.set("max", INT64_MAX - 1)
        assert await cache.incr("max") == INT64_MAX
        with pytest.raises(ValidationError, match="64 bits"):
            await cache.incr("max")
        assert await cache.get("max") == INT64_MAX
        assert await cache.decr("min", INT64_MAX) == -INT64_MAX
        assert await cache.decr("min") == -INT64_MAX - 1
        with pytest.raises(ValidationError, match="64 bits"):
            await cache.decr("min")
        await cache.set("u64", 1 << 63)  # msgpack uint64: no int64 holds it
        with pytest.raises(ValidationError, match="not an int"):
            await cache.incr("u64")
        with pytest.raises(ValidationError, match="delta of 64 bits"):
            await cache.incr("n", 1 << 70)
    finally:
        await cache.close()


async def test_incr_keeps_the_record_s_expiry_and_ttl_in_redis(
    redis_url: str, cluster: str, sync_redis: redis.Redis
) -> None:
    (cache,) = await redis_caches(1, url=redis_url, cluster=cluster)
    try:
        await cache.set("n", 1, ttl=100)
        runtime(cache).writer.sync_interval = 0  # written at once
        await cache.incr("n")
        name = record(cluster, "n")
        before = sync_redis.hget(name, "x")
        ttl = sync_redis.pttl(name)
        assert await cache.incr("n", ttl=5) == 3
        assert sync_redis.hget(name, "x") == before
        assert sync_redis.pttl(name) <= ttl
        assert await cache.incr("fresh", ttl=5) == 1
        assert float(sync_redis.hget(record(cluster, "fresh"), "x")) <= time.time() + 5
        assert sync_redis.pttl(record(cluster, "fresh")) > 0
    finally:
        await cache.close()


async def test_touch_rewrites_the_expiry_and_stamp_but_not_the_value(
    redis_url: str, cluster: str, sync_redis: redis.Redis
) -> None:
    a, b = await redis_caches(2, url=redis_url, cluster=cluster, sync_strategy="write-through")
    try:
        await a.set("k", "v" * 100, ttl=5)
        assert await b.get("k") == "v" * 100  # b holds a copy
        name = record(cluster, "k")
        stamp = parse_stamp(sync_redis.hget(name, "s"))
        assert await a.touch("k", 1000)
        assert parse_stamp(sync_redis.hget(name, "s")) > stamp
        assert sync_redis.hget(name, "v") == msgpack.packb("v" * 100)
        assert sync_redis.pttl(name) > 900_000
        # b's copy took the new expiry from the announcement (value inline), no read
        await eventually(lambda: b.ttl("k"), pytest.approx(1000, abs=5))
        assert await a.touch("k", None)
        assert sync_redis.pttl(name) == -1 and sync_redis.hget(name, "x") is None
        assert await b.ttl("k") is None
    finally:
        for cache in (a, b):
            await cache.close()


async def test_a_record_a_pattern_tombstone_covers_counts_as_absent(
    redis_url: str, cluster: str, sync_redis: redis.Redis
) -> None:
    (cache,) = await redis_caches(1, url=redis_url, cluster=cluster)
    try:
        await cache.invalidate_pattern("user:*")
        tomb = next(iter(cache._replica.patterns.values()))  # type: ignore[union-attr]
        # A record written before the tombstone that its cleanup has not deleted yet.
        for key in ("user:1", "user:2", "user:3"):
            sync_redis.hset(
                record(cluster, key),
                mapping={"s": stamp_text(tomb.ts - 1, "old"), "v": msgpack.packb(41)},
            )
        assert await cache.add("user:1", "new")
        assert await cache.incr("user:2") == 1
        assert not await cache.touch("user:3", 10)
    finally:
        await cache.close()


async def test_a_pattern_tombstone_not_loaded_yet_is_loaded_first(
    redis_url: str, cluster: str, sync_redis: redis.Redis
) -> None:
    (cache,) = await redis_caches(1, url=redis_url, cluster=cluster)
    try:
        await cache.set("user:1", "old")
        runtime(cache).writer.sync_interval = 0
        await cache.ttl("user:1")  # written and read back: in Redis now
        await asyncio.sleep(0.05)
        # Another instance's tombstone whose announcement never arrived here.
        patterns = f"crdtcache:{{{cluster}}}:patterns"
        newer = stamp_text(runtime(cache).engine.replica.clock.tick(time.time() + 0.5), "x")
        sync_redis.hset(patterns, mapping={"p:user:*": newer, "": newer})
        sync_redis.hincrby(patterns, "#", 1)
        assert await cache.add("user:1", "after the tombstone")  # reloaded: covered, absent
        assert "user:*" in cache._replica.patterns  # type: ignore[union-attr]
        assert await cache.get("user:1") == "after the tombstone"
    finally:
        await cache.close()


async def test_a_newer_stamp_in_redis_makes_the_writer_stamp_above_it(
    redis_url: str, cluster: str, sync_redis: redis.Redis
) -> None:
    (cache,) = await redis_caches(1, url=redis_url, cluster=cluster)
    try:
        ahead = int((time.time() + 2) * 1000) << 16  # 2 s ahead: within max_drift
        sync_redis.delete(record(cluster, "gone"))
        sync_redis.hset(record(cluster, "gone"), mapping={"s": stamp_text(ahead, "other")})
        assert await cache.add("gone", 1)  # a tombstone, newer than this clock: retried
        assert parse_stamp(sync_redis.hget(record(cluster, "gone"), "s"))[0] > ahead
    finally:
        await cache.close()


async def test_a_stamp_too_far_ahead_of_the_server_is_refused(redis_url: str, cluster: str) -> None:
    (cache,) = await redis_caches(
        1, url=redis_url, cluster=cluster, _clock=lambda: time.time() + 600
    )
    try:
        for call in (cache.add("k", 1), cache.incr("k"), cache.touch("k", 1)):
            with pytest.raises(PeerError, match="max_drift"):
                await call
    finally:
        await cache.close()


class _HeldBatches:
    """Holds every batch sent to Redis until released (a slow link, controlled)."""

    def __init__(self, cache: object) -> None:
        self.commands = runtime(cache).commands  # type: ignore[arg-type]
        self._send = self.commands.pipeline_replicated
        self.release = asyncio.Event()
        self.held = 0
        self.commands.pipeline_replicated = self._held  # type: ignore[method-assign]

    async def _held(self, *args: object) -> object:
        self.held += 1
        await self.release.wait()
        return await self._send(*args)

    def restore(self) -> None:
        self.commands.pipeline_replicated = self._send  # type: ignore[method-assign]


async def _in_redis(cache: object, key: str) -> bool:
    """Whether this instance's writes of ``key`` have all landed in Redis."""
    outbox = runtime(cache).protocol.outbox  # type: ignore[arg-type]
    return key not in outbox.queued and key not in outbox.inflight


async def _write_behind_in_the_air(cache: object, held: _HeldBatches) -> None:
    """Wait until the write-behind task has taken the outbox and sent it (held)."""
    proto = runtime(cache).protocol  # type: ignore[arg-type]

    async def probe() -> tuple[int, bool]:
        return held.held, bool(proto.outbox)

    await eventually(probe, (1, False))


@pytest.mark.parametrize("op", ["add", "incr", "touch"])
async def test_a_conditional_write_waits_for_its_keys_write_behind_batch_in_the_air(
    redis_url: str, cluster: str, op: str
) -> None:
    # The write-behind task has taken a delete (or a set) out of the outbox and not
    # had Redis's answer: a conditional write of that key must not be decided by
    # Redis before it lands (an add after a delete refused, an incr after a set
    # counting from 0, a touch after a set finding nothing).
    (a,) = await redis_caches(1, url=redis_url, cluster=cluster, sync_interval=0.01)
    await a.set("k", 41)
    await eventually(lambda: _in_redis(a, "k"), True)
    held = _HeldBatches(a)
    try:
        if op == "add":
            await a.delete("k")
        else:
            await a.set("k", 42)
        await _write_behind_in_the_air(a, held)
        decided = asyncio.ensure_future(
            a.add("k", "new") if op == "add" else a.incr("k") if op == "incr" else a.touch("k", 60)
        )
        await asyncio.sleep(0.05)
        assert not decided.done()  # it waits for the batch in the air
        held.release.set()
        got = await asyncio.wait_for(decided, 10)
        held.restore()
        assert got == {"add": True, "incr": 43, "touch": True}[op]
    finally:
        held.release.set()
        await a.close()
