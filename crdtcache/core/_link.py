"""Links between nodes as sans-IO state machines: one session per link, one mesh per node.

Theory of operation
-------------------
A :class:`LinkSession` is one link to one peer, from the first hello to the goodbye,
with no IO (h11's shape): the driver hands it each message read from the stream and
gets back :data:`LinkEvent` values to act on; the messages it must send come back as
return values. The driver also passes in what only it can see (the node ids the peer's
TLS certificate names). States::

    HELLO --(peer's hello passes the checks)--> OPEN --(bye, or the driver closes)--> CLOSED

The checks on a hello, in order: same protocol version, same cluster, not this node
(a self-dial is :class:`SelfDial`, not an attack), and with TLS a node id the
certificate names (else :class:`IdentityError`). In the plain handshake the dialer
speaks first and the acceptor answers only a hello that passed. Anything wrong from
the peer raises :class:`ProtocolError`; calling a method in the wrong state is a local
bug and raises ``RuntimeError``.

*Refusals.* A hello that fails the version, cluster or certificate check leaves a
:class:`Refuse` in :attr:`LinkSession.refusal` for the driver to send before it closes
the stream, so that the refused node (a misconfigured peer, or ``crdtcache get``) can
say why at once instead of guessing from a closed stream. It carries a code only
(:data:`REFUSE_CLUSTER`...), never this node's cluster name or id, and it exists only
where the peer's hello was checked: with a cluster secret, the hello is revealed and
checked only after the peer proved the secret, so a party without it learns nothing
but the fact that the stream closed. A refusal received becomes :class:`LinkRefused`.
It is a hint, as a closed stream is: whoever can cut the stream could forge one, and
either way the link is refused with one log line.

Once open, a message is routed: a :data:`Message` to the engine (:class:`Gossip`), a
:class:`Bye` ends the link (:class:`Left`), admin requests and replies are correlated
by request id (a reply nobody asked for is dropped; requests still pending when the
link closes are returned by :meth:`LinkSession.close` so their askers fail at once).
A client (``port`` 0) follows no gossip: it gets no gossip, no peer list, no dial-back,
and what gossip or peer lists it sends are ignored (it never becomes a member).

The :class:`Mesh` is the node's set of open links, one per peer:

* *One link per pair.* When both nodes dial at once, both keep the link dialled by the
  smaller node id; a hello with a new incarnation replaces the stale link of a peer
  that restarted (:meth:`Mesh.register`).
* *Peer lists.* A new member is told whom we are linked to, and every other link is
  told about the new member, so one seed is enough for a full mesh; a received list
  becomes :class:`Dial` events for the peers we have no link to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from crdtcache._errors import ProtocolError
from crdtcache.core._messages import (
    PROTOCOL_VERSION,
    Ack,
    AdminReply,
    AdminRequest,
    Bye,
    Fetch,
    FetchReply,
    Hello,
    Message,
    PeerList,
    Ping,
    Push,
    Refuse,
    SyncRequest,
    SyncResponse,
)

__all__ = [
    "CLOSED",
    "HELLO",
    "OPEN",
    "REFUSALS",
    "REFUSE_CLUSTER",
    "REFUSE_IDENTITY",
    "REFUSE_VERSION",
    "AdminAnswered",
    "AdminAsked",
    "Announce",
    "Dial",
    "Gossip",
    "Identity",
    "IdentityError",
    "Left",
    "LinkEvent",
    "LinkRefused",
    "LinkSession",
    "Mesh",
    "SelfDial",
]

HELLO: Final = "hello"
OPEN: Final = "open"
CLOSED: Final = "closed"

_GOSSIP: Final = (Push, Ack, SyncRequest, SyncResponse, Ping, Fetch, FetchReply)
#: Peers of one peer list looked at (the dialer has its own, smaller, caps).
MAX_OFFERED: Final = 256

#: Why a hello was refused, as a :class:`Refuse` tells its sender (codes, never names).
REFUSE_VERSION: Final = "version"
REFUSE_CLUSTER: Final = "cluster"
REFUSE_IDENTITY: Final = "identity"
#: How each refusal reads on the refused side.
REFUSALS: Final = {
    REFUSE_VERSION: "it speaks another protocol version",
    REFUSE_CLUSTER: "it is in another cluster",
    REFUSE_IDENTITY: "the node id in this node's hello is not one its certificate names",
}


class IdentityError(ProtocolError):
    """The peer could not prove who it is (its certificate, or a cluster secret)."""


class LinkRefused(ProtocolError):
    """The peer checked this node's hello and refused it; ``reason`` is its code.

    One of the ``REFUSE_*`` codes, or whatever short code a newer peer sent.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        why = REFUSALS.get(reason, f"reason {reason!r}")
        super().__init__(f"the peer refused this node's hello: {why}")


class SelfDial(Exception):
    """The hello came from this very node: the address dialled is our own."""


