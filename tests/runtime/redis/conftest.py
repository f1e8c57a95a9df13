"""Fixtures for the redis-mode tests (helpers are in ``redis_helpers.py``)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from crdtcache import Cache
from crdtcache.runtime.redis._runtime import RedisRuntime
from tests.runtime.redis.redis_helpers import (
    REDIS_URL,
    RedisServer,
    delete_cluster,
    reachable,
    redis_caches,
    unavailable,
)
from tests.runtime.redis.topologies import (  # fixtures: private Cluster / Sentinel
    redis_cluster,
    redis_sentinel,
    shared_redis_cluster,
)

__all__ = ["redis_cluster", "redis_sentinel", "shared_redis_cluster"]


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test server's URL; skips (fails in CI) when it does not answer."""
    problem = reachable(REDIS_URL)
    if problem is not None:
        unavailable(f"no Redis at {REDIS_URL}: {problem}")
    return REDIS_URL


@pytest.fixture
def cluster(redis_url: str) -> Iterator[str]:
    """A cluster name of this test's own; its keys are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    delete_cluster(redis_url, name)


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    """A plain blocking client on the test server, to look at what the cache stored."""
    client = redis.Redis.from_url(redis_url)
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
