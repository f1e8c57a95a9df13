"""Cluster secrets: the sans-IO handshake on a fake link, then real nodes on loopback.

Every refused stream must cost exactly one log line on the refusing node, leave its
replica untouched, and leave it serving its good peers.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import make_engine, meshed, start_cluster, view, wait_for, write

from crdtcache import ConfigError, ProtocolError
from crdtcache.core import Entry, Ping, Push, pack_ts
from crdtcache.discovery._base import PeerAddress
from crdtcache.transport import (
    MAX_SECRETS,
    PROTOCOL_VERSION,
    AuthError,
    FrameOpener,
    FrameSealer,
    Handshake,
    Hello,
    Node,
    SessionKeys,
    encode,
    encode_frame,
    keyring,
    make_node,
)
from crdtcache.transport._node import parse_address
from crdtcache.wire._auth import DONE, FAILED, PEER_PROVED

SECRET = b"cluster-secret-0123456789abcdef!"
OLD, NEW = b"old-secret-0123456789abcdef!!!!!", b"new-secret-0123456789abcdef!!!!!"
NODE_LOG = "crdtcache.transport._node"


def _hello(node: str, cluster: str = "default", port: int = 0) -> Hello:
    return Hello(PROTOCOL_VERSION, cluster, node, port, 1)


def _counter_bytes(seed: int) -> Callable[[int], bytes]:
    """Deterministic 'random' bytes, so that two runs can share nonces."""
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


def run_handshake(
    ring_i: tuple[bytes, ...],
    ring_r: tuple[bytes, ...],
    *,
    seed: int | None = None,
    tamper: Callable[[int, bytes], bytes] = lambda i, b: b,
) -> tuple[Handshake, Handshake, list[bytes]]:
    """Join an initiator and a responder by a fake link; ``tamper(i, body)`` may alter
    the i-th message in flight. Returns both machines and the bodies that crossed."""
    extra: dict[str, Any] = {}
    initiator = Handshake(
        ring_i,
        _hello("alice", port=1),
        initiator=True,
        **({"random_bytes": _counter_bytes(seed)} if seed is not None else extra),
    )
    responder = Handshake(
        ring_r,
        _hello("bob", port=2),
        initiator=False,
        **({"random_bytes": _counter_bytes(seed + 1)} if seed is not None else extra),
    )
    wire = [tamper(0, initiator.start())]
    reply = responder.receive(wire[-1])
    assert reply is not None
    wire.append(tamper(1, reply))
    proof = initiator.receive(wire[-1])
    assert proof is not None
    wire.append(tamper(2, proof))
    assert responder.receive(wire[-1]) is None
    assert responder.state == PEER_PROVED
    wire.append(tamper(3, responder.accept()))
    assert initiator.receive(wire[-1]) is None
    return initiator, responder, wire


# ------------------------------------------------------------ the handshake, sans-IO
def test_handshake_agrees_on_directional_keys_and_hellos() -> None:
    i, r, _ = run_handshake((SECRET,), (SECRET,))
    assert i.state == r.state == DONE
    ki, kr = i.session_keys(), r.session_keys()
    assert ki.send == kr.receive and ki.receive == kr.send
    assert ki.send != ki.receive  # a frame cannot be reflected to its sender
    assert i.peer_hello == _hello("bob", port=2) and r.peer_hello == _hello("alice", port=1)
    assert "secret" in repr(ki) and ki.send.hex() not in repr(ki)


def test_fresh_nonces_give_fresh_keys() -> None:
    a, _, _ = run_handshake((SECRET,), (SECRET,))
    b, _, _ = run_handshake((SECRET,), (SECRET,))
    assert a.session_keys() != b.session_keys()


def test_wrong_secret_fails_before_any_hello_is_revealed() -> None:
    initiator = Handshake((SECRET,), _hello("alice"), initiator=True)
    responder = Handshake((b"another-secret-of-32-bytes......",), _hello("bob"), initiator=False)
    hello = initiator.start()
    challenge = responder.receive(hello)
    assert challenge is not None
    with pytest.raises(AuthError, match="challenge matches no secret"):
        initiator.receive(challenge)
    assert initiator.state == FAILED
    for body in (hello, challenge):  # what crossed the wire names nobody
        assert b"alice" not in body and b"bob" not in body and b"default" not in body


def test_a_forged_proof_is_refused_and_the_responder_reveals_nothing() -> None:
    responder = Handshake((SECRET,), _hello("bob"), initiator=False)
    mallory = Handshake((b"mallory-guesses-a-secret........",), _hello("m"), initiator=True)
    challenge = responder.receive(mallory.start())
    assert challenge is not None and b"bob" not in challenge
    other = Handshake((SECRET,), _hello("bob"), initiator=False)
    other.receive(Handshake((SECRET,), _hello("m"), initiator=True).start())
    with pytest.raises(AuthError, match="expected AuthProof"):
        other.receive(encode(Push(())))  # anything but a proof
    from crdtcache.wire._codec import AuthProof

    with pytest.raises(AuthError, match="proof matches no secret"):
        responder.receive(encode(AuthProof(encode(_hello("m")), b"\0" * 32)))
    assert responder.state == FAILED and responder.peer_hello is None


@pytest.mark.parametrize(
    ("ring_i", "ring_r"),
    [((NEW, OLD), (OLD,)), ((OLD,), (NEW, OLD)), ((NEW, OLD), (NEW, OLD)), ((OLD, NEW), (NEW,))],
    ids=["new+old to old", "old to new+old", "both rings", "old+new to new"],
)
def test_rotation_any_shared_secret_is_accepted(
    ring_i: tuple[bytes, ...], ring_r: tuple[bytes, ...]
) -> None:
    i, r, _ = run_handshake(ring_i, ring_r)
    assert i.session_keys().send == r.session_keys().receive


def test_rotation_uses_the_first_shared_secret() -> None:
    # With the same nonces, a [new, old] pair derives exactly what a [new] pair does.
    both, _, _ = run_handshake((NEW, OLD), (NEW, OLD), seed=7)
    new_only, _, _ = run_handshake((NEW,), (NEW,), seed=7)
    old_only, _, _ = run_handshake((OLD,), (OLD,), seed=7)
    assert both.session_keys() == new_only.session_keys() != old_only.session_keys()


def test_rotation_without_a_shared_secret_fails() -> None:
    with pytest.raises(AuthError, match="no secret"):
        run_handshake((NEW,), (OLD,))


def test_the_challenge_hides_the_size_of_the_keyring() -> None:
    _, _, one = run_handshake((SECRET,), (SECRET,))
    _, _, three = run_handshake((SECRET,), (NEW, OLD, SECRET))
    assert len(one[1]) == len(three[1])  # MAX_SECRETS tags either way


# Where to flip a bit: the nonce of the hello; the challenge's nonce and its first tag
# (the only real one here: the other three are random padding, ignored by design);
# the proof's and the accept's hello and tag.
FLIPS = [(0, -1), (1, 10), (1, 45), (2, 8), (2, -1), (3, 8), (3, -1)]


@pytest.mark.parametrize(("step", "where"), FLIPS)
def test_any_altered_handshake_message_fails(step: int, where: int) -> None:
    def flip(i: int, body: bytes) -> bytes:
        if i != step:
            return body
        at = where % len(body)
        return body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1 :]

    with pytest.raises(ProtocolError):
        run_handshake((SECRET,), (SECRET,), tamper=flip)


def test_a_plain_hello_is_refused_with_an_auth_hello_in_reply() -> None:
    responder = Handshake((SECRET,), _hello("bob"), initiator=False)
    with pytest.raises(AuthError, match="no cluster secret") as caught:
        responder.receive(encode(_hello("plain")))
    assert caught.value.reply is not None and b"bob" not in caught.value.reply


def test_a_wrong_auth_version_is_refused() -> None:
    from crdtcache.wire._codec import AuthHello

    with pytest.raises(AuthError, match="authentication version 9"):
        Handshake((SECRET,), _hello("bob"), initiator=False).receive(
            encode(AuthHello(9, b"n" * 32))
        )


def test_misuse_is_a_local_error() -> None:
    responder = Handshake((SECRET,), _hello("bob"), initiator=False)
    with pytest.raises(RuntimeError, match="start"):
        responder.start()
    with pytest.raises(RuntimeError, match="accept"):
        responder.accept()
    with pytest.raises(RuntimeError, match="session_keys"):
        responder.session_keys()
    done, _, _ = run_handshake((SECRET,), (SECRET,))
    with pytest.raises(RuntimeError, match="receive"):
        done.receive(b"")


# ------------------------------------------------------------ sealed frames, sans-IO
def _pair() -> tuple[FrameSealer, FrameOpener]:
    key = secrets.token_bytes(32)
    return FrameSealer(key), FrameOpener(key)


def test_sealed_frames_open_in_order() -> None:
    sealer, opener = _pair()
    for payload in (b"", b"a", b"x" * 1000):
        assert opener.open(sealer.seal(payload)) == payload


@pytest.mark.parametrize(
    ("attack", "message"),
    [
        ("replay", r"replayed frame \(sequence 0 again, expected 1\)"),
        ("reorder", r"frame out of order \(sequence 1, expected 0\)"),
        ("drop", r"frame out of order \(sequence 1, expected 0\)"),
        ("flip", r"frame 0 failed authentication"),
        ("truncate", r"frame 0 failed authentication|shorter than its tag"),
        ("reflect", r"frame 0 failed authentication"),
        ("splice", r"frame 0 failed authentication"),
    ],
)
def test_attacks_on_sealed_frames(attack: str, message: str) -> None:
    sealer, opener = _pair()
    first, second = sealer.seal(b"first"), sealer.seal(b"second")
    if attack == "replay":
        opener.open(first)
        stream = [first]
    elif attack in ("reorder", "drop"):
        stream = [second, first]
    elif attack == "flip":
        stream = [first[:10] + bytes([first[10] ^ 4]) + first[11:]]
    elif attack == "truncate":
        stream = [first[:-1]]
    elif attack == "reflect":
        keys = SessionKeys(send=b"k" * 32, receive=b"j" * 32)
        opener = FrameOpener(keys.receive)
        stream = [FrameSealer(keys.send).seal(b"mine")]
    else:  # splice: a genuine frame of another stream (another key)
        stream = [FrameSealer(secrets.token_bytes(32)).seal(b"first")]
    with pytest.raises(AuthError, match=message):
        for body in stream:
            opener.open(body)


# ------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    ("secret", "match"),
    [
        (b"short", "at least 16 bytes"),
        ("a str is not bytes", "bytes or a list"),
        ([], "1 to"),
        ([SECRET] * (MAX_SECRETS + 1), "1 to"),
        ([SECRET, "str"], "each secret must be bytes"),
        ([SECRET, b"short"], "at least 16 bytes"),
        (42, "bytes or a list"),
    ],
)
def test_bad_secrets_are_config_errors(secret: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        keyring(secret)
    with pytest.raises(ConfigError, match=match):
        make_node(make_engine("cfg"), discovery="none", secret=secret)
    with pytest.raises(ConfigError, match=match):
        Node(make_engine("cfg"), secret=secret)


def test_make_node_accepts_one_secret_or_a_rotation_list() -> None:
    assert keyring(SECRET) == (SECRET,)
    assert keyring([NEW, bytearray(OLD)]) == (NEW, OLD)  # type: ignore[list-item]  # accepted
    node = make_node(make_engine("cfg"), discovery="none", secret=[NEW, OLD])
    assert node.statistics().authenticated is True


# ------------------------------------------------------------ real nodes
def _secret_options(ring: Any) -> Callable[[str], dict[str, Any]]:
    return lambda _name: {"secret": ring}


@pytest.fixture
async def secure3() -> Any:
    nodes = await start_cluster(3, prefix="sec", node_options=_secret_options(SECRET))
    yield nodes
    await asyncio.gather(*(n.close() for n in nodes))


def _refusals(caplog: pytest.LogCaptureFixture, node: Node | None = None) -> list[str]:
    """The "dropping connection" lines, of one node (by the record's ``node``) or all."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == NODE_LOG
        and "dropping connection" in r.getMessage()
        and (node is None or getattr(r, "node", None) == node.node_id)
    ]


