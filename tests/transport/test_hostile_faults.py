"""Any exception while a message is decoded or handled costs that link only, logged once.

A conflict resolver is user code: one that raises stands for every bug that may surface
while a peer's message is handled (issue 12, item 2).
"""

from __future__ import annotations

import logging
import random
import time

import msgpack
import pytest
from conftest import FAST, make_engine, view, wait_for
from rawpeer import RawPeer

from crdtcache.core import (
    Entry,
    GossipConfig,
    GossipEngine,
    HybridClock,
    Push,
    Replica,
    Version,
    encode_value,
    pack_ts,
)
from crdtcache.transport import Node, encode_frame


def _raising_resolver(local: Version, remote: Version) -> Version:
    if local.key == "boom":
        raise RuntimeError("a resolver bug")
    return remote if (remote.stamp.ts, remote.origin) > (local.stamp.ts, local.origin) else local


async def test_an_exception_while_handling_drops_the_link_with_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    replica = Replica(HybridClock("fragile"), resolver=_raising_resolver)
    node = Node(GossipEngine(replica, random.Random(1), GossipConfig(**FAST)))
    await node.start()
    peers: list[RawPeer] = []
    try:
        now = time.time()
        node.engine.set("boom", encode_value("boom", "local"), now)
        peers.append(await RawPeer.join(node))
        stamp = pack_ts(int(now * 1000) + 5)
        peers[0].send(Push((("boom", Entry("remote", stamp, "intruder")),)))
        assert await peers[0].closed_by_node()
        lines = [r for r in caplog.records if "dropping connection" in r.getMessage()]
        assert len(lines) == 1 and "unexpected error" in lines[0].getMessage()
        assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
        assert view(node) == {"boom": "local"}
        # The node goes on: another peer is served.
        peers.append(await RawPeer.join(node, "second"))
        peers[1].send(Push((("fine", Entry("v", stamp, "second")),)))
        await wait_for(lambda: view(node).get("fine") == "v")
    finally:
        for peer in peers:
            peer.close()
        await node.close()


async def test_a_value_of_an_unexpected_type_in_a_field_drops_the_link(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    node = Node(make_engine("strict"))
    await node.start()
    try:
        peer = await RawPeer.join(node)
        # A map where the marks' stamps should be: refused at decode, one line.
        peer.writer.write(encode_frame(msgpack.packb([3, 1, {"a": {"x": 1}}])))
        assert await peer.closed_by_node()
        lines = [r for r in caplog.records if "dropping connection" in r.getMessage()]
        assert len(lines) == 1 and "malformed" in lines[0].getMessage()
        peer.close()
    finally:
        await node.close()
