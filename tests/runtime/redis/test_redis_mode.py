"""Redis mode's own behaviour: key layout, hot tier, invalidation races, patterns, faults."""

from __future__ import annotations

import asyncio
import importlib.util
import time
from typing import Any

import msgpack
import pytest
import redis

from crdtcache import Cache, CacheEvent, ConfigError, PeerError
from crdtcache.cache._cache import ABSENT
from crdtcache.core import TOMBSTONE_GRACE, Entry, PatternTombstone, encode_value
from crdtcache.core._format import blob_stored as blob_value
from crdtcache.core._format import stored_blob as value_blob
from crdtcache.runtime.redis._commands import redact_url
from crdtcache.runtime.redis._messages import (
    EXPIRED_GRACE,
    PatternRecorded,
    parse_stamp,
    stamp_text,
)
from crdtcache.runtime.redis._scripts import PATTERN
from tests.runtime.redis.redis_helpers import (
    eventually,
    free_port,
    publish,
    redis_caches,
    runtime,
    wait_for,
)


def record(client: redis.Redis, cluster: str, key: str) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = client.hgetall(f"crdtcache:{{{cluster}}}:k:{key}")  # type: ignore[assignment]
    return found


# ----------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"seeds": ["10.0.0.1:7946"]}, "seeds does not apply"),
        ({"secret": b"s3cret"}, "password in redis_url"),
        ({"persist_path": "/tmp/x.db"}, "persist_path does not apply"),
        ({"conflict_resolver": lambda a, b: a}, "last-writer-wins"),
        ({"redis_url": "http://127.0.0.1:6379"}, "redis_url must start with"),
        ({"redis_url": "127.0.0.1:6379"}, "redis_url must be a URL"),
        ({"local_max_size": 0}, "local_max_size"),
        ({"local_ttl": -1}, "local_ttl"),
    ],
)
def test_options_that_do_not_apply_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Cache(backend="redis", **options)


def test_ssl_context_is_refused_with_a_hint() -> None:
    import ssl

    with pytest.raises(ConfigError, match="rediss://"):
        Cache(backend="redis", ssl=ssl.create_default_context())


def test_missing_redis_py_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "redis" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"crdtcache\[redis\]"):
        Cache(backend="redis")


def test_default_url_and_redaction() -> None:
    cache = Cache(backend="redis")
    assert cache._config.redis_url == "redis://127.0.0.1:6379/0"
    assert redact_url("redis://user:secret@host:6380/1") == "redis://user:***@host:6380/1"
    assert "secret" not in redact_url("rediss://:secret@host")


