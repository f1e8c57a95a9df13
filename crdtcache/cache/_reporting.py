"""Reporting: what happened to a cache, as counts, metrics and events.

Theory of operation
-------------------
*One path for changes.* Every visible change -- a local write, a merged delta, an
expiry found by collection, a snapshot restored -- reaches :meth:`Reporter.changes`,
which counts replication latency and evictions, fires ``Cache.on`` callbacks and
``on_change``. Local writes are reported at once, so their events fire before the
write returns; the runtime reports the rest as it applies them.

Callbacks may be sync or async; one that raises is logged and never breaks the cache.
An async callback runs as a task the reporter tracks, so closing the cache cancels it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from crdtcache._errors import ConfigError
from crdtcache.cache._events import EVENTS, CacheEvent, ChangeEvent
from crdtcache.cache._statistics import Counters
from crdtcache.cache._tier import LocalTier
from crdtcache.core import ALIVE, DEAD, Change, PeerEvent
from crdtcache.core._hlc import ts_ms
from crdtcache.metrics import Metrics

__all__ = ["Callback", "Reporter"]

log = logging.getLogger(__name__)

Callback = Callable[[Any], Any]


class Reporter:
    """Counts and reports one cache's changes, evictions and peer events."""

    def __init__(
        self,
        counters: Counters,
        tier: LocalTier,
        *,
        metrics: Metrics | None,
        on_change: Callable[[ChangeEvent], Any] | None,
        clock: Callable[[], float],
    ) -> None:
        self.counters = counters
        self.tier = tier
        self.metrics = metrics
        self.on_change = on_change
        self.clock = clock
        self.listeners: dict[str, list[Callback]] = {name: [] for name in EVENTS}
        #: The ``hit`` callbacks (the hit path checks this list is empty, cheaply).
        self.hit_listeners = self.listeners["hit"]
        self.tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------ callbacks
    def on(self, event: str, callback: Callback) -> Callable[[], None]:
        """Subscribe ``callback`` to ``event``; returns an unsubscribe function."""
        if event not in self.listeners:
            raise ConfigError(f"unknown event {event!r}; one of {', '.join(EVENTS)}")
        if not callable(callback):
            raise ConfigError("callback must be callable")
        callbacks = self.listeners[event]
        callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in callbacks:
                callbacks.remove(callback)

        return unsubscribe

    def emit(self, event: CacheEvent) -> None:
        """Call every callback of ``event.name``."""
        for callback in tuple(self.listeners[event.name]):
            self.call(callback, event)

    def call(self, callback: Callback, arg: object) -> None:
        """Call ``callback(arg)``; an awaitable result runs as a tracked task."""
        try:
            result = callback(arg)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self.tasks.add(task)
                task.add_done_callback(self._callback_done)
        except Exception:
            log.exception("callback %r failed", callback)

    def _callback_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("callback failed", exc_info=task.exception())

    # -------------------------------------------------------------- changes
    def changes(
        self, changes: list[Change], *, as_invalidate: bool = False, restored: bool = False
    ) -> None:
        """Count and report visible changes (see module doc).

        ``as_invalidate`` reports a local delete as an invalidation; ``restored``
        changes (from a snapshot) are not replication and are not timed.
        """
        left = self.tier.left
        listeners = self.listeners
        on_change = self.on_change
        metrics = self.metrics
        counters = self.counters
        now = None
        for c in changes:
            kind = c.kind
            if kind == "delete" and as_invalidate and not c.remote:
                kind = "invalidate"
            if c.remote and not restored:
                now = now if now is not None else self.clock()
                counters.last_sync = now
                latency = max(0.0, now * 1000.0 - ts_ms(c.ts))
                counters.sync_window.add(latency)
                if metrics is not None:
                    metrics.sync_latency(latency / 1000.0)
            if kind != "set" and c.key in left:
                self.eviction(c.key, "ttl" if kind == "expire" else "explicit")
            if listeners[kind]:
                self.emit(
                    CacheEvent(kind, c.key, origin=c.origin, remote=c.remote, pattern=c.pattern)
                )
            if on_change is not None:
                self.call(on_change, ChangeEvent(c.key, kind, c.origin, c.remote, c.ts, c.pattern))
        left.clear()

    def eviction(self, key: str, reason: str) -> None:
        """A value left the local tier for ``reason``."""
        self.counters.evictions[reason] += 1
        if self.metrics is not None:
            self.metrics.eviction(reason)
        if self.listeners["eviction"]:
            self.emit(CacheEvent("eviction", key, reason=reason))

    def peer(self, event: PeerEvent, live: int, address: str | None) -> None:
        """A peer (or instance) changed state; ``live`` peers remain."""
        if event.state == ALIVE and event.previous in (None, DEAD):
            name = "peer_up"
        elif event.state == DEAD and event.previous != DEAD:
            name = "peer_down"
        else:
            return
        if self.metrics is not None:
            self.metrics.peers(live)
        if self.listeners[name]:
            self.emit(CacheEvent(name, peer=event.peer, address=address))

    async def close(self) -> None:
        """Cancel callbacks still running."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
