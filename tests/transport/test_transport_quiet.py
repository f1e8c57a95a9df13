"""Log levels of failed handshakes: a peer that leaves mid-handshake is not a warning.

A node shutting down, a duplicate link given up, a port check: a stream that closes
cleanly before its hello did nothing wrong (INFO). A truncated frame still is (WARNING).
Before issue 14, every ``crdtcache demo`` run ended with such WARNING lines.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from conftest import make_engine, wait_for

from crdtcache.transport import PROTOCOL_VERSION, Hello, Node, encode, encode_frame
from crdtcache.transport._node import parse_address

NODE_LOG = "crdtcache.transport._node"


async def _node(name: str) -> Node:
    node = Node(make_engine(name))
    await node.start()
    return node


async def _connect(node: Node) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert node.address is not None
    return await asyncio.open_connection(*parse_address(node.address))


def _hello(cluster: str, node: str = "mallory") -> Hello:
    return Hello(PROTOCOL_VERSION, cluster, node, 0, 1)


async def test_a_peer_that_leaves_during_the_handshake_is_not_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=NODE_LOG)
    node = await _node("n")
    try:
        _, writer = await _connect(node)
        writer.close()  # a port check, or a peer shutting down mid-dial
        await wait_for(lambda: node.handshake_failures == 1)
        records = [r for r in caplog.records if "dropping connection" in r.getMessage()]
        assert [r.levelno for r in records] == [logging.INFO], records
        assert "closed before the handshake finished" in records[0].getMessage()
    finally:
        await node.close()


async def test_a_truncated_handshake_frame_is_still_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=NODE_LOG)
    node = await _node("n")
    try:
        _, writer = await _connect(node)
        writer.write(encode_frame(encode(_hello("default")))[:-3])
        await writer.drain()
        writer.close()
        await wait_for(lambda: node.handshake_failures == 1)
        records = [r for r in caplog.records if "dropping connection" in r.getMessage()]
        assert [r.levelno for r in records] == [logging.WARNING], records
    finally:
        await node.close()
