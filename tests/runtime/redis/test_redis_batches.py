"""Write-behind batches pipelined: several in flight, failures put every one back.

(The figure they are for -- write-behind within 1.5x of redis-py's pipelined SET on
the same server -- is ``benchmarks/redis_mode.py``'s, never a unit test's.)
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from crdtcache import PeerError
from crdtcache.core import Entry, PatternTombstone
from crdtcache.runtime.redis._messages import (
    encode_join,
    encode_leave,
    pattern_head,
    sent_by,
    writes_head,
)
from crdtcache.runtime.redis._tables import Outbox
from crdtcache.runtime.redis._writer import PIPELINE_DEPTH
from tests.runtime.redis.redis_helpers import redis_caches, runtime, wait_for

nodes = st.text(min_size=1, max_size=20)


@given(me=nodes, other=nodes, junk=st.binary(max_size=40))
def test_an_instance_knows_its_own_messages_without_decoding_them(
    me: str, other: str, junk: bytes
) -> None:
    packed = msgpack.packb(me)
    tomb = PatternTombstone("p*", 1, other)
    for sender, message in (
        (other, writes_head(other, 3) + b"\x90"),
        (other, pattern_head(other, 0, tomb) + b"\x01"),
        (other, encode_join(other)),
        (other, encode_leave(other)),
    ):
        assert sent_by(message, packed) == (sender == me)
        assert sent_by(message.replace(msgpack.packb(other), packed, 1), packed)
    assert sent_by(junk, packed) in (True, False)  # never raises
    assert not sent_by("text", packed) and not sent_by(None, packed)


async def test_write_behind_keeps_batches_in_flight_together(redis_url: str, cluster: str) -> None:
    a, b = await redis_caches(2, url=redis_url, cluster=cluster, sync_interval=0.05)
    try:
        commands = runtime(a).commands
        send = commands.pipeline_replicated
        flying = most = 0

        async def counted(*args: Any) -> Any:
            nonlocal flying, most
            flying += 1
            most = max(most, flying)
            try:
                return await send(*args)
            finally:
                flying -= 1

        commands.pipeline_replicated = counted  # type: ignore[method-assign]
        for i in range(3000):  # six batches, written in one go after sync_interval
            await a.set(f"k{i}", i)
        await wait_for(lambda: not runtime(a).protocol.outbox, timeout=10)
        await wait_for(lambda: not runtime(a).protocol.outbox.inflight, timeout=10)
        assert most == PIPELINE_DEPTH
        assert runtime(a).redis_statistics().writes_applied == 3000
        for i in (0, 1499, 2999):
            assert await b.get(f"k{i}") == i
    finally:
        await a.close()
        await b.close()


async def test_a_failed_batch_puts_back_the_ones_in_flight_after_it(
    redis_url: str, cluster: str
) -> None:
    (a,) = await redis_caches(1, url=redis_url, cluster=cluster, sync_interval=0.05)
    try:
        commands = runtime(a).commands
        send = commands.pipeline_replicated
        calls = 0

        async def first_fails(*args: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                await asyncio.sleep(0.05)  # the second batch is sent meanwhile
                raise PeerError("Redis unreachable: injected")
            return await send(*args)

        commands.pipeline_replicated = first_fails  # type: ignore[method-assign]
        for i in range(1500):  # three batches
            await a.set(f"k{i}", i)
        await wait_for(lambda: calls >= 1)
        await wait_for(
            lambda: not runtime(a).protocol.outbox and not runtime(a).protocol.outbox.inflight,
            timeout=10,
        )
        assert calls > 3  # retried
        assert runtime(a).redis_statistics().write_errors == 0  # nothing given up
        # Every write is in Redis (some twice: a batch put back may have landed, and
        # its second sending then changed nothing).
        assert sorted(await a.keys()) == sorted(f"k{i}" for i in range(1500))
    finally:
        await a.close()


async def test_keys_leaves_out_a_write_in_flight_that_this_nodes_clear_covers(
    redis_url: str, cluster: str
) -> None:
    """The in-flight half of issue #16's keys()/clear() report (the queued half is
    ``test_keys_leaves_out_queued_writes_a_local_pattern_removed``): a batch on its way
    to Redis when this node's own ``clear()`` runs is gone from ``keys()`` at once."""
    (a,) = await redis_caches(1, url=redis_url, cluster=cluster, sync_interval=0.01)
    try:
        commands = runtime(a).commands
        send = commands.pipeline_replicated
        release = asyncio.Event()

        async def held_back(*args: Any) -> Any:
            await release.wait()
            return await send(*args)

        commands.pipeline_replicated = held_back  # type: ignore[method-assign]
        await a.set("user:1", 1)
        await wait_for(lambda: bool(runtime(a).protocol.outbox.inflight))
        assert await a.keys() == ["user:1"]
        await a.clear()
        assert await a.get("user:1") is None
        assert await a.keys() == []
        release.set()
        await wait_for(
            lambda: not runtime(a).protocol.outbox and not runtime(a).protocol.outbox.inflight
        )
        assert await a.keys() == [] and await a.get("user:1") is None
    finally:
        await a.close()


def test_a_key_in_flight_in_two_batches_shows_its_newest_write() -> None:
    """Overlapping batches (or a recheck's reload beside a later batch) may hold two
    writes of one key: the newest is the one this node's reads must see."""
    outbox = Outbox()
    older, newer = Entry(1, 1, "n"), Entry(2, 2, "n")
    outbox.sending([("k", newer)])
    outbox.sending([("k", older)])
    assert outbox.own("k") is newer
    outbox.sent([("k", older)])
    assert outbox.own("k") is newer
    outbox.sent([("k", newer)])
    assert outbox.own("k") is None
