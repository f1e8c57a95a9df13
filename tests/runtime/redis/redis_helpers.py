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

from crdtcache import Cache
from crdtcache.runtime.redis._runtime import RedisRuntime

REDIS_URL = os.environ.get("CRDTCACHE_TEST_REDIS", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(message: str) -> None:
    """Skip, or fail in CI: a missing server must not let CI pass by testing nothing."""
    if IN_CI:
        pytest.fail(f"{message} (CI=true: the redis tests must run)")
    pytest.skip(message)


def reachable(url: str) -> str | None:
    """None if ``url`` answers PING, else why not."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError) as exc:
        return str(exc) or type(exc).__name__
    return None


def delete_cluster(url: str, cluster: str) -> None:
    """Remove every key of ``cluster`` (SCAN, like the cache itself)."""
    client = redis.Redis.from_url(url)
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


async def redis_caches(count: int, *, url: str, cluster: str, **options: Any) -> list[Cache]:
    """``count`` started redis-mode caches of one cluster that all see each other.

    A list value of an option gives each cache its own (as the p2p test helper does).
    """
    caches: list[Cache] = []
    for i in range(count):
        per_node = {k: v[i] if isinstance(v, list) else v for k, v in options.items()}
        per_node.setdefault("node_id", f"r{i}")
        cache = Cache(backend="redis", redis_url=url, cluster=cluster, **per_node)
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
