"""Every supported value type round-trips with its types through a real cache.

Locally, through ``persist_path`` (written, closed, reopened), through a snapshot
restored on another node, and across two p2p nodes on loopback. Redis mode is in
``tests/runtime/redis/test_redis_values.py``; the readers of each medium are held
to the same rule in ``tests/core/test_format.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from crdtcache import Cache
from tests.value_types import MISSING, BackgroundLoop, arrives, typed, values

from .conftest import memory_cache

NETWORK = settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
_keys = itertools.count()


@given(values)
def test_values_round_trip_locally_through_the_store_and_a_snapshot(value: Any) -> None:
    async def scenario(folder: str) -> None:
        path = Path(folder) / "node.db"
        async with memory_cache(persist_path=path) as cache:
            await cache.set("k", value)
            assert typed(await cache.get("k")) == typed(value)
            assert typed(await cache.get_or_set("k", lambda: None)) == typed(value)
            snapshot = await cache.snapshot()
        async with memory_cache(persist_path=path) as reopened:
            assert typed(await reopened.get("k")) == typed(value)
        async with memory_cache() as other:
            await other.restore(snapshot)
            assert typed(await other.get("k")) == typed(value)

    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(scenario(folder))


@pytest.fixture
def p2p_pair() -> Iterator[tuple[BackgroundLoop, Cache, Cache]]:
    background = BackgroundLoop()

    async def start() -> tuple[Cache, Cache]:
        a = Cache(backend="p2p", discovery="none", node_id="a")
        await a.start()
        b = Cache(backend="p2p", discovery="none", node_id="b", seeds=[a.address or ""])
        await b.start()
        await b.wait_for_peers(1)
        await a.wait_for_peers(1)
        return a, b

    a, b = background.run(start())
    try:
        yield background, a, b
    finally:
        background.run(a.close())
        background.run(b.close())
        background.close()


@NETWORK
@given(value=values)
def test_values_round_trip_across_two_p2p_nodes(
    p2p_pair: tuple[BackgroundLoop, Cache, Cache], value: Any
) -> None:
    background, a, b = p2p_pair
    key = f"v{next(_keys)}"

    async def scenario() -> Any:
        await a.set(key, value)
        return await arrives(lambda: b.get(key, MISSING))

    assert typed(background.run(scenario())) == typed(value)
