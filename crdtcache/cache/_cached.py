"""The ``cached`` decorator: cache-aside for a function, through ``get_or_set``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from crdtcache._errors import ConfigError
from crdtcache.cache._cache import Cache
from crdtcache.cache._options import check_ttl
from crdtcache.cache._sync import SyncCache

__all__ = ["cached"]

KeySpec = str | Callable[..., str] | None


def cached(
    cache: Cache | SyncCache, *, key: KeySpec = None, ttl: float | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a function so that its result is cached under a key built from its arguments.

    ``key`` is a template formatted with the call's arguments by name
    (``"user:{user_id}"``, ``"user:{user.id}"``), a callable taking the same arguments
    and returning the key, or None for ``module.qualname:`` followed by the arguments'
    reprs. Concurrent calls for one key run the function once (``get_or_set``). With a
    :class:`Cache` the wrapper is a coroutine function (the function may be sync or
    async); with a :class:`SyncCache` it is a plain function.
    """
    if not isinstance(cache, (Cache, SyncCache)):
        raise ConfigError("cached() needs a Cache or a SyncCache")
    if key is not None and not isinstance(key, str) and not callable(key):
        raise ConfigError("key must be a template str, a callable, or None")
    check_ttl(ttl)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)
        prefix = f"{fn.__module__}.{fn.__qualname__}:"

        def key_for(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            if callable(key):
                return key(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            if key is None:
                return prefix + ",".join(f"{k}={v!r}" for k, v in bound.arguments.items())
            return key.format(**bound.arguments)

        if isinstance(cache, SyncCache):

            @functools.wraps(fn)
            def call(*args: Any, **kwargs: Any) -> Any:
                return cache.get_or_set(key_for(args, kwargs), lambda: fn(*args, **kwargs), ttl)

            return call

        @functools.wraps(fn)
        async def acall(*args: Any, **kwargs: Any) -> Any:
            return await cache.get_or_set(key_for(args, kwargs), lambda: fn(*args, **kwargs), ttl)

        return acall

    return decorate