@dataclass(frozen=True, slots=True)
class Identity:
    """What this node says of itself in its hello."""

    node: str
    cluster: str
    port: int
    incarnation: int

    @property
    def client(self) -> bool:
        """A client listens nowhere: it only asks for cache operations."""
        return self.port == 0

    def hello(self) -> Hello:
        """This node's hello."""
        return Hello(PROTOCOL_VERSION, self.cluster, self.node, self.port, self.incarnation)


@dataclass(frozen=True, slots=True)
class Gossip:
    """A gossip message for the engine."""

    message: Message


@dataclass(frozen=True, slots=True)
class Left:
    """The peer said goodbye: it left on purpose (forget it, do not suspect it)."""


@dataclass(frozen=True, slots=True)
class AdminAsked:
    """The peer asks this node to run a cache operation; answer with :meth:`LinkSession.answer`."""

    request: AdminRequest


@dataclass(frozen=True, slots=True)
class AdminAnswered:
    """The peer answered one of our admin requests."""

    reply: AdminReply


@dataclass(frozen=True, slots=True)
class Dial:
    """A peer we have no link to, named in a peer list or a hello: dial it."""

    node: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class _Offered:
    peers: tuple[tuple[str, str, int], ...]


LinkEvent = Gossip | Left | AdminAsked | AdminAnswered | Dial


class LinkSession:
    """One link to one peer (see the module doc). ``remote_host`` is the peer's address."""

    def __init__(self, local: Identity, *, dialed: bool, remote_host: str) -> None:
        self.local = local
        self.dialed = dialed
        self.remote_host = remote_host
        self.state: str = HELLO
        #: Known once the link is open: the peer's id, listening port and incarnation.
        self.peer: str | None = None
        self.peer_port = 0
        self.incarnation = 0
        #: Set when this node refused the peer's hello: what to send it before closing.
        self.refusal: Refuse | None = None
        self._admin_seq = 0
        self._asked: set[int] = set()

    def __repr__(self) -> str:
        return f"LinkSession({self.peer or '?'} at {self.remote_host}, {self.state})"

    @property
    def member(self) -> bool:
        """Whether the link carries gossip (neither side is a client)."""
        return self.state == OPEN and not self.local.client and self.peer_port != 0

    # ------------------------------------------------------------- opening
    def opening(self) -> list[Hello]:
        """What to send first in the plain handshake: the dialer's hello (nothing else)."""
        self._expect(HELLO, "opening")
        return [self.local.hello()] if self.dialed else []

    def receive_hello(
        self, message: object, certificate_names: frozenset[str] | None
    ) -> list[Hello]:
        """The plain handshake: take the peer's first message; return the reply to send.

        Raises :class:`ProtocolError` (or :class:`SelfDial`) if it is not an acceptable
        hello; opens the link otherwise.
        """
        self._expect(HELLO, "receive_hello")
        if isinstance(message, Refuse):
            raise LinkRefused(message.reason)
        if not isinstance(message, Hello):
            raise ProtocolError(f"expected a hello, got {type(message).__name__}")
        self.accept_hello(message, certificate_names)
        return [] if self.dialed else [self.local.hello()]

    def accept_hello(self, hello: Hello, certificate_names: frozenset[str] | None) -> None:
        """Check the peer's ``hello`` (proven by another handshake) and open the link.

        ``certificate_names`` are the node ids the peer's TLS certificate names, or None
        without TLS. Raises :class:`ProtocolError`, :class:`IdentityError` or
        :class:`SelfDial`; the link stays unopened then, and a failed check leaves the
        :class:`Refuse` to send in :attr:`refusal`.
        """
        self._expect(HELLO, "accept_hello")
        if hello.version != PROTOCOL_VERSION:
            self.refusal = Refuse(REFUSE_VERSION)
            raise ProtocolError(
                f"protocol version {hello.version}, this node speaks {PROTOCOL_VERSION}"
            )
        if hello.cluster != self.local.cluster:
            self.refusal = Refuse(REFUSE_CLUSTER)
            raise ProtocolError(
                f"cluster {hello.cluster!r}, this node is in {self.local.cluster!r}"
            )
        if hello.node == self.local.node:
            raise SelfDial()
        if certificate_names is not None and hello.node not in certificate_names:
            self.refusal = Refuse(REFUSE_IDENTITY)
            names = ", ".join(sorted(certificate_names)) or "no crdtcache node id"
            raise IdentityError(
                f"the hello says node {hello.node!r} but the peer's certificate names {names}"
            )
        self.peer, self.peer_port, self.incarnation = hello.node, hello.port, hello.incarnation
        self.state = OPEN

    # ---------------------------------------------------------------- open
    def receive(self, message: object) -> list[LinkEvent | _Offered]:
        """Route one message of an open link; raises :class:`ProtocolError` for junk."""
        self._expect(OPEN, "receive")
        if isinstance(message, Bye):
            self.state = CLOSED
            return [Left()]
        if isinstance(message, Refuse):  # the dialer refused our hello after we opened
            self.state = CLOSED
            raise LinkRefused(message.reason)
        if isinstance(message, AdminRequest):
            return [AdminAsked(message)]
        if isinstance(message, AdminReply):
            if message.request not in self._asked:
                return []  # late (we gave up) or never asked: nothing waits for it
            self._asked.discard(message.request)
            return [AdminAnswered(message)]
        if isinstance(message, (PeerList, *_GOSSIP)):
            if not self.member:
                # A client follows no gossip, and a client peer's gossip and peer lists
                # are not taken: it listens nowhere, so it is no member (and must not
                # make this node dial anywhere).
                return []
            if isinstance(message, PeerList):
                return [_Offered(message.peers[:MAX_OFFERED])]
            return [Gossip(message)]
        raise ProtocolError(f"a {type(message).__name__} after the handshake")

    def ask(self, op: str, args: tuple[Any, ...]) -> AdminRequest:
        """An admin request to send; its reply comes back as :class:`AdminAnswered`."""
        self._expect(OPEN, "ask")
        self._admin_seq += 1
        self._asked.add(self._admin_seq)
        return AdminRequest(self._admin_seq, op, args)

    def forget(self, request: int) -> None:
        """Stop waiting for the reply to ``request`` (the asker gave up)."""
        self._asked.discard(request)

    @staticmethod
    def answer(request: AdminRequest, ok: bool, result: Any) -> AdminReply:
        """The reply to ``request``."""
        return AdminReply(request.request, ok, result)

    def close(self) -> list[int]:
        """The link is gone; returns the admin requests that will never be answered."""
        self.state = CLOSED
        pending = sorted(self._asked)
        self._asked.clear()
        return pending

    def _expect(self, state: str, what: str) -> None:
        if self.state != state:
            raise RuntimeError(f"LinkSession.{what}() called in state {self.state!r}")


