"""Link sessions and the mesh, sans-IO: pairs of sessions joined by a fake link (h11-style)."""

from __future__ import annotations

import pytest

from crdtcache import ProtocolError
from crdtcache.core import PROTOCOL_VERSION, Ping, Push
from crdtcache.core._link import (
    CLOSED,
    HELLO,
    OPEN,
    AdminAnswered,
    AdminAsked,
    Announce,
    Dial,
    Gossip,
    Identity,
    IdentityError,
    Left,
    LinkRefused,
    LinkSession,
    Mesh,
    SelfDial,
)
from crdtcache.core._messages import AdminReply, Bye, Hello, PeerList, Refuse


def ident(node: str, port: int = 7000, incarnation: int = 1, cluster: str = "c") -> Identity:
    return Identity(node, cluster, port, incarnation)


def handshake(
    dialer: LinkSession,
    acceptor: LinkSession,
    names: tuple[frozenset[str] | None, frozenset[str] | None] = (None, None),
) -> None:
    """Carry the plain handshake across a fake link: the dialer first, then the reply."""
    (hello,) = dialer.opening()
    assert acceptor.opening() == []
    (reply,) = acceptor.receive_hello(hello, names[1])
    assert dialer.receive_hello(reply, names[0]) == []


def pair(a: str = "a", b: str = "b") -> tuple[LinkSession, LinkSession]:
    """Open sessions of ``a`` (which dialled) and ``b`` to each other."""
    dialer = LinkSession(ident(a, 7001), dialed=True, remote_host="10.0.0.2")
    acceptor = LinkSession(ident(b, 7002), dialed=False, remote_host="10.0.0.1")
    handshake(dialer, acceptor)
    return dialer, acceptor


# ------------------------------------------------------------------ opening
def test_the_plain_handshake_opens_both_sides() -> None:
    dialer, acceptor = pair()
    assert dialer.state == acceptor.state == OPEN
    assert (dialer.peer, dialer.peer_port) == ("b", 7002)
    assert (acceptor.peer, acceptor.peer_port, acceptor.incarnation) == ("a", 7001, 1)
    assert dialer.member and acceptor.member


@pytest.mark.parametrize(
    ("hello", "error", "match"),
    [
        (Hello(99, "c", "x", 1, 1), ProtocolError, "protocol version 99"),
        (Hello(PROTOCOL_VERSION, "other", "x", 1, 1), ProtocolError, "cluster 'other'"),
        (Hello(PROTOCOL_VERSION, "c", "b", 1, 1), SelfDial, None),
        (Ping(0), ProtocolError, "expected a hello, got Ping"),
    ],
    ids=["version", "cluster", "self", "not a hello"],
)
def test_a_bad_first_message_is_refused_and_nothing_is_answered(
    hello: object, error: type[Exception], match: str | None
) -> None:
    acceptor = LinkSession(ident("b"), dialed=False, remote_host="h")
    with pytest.raises(error, match=match):
        acceptor.receive_hello(hello, None)
    assert acceptor.state == HELLO and acceptor.peer is None


@pytest.mark.parametrize(
    ("hello", "names", "code"),
    [
        (Hello(99, "c", "x", 1, 1), None, "version"),
        (Hello(PROTOCOL_VERSION, "other", "x", 1, 1), None, "cluster"),
        (Hello(PROTOCOL_VERSION, "c", "x", 1, 1), frozenset({"y"}), "identity"),
    ],
    ids=["version", "cluster", "certificate"],
)
def test_a_failed_check_leaves_a_refusal_with_a_code_only(
    hello: Hello, names: frozenset[str] | None, code: str
) -> None:
    acceptor = LinkSession(ident("b"), dialed=False, remote_host="h")
    with pytest.raises(ProtocolError):
        acceptor.receive_hello(hello, names)
    assert acceptor.refusal == Refuse(code)  # no cluster name, no node id


