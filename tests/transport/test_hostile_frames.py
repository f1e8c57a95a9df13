"""A hostile frame costs a small multiple of its size to refuse, and before any handshake
a frame may be no larger than a hello (issue 12, item 7). Real sockets on loopback."""

from __future__ import annotations

import asyncio
import gc
import logging
import tracemalloc

import pytest
from conftest import make_engine, start_cluster, view, wait_for, write
from rawpeer import RawPeer, open_socket

from crdtcache.transport import Node
from crdtcache.wire._codec import MAX_HELLO_BYTES
from crdtcache.wire._framing import HEADER, MAX_FRAME_BYTES

FRAME = MAX_FRAME_BYTES - 64


def nested_empty_arrays(size: int) -> bytes:
    """A frame body of arrays of 65,535 arrays of 63 empty arrays, cut to ``size``."""
    inner = b"\xdc\x00\x3f" + b"\x90" * 63
    body = b"\xdc\xff\xff" + inner * 65535
    return body[:size]


def tiny_strings(size: int) -> bytes:
    """An array of arrays of 65,535 two-character strings, cut to ``size``."""
    strings = b"".join(b"\xa2" + bytes((65 + i % 26, 65 + i // 26 % 26)) for i in range(65535))
    return (b"\xdc\x01\x00" + (b"\xdc\xff\xff" + strings) * (size // len(strings) + 1))[:size]


async def test_a_first_frame_larger_than_a_hello_is_refused_from_its_header(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="crdtcache.transport._node")
    node = Node(make_engine("guarded"))
    await node.start()
    try:
        reader, writer = await open_socket(node)
        writer.write(HEADER.pack(FRAME))  # nothing of the body yet
        await writer.drain()
        await asyncio.wait_for(reader.read(), 5)  # closed without waiting for the body
        writer.close()
        lines = [r.getMessage() for r in caplog.records if "dropping" in r.getMessage()]
        assert len(lines) == 1
        assert f"frame of {FRAME} bytes announced, limit is {MAX_HELLO_BYTES}" in lines[0]
    finally:
        await node.close()


@pytest.mark.parametrize("shape", [nested_empty_arrays, tiny_strings], ids=lambda f: f.__name__)
async def test_a_hostile_frame_after_the_hello_costs_a_small_multiple_of_its_size(
    shape: object, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="crdtcache.transport._node")
    assert callable(shape)
    body = shape(FRAME)
    nodes = await start_cluster(2, prefix="budget")
    peer = await RawPeer.join(nodes[0])
    try:
        gc.collect()
        tracemalloc.start()
        try:
            peer.send_raw(body)
            assert await peer.closed_by_node(30)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # The node reads the frame (about three copies pass through the stream reader,
        # the framer and the body) and refuses it at its budget: before, nested arrays
        # cost ~60 times the frame, tiny strings ~20 times.
        assert peak < 12 * FRAME, f"{peak / FRAME:.1f} times the frame"
        assert any("over budget" in r.getMessage() for r in caplog.records)
        write(nodes[1], "after", 1)
        await wait_for(lambda: view(nodes[0]).get("after") == 1)
    finally:
        peer.close()
        await asyncio.gather(*(n.close() for n in nodes))
