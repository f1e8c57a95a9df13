"""Refused and dropped connections are logged a few at a time, then counted
(issue 12, item 11). Real sockets on loopback."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
from conftest import make_engine
from rawpeer import open_socket

from crdtcache.core._throttle import LOG_BURST
from crdtcache.transport import Node

CONNECTIONS = 400


async def _garbage(node: Node) -> None:
    reader, writer = await open_socket(node)
    writer.write(b"GET / HTTP/1.1\r\n\r\n")
    await asyncio.wait_for(reader.read(), 5)
    writer.close()


async def test_hundreds_of_dropped_connections_make_a_few_lines_and_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="crdtcache.transport._node")
    node = Node(make_engine("noisy"))
    await node.start()
    try:
        for start in range(0, CONNECTIONS, 50):
            await asyncio.gather(*(_garbage(node) for _ in range(start, start + 50)))
        assert node.handshake_failures == CONNECTIONS
    finally:
        await node.close()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) <= 2 * LOG_BURST + 2, lines[:5]
    counts = [int(m.group(1)) for t in lines if (m := re.match(r"(\d+) more failed", t))]
    assert sum(counts) + len([t for t in lines if t.startswith("dropping")]) == CONNECTIONS