async def _still_serves(cluster: list[Node], key: str) -> None:
    write(cluster[1], key, "ok")
    await wait_for(lambda: all(view(n).get(key) == "ok" for n in cluster))


async def test_a_secret_cluster_replicates_over_sealed_frames(secure3: list[Node]) -> None:
    for i in range(30):
        write(secure3[i % 3], f"k{i}", i)
    await wait_for(lambda: all(len(view(n)) == 30 for n in secure3))
    assert view(secure3[0]) == view(secure3[1]) == view(secure3[2])
    for node in secure3:
        assert all(c.secured for c in node.connections().values())
        stats = node.statistics()
        assert stats.authenticated and stats.auth_failures == 0


async def _intruder(
    secure3: list[Node], caplog: pytest.LogCaptureFixture, name: str, **options: Any
) -> Node:
    """Start a misconfigured node that dials and is dialled by secure3[0]."""
    caplog.set_level(logging.WARNING, logger=NODE_LOG)
    before = {n.node_id: dict(n.engine.replica.entries) for n in secure3}
    intruder = Node(make_engine(name), **options)
    await intruder.start()
    write(intruder, f"from-{name}", "must not arrive")
    assert secure3[0].address is not None and intruder.address is not None
    intruder.add_seed(secure3[0].address)  # it dials...
    host, port = parse_address(intruder.address)
    secure3[0].connect(PeerAddress(host, port))  # ...and is dialled
    await wait_for(lambda: secure3[0].auth_failures >= 2 and intruder.auth_failures >= 2)
    assert name not in secure3[0].connected_peers()
    assert all(dict(n.engine.replica.entries) == before[n.node_id] for n in secure3)
    return intruder


