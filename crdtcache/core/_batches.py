"""Deltas cut into messages, and the epidemic relay queue.

Theory of operation
-------------------
A push or a sync answer may hold more than one message can carry: :func:`chunk` cuts
it in *stamp order* into chunks under both limits (entries and an estimate of bytes),
so that the stream claims of consecutive pushes chain (each chunk's range starts where
the previous one ended).

In epidemic mode (``fanout`` set) each new item is relayed on a few later flushes, to a
fresh random sample of peers each time: :class:`RelayQueue` holds each item with the
number of sends it has left, and hands out the items of one flush with :meth:`take
<RelayQueue.take>`. A newer item for the same key replaces the older one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from crdtcache.core._entry import Entry, PatternTombstone
from crdtcache.core._values import stored_size

__all__ = ["ENTRY_OVERHEAD", "Chunk", "RelayQueue", "chunk", "retransmits_for"]

#: Per-entry overhead assumed when budgeting a message, on top of key and value.
ENTRY_OVERHEAD: Final = 40

Chunk = tuple[list[tuple[str, Entry]], list[PatternTombstone]]


def chunk(
    entries: Sequence[tuple[str, Entry]],
    patterns: Sequence[PatternTombstone],
    max_entries: int,
    max_bytes: int,
) -> list[Chunk]:
    """Split into message-sized chunks in stamp order, so that stream claims chain.

    Always returns at least one chunk (perhaps empty).
    """
    items: list[tuple[int, str, Entry | PatternTombstone]] = [(e.ts, k, e) for k, e in entries]
    if patterns:
        items += [(p.ts, p.pattern, p) for p in patterns]
        items.sort(key=lambda item: item[0])
    chunks: list[Chunk] = [([], [])]
    count = size = 0
    for _, key, item in items:
        cost = len(key) + ENTRY_OVERHEAD
        if isinstance(item, Entry):
            cost += stored_size(item.value)
        if count and (count >= max_entries or size + cost > max_bytes):
            chunks.append(([], []))
            count = size = 0
        if isinstance(item, Entry):
            chunks[-1][0].append((key, item))
        else:
            chunks[-1][1].append(item)
        count += 1
        size += cost
    return chunks


def retransmits_for(peers: int) -> int:
    """Flushes that relay each new item in a cluster of ``peers`` peers.

    Each node relays an item to ``fanout`` peers on this many flushes: the share of
    nodes an "infect once" epidemic misses (about e^-fanout) drops to about
    e^-(fanout * retransmits), while rounds stay logarithmic in N.
    """
    return max(1, math.ceil(math.log2(peers + 1) / 2))


class RelayQueue:
    """Items waiting to be relayed, each with the number of sends it has left."""

    __slots__ = ("_entries", "_patterns")

    def __init__(self) -> None:
        self._entries: dict[str, tuple[Entry, int]] = {}
        self._patterns: dict[str, tuple[PatternTombstone, int]] = {}

    def __bool__(self) -> bool:
        return bool(self._entries or self._patterns)

    def queue(
        self,
        entries: Sequence[tuple[str, Entry]],
        patterns: Sequence[PatternTombstone],
        sends: int,
    ) -> None:
        """Relay these items on the next ``sends`` flushes (nothing if ``sends <= 0``)."""
        if sends <= 0:
            return
        for key, entry in entries:
            self._entries[key] = (entry, sends)
        for tomb in patterns:
            self._patterns[tomb.pattern] = (tomb, sends)

    def take(self) -> tuple[list[tuple[str, Entry]], list[PatternTombstone]]:
        """The items to relay on this flush; each has one send less afterwards."""
        entries = [(k, e) for k, (e, _) in self._entries.items()]
        patterns = [t for t, _ in self._patterns.values()]
        self._entries = {k: (e, n - 1) for k, (e, n) in self._entries.items() if n > 1}
        self._patterns = {p: (t, n - 1) for p, (t, n) in self._patterns.items() if n > 1}
        return entries, patterns
