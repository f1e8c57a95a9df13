"""The messages peers exchange: gossip between engines, and the link's own messages.

Frozen and slotted; the wire codec (:mod:`crdtcache.wire._codec`) encodes them and
validates every field of a decoded one. Gossip messages (:data:`Message`) go to the
:class:`~crdtcache.core.GossipEngine`; link messages (:data:`LinkMessage`: hello, bye,
peer list, admin request and reply, refusal) to the link session of
:mod:`crdtcache.core._link`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from crdtcache.core._entry import Entry, PatternTombstone

__all__ = [
    "PROTOCOL_VERSION",
    "Ack",
    "AdminReply",
    "AdminRequest",
    "Bye",
    "Fetch",
    "FetchReply",
    "Hello",
    "LinkMessage",
    "Message",
    "Outgoing",
    "PeerList",
    "Ping",
    "Push",
    "Refuse",
    "SyncRequest",
    "SyncResponse",
]

#: Version of the gossip message set; peers (hello) and mDNS announcements carry it.
#: 2: packed values may hold the extension types of ``core._packing`` (tuple, set,
#: datetime, UUID, Decimal, big int...), which a version-1 node refuses as junk.
#: 3: records of kind ``AMENDED`` (touched values and counters, ``core._format``),
#: which a version-2 node refuses as junk.
PROTOCOL_VERSION: Final = 3

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


@dataclass(frozen=True, slots=True)
class Hello:
    """The first message each side of a link sends: who it is and what it speaks.

    ``incarnation`` changes every time a node starts, so a peer can tell a restarted
    node's new link from a stale one. ``port`` is where the node listens (0: a client,
    which is not dialled back or announced).
    """

    version: int
    cluster: str
    node: str
    port: int
    incarnation: int


@dataclass(frozen=True, slots=True)
class Bye:
    """A clean goodbye: the sender is shutting down, not failing."""


@dataclass(frozen=True, slots=True)
class PeerList:
    """Peers the sender is linked to, ``(node id, host, port)``: a full mesh forms
    from a single seed. Addresses are hints; each still has to pass the handshake."""

    peers: tuple[tuple[str, str, int], ...]


@dataclass(frozen=True, slots=True)
class AdminRequest:
    """A client (``crdtcache get/set/stats``) asks a node to run one cache operation.

    Only peers that passed the handshake (and so the secret or TLS, when set) can ask.
    """

    request: int
    op: str
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class AdminReply:
    """The answer to :class:`AdminRequest`: the result, or the error text if not ``ok``."""

    request: int
    ok: bool
    result: Any


@dataclass(frozen=True, slots=True)
class Refuse:
    """Why the sender refused the receiver's hello: a short code, never a name.

    Sent only once the receiver's hello was checked, which with a cluster secret means
    after the receiver proved the secret (see :mod:`crdtcache.core._link`).
    """

    reason: str


LinkMessage = Hello | Bye | PeerList | AdminRequest | AdminReply | Refuse


class Outgoing(NamedTuple):
    """A message for the driver to deliver to ``peer``."""

    peer: str
    message: Message
