"""Hostile input: each bad stream is dropped with one log line; the node keeps serving."""

from __future__ import annotations

import asyncio
import logging
import time

import msgpack
import pytest
from conftest import make_engine, start_cluster, view, wait_for, write

from crdtcache.core import Entry, Push, pack_ts
from crdtcache.transport import PROTOCOL_VERSION, Hello, Node, encode, encode_frame
from crdtcache.transport._node import parse_address


async def _open(node: Node) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert node.address is not None
    host, port = parse_address(node.address)
    return await asyncio.open_connection(host, port)


def _hello(
    node_id: str = "intruder",
    *,
    version: int = PROTOCOL_VERSION,
    cluster: str = "default",
    port: int = 0,
) -> bytes:
    return encode_frame(encode(Hello(version, cluster, node_id, port, 1)))


async def _closed_by_node(reader: asyncio.StreamReader, timeout: float = 3.0) -> None:
    """Read until the node closes the stream (after any hello it sent)."""

    async def drain() -> None:
        while await reader.read(65536):
            pass

    await asyncio.wait_for(drain(), timeout)


async def _still_serves(cluster: list[Node], key: str) -> None:
    write(cluster[1], key, "ok")
    await wait_for(lambda: view(cluster[0]).get(key) == "ok" and view(cluster[2]).get(key) == "ok")


HANDSHAKE_JUNK = {
    "garbage bytes": (b"GET / HTTP/1.1\r\n\r\n", "malformed|undecodable|frame of"),
    "oversized frame": ((64 << 20).to_bytes(4, "big"), "frame of 67108864 bytes"),
    "malformed msgpack": (encode_frame(b"\xc1\xc1\xc1"), "undecodable"),
    "unknown message type": (encode_frame(msgpack.packb([77, 1])), "unknown message type"),
    "wrong protocol version": (_hello(version=99), "protocol version 99"),
    "wrong cluster": (_hello(cluster="other"), "cluster 'other'"),
    "not a hello first": (encode_frame(encode(Push(()))), "expected a hello"),
}


@pytest.mark.parametrize("case", HANDSHAKE_JUNK, ids=HANDSHAKE_JUNK.keys())
async def test_bad_first_frame_is_dropped(
    case: str, cluster3: list[Node], caplog: pytest.LogCaptureFixture
) -> None:
    payload, expected = HANDSHAKE_JUNK[case]
    target = cluster3[0]
    before = dict(target.engine.replica.entries)
    caplog.set_level(logging.WARNING, logger="crdtcache.transport._node")
    reader, writer = await _open(target)
    writer.write(payload)
    await writer.drain()
    await _closed_by_node(reader)
    writer.close()
    lines = [r.getMessage() for r in caplog.records if "dropping connection" in r.getMessage()]
    assert len(lines) == 1, lines
    import re

    assert re.search(expected, lines[0]), lines[0]
    assert target.engine.replica.entries == before
    await _still_serves(cluster3, f"after-{case}")