@dataclass(frozen=True, slots=True)
class Announce:
    """Send ``message`` (a peer list) on ``link``."""

    link: LinkSession
    message: PeerList


class Mesh:
    """The open links of one node, one per peer (see the module doc)."""

    def __init__(self, local: Identity) -> None:
        self.local = local
        self.links: dict[str, LinkSession] = {}

    def session(self, *, dialed: bool, remote_host: str) -> LinkSession:
        """A new link session for a stream just dialled or accepted."""
        return LinkSession(self.local, dialed=dialed, remote_host=remote_host)

    def register(self, link: LinkSession) -> tuple[bool, LinkSession | None]:
        """Decide whether the newly opened ``link`` becomes the one link to its peer.

        Returns (kept, replaced): ``kept`` False means close the new link (a duplicate
        that lost); ``replaced`` is the older link to close, if the new one won.
        """
        if link.state != OPEN or link.peer is None:
            raise RuntimeError("only an open link can be registered")
        existing = self.links.get(link.peer)
        if existing is not None and existing.state == CLOSED:
            existing = None
        if existing is not None and existing.incarnation == link.incarnation:
            dialer_new = self.local.node if link.dialed else link.peer
            dialer_old = self.local.node if existing.dialed else link.peer
            if dialer_new == dialer_old or dialer_old < dialer_new:
                return False, None
        self.links[link.peer] = link
        return True, existing

    def remove(self, link: LinkSession) -> bool:
        """Forget ``link``; True if it was its peer's current link (the peer is lost)."""
        if link.peer is not None and self.links.get(link.peer) is link:
            del self.links[link.peer]
            return True
        return False

    def joined(self, link: LinkSession) -> tuple[list[Announce], list[Dial]]:
        """A member link was registered: what to announce to whom, and whom to dial back.

        The new peer learns every member we are linked to; every other link learns of
        the new peer; and a peer that dialled us is dialled back should the link drop.
        """
        if not link.member or link.peer is None:
            return [], []
        known = tuple(
            (peer, other.remote_host, other.peer_port)
            for peer, other in self.links.items()
            if other.peer_port and peer != link.peer
        )
        out = [Announce(link, PeerList(known))] if known else []
        about_new = PeerList(((link.peer, link.remote_host, link.peer_port),))
        out += [Announce(other, about_new) for other in self.links.values() if other is not link]
        return out, [Dial(link.peer, link.remote_host, link.peer_port)]

    def receive(self, link: LinkSession, message: object) -> list[LinkEvent]:
        """Route one message of an open ``link``; a peer list becomes dials."""
        events: list[LinkEvent] = []
        for event in link.receive(message):
            if isinstance(event, _Offered):
                events += [
                    Dial(node, host, port)
                    for node, host, port in event.peers
                    if node != self.local.node and node not in self.links
                ]
            else:
                events.append(event)
        return events

    def defers_to(self, node: str | None) -> bool:
        """Whether to let ``node`` dial first when both know each other.

        The node with the greater id dials at once and the other waits a little, so
        that two nodes that learn of each other together rarely open two links.
        """
        return node is not None and node > self.local.node