async def test_an_unreachable_redis_fails_start_with_peer_error() -> None:
    cache = Cache(backend="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(PeerError, match="unreachable"):
        await cache.start()
    with pytest.raises(Exception, match="not started"):
        await cache.get("k")


# ------------------------------------------------------------------- encoding
@pytest.mark.parametrize(
    "value",
    [
        *(None, True, False, 0, -(1 << 63), (1 << 64) - 1, 1.5, "", "ünïcode", b"\x00\xff"),
        *([], {}, [1, "a", None, [b"x"]], {"a": {"b": [1, 2.5]}}),
    ],
)
def test_value_blobs_round_trip(value: Any) -> None:
    stored = encode_value("k", value)
    assert blob_value(value_blob(stored)) == stored


def test_stamp_texts_sort_like_stamps() -> None:
    stamps = [(5, "b"), (5, "ab"), (5, "a"), (1 << 40, "a"), (0, "zz"), (6, "é")]
    texts = sorted(stamp_text(ts, o) for ts, o in stamps)
    assert [parse_stamp(t) for t in texts] == sorted(stamps)


# ------------------------------------------------------------------ key layout
async def test_key_layout(redis_pair: list[Cache], cluster: str, sync_redis: redis.Redis) -> None:
    a, b = redis_pair
    a_rt = runtime(a)
    await a.set("user:1", {"name": "Alice"}, ttl=60)
    await a.set("forever", 1)
    await wait_for(lambda: not a_rt.protocol.outbox.queued and not a_rt.protocol.outbox.inflight)
    await eventually(lambda: b.get("user:1"), {"name": "Alice"})
    rec = record(sync_redis, cluster, "user:1")
    assert set(rec) == {b"s", b"v", b"x"}
    ts, origin = parse_stamp(rec[b"s"])
    assert origin == a.node_id
    assert msgpack.unpackb(rec[b"v"]) == {"name": "Alice"}  # plain msgpack: readable by anyone
    expires = float(rec[b"x"])
    assert 55 < expires - time.time() <= 60
    pttl = sync_redis.pttl(f"crdtcache:{{{cluster}}}:k:user:1")
    assert (60 + EXPIRED_GRACE - 5) * 1000 < pttl <= (60 + EXPIRED_GRACE) * 1000
    assert sync_redis.pttl(f"crdtcache:{{{cluster}}}:k:forever") == -1
    await a.delete("user:1")
    await wait_for(lambda: b"v" not in record(sync_redis, cluster, "user:1"))
    tomb = record(sync_redis, cluster, "user:1")
    assert set(tomb) == {b"s"} and parse_stamp(tomb[b"s"])[0] > ts
    pttl = sync_redis.pttl(f"crdtcache:{{{cluster}}}:k:user:1")
    assert (TOMBSTONE_GRACE - 10) * 1000 < pttl <= TOMBSTONE_GRACE * 1000
    members = {m.decode() for m in sync_redis.zrange(f"crdtcache:{{{cluster}}}:instances", 0, -1)}  # type: ignore[union-attr]
    assert members == {a.node_id, b.node_id}
    assert sync_redis.pttl(f"crdtcache:{{{cluster}}}:i:{a.node_id}") > 0
    await b.invalidate_pattern("user:*")
    # Recorded, then its records deleted by SCAN, then marked clean.
    await wait_for(lambda: sync_redis.hexists(f"crdtcache:{{{cluster}}}:patterns", "c:user:*"))
    patterns = sync_redis.hgetall(f"crdtcache:{{{cluster}}}:patterns")
    assert set(patterns) == {b"", b"#", b"p:user:*", b"c:user:*"}  # type: ignore[arg-type]


# -------------------------------------------------------------------- hot tier
async def test_values_come_back_equal_and_unaliased(redis_pair: list[Cache]) -> None:
    a, b = redis_pair
    values = {
        "none": None,
        "int": -5,
        "big": (1 << 64) - 1,
        "float": 2.5,
        "str": "ü",
        "bytes": b"\x00",
        "list": [1, [2]],
        "dict": {"a": {"b": [1]}},
    }
    for key, value in values.items():
        await a.set(key, value)
    for key, value in values.items():
        await eventually(lambda key=key: b.get(key, "absent"), value)  # type: ignore[misc]
    got = await b.get("dict")
    got["a"]["b"].append(2)
    assert await b.get("dict") == {"a": {"b": [1]}}


async def test_local_ttl_bounds_the_time_a_value_stays_local(redis_url: str, cluster: str) -> None:
    a, b = await redis_caches(2, url=redis_url, cluster=cluster, local_ttl=0.15)
    try:
        evictions: list[CacheEvent] = []
        b.on("eviction", evictions.append)
        await a.set("k", "v")
        await eventually(lambda: b.get("k"), "v")
        assert b._read("k") == "v"
        await wait_for(lambda: b._read("k") is ABSENT, timeout=2)
        assert [(e.key, e.reason) for e in evictions] == [("k", "ttl")]
        hits = (await b.get_statistics()).distributed.hits
        assert await b.get("k") == "v"  # from Redis again
        stats = await b.get_statistics()
        assert stats.distributed.hits == hits + 1 and stats.evictions.ttl == 1
    finally:
        for cache in (a, b):
            await cache.close()


async def test_local_max_size_bounds_the_hot_tier(redis_url: str, cluster: str) -> None:
    (a,) = await redis_caches(1, url=redis_url, cluster=cluster, local_max_size=3)
    try:
        for i in range(10):
            await a.set(f"k{i}", i)
        await wait_for(lambda: a._tier.count == 3)
        for i in range(10):
            assert await a.get(f"k{i}") == i  # evicted ones come back from Redis
        await wait_for(lambda: a._tier.count == 3)
        assert len(a._entries) == 3  # no stubs or tombstones linger in redis mode
        assert (await a.get_statistics()).evictions.size >= 7
    finally:
        await a.close()


@pytest.mark.parametrize(("strategy", "in_place"), [("write-behind", True), ("on-demand", False)])
async def test_held_copies_are_updated_in_place_or_dropped(
    redis_url: str, cluster: str, strategy: str, in_place: bool
) -> None:
    a, b = await redis_caches(2, url=redis_url, cluster=cluster, sync_strategy=strategy)
    try:
        await a.set("k", "v1")
        await eventually(lambda: b.get("k"), "v1")
        fetched = (await b.get_statistics()).distributed.hits
        await a.set("k", "v2")
        if in_place:  # write-behind ships small values with the invalidation
            await wait_for(lambda: b._read("k") == "v2")
            assert (await b.get_statistics()).distributed.hits == fetched
        else:  # on-demand ships only the stamp: the copy is dropped, read again
            await wait_for(lambda: b._read("k") is ABSENT)
            assert await b.get("k") == "v2"
            assert (await b.get_statistics()).distributed.hits == fetched + 1
    finally:
        for cache in (a, b):
            await cache.close()


async def test_an_invalidation_that_overtakes_the_read_reply_wins(
    redis_url: str, cluster: str
) -> None:
    """The race of the module doc: R's read returns the old value, but the newer
    write's invalidation is processed before R merges the reply."""
    a, b = await redis_caches(2, url=redis_url, cluster=cluster, sync_strategy="write-through")
    try:
        await a.set("k", "old")
        b_rt = runtime(b)
        read = b_rt.keyspace.read_records
        overtaken = False

        async def slow_read(keys: Any) -> Any:
            nonlocal overtaken
            records = await read(keys)
            if not overtaken:
                overtaken = True
                # Committed, announced and (write-through) applied by b -- all while
                # b's reply with "old" is still on its way.
                await a.set("k", "new")
            return records

        b_rt.keyspace.read_records = slow_read  # type: ignore[method-assign]
        assert await b.get("k") == "new"
        assert overtaken and b._read("k") == "new"
    finally:
        for cache in (a, b):
            await cache.close()


async def test_keys_and_size_cover_the_whole_cluster(
    redis_pair: list[Cache], cluster: str, sync_redis: redis.Redis
) -> None:
    a, b = redis_pair
    for i in range(30):
        await a.set(f"user:{i}", i)
    await a.set("gone", 1)
    await a.set("short", 1, ttl=0.05)
    await a.delete("gone")
    await a.set("other", 1)
    expected = sorted(f"user:{i}" for i in range(30))
    await eventually(lambda: b.keys("user:*"), expected)
    assert b._tier.count == 0  # b read nothing: the keys came from Redis
    await asyncio.sleep(0.1)
    assert await b.keys() == sorted([*expected, "other"])
    assert await b.keys("user:1?") == [f"user:{i}" for i in range(10, 20)]
    b_rt = runtime(b)
    b_rt.keyspace._size = None
    sync_redis.delete(f"crdtcache:{{{cluster}}}:size")
    assert (await b.get_statistics()).distributed.size == 31
    # Unwritten local writes count too: keys() is this node's view of the cluster.
    a_rt = runtime(a)
    a_rt.writer.sync_interval = 0.5
    await a.set("user:pending", 1)
    await a.delete("user:0")
    keys = await a.keys("user:*")
    assert "user:pending" in keys and "user:0" not in keys


async def test_delete_answers_for_the_whole_cluster(redis_pair: list[Cache]) -> None:
    a, b = redis_pair
    await a.set("k", 1)
    await eventually(lambda: b.keys(), ["k"])
    assert b._read("k") is ABSENT  # b never read it
    assert await b.delete("k") is True
    await eventually(lambda: a.get("k"), None)
    assert await b.delete("k") is False


async def test_snapshot_and_restore_merge_through_redis(
    redis_url: str, cluster: str, sync_redis: redis.Redis
) -> None:
    (a,) = await redis_caches(1, url=redis_url, cluster=cluster, sync_strategy="write-through")
    other = cluster + "-copy"
    try:
        await a.set("x", {"v": 1})
        await a.set("y", 2, ttl=300)
        await a.set("z", 3)
        await a.delete("z")
        snap = await a.snapshot()
        (c,) = await redis_caches(
            1, url=redis_url, cluster=other, node_id="c", sync_strategy="write-through"
        )
        try:
            await c.set("y", "newer")  # written after the snapshot: must survive
            assert await c.restore(snap) == 2  # x, and z's tombstone
            assert await c.get("x") == {"v": 1}
            assert await c.get("y") == "newer"
            assert await c.get("z") is None
            assert await c.restore(snap) == 0  # a merge: idempotent
        finally:
            await c.close()
    finally:
        await a.close()
        names = list(sync_redis.scan_iter(match=f"crdtcache:{{{other}}}:*"))
        if names:
            sync_redis.delete(*names)


# -------------------------------------------------------------------- patterns
async def test_pattern_cleanup_deletes_covered_records_by_scan(
    redis_pair: list[Cache], cluster: str, sync_redis: redis.Redis
) -> None:
    a, b = redis_pair
    for i in range(200):
        await a.set(f"p:{i}", i)
    await a.set("q", 1)
    await eventually(lambda: b.keys("p:*"), sorted(f"p:{i}" for i in range(200)))
    assert await b.invalidate_pattern("p:*") == 0  # none held in b's hot tier
    await eventually(lambda: a.keys(), ["q"])

    def left() -> int:
        return len(list(sync_redis.scan_iter(match=f"crdtcache:{{{cluster}}}:k:p:*")))

    await wait_for(lambda: left() == 0)
    await wait_for(lambda: sync_redis.hexists(f"crdtcache:{{{cluster}}}:patterns", "c:p:*"))
    patterns = sync_redis.hgetall(f"crdtcache:{{{cluster}}}:patterns")
    assert patterns[b"c:p:*"] == patterns[b"p:p:*"]  # type: ignore[index]
    assert runtime(b).redis_statistics().records_cleaned == 200
    assert await a.get("q") == 1
    # Both hold every tombstone up to the one recorded: their writes need no recheck.
    await wait_for(lambda: runtime(a).protocol.patterns.version == 1)
    assert runtime(b).protocol.patterns.version == 1
    assert patterns[b"#"] == b"1"  # type: ignore[index]


async def test_a_write_older_than_an_unknown_pattern_tombstone_loses(
    redis_pair: list[Cache], cluster: str, sync_redis: redis.Redis
) -> None:
    """The WRITE script's recheck: a's queued write is older than b's tombstone, which a
    has not heard of; Redis makes a load the patterns, and a drops the write."""
    a, b = redis_pair
    a_rt = runtime(a)
    handle = a_rt.protocol.receive_invalidation

    def deaf_to_patterns(msg: Any, now: float) -> None:
        if not isinstance(msg, PatternRecorded):
            handle(msg, now)

    a_rt.protocol.receive_invalidation = deaf_to_patterns  # type: ignore[method-assign]

    async def no_heartbeat(*, leave: bool = False) -> None:
        return None  # its check would find the tombstone first (the other safety net)

    a_rt._heartbeat = no_heartbeat  # type: ignore[method-assign]
    a_rt.writer.sync_interval = 0.3
    await a.set("p:1", "older")  # queued, stamped before the tombstone below
    await asyncio.sleep(0.01)
    await b.invalidate_pattern("p:*")
    await wait_for(
        lambda: not a_rt.protocol.outbox.queued and not a_rt.protocol.outbox.inflight, timeout=3
    )
    assert a_rt.redis_statistics().writes_rechecked == 1
    assert record(sync_redis, cluster, "p:1") == {}
    assert await a.get("p:1") is None and await b.get("p:1") is None
    await a.set("p:1", "newer")  # stamped after the tombstone: stored
    await eventually(lambda: b.get("p:1"), "newer")


async def test_an_abandoned_cleanup_is_resumed(
    redis_pair: list[Cache], cluster: str, sync_redis: redis.Redis
) -> None:
    a, _ = redis_pair
    for i in range(5):
        await a.set(f"p:{i}", i)
    a_rt = runtime(a)
    await wait_for(lambda: not a_rt.protocol.outbox.queued and not a_rt.protocol.outbox.inflight)
    # A tombstone recorded by an instance that died before its SCAN: no cleanup ran.
    tomb = PatternTombstone("p:*", a_rt.engine.replica.clock.tick(time.time()), "ghost")
    script, keys, args = a_rt.protocol.calls.pattern(tomb, 0, time.time())
    assert script is PATTERN
    await a_rt.commands.eval(script, keys, args)
    assert len(list(sync_redis.scan_iter(match=f"crdtcache:{{{cluster}}}:k:p:*"))) == 5
    a_rt.cleanup_stall = 0.0
    await a_rt._resume_cleanups()
    await wait_for(lambda: not list(sync_redis.scan_iter(match=f"crdtcache:{{{cluster}}}:k:p:*")))


# ----------------------------------------------------------------------- faults
async def test_junk_on_the_channel_or_under_the_prefix_is_refused(
    redis_pair: list[Cache], cluster: str, sync_redis: redis.Redis
) -> None:
    a, b = redis_pair
    channel = f"crdtcache:{{{cluster}}}:inv"
    for junk in (b"\xc1", msgpack.packb([1, "x"]), msgpack.packb({"a": 1}), b"x" * 200_000):
        publish(sync_redis, channel.encode(), junk)
    sync_redis.hset(f"crdtcache:{{{cluster}}}:k:bad", mapping={"s": "nonsense", "v": b"\x01"})
    sync_redis.hset(
        f"crdtcache:{{{cluster}}}:k:bad2", mapping={"s": stamp_text(1, "x"), "v": b"\xc1"}
    )
    await wait_for(lambda: runtime(b).redis_statistics().junk_messages == 4)
    assert await b.get("bad", "default") == "default"
    assert await b.get("bad2") is None
    assert runtime(b).redis_statistics().refused_records == 2
    assert any("malformed" in r for r in b.health().reasons)
    await a.set("k", 1)
    await eventually(lambda: b.get("k"), 1)  # still working


async def test_a_stamp_far_ahead_of_the_redis_clock_is_refused(
    redis_url: str, cluster: str, sync_redis: redis.Redis
) -> None:
    cache = Cache(
        backend="redis",
        redis_url=redis_url,
        cluster=cluster,
        sync_strategy="write-through",
        _clock=lambda: time.time() + 120,  # two minutes ahead; max_drift is 60 s
    )
    async with cache:
        with pytest.raises(PeerError, match="ahead of the Redis server's clock"):
            await cache.set("k", 1)
        assert record(sync_redis, cluster, "k") == {}
        assert await cache.get("k") is None
        stats = await cache.get_statistics()
        assert stats.refused_drift == 1
        assert any("clock differs" in r for r in cache.health().reasons)


async def test_a_crashed_instance_is_reported_dead(redis_url: str, cluster: str) -> None:
    a, b = await redis_caches(2, url=redis_url, cluster=cluster)
    try:
        downs: list[CacheEvent] = []
        a.on("peer_down", downs.append)
        b_rt = runtime(b)
        await b_rt._shutdown()  # gone without a goodbye: only its heartbeat stops
        await wait_for(lambda: bool(downs), timeout=3)
        assert downs[0].peer == b.node_id
        assert any(f"down: {b.node_id}" in r for r in a.health().reasons)
        stats = await a.get_statistics()
        assert stats.cluster.instances == 1
        assert [(p.id, p.state) for p in stats.cluster.peers] == [(b.node_id, "dead")]
    finally:
        await a.close()
        b._state = "closed"  # its runtime is already down


async def test_an_instance_id_given_twice_gets_distinct_suffixes(
    redis_url: str, cluster: str
) -> None:
    a, b = await redis_caches(2, url=redis_url, cluster=cluster, node_id="web")
    try:
        assert a.node_id != b.node_id and a.node_id.startswith("web~")
        await a.set("k", 1)
        await eventually(lambda: b.get("k"), 1)
        await b.set("k", 2)
        await eventually(lambda: a.get("k"), 2)
    finally:
        for cache in (a, b):
            await cache.close()


def test_entries_survive_the_wire_format() -> None:
    entry = Entry(encode_value("k", {"a": 1}), 5 << 16, "node", 12.5)
    assert blob_value(value_blob(entry.value)) == entry.value


async def test_close_writes_what_write_behind_still_holds(
    redis_url: str, cluster: str, sync_redis: redis.Redis
) -> None:
    (a,) = await redis_caches(1, url=redis_url, cluster=cluster, sync_interval=10.0)
    for i in range(50):
        await a.set(f"k{i}", i)
    assert len(runtime(a).protocol.outbox.queued) == 50  # the batch would leave only in 10 s
    await a.close()
    names = list(sync_redis.scan_iter(match=f"crdtcache:{{{cluster}}}:k:*"))
    assert len(names) == 50


async def test_a_value_read_without_a_subscription_is_served_but_not_kept(
    redis_pair: list[Cache],
) -> None:
    a, b = redis_pair
    await a.set("k", "v")
    await eventually(lambda: b.keys(), ["k"])
    b_rt = runtime(b)
    b_rt.protocol.subscribed = False  # as between a lost link and the resubscription
    try:
        assert await b.get("k") == "v"  # Redis is the truth: served
        await asyncio.sleep(0)
        assert b._read("k") is ABSENT  # but not kept: an invalidation could be missed
    finally:
        b_rt.protocol.subscribed = True
    assert await b.get("k") == "v"
    assert b._read("k") == "v"


async def test_a_key_no_message_can_carry_is_refused_not_fatal(
    redis_url: str, cluster: str
) -> None:
    (a,) = await redis_caches(1, url=redis_url, cluster=cluster, sync_strategy="write-through")
    try:
        with pytest.raises(PeerError, match="not encodable"):
            await a.set("bad\udcff", 1)
        assert a._read("bad\udcff") is ABSENT
        await a.set("good", 2)  # the runtime goes on
        assert await a.keys() == ["good"]
    finally:
        await a.close()


async def test_keys_leaves_out_queued_writes_a_local_pattern_removed(
    redis_url: str, cluster: str
) -> None:
    """Write-behind: writes still queued when this node's own ``clear()`` or
    ``invalidate_pattern`` covers them are gone from ``keys()`` at once, like the
    records in Redis they would have replaced; a write after the tombstone is listed."""
    (a,) = await redis_caches(1, url=redis_url, cluster=cluster, sync_interval=10.0)
    try:
        await a.set("user:1", 1)
        await a.set("other", 1)
        assert await a.keys() == ["other", "user:1"]  # both queued, none in Redis yet
        await a.invalidate_pattern("user:*")
        assert await a.keys() == ["other"]
        await a.set("user:2", 2)  # stamped after the tombstone: listed
        assert await a.keys() == ["other", "user:2"]
        await a.clear()
        assert await a.keys() == []
        assert await a.get("other") is None
    finally:
        await a.close()


async def test_delete_answers_true_for_a_queued_write_the_hot_tier_evicted(
    redis_url: str, cluster: str
) -> None:
    """Write-behind: this node's write is live for ``delete`` (as for ``keys`` and
    ``get``) while it waits for its batch, even once the hot tier let it go."""
    (a,) = await redis_caches(
        1, url=redis_url, cluster=cluster, sync_interval=10.0, local_max_size=1
    )
    try:
        await a.set("x", 1)
        await a.set("y", 2)  # x leaves the hot tier; its write is still queued
        assert a._read("x") is ABSENT
        assert await a.delete("x") is True
        assert await a.delete("x") is False
        assert await a.keys() == ["y"]
    finally:
        await a.close()
