"""Cache operations a connected client asks for (``crdtcache get/set/delete/stats``).

The p2p node receives the request over an authenticated link and calls the handler
made here, which uses the cache's public API only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from crdtcache._errors import ConfigError
from crdtcache.core import decode_value

if TYPE_CHECKING:
    from crdtcache.cache._cache import Cache

__all__ = ["serve_admin"]

AdminHandler = Callable[[str, tuple[Any, ...]], Awaitable[Any]]


def serve_admin(cache: Cache) -> AdminHandler:
    """The handler a node calls with ``(op, args)`` for ``cache``."""

    async def handle(op: str, args: tuple[Any, ...]) -> Any:
        if op == "get":
            missing = object()
            value = await cache.get(args[0], missing)
            if value is missing:
                return {"found": False}
            # The plain (msgpack) form, also for schema models.
            return {"found": True, "value": decode_value(cache._codec.dump(args[0], value))}
        if op == "set":
            await cache.set(args[0], args[1], ttl=args[2])
            return True
        if op == "delete":
            return await cache.delete(args[0])
        if op == "stats":
            return (await cache.get_statistics()).as_dict()
        raise ConfigError(f"unknown operation {op!r}")

    return handle