async def test_wrong_secret_is_refused_both_ways(
    secure3: list[Node], caplog: pytest.LogCaptureFixture
) -> None:
    intruder = await _intruder(secure3, caplog, "wrong", secret=b"W" * 32)
    try:
        await _still_serves(secure3, "after-wrong-secret")
        await intruder.close()
        target = secure3[0]
        lines = _refusals(caplog, target)
        # One line per refused stream: as the dialled node (after its challenge) and as
        # the dialler (the intruder's challenge does not verify); nothing else.
        assert len(lines) == target.handshake_failures == target.auth_failures, lines
        assert any("after this node's challenge: it does not hold the cluster" in x for x in lines)
        assert any("its challenge matches no secret of this node" in x for x in lines)
        assert "from-wrong" not in view(secure3[0])
    finally:
        await intruder.close()


async def test_no_secret_and_secret_refuse_each_other(
    secure3: list[Node], caplog: pytest.LogCaptureFixture
) -> None:
    plain = await _intruder(secure3, caplog, "plain")
    try:
        await _still_serves(secure3, "after-plain")
        await plain.close()
        target = secure3[0]
        lines = _refusals(caplog, target)
        assert len(lines) == target.handshake_failures == target.auth_failures, lines
        assert any(
            "the peer has no cluster secret (it sent an unauthenticated hello)" in x for x in lines
        )
        # The plain node says why too, both when it dials and when it is dialled.
        assert any(
            "the peer requires a cluster secret (secret=) and this node has none" in x
            for x in _refusals(caplog, plain)
        )
    finally:
        await plain.close()


