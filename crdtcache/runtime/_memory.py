"""The runtime of ``backend="memory"``: one process, no network.

The engine still runs: its ticks collect expired values and old tombstones, and the
changes that produces (expirations) reach the cache's listener like on any node. A
task sleeps until the engine's next deadline (at most ``MAX_IDLE`` seconds), then
ticks. Deltas have no peer to go to: a write schedules one flush that drops them, so
queued entries (and the old values they reference) do not linger until the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Final

from crdtcache.core import GossipEngine
from crdtcache.runtime._keyspace import ReplicaKeySpace
from crdtcache.runtime._protocol import (
    AdminHandler,
    ChangeListener,
    EvictionListener,
    PeerListener,
    RuntimeStatistics,
    engine_peers,
)
from crdtcache.store._persistence import Persistence

__all__ = ["MAX_IDLE", "LocalRuntime"]

log = logging.getLogger(__name__)

#: Longest sleep between two ticks, seconds.
MAX_IDLE: Final = 1.0


class LocalRuntime(ReplicaKeySpace):
    """Drives a :class:`GossipEngine` without peers (implements the cache's ``Runtime``).

    ``keeps_stubs``: True when an evicted value can be read again (from
    ``persist_path``); otherwise a lone node drops evicted keys whole.
    """

    def __init__(
        self,
        engine: GossipEngine,
        *,
        clock: Callable[[], float] = time.time,
        keeps_stubs: bool = False,
    ) -> None:
        super().__init__(engine.replica, clock, engine.config.max_value_bytes)
        self.engine = engine
        self.keeps_stubs = keeps_stubs
        self._clock = clock
        self._on_changes: ChangeListener | None = None
        self._on_peer: PeerListener | None = None
        self._task: asyncio.Task[None] | None = None
        self._flush_scheduled = False

    @property
    def address(self) -> str | None:
        """Always None: this runtime has no network address."""
        return None

    def listen(
        self,
        on_changes: ChangeListener,
        on_peer: PeerListener,
        on_evict: EvictionListener | None = None,
    ) -> None:
        """Register the callbacks that receive drained changes and peer events."""
        self._on_changes = on_changes
        self._on_peer = on_peer

    async def start(self) -> None:
        """Start the ticking task in the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop ticking and drop queued deltas; idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.engine.flush(self._clock())

    def keep_durable(self, persistence: Persistence) -> None:
        """Nothing to wait for: no own write leaves a memory cache."""

    def serve_admin(self, handler: AdminHandler) -> None:
        """Nothing to serve: no client can reach a memory cache."""

    def wake(self) -> None:
        """A write was queued: drop its delta soon (one flush for a burst of writes)."""
        if not self._flush_scheduled and self._task is not None:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._drop_deltas)

    def _drop_deltas(self) -> None:
        self._flush_scheduled = False
        self.engine.flush(self._clock())

    async def flush(self, *, ack: bool, timeout: float) -> frozenset[str]:
        """Drop queued deltas (no peer to send them to); nobody to wait for."""
        self.engine.flush(self._clock(), ack=ack)
        return frozenset()

    async def fetch(self, keys: Sequence[str], timeout: float) -> None:
        """Nothing to ask: there are no peers."""

    def statistics(self) -> RuntimeStatistics:
        """No traffic; peers only if a test or tool fed the engine messages directly."""
        instances, peers = engine_peers(self.engine)
        return RuntimeStatistics(instances=instances, peers=peers)

    def tick(self) -> None:
        """Tick the engine once now and hand what changed to the listeners."""
        engine = self.engine
        engine.tick(self._clock())
        changes = engine.drain_changes()
        if changes and self._on_changes is not None:
            self._on_changes(changes)
        for event in engine.drain_peer_events():  # pragma: no cover - no peers here
            if self._on_peer is not None:
                self._on_peer(event)

    async def _run(self) -> None:
        # asyncio.sleep, not wait_for on an event: wait_for can swallow a cancellation
        # on Python 3.11 when its inner wait completes at the same time.
        while True:
            delay = min(max(self.engine.next_deadline() - self._clock(), 0.0), MAX_IDLE)
            await asyncio.sleep(delay)
            try:
                self.tick()
            except Exception:  # a listener's bug must not stop expiry for good
                log.exception("tick failed")
