"""A cashews backend on a crdtcache node: the ``crdtcache://`` scheme.

Usage::

    import crdtcache.contrib.cashews  # registers the scheme with cashews
    from cashews import cache

    cache.setup("crdtcache://p2p?seeds=10.0.0.2:7946,10.0.0.3:7946&max_size=50000",
                cluster_secret=b"a cluster secret of 16 bytes or more")
    # or "crdtcache://memory", "crdtcache://redis?redis_url=redis://127.0.0.1:6379/0",
    # or an existing node: cache.setup("crdtcache://", cache=my_crdtcache_cache)

The URL's host is the backend (``memory``, ``p2p``, ``redis``); query parameters and
keyword arguments of ``setup`` are :class:`crdtcache.Cache` options, with three
renamed because cashews takes the names for itself: ``cluster_secret`` is crdtcache's
``secret`` (cashews' ``secret=`` signs values), ``cluster_name`` its ``cluster``
(cashews turns a ``cluster`` query parameter into a bool) and ``value_serializer`` its
``serializer`` (cashews passes its own ``serializer=``; ``pickle_type=default`` is
cashews' way to pickle values before crdtcache sees them). ``default_ttl`` is
refused: cashews says each value's expiry. The node starts with ``init()`` (or the
first call) in the running event loop and stops with ``close()``; a later call starts
a new one (a memory node then starts empty).

What each command means here, beside a Redis backend:

* ``get``/``set``/``get_many``/``set_many``/``delete*``/``scan``/``get_match``/
  ``exists``: as in Redis; ``delete_match`` deletes the keys it finds (no pattern
  tombstone, so it does not cover keys written meanwhile on other nodes).
* ``incr``: crdtcache's ``incr`` (a convergent counter in p2p mode, INCRBY in redis
  mode); ``expire`` applies when it creates the key.
* ``expire``/``get_expire``: ``touch``/``ttl``; an expiry of 0 or less deletes, as in
  Redis; ``get_expire`` gives whole seconds, ``-1`` for none, ``-2`` for no key.
* ``set(..., exist=False)`` and ``set_lock`` are crdtcache's ``add``: atomic on this
  node and, in redis mode, across instances; **in p2p mode not across nodes** (two
  nodes taking one lock at once both get it). ``set(..., exist=True)``, ``unlock``
  (compare and delete), the bit fields (``get_bits``/``incr_bits``), the sliding
  windows (``slice_incr``) and sets (``set_add``/``set_remove``/``set_pop``) read,
  compute and write back under a per-key lock: atomic among this node's callers only,
  last-writer-wins between nodes (a concurrent ``incr_bits`` on two nodes keeps one
  side's). Such keys hold a typed value that ``get`` does not return (as Redis
  answers a GET of a set with an error, cashews' default).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import cashews
from cashews.backends.interface import NOT_EXIST, UNLIMITED, Backend
from cashews.picklers import PicklerType

from crdtcache._errors import ConfigError
from crdtcache.cache._cache import ABSENT, Cache
from crdtcache.contrib._locks import KeyLocks
from crdtcache.contrib._options import cache_options

__all__ = ["SCHEME", "CrdtBackend"]

#: The URL scheme registered with cashews.
SCHEME: Final = "crdtcache"
# Marks a typed value (bit field, sorted set, set): never a value cashews stored.
_TYPED: Final = "\x00crdtcache.cashews"


def _typed(kind: str, payload: Any) -> tuple[str, str, Any]:
    return (_TYPED, kind, payload)


def _kind(raw: Any) -> str | None:
    """The kind of a typed value, None for a plain one."""
    if type(raw) is tuple and len(raw) == 3 and raw[0] == _TYPED:
        return str(raw[1])
    return None


class CrdtBackend(Backend):
    """cashews' backend interface on a crdtcache node (see the module doc).

    ``address`` is the setup URL without its query (``crdtcache://p2p``); ``cache`` an
    existing, started :class:`crdtcache.Cache` to use instead (it is not closed here).
    Raises :class:`~crdtcache.ConfigError` for bad options.
    """

    def __init__(
        self,
        address: str = "crdtcache://memory",
        *,
        cache: Cache | None = None,
        serializer: Any = None,
        **options: Any,
    ) -> None:
        super().__init__(serializer=serializer)
        if "secret" in options:  # pragma: no cover - cashews takes secret= for itself
            raise ConfigError("pass the cluster secret as cluster_secret=")
        if isinstance(options.get("cluster"), bool):
            raise ConfigError(
                "cashews turned the cluster query parameter into a bool: use cluster_name"
            )
        if "default_ttl" in options:
            raise ConfigError("default_ttl does not apply: cashews gives each value's expiry")
        if "cluster_secret" in options:
            options["secret"] = options.pop("cluster_secret")
        if "cluster_name" in options:
            options["cluster"] = options.pop("cluster_name")
        if "value_serializer" in options:
            options["serializer"] = options.pop("value_serializer")
        location = urlsplit(address).netloc or "memory"
        self._options = {} if cache is not None else cache_options(location, options)
        self._given = cache
        self._cache: Cache | None = cache
        self._locks = KeyLocks()

    # ------------------------------------------------------------ lifecycle
    @property
    def is_init(self) -> bool:
        """Whether the node is started."""
        return self._cache is not None

    async def init(self) -> None:
        """Start the node in the running loop (idempotent)."""
        if self._cache is None:
            cache = Cache(**self._options)
            await cache.start()
            self._cache = cache

    async def close(self) -> None:
        """Stop the node (a node given as ``cache=`` is left running)."""
        cache, self._cache = self._cache, self._given
        if cache is not None and cache is not self._given:
            await cache.close()

    async def _node(self) -> Cache:
        if self._cache is None:
            await self.init()
        assert self._cache is not None
        return self._cache

    async def _reader(self) -> Cache:
        """The node reads go to (this one; a test harness may read from another)."""
        return await self._node()

    async def ping(self, message: bytes | None = None) -> bytes:
        """``b"PONG"`` (or ``message`` echoed) once the node is up."""
        await self._node()
        return b"PONG" if message is None or message == b"PING" else message

    async def clear(self) -> None:
        """Remove every key of the cluster."""
        await (await self._node()).clear()

    # --------------------------------------------------------------- values
    async def _encode(self, key: str, value: Any, expire: float | None) -> Any:
        if self._serializer is None:
            return value
        return await self._serializer.encode(self, key=key, value=value, expire=expire)

    async def _decode(self, key: str, raw: Any, default: Any) -> Any:
        if raw is ABSENT or _kind(raw) is not None:
            return default
        if self._serializer is None:
            return raw
        return await self._serializer.decode(self, key=key, value=raw, default=default)

    async def set(
        self, key: str, value: Any, expire: float | None = None, exist: bool | None = None
    ) -> bool:
        """Store ``value`` (``exist``: only if present / only if absent); whether it did."""
        node = await self._node()
        data = await self._encode(key, value, expire)
        ttl = expire or None
        if exist is False:
            return await node.add(key, data, ttl)
        if exist is True:
            async with self._locks(key):
                if not await node.exists(key):
                    return False
                await node.set(key, data, ttl)
                return True
        await node.set(key, data, ttl)
        return True

    async def set_many(self, pairs: Mapping[str, Any], expire: float | None = None) -> None:
        """Store every pair as one batch."""
        node = await self._node()
        data = {k: await self._encode(k, v, expire) for k, v in pairs.items()}
        await node.set_many(data, expire or None)

    async def set_raw(self, key: str, value: Any, **kwargs: Any) -> None:
        """Store ``value`` as it is (no serializer)."""
        await (await self._node()).set(key, value, kwargs.get("expire") or None)

    async def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` (also for a typed key)."""
        raw = await (await self._reader()).get(key, ABSENT)
        return await self._decode(key, raw, default)

    async def get_raw(self, key: str) -> Any:
        """The stored value of ``key`` (no serializer), None if absent."""
        raw = await (await self._reader()).get(key, ABSENT)
        return None if raw is ABSENT else raw

    async def get_many(self, *keys: str, default: Any = None) -> tuple[Any, ...]:
        """The values of ``keys`` in order, ``default`` where absent or typed."""
        found = await (await self._reader()).get_many(keys)
        return tuple([await self._decode(k, found.get(k, ABSENT), default) for k in keys])

    async def exists(self, key: str) -> bool:
        """Whether ``key`` has a live value."""
        return await (await self._reader()).exists(key)

    async def scan(self, pattern: str, batch_size: int = 100) -> AsyncIterator[str]:
        """Live keys matching the glob."""
        for key in await (await self._reader()).keys(pattern):
            yield key

    async def get_match(
        self, pattern: str, batch_size: int = 100
    ) -> AsyncIterator[tuple[str, Any]]:
        """``(key, value)`` of the live plain values whose key matches the glob."""
        node = await self._reader()
        keys = await node.keys(pattern)
        for start in range(0, len(keys), max(1, batch_size)):
            page = keys[start : start + max(1, batch_size)]
            found = await node.get_many(page)
            for key in page:
                raw = found.get(key, ABSENT)
                if raw is not ABSENT and _kind(raw) is None:
                    yield key, await self._decode(key, raw, None)

    async def get_size(self, key: str) -> int:
        """An estimate of the bytes ``key``'s value takes (0 if absent)."""
        raw = await (await self._node()).get(key, ABSENT)
        return 0 if raw is ABSENT else len(repr(raw))

    async def get_keys_count(self) -> int:
        """How many live keys the cluster holds."""
        return len(await (await self._reader()).keys())

    # -------------------------------------------------------------- deletes
    async def delete(self, key: str) -> bool:
        """Delete ``key``; whether it had a live value."""
        existed = await (await self._node()).delete(key)
        await self._call_on_remove_callbacks(key)
        return existed

    async def delete_many(self, *keys: str) -> None:
        """Delete ``keys`` as one batch."""
        await (await self._node()).delete_many(keys)
        await self._call_on_remove_callbacks(*keys)

    async def delete_match(self, pattern: str) -> None:
        """Delete the live keys matching the glob (see the module doc)."""
        node = await self._node()
        keys = await node.keys(pattern)
        if keys:
            await node.delete_many(keys)
            await self._call_on_remove_callbacks(*keys)

    # --------------------------------------------------------------- expiry
    async def expire(self, key: str, timeout: float) -> bool:
        """A new expiry for ``key``; 0 or less deletes it."""
        node = await self._node()
        if timeout is not None and timeout <= 0:
            return await node.delete(key)
        return await node.touch(key, timeout)

    async def get_expire(self, key: str) -> int:
        """Whole seconds left; ``-1`` for no expiry, ``-2`` for no key."""
        ttl = await (await self._reader()).ttl(key)
        if ttl is None:
            return UNLIMITED
        if ttl < 0:
            return NOT_EXIST
        return round(ttl)

    async def incr(self, key: str, value: int = 1, expire: float | None = None) -> int:
        """crdtcache's ``incr`` (``expire`` applies to a key it creates)."""
        return await (await self._node()).incr(key, value, expire or None)

    # ------------------------------------------------------------------ locks
    async def set_lock(self, key: str, value: Any, expire: float) -> bool:
        """Take the lock ``key`` if free (``add``; not across p2p nodes)."""
        node = await self._node()
        return await node.add(key, await self._encode(key, value, expire), expire or None)

    async def is_locked(self, key: str, wait: float | None = None, step: float = 0.1) -> bool:
        """Whether ``key`` is held; with ``wait``, poll until free or ``wait`` runs out."""
        node = await self._reader()
        if wait is None:
            return await node.exists(key)
        while wait > 0:
            if not await node.exists(key):
                return False
            wait -= step
            await asyncio.sleep(step)
        return await node.exists(key)

    async def unlock(self, key: str, value: Any) -> bool:
        """Release ``key`` if it holds ``value`` (compare and delete, on this node)."""
        node = await self._node()
        async with self._locks(key):
            raw = await node.get(key, ABSENT)
            if raw is ABSENT or await self._decode(key, raw, ABSENT) != value:
                return False
            return await node.delete(key)

    # ------------------------------------------------------- typed values
    async def _typed_value(self, node: Cache, key: str, kind: str, empty: Any) -> Any:
        raw = await node.get(key, ABSENT)
        return raw[2] if _kind(raw) == kind else empty

    async def _store_typed(
        self, node: Cache, key: str, kind: str, payload: Any, expire: float | None
    ) -> None:
        """Write a typed value, keeping the key's expiry unless ``expire`` is given."""
        if expire:
            await node.set(key, _typed(kind, payload), expire)
            return
        ttl = await node.ttl(key)
        await node.set(key, _typed(kind, payload), ttl if ttl is not None and ttl > 0 else None)

    async def get_bits(self, key: str, *indexes: int, size: int = 1) -> tuple[int, ...]:
        """The unsigned ``size``-bit fields at ``indexes`` (0 where never set)."""
        bits = await self._typed_value(await self._reader(), key, "bits", {})
        return tuple(bits.get((size, i), 0) for i in indexes)

    async def incr_bits(
        self, key: str, *indexes: int, size: int = 1, by: int = 1
    ) -> tuple[int, ...]:
        """Add ``by`` to the fields at ``indexes``, saturating at 0 and ``2**size - 1``."""
        node = await self._node()
        top = (1 << size) - 1
        async with self._locks(key):
            bits = dict(await self._typed_value(node, key, "bits", {}))
            for i in indexes:
                bits[(size, i)] = max(0, min(top, bits.get((size, i), 0) + by))
            await self._store_typed(node, key, "bits", bits, None)
        return tuple(bits[(size, i)] for i in indexes)

    async def slice_incr(
        self,
        key: str,
        start: int | float,
        end: int | float,
        maxvalue: int,
        expire: float | None = None,
    ) -> int:
        """A sliding window: drop marks before ``start``, add ``end`` if fewer than
        ``maxvalue`` marks lie in ``[start, end]``; how many lie there."""
        node = await self._node()
        async with self._locks(key):
            marks = [m for m in await self._typed_value(node, key, "window", ()) if m >= start]
            count = sum(1 for m in marks if m <= end)
            if count < maxvalue:
                count += 1
                if end not in marks:
                    marks.append(end)
                await self._store_typed(node, key, "window", tuple(sorted(marks)), expire)
            elif len(marks) != count:
                await self._store_typed(node, key, "window", tuple(sorted(marks)), None)
        return count

    async def set_add(self, key: str, *values: str, expire: float | None = None) -> None:
        """Add ``values`` to the set at ``key``."""
        node = await self._node()
        async with self._locks(key):
            members = await self._typed_value(node, key, "set", frozenset())
            await self._store_typed(node, key, "set", frozenset(members) | set(values), expire)

    async def set_remove(self, key: str, *values: str) -> None:
        """Remove ``values`` from the set at ``key`` (an empty set is deleted)."""
        node = await self._node()
        async with self._locks(key):
            members = frozenset(await self._typed_value(node, key, "set", frozenset()))
            left = members - set(values)
            if not left:
                await node.delete(key)
            elif left != members:
                await self._store_typed(node, key, "set", left, None)

    async def set_pop(self, key: str, count: int = 100) -> Iterable[str]:
        """Remove and return up to ``count`` members of the set at ``key``."""
        node = await self._node()
        async with self._locks(key):
            members = sorted(await self._typed_value(node, key, "set", frozenset()))
            popped, left = members[:count], frozenset(members[count:])
            if popped:
                if left:
                    await self._store_typed(node, key, "set", left, None)
                else:
                    await node.delete(key)
        return popped


cashews.register_backend(SCHEME, CrdtBackend, pass_uri=True, pickler=PicklerType.NULL)
