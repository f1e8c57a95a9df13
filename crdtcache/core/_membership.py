"""Who the peers are and whether they are alive: a peer table driven by one transition table.

Theory of operation
-------------------
Every peer is in one of three states, and only four signals move it:

=========  ===========  ==========  ============  ===============
state      ``HEARD``    ``LOST``    ``QUIET``     ``SILENT``
=========  ===========  ==========  ============  ===============
alive      alive        suspect     suspect       (stays)
suspect    alive        (stays)     (stays)       dead
dead       alive        (stays)     (stays)       (stays)
=========  ===========  ==========  ============  ===============

``HEARD``: a message arrived or the driver opened a link (any sign of life).
``LOST``: the driver lost its link (suspect at once rather than wait for silence).
``QUIET``: silent for ``suspect_after`` seconds; ``SILENT``: for ``dead_after``.

The table is :data:`TRANSITIONS`; nothing else changes a state. Each change is returned
as a :class:`PeerEvent` for the engine to queue, so the caller sees every transition.
A peer that is *unlinked* (the driver reports no link) stays in the table, gets no
pushes and is not awaited by write-through, until it is heard again.

*Bounded.* Anyone who can open a link can announce a new node id, so the table is
capped (``limit``): a newcomer takes the place of the peer dead the longest, and is
refused when none is dead. A peer dead for ``forget_after`` seconds is forgotten
(:meth:`Membership.forget_dead`); if it comes back it is added again.

No IO: time is passed in, like everywhere in :mod:`crdtcache.core`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ALIVE",
    "DEAD",
    "HEARD",
    "MAX_MEMBERS",
    "LOST",
    "QUIET",
    "SILENT",
    "SUSPECT",
    "TRANSITIONS",
    "Membership",
    "PeerEvent",
    "PeerInfo",
]

ALIVE: Final = "alive"
SUSPECT: Final = "suspect"
DEAD: Final = "dead"

HEARD: Final = "heard"
LOST: Final = "lost"
QUIET: Final = "quiet"
SILENT: Final = "silent"

#: (state, signal) -> next state; a pair missing here leaves the state as it is.
TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    (SUSPECT, HEARD): ALIVE,
    (DEAD, HEARD): ALIVE,
    (ALIVE, LOST): SUSPECT,
    (ALIVE, QUIET): SUSPECT,
    (SUSPECT, SILENT): DEAD,
}

#: A dead peer is pinged this many times less often than a live one.
DEAD_PING_FACTOR: Final = 4
#: Peers a node keeps track of at most (alive, suspect or dead).
MAX_MEMBERS: Final = 1024


@dataclass(frozen=True, slots=True)
class PeerEvent:
    """A peer changed state (``alive``, ``suspect`` or ``dead``)."""

    peer: str
    state: str
    previous: str | None


@dataclass(slots=True)
class PeerInfo:
    """What the engine knows of one peer."""

    id: str
    state: str = ALIVE
    last_heard: float = 0.0
    last_sent: float = 0.0
    #: Exchange id of our anti-entropy request in flight to this peer, if any.
    pulling: int | None = None
    #: When that request was sent or last answered in part (to expire a lost one).
    pull_activity: float = 0.0
    #: False while the driver reports no link to the peer: it gets no pushes.
    linked: bool = True


class Membership:
    """The peer table of one node; every state change goes through :data:`TRANSITIONS`."""

    __slots__ = ("limit", "node", "peers")

    def __init__(self, node: str, limit: int = MAX_MEMBERS) -> None:
        if limit < 1:
            raise ValueError("a membership needs room for at least one peer")
        self.node = node
        self.limit = limit
        self.peers: dict[str, PeerInfo] = {}

    def __contains__(self, peer: object) -> bool:
        return peer in self.peers

    def __iter__(self) -> Iterator[PeerInfo]:
        return iter(self.peers.values())

    def get(self, peer: str) -> PeerInfo | None:
        """The peer's record, or None if unknown."""
        return self.peers.get(peer)

    def add(self, peer: str, now: float) -> PeerEvent | None:
        """Start tracking ``peer`` as alive; None if it was known already, or refused.

        A full table makes room by forgetting the peer dead the longest; with none
        dead, ``peer`` is refused (check with ``in``). Raises ``ValueError`` for this
        node's own id.
        """
        if peer == self.node:
            raise ValueError("a node is not its own peer")
        if peer in self.peers:
            return None
        if len(self.peers) >= self.limit:
            dead = [p for p in self.peers.values() if p.state == DEAD]
            if not dead:
                return None
            del self.peers[min(dead, key=lambda p: p.last_heard).id]
        self.peers[peer] = PeerInfo(peer, ALIVE, last_heard=now, last_sent=now)
        return PeerEvent(peer, ALIVE, None)

    def forget_dead(self, now: float, forget_after: float) -> list[str]:
        """Forget the peers dead and silent for more than ``forget_after``; their ids."""
        gone = [
            p.id
            for p in self.peers.values()
            if p.state == DEAD and now - p.last_heard > forget_after
        ]
        for peer in gone:
            del self.peers[peer]
        return gone

    def remove(self, peer: str) -> PeerEvent | None:
        """Forget ``peer`` (it left for good); its last event says ``dead``."""
        info = self.peers.pop(peer, None)
        return None if info is None else PeerEvent(peer, DEAD, info.state)

    def signal(self, info: PeerInfo, signal: str) -> PeerEvent | None:
        """Apply one signal to one peer through the table; the event if its state moved."""
        state = TRANSITIONS.get((info.state, signal))
        if state is None:
            return None
        previous, info.state = info.state, state
        return PeerEvent(info.id, state, previous)

    def heard(self, info: PeerInfo, now: float) -> PeerEvent | None:
        """A sign of life: linked again, and alive (the event if it was not)."""
        info.last_heard = now
        info.linked = True
        return self.signal(info, HEARD)

    def unlinked(self, info: PeerInfo) -> PeerEvent | None:
        """The driver lost its link to the peer: unlinked, and suspect if it was alive."""
        info.linked = False
        return self.signal(info, LOST)

    def check(self, now: float, suspect_after: float, dead_after: float) -> list[PeerEvent]:
        """Apply the silence signals to every peer; return the state changes."""
        events: list[PeerEvent] = []
        for info in self.peers.values():
            silent = now - info.last_heard
            for threshold, signal in ((suspect_after, QUIET), (dead_after, SILENT)):
                if silent > threshold and (event := self.signal(info, signal)) is not None:
                    events.append(event)
        return events

    def due_pings(self, now: float, heartbeat: float) -> list[str]:
        """Peers we have sent nothing for a heartbeat interval (dead ones: longer).

        Marks them as sent to now: the caller sends each a ping.
        """
        due: list[str] = []
        for info in self.peers.values():
            interval = heartbeat * (DEAD_PING_FACTOR if info.state == DEAD else 1)
            if now - info.last_sent >= interval:
                info.last_sent = now
                due.append(info.id)
        return due

    def live(self) -> list[str]:
        """Ids of peers not dead and not known to be unreachable."""
        return [p.id for p in self.peers.values() if p.state != DEAD and p.linked]
