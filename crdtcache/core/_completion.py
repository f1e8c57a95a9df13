"""Write-through acks and fetches in flight, and the events that say they are done.

Theory of operation
-------------------
A driver that waits for something the engine asked of peers (every peer to apply a
push, some peer to answer a fetch) must not poll: the engine *tells* it. A wait is a
set of peers (and, for a fetch, of keys still missing); it shrinks when a peer answers
and when a peer is lost (nobody waits for a peer that cannot answer). When it is empty
the wait ends with one :class:`AckDone` or :class:`FetchDone`, which the engine queues
for the driver's ``drain_completions``, and is forgotten. A driver that gives up first
calls ``forget_*``; a wait that never ends holds a few ids, no more.

Like aioquic's ping waiters: the asyncio side keeps futures by id and resolves them from
these events, never by scanning.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["AckDone", "Completion", "FetchDone", "Waits"]


@dataclass(frozen=True, slots=True)
class AckDone:
    """Write-through push ``ack`` is done: every awaited peer acknowledged it or was lost.

    Peers still missing when the driver gives up are in ``GossipEngine.unacked``.
    """

    ack: int


@dataclass(frozen=True, slots=True)
class FetchDone:
    """Fetch ``request`` is done: every asked key arrived, or every asked peer answered
    or was lost (a key no peer held stays missing)."""

    request: int


#: What ``GossipEngine.drain_completions`` returns: a driver resolves its waiters.
Completion = AckDone | FetchDone


@dataclass(slots=True)
class _Fetching:
    peers: set[str]
    keys: frozenset[str]


class Waits:
    """Acks and fetches in flight; each method returns the waits it finished."""

    __slots__ = ("_acks", "_fetches", "_seq")

    def __init__(self) -> None:
        self._seq = 0
        self._acks: dict[int, set[str]] = {}
        self._fetches: dict[int, _Fetching] = {}

    # ------------------------------------------------------------- acks
    def expect_acks(self, peers: Iterable[str]) -> int:
        """Start waiting for ``peers`` (at least one) to ack; returns the ack id."""
        self._seq += 1
        self._acks[self._seq] = set(peers)
        return self._seq

    def acked(self, ack_id: int, peer: str) -> AckDone | None:
        """``peer`` acked ``ack_id`` (a stray or repeated ack is ignored)."""
        waiting = self._acks.get(ack_id)
        if waiting is None:
            return None
        waiting.discard(peer)
        if waiting:
            return None
        del self._acks[ack_id]
        return AckDone(ack_id)

    def unacked(self, ack_id: int) -> frozenset[str]:
        """Peers that have not yet acked ``ack_id`` (empty when done or unknown)."""
        return frozenset(self._acks.get(ack_id, ()))

    def forget_ack(self, ack_id: int) -> None:
        """Stop waiting for ``ack_id``."""
        self._acks.pop(ack_id, None)

    # ----------------------------------------------------------- fetches
    def expect_fetch(self, peers: Iterable[str], keys: Iterable[str]) -> int:
        """Start waiting for ``peers`` (at least one) to answer a fetch of ``keys``."""
        self._seq += 1
        self._fetches[self._seq] = _Fetching(set(peers), frozenset(keys))
        return self._seq

    def fetch_keys(self, request: int) -> frozenset[str]:
        """Keys fetch ``request`` still waits for (empty when done or unknown)."""
        fetching = self._fetches.get(request)
        return frozenset() if fetching is None else fetching.keys

    def answered(self, request: int, peer: str, missing: Iterable[str]) -> FetchDone | None:
        """``peer`` answered fetch ``request``; ``missing`` are the keys still wanted."""
        fetching = self._fetches.get(request)
        if fetching is None:
            return None
        fetching.peers.discard(peer)
        fetching.keys = frozenset(missing)
        if fetching.peers and fetching.keys:
            return None
        del self._fetches[request]
        return FetchDone(request)

    def forget_fetch(self, request: int) -> None:
        """Stop waiting for fetch ``request``."""
        self._fetches.pop(request, None)

    # ------------------------------------------------------------ common
    def peer_lost(self, peer: str) -> list[Completion]:
        """``peer`` cannot answer: no wait waits for it any more."""
        done: list[Completion | None] = [
            self.acked(ack_id, peer) for ack_id, w in list(self._acks.items()) if peer in w
        ]
        done += [
            self.answered(request, peer, f.keys)
            for request, f in list(self._fetches.items())
            if peer in f.peers
        ]
        return [d for d in done if d is not None]
