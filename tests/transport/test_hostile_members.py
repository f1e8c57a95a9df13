"""Who becomes a member, for how long, and how many (issue 12, item 10).
Real sockets on loopback."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from conftest import FAST, wait_for
from rawpeer import RawPeer

from crdtcache import Cache
from crdtcache.cache._health import assess
from crdtcache.cache._statistics import Counters
from crdtcache.core import DEAD, GossipConfig, GossipEngine, HybridClock, Ping, Replica
from crdtcache.runtime._protocol import PeerState, RuntimeStatistics
from crdtcache.transport import Node


async def test_client_links_never_become_members_nor_cost_health() -> None:
    cache = Cache(backend="p2p", discovery="none")
    await cache.start()
    try:
        assert cache.address is not None
        node = cache._running().runtime.node  # type: ignore[attr-defined]  # the p2p runtime
        for i in range(6):  # what the CLI does: connect, ask, leave (here: gossip too)
            client = await RawPeer.join(node, f"cli-{i}", port=0)
            client.send(Ping(1))
            await client.barrier_or_none()
            client.close()
        await asyncio.sleep(0.2)
        assert node.engine.peers == {}
        assert cache.health().score == 100, cache.health().reasons
    finally:
        await cache.close()


def _engine(name: str, **config: Any) -> GossipEngine:
    settings: dict[str, Any] = {**FAST, "suspect_after": 0.1, "dead_after": 0.2, **config}
    return GossipEngine(Replica(HybridClock(name)), random.Random(1), GossipConfig(**settings))


async def test_the_peer_table_is_capped_and_forgets_the_dead() -> None:
    node = Node(_engine("table", max_peers=8, forget_dead_after=1.0))
    await node.start()
    try:
        for i in range(40):  # node ids used once: connect, talk, vanish (no goodbye)
            peer = await RawPeer.join(node, f"once-{i}")
            peer.send(Ping(1))
            await asyncio.sleep(0.02)
            peer.close()
            assert len(node.engine.peers) <= 8
        # Dead ones make room for newcomers, and are forgotten after forget_dead_after.
        await wait_for(lambda: node.engine.peers == {}, 5)
    finally:
        await node.close()


async def test_a_full_table_of_live_peers_refuses_a_newcomer_link() -> None:
    node = Node(_engine("full", max_peers=2, dead_after=30.0, suspect_after=30.0))
    await node.start()
    peers: list[RawPeer] = []
    try:
        for i in range(2):
            peers.append(await RawPeer.join(node, f"live-{i}"))
        await wait_for(lambda: len(node.engine.peers) == 2)
        late = await RawPeer.join(node, "late")
        assert await late.closed_by_node()
        assert set(node.engine.peers) == {"live-0", "live-1"}
    finally:
        for peer in peers:
            peer.close()
        await node.close()


def test_health_names_a_few_peers_and_counts_the_rest() -> None:
    from crdtcache.cache._health import NAMED_PEERS

    peers = tuple(PeerState(f"gone-{i:05}", None, DEAD) for i in range(20_000))
    health = assess(
        Counters(), RuntimeStatistics(peers=peers), _engine("h").stats, refused_values=0
    )
    (reason,) = [r for r in health.reasons if "down" in r]
    assert reason.startswith("-30: 20000 peer(s) down: gone-00000")
    assert reason.endswith(f"and {20_000 - NAMED_PEERS} more") and len(reason) < 200
