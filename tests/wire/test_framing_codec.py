"""Frames and the wire codec: round trips, and junk refused with ProtocolError."""

from __future__ import annotations

import contextlib

import msgpack
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
    Bye,
    FrameDecoder,
    FrameTooLarge,
    Hello,
    decode,
    encode,
    encode_frame,
)
from crdtcache.wire._codec import (
    MAX_SECRETS,
    AuthAccept,
    AuthChallenge,
    AuthHello,
    AuthProof,
    PeerList,
    Refuse,
)

keys = st.text(min_size=0, max_size=20)
node_ids = st.text(min_size=1, max_size=12)
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary()
values = st.recursive(
    scalars | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)


@st.composite
def entries(draw: st.DrawFn) -> tuple[str, Entry]:
    key = draw(keys)
    kind = draw(st.sampled_from(["value", "tomb", "stub"]))
    stored = {"value": lambda: encode_value(key, draw(values)), "tomb": lambda: TOMBSTONE}.get(
        kind, lambda: NOT_HELD
    )()
    expires = draw(st.none() | st.floats(0, 2e9))
    return key, Entry(stored, draw(st.integers(0, 2**62)), draw(node_ids), expires)


patterns = st.builds(PatternTombstone, st.text(min_size=1), st.integers(0, 2**62), node_ids)
marks = st.dictionaries(node_ids, st.integers(-1, 2**62), max_size=5)
messages = st.one_of(
    st.builds(
        Push,
        st.lists(entries(), max_size=5).map(tuple),
        st.lists(patterns, max_size=3).map(tuple),
        st.none() | node_ids,
        st.integers(-1, 2**40),
        st.integers(-1, 2**40),
        st.integers(0, 255),
        st.integers(0, 2**40),
    ),
    st.builds(Ack, st.integers(0, 2**40)),
    st.builds(Ping, st.integers(0, 2**40)),
    st.builds(SyncRequest, st.integers(0, 2**40), marks),
    st.builds(
        lambda ex, ents, pats, mk, full: SyncResponse(ex, 0, 1, ents, pats, mk, full),
        st.integers(0, 2**40),
        st.lists(entries(), max_size=5).map(tuple),
        st.lists(patterns, max_size=3).map(tuple),
        marks,
        st.booleans(),
    ),
    st.builds(Fetch, st.integers(0, 2**40), st.lists(keys, max_size=5).map(tuple)),
    st.builds(FetchReply, st.integers(0, 2**40), st.lists(entries(), max_size=5).map(tuple)),
    st.builds(Hello, st.integers(0, 9), node_ids, node_ids, st.integers(0, 65535), st.integers(0)),
    st.just(Bye()),
    st.builds(
        PeerList,
        st.lists(st.tuples(node_ids, node_ids, st.integers(1, 65535)), max_size=3).map(tuple),
    ),
    st.builds(AuthHello, st.integers(0, 9), st.binary(min_size=32, max_size=32)),
    st.builds(
        AuthChallenge,
        st.binary(min_size=32, max_size=32),
        st.lists(st.binary(min_size=32, max_size=32), min_size=4, max_size=4).map(tuple),
    ),
    st.builds(AuthProof, st.binary(min_size=1, max_size=64), st.binary(min_size=32, max_size=32)),
    st.builds(AuthAccept, st.binary(min_size=1, max_size=64), st.binary(min_size=32, max_size=32)),
    st.builds(Refuse, st.text(min_size=1, max_size=32)),
)


@given(messages)
def test_every_message_round_trips(message: object) -> None:
    assert decode(encode(message)) == message  # type: ignore[arg-type]


@given(st.lists(st.binary(max_size=50), max_size=8), st.integers(1, 7))
def test_frame_decoder_reassembles_any_split(bodies: list[bytes], step: int) -> None:
    stream = b"".join(encode_frame(b) for b in bodies)
    decoder = FrameDecoder()
    out: list[bytes] = []
    for i in range(0, len(stream), step):
        out += decoder.feed(stream[i : i + step])
    assert out == bodies
    assert decoder.buffered == 0