async def test_rotation_old_and_new_nodes_interoperate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=NODE_LOG)
    a = Node(make_engine("rot-a"), secret=[NEW, OLD])  # rotated: signs with the new one
    b = Node(make_engine("rot-b"), secret=[OLD])  # not yet rotated
    c = Node(make_engine("rot-c"), secret=[NEW])  # rotation finished
    nodes = [a, b, c]
    for node in nodes:
        await node.start()
    try:
        assert a.address and b.address and c.address
        b.add_seed(a.address)  # old dials new+old
        a.add_seed(c.address)  # new+old dials new
        await wait_for(lambda: set(a.connected_peers()) == {"rot-b", "rot-c"})
        write(b, "from-old", 1)
        write(c, "from-new", 2)
        write(a, "from-both", 3)
        await wait_for(lambda: {"from-old", "from-new", "from-both"} <= set(view(a)))
        await wait_for(lambda: {"from-new", "from-both"} <= set(view(b)))
        # b [old] and c [new] share no secret: a's peer list makes them try, and fail.
        await wait_for(lambda: b.auth_failures + c.auth_failures >= 2)
        assert "rot-c" not in b.connected_peers()
        # Now b learns the new secret too; b and c connect directly.
        await b.close()
        b2 = Node(b.engine, secret=[NEW, OLD])
        await b2.start()
        nodes[1] = b2
        b2.add_seed(c.address)
        await wait_for(lambda: meshed(nodes), 10)
        # Every refusal was about the secret (b's shutdown may also cut a dial short).
        lines = [x for x in _refusals(caplog) if "closed before the handshake" not in x]
        assert lines and all("secret" in line for line in lines), lines
    finally:
        await asyncio.gather(*(n.close() for n in nodes))