@pytest.mark.parametrize(
    "hello",
    [Hello(PROTOCOL_VERSION, "c", "b", 1, 1), Ping(0)],
    ids=["self", "not a hello"],
)
def test_junk_and_self_dials_get_no_refusal(hello: object) -> None:
    acceptor = LinkSession(ident("b"), dialed=False, remote_host="h")
    with pytest.raises((ProtocolError, SelfDial)):
        acceptor.receive_hello(hello, None)
    assert acceptor.refusal is None


def test_a_refusal_received_says_why() -> None:
    dialer = LinkSession(ident("a"), dialed=True, remote_host="h")
    dialer.opening()
    with pytest.raises(LinkRefused, match="refused this node's hello: it is in another cluster"):
        dialer.receive_hello(Refuse("cluster"), None)
    fresh = LinkSession(ident("a"), dialed=True, remote_host="h")
    with pytest.raises(LinkRefused, match="reason 'tuesday'") as refused:
        fresh.receive_hello(Refuse("tuesday"), None)  # a code from a newer peer
    assert refused.value.reason == "tuesday"


def test_a_refusal_after_the_link_opened_closes_it() -> None:
    # The dialer checks the acceptor's hello last (a certificate naming another node):
    # its refusal reaches an acceptor that had opened the link already.
    _, acceptor = pair()
    with pytest.raises(LinkRefused):
        acceptor.receive(Refuse("identity"))
    assert acceptor.state == CLOSED


def test_the_certificate_must_name_the_hello_node() -> None:
    dialer = LinkSession(ident("a"), dialed=True, remote_host="h")
    acceptor = LinkSession(ident("b"), dialed=False, remote_host="h")
    (hello,) = dialer.opening()
    with pytest.raises(IdentityError, match="certificate names someone, x"):
        acceptor.receive_hello(hello, frozenset({"someone", "x"}))
    with pytest.raises(IdentityError, match="no crdtcache node id"):
        acceptor.receive_hello(hello, frozenset())
    handshake(dialer, acceptor, (frozenset({"b"}), frozenset({"a", "spare"})))
    assert acceptor.state == OPEN


def test_misuse_is_a_local_error() -> None:
    dialer, _ = pair()
    with pytest.raises(RuntimeError, match="opening"):
        dialer.opening()
    with pytest.raises(RuntimeError, match="receive_hello"):
        dialer.receive_hello(Ping(0), None)
    fresh = LinkSession(ident("a"), dialed=True, remote_host="h")
    with pytest.raises(RuntimeError, match="receive"):
        fresh.receive(Ping(0))
    with pytest.raises(RuntimeError, match="ask"):
        fresh.ask("get", ("k",))


# --------------------------------------------------------------------- open
def test_gossip_goodbye_and_junk_after_the_handshake() -> None:
    dialer, acceptor = pair()
    assert acceptor.receive(Push(())) == [Gossip(Push(()))]
    with pytest.raises(ProtocolError, match="a Hello after the handshake"):
        acceptor.receive(Hello(PROTOCOL_VERSION, "c", "a", 1, 1))
    with pytest.raises(ProtocolError, match="a bytes after the handshake"):
        acceptor.receive(b"junk")
    assert dialer.receive(Bye()) == [Left()]
    assert dialer.state == CLOSED


def test_admin_requests_are_correlated_and_fail_when_the_link_closes() -> None:
    client = LinkSession(ident("cli", port=0), dialed=True, remote_host="h")
    node = LinkSession(ident("n"), dialed=False, remote_host="h")
    handshake(client, node)
    assert not client.member and not node.member  # a client link carries no gossip
    first, second = client.ask("get", ("k",)), client.ask("stats", ())
    assert first.request != second.request
    (asked,) = node.receive(first)
    assert asked == AdminAsked(first)
    reply = LinkSession.answer(first, True, {"found": False})
    assert client.receive(reply) == [AdminAnswered(reply)]
    assert client.receive(reply) == []  # answered once; a repeat is dropped
    assert client.receive(AdminReply(999, True, None)) == []  # never asked
    assert client.receive(Push(())) == [] and client.receive(PeerList(())) == []
    assert client.close() == [second.request]
    assert client.close() == []


