"""What the cache needs from whatever moves its engine's messages.

A runtime owns the event-loop side of one node: it ticks the engine, delivers its
messages (over TCP for ``backend="p2p"``; nowhere for ``"memory"``; to Redis for
``"redis"``) and reports what changed. The :class:`~crdtcache.Cache` talks to it only
through :class:`Runtime`, and never asks which backend it is: every runtime answers
the same questions, including those about the whole cluster's key space (``keys``,
``size``, ``snapshot``, ``restore``), which the memory and p2p runtimes answer from
the replica and the redis runtime from Redis.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from crdtcache.core import Change, GossipEngine, PeerEvent
from crdtcache.store._persistence import Persistence

__all__ = [
    "AdminHandler",
    "ChangeListener",
    "EvictionListener",
    "PeerListener",
    "PeerState",
    "Problem",
    "Runtime",
    "RuntimeStatistics",
    "engine_peers",
]

ChangeListener = Callable[[list[Change]], None]
#: Runs one cache operation a connected client asked for: ``await handler(op, args)``.
AdminHandler = Callable[[str, tuple[Any, ...]], Awaitable[Any]]
PeerListener = Callable[[PeerEvent], None]
#: Called with ``(key, reason)`` when a runtime drops a held value on its own (redis
#: mode's ``local_ttl``): the cache counts and reports it like its own evictions.
EvictionListener = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class PeerState:
    """One peer (p2p) or other instance (redis) as the runtime sees it.

    ``last_heard``: when it was last heard from (the runtime's clock, seconds; None
    when the runtime does not say: the engine's peer table has it for p2p).
    ``label``: what it says it is where it has no address (redis: host and process).
    """

    id: str
    address: str | None
    state: str
    last_heard: float | None = None
    label: str | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    """Something the runtime finds wrong with itself, and what it costs the health score."""

    points: int
    reason: str


@dataclass(frozen=True, slots=True)
class RuntimeStatistics:
    """A runtime's counters and view of the cluster (one shape for every runtime).

    ``instances`` counts this node and the peers it considers live. ``frames`` are
    messages for p2p and commands / channel messages for redis. ``refused_drift``
    counts stamps the runtime itself refused for clock drift (redis: stamps Redis or
    its records carried); the engine counts the ones it refuses.
    """

    bytes_sent: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    frames_dropped: int = 0
    connections: int = 0
    instances: int = 1
    peers: tuple[PeerState, ...] = ()
    problems: tuple[Problem, ...] = ()
    protocol_errors: int = 0
    refused_connections: int = 0
    refused_drift: int = 0


def engine_peers(
    engine: GossipEngine, addresses: Mapping[str, str] | None = None
) -> tuple[int, tuple[PeerState, ...]]:
    """``(instances, peers)`` of a node whose engine tracks its peers (memory, p2p)."""
    known = addresses or {}
    peers = tuple(
        PeerState(p.id, known.get(p.id), p.state)
        for p in sorted(engine.peers.values(), key=lambda p: p.id)
    )
    return 1 + len(engine.live_peers()), peers


class Runtime(Protocol):
    """The event-loop side of one node (see module doc)."""

    engine: GossipEngine

    @property
    def address(self) -> str | None:
        """``host:port`` actually bound for peer traffic, or None without a network."""
        ...

    @property
    def answers_misses(self) -> bool:
        """Whether a key this node has never heard of may still be found elsewhere.

        False for p2p and memory (a key with no entry is absent cluster-wide, modulo
        replication lag, so a miss costs no round trip); True for redis.
        """
        ...

    @property
    def keeps_stubs(self) -> bool:
        """Whether an evicted value keeps its stamp as a stub.

        True where the replica is the authority on stamps and a later read can fetch
        the value again (p2p from a peer, memory from ``persist_path``); False where
        the replica is only a hot tier (redis) or nothing could serve the value again.
        """
        ...

    async def start(self) -> None:
        """Start ticking (and listening, discovering) in the running loop."""
        ...

    async def close(self) -> None:
        """Flush what is queued, then stop; idempotent."""
        ...

    def listen(
        self,
        on_changes: ChangeListener,
        on_peer: PeerListener,
        on_evict: EvictionListener | None = None,
    ) -> None:
        """Register the callbacks that receive drained changes, peer events, evictions."""
        ...

    def wake(self) -> None:
        """A local write was queued: make sure it is flushed within ``sync_interval``."""
        ...

    def keep_durable(self, persistence: Persistence) -> None:
        """Send this node's own writes only once ``persistence`` stored them.

        Only a runtime that sends own writes to peers does anything with it (p2p).
        """
        ...

    def serve_admin(self, handler: AdminHandler) -> None:
        """Serve clients' cache operations (``crdtcache get/set``) with ``handler``.

        Only a runtime that accepts client links does anything with it (p2p).
        """
        ...

    async def flush(self, *, ack: bool, timeout: float) -> frozenset[str]:
        """Push queued deltas now; with ``ack``, wait until every live peer applied them.

        Returns the peers that did not acknowledge within ``timeout`` (empty on success).
        """
        ...

    async def fetch(self, keys: Sequence[str], timeout: float) -> None:
        """Ask whoever holds them for values this node does not hold; merged on arrival."""
        ...

    def statistics(self) -> RuntimeStatistics:
        """Traffic counters and the cluster as this runtime sees it."""
        ...

    # ----------------------------------------------- the cluster's key space
    def check_writable(self) -> None:
        """Raise :class:`~crdtcache.PeerError` if a write now could not be kept consistent."""
        ...

    async def live(self, key: str) -> bool:
        """Whether ``key`` has a live value anywhere this runtime can see."""
        ...

    async def keys(self, pattern: str) -> list[str]:
        """Sorted live keys matching the glob, across the cluster's data."""
        ...

    async def add(self, key: str, stored: object, expires: float | None) -> bool:
        """Write ``key`` only if it has no live value; whether it wrote.

        Atomic among this node's callers; across instances where the shared store
        decides (redis), not across p2p nodes.
        """
        ...

    async def incr(
        self, key: str, delta: int, expires: float | None, as_int: Callable[[object], int]
    ) -> int | None:
        """Add ``delta`` to the integer at ``key``, keeping its expiry; the new value.

        ``expires`` applies to a key this creates; ``as_int`` turns a stored value into
        the int it counts from (and raises for one that is not an int). None when the
        value is held elsewhere and this node must fill it first (p2p stubs).
        """
        ...

    async def touch(self, key: str, expires: float | None) -> bool:
        """Give ``key``'s live value a new absolute expiry (None: none), not rewriting
        the value; False if the key has no live value."""
        ...

    async def size(self) -> int:
        """How many live keys the cluster's data holds (may be a few seconds old)."""
        ...

    async def snapshot(self) -> bytes:
        """The cluster's data as this node knows it, as snapshot bytes."""
        ...

    async def restore(self, data: bytes) -> list[Change]:
        """Merge snapshot bytes into the cluster's data; returns the changes made here."""
        ...
