"""The local tier: bounds, CLOCK eviction, exact accounting, eviction events and stats."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from crdtcache import Cache, CacheEvent
from crdtcache.cache._tier import LocalTier
from crdtcache.core import NOT_HELD, TOMBSTONE, Entry, HybridClock, Replica, encode_value, pack_ts
from crdtcache.core._values import stored_size
from crdtcache.store._persistence import Persistence

from .conftest import FakeClock, memory_cache, remote_push

T = 1_700_000_000.0


def held(cache: Cache) -> dict[str, Entry]:
    return {k: e for k, e in cache._entries.items() if e.held}


def recounted(cache: Cache) -> tuple[int, int]:
    entries = held(cache)
    return len(entries), sum(len(k) + stored_size(e.value) for k, e in entries.items())


async def test_max_size_evicts_least_recently_used(clock: FakeClock) -> None:
    async with memory_cache(clock, max_size=3) as cache:
        events: list[CacheEvent] = []
        cache.on("eviction", events.append)
        for key in "abc":
            await cache.set(key, key)
        await cache.set("d", "d")  # none was read: the oldest write goes
        assert len(held(cache)) == 3
        assert [(e.key, e.reason) for e in events] == [("a", "size")]
        await cache.get("b")  # recently used: survives the next eviction
        await cache.set("e", "e")
        assert await cache.get("b") == "b"
        assert await cache.get("c") is None
        assert [e.key for e in events] == ["a", "c"]
        stats = await cache.get_statistics()
        assert stats.evictions.size == 2
        assert stats.local.size == 3


async def test_hot_key_survives_a_stream_of_cold_writes(clock: FakeClock) -> None:
    async with memory_cache(clock, max_size=50) as cache:
        await cache.set("hot", 1)
        for i in range(1000):
            await cache.set(f"cold:{i}", i)
            assert await cache.get("hot") == 1
        assert len(held(cache)) == 50


async def test_max_memory_bounds_bytes(clock: FakeClock) -> None:
    async with memory_cache(clock, max_size=None, max_memory=1000) as cache:
        reasons: list[str | None] = []
        cache.on("eviction", lambda e: reasons.append(e.reason))
        for i in range(50):
            await cache.set(f"k{i:02d}", "x" * 97)  # 3 + 97 = 100 bytes each
        assert cache._tier.nbytes <= 1000
        assert recounted(cache) == (cache._tier.count, cache._tier.nbytes) == (10, 1000)
        assert set(reasons) == {"memory"}
        assert (await cache.get_statistics()).evictions.memory == 40


async def test_memory_backend_forgets_evicted_keys(clock: FakeClock) -> None:
    async with memory_cache(clock, max_size=2) as cache:
        for key in "abcd":
            await cache.set(key, key)
        assert len(cache._entries) == 2  # no stub: no peer could serve it again
        assert len(await cache.keys()) == 2


async def test_expired_values_are_evicted_first(clock: FakeClock) -> None:
    async with memory_cache(clock, max_size=3) as cache:
        reasons: list[tuple[str | None, str | None]] = []
        cache.on("eviction", lambda e: reasons.append((e.key, e.reason)))
        await cache.set("a", 1)
        await cache.set("short", 1, ttl=1)
        await cache.set("c", 1)
        for key in ("a", "short", "c"):
            await cache.get(key)  # every key marked recently used
        clock.advance(2)
        await cache.set("d", 1)
        assert reasons == [("short", "ttl")]  # a mark does not spare an expired value
        assert await cache.get("a") == 1
        assert (await cache.get_statistics()).evictions.ttl == 1


async def test_eviction_when_every_key_is_marked_still_progresses(clock: FakeClock) -> None:
    async with memory_cache(clock, max_size=10) as cache:
        for i in range(10):
            await cache.set(f"k{i}", i)
        cache._tier.bits[:] = bytes([cache._tier.epoch]) * len(cache._tier.bits)
        await cache.set("new", 1)
        assert cache._tier.count == 10


async def test_accounting_stays_exact_through_every_kind_of_change(clock: FakeClock) -> None:
    async with memory_cache(clock, max_size=30) as cache:
        rng = random.Random(7)
        for step in range(600):
            key = f"k{rng.randrange(60)}"
            op = rng.random()
            if op < 0.5:
                await cache.set(key, "v" * rng.randrange(20), ttl=rng.choice([None, 1, 5]))
            elif op < 0.6:
                await cache.delete(key)
            elif op < 0.65:
                await cache.invalidate_pattern(f"k{rng.randrange(6)}*")
            elif op < 0.75:
                remote_push(cache, {key: "remote"}, origin=f"p{rng.randrange(3)}")
            elif op < 0.8:
                clock.advance(2)
                assert cache._runtime is not None
                cache._runtime.tick()  # type: ignore[attr-defined]
            else:
                await cache.get(key)
            await asyncio.sleep(0)  # let scheduled evictions run
            assert (cache._tier.count, cache._tier.nbytes) == recounted(cache), step
            assert cache._tier.count <= 30


def test_every_replica_mutation_reaches_the_tier_and_persistence(tmp_path: Path) -> None:
    # The tier and persistence observe the replica: whatever changes an entry -- a
    # local write, a merge, a pattern tombstone, a forgetting resync, an eviction, a
    # drop, collection -- they see it, so the counts and the dirty set stay exact.
    persistence = Persistence(str(tmp_path / "n.db"))
    replica = persistence.open(node_id="n", new_id="n", now=T, resolver=None, max_held=None)
    tier = LocalTier(node="n", max_size=None, max_memory=None)
    tier.attach(replica)

    def entry(value: object, ts: int, origin: str = "p") -> Entry:
        return Entry(encode_value("k", value), ts, origin)

    replica.set("a", encode_value("a", "aa"), T)
    for key in "bcde":
        replica.merge_entry(key, entry(key, pack_ts(int(T * 1000), 1)), T)
    assert (tier.count, tier.nbytes) == (5, 3 + 2 * 4)  # "a"+"aa", then 1+1 each
    replica.delete("a", T)
    replica.invalidate_pattern("b*", T)
    assert replica.evict("c")
    assert replica.drop("d")
    assert (tier.count, tier.left) == (1, {"a", "b", "d"})
    tomb = Entry(TOMBSTONE, pack_ts(int(T * 1000), 2), "p")
    replica.merge_entry("e", tomb, T)
    replica.forget_unlisted([], {"p": pack_ts(int(T * 1000), 9), "n": replica.clock.last_ts})
    replica.collect(T + 7200)
    assert (tier.count, tier.nbytes, len(replica.entries)) == (0, 0, 0)
    assert persistence.dirty == {"a", "b", "c", "d", "e"}
    assert tier.left == {"a", "b", "d", "e"}
    persistence.store.close()


def test_attach_is_idempotent_and_recounts() -> None:
    replica = Replica(HybridClock("n"))
    replica.entries["x"] = Entry("value", 1, "n")
    replica.entries["y"] = Entry(NOT_HELD, 1, "n")
    tier = LocalTier(node="n", max_size=10, max_memory=None)
    tier.attach(replica)
    first = replica.entries
    tier.attach(replica)
    assert replica.entries is first
    assert (tier.count, tier.nbytes) == (1, 6)


async def test_eviction_keeps_stubs_on_a_networked_node(clock: FakeClock) -> None:
    async with memory_cache(clock, max_size=2) as cache:
        assert cache._runtime is not None
        # What a p2p node does: a peer may serve it again.
        cache._runtime.keeps_stubs = True  # type: ignore[misc]
        for key in "abc":
            await cache.set(key, key)
        stubs = [k for k, e in cache._entries.items() if e.value is NOT_HELD]
        assert stubs == ["a"]
        assert await cache.keys() == ["a", "b", "c"]  # the cluster's key space
        stats = await cache.get_statistics()
        assert (stats.local.size, stats.distributed.size) == (2, 3)
        assert await cache.get("a") is None  # no peer to fetch it from
        stats = await cache.get_statistics()
        assert (stats.distributed.hits, stats.distributed.misses) == (0, 1)


async def test_remote_values_fill_the_tier_and_are_bounded(clock: FakeClock) -> None:
    async with memory_cache(clock, max_size=5) as cache:
        remote_push(cache, {f"r{i}": i for i in range(20)})
        assert cache._tier.count == 20  # over the bound until the loop gets to it
        await asyncio.sleep(0)
        assert cache._tier.count == 5