# ------------------------------------------------------------ a raw authenticated peer
async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(4)
    return await reader.readexactly(int.from_bytes(header, "big"))


class RawPeer:
    """A test peer that authenticates with the real handshake, then writes raw frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.sealer: FrameSealer
        self.received: list[bytes] = []

    @classmethod
    async def connect(cls, node: Node, secret: bytes, node_id: str = "mallory") -> RawPeer:
        assert node.address is not None
        host, port = parse_address(node.address)
        peer = cls(*await asyncio.open_connection(host, port))
        # A listening port: gossip from a client link (port 0) is ignored.
        shake = Handshake(keyring(secret), _hello(node_id, port=1), initiator=True)
        peer.writer.write(encode_frame(shake.start()))
        while shake.state != DONE:
            body = await _read_frame(peer.reader)
            peer.received.append(body)
            reply = shake.receive(body)
            if reply is not None:
                peer.writer.write(encode_frame(reply))
        peer.sealer = FrameSealer(shake.session_keys().send)
        return peer

    def push(self, key: str, value: Any = "v", *, ahead: float = 0.0) -> bytes:
        ts = pack_ts(int((time.time() + ahead) * 1000))
        return self.sealer.seal(encode(Push(((key, Entry(value, ts, "mallory")),))))

    async def send(self, *bodies: bytes) -> None:
        for body in bodies:
            self.writer.write(encode_frame(body))
        await self.writer.drain()

    async def closed_by_node(self, timeout: float = 3.0) -> None:
        async def drain() -> None:
            while await self.reader.read(65536):
                pass

        await asyncio.wait_for(drain(), timeout)
        self.writer.close()


async def _one_refusal(caplog: pytest.LogCaptureFixture, pattern: str) -> None:
    lines = _refusals(caplog)
    assert len(lines) == 1, lines
    assert re.search(pattern, lines[0]), lines[0]


async def test_a_replayed_frame_closes_the_link(
    secure3: list[Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=NODE_LOG)
    target = secure3[0]
    peer = await RawPeer.connect(target, SECRET)
    genuine = peer.push("genuine")
    await peer.send(genuine)
    await wait_for(lambda: "genuine" in view(target))
    await peer.send(genuine, peer.push("after-replay"))  # the replay, then a good frame
    await peer.closed_by_node()
    await _one_refusal(caplog, r"mallory .*replayed frame \(sequence 0 again, expected 1\)")
    assert "after-replay" not in view(target)
    assert target.auth_failures == 1
    await _still_serves(secure3, "after-replay-attack")


async def test_a_flipped_bit_closes_the_link_and_nothing_is_stored(
    secure3: list[Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=NODE_LOG)
    target = secure3[0]
    peer = await RawPeer.connect(target, SECRET)
    body = bytearray(peer.push("tampered", "value"))
    body[len(body) // 2] ^= 0x10
    await peer.send(bytes(body))
    await peer.closed_by_node()
    await _one_refusal(caplog, r"frame 0 failed authentication")
    assert "tampered" not in view(target)
    await _still_serves(secure3, "after-flip")


async def test_reordered_frames_close_the_link_and_nothing_is_stored(
    secure3: list[Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=NODE_LOG)
    target = secure3[0]
    peer = await RawPeer.connect(target, SECRET)
    first, second = peer.push("first"), peer.push("second")
    await peer.send(second, first)
    await peer.closed_by_node()
    await _one_refusal(caplog, r"frame out of order \(sequence 1, expected 0\)")
    assert "first" not in view(target) and "second" not in view(target)
    await _still_serves(secure3, "after-reorder")


async def test_an_unsealed_frame_after_the_handshake_is_refused(
    secure3: list[Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=NODE_LOG)
    target = secure3[0]
    peer = await RawPeer.connect(target, SECRET)
    await peer.send(encode(Push((("injected", Entry("v", 1, "x")),))))
    await peer.closed_by_node()
    await _one_refusal(caplog, r"failed authentication|shorter than its tag")
    assert "injected" not in view(target)


async def test_an_authenticated_peer_still_cannot_pin_far_future_stamps(
    secure3: list[Node],
) -> None:
    target = secure3[0]
    peer = await RawPeer.connect(target, SECRET)
    await peer.send(peer.push("pinned", ahead=3600), peer.sealer.seal(encode(Ping(1))))
    await wait_for(lambda: target.engine.stats.refused_drift == 1)
    assert "pinned" not in view(target)
    assert "mallory" in target.connected_peers()  # refused and counted, not a link error
    peer.writer.close()


async def test_without_the_secret_a_peer_learns_nothing_and_changes_nothing(
    secure3: list[Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=NODE_LOG)
    target = secure3[0]
    before = dict(target.engine.replica.entries)
    assert target.address is not None
    host, port = parse_address(target.address)
    seen = b""
    # 1. A plain hello gets only an AuthHello back; 2. guessing fails at the proof.
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(encode_frame(encode(_hello("snoop"))))
    seen += await _read_frame(reader)
    writer.close()
    snoop = Handshake((b"a-guess-at-the-secret-32-bytes..",), _hello("snoop"), initiator=True)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(encode_frame(snoop.start()))
    challenge = await _read_frame(reader)
    seen += challenge
    with pytest.raises(AuthError):
        snoop.receive(challenge)
    from crdtcache.wire._codec import AuthProof

    writer.write(encode_frame(encode(AuthProof(encode(_hello("snoop")), b"\0" * 32))))
    seen += await reader.read(65536)  # the node closes without a word
    writer.close()
    for secret_thing in (target.node_id, target.cluster, str(target.incarnation)):
        assert secret_thing.encode() not in seen
    await wait_for(lambda: target.auth_failures == 2)
    lines = _refusals(caplog)
    assert len(lines) == 2, lines
    assert "no cluster secret" in lines[0] and "proof matches no secret" in lines[1]
    assert target.engine.replica.entries == before
    await _still_serves(secure3, "after-snoop")


# ------------------------------------------------------------ protected mode
@pytest.mark.parametrize(
    ("listen", "options", "warned"),
    [
        ("0.0.0.0:0", {}, True),
        ("0.0.0.0:0", {"secret": SECRET}, False),
        ("127.0.0.1:0", {}, False),
        ("localhost:0", {}, False),
    ],
)
async def test_an_open_node_on_a_public_address_warns_once(
    listen: str, options: dict[str, Any], warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=NODE_LOG)
    node = Node(make_engine("exposed"), listen=listen, **options)
    await node.start()
    await node.close()
    lines = [r.getMessage() for r in caplog.records if "without secret= or ssl=" in r.getMessage()]
    assert len(lines) == (1 if warned else 0), lines


def test_keys_are_never_printed() -> None:
    keys = SessionKeys(b"s" * 32, b"r" * 32)
    assert "sss" not in repr(keys) and "rrr" not in str(keys)
