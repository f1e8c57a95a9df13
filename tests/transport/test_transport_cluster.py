"""Several real nodes on loopback: convergence, write-through, drops, partitions."""

from __future__ import annotations

import asyncio
import time

from conftest import make_engine, meshed, start_cluster, view, wait_for, write

from crdtcache.core import ALIVE, DEAD, PeerEvent
from crdtcache.transport import Node


async def test_three_nodes_converge(cluster3: list[Node]) -> None:
    for i in range(60):
        write(cluster3[i % 3], f"k{i % 20}", {"i": i})
    cluster3[1].engine.delete("k3", time.time())
    cluster3[2].engine.invalidate_pattern("k1*", time.time())
    for n in cluster3:
        n.wake()
    await wait_for(lambda: view(cluster3[0]) == view(cluster3[1]) == view(cluster3[2]))
    data = view(cluster3[0])
    assert "k3" not in data and not any(k.startswith("k1") for k in data)
    assert data["k7"] == {"i": 47}


async def test_ten_nodes_in_one_loop_converge() -> None:
    nodes = await start_cluster(10)
    try:
        for i, node in enumerate(nodes):
            write(node, f"from:{i}", i)
        await wait_for(lambda: all(len(view(n)) == 10 for n in nodes), 10)
        assert all(view(n) == view(nodes[0]) for n in nodes)
    finally:
        await asyncio.gather(*(n.close() for n in nodes))


async def test_write_through_returns_once_every_peer_applied(cluster3: list[Node]) -> None:
    a, b, c = cluster3
    a.engine.set("wt", "value-1", time.time())
    # No wake(): the flush with acks is what must carry it.
    missing = await a.flush(ack=True, timeout=2.0)
    assert missing == frozenset()
    now = time.time()
    assert b.engine.replica.lookup("wt", now) is not None
    assert c.engine.replica.lookup("wt", now) is not None


async def test_write_through_without_peers_returns_at_once() -> None:
    node = Node(make_engine("alone"))
    await node.start()
    try:
        node.engine.set("k", 1, time.time())
        assert await node.flush(ack=True, timeout=0.1) == frozenset()
    finally:
        await node.close()


async def test_a_crashed_peer_is_suspected_then_dead_and_caught_up_on_return() -> None:
    nodes = await start_cluster(2, prefix="crash")
    a, b = nodes
    events: list[PeerEvent] = []
    a.listen(lambda changes: None, events.append)
    try:
        # Crash b without a goodbye: abort its sockets and stop it processing.
        b._closing = True
        if b._listener is not None:
            b._listener.close()
        for conn in list(b.links.streams):
            conn.abort()
        await wait_for(lambda: any(e.state == DEAD for e in events), 5)
        # While b is away, a writes; b comes back (same replica, new runtime).
        write(a, "while-away", 1)
        b2 = Node(b.engine)
        await b2.start()
        assert a.address is not None
        b2.add_seed(a.address)
        await wait_for(lambda: "while-away" in view(b2), 5)
        await wait_for(lambda: events[-1].state == ALIVE, 5)
        await b2.close()
    finally:
        await a.close()


async def test_partition_by_closing_connections_then_heal() -> None:
    nodes = await start_cluster(3, prefix="part")
    a, b, c = nodes
    try:
        await c.close()  # c is cut off; its replica lives on in its engine
        await wait_for(lambda: len(a.connected_peers()) == 1 and len(b.connected_peers()) == 1)
        write(a, "side-ab", "from a")
        write(a, "both", "a's")
        c.engine.set("side-c", b"from c", time.time())
        time.sleep(0.002)  # c's write to "both" is later: it must win everywhere
        c.engine.set("both", "c's", time.time())
        await asyncio.sleep(0.1)
        assert "side-c" not in view(a)
        c2 = Node(c.engine)
        await c2.start()
        assert b.address is not None
        c2.add_seed(b.address)
        healed = [a, b, c2]
        await wait_for(lambda: meshed(healed), 5)
        await wait_for(lambda: view(a) == view(b) == view(c2), 5)
        assert view(a)["both"] == "c's"
        assert view(a)["side-c"] == b"from c"
        await c2.close()
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_simultaneous_dials_leave_one_connection_each() -> None:
    a, b = Node(make_engine("sim-a")), Node(make_engine("sim-b"))
    await a.start()
    await b.start()
    try:
        assert a.address is not None and b.address is not None
        a.add_seed(b.address)
        b.add_seed(a.address)
        await wait_for(lambda: meshed([a, b]))
        await asyncio.sleep(0.5)
        assert a.statistics().connections == 1 == b.statistics().connections
        write(a, "x", 1)
        await wait_for(lambda: "x" in view(b))
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_statistics_count_bytes_and_frames(cluster3: list[Node]) -> None:
    write(cluster3[0], "s", "x" * 1000)
    await wait_for(lambda: "s" in view(cluster3[1]))
    stats = cluster3[0].statistics()
    assert stats.bytes_sent > 1000
    assert stats.frames_sent > 0 and stats.frames_received > 0
    assert set(stats.peer_addresses) == {"n1", "n2"}


async def test_close_flushes_queued_writes() -> None:
    nodes = await start_cluster(2, prefix="flush", sync_interval=10.0)
    a, b = nodes
    a.engine.set("late", 1, time.time())  # queued, and nobody woke the node to flush it
    await a.close()
    await wait_for(lambda: "late" in view(b), 2)
    await b.close()
