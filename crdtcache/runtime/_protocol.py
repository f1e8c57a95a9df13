"""What the cache needs from whatever moves its engine's messages.

A runtime owns the event-loop side of one node: it ticks the engine, delivers its
messages (over TCP for ``backend="p2p"``; nowhere for ``"memory"``) and reports
what changed. The :class:`~crdtcache.Cache` talks to it only through this protocol.

A runtime whose data lives in a shared store (``backend="redis"``) also implements
:class:`SharedTier`: there the replica is only a hot tier, so the cache asks the
runtime for what the replica alone cannot answer (the key space, its size, snapshots).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from crdtcache.core import Change, GossipEngine, PeerEvent

__all__ = ["ChangeListener", "PeerListener", "Runtime", "SharedTier"]

ChangeListener = Callable[[list[Change]], None]
PeerListener = Callable[[PeerEvent], None]


class Runtime(Protocol):
    """The event-loop side of one node (see module doc)."""

    engine: GossipEngine

    @property
    def address(self) -> str | None:
        """``host:port`` actually bound for peer traffic, or None without a network."""
        ...

    async def start(self) -> None:
        """Start ticking (and listening, discovering) in the running loop."""
        ...

    async def close(self) -> None:
        """Flush what is queued, then stop; idempotent."""
        ...

    def listen(self, on_changes: ChangeListener, on_peer: PeerListener) -> None:
        """Register the callbacks that receive drained changes and peer events."""
        ...

    def wake(self) -> None:
        """A local write was queued: make sure it is flushed within ``sync_interval``."""
        ...

    async def flush(self, *, ack: bool, timeout: float) -> frozenset[str]:
        """Push queued deltas now; with ``ack``, wait until every live peer applied them.

        Returns the peers that did not acknowledge within ``timeout`` (empty on success).
        """
        ...

    async def fetch(self, keys: Sequence[str], timeout: float) -> None:
        """Ask live peers for values this node does not hold; merged as they arrive."""
        ...

    def statistics(self) -> dict[str, Any]:
        """Transport counters (bytes and frames sent/received, connections)."""
        ...


class SharedTier(Protocol):
    """What a runtime backed by a shared store answers in the replica's place.

    Every method raises :class:`~crdtcache.PeerError` when the store cannot be reached.
    """

    def check_writable(self) -> None:
        """Raise :class:`~crdtcache.PeerError` if a write now could not be stored."""
        ...

    async def live(self, key: str) -> bool:
        """Whether the store holds a live value for ``key``."""
        ...

    async def keys(self, pattern: str) -> list[str]:
        """Sorted live keys matching the glob, across the store."""
        ...

    async def size(self) -> int:
        """How many live keys the store holds (may be cached for a few seconds)."""
        ...

    async def snapshot(self) -> bytes:
        """The store's whole state as snapshot bytes."""
        ...

    async def restore(self, data: bytes) -> list[Change]:
        """Merge snapshot bytes into the store; returns the changes it made."""
        ...
