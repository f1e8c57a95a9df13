"""Helpers for the redis-mode tests: the server, instances of one cluster, a private server.

The tests run against a real Redis (``CRDTCACHE_TEST_REDIS``, default
``redis://127.0.0.1:6379/0``). Without one they skip, except in CI (``CI=true``)
where a missing server is a failure: CI must never pass by testing nothing.
(This directory has no ``__init__.py`` on purpose: a package named ``redis`` found
on ``sys.path`` would shadow redis-py.)
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.cluster import ClusterNode
from redis.sentinel import Sentinel

from crdtcache import Cache
from crdtcache.runtime.redis._runtime import RedisRuntime
from crdtcache.runtime.redis._scripts import Script, sharded
from crdtcache.runtime.redis._topology import CLUSTER, SENTINEL, parse_redis_url

REDIS_URL = os.environ.get("CRDTCACHE_TEST_REDIS", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(message: str) -> None:
    """Skip, or fail in CI: a missing server must not let CI pass by testing nothing."""
    if IN_CI:
        pytest.fail(f"{message} (CI=true: the redis tests must run)")
    pytest.skip(message)


def sync_client(url: str, **options: Any) -> Any:
    """A blocking redis-py client of any ``redis_url`` form: one server, a Redis
    Cluster (redis-py's cluster client) or the primary a sentinel names."""
    target = parse_redis_url(url)
    if target.kind == CLUSTER:
        nodes = [ClusterNode(e.host, e.port) for e in target.hosts]
        return redis.RedisCluster(startup_nodes=nodes, **options)
    if target.kind == SENTINEL:
        assert target.service is not None
        sentinel = Sentinel([(e.host, e.port) for e in target.hosts], sentinel_kwargs=options)
        return sentinel.master_for(target.service, db=target.db, **options)
    return redis.Redis.from_url(target.url, **options)


def async_client(url: str, **options: Any) -> Any:
    """An asyncio redis-py client of any ``redis_url`` form (see :func:`sync_client`)."""
    target = parse_redis_url(url)
    if target.kind == CLUSTER:
        nodes = [AsyncClusterNode(e.host, e.port) for e in target.hosts]
        return aioredis.RedisCluster(startup_nodes=nodes, **options)
    if target.kind == SENTINEL:
        assert target.service is not None
        sentinel = AsyncSentinel([(e.host, e.port) for e in target.hosts])  # type: ignore[no-untyped-call]
        return sentinel.master_for(target.service, db=target.db, **options)
    return aioredis.Redis.from_url(target.url, **options)


async def async_subscriber(url: str, channel: str) -> tuple[Any, Any]:
    """``(client, pubsub)`` subscribed to ``channel`` as the cache's instances are (in a
    Redis Cluster: SSUBSCRIBE on the primary of the channel's slot), the confirmation
    read. Close both."""
    target = parse_redis_url(url)
    if target.kind == CLUSTER:
        cluster = async_client(url)
        await cluster.initialize()
        node = cluster.get_node_from_key(channel)
        await cluster.aclose()
        client = aioredis.Redis(host=node.host, port=node.port)
        pubsub = client.pubsub()
        await pubsub.ssubscribe(channel)
    else:
        client = async_client(url)
        pubsub = client.pubsub()
        await pubsub.subscribe(channel)
    await pubsub.get_message(timeout=1)
    return client, pubsub


def script_for(url: str, script: Script) -> Script:
    """``script`` as the cache runs it on ``url`` (sharded publishes in a cluster)."""
    return sharded(script) if parse_redis_url(url).kind == CLUSTER else script


def publish(client: Any, channel: bytes, message: bytes) -> None:
    """Publish as the cache's instances do: sharded in a Redis Cluster."""
    if isinstance(client, redis.RedisCluster):
        client.execute_command("SPUBLISH", channel, message)
    else:
        client.publish(channel, message)


def reachable(url: str) -> str | None:
    """None if ``url`` answers PING, else why not."""
    try:
        client = sync_client(url, socket_connect_timeout=1, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
        return str(exc) or type(exc).__name__
    return None


def delete_cluster(url: str, cluster: str) -> None:
    """Remove every key of ``cluster`` (SCAN, like the cache itself)."""
    client = sync_client(url)
    try:
        names = list(client.scan_iter(match=f"crdtcache:{{{cluster}}}:*", count=1000))
        if names:
            client.delete(*names)
    finally:
        client.close()


def runtime(cache: Cache) -> RedisRuntime:
    """The redis runtime of a started cache."""
    rt = cache._runtime
    assert isinstance(rt, RedisRuntime)
    return rt


def alive_peers(cache: Cache) -> int:
    """How many other instances ``cache`` sees alive."""
    return sum(1 for p in runtime(cache).statistics().peers if p.state == "alive")


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.005)


async def eventually(
    probe: Callable[[], Awaitable[Any]], expected: Any, timeout: float = 5.0
) -> None:
    deadline = time.monotonic() + timeout
    while (got := await probe()) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"still {got!r}, expected {expected!r}")
        await asyncio.sleep(0.005)


async def redis_caches(
    count: int, *, url: str | list[str], cluster: str, **options: Any
) -> list[Cache]:
    """``count`` started redis-mode caches of one cluster that all see each other.

    A list value of an option (or of ``url``) gives each cache its own (as the p2p
    test helper does).
    """
    caches: list[Cache] = []
    for i in range(count):
        per_node = {k: v[i] if isinstance(v, list) else v for k, v in options.items()}
        per_node.setdefault("node_id", f"r{i}")
        own_url = url[i] if isinstance(url, list) else url
        cache = Cache(backend="redis", redis_url=own_url, cluster=cluster, **per_node)
        await cache.start()
        caches.append(cache)
    await wait_for(lambda: all(alive_peers(c) == count - 1 for c in caches))
    return caches


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A redis-server of the test's own (no persistence) to kill and restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="crdtcache-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while reachable(self.url) is not None:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def kill(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait(timeout=10)
