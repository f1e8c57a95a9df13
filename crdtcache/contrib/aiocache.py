"""An aiocache cache class on a crdtcache node.

Usage::

    import crdtcache.contrib.aiocache  # registers the crdtcache:// scheme
    from aiocache import Cache

    cache = Cache.from_url("crdtcache://p2p?seeds=10.0.0.2:7946&secret=a-cluster-secret-16b")
    # or Cache(CrdtCache, endpoint="memory", namespace="app:", ttl=60),
    # or caches.set_config({"default": {"cache": "crdtcache.contrib.aiocache.CrdtCache",
    #                                    "endpoint": "redis", "redis_url": "redis://..."}})

``endpoint`` (the URL's host) is the backend, ``memory``, ``p2p`` or ``redis``; the
other keywords (or query parameters) are aiocache's (``namespace``, ``ttl``,
``timeout``, ``serializer``, ``plugins``) or :class:`crdtcache.Cache` options, except
``default_ttl`` (aiocache's ``ttl`` is the default) and crdtcache's ``serializer``,
named ``value_serializer`` here (aiocache's ``serializer`` is its own). ``cache=`` uses an existing,
started crdtcache cache instead of starting one. Values reach crdtcache as they are
(the default serializer is aiocache's ``NullSerializer``): crdtcache's value types
carry them.

The node starts on the first call, in the running event loop; ``close()`` stops it,
and a later call starts a new one (a memory node then starts empty). ``add`` is
crdtcache's (atomic on this node and in redis mode across instances, **not across p2p
nodes**); ``increment`` is ``incr`` (convergent in p2p mode); ``expire(key, 0)`` removes
the expiry, as in aiocache. The optimistic lock's compare-and-set and the red lock's
release compare and write under a per-key lock: atomic among this node's callers.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Final

import aiocache
from aiocache.base import BaseCache
from aiocache.serializers import NullSerializer

from crdtcache._errors import ConfigError, ValidationError
from crdtcache.cache._cache import ABSENT, Cache
from crdtcache.contrib._locks import KeyLocks
from crdtcache.contrib._options import cache_options

__all__ = ["CrdtCache"]

#: Keywords aiocache's BaseCache takes (the rest are crdtcache options).
_AIOCACHE_KEYWORDS: Final = ("serializer", "plugins", "namespace", "key_builder", "timeout", "ttl")


def _key(key: Any) -> str:
    """A key as a plain str (aiocache passes str enums through as they are)."""
    if isinstance(key, Enum):
        key = key.value
    return key if type(key) is str else str(key)


class CrdtCache(BaseCache):  # type: ignore[misc]  # aiocache ships no type hints
    """aiocache's cache interface on a crdtcache node (see the module doc).

    Raises :class:`~crdtcache.ConfigError` for bad crdtcache options.
    """

    NAME = "crdtcache"

    def __init__(
        self, endpoint: str = "memory", *, cache: Cache | None = None, **kwargs: Any
    ) -> None:
        base = {k: kwargs.pop(k) for k in _AIOCACHE_KEYWORDS if k in kwargs}
        base.setdefault("serializer", None)
        base["serializer"] = base["serializer"] or NullSerializer()
        super().__init__(**base)
        kwargs.pop("port", None)  # from_url passes the URL's port and password along
        kwargs.pop("password", None)
        if "default_ttl" in kwargs:
            raise ConfigError("default_ttl does not apply: aiocache's ttl= is the default")
        if "value_serializer" in kwargs:
            kwargs["serializer"] = kwargs.pop("value_serializer")
        self._options = {} if cache is not None else cache_options(endpoint, kwargs)
        self._given = cache
        self._cache: Cache | None = cache
        self._locks = KeyLocks()

    @classmethod
    def parse_uri_path(cls, path: str) -> dict[str, Any]:
        """Nothing in a ``crdtcache://`` URL's path: the host names the backend."""
        return {}

    async def _node(self) -> Cache:
        if self._cache is None:
            cache = Cache(**self._options)
            await cache.start()
            self._cache = cache
        return self._cache

    async def _reader(self) -> Cache:
        """The node reads go to (this one; a test harness may read from another)."""
        return await self._node()

    async def _close(self, *args: Any, _conn: Any = None, **kwargs: Any) -> None:
        cache, self._cache = self._cache, self._given
        if cache is not None and cache is not self._given:
            await cache.close()

    # ---------------------------------------------------------------- reads
    async def _get(self, key: Any, encoding: str = "utf-8", _conn: Any = None) -> Any:
        return await (await self._reader()).get(_key(key))

    async def _gets(self, key: Any, encoding: str = "utf-8", _conn: Any = None) -> Any:
        # The token of the optimistic lock: the value itself, as aiocache's memory cache.
        return await self._get(key, encoding)

    async def _multi_get(self, keys: Any, encoding: str = "utf-8", _conn: Any = None) -> Any:
        names = [_key(k) for k in keys]
        found = await (await self._reader()).get_many(names)
        return [found.get(k) for k in names]

    async def _exists(self, key: Any, _conn: Any = None) -> bool:
        return await (await self._reader()).exists(_key(key))

    # --------------------------------------------------------------- writes
    async def _set(
        self,
        key: Any,
        value: Any,
        ttl: float | None = None,
        _cas_token: Any = None,
        _conn: Any = None,
    ) -> Any:
        node, name = await self._node(), _key(key)
        if _cas_token is None:
            await node.set(name, value, ttl or None)
            return True
        async with self._locks(name):
            if await node.get(name) != _cas_token:
                return 0
            await node.set(name, value, ttl or None)
            return True

    async def _multi_set(self, pairs: Any, ttl: float | None = None, _conn: Any = None) -> bool:
        await (await self._node()).set_many({_key(k): v for k, v in pairs}, ttl or None)
        return True

    async def _add(self, key: Any, value: Any, ttl: float | None = None, _conn: Any = None) -> bool:
        if not await (await self._node()).add(_key(key), value, ttl or None):
            raise ValueError(f"Key {key} already exists, use .set to update the value")
        return True

    async def _increment(self, key: Any, delta: int, _conn: Any = None) -> int:
        try:
            return await (await self._node()).incr(_key(key), delta)
        except ValidationError as exc:
            raise TypeError("Value is not an integer") from exc

    async def _expire(self, key: Any, ttl: float | None, _conn: Any = None) -> bool:
        # aiocache's 0 removes the expiry (crdtcache's None).
        return await (await self._node()).touch(_key(key), ttl or None)

    async def _delete(self, key: Any, _conn: Any = None) -> int:
        return int(await (await self._node()).delete(_key(key)))

    async def _clear(self, namespace: str | None = None, _conn: Any = None) -> bool:
        node = await self._node()
        if namespace is None:
            await node.clear()
        else:
            await node.delete_many([k for k in await node.keys() if k.startswith(namespace)])
        return True

    async def _raw(
        self, command: str, *args: Any, encoding: str = "utf-8", _conn: Any = None, **kwargs: Any
    ) -> Any:
        """The crdtcache ``Cache`` method ``command`` (the escape hatch)."""
        return await getattr(await self._node(), command)(*args, **kwargs)

    async def _redlock_release(self, key: Any, value: Any) -> int:
        node, name = await self._node(), _key(key)
        async with self._locks(name):
            if await node.get(name, ABSENT) != value:
                return 0
            return int(await node.delete(name))


aiocache.AIOCACHE_CACHES[CrdtCache.NAME] = CrdtCache
