"""Every supported value type round-trips with its types through Redis mode.

One instance writes, another (with its own hot tier) reads it back from Redis; a
snapshot of the data in Redis carries them to a node elsewhere.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from crdtcache import Cache
from tests.runtime.redis.redis_helpers import redis_caches
from tests.value_types import MISSING, BackgroundLoop, arrives, typed, values

_keys = itertools.count()


@pytest.fixture
def instances(redis_url: str, cluster: str) -> Iterator[tuple[BackgroundLoop, list[Cache]]]:
    background = BackgroundLoop()
    caches = background.run(redis_caches(2, url=redis_url, cluster=cluster))
    try:
        yield background, caches
    finally:
        for cache in caches:
            background.run(cache.close())
        background.close()


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=values)
def test_values_round_trip_through_redis(
    instances: tuple[BackgroundLoop, list[Cache]], value: Any
) -> None:
    background, (a, b) = instances
    key = f"v{next(_keys)}"

    async def scenario() -> tuple[Any, Any]:
        await a.set(key, value)
        from_b = await arrives(lambda: b.get(key, MISSING))
        return from_b, await a.get(key)

    from_b, from_a = background.run(scenario())
    assert typed(from_b) == typed(value)
    assert typed(from_a) == typed(value)


def test_a_snapshot_of_redis_carries_every_type(
    instances: tuple[BackgroundLoop, list[Cache]],
) -> None:
    background, (a, b) = instances
    value = {(1, "t"): {frozenset({2}), 1 << 80}, "when": [b"x", bytearray(b"y")]}

    async def scenario() -> Any:
        await a.set("snap", value)
        await arrives(lambda: b.get("snap", MISSING))  # it is in Redis
        data = await b.snapshot()  # the data in Redis, as b reads it
        async with Cache(backend="memory") as elsewhere:
            await elsewhere.restore(data)
            return await elsewhere.get("snap", MISSING)

    assert typed(background.run(scenario())) == typed(value)
