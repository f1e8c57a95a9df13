"""Fixtures for the redis-mode tests (helpers are in ``redis_helpers.py``)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from crdtcache import Cache
from crdtcache.runtime.redis._runtime import RedisRuntime
from tests.runtime.redis.redis_helpers import (
    REDIS_URL,
    RedisServer,
    delete_cluster,
    reachable,
    redis_caches,
    sync_client,
    unavailable,
)
from tests.runtime.redis.topologies import (  # fixtures: private and shared topologies
    RedisClusterTopology,
    RedisSentinelTopology,
    redis_cluster,
    redis_sentinel,
    shared_redis_cluster,
    shared_redis_sentinel,
)

__all__ = ["redis_cluster", "redis_sentinel", "shared_redis_cluster", "shared_redis_sentinel"]


@pytest.fixture(scope="session")
def single_redis_url() -> str:
    """The test server's URL; skips (fails in CI) when it does not answer."""
    problem = reachable(REDIS_URL)
    if problem is not None:
        unavailable(f"no Redis at {REDIS_URL}: {problem}")
    return REDIS_URL


@pytest.fixture(scope="session")
def cluster_redis_url(shared_redis_cluster: RedisClusterTopology) -> str:
    """A ``redis+cluster://`` URL of the session's 3 x 2 Redis Cluster (nobody may kill
    or flush it: failover tests start their own)."""
    return shared_redis_cluster.url


@pytest.fixture(scope="session")
def sentinel_redis_url(shared_redis_sentinel: RedisSentinelTopology) -> str:
    """A ``redis+sentinel://`` URL of the session's primary, replica and 3 sentinels
    (nobody may kill or flush it)."""
    return shared_redis_sentinel.url


#: The topologies the redis-mode tests run on: one server, and (slow: they start
#: their servers) a Redis Cluster and a Sentinel-managed primary.
TOPOLOGIES = [
    "single",
    pytest.param("cluster", marks=pytest.mark.slow),
    pytest.param("sentinel", marks=pytest.mark.slow),
]


@pytest.fixture(scope="session", params=TOPOLOGIES)
def redis_url(request: pytest.FixtureRequest) -> str:
    """The URL of each topology in turn (every test using it runs on all three)."""
    url: str = request.getfixturevalue(f"{request.param}_redis_url")
    return url


@pytest.fixture
def cluster(redis_url: str) -> Iterator[str]:
    """A cluster name of this test's own; its keys are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    delete_cluster(redis_url, name)


@pytest.fixture
def cache_cluster() -> Iterator[Callable[[str], str]]:
    """Makes cluster names of this test's own for a Redis URL; their keys are deleted
    afterwards."""
    made: list[tuple[str, str]] = []

    def make(url: str) -> str:
        name = f"test-{uuid.uuid4().hex[:10]}"
        made.append((url, name))
        return name

    yield make
    for url, name in made:
        delete_cluster(url, name)


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[Any]:
    """A plain blocking client on the test server, to look at what the cache stored."""
    client = sync_client(redis_url)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def fast_redis_timings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Membership and link checks in tens of milliseconds instead of seconds."""
    monkeypatch.setattr(RedisRuntime, "heartbeat_interval", 0.05)
    monkeypatch.setattr(RedisRuntime, "heartbeat_ttl", 0.3)
    monkeypatch.setattr(RedisRuntime, "pubsub_ping_interval", 0.1)
    monkeypatch.setattr(RedisRuntime, "pubsub_dead_after", 0.5)


@pytest.fixture
async def redis_pair(redis_url: str, cluster: str) -> AsyncIterator[list[Cache]]:
    caches = await redis_caches(2, url=redis_url, cluster=cluster)
    yield caches
    for cache in caches:
        await cache.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A private redis-server (``redis-server`` on PATH; a failure in CI without it)."""
    server = RedisServer()
    try:
        server.start()
    except (FileNotFoundError, RuntimeError) as exc:
        unavailable(f"cannot start redis-server: {exc}")
    try:
        yield server
    finally:
        server.kill()
        shutil.rmtree(server.dir, ignore_errors=True)
