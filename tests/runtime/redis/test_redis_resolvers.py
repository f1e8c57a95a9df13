"""Conflict resolvers in Redis mode: the built-in one runs in the scripts, others are
refused with the reason and what to do instead."""

from __future__ import annotations

import time

import pytest

from crdtcache import Cache, ConfigError
from crdtcache.core import Version, last_writer_wins
from tests.runtime.redis.redis_helpers import eventually, redis_caches


def keep_larger(local: Version, remote: Version) -> Version:
    return remote if (remote.value, remote.stamp) > (local.value, local.stamp) else local


def test_a_custom_resolver_is_refused_saying_why_and_what_instead() -> None:
    with pytest.raises(ConfigError) as refused:
        Cache(backend="redis", conflict_resolver=keep_larger)
    message = str(refused.value)
    for part in ("Lua script", "compare-and-swap", "backend='p2p'", "get, merge, set"):
        assert part in message


async def test_the_built_in_last_writer_wins_is_what_the_scripts_run(
    redis_url: str, cluster: str
) -> None:
    ahead, behind = await redis_caches(
        2,
        url=redis_url,
        cluster=cluster,
        conflict_resolver=last_writer_wins,
        _clock=[lambda: time.time() + 5.0, time.time],
    )
    try:
        assert ahead._config.conflict_resolver is None  # the scripts' own rule
        await ahead.set("k", "ahead")
        await eventually(lambda: behind.get("k"), "ahead")
        await behind.set("k", "behind")  # its clock observed the greater stamp: wins
        await eventually(lambda: ahead.get("k"), "behind")
    finally:
        for cache in (ahead, behind):
            await cache.close()
