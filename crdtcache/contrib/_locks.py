"""Per-key asyncio locks: read-modify-write calls of one key, one at a time on this node."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["KeyLocks"]


class KeyLocks:
    """One lock per key, held only while some caller holds or awaits it.

    The framework calls crdtcache has no single operation for (compare-and-set, bit
    fields, sets, sliding windows) read a value, compute and write it back; under the
    key's lock no other caller of this node interleaves. Other nodes may (documented
    by each backend): crdtcache has no cross-node locks.
    """

    def __init__(self) -> None:
        self._held: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def __call__(self, key: str) -> AsyncIterator[None]:
        """Hold ``key``'s lock for the ``async with`` block."""
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = (asyncio.Lock(), [0])
        lock, users = held
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._held[key]
