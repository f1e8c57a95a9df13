"""The cluster's key space answered from this node's replica (memory and p2p runtimes).

In p2p mode every node's replica holds every key's stamp (values may be stubs), so the
replica alone answers ``keys``, ``size``, ``snapshot`` and ``restore``; the redis
runtime answers the same questions from Redis instead.
"""

from __future__ import annotations

from collections.abc import Callable

from crdtcache.core import DEFAULT_MAX_VALUE_BYTES, Change, Replica
from crdtcache.core._entry import compile_pattern
from crdtcache.store._snapshot import encode_snapshot, restore_snapshot

__all__ = ["ReplicaKeySpace"]


class ReplicaKeySpace:
    """Answers the runtime's key-space questions from ``replica`` (see module doc)."""

    #: A key with no entry here is absent cluster-wide (modulo replication lag).
    answers_misses = False

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
