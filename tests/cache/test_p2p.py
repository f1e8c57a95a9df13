"""Several p2p caches, over the real TCP transport on 127.0.0.1 and on a MemoryNetwork.

Each scenario runs twice (``[tcp]`` and ``[memory]``): the same caches, engines and
nodes, once on loopback sockets in real time, once on in-memory streams in virtual time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import pytest

from crdtcache import Cache, CacheEvent, EventBus, InvalidationRule, PeerError, SyncCache
from crdtcache.core import NOT_HELD, Push
from crdtcache.testing import MemoryNetwork

TRANSPORTS = ["tcp", "memory"]
#: The MemoryNetwork of the scenario running now (None: loopback TCP).
_NETWORK: ContextVar[MemoryNetwork | None] = ContextVar("network", default=None)


def p2p_cache(**options: Any) -> Cache:
    """A p2p cache on the transport of the running scenario (discovery off)."""
    net = _NETWORK.get()
    if net is None:
        return Cache(backend="p2p", discovery="none", **options)
    return net.cache(**options)


def on_both_transports(*, pair: bool = False) -> Callable[[Any], Any]:
    """Run an async scenario on loopback TCP and on a MemoryNetwork (parametrized).

    With ``pair``, the scenario gets two meshed caches (closed afterwards).
    """

    def decorate(scenario: Callable[..., Awaitable[None]]) -> Any:
        async def main() -> None:
            if not pair:
                await scenario()
                return
            caches = await cluster(2)
            try:
                await scenario(caches)
            finally:
                for cache in caches:
                    await cache.close()

        def run(transport: str) -> None:
            if transport == "tcp":
                asyncio.run(main())
                return
            with MemoryNetwork(seed=1) as net:
                token = _NETWORK.set(net)
                try:
                    net.run(main(), timeout=600)
                finally:
                    _NETWORK.reset(token)

        run.__name__ = run.__qualname__ = scenario.__name__
        run.__doc__ = scenario.__doc__
        return pytest.mark.parametrize("transport", TRANSPORTS)(run)

    return decorate


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.005)


async def eventually(probe: Callable[[], Any], expected: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := await probe()) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"still {got!r}, expected {expected!r}")
        await asyncio.sleep(0.005)


def fast(cache: Cache) -> None:
    """Shorter failure detection than the defaults, for tests."""
    engine = cache._engine
    assert engine is not None
    engine.config = dataclasses.replace(
        engine.config, heartbeat_interval=0.05, suspect_after=0.2, dead_after=0.4
    )


async def cluster(count: int, **options: Any) -> list[Cache]:
    caches: list[Cache] = []
    for i in range(count):
        seeds = [caches[0].address] if caches else []
        per_node = {
            k: v[i] if isinstance(v, list) and k != "seeds" else v for k, v in options.items()
        }
        cache = p2p_cache(node_id=f"n{i}", seeds=seeds, **per_node)
        await cache.start()
        fast(cache)
        caches.append(cache)
    await wait_for(lambda: all(len(c._engine.live_peers()) == count - 1 for c in caches))  # type: ignore[union-attr]
    return caches


@on_both_transports(pair=True)
async def test_writes_replicate(pair: list[Cache]) -> None:
    a, b = pair
    assert a.address is not None and a.address.startswith("127.0.0.1:")
    await a.set("user:1", {"name": "Alice"}, ttl=60)
    await eventually(lambda: b.get("user:1"), {"name": "Alice"})
    await b.set("user:2", 2)
    await eventually(lambda: a.keys("user:*"), ["user:1", "user:2"])
    await b.delete("user:1")
    await eventually(lambda: a.get("user:1"), None)


@on_both_transports(pair=True)
async def test_pattern_invalidation_and_clear_replicate(pair: list[Cache]) -> None:
    a, b = pair
    for i in range(5):
        await a.set(f"p:{i}", i)
    await a.set("q", 1)
    await eventually(lambda: b.keys(), sorted([*(f"p:{i}" for i in range(5)), "q"]))
    await b.invalidate_pattern("p:*")
    await eventually(lambda: a.keys(), ["q"])
    await a.clear()
    await eventually(lambda: b.keys(), [])


@on_both_transports(pair=True)
async def test_remote_events_and_statistics(pair: list[Cache]) -> None:
    a, b = pair
    seen: list[CacheEvent] = []
    b.on("set", seen.append)
    await a.set("k", 1)
    await wait_for(lambda: bool(seen))
    # Without persist_path a given node id gets a per-start suffix.
    assert a.node_id.startswith("n0~")
    assert (seen[0].origin, seen[0].remote) == (a.node_id, True)
    stats = await b.get_statistics()
    assert stats.cluster.instances == 2
    assert [(p.id, p.state) for p in stats.cluster.peers] == [(a.node_id, "alive")]
    assert stats.cluster.peers[0].address == a.address
    assert stats.cluster.sync_latency_ms.samples >= 1
    assert stats.cluster.last_sync_time is not None
    assert stats.traffic.frames_received > 0 and stats.traffic.bytes_sent > 0


@on_both_transports()
async def test_write_through_waits_for_acks() -> None:
    caches = await cluster(3, sync_strategy="write-through")
    try:
        a, b, c = caches
        await a.set("k", "v")
        # Returned only once every peer applied it: no waiting needed.
        assert await b.get("k") == "v" and await c.get("k") == "v"
        stats = await a.get_statistics()
        assert stats.write_ack_ms.samples == 1 and stats.write_ack_ms.p50 is not None
    finally:
        for cache in caches:
            await cache.close()


@on_both_transports()
async def test_write_through_names_peers_that_did_not_ack() -> None:
    caches = await cluster(2, sync_strategy="write-through")
    a, b = caches
    try:
        engine = b._engine
        assert engine is not None
        handle = engine.handle

        def deaf(sender: str, message: Any, now: float) -> Any:
            if isinstance(message, Push):
                return []  # applies nothing, acks nothing
            return handle(sender, message, now)

        engine.handle = deaf  # type: ignore[method-assign]
        a.write_timeout = 0.2
        with pytest.raises(PeerError, match="n1") as info:
            await a.set("k", 1)
        assert "applied on this node" in str(info.value)
        assert await a.get("k") == 1  # stays applied here
        assert any("not acknowledged" in r for r in a.health().reasons)
        # get_or_set logs the timeout instead: the value is what the caller wants.
        assert await a.get_or_set("j", lambda: 2) == 2
    finally:
        for cache in caches:
            await cache.close()


@on_both_transports()
async def test_on_demand_replicates_stamps_and_fetches_values() -> None:
    caches = await cluster(2, sync_strategy="on-demand")
    a, b = caches
    try:
        # The first anti-entropy round (on link up) answers with values: let it end
        # first, or it may bring the value itself before the push's stub.
        await wait_for(lambda: all(c._engine.stats.syncs_completed for c in caches))  # type: ignore[union-attr]
        await a.set("k", {"big": "value"})
        await wait_for(lambda: "k" in b._entries)
        assert b._entries["k"].value is NOT_HELD
        assert await b.keys() == ["k"]
        assert await b.get("k") == {"big": "value"}  # fetched from a
        stats = await b.get_statistics()
        assert (stats.distributed.hits, stats.local.misses) == (1, 1)
        assert await b.get("k") == {"big": "value"}  # now held here
        assert (await b.get_statistics()).local.hits == 1
        await a.delete("k")
        await eventually(lambda: b.get("k"), None)
    finally:
        for cache in caches:
            await cache.close()


@on_both_transports()
async def test_evicted_value_is_fetched_back_from_a_peer() -> None:
    caches = await cluster(2, max_size=[10_000, 2])
    a, b = caches
    try:
        events: list[CacheEvent] = []
        b.on("eviction", events.append)
        for key in "abcd":
            await a.set(key, key.upper())
        await eventually(lambda: b.keys(), ["a", "b", "c", "d"])
        await wait_for(lambda: b._tier.count == 2)
        assert {e.reason for e in events} == {"size"}
        evicted = [k for k, e in b._entries.items() if e.value is NOT_HELD]
        assert len(evicted) == 2
        assert await b.get(evicted[0]) == evicted[0].upper()
        stats = await b.get_statistics()
        assert stats.distributed.hits == 1
        assert await a.get(evicted[0]) == evicted[0].upper()  # a never lost it
    finally:
        for cache in caches:
            await cache.close()


@on_both_transports()
async def test_a_fetched_value_is_not_evicted_before_it_is_read() -> None:
    # The held keys were just read (recently used), so a fill from a peer makes the
    # tier overflow; the eviction it triggers must spare the key being fetched.
    caches = await cluster(2, max_size=[10_000, 2])
    a, b = caches
    try:
        for key in "abcd":
            await a.set(key, key.upper())
        await eventually(lambda: b.keys(), ["a", "b", "c", "d"])
        await wait_for(lambda: b._tier.count == 2)
        for _ in range(3):
            stubs = sorted(k for k, e in b._entries.items() if e.value is NOT_HELD)
            held = sorted(k for k, e in b._entries.items() if e.value is not NOT_HELD)
            for key in held:
                assert await b.get(key) == key.upper()
            assert await b.get(stubs[0]) == stubs[0].upper()
    finally:
        for cache in caches:
            await cache.close()


@on_both_transports()
async def test_remote_value_refused_by_the_schema() -> None:
    caches = await cluster(2, schema=[None, lambda v: isinstance(v, int)])
    a, b = caches
    try:
        await a.set("good", 1)
        await a.set("bad", "text")
        await eventually(lambda: b.get("good"), 1)
        await wait_for(lambda: "bad" in b._entries)
        assert await b.get("bad") is None  # refused, and a fetch brings back only junk
        assert (await b.get_statistics()).refused_values >= 1
    finally:
        for cache in caches:
            await cache.close()


@on_both_transports()
async def test_event_on_one_node_invalidates_every_node() -> None:
    bus = EventBus()
    rules = [InvalidationRule(event="user:updated", pattern="user:{id}")]
    a = p2p_cache(node_id="a", event_bus=bus, invalidation_rules=rules)
    await a.start()
    b = p2p_cache(node_id="b", seeds=[a.address or ""])
    await b.start()
    try:
        await wait_for(lambda: bool(a._engine and a._engine.live_peers()))
        await b.set("user:7", {"v": 1})
        await eventually(lambda: a.get("user:7"), {"v": 1})
        await bus.emit("user:updated", {"data": {"id": 7}})  # only a listens
        await eventually(lambda: b.get("user:7"), None)
    finally:
        await a.close()
        await b.close()


@on_both_transports()
async def test_peer_up_and_down_events() -> None:
    a = p2p_cache(node_id="a")
    await a.start()
    fast(a)
    ups: list[CacheEvent] = []
    downs: list[CacheEvent] = []
    a.on("peer_up", ups.append)
    a.on("peer_down", downs.append)
    b = p2p_cache(node_id="b", seeds=[a.address or ""])
    await b.start()
    await wait_for(lambda: bool(ups))
    assert ups[0].peer == b.node_id
    await b.close()
    await wait_for(lambda: bool(downs), timeout=5)
    assert downs[0].peer == b.node_id
    # b left with a goodbye: it is forgotten, not held against a's health.
    assert not any(b.node_id in r for r in a.health().reasons)
    assert (await a.get_statistics()).cluster.instances == 1
    await a.close()


def test_sync_caches_replicate() -> None:
    # TCP only: a SyncCache runs its own event loop in a thread, which cannot join the
    # virtual-time loop of a MemoryNetwork.
    with SyncCache(backend="p2p", discovery="none", node_id="s0") as s0:
        assert s0.address is not None
        with SyncCache(backend="p2p", discovery="none", node_id="s1", seeds=[s0.address]) as s1:
            s0.set("k", [1, 2])
            deadline = time.monotonic() + 5
            while s1.get("k") is None and time.monotonic() < deadline:
                time.sleep(0.005)
            assert s1.get("k") == [1, 2]


@on_both_transports()
async def test_wait_for_peers_returns_the_count_or_raises() -> None:
    a = p2p_cache()
    await a.start()
    try:
        with pytest.raises(PeerError, match="0 of 1 peers"):
            await a.wait_for_peers(1, timeout=0.05)
        b = p2p_cache(seeds=[a.address or ""])
        await b.start()
        try:
            assert await a.wait_for_peers(1) == 1
        finally:
            await b.close()
    finally:
        await a.close()


@on_both_transports(pair=True)
async def test_only_a_p2p_replica_keeps_a_change_log(pair: list[Cache]) -> None:
    # Peers ask a p2p node what they lack (the log answers); nobody asks a memory node.
    a, _ = pair
    memory = Cache(backend="memory")
    await memory.start()
    try:
        for cache in (a, memory):
            await cache.set_many({f"k{i}": i for i in range(50)})
        assert a._replica is not None and memory._replica is not None
        assert a._replica.change_log_statistics().positions >= 50
        assert memory._replica.change_log_statistics().positions == 0
    finally:
        await memory.close()
