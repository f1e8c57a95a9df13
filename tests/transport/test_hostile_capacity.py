"""Unauthenticated streams cannot keep a peer out, nor hints point a node at the world
(issue 12, items 3 and 4). Real sockets on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import time

from conftest import make_engine, wait_for
from rawpeer import RawPeer, open_socket

from crdtcache.core import Ping
from crdtcache.transport import Node
from crdtcache.wire._codec import PeerList

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


class Tarpit:
    """Listening sockets that accept and never say a word: silent hints."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.accepted = 0
        self._held: list[asyncio.StreamWriter] = []

    async def open(self, count: int) -> list[int]:
        async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            self._held.append(writer)

        for _ in range(count):
            self.servers.append(await asyncio.start_server(hold, "127.0.0.1", 0))
        return [s.sockets[0].getsockname()[1] for s in self.servers]

    def close(self) -> None:
        for writer in self._held:
            writer.close()
        for server in self.servers:
            server.close()


def _hints(node: Node) -> int:
    return sum(1 for w in node._dialer.wanted.values() if not w.seed)


async def test_a_peer_list_names_at_most_a_few_addresses_to_dial() -> None:
    from crdtcache.transport._dialer import MAX_HINTS_PER_SOURCE

    node = Node(make_engine("hinted"), handshake_timeout=0.5)
    await node.start()
    tarpit = Tarpit()
    intruder = None
    try:
        ports = await tarpit.open(3 * MAX_HINTS_PER_SOURCE)
        intruder = await RawPeer.join(node)
        hints = tuple((f"ghost{p}", "127.0.0.1", p) for p in ports)
        intruder.send(PeerList(hints))
        await intruder.barrier()
        assert _hints(node) <= MAX_HINTS_PER_SOURCE + 1  # (+1: the dial-back to the intruder)
        assert node.statistics().ignored_hints >= len(ports) - MAX_HINTS_PER_SOURCE
        await asyncio.sleep(0.3)
        assert tarpit.accepted <= MAX_HINTS_PER_SOURCE
    finally:
        if intruder is not None:
            intruder.close()
        tarpit.close()
        await node.close()


async def test_a_client_link_names_nothing_to_dial() -> None:
    node = Node(make_engine("hinted"))
    await node.start()
    tarpit = Tarpit()
    client = None
    try:
        (port,) = await tarpit.open(1)
        client = await RawPeer.join(node, "cli", port=0)
        client.send(PeerList((("ghost", "127.0.0.1", port),)))
        client.send(Ping(1))  # gossip from a client link: ignored, it is no member
        await asyncio.sleep(0.3)
        assert _hints(node) == 0 and tarpit.accepted == 0
        assert "cli" not in node.engine.peers
    finally:
        if client is not None:
            client.close()
        tarpit.close()
        await node.close()


async def test_dials_to_hints_leave_room_for_inbound_peers() -> None:
    node = Node(make_engine("hinted"), max_connections=4, handshake_timeout=5.0)
    await node.start()
    tarpit = Tarpit()
    peers: list[RawPeer] = []
    try:
        ports = await tarpit.open(20)
        peers.append(await RawPeer.join(node))
        peers[0].send(PeerList(tuple((f"ghost{p}", "127.0.0.1", p) for p in ports)))
        await wait_for(lambda: tarpit.accepted >= 20)  # 20 dials stuck in their handshake
        for i in range(3):  # the cap of accepted links is still free for peers
            peers.append(await RawPeer.join(node, f"member{i}"))
        assert node.refused_connections == 0
    finally:
        for peer in peers:
            peer.close()
        tarpit.close()
        await node.close()


async def test_a_silent_hint_is_given_up_quickly() -> None:
    node = Node(make_engine("hinted"), handshake_timeout=0.2, forget_silent_after=0.5)
    await node.start()
    tarpit = Tarpit()

    def named_by_talker() -> int:
        return sum(1 for w in node._dialer.wanted.values() if w.source == "talker")

    try:
        ports = await tarpit.open(5)
        member = await RawPeer.join(node, "talker")
        member.send(PeerList(tuple((f"ghost{p}", "127.0.0.1", p) for p in ports)))
        await wait_for(lambda: tarpit.accepted >= 5)
        assert named_by_talker() >= 5
        # Before: redialled for two minutes. (The dial-back to "talker" waits while
        # its link is up.)
        await wait_for(lambda: named_by_talker() == 1, 5)
        member.close()
    finally:
        tarpit.close()
        await node.close()