def test_frame_decoder_refuses_oversized_header_before_body() -> None:
    decoder = FrameDecoder(max_bytes=100)
    with pytest.raises(FrameTooLarge):
        decoder.feed((101).to_bytes(4, "big"))  # no body sent at all


def test_encode_frame_refuses_oversized_body() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode_frame(b"x" * 11, max_bytes=10)


JUNK = {
    "empty": b"",
    "garbage": b"\xc1\xff\x00garbage",
    "truncated msgpack": msgpack.packb([2, [], []])[:-1],
    "not a list": msgpack.packb({"type": 2}),
    "unknown type": msgpack.packb([99, 1]),
    "wrong arity": msgpack.packb([3]),
    "negative ack": msgpack.packb([3, -5]),
    "ext type": msgpack.packb([msgpack.ExtType(1, b"x")]),
    "bad entry": msgpack.packb(
        [2, [["k", 0, {"not": "scalar"}, 1, "n", None]], [], None, 1, 2, 0, 0]
    ),
    "bad packed value": msgpack.packb([2, [["k", 1, b"\xc1", 1, "n", None]], [], None, 1, 2, 0, 0]),
    "unknown entry kind": msgpack.packb([2, [["k", 9, None, 1, "n", None]], [], None, 1, 2, 0, 0]),
    "int map key": msgpack.packb([4, 1, {1: 2}]),
    "oversized key": msgpack.packb([7, 1, ["k" * 5000]]),
    "invalid utf8": b"\x92\x06\xa2\xff\xfe",
    "part out of range": msgpack.packb([5, 1, 3, 2, [], [], {}, False]),
    "stamp too big": msgpack.packb([2, [["k", 0, 1, 2**64 - 1, "n", None]], [], None, 1, 2, 0, 0]),
    "short nonce": msgpack.packb([11, 1, b"n" * 31]),
    "nonce as str": msgpack.packb([11, 1, "n" * 32]),
    "too few tags": msgpack.packb([12, b"n" * 32, [b"t" * 32] * (MAX_SECRETS - 1)]),
    "long tag": msgpack.packb([12, b"n" * 32, [b"t" * 33] * MAX_SECRETS]),
    "empty hello in proof": msgpack.packb([13, b"", b"t" * 32]),
    "oversized hello": msgpack.packb([14, b"h" * 2000, b"t" * 32]),
    "empty refusal": msgpack.packb([17, ""]),
    "long refusal": msgpack.packb([17, "r" * 33]),
    "refusal as bytes": msgpack.packb([17, b"cluster"]),
}


@pytest.mark.parametrize("body", JUNK.values(), ids=JUNK.keys())
def test_junk_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(body)


def test_decode_refuses_a_body_over_the_limit() -> None:
    with pytest.raises(ProtocolError, match="size limit"):
        decode(encode(Ping(1)) + b"\x00" * 100, max_bytes=10)


def test_encode_refuses_foreign_objects() -> None:
    with pytest.raises(TypeError):
        encode(object())  # type: ignore[arg-type]


