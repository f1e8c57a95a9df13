"""Cache operations a connected client asks for (``crdtcache get/set/delete/stats``).

The p2p node receives the request over an authenticated link and calls the handler
made here, which uses the cache's public API only. A value read for a client is sent
in a JSON-like form (:func:`shown`): admin replies are plain msgpack with str map keys,
and the shell prints JSON, so tuples, sets, datetimes, UUIDs and the like are spelled
out rather than carried.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from crdtcache._errors import ConfigError
from crdtcache.core import decode_value
from crdtcache.core._values import INT_MAX, INT_MIN

if TYPE_CHECKING:
    from crdtcache.cache._cache import Cache

__all__ = ["serve_admin", "shown"]

AdminHandler = Callable[[str, tuple[Any, ...]], Awaitable[Any]]


def serve_admin(cache: Cache) -> AdminHandler:
    """The handler a node calls with ``(op, args)`` for ``cache``."""

    async def handle(op: str, args: tuple[Any, ...]) -> Any:
        if op == "get":
            missing = object()
            value = await cache.get(args[0], missing)
            if value is missing:
                return {"found": False}
            # The stored form (a schema model's dump), as a client can be sent it.
            return {"found": True, "value": shown(decode_value(cache._codec.dump(args[0], value)))}
        if op == "set":
            await cache.set(args[0], args[1], ttl=args[2])
            return True
        if op == "delete":
            return await cache.delete(args[0])
        if op == "stats":
            return (await cache.get_statistics()).as_dict()
        raise ConfigError(f"unknown operation {op!r}")

    return handle


def shown(value: Any) -> Any:
    """``value`` as JSON-like data a client is sent: str map keys, no extension types.

    Sequences and sets become lists (sets sorted by their text), map keys their text
    (``repr`` unless a str), dates and times ISO strings, a timedelta its seconds,
    UUID, Decimal and ints beyond 64 bits their text, a bytearray its bytes.
    """
    kind = type(value)
    if kind in (list, tuple):
        return [shown(v) for v in value]
    if kind in (set, frozenset):
        return sorted((shown(v) for v in value), key=repr)
    if kind is dict:
        return {k if type(k) is str else repr(k): shown(v) for k, v in value.items()}
    if kind in (datetime.datetime, datetime.date, datetime.time):
        return value.isoformat()
    if kind is datetime.timedelta:
        return value.total_seconds()
    if kind in (uuid.UUID, decimal.Decimal) or (kind is int and not INT_MIN <= value <= INT_MAX):
        return str(value)
    if kind is bytearray:
        return bytes(value)
    return value
