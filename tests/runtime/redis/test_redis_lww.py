"""Last-writer-wins by HLC stamp, enforced atomically in Redis whatever the arrival order."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import msgpack
import pytest
import redis

from crdtcache.runtime.redis._messages import pack_writes, parse_stamp, stamp_text
from crdtcache.runtime.redis._scripts import WRITE
from tests.runtime.redis.redis_helpers import (
    async_client,
    async_subscriber,
    eventually,
    redis_caches,
    runtime,
    script_for,
    wait_for,
)


def stored_stamp(client: redis.Redis, cluster: str, key: str) -> tuple[int, str]:
    raw = client.hget(f"crdtcache:{{{cluster}}}:k:{key}", "s")
    return parse_stamp(raw)


@pytest.mark.parametrize("ahead_writes_last", [False, True])
async def test_skewed_clocks_the_greater_stamp_wins(
    redis_url: str, cluster: str, sync_redis: redis.Redis, ahead_writes_last: bool
) -> None:
    """Two instances, one clock 5 s ahead: whichever reaches Redis last, the write with
    the greater stamp (the one ahead) is what Redis keeps and every instance serves."""
    ahead, behind = await redis_caches(
        2,
        url=redis_url,
        cluster=cluster,
        node_id=["ahead", "behind"],
        _clock=[lambda: time.time() + 5.0, time.time],
    )
    try:
        first, last = (behind, ahead) if ahead_writes_last else (ahead, behind)
        runtime(last).writer.sync_interval = 0.3  # queued until after the other is in Redis
        await last.set("k", last.node_id)
        await first.set("k", first.node_id)
        await wait_for(
            lambda: (
                not runtime(last).protocol.outbox.queued
                and not runtime(last).protocol.outbox.inflight
            )
        )
        await wait_for(
            lambda: (
                not runtime(first).protocol.outbox.queued
                and not runtime(first).protocol.outbox.inflight
            )
        )
        assert stored_stamp(sync_redis, cluster, "k")[1] == ahead.node_id
        await eventually(lambda: behind.get("k"), ahead.node_id)
        await eventually(lambda: ahead.get("k"), ahead.node_id)
        if not ahead_writes_last:
            assert runtime(behind).redis_statistics().writes_lost == 1  # refused by the script
        # The loser's clock has observed the winner's stamp: its next write wins.
        await behind.set("k", "after")
        await eventually(lambda: ahead.get("k"), "after")
    finally:
        for cache in (ahead, behind):
            await cache.close()


def write_args(url: str, cluster: str, writes: list[tuple[str, int, str]]) -> list[Any]:
    """KEYS and ARGV of one WRITE call storing b"x" under each (key, ts, origin)."""
    keys: list[Any] = [f"crdtcache:{{{cluster}}}:patterns"]
    args: list[Any] = ["0", 60_000, f"crdtcache:{{{cluster}}}:inv", b"\x94\x01\xa1t\x00"]
    rows = []
    for key, ts, origin in writes:
        keys.append(f"crdtcache:{{{cluster}}}:k:{key}")
        part = msgpack.packb([key, ts, origin, None, False, None])
        rows.append((stamp_text(ts, origin), b"\xa1x", "0", "", "", part))
    args.append(pack_writes(rows))
    return [script_for(url, WRITE).source, len(keys), *keys, *args]


async def test_concurrent_scripts_keep_the_greatest_stamp(
    redis_url: str, cluster: str, sync_redis: redis.Redis
) -> None:
    """Hundreds of writes with random stamps from 8 connections at once, in random
    order: the record ends with the greatest stamp, and ties go to the greater origin."""
    rng = random.Random(7)
    base = int(time.time() * 1000) << 16
    stamps = [(base + rng.randrange(1 << 20), rng.choice("abcdefgh")) for _ in range(400)]
    stamps += [(max(stamps)[0], "zz"), (max(stamps)[0], "z")]  # a tie on ts
    rng.shuffle(stamps)
    client = async_client(redis_url)
    connections = asyncio.Semaphore(8)  # 8 at once, whatever pool each topology has
    applied = 0
    try:

        async def write(ts: int, origin: str) -> None:
            nonlocal applied
            args = write_args(redis_url, cluster, [("hot", ts, origin)])
            async with connections:
                try:
                    result = await client.eval(*args)  # type: ignore[misc]
                except AttributeError:
                    # redis-py 8.1's async cluster client can race a connection's
                    # teardown against a send under heavy load (its _writer is None);
                    # the script never ran, so sending it again is the same write.
                    result = await client.eval(*args)  # type: ignore[misc]
            applied += result[0][0] == 1

        await asyncio.gather(*(write(ts, o) for ts, o in stamps))
    finally:
        await client.aclose()
    assert stored_stamp(sync_redis, cluster, "hot") == (max(stamps)[0], "zz")
    # Each applied write was strictly newer than the one before it.
    assert 1 <= applied < len(stamps)


async def test_a_batch_applies_only_its_newer_writes_and_announces_them_once(
    redis_url: str, cluster: str
) -> None:
    client = async_client(redis_url)
    subscriber, pubsub = await async_subscriber(redis_url, f"crdtcache:{{{cluster}}}:inv")
    try:
        first = await client.eval(*write_args(redis_url, cluster, [("x", 5 << 16, "n")]))
        # The same write again (a retry), an older one, and a new key: only y applies.
        again = await client.eval(
            *write_args(
                redis_url, cluster, [("x", 5 << 16, "n"), ("x", 4 << 16, "z"), ("y", 1, "n")]
            )
        )
        assert first == [[1, 0], 1]
        assert again[:3] == [[0, stamp_text(5 << 16, "n").encode()]] * 2 + [[1, 0]]
        messages = []
        while (msg := await pubsub.get_message(timeout=0.2)) is not None:
            messages.append(msgpack.unpackb(msg["data"]))
        assert [[w[0] for w in m[3]] for m in messages] == [["x"], ["y"]]
    finally:
        await pubsub.aclose()
        await subscriber.aclose()
        await client.aclose()
