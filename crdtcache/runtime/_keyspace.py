"""The cluster's key space answered from this node's replica (memory and p2p runtimes).

In p2p mode every node's replica holds every key's stamp (values may be stubs), so the
replica alone answers ``keys``, ``size``, ``snapshot`` and ``restore``; the redis
runtime answers the same questions from Redis instead.

The conditional writes (``add``, ``incr``, ``touch``) are decided here by this node's
replica, in one step of the event loop: atomic among this node's callers, not across
nodes (see :meth:`ReplicaKeySpace.add`).
"""

from __future__ import annotations

from collections.abc import Callable

from crdtcache.core import DEFAULT_MAX_VALUE_BYTES, Change, GossipEngine, Replica, decode_value
from crdtcache.core._entry import compile_pattern
from crdtcache.store._snapshot import encode_snapshot, restore_snapshot

__all__ = ["ReplicaKeySpace"]


class ReplicaKeySpace:
    """Answers the runtime's key-space questions from ``replica`` (see module doc)."""

    #: A key with no entry here is absent cluster-wide (modulo replication lag).
    answers_misses = False
    #: The engine writes go through (set by the runtime).
    engine: GossipEngine

    def __init__(
        self,
        replica: Replica,
        clock: Callable[[], float],
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    ) -> None:
        self._replica = replica
        self._clock = clock
        self._max_value_bytes = max_value_bytes

    def check_writable(self) -> None:
        """Always writable: the replica is this node's own."""

    async def live(self, key: str) -> bool:
        """Whether the replica holds a live entry for ``key`` (held here or not)."""
        return self._replica.lookup(key, self._clock()) is not None

    async def keys(self, pattern: str) -> list[str]:
        """Sorted live keys matching the glob, including values held only by peers."""
        live = self._replica.live_keys(self._clock())
        if pattern == "*":
            return sorted(live)
        match = compile_pattern(pattern).match
        return sorted(k for k in live if match(k))

    async def size(self) -> int:
        """How many live keys the replica knows."""
        return sum(1 for _ in self._replica.live_keys(self._clock()))

    async def snapshot(self) -> bytes:
        """The replica as snapshot bytes."""
        return encode_snapshot(self._replica, self._clock())

    async def restore(self, data: bytes) -> list[Change]:
        """Merge snapshot bytes into the replica (a CRDT merge)."""
        return restore_snapshot(
            self._replica, data, self._clock(), max_value_bytes=self._max_value_bytes
        )

    # ------------------------------------------------------ conditional writes
    async def add(self, key: str, stored: object, expires: float | None) -> bool:
        """Write ``key`` if it has no live value in this replica; whether it wrote.

        Atomic among this node's callers (decided without waiting). Not across nodes:
        two nodes adding one key at once both write, both callers are told True, and
        last-writer-wins keeps one of the values everywhere.
        """
        return self.engine.add(key, stored, self._clock(), expires) is not None

    async def incr(
        self, key: str, delta: int, expires: float | None, as_int: Callable[[object], int]
    ) -> int | None:
        """Add ``delta`` to the counter of ``key`` (a PN-counter); its new value.

        None (nothing changed) when this node holds only the key's stamp: the caller
        fills the value first. ``expires`` applies only to a counter this starts.
        """
        entry = self.engine.incr(key, delta, self._clock(), expires, as_int)
        if entry is None:
            return None
        value: int = decode_value(entry.value)
        return value

    async def touch(self, key: str, expires: float | None) -> bool:
        """Give ``key``'s live value a new expiry (None: none); False if it has none."""
        return self.engine.touch(key, self._clock(), expires) is not None
