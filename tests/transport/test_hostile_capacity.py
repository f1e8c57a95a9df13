"""Unauthenticated streams cannot keep a peer out, nor hints point a node at the world
(issue 12, items 3 and 4). Real sockets on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import time

from conftest import make_engine, wait_for
from rawpeer import open_socket

from crdtcache.transport import Node

SECRET = b"capacity-secret-0123456789abcdef"
IDLE = 500


class IdleFlood:
    """Holds ``count`` silent connections open against a node, reopening any it drops."""

    def __init__(self, node: Node, count: int) -> None:
        self.node = node
        self.count = count
        self.writers: list[asyncio.StreamWriter] = []
        self.readers: list[asyncio.StreamReader] = []
        self.opened = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._top_up()
        self._task = asyncio.create_task(self._keep())

    async def _top_up(self) -> None:
        alive = [(r, w) for r, w in zip(self.readers, self.writers, strict=True) if not r.at_eof()]
        self.readers = [r for r, _ in alive]
        self.writers = [w for _, w in alive]
        missing = self.count - len(self.writers)
        for start in range(0, missing, 100):
            batch = min(100, missing - start)
            opened = await asyncio.gather(*(open_socket(self.node) for _ in range(batch)))
            for reader, writer in opened:
                self.readers.append(reader)
                self.writers.append(writer)
            self.opened += batch

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            await self._top_up()  # a stream the node closed reads as at EOF

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for writer in self.writers:
            writer.close()


async def test_a_secret_holder_joins_while_hundreds_of_idle_connections_are_held_open() -> None:
    target = Node(make_engine("target"), secret=SECRET)
    await target.start()
    flood = IdleFlood(target, IDLE)
    member = Node(make_engine("member"), secret=SECRET)
    try:
        await flood.start()
        assert target.address is not None
        await member.start()
        started = time.monotonic()
        member.add_seed(target.address)
        await wait_for(lambda: "member" in target.connected_peers(), 10)
        joined = time.monotonic() - started
        assert joined < 2.0, f"joined after {joined:.1f} s"
        assert len(target.links.handshaking) <= target.max_handshakes
        assert target.statistics().evicted_handshakes > 0
    finally:
        await flood.stop()
        await asyncio.gather(member.close(), target.close())
