"""Fuzzing the frame decoder, the codec, the authenticated handshake and sealed frames.

The property everywhere: whatever bytes arrive, the only exception is a
:class:`ProtocolError` (which drops the stream), and every input is handled quickly.
Every message that does decode respects the caps: at most ``MAX_MESSAGE_PATTERNS``
pattern tombstones, admin fields no deeper than ``MAX_DEPTH``, a first frame no larger
than a hello; ``_amplified`` blows inputs up to frames that reach the per-frame
container and item budgets.

Three ways to run it:

* ``pytest tests/wire/test_fuzz.py``: hypothesis properties (examples per the
  hypothesis profile) and a seeded mutation fuzzer for ``CRDTCACHE_FUZZ_SECONDS``
  (default 2 s); a failure prints the seed and the input to paste into ``REGRESSIONS``.
  ``CRDTCACHE_FUZZ_SECONDS=600 CRDTCACHE_FUZZ_SEED=...`` fuzzes longer, or elsewhere.
* ``python tests/wire/fuzz_atheris.py -max_total_time=600``: coverage-guided with
  atheris, when it is installed (``pip install atheris``), on the same targets.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtcache import ProtocolError
from crdtcache.core import (
    NOT_HELD,
    TOMBSTONE,
    Ack,
    Entry,
    Fetch,
    FetchReply,
    PatternTombstone,
    Ping,
    Push,
    SyncRequest,
    SyncResponse,
    encode_value,
)
from crdtcache.transport import (
    PROTOCOL_VERSION,
    Bye,
    FrameDecoder,
    FrameOpener,
    FrameSealer,
    FrameTooLarge,
    Handshake,
    Hello,
    decode,
    encode,
    encode_frame,
)
from crdtcache.wire._auth import _STEP_PROOF, AWAIT_PROOF, DONE, PEER_PROVED, _tag
from crdtcache.wire._codec import (
    MAX_DEPTH,
    MAX_HELLO_BYTES,
    MAX_MESSAGE_PATTERNS,
    AdminReply,
    AdminRequest,
    AuthProof,
    PeerList,
    WireMessage,
)

SECRET = b"fuzzing-secret-0123456789abcdef!"
KEY = b"k" * 32
#: An input taking longer than this is a hang, as far as the fuzzer is concerned.
SLOW_INPUT_SECONDS = 1.0


def _hello(node: str) -> Hello:
    return Hello(PROTOCOL_VERSION, "default", node, 7000, 42)


def _seeded(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return rng.randbytes


# ------------------------------------------------------------ handshake fixtures
def _responder() -> Handshake:
    return Handshake((SECRET,), _hello("r"), initiator=False, random_bytes=_seeded(1))


def _initiator() -> Handshake:
    return Handshake((SECRET,), _hello("i"), initiator=True, random_bytes=_seeded(2))


def _genuine_run() -> tuple[list[bytes], Handshake, Handshake]:
    """A deterministic genuine handshake: its four messages, and both finished machines."""
    i, r = _initiator(), _responder()
    wire = [i.start()]
    wire.append(r.receive(wire[0]) or b"")
    wire.append(i.receive(wire[1]) or b"")
    r.receive(wire[2])
    wire.append(r.accept())
    i.receive(wire[3])
    return wire, i, r


WIRE, _, _ = _genuine_run()


def _at_await_proof() -> Handshake:
    r = _responder()
    r.receive(WIRE[0])
    return r


def _at_await_challenge() -> Handshake:
    i = _initiator()
    i.start()
    return i


def _at_await_accept() -> Handshake:
    i = _at_await_challenge()
    i.receive(WIRE[1])
    return i


# ------------------------------------------------------------ the targets
def _checked(message: WireMessage) -> None:
    """What every decoded message must respect (the per-frame and per-message caps)."""
    patterns = getattr(message, "patterns", ())
    assert len(patterns) <= MAX_MESSAGE_PATTERNS, "pattern cap per message"
    if isinstance(message, AdminRequest | AdminReply):
        free = list(message.args) if isinstance(message, AdminRequest) else [message.result]
        assert _depth(free) <= MAX_DEPTH + 1, "depth cap of admin fields"


def _depth(value: object) -> int:
    level, depth = [value], 0
    while level:
        depth += 1
        below: list[object] = []
        for v in level:
            if isinstance(v, list):
                below += v
            elif isinstance(v, dict):
                below += v.values()
        level = below
    return depth


def _decode(data: bytes) -> None:
    _checked(decode(data))


def _amplified(data: bytes) -> None:
    # The input repeated into a frame of up to 512 KiB, as one array: reaches the
    # per-frame budgets (containers, items) that small inputs never exhaust.
    if not data:
        return
    times = min(len(data) * 97 % 4096 + 1, (512 << 10) // len(data))
    body = b"\xdd" + times.to_bytes(4, "big") + data * times
    started = time.monotonic()
    _checked(decode(body))
    assert time.monotonic() - started < SLOW_INPUT_SECONDS


def _first_frame(data: bytes) -> None:
    # Before any handshake a frame may be no larger than the largest hello.
    decoder = FrameDecoder(max_bytes=MAX_HELLO_BYTES)
    for body in decoder.feed(data):
        assert len(body) <= MAX_HELLO_BYTES
        _checked(decode(body))


def _frames(data: bytes) -> None:
    decoder = FrameDecoder(max_bytes=4096)
    cut = data[0] % (len(data) + 1) if data else 0
    for body in decoder.feed(data[:cut]) + decoder.feed(data[cut:]):
        decode(body)


def _responder_start(data: bytes) -> None:
    _responder().receive(data)


def _responder_await_proof(data: bytes) -> None:
    _at_await_proof().receive(data)


def _initiator_await_challenge(data: bytes) -> None:
    _at_await_challenge().receive(data)


def _initiator_await_accept(data: bytes) -> None:
    _at_await_accept().receive(data)


def _proven_hello(data: bytes) -> None:
    # White-box: a correctly tagged proof whose hello is the fuzz input, to reach the
    # hello decoding that only runs once the tag verified.
    r = _at_await_proof()
    hello = data[:1024] or b"\x00"
    r.receive(encode(AuthProof(hello, _tag(r._candidates[0][1], _STEP_PROOF, hello))))
    if r.state == PEER_PROVED:
        r.accept()
        assert r.state == DONE


def _opener(data: bytes) -> None:
    decode(FrameOpener(KEY).open(data))


def _sealed_then_decoded(data: bytes) -> None:
    # What an authenticated peer can make this node decode.
    _checked(decode(FrameOpener(KEY).open(FrameSealer(KEY).seal(data))))


TARGETS: list[Callable[[bytes], None]] = [
    _decode,
    _frames,
    _responder_start,
    _responder_await_proof,
    _initiator_await_challenge,
    _initiator_await_accept,
    _proven_hello,
    _opener,
    _sealed_then_decoded,
    _amplified,
    _first_frame,
]


def exercise(target: int, data: bytes) -> None:
    """Run one input through one target; anything but a ProtocolError is a bug."""
    with contextlib.suppress(ProtocolError):
        TARGETS[target % len(TARGETS)](data)


# ------------------------------------------------------------ the seed corpus
def _corpus() -> list[bytes]:
    entry = Entry(encode_value("k", {"a": [1, 2.5, "x"]}), 123, "n1", 99.0)
    entries = (("k", entry), ("t", Entry(TOMBSTONE, 5, "n2")), ("s", Entry(NOT_HELD, 6, "n3")))
    messages: list[WireMessage] = [
        Push(entries, (PatternTombstone("user:*", 9, "n1"),), "n1", 1, 2, 3, 4),
        SyncResponse(1, 0, 1, entries, (), {"n1": 5}, True),
        SyncRequest(7, {"n1": 3, "n2": -1}),
        Ack(1),
        Ping(2),
        Fetch(3, ("a", "b")),
        FetchReply(3, entries),
        _hello("n1"),
        Bye(),
        PeerList((("n1", "127.0.0.1", 7000),)),
    ]
    many = tuple(PatternTombstone(f"p{i}:*", 9, "n1") for i in range(MAX_MESSAGE_PATTERNS))
    messages += [
        Push((), many, "n1", 1, 2, 3, 4),  # at the pattern cap: one more is refused
        AdminRequest(1, "set", ("k", [[[[1]]]], None)),
        AdminReply(1, True, {"a": [{"b": [1]}]}),
    ]
    bodies = [encode(m) for m in messages] + WIRE
    bodies += [b"\x92\x02" + b"\x91" * 40 + b"\xc0", b"\xdc\x10\x00" + b"\x90" * 4096]
    sealer = FrameSealer(KEY)
    sealed = [sealer.seal(b) for b in bodies[:4]]
    return bodies + sealed + [encode_frame(b) for b in bodies[:3]] + [b""]


CORPUS = _corpus()


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to four random edits: bit flips, interesting bytes, cuts, splices, repeats."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        at = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[at % len(buf)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[at % len(buf)] = rng.choice([0, 1, 0x7F, 0x80, 0xC0, 0xC1, 0xCF, 0xDD, 0xFF])
        elif op == 2:
            del buf[at : at + rng.randint(1, 16)]
        elif op == 3:
            buf[at:at] = rng.randbytes(rng.randint(1, 16))
        elif op == 4:
            other = rng.choice(CORPUS)
            cut = rng.randrange(len(other) + 1)
            buf[at:] = other[cut:]
        elif op == 5 and buf:
            # Claim a huge size in a msgpack length field (array32/map32/bin32/str32).
            buf[at % len(buf) : at % len(buf) + 1] = bytes([rng.choice([0xDD, 0xDF, 0xC6, 0xDB])])
            buf[at % len(buf) + 1 : at % len(buf) + 1] = b"\xff\xff\xff\x7f"
        elif op == 6 and buf:
            start = at % len(buf)
            chunk = buf[start : start + rng.randint(1, 8)]
            buf[start:start] = chunk * rng.randint(1, 8)
    return bytes(buf)


#: Inputs that once crashed or hung a target, as (target, input); kept forever.
REGRESSIONS: list[tuple[int, bytes]] = []


@pytest.mark.parametrize(("target", "data"), REGRESSIONS or [(0, b"")])
def test_regressions(target: int, data: bytes) -> None:
    exercise(target, data)


def test_corpus_is_clean() -> None:
    for data in CORPUS:
        for target in range(len(TARGETS)):
            exercise(target, data)


FUZZ_SECONDS = float(os.environ.get("CRDTCACHE_FUZZ_SECONDS", "2"))


@pytest.mark.timeout(FUZZ_SECONDS + 120)
def test_mutation_fuzz_for_a_bounded_time() -> None:
    seed = int(os.environ.get("CRDTCACHE_FUZZ_SEED", "0")) or random.randrange(1 << 32)
    rng = random.Random(seed)
    deadline = time.monotonic() + FUZZ_SECONDS
    runs = 0
    while time.monotonic() < deadline:
        data = mutate(rng, rng.choice(CORPUS))
        target = rng.randrange(len(TARGETS))
        started = time.monotonic()
        try:
            exercise(target, data)
        except Exception as exc:
            pytest.fail(
                f"fuzz seed {seed}: target {TARGETS[target].__name__} raised "
                f"{type(exc).__name__}: {exc}; add ({target}, {data!r}) to REGRESSIONS"
            )
        took = time.monotonic() - started
        assert took < SLOW_INPUT_SECONDS, (
            f"fuzz seed {seed}: target {TARGETS[target].__name__} took {took:.2f} s; "
            f"add ({target}, {data!r}) to REGRESSIONS"
        )
        runs += 1
    print(f"fuzz seed {seed}: {runs} inputs in {FUZZ_SECONDS:.0f} s")
    assert runs > 0


# ------------------------------------------------------------ hypothesis properties
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)


@given(st.integers(0, 16), st.lists(msgpack_values, max_size=9))
def test_structured_junk_is_only_ever_a_protocol_error(kind: int, fields: list[object]) -> None:
    import msgpack

    body = msgpack.packb([kind, *fields], use_bin_type=True)
    for target in range(len(TARGETS)):
        exercise(target, body)


@given(st.binary(max_size=300), st.integers(0, len(TARGETS) - 1))
def test_random_bytes_are_only_ever_a_protocol_error(data: bytes, target: int) -> None:
    exercise(target, data)


@given(st.lists(st.binary(max_size=64), max_size=6), st.lists(st.integers(1, 40), max_size=20))
def test_frame_decoder_under_any_split_or_oversize(bodies: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(b) for b in bodies) + b"\x00\x01\x00\x00"  # 64 KiB header
    decoder = FrameDecoder(max_bytes=1024)
    out: list[bytes] = []
    pos = 0
    with contextlib.suppress(FrameTooLarge):
        for cut in [*cuts, len(stream)]:
            out += decoder.feed(stream[pos : pos + cut])
            pos += cut
    assert out == bodies[: len(out)]


@given(st.integers(0, 3), st.integers(0, 2000), st.sampled_from(["flip", "cut", "extend", "swap"]))
def test_a_mutated_handshake_fails_or_agrees(step: int, where: int, how: str) -> None:
    """Tampering with one handshake message never yields two different sessions."""
    i, r = _initiator(), _responder()

    def tamper(index: int, body: bytes) -> bytes:
        if index != step:
            return body
        at = where % max(1, len(body))
        if how == "flip":
            return body[:at] + bytes([body[at] ^ (1 << (where % 8))]) + body[at + 1 :]
        if how == "cut":
            return body[:at]
        if how == "extend":
            return body + b"\x00"
        return WIRE[(step + 1) % 4]  # a genuine message of another step

    try:
        reply = r.receive(tamper(0, i.start()))
        proof = i.receive(tamper(1, reply or b""))
        r.receive(tamper(2, proof or b""))
        if r.state != PEER_PROVED:
            return
        i.receive(tamper(3, r.accept()))
    except ProtocolError:
        return
    assert i.state == r.state == DONE
    assert i.session_keys().send == r.session_keys().receive
    assert i.peer_hello == _hello("r") and r.peer_hello == _hello("i")


@given(st.binary(max_size=200), st.integers(0, 10_000), st.integers(0, 7))
def test_no_altered_sealed_frame_opens(payload: bytes, where: int, bit: int) -> None:
    sealed = FrameSealer(KEY).seal(payload)
    at = where % len(sealed)
    altered = sealed[:at] + bytes([sealed[at] ^ (1 << bit)]) + sealed[at + 1 :]
    with pytest.raises(ProtocolError):
        FrameOpener(KEY).open(altered)


def test_the_responder_states_are_reachable() -> None:
    assert _at_await_proof().state == AWAIT_PROOF
