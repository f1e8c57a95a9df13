"""Background reloads: refresh-ahead (``refresh=``) and event-driven invalidation rules.

Both are the cache reacting to something other than a caller: a timer (every
``refresh_interval`` the values this node wrote last are reloaded) or an application
event (a matching :class:`~._events.InvalidationRule` invalidates a key or glob). Each
acts only through the public cache operations it is given, so every reload and
invalidation replicates like any other write.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from crdtcache._errors import CacheError, PeerError
from crdtcache.cache._events import InvalidationRule
from crdtcache.core import Replica

__all__ = ["Refresher", "maybe_await", "rule_handler"]

log = logging.getLogger(__name__)


async def maybe_await(value: Any) -> Any:
    """``value``, awaited first if it is awaitable (user callbacks may be sync or async)."""
    if inspect.isawaitable(value):
        return await value
    return value


class Refresher:
    """Reloads, every ``interval`` seconds, each live value this node wrote last.

    Only the node that wrote a key refreshes it, so a cluster reloads each key once
    per round, not once per node. ``replica`` gives the running replica, ``store``
    writes a reloaded value (the cache's ``set``).
    """

    def __init__(
        self,
        refresh: Callable[[str], Any],
        interval: float,
        *,
        node_id: Callable[[], str],
        replica: Callable[[], Replica],
        clock: Callable[[], float],
        store: Callable[[str, Any], Awaitable[None]],
    ) -> None:
        self._refresh = refresh
        self._interval = interval
        self._node_id = node_id
        self._replica = replica
        self._clock = clock
        self._store = store

    async def run_forever(self) -> None:
        """A round every ``interval`` seconds until cancelled; a failed round is logged."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.round()
            except CacheError as exc:
                log.warning("refresh round stopped: %s", exc)

    async def round(self) -> int:
        """Reload every live value this node wrote last; returns how many were set.

        A reload that raises, or returns a value that cannot be stored, keeps the
        current value (logged); a key deleted while it was reloading stays deleted.
        """
        replica = self._replica()
        node = self._node_id()
        now = self._clock()
        mine = [
            key
            for key, e in replica.entries.items()
            if e.origin == node and e.held and not e.expired(now)
        ]
        done = 0
        for key in mine:
            try:
                value = await maybe_await(self._refresh(key))
            except Exception:
                log.exception("refresh of %r failed; keeping the current value", key)
                continue
            if replica.lookup(key, self._clock()) is None:
                continue  # deleted while reloading: do not bring it back
            try:
                await self._store(key, value)
            except PeerError as exc:
                log.warning("refresh: %s", exc)
            except CacheError as exc:
                log.warning("refresh of %r returned a value that cannot be stored: %s", key, exc)
                continue
            done += 1
        return done


def rule_handler(
    rule: InvalidationRule,
    *,
    invalidate: Callable[[str], Awaitable[Any]],
    invalidate_pattern: Callable[[str], Awaitable[Any]],
    loop: asyncio.AbstractEventLoop,
) -> Callable[[str, Any], Awaitable[None]]:
    """The event-bus handler applying ``rule``: invalidate the key (or glob) it renders.

    An event whose data lacks a field the template names is logged and invalidates
    nothing. An event emitted in another thread's loop (a ``SyncCache`` caller) runs
    the invalidation in ``loop``, the cache's own.
    """

    async def handle(event: str, data: Any) -> None:
        try:
            target = rule.render(data)
        except LookupError as exc:
            log.warning("%s on %r: %s; nothing invalidated", rule, event, exc)
            return
        write = invalidate_pattern(target) if rule.is_glob else invalidate(target)
        if asyncio.get_running_loop() is loop:
            await write
        else:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_awaited(write), loop))

    return handle


async def _awaited(write: Awaitable[Any]) -> Any:
    return await write
