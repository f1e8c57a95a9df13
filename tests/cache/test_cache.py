"""Cache operations on the memory backend: reads, writes, TTL, keys, patterns, lifecycle."""

from __future__ import annotations

import asyncio
import math

import pytest

from crdtcache import Cache, CacheError, ConfigError, SerializationError
from crdtcache.core import DEFAULT_MAX_VALUE_BYTES, MAX_KEY_CHARS

from .conftest import FakeClock, memory_cache


async def test_set_get_roundtrip_of_every_value_kind(cache: Cache) -> None:
    values = [
        None,
        True,
        0,
        -(2**63),
        2**64 - 1,
        1.5,
        "text",
        b"\x00bytes",
        [1, "a"],
        {"a": {"b": [1]}},
    ]
    for i, value in enumerate(values):
        await cache.set(f"k{i}", value)
    assert [await cache.get(f"k{i}") for i in range(len(values))] == values


async def test_tuples_come_back_as_tuples(cache: Cache) -> None:
    # They used to come back as lists (issue 13).
    await cache.set("t", (1, (2, [3])))
    back = await cache.get("t")
    assert back == (1, (2, [3])) and type(back) is tuple and type(back[1]) is tuple


async def test_missing_key_returns_default(cache: Cache) -> None:
    assert await cache.get("nope") is None
    assert await cache.get("nope", 7) == 7


async def test_overwrite_keeps_latest(cache: Cache) -> None:
    await cache.set("k", 1)
    await cache.set("k", 2)
    assert await cache.get("k") == 2


async def test_no_aliasing_of_returned_containers(cache: Cache) -> None:
    await cache.set("user", {"name": "Alice", "tags": ["a"]})
    got = await cache.get("user")
    got["name"] = "Mallory"
    got["tags"].append("b")
    assert await cache.get("user") == {"name": "Alice", "tags": ["a"]}


async def test_no_aliasing_of_the_value_written(cache: Cache) -> None:
    value = {"n": [1]}
    await cache.set("k", value)
    value["n"].append(2)
    assert await cache.get("k") == {"n": [1]}


async def test_ttl_expires(cache: Cache, clock: FakeClock) -> None:
    await cache.set("k", "v", ttl=10)
    clock.advance(9.9)
    assert await cache.get("k") == "v"
    clock.advance(0.2)
    assert await cache.get("k") is None
    assert await cache.keys() == []


async def test_writes_of_one_millisecond_share_their_expiry(cache: Cache, clock: FakeClock) -> None:
    # An expiry float is 24 bytes per entry: a burst with one TTL keeps one per ms.
    await cache.set("a", "v", ttl=10)
    await cache.set_many({"b": "v", "c": "v"}, ttl=10)
    await cache.touch("d", 10)  # absent: nothing written
    clock.advance(0.0004)
    await cache.set("e", "v", ttl=10)
    first = cache._entries["a"].expires
    assert first == clock() - 0.0004 + 10
    assert all(cache._entries[k].expires is first for k in "bce")
    assert await cache.ttl("e") == pytest.approx(9.9996)  # 0.4 ms early, never late
    clock.advance(0.002)
    await cache.set("f", "v", ttl=10)
    assert cache._entries["f"].expires == clock() + 10


async def test_default_ttl_applies_when_ttl_is_none(clock: FakeClock) -> None:
    async with memory_cache(clock, default_ttl=5) as cache:
        await cache.set("a", 1)
        await cache.set("b", 1, ttl=50)
        clock.advance(6)
        assert await cache.get("a") is None
        assert await cache.get("b") == 1


@pytest.mark.parametrize("ttl", [0, -1, math.inf, math.nan, "10", True])
async def test_bad_ttl_is_refused_before_writing(cache: Cache, ttl: object) -> None:
    with pytest.raises(ConfigError, match="ttl"):
        await cache.set("k", 1, ttl=ttl)  # type: ignore[arg-type]
    assert await cache.get("k") is None


async def test_real_clock_ttl_expiry() -> None:
    async with memory_cache() as cache:
        await cache.set("k", "v", ttl=0.05)
        assert await cache.get("k") == "v"
        await asyncio.sleep(0.08)
        assert await cache.get("k") is None


async def test_delete(cache: Cache) -> None:
    await cache.set("k", 1)
    assert await cache.delete("k") is True
    assert await cache.get("k") is None
    assert await cache.delete("k") is False
    assert await cache.delete("never") is False


async def test_set_after_delete(cache: Cache) -> None:
    await cache.set("k", 1)
    await cache.delete("k")
    await cache.set("k", 2)
    assert await cache.get("k") == 2


async def test_invalidate(cache: Cache) -> None:
    await cache.set("k", 1)
    assert await cache.invalidate("k") is True
    assert await cache.get("k") is None
    assert await cache.invalidate("k") is False


async def test_keys_glob_is_fnmatch_and_case_sensitive(cache: Cache) -> None:
    for key in ["user:1", "user:2", "User:3", "user:10", "order:1", "user:[x]"]:
        await cache.set(key, 1)
    assert await cache.keys() == sorted(
        ["user:1", "user:2", "User:3", "user:10", "order:1", "user:[x]"]
    )
    assert await cache.keys("user:*") == ["user:1", "user:10", "user:2", "user:[x]"]
    assert await cache.keys("user:?") == ["user:1", "user:2"]
    assert await cache.keys("[Uo]*:1") == ["order:1"]
    assert await cache.keys("user:[[]x]") == ["user:[x]"]
    assert await cache.keys("nothing*") == []


