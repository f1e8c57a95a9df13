"""Pattern tombstones from a peer are capped per message and in total; a tombstone over
the cap is a refusal (the link stays, marks do not move), never a dropped link
(issue 12, item 6). Real sockets on loopback."""

from __future__ import annotations

import asyncio
import logging
import random
import time

import pytest
from conftest import FAST, start_cluster, view, wait_for
from rawpeer import RawPeer

from crdtcache.core import (
    Entry,
    GossipConfig,
    GossipEngine,
    HybridClock,
    PatternTombstone,
    Push,
    Replica,
    pack_ts,
)
from crdtcache.transport import Node, encode


def _stamp(offset_ms: int = 0) -> int:
    return pack_ts(int(time.time() * 1000) + offset_ms)


async def test_tombstones_beyond_the_replica_cap_are_refused_and_the_link_stays() -> None:
    replica = Replica(HybridClock("capped"), max_patterns=4)
    node = Node(GossipEngine(replica, random.Random(1), GossipConfig(**FAST)))
    await node.start()
    intruder = None
    try:
        intruder = await RawPeer.join(node)
        tombs = tuple(PatternTombstone(f"p{i}:*", _stamp(i), "intruder") for i in range(6))
        upto = tombs[-1].ts
        intruder.send(Push((), tombs, "intruder", -1, upto))
        await intruder.barrier()  # answered: the link survived the refusal
        assert len(replica.patterns) == 4
        assert node.engine.stats.refused_patterns == 2
        assert replica.marks.get("intruder", -1) < upto  # asked for again later
        entry = Entry("v", _stamp(10), "intruder")
        intruder.send(Push((("after", entry),)))
        await wait_for(lambda: view(node) == {"after": "v"})
    finally:
        if intruder is not None:
            intruder.close()
        await node.close()


async def test_a_message_over_the_per_message_cap_is_refused_as_junk(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from crdtcache.core._patterns import MAX_MESSAGE_PATTERNS

    caplog.set_level(logging.WARNING, logger="crdtcache.transport._node")
    nodes = await start_cluster(2, prefix="percap")
    intruder = await RawPeer.join(nodes[0])
    try:
        count = MAX_MESSAGE_PATTERNS + 1
        tombs = tuple(PatternTombstone(f"p{i}:*", _stamp(), "intruder") for i in range(count))
        intruder.send_raw(encode(Push((), tombs)))
        assert await intruder.closed_by_node()
        assert any("per message" in r.getMessage() for r in caplog.records)
        assert nodes[0].engine.replica.patterns == {}
    finally:
        intruder.close()
        await asyncio.gather(*(n.close() for n in nodes))


async def test_many_local_invalidations_reach_a_peer_within_the_cap() -> None:
    from crdtcache.core._patterns import MAX_MESSAGE_PATTERNS

    a, b = await start_cluster(2, prefix="many")
    try:
        count = 3 * MAX_MESSAGE_PATTERNS + 5
        now = time.time()
        for i in range(count):
            a.engine.invalidate_pattern(f"tenant{i}:*", now)
        a.wake()
        await wait_for(lambda: len(b.engine.replica.patterns) == count)
        assert b.protocol_errors == 0 and len(b.connected_peers()) == 1
    finally:
        await asyncio.gather(a.close(), b.close())
