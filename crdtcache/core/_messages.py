"""The messages gossip engines exchange. Frozen, slotted, validated by the codec."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from crdtcache.core._entry import Entry, PatternTombstone

__all__ = [
    "PROTOCOL_VERSION",
    "Ack",
    "Fetch",
    "FetchReply",
    "Message",
    "Ping",
    "Push",
    "SyncRequest",
    "SyncResponse",
]

#: Version of the gossip message set; peers (hello) and mDNS announcements carry it.
#: 2: packed values may hold the extension types of ``core._packing`` (tuple, set,
#: datetime, UUID, Decimal, big int...), which a version-1 node refuses as junk.
PROTOCOL_VERSION: Final = 2

Entries = tuple[tuple[str, Entry], ...]
Patterns = tuple[PatternTombstone, ...]


@dataclass(frozen=True, slots=True)
class Push:
    """A batch of deltas.

    When ``origin`` is set, the batch is that node's own stream to this peer and
    holds all of its writes stamped in ``(since, upto]``: a receiver whose mark for
    ``origin`` is at least ``since`` may raise it to ``upto``. ``hops`` counts relays.
    A non-zero ``ack`` asks the receiver to answer :class:`Ack` once applied.
    """

    entries: Entries
    patterns: Patterns = ()
    origin: str | None = None
    since: int = -1
    upto: int = -1
    hops: int = 0
    ack: int = 0


@dataclass(frozen=True, slots=True)
class Ack:
    """The receiver applied the :class:`Push` numbered ``ack`` (write-through)."""

    ack: int


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """Anti-entropy: "send me what you have above these marks"."""

    exchange: int
    marks: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SyncResponse:
    """One part of the answer to a :class:`SyncRequest`.

    ``marks`` are the sender's marks when it built the answer; the receiver adopts
    them only when every part arrived and every entry merged. ``full`` means the
    whole state is sent (the receiver's marks were below a collected tombstone).
    """

    exchange: int
    part: int
    parts: int
    entries: Entries
    patterns: Patterns
    marks: Mapping[str, int]
    full: bool = False


@dataclass(frozen=True, slots=True)
class Ping:
    """A heartbeat: any message proves the sender alive; this one exists for quiet links."""

    seq: int


@dataclass(frozen=True, slots=True)
class Fetch:
    """Ask a peer for the values of keys this node knows but does not hold."""

    request: int
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FetchReply:
    """The entries a peer holds for a :class:`Fetch` (missing keys are left out)."""

    request: int
    entries: Entries


Message = Push | Ack | SyncRequest | SyncResponse | Ping | Fetch | FetchReply