async def test_keys_skips_deleted_and_expired(cache: Cache, clock: FakeClock) -> None:
    await cache.set("a", 1)
    await cache.set("b", 1, ttl=1)
    await cache.set("c", 1)
    await cache.delete("c")
    clock.advance(2)
    assert await cache.keys() == ["a"]


async def test_invalidate_pattern(cache: Cache) -> None:
    for key in ["user:1", "user:2", "order:1"]:
        await cache.set(key, 1)
    assert await cache.invalidate_pattern("user:*") == 2
    assert await cache.keys() == ["order:1"]
    # Later writes to matching keys are not covered by the earlier tombstone.
    await cache.set("user:3", 3)
    assert await cache.get("user:3") == 3


async def test_invalidate_pattern_is_one_tombstone(cache: Cache) -> None:
    for i in range(100):
        await cache.set(f"user:{i}", i)
    await cache.invalidate_pattern("user:*")
    replica = cache._replica
    assert replica is not None
    assert list(replica.patterns) == ["user:*"]
    assert len(replica.entries) == 0


async def test_clear(cache: Cache) -> None:
    for key in ["a", "b", "c"]:
        await cache.set(key, 1)
    assert await cache.clear() == 3
    assert await cache.keys() == []
    await cache.set("a", 2)
    assert await cache.keys() == ["a"]


@pytest.mark.parametrize("key", [1, None, b"k", ("t",), ["unhashable"], "k" * (MAX_KEY_CHARS + 1)])
async def test_bad_keys_raise_serialization_error(cache: Cache, key: object) -> None:
    with pytest.raises(SerializationError):
        await cache.set(key, 1)  # type: ignore[arg-type]
    with pytest.raises(SerializationError):
        await cache.get(key)  # type: ignore[arg-type]
    with pytest.raises(SerializationError):
        await cache.delete(key)  # type: ignore[arg-type]


async def test_unserializable_values_name_key_and_type(cache: Cache) -> None:
    class Thing:
        pass

    with pytest.raises(SerializationError, match=r"'k'.*Thing"):
        await cache.set("k", Thing())
    with pytest.raises(SerializationError, match=r"'k'.*schema=.*serializer="):
        await cache.set("k", {1: Thing()})
    with pytest.raises(SerializationError, match="'k'"):
        await cache.set("k", {"nested": {3.5j}})
    with pytest.raises(SerializationError, match="exceeds"):
        await cache.set("k", "x" * (DEFAULT_MAX_VALUE_BYTES + 1))
    assert await cache.get("k") is None
    # Once refused, now carried (issue 13): int keys, sets, ints beyond 64 bits.
    for value in [{1: "int keys"}, {"nested": {3.5}}, 2**64]:
        await cache.set("k", value)
        assert await cache.get("k") == value


@pytest.mark.parametrize("pattern", ["", 5, None, "x" * (MAX_KEY_CHARS + 1)])
async def test_bad_patterns(cache: Cache, pattern: object) -> None:
    with pytest.raises(SerializationError):
        await cache.invalidate_pattern(pattern)  # type: ignore[arg-type]
    with pytest.raises(SerializationError):
        await cache.keys(pattern)  # type: ignore[arg-type]


async def test_not_started_and_closed() -> None:
    cache = memory_cache()
    assert "new" in repr(cache)
    with pytest.raises(CacheError, match="not started"):
        await cache.get("k")
    with pytest.raises(CacheError, match="not started"):
        await cache.set("k", 1)
    await cache.start()
    await cache.start()  # idempotent
    await cache.set("k", 1)
    await cache.close()
    await cache.close()  # idempotent
    with pytest.raises(CacheError, match="closed"):
        await cache.get("k")
    with pytest.raises(CacheError, match="cannot be restarted"):
        await cache.start()


async def test_close_before_start_is_harmless() -> None:
    cache = memory_cache()
    await cache.close()
    with pytest.raises(CacheError, match="closed"):
        await cache.set("k", 1)


async def test_node_id_and_address() -> None:
    a, b = memory_cache(), memory_cache()
    assert a.node_id != b.node_id and len(a.node_id) == 12
    async with memory_cache(node_id="fixed") as c:
        assert c.node_id == "fixed"
        assert c.address is None
        assert "fixed" in repr(c)


async def test_conflict_resolver_is_used(clock: FakeClock) -> None:
    def keep_larger(local, remote):  # type: ignore[no-untyped-def]
        return remote if (remote.value or 0) > (local.value or 0) else local

    async with memory_cache(clock, conflict_resolver=keep_larger) as cache:
        await cache.set("k", 5)
        await cache.set("k", 3)
        assert await cache.get("k") == 5


async def test_write_behind_wakes_the_runtime(cache: Cache) -> None:
    await cache.set("k", 1)
    engine = cache._engine
    assert engine is not None
    await asyncio.sleep(0.05)  # the local runtime ticks and drops the delta
    assert engine.pending == 0


async def test_write_through_without_peers_returns_at_once(clock: FakeClock) -> None:
    async with memory_cache(clock, sync_strategy="write-through") as cache:
        await cache.set("k", 1)
        assert await cache.delete("k") is True
        stats = await cache.get_statistics()
        assert stats.write_ack_ms.samples == 0  # nobody to wait for


async def test_on_demand_memory_cache_still_serves_locally(clock: FakeClock) -> None:
    async with memory_cache(clock, sync_strategy="on-demand") as cache:
        await cache.set("k", {"a": 1})
        assert await cache.get("k") == {"a": 1}