# --------------------------------------------------------------------- mesh
def _open(mesh: Mesh, peer: str, *, dialed: bool, incarnation: int = 1) -> LinkSession:
    link = mesh.session(dialed=dialed, remote_host=f"host-{peer}")
    link.accept_hello(Hello(PROTOCOL_VERSION, "c", peer, 7000, incarnation), None)
    return link


@pytest.mark.parametrize("order", ["a's dial first", "b's dial first"])
def test_simultaneous_dials_keep_the_same_link_on_both_sides(order: str) -> None:
    mesh_a, mesh_b = Mesh(ident("a")), Mesh(ident("b"))
    # Link 1 was dialled by a, link 2 by b; each side sees both.
    a1, b1 = _open(mesh_a, "b", dialed=True), _open(mesh_b, "a", dialed=False)
    a2, b2 = _open(mesh_a, "b", dialed=False), _open(mesh_b, "a", dialed=True)
    first_a, second_a = (a1, a2) if order == "a's dial first" else (a2, a1)
    first_b, second_b = (b1, b2) if order == "a's dial first" else (b2, b1)
    assert mesh_a.register(first_a) == (True, None)
    assert mesh_b.register(first_b) == (True, None)
    kept_a, replaced_a = mesh_a.register(second_a)
    kept_b, replaced_b = mesh_b.register(second_b)
    # Both keep the link dialled by the smaller id: link 1.
    assert mesh_a.links["b"] is a1 and mesh_b.links["a"] is b1
    assert (kept_a, replaced_a) == ((False, None) if second_a is a2 else (True, a2))
    assert (kept_b, replaced_b) == ((False, None) if second_b is b2 else (True, b2))


def test_a_new_incarnation_replaces_a_stale_link_and_a_closed_one_is_no_rival() -> None:
    mesh = Mesh(ident("a"))
    old = _open(mesh, "b", dialed=True, incarnation=1)
    mesh.register(old)
    new = _open(mesh, "b", dialed=True, incarnation=2)  # b restarted
    assert mesh.register(new) == (True, old)
    new.close()
    again = _open(mesh, "b", dialed=True, incarnation=2)
    assert mesh.register(again) == (True, None)
    assert mesh.remove(new) is False and mesh.remove(again) is True
    assert mesh.links == {}


def test_peer_lists_mesh_a_cluster_from_one_seed() -> None:
    mesh = Mesh(ident("a"))
    links = {}
    for peer in ("b", "c"):
        links[peer] = _open(mesh, peer, dialed=False)
        mesh.register(links[peer])
    announcements, dials = mesh.joined(links["c"])
    assert dials == [Dial("c", "host-c", 7000)]  # dialled back should the link drop
    assert announcements == [
        Announce(links["c"], PeerList((("b", "host-b", 7000),))),
        Announce(links["b"], PeerList((("c", "host-c", 7000),))),
    ]
    offered = PeerList((("a", "h", 1), ("b", "h", 2), ("d", "h", 3)))
    assert mesh.receive(links["b"], offered) == [Dial("d", "h", 3)]


def test_a_client_link_is_not_announced_nor_dialled_back() -> None:
    mesh = Mesh(ident("a"))
    link = mesh.session(dialed=False, remote_host="h")
    link.accept_hello(Hello(PROTOCOL_VERSION, "c", "cli", 0, 1), None)
    mesh.register(link)
    assert mesh.joined(link) == ([], [])
    with pytest.raises(RuntimeError, match="open"):
        mesh.register(mesh.session(dialed=True, remote_host="h"))


def test_the_greater_id_dials_first() -> None:
    mesh = Mesh(ident("m"))
    assert mesh.defers_to("z") and not mesh.defers_to("a") and not mesh.defers_to(None)
