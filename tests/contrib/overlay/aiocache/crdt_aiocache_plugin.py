"""pytest plugin standing in for aiocache's tests/acceptance/conftest.py.

Loaded with ``-p crdt_aiocache_plugin --noconftest`` (a conftest's fixtures would
take precedence over a plugin's). The ``cache`` fixture is the crdtcache cache class,
built through aiocache's URL registry (``crdtcache://``), once per serializer of the
setup (see ``setups.py``). Only the tests that use ``cache`` are kept: the others
exercise aiocache's own memory, Redis and memcached backends (TestMemoryCache, the
red and optimistic lock classes bound to them, the null serializer's object-identity
test, the plugin tests, test_factory's built-in schemes).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import pytest
from aiocache import Cache, caches
from setups import PAIRED, location, options, serializers

import crdtcache.contrib.aiocache  # noqa: F401  (registers crdtcache://)
from crdtcache.cache._cache import Cache as CrdtNode
from crdtcache.contrib.aiocache import CrdtCache


class PairCache(CrdtCache):
    """Reads through a second node seeded with the first.

    The first writes behind (write-through would make ``add`` wait for the second's
    ack, and aiocache's RedLock registers its release event only after ``add``
    returns: a contender failing meanwhile finds no event and goes on unlocked). So
    every read first flushes the writer and waits for the reader's ack: reads see
    every write made before them, as with write-through.
    """

    _second: CrdtNode | None = None

    async def _reader(self) -> CrdtNode:
        writer = await self._node()
        if self._second is None:
            second = CrdtNode(**{**self._options, "seeds": [writer.address or ""]})
            await second.start()
            await second.wait_for_peers(1, timeout=10)
            await writer.wait_for_peers(1, timeout=10)
            self._second = second
        runtime = writer._runtime
        assert runtime is not None
        missing = await runtime.flush(ack=True, timeout=5)
        assert not missing, f"the reader did not acknowledge: {missing}"
        return self._second

    async def _close(self, *args: Any, **kwargs: Any) -> None:
        second, self._second = self._second, None
        if second is not None:
            await second.close()
        await super()._close(*args, **kwargs)


def _crdt(serializer: str) -> dict[str, Any]:
    """The setup's crdtcache options as this class takes them."""
    out = options(serializer)
    out["value_serializer"] = out.pop("serializer")
    if PAIRED:
        out["sync_strategy"] = "write-behind"  # see PairCache
    return out


def _url(serializer: str) -> str:
    query = {k: v for k, v in _crdt(serializer).items() if k != "secret"}
    where = location()
    if where.startswith("redis"):
        query["redis_url"], where = where, "redis"
    if "secret" in options(serializer):
        query["secret"] = options(serializer)["secret"].decode()
    return f"crdtcache://{where}?{urlencode({**query, 'namespace': 'test'})}"


@pytest.fixture(autouse=True)
def reset_caches() -> None:
    caches._caches = {}
    caches.set_config(
        {
            "default": {
                "cache": "aiocache.SimpleMemoryCache",
                "serializer": {"class": "aiocache.serializers.NullSerializer"},
            }
        }
    )


@pytest.fixture(params=serializers())
async def cache(request: Any) -> AsyncIterator[Any]:
    if PAIRED:
        made: Any = PairCache("p2p", namespace="test", **_crdt(request.param))
        await made._reader()  # both nodes up before the first write
    else:  # as a user configures it: through aiocache's URL registry
        made = Cache.from_url(_url(request.param))
    async with made as c:
        await c.clear()
        # Open a few connections before the test: TestCachedStampede counts gets that
        # must each return before another caller's get, add, get and set (a cold
        # pool's first connections take milliseconds to open).
        await asyncio.gather(*(c.exists(f"warm-up-{i}") for i in range(4)))
        yield c
        await c.clear()


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    keep, drop = [], []
    for item in items:
        (keep if "cache" in getattr(item, "fixturenames", ()) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
