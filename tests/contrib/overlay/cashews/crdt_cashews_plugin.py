"""pytest plugin standing in for cashews' tests/conftest.py (its sdist ships none).

Loaded with ``-p crdt_cashews_plugin --noconftest``. The fixtures have upstream's
names and shapes: ``raw_backend`` -> (backend, name), ``target`` = Mock(wraps=backend),
``cache`` = a cashews Cache holding ``target``, ``backend_factory``, ``redis_dsn``. The
backend is built through cashews' public URL registry (``crdtcache://``), once per
serializer of the setup (see ``setups.py``); ``redis_dsn`` points nowhere, so no
cashews Redis test can touch the shared server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from unittest.mock import Mock

import pytest
from cashews import Cache
from setups import NEEDS_PICKLE, PAIRED, location, options, serializers

import crdtcache.contrib.cashews  # noqa: F401  (registers crdtcache://)
from crdtcache.cache._cache import Cache as CrdtCache
from crdtcache.contrib.cashews import CrdtBackend


class PairBackend(CrdtBackend):
    """Reads through a second node seeded with the first (write-through)."""

    _second: CrdtCache | None = None

    async def init(self) -> None:
        # Both nodes are up before the first write: write-through then waits for both.
        await super().init()
        writer = await self._node()
        if self._second is None:
            second = CrdtCache(**{**self._options, "seeds": [writer.address or ""]})
            await second.start()
            await second.wait_for_peers(1, timeout=10)
            await writer.wait_for_peers(1, timeout=10)
            self._second = second

    async def _reader(self) -> CrdtCache:
        if self._second is None:
            await self.init()
        assert self._second is not None
        return self._second

    async def close(self) -> None:
        second, self._second = self._second, None
        if second is not None:
            await second.close()
        await super().close()


def _url(serializer: str) -> str:
    where = location()
    if where.startswith("redis"):
        return "crdtcache://redis"
    return f"crdtcache://{where}"


def _kwargs(serializer: str) -> dict[str, Any]:
    kwargs = options(serializer)
    if "secret" in kwargs:
        kwargs["cluster_secret"] = kwargs.pop("secret")  # cashews takes secret= itself
    if "cluster" in kwargs:
        kwargs["cluster_name"] = kwargs.pop("cluster")
    kwargs["value_serializer"] = kwargs.pop("serializer")
    if location().startswith("redis"):
        kwargs["redis_url"] = location()
    return kwargs


@pytest.fixture(scope="session")
def redis_dsn() -> str:
    return "redis://127.0.0.1:1/0"


@pytest.fixture(scope="session")
def redis_cluster_dsn() -> str:
    return "redis://127.0.0.1:1"


@pytest.fixture(scope="session")
def backend_factory() -> Any:
    def factory(backend_cls: Any, *args: Any, **kwargs: Any) -> Any:
        return backend_cls(*args, **kwargs)

    return factory


@pytest.fixture(name="raw_backend", params=serializers())
async def _raw_backend(request: Any) -> AsyncIterator[tuple[Any, str]]:
    serializer = request.param
    if PAIRED:
        backend: Any = PairBackend(_url(serializer), **_kwargs(serializer))
    else:  # as a user configures it: through cashews' URL registry
        backend = Cache().setup(_url(serializer), **_kwargs(serializer))
    try:
        await backend.init()
        await backend.clear()
        yield backend, f"crdtcache-{serializer}"
    finally:
        await backend.close()


@pytest.fixture(name="target")
def _target(raw_backend: tuple[Any, str]) -> Any:
    return Mock(wraps=raw_backend[0], is_full_disable=False)


@pytest.fixture()
async def cache(target: Any, raw_backend: tuple[Any, str]) -> Cache:
    await target.clear()
    target.reset_mock()
    cache = Cache(name=raw_backend[1])
    cache._add_backend(target)
    return cache


#: Tests that cache an exception instance (cashews' RaiseException): not a value type.
PICKLED = {
    "test_cache_with_exceptions": "with_exceptions() caches an exception instance",
    "test_cache_only_exceptions": "only_exceptions() caches an exception instance",
    "test_cache_early_exceptions": "early cache and with_exceptions() cache an exception",
    "test_cache_hit_exceptions": "hit cache and with_exceptions() cache an exception",
    "test_iterator_error_with_cond": "iterator and with_exceptions() cache an exception",
}


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or callspec.params.get("raw_backend") != "msgpack":
            continue
        what = PICKLED.get(item.originalname)
        if what:
            item.add_marker(pytest.mark.skip(reason=f"{NEEDS_PICKLE}: {what}"))
