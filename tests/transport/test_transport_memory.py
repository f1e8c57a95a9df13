"""Bare nodes on a MemoryNetwork: completion by events, and any error costs one link."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from conftest import make_engine, meshed

from crdtcache import PeerError
from crdtcache.core import encode_value
from crdtcache.testing import MemoryNetwork
from crdtcache.transport import Node


def node(net: MemoryNetwork, name: str, **options: Any) -> Node:
    return Node(make_engine(name), network=net.hub.network(name), clock=net.clock, **options)


async def until(predicate: Any, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def started(net: MemoryNetwork, *names: str) -> list[Node]:
    nodes = [node(net, name) for name in names]
    for n in nodes:
        await n.start()
    for n in nodes[1:]:
        assert nodes[0].address is not None
        n.add_seed(nodes[0].address)
    await until(lambda: meshed(nodes))
    return nodes


def test_any_error_while_handling_a_message_drops_only_that_link(
    caplog: pytest.LogCaptureFixture,
) -> None:
    unhandled: list[dict[str, Any]] = []

    async def scenario(net: MemoryNetwork) -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: unhandled.append(ctx))
        a, b = await started(net, "a", "b")

        def broken(sender: str, message: object, now: float) -> Any:
            raise RuntimeError("a bug in the engine")

        a.engine.handle = broken  # type: ignore[method-assign]
        b.engine.set("k", encode_value("k", 1), net.clock())
        b.wake()
        await until(lambda: a.protocol_errors >= 1)
        await asyncio.gather(a.close(), b.close())

    caplog.set_level(logging.WARNING, logger="crdtcache.transport._node")
    with MemoryNetwork(seed=1) as net:
        net.run(scenario(net), timeout=300)
    assert any("unexpected error" in r.getMessage() for r in caplog.records)
    assert unhandled == []  # no "Task exception was never retrieved", nothing escaped


def test_a_fetch_ends_when_every_peer_answered_not_at_its_timeout() -> None:
    async def scenario(net: MemoryNetwork) -> None:
        a, b, c = await started(net, "a", "b", "c")
        a.engine.set("held", encode_value("held", "v"), net.clock())
        a.engine.set("lost", encode_value("lost", "w"), net.clock())
        a.wake()
        await until(
            lambda: "lost" in b.engine.replica.entries and "lost" in c.engine.replica.entries
        )
        for n in (a, b, c):
            n.engine.replica.evict("lost")  # nobody holds its value any more
        b.engine.replica.evict("held")
        loop = asyncio.get_running_loop()
        before = loop.time()
        await b.fetch(["held"], timeout=30)
        entry = b.engine.replica.lookup("held", net.clock())
        assert entry is not None and entry.held
        await b.fetch(["lost"], timeout=30)  # a and c answer without it: done
        assert loop.time() - before < 1.0
        await asyncio.gather(a.close(), b.close(), c.close())

    with MemoryNetwork(seed=2) as net:
        net.run(scenario(net), timeout=300)


def test_an_admin_request_fails_at_once_when_its_link_drops() -> None:
    async def scenario(net: MemoryNetwork) -> None:
        server = node(net, "server")
        never: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def slow(op: str, args: tuple[Any, ...]) -> Any:
            return await never

        server.admin = slow
        await server.start()
        client = node(net, "client", client_mode=True)
        await client.start()
        assert server.address is not None
        client.add_seed(server.address)
        await until(lambda: bool(client.connected_peers()))
        asking = asyncio.ensure_future(client.request("server", "stats", timeout=60))
        await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()
        before = loop.time()
        net.break_link("client", "server")
        with pytest.raises(PeerError, match="lost the link to server"):
            await asking
        assert loop.time() - before < 1.0
        await asyncio.gather(client.close(), server.close())

    with MemoryNetwork(seed=3) as net:
        net.run(scenario(net), timeout=300)
