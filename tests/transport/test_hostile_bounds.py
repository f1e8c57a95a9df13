"""max_size and max_memory bound what a peer leaves behind, stubs and tombstones too,
and a node that gave some up stays correct: at worst a miss (issue 12, item 9).
Real sockets on loopback."""

from __future__ import annotations

import time
from typing import Any

from rawpeer import RawPeer

from crdtcache import Cache
from crdtcache.core import TOMBSTONE, Entry, Push, pack_ts
from crdtcache.transport import Node

PUSHED = 200_000
BATCH = 4096


def _node(cache: Cache) -> Node:
    node: Node = cache._running().runtime.node  # type: ignore[attr-defined]  # the p2p runtime
    return node


async def _flood(peer: RawPeer, count: int, first_ms: int, *, deletes: bool = False) -> None:
    """Push ``count`` keys the node never saw, in messages of BATCH entries."""
    for start in range(0, count, BATCH):
        entries = tuple(
            (
                f"flood:{i:07}",
                Entry(TOMBSTONE if deletes else "v", pack_ts(first_ms + i), "intruder"),
            )
            for i in range(start, min(count, start + BATCH))
        )
        peer.send(Push(entries))
        await peer.barrier(start + 1)


async def _flooded(*, deletes: bool = False, **options: Any) -> tuple[int, Cache]:
    cache = Cache(backend="p2p", discovery="none", **options)
    await cache.start()
    peer = await RawPeer.join(_node(cache))
    try:
        await _flood(peer, PUSHED, int(time.time() * 1000) - PUSHED, deletes=deletes)
    finally:
        peer.close()
    return len(cache._running().replica.entries), cache


async def test_a_peer_pushing_many_keys_leaves_a_bounded_number_of_stubs() -> None:
    from crdtcache.cache._tier import STUBS_PER_VALUE

    entries, cache = await _flooded(max_size=1000)
    try:
        # Before: 200,000 stubs (key, stamp, origin) on a node holding 1,000 values.
        assert entries <= 1000 + STUBS_PER_VALUE * 1000 + BATCH
        tier = cache._tier
        assert tier.count <= 1000 and tier.shed > 0
    finally:
        await cache.close()


async def test_tombstones_count_toward_max_memory() -> None:
    budget = 2_000_000
    # Deletes of keys never seen: before, 200,000 tombstones kept an hour, uncounted.
    entries, cache = await _flooded(deletes=True, max_size=None, max_memory=budget)
    try:
        tier = cache._tier
        assert tier.nbytes + tier.stub_bytes <= budget + BATCH * 200
        assert entries < PUSHED // 5
    finally:
        await cache.close()


async def test_a_shed_key_never_takes_an_older_write_again() -> None:
    cache = Cache(backend="p2p", discovery="none", max_size=100)
    await cache.start()
    peer = await RawPeer.join(_node(cache))
    replica = cache._running().replica
    try:
        base = int(time.time() * 1000) - 100_000
        newest = pack_ts(base + 10)
        peer.send(Push((("victim", Entry("newest", newest, "intruder")),)))
        await peer.barrier(1)
        await _flood(peer, 5000, base + 20)  # newer keys: the victim's stamp is the oldest
        assert "victim" not in replica.entries and replica.floor >= newest
        peer.send(Push((("victim", Entry("older", pack_ts(base + 5), "other")),)))
        await peer.barrier(2)
        # Before the floor, the older write would now be served: at worst a miss.
        assert "victim" not in replica.entries and replica.refused_floor >= 1
        assert await cache.get("victim") is None
    finally:
        peer.close()
        await cache.close()
