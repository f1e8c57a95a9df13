"""MemoryNetwork: real caches on in-memory streams, in virtual time, repeatable from a seed."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest

from crdtcache import Cache, CacheEvent
from crdtcache.testing import MemoryNetwork
from crdtcache.testing import _memory as memory_module


async def until(probe: Any, expected: Any, timeout: float = 60.0) -> None:
    """Poll ``await probe()`` in virtual time until it returns ``expected``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (got := await probe()) != expected:
        if loop.time() > deadline:
            raise AssertionError(f"still {got!r}, expected {expected!r}")
        await asyncio.sleep(0.05)


def test_the_docstring_example_runs() -> None:
    doc = memory_module.__doc__
    assert doc is not None
    example = re.search(r"Example::\n\n(.*)", doc, re.S)
    assert example is not None
    code = "\n".join(line[4:] for line in example.group(1).splitlines())
    exec(compile(code, "<MemoryNetwork example>", "exec"), {})


async def _scenario(net: MemoryNetwork) -> list[tuple[Any, ...]]:
    """Three caches, writes from each, a partition and its healing; what b saw, and when."""
    seen: list[tuple[Any, ...]] = []
    a = net.cache(node_id="a")
    await a.start()
    b = net.cache(node_id="b", seeds=[a.address])
    c = net.cache(node_id="c", seeds=[a.address])
    for cache in (b, c):
        await cache.start()
    caches = [a, b, c]

    def record(event: CacheEvent) -> None:
        seen.append((round(net.elapsed, 6), event.name, event.key, event.origin, event.remote))

    b.on("set", record)
    b.on("delete", record)
    await b.wait_for_peers(2, timeout=30)
    for i in range(30):
        await caches[i % 3].set(f"k{i % 7}", i)
        await asyncio.sleep(0.003)
    net.partition([a], [b, c])
    await a.set("k1", "from a, alone")
    await c.delete("k2")
    await asyncio.sleep(3)
    assert await b.get("k1") != "from a, alone"
    net.heal()
    for cache in caches:
        await until(lambda cache=cache: cache.get("k1"), "from a, alone")  # type: ignore[misc]
        await until(lambda cache=cache: cache.get("k2"), None)  # type: ignore[misc]
    views = [[await x.get(f"k{i}") for i in range(7)] for x in caches]
    assert views[0] == views[1] == views[2]
    seen.append(("ids", a.node_id, b.node_id, c.node_id))
    seen.append(("traffic", (await b.get_statistics()).traffic.frames_received))
    for cache in caches:
        await cache.close()
    return seen


def _run(seed: int) -> list[tuple[Any, ...]]:
    with MemoryNetwork(seed=seed) as net:
        return net.run(_scenario(net), timeout=600)


def test_a_partition_heals_and_the_caches_converge() -> None:
    seen = _run(1)
    assert any(event[1:3] == ("set", "k1") for event in seen)


def test_the_same_seed_gives_the_same_run() -> None:
    first, again, other = _run(3), _run(3), _run(4)
    assert first == again
    assert first != other  # node ids, stamps and timings follow the seed


def test_virtual_time_jumps_when_idle_and_timeouts_fire() -> None:
    with MemoryNetwork() as net:
        started = time.monotonic()
        net.run(asyncio.sleep(3600))
        assert net.elapsed == pytest.approx(3600)
        assert time.monotonic() - started < 5
        assert net.clock() == pytest.approx(memory_module.EPOCH + 3600)
        with pytest.raises(TimeoutError):
            net.run(asyncio.sleep(10), timeout=1)
        assert net.run(asyncio.to_thread(sum, [1, 2])) == 3  # threads: waited for for real


def test_a_deadlock_is_reported_instead_of_hanging() -> None:
    async def stuck() -> None:
        await asyncio.get_running_loop().create_future()

    with MemoryNetwork() as net, pytest.raises(RuntimeError, match="deadlock"):
        net.run(stuck())


def test_a_broken_link_is_redialled() -> None:
    async def scenario(net: MemoryNetwork) -> None:
        async with net.cache(node_id="a") as a, net.cache(node_id="b", seeds=[a.address]) as b:
            await b.wait_for_peers(1)
            net.break_link(a, "b")
            await asyncio.sleep(0)
            await a.set("k", "after the break")
            await until(lambda: b.get("k"), "after the break")
            assert len(b._engine.live_peers()) == 1  # type: ignore[union-attr]
        with pytest.raises(ValueError, match="not a cache of this network"):
            net.partition([Cache(backend="memory")])

    with MemoryNetwork(seed=2) as net:
        net.run(scenario(net), timeout=120)


def test_a_lone_write_behind_write_does_not_wait_for_sync_interval() -> None:
    """On an idle link the write leaves in the next loop step, not on a timer."""

    async def scenario(net: MemoryNetwork) -> tuple[list[float], int]:
        slow = {"sync_interval": 1.0}
        async with (
            net.cache(node_id="a", **slow) as a,
            net.cache(node_id="b", seeds=[a.address], **slow) as b,
        ):
            await a.wait_for_peers(1)
            await b.wait_for_peers(1)
            arrived: dict[str, float] = {}
            b.on("set", lambda event: arrived.setdefault(event.key, net.elapsed))
            took = []
            for i in range(5):
                await asyncio.sleep(0.3)  # idle: ticks and heartbeats only
                start = net.elapsed
                await a.set(f"k{i}", i)
                while f"k{i}" not in arrived:
                    await asyncio.sleep(0.001)
                took.append(arrived[f"k{i}"] - start)
            # A burst in one loop step still travels in one push.
            await asyncio.sleep(0.3)
            frames = (await a.get_statistics()).traffic.frames_sent
            for i in range(200):
                await a.set(f"burst{i}", i)
            while len([k for k in arrived if k.startswith("burst")]) < 200:
                await asyncio.sleep(0.001)
            return took, (await a.get_statistics()).traffic.frames_sent - frames

    with MemoryNetwork(seed=5) as net:
        took, frames = net.run(scenario(net), timeout=120)
    assert max(took) < 0.001  # zero-latency streams: no wait at all, not up to 1 s
    assert frames == 1