async def test_truncated_frame_is_dropped(
    cluster3: list[Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="crdtcache.transport._node")
    reader, writer = await _open(cluster3[0])
    writer.write(_hello())
    body = encode(Push((("k", Entry("v", 1, "intruder")),)))
    writer.write(encode_frame(body)[:-3])
    await writer.drain()
    writer.write_eof()
    await _closed_by_node(reader)
    assert any("truncated frame" in r.getMessage() for r in caplog.records)
    assert "k" not in view(cluster3[0])
    await _still_serves(cluster3, "after-truncation")


async def test_junk_after_a_good_hello_is_dropped_and_nothing_stored(
    cluster3: list[Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="crdtcache.transport._node")
    reader, writer = await _open(cluster3[0])
    writer.write(_hello())
    bad = msgpack.packb([2, [["k", 0, {"x": 1}, 1, "intruder", None]], [], None, 1, 2, 0, 0])
    writer.write(encode_frame(bad))
    await writer.drain()
    await _closed_by_node(reader)
    assert any("plain value of a wrong type" in r.getMessage() for r in caplog.records)
    assert "k" not in view(cluster3[0])
    await _still_serves(cluster3, "after-junk")


@pytest.mark.parametrize("expires", [float("inf"), float("nan"), float("-inf")])
async def test_a_non_finite_expiry_drops_the_link_and_stores_nothing(
    cluster3: list[Node], caplog: pytest.LogCaptureFixture, expires: float
) -> None:
    # Once stored, such an entry killed the read task (OverflowError computing its due
    # time), spread by anti-entropy and left every node that persisted it unable to
    # reopen its store.
    caplog.set_level(logging.WARNING, logger="crdtcache.transport._node")
    reader, writer = await _open(cluster3[0])
    writer.write(_hello())
    bad = msgpack.packb(
        [2, [["poison", 0, "v", 1 << 40, "intruder", expires]], [], None, 1, 2, 0, 0]
    )
    writer.write(encode_frame(bad))
    await writer.drain()
    await _closed_by_node(reader)
    assert any("finite" in r.getMessage() for r in caplog.records)
    assert "poison" not in cluster3[0].engine.replica.entries
    await _still_serves(cluster3, "after-poison")


async def test_silent_peer_hits_the_handshake_timeout(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="crdtcache.transport._node")
    node = Node(make_engine("patient"), handshake_timeout=0.3)
    await node.start()
    try:
        reader, writer = await _open(node)
        started = time.monotonic()
        await _closed_by_node(reader, 3.0)
        assert time.monotonic() - started < 2.0
        assert any("handshake timeout" in r.getMessage() for r in caplog.records)
        writer.close()
    finally:
        await node.close()


async def test_far_future_stamps_are_refused_and_counted(cluster3: list[Node]) -> None:
    _reader, writer = await _open(cluster3[0])
    writer.write(_hello(port=1))  # a member: a client link's gossip is ignored
    future = pack_ts(int((time.time() + 3600) * 1000))
    writer.write(encode_frame(encode(Push((("pinned", Entry("v", future, "intruder")),)))))
    await writer.drain()
    await wait_for(lambda: cluster3[0].engine.stats.refused_drift == 1)
    assert "pinned" not in view(cluster3[0])
    writer.close()


async def test_connection_flood_is_refused_beyond_the_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="crdtcache.transport._node")
    nodes = await start_cluster(2, prefix="flood")
    a, b = nodes
    a.max_connections = 4  # accepted links: b's and three more
    opened = []
    try:
        for i in range(20):
            opened.append(await _open(a))
            opened[-1][1].write(_hello(f"flood-client-{i}"))
        await wait_for(lambda: a.refused_connections >= 10, 3)
        assert any("refusing a connection" in r.getMessage() for r in caplog.records)
        write(b, "during-flood", 1)
        await wait_for(lambda: "during-flood" in view(a))
    finally:
        for _, w in opened:
            w.close()
        await asyncio.gather(a.close(), b.close())


async def test_a_peer_that_never_reads_cannot_grow_memory() -> None:
    node = Node(make_engine("sender"), send_buffer=64 << 10)
    await node.start()
    try:
        _reader, writer = await _open(node)
        # A listening port makes it a member (port 0 would be a client link).
        writer.write(_hello("sluggish", port=1))
        await writer.drain()
        await wait_for(lambda: "sluggish" in node.connected_peers())
        for i in range(400):  # ~40 MB offered to a peer that reads nothing
            node.engine.set(f"big{i}", b"x" * 100_000, time.time())
            await node.flush(ack=False, timeout=0)
        conn = node.connections()["sluggish"]
        assert conn.dropped > 0
        assert conn.buffered() < (64 << 10) + 4 * 100_200  # the limit plus in-flight frames
        writer.close()
    finally:
        await node.close()