@given(st.binary(max_size=200))
def test_decoder_never_raises_anything_but_protocol_error(body: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode(body)


def test_an_admin_operation_that_is_not_a_str_is_a_protocol_error() -> None:
    # A list as the operation name used to escape as TypeError (unhashable).
    from crdtcache import ProtocolError
    from crdtcache.wire._codec import decode

    with pytest.raises(ProtocolError, match="unknown admin operation"):
        decode(msgpack.packb([15, 1, ["get"], ["k"]]))


def test_the_decoder_says_how_many_bytes_complete_the_frame() -> None:
    decoder = FrameDecoder(max_bytes=16)
    assert decoder.needed() == 4
    assert decoder.feed(b"\x00\x00") == [] and decoder.needed() == 2
    assert decoder.feed(b"\x00\x03") == [] and decoder.needed() == 3
    assert decoder.feed(b"abc") == [b"abc"] and decoder.needed() == 4
    assert decoder.frames == 1
    with pytest.raises(FrameTooLarge) as refused:
        decoder.feed(b"\x16\x03\x01\x00")
    assert refused.value.header == b"\x16\x03\x01\x00"


# ------------------------------------------------------------ budgets and caps
def _array(count: int, items: bytes) -> bytes:
    return b"\xdd" + count.to_bytes(4, "big") + items


def test_a_frame_of_more_containers_than_its_budget_is_refused() -> None:
    from crdtcache.wire._codec import BYTES_PER_CONTAINER, MIN_CONTAINERS

    # Empty arrays are the cheapest containers to send (one byte) and dear to hold.
    def frame(n: int) -> bytes:
        return _array(n + 1, b"\x02" + b"\x90" * n)  # [2, [], [], ...]

    fits = MIN_CONTAINERS  # and the outer array: the budget also grows with the size
    with pytest.raises(ProtocolError, match="push must have"):
        decode(frame(fits))  # within budget: refused for its shape only
    over = 60_000
    assert over > len(frame(over)) // BYTES_PER_CONTAINER + MIN_CONTAINERS
    with pytest.raises(ProtocolError, match="over budget"):
        decode(frame(over))


def test_a_frame_of_more_items_than_its_budget_is_refused() -> None:
    from crdtcache.wire._codec import MAX_FRAME_ITEMS

    # Two-byte strings, a hundred thousand to an array: few containers, many items.
    strings = b"".join(b"\xa1" + bytes((65 + i % 26,)) for i in range(65_000))
    arrays = MAX_FRAME_ITEMS // 65_000 + 1
    body = _array(arrays + 1, b"\x02" + (b"\xdc\xfd\xe8" + strings) * arrays)
    with pytest.raises(ProtocolError, match="over budget"):
        decode(body, max_bytes=len(body))


def test_admin_fields_nested_deeper_than_the_cap_are_refused() -> None:
    from crdtcache.wire._codec import MAX_DEPTH, AdminReply, AdminRequest

    def nested(depth: int) -> object:
        value: object = 1
        for _ in range(depth - 1):
            value = [value]
        return value

    ok = decode(encode(AdminRequest(1, "set", ("k", nested(MAX_DEPTH - 1), None))))
    assert isinstance(ok, AdminRequest)
    with pytest.raises(ProtocolError, match="nested deeper"):
        decode(encode(AdminRequest(1, "set", ("k", nested(MAX_DEPTH + 1), None))))
    with pytest.raises(ProtocolError, match="nested deeper"):
        decode(encode(AdminReply(1, True, {"a": nested(MAX_DEPTH + 1)})))


def test_more_pattern_tombstones_than_the_cap_per_message_are_refused() -> None:
    from crdtcache.wire._codec import MAX_MESSAGE_PATTERNS

    def push(n: int) -> bytes:
        tombs = tuple(PatternTombstone(f"p{i}:*", 9, "n1") for i in range(n))
        return encode(Push((), tombs, "n1", 1, 2))

    decoded = decode(push(MAX_MESSAGE_PATTERNS))
    assert isinstance(decoded, Push) and len(decoded.patterns) == MAX_MESSAGE_PATTERNS
    with pytest.raises(ProtocolError, match="pattern tombstones per message"):
        decode(push(MAX_MESSAGE_PATTERNS + 1))


def test_the_largest_hello_fits_the_hello_limit() -> None:
    from crdtcache.core._format import MAX_CLUSTER_CHARS, MAX_NODE_ID_CHARS
    from crdtcache.core._hlc import MAX_TS
    from crdtcache.wire._codec import MAX_HELLO_BYTES

    wide = "\U0001f600"
    hello = Hello(1 << 16, wide * MAX_CLUSTER_CHARS, wide * MAX_NODE_ID_CHARS, 65535, MAX_TS)
    assert len(encode(hello)) <= MAX_HELLO_BYTES
    assert decode(encode(hello), max_bytes=MAX_HELLO_BYTES) == hello


def test_a_refusal_shows_a_hostile_value_briefly() -> None:
    # A stamp field holding a 1000-deep list: the refusal quotes a few levels only.
    deep = b"\x91" * 1000 + b"\x01"
    body = b"\x98\x02\x91\x96\xa1k\x00\x01" + deep + b"\xa1n\xc0\x90\xc0\x01\x02\x00\x00"
    with pytest.raises(ProtocolError) as info:
        decode(body)
    assert len(str(info.value)) < 300
