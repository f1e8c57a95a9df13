"""``wait_replicas``: write-through waits until replicas confirm (Redis WAIT)."""

from __future__ import annotations

import pytest

from crdtcache import PeerError
from crdtcache.runtime.redis._topology import SINGLE, parse_redis_url
from tests.runtime.redis.redis_helpers import redis_caches, runtime


async def test_write_through_returns_once_a_replica_confirmed_or_says_it_did_not(
    redis_url: str, cluster: str
) -> None:
    """The test server has no replica: the write stays on it and ``set`` says so. The
    cluster's and the sentinel's primaries have one each: ``set`` returns."""
    url = redis_url + ("&" if "?" in redis_url else "?") + "wait_replicas=1"
    a, b = await redis_caches(2, url=url, cluster=cluster, sync_strategy="write-through")
    try:
        a.write_timeout = 0.3
        if parse_redis_url(redis_url).kind == SINGLE:
            with pytest.raises(PeerError, match="did not confirm it within"):
                await a.set("k", 1)
            assert runtime(a).redis_statistics().writes_unconfirmed == 1
            assert any("not confirmed by Redis replicas" in r for r in a.health().reasons)
        else:
            await a.set("k", 1)
            assert runtime(a).redis_statistics().writes_unconfirmed == 0
        assert await b.get("k") == 1  # applied on the primary either way
    finally:
        for cache in (a, b):
            await cache.close()
