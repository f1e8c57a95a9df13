"""The contrib backends' own settings: locations, options as text, refusals."""

from __future__ import annotations

import aiocache
import cashews
import pytest
from django.core.exceptions import ImproperlyConfigured

from crdtcache import ConfigError
from crdtcache.contrib._options import cache_options
from crdtcache.contrib.aiocache import CrdtCache as AioCrdtCache
from crdtcache.contrib.cashews import CrdtBackend
from crdtcache.contrib.django import CrdtCache as DjangoCrdtCache


def test_options_from_text_take_each_option_s_type() -> None:
    options = cache_options(
        "p2p",
        {
            "seeds": "10.0.0.2:7946, 10.0.0.3:7946",
            "max_size": "100",
            "max_memory": "none",
            "default_ttl": "1.5",
            "secret": "a-cluster-secret-of-16",
            "sync_strategy": "write-through",
        },
    )
    assert options == {
        "backend": "p2p",
        "seeds": ("10.0.0.2:7946", "10.0.0.3:7946"),
        "max_size": 100,
        "max_memory": None,
        "default_ttl": 1.5,
        "secret": b"a-cluster-secret-of-16",
        "sync_strategy": "write-through",
    }
    assert cache_options("redis://127.0.0.1:6379/0", {})["redis_url"] == "redis://127.0.0.1:6379/0"
    with pytest.raises(ConfigError, match="unknown crdtcache option 'nope'"):
        cache_options("memory", {"nope": 1})
    with pytest.raises(ConfigError, match="location must be one of"):
        cache_options("mysql://db", {})
    with pytest.raises(ConfigError, match="not a number"):
        cache_options("memory", {"max_size": "many"})


def test_django_settings_that_do_not_apply_are_refused() -> None:
    for option in ("MAX_ENTRIES", "CULL_FREQUENCY", "default_ttl"):
        with pytest.raises(ImproperlyConfigured, match=option):
            DjangoCrdtCache("memory", {"OPTIONS": {option: 1}})
    bad = DjangoCrdtCache("memory", {"OPTIONS": {"colour": "blue"}})
    with pytest.raises(ImproperlyConfigured, match="unknown crdtcache option"):
        bad.get("k")


def test_django_aliases_with_the_same_settings_share_one_node() -> None:
    params = {"OPTIONS": {"cluster": "shared-node-test"}}
    a, b = DjangoCrdtCache("memory", params), DjangoCrdtCache("memory", params)
    other = DjangoCrdtCache("memory", {"OPTIONS": {"cluster": "another"}})
    assert a.node is b.node and a.node is not other.node
    a.set("k", 1)
    assert b.get("k") == 1 and other.get("k") is None


def test_the_schemes_are_registered_with_cashews_and_aiocache() -> None:
    backend = cashews.Cache().setup("crdtcache://memory?max_size=10", cluster_name="x")
    assert isinstance(backend, CrdtBackend)
    assert aiocache.AIOCACHE_CACHES["crdtcache"] is AioCrdtCache
    with pytest.raises(ConfigError, match="cluster_name"):
        cashews.Cache().setup("crdtcache://memory?cluster=x")
    with pytest.raises(ConfigError, match="default_ttl"):
        CrdtBackend("crdtcache://memory", default_ttl=5)
    with pytest.raises(ConfigError, match="default_ttl"):
        AioCrdtCache("memory", default_ttl=5)


async def test_the_async_backends_start_their_node_on_first_use_and_again_after_close() -> None:
    backend = CrdtBackend("crdtcache://memory")
    assert not backend.is_init
    assert await backend.set("k", 1) and await backend.get("k") == 1
    await backend.close()
    assert await backend.get("k") is None  # a new memory node: empty
    await backend.close()
    cache = AioCrdtCache("memory", namespace="n:")
    await cache.set("k", "v")
    assert await cache.get("k") == "v"
    await cache.close()
    assert await cache.set("k", "w") and await cache.get("k") == "w"
    await cache.close()
