"""The wire format: gossip messages to and from msgpack frame bodies.

Every body is one msgpack array ``[type, ...fields]``. Decoding is one bounded
``msgpack.unpackb`` per frame (lengths capped by the frame size, ``strict_map_key``,
ext types refused, never pickle), then a strict shape check of every field, so a
decoded message is always well-formed. Anything else raises :class:`ProtocolError`.

*Budgets per frame.* msgpack's own limits are per array; a frame of nested empty
arrays (one byte each, ~64 bytes each as Python lists) would cost ~70 times its size
to refuse. So :func:`decode` holds every frame to a budget of containers (arrays and
maps: one per :data:`BYTES_PER_CONTAINER` bytes, plus :data:`MIN_CONTAINERS`) and of
items in them (:data:`MAX_FRAME_ITEMS`), refusing the frame as soon as one runs out:
the memory to decode or refuse any frame is a small multiple of its size. A frame
whose bytes cannot hold that many containers (counted in one pass in C) skips the
count. Nesting is bounded by msgpack's parser, and no accepted message nests deeper
than :data:`MAX_DEPTH` (the free-form admin fields are checked).

Entries travel as ``[key, kind, value, ts, origin, expires]`` where ``kind`` says how
to read ``value``: a plain scalar, a packed list/dict (validated by
:func:`~crdtcache.core.unpack_stored`), a tombstone, or a stub (value not held).

Versions: :data:`PROTOCOL_VERSION` (in the :class:`Hello`) versions this message set;
the authenticated handshake of ``secret=`` (:class:`AuthHello` … :class:`AuthAccept`,
driven by :mod:`crdtcache.wire._auth`) announces its own :data:`AUTH_VERSION` in
its first frame, so a node that does not speak it refuses the stream at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import msgpack

from crdtcache._errors import ProtocolError
from crdtcache.core import (
    DEFAULT_MAX_VALUE_BYTES,
    MAX_KEY_CHARS,
    PROTOCOL_VERSION,
    Ack,
    Entry,
    Fetch,
    FetchReply,
    Message,
    PatternTombstone,
    Ping,
    Push,
    SyncRequest,
    SyncResponse,
)
from crdtcache.core._format import (
    MAX_CLUSTER_CHARS,
    MAX_NODE_ID_CHARS,
    InvalidRecord,
    check_marks,
    check_pattern_record,
    entry_from_record,
    record_of,
)
from crdtcache.core._hlc import MAX_TS
from crdtcache.core._messages import (
    AdminReply,
    AdminRequest,
    Bye,
    Hello,
    LinkMessage,
    PeerList,
    Refuse,
)
from crdtcache.core._patterns import MAX_MESSAGE_PATTERNS
from crdtcache.wire._framing import MAX_FRAME_BYTES

__all__ = [
    "ADMIN_OPS",
    "AdminReply",
    "AdminRequest",
    "AUTH_VERSION",
    "MAX_DEPTH",
    "MAX_FRAME_ITEMS",
    "MAX_HELLO_BYTES",
    "MAX_MESSAGE_PATTERNS",
    "MAX_NODE_ID_CHARS",
    "MAX_REASON_CHARS",
    "MAX_SECRETS",
    "NONCE_BYTES",
    "PROTOCOL_VERSION",
    "TAG_BYTES",
    "AuthAccept",
    "AuthChallenge",
    "AuthHello",
    "AuthProof",
    "Bye",
    "Hello",
    "PeerList",
    "Refuse",
    "WireMessage",
    "decode",
    "encode",
]

#: Most entries, keys or marks one message may carry.
MAX_ITEMS: Final = 1 << 16
#: Most items (elements of every array, keys and values of every map) in one frame.
MAX_FRAME_ITEMS: Final = 1 << 19
#: A frame may hold one container (array or map) per this many bytes of its body...
BYTES_PER_CONTAINER: Final = 8
#: ...plus this many.
MIN_CONTAINERS: Final = 1024
#: Deepest nesting of an accepted message (admin arguments and results included).
MAX_DEPTH: Final = 32
#: Version of the authenticated handshake and sealed frames (``secret=``).
AUTH_VERSION: Final = 1
#: Bytes of a handshake nonce and of an HMAC-SHA256 tag.
NONCE_BYTES: Final = 32
TAG_BYTES: Final = 32
#: Secrets a keyring may hold (the first signs, all are accepted); the challenge always
#: carries this many tags so that it does not reveal how many secrets a node holds.
MAX_SECRETS: Final = 4

_HELLO, _PUSH, _ACK, _SYNC_REQ, _SYNC_RESP, _PING, _FETCH, _FETCH_REPLY, _BYE, _PEERS = range(1, 11)
_AUTH_HELLO, _AUTH_CHALLENGE, _AUTH_PROOF, _AUTH_ACCEPT = range(11, 15)
_ADMIN, _ADMIN_REPLY = 15, 16
_REFUSE = 17
#: Longest refusal reason (a code such as ``"cluster"``; see :class:`Refuse`).
MAX_REASON_CHARS: Final = 32
#: Operations a connected client may ask of a node, with their argument counts.
ADMIN_OPS: Final = {"get": 1, "set": 3, "delete": 1, "stats": 0}


@dataclass(frozen=True, slots=True)
class AuthHello:
    """First frame of the authenticated handshake (initiator to responder).

    It shows only that the sender wants ``secret=`` authentication, which version of
    it, and a fresh nonce: no cluster name, node id or port.
    """

    version: int
    nonce: bytes


@dataclass(frozen=True, slots=True)
class AuthChallenge:
    """The responder's nonce and its proof of the secret over both nonces.

    ``tags`` holds one tag per secret of the responder's keyring, padded with random
    bytes to :data:`MAX_SECRETS`, so that an initiator holding any one of them (during a
    rotation) can verify it, and nobody learns the size of the keyring.
    """

    nonce: bytes
    tags: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class AuthProof:
    """The initiator's proof of the secret, and its hello (only now revealed)."""

    hello: bytes
    tag: bytes


@dataclass(frozen=True, slots=True)
class AuthAccept:
    """The responder's proof over both hellos, and its own hello."""

    hello: bytes
    tag: bytes


AuthMessage = AuthHello | AuthChallenge | AuthProof | AuthAccept
WireMessage = Message | LinkMessage | AuthMessage


# ------------------------------------------------------------------ encoding
def _entries(entries: tuple[tuple[str, Entry], ...]) -> list[list[Any]]:
    return [record_of(k, e) for k, e in entries]


def _patterns(patterns: tuple[PatternTombstone, ...]) -> list[list[Any]]:
    return [[p.pattern, p.ts, p.origin] for p in patterns]


def _encode_push(m: Push) -> list[Any]:
    entries, patterns = _entries(m.entries), _patterns(m.patterns)
    return [_PUSH, entries, patterns, m.origin, m.since, m.upto, m.hops, m.ack]


def _encode_sync_response(m: SyncResponse) -> list[Any]:
    entries, patterns = _entries(m.entries), _patterns(m.patterns)
    return [_SYNC_RESP, m.exchange, m.part, m.parts, entries, patterns, dict(m.marks), m.full]


#: How each message type becomes the fields after its type code (one line per type).
_ENCODERS: Final[dict[type, Any]] = {
    Push: _encode_push,
    SyncResponse: _encode_sync_response,
    SyncRequest: lambda m: [_SYNC_REQ, m.exchange, dict(m.marks)],
    Ack: lambda m: [_ACK, m.ack],
    Ping: lambda m: [_PING, m.seq],
    Fetch: lambda m: [_FETCH, m.request, list(m.keys)],
    FetchReply: lambda m: [_FETCH_REPLY, m.request, _entries(m.entries)],
    Hello: lambda m: [_HELLO, m.version, m.cluster, m.node, m.port, m.incarnation],
    Bye: lambda m: [_BYE],
    PeerList: lambda m: [_PEERS, [list(p) for p in m.peers]],
    AdminRequest: lambda m: [_ADMIN, m.request, m.op, list(m.args)],
    AdminReply: lambda m: [_ADMIN_REPLY, m.request, m.ok, m.result],
    Refuse: lambda m: [_REFUSE, m.reason],
    AuthHello: lambda m: [_AUTH_HELLO, m.version, m.nonce],
    AuthChallenge: lambda m: [_AUTH_CHALLENGE, m.nonce, list(m.tags)],
    AuthProof: lambda m: [_AUTH_PROOF, m.hello, m.tag],
    AuthAccept: lambda m: [_AUTH_ACCEPT, m.hello, m.tag],
}


def _largest_hello() -> int:
    widest = "\U0010ffff"  # four bytes in UTF-8
    hello = Hello(1 << 16, widest * MAX_CLUSTER_CHARS, widest * MAX_NODE_ID_CHARS, 65535, MAX_TS)
    return len(msgpack.packb(_ENCODERS[Hello](hello), use_bin_type=True))


#: Largest encoded hello (the longest cluster name and node id, in 4-byte characters):
#: the limit of a hello's frame before any handshake, and inside the authenticated one.
MAX_HELLO_BYTES: Final = _largest_hello()


def encode(message: WireMessage) -> bytes:
    """Encode one message as a frame body (without the length prefix).

    Raises ``TypeError`` for an object that is not a message, and ``TypeError`` or
    ``ValueError`` (from msgpack) for an admin result that msgpack cannot carry.
    """
    encoder = _ENCODERS.get(type(message))
    if encoder is None:
        raise TypeError(f"cannot encode {type(message).__name__}")
    packed: bytes = msgpack.packb(encoder(message), use_bin_type=True)
    return packed


# ------------------------------------------------------------------ decoding
def _bad(what: str) -> NoReturn:
    raise ProtocolError(f"malformed message: {what}")


def _ext_refused(code: int, data: bytes) -> NoReturn:
    raise ProtocolError(f"msgpack ext type {code} refused")


def _int(v: object, what: str, lo: int = 0, hi: int = MAX_TS) -> int:
    if type(v) is not int or not lo <= v <= hi:
        _bad(f"{what} must be an int in [{lo}, {hi}]")
    return v


def _str(v: object, what: str, limit: int = MAX_NODE_ID_CHARS) -> str:
    if type(v) is not str or not v or len(v) > limit:
        _bad(f"{what} must be a non-empty str of at most {limit} characters")
    return v


def _key(v: object) -> str:
    if type(v) is not str or len(v) > MAX_KEY_CHARS:
        _bad(f"a key must be a str of at most {MAX_KEY_CHARS} characters")
    return v


def _bin(v: object, what: str, lo: int, hi: int) -> bytes:
    if type(v) is not bytes or not lo <= len(v) <= hi:
        _bad(f"{what} must be bin of {lo}..{hi} bytes")
    return v


def _list(v: object, what: str) -> list[Any]:
    if type(v) is not list or len(v) > MAX_ITEMS:
        _bad(f"{what} must be a list of at most {MAX_ITEMS} items")
    return v


def _dec_entry(raw: object, limit: int) -> tuple[str, Entry]:
    if type(raw) is not list or len(raw) != 6:
        _bad("an entry must be a 6-item list")
    try:
        return entry_from_record(*raw, max_value_bytes=limit)
    except InvalidRecord as exc:
        _bad(str(exc))


def _dec_entries(raw: object, limit: int) -> tuple[tuple[str, Entry], ...]:
    return tuple(_dec_entry(x, limit) for x in _list(raw, "entries"))


def _dec_patterns(raw: object) -> tuple[PatternTombstone, ...]:
    patterns = _list(raw, "patterns")
    if len(patterns) > MAX_MESSAGE_PATTERNS:
        _bad(f"at most {MAX_MESSAGE_PATTERNS} pattern tombstones per message")
    try:
        return tuple(check_pattern_record(p) for p in patterns)
    except InvalidRecord as exc:
        _bad(str(exc))


def _dec_marks(raw: object) -> Mapping[str, int]:
    if type(raw) is dict and len(raw) > MAX_ITEMS:
        _bad("marks must be a map")
    try:
        return check_marks(raw)
    except InvalidRecord as exc:
        _bad(str(exc))


def _arity(body: list[Any], n: int, name: str) -> None:
    if len(body) != n:
        _bad(f"{name} must have {n - 1} fields")


def _push(obj: list[Any], limit: int = DEFAULT_MAX_VALUE_BYTES) -> Push:
    _arity(obj, 8, "push")
    origin = None if obj[3] is None else _str(obj[3], "push origin")
    return Push(
        _dec_entries(obj[1], limit),
        _dec_patterns(obj[2]),
        origin,
        _int(obj[4], "since", -1),
        _int(obj[5], "upto", -1),
        _int(obj[6], "hops", 0, 255),
        _int(obj[7], "ack"),
    )


def _sync_response(obj: list[Any], limit: int = DEFAULT_MAX_VALUE_BYTES) -> SyncResponse:
    _arity(obj, 8, "sync response")
    parts = _int(obj[3], "parts", 1, MAX_ITEMS)
    if type(obj[7]) is not bool:
        _bad("full must be a bool")
    return SyncResponse(
        _int(obj[1], "exchange"),
        _int(obj[2], "part", 0, parts - 1),
        parts,
        _dec_entries(obj[4], limit),
        _dec_patterns(obj[5]),
        _dec_marks(obj[6]),
        obj[7],
    )


def _sync_request(obj: list[Any]) -> SyncRequest:
    _arity(obj, 3, "sync request")
    return SyncRequest(_int(obj[1], "exchange"), _dec_marks(obj[2]))


def _ack(obj: list[Any]) -> Ack:
    _arity(obj, 2, "ack")
    return Ack(_int(obj[1], "ack"))


def _ping(obj: list[Any]) -> Ping:
    _arity(obj, 2, "ping")
    return Ping(_int(obj[1], "seq"))


def _fetch(obj: list[Any]) -> Fetch:
    _arity(obj, 3, "fetch")
    keys = tuple(_key(k) for k in _list(obj[2], "keys"))
    return Fetch(_int(obj[1], "request"), keys)


def _fetch_reply(obj: list[Any], limit: int = DEFAULT_MAX_VALUE_BYTES) -> FetchReply:
    _arity(obj, 3, "fetch reply")
    return FetchReply(_int(obj[1], "request"), _dec_entries(obj[2], limit))


def _hello(obj: list[Any]) -> Hello:
    _arity(obj, 6, "hello")
    return Hello(
        _int(obj[1], "version", 0, 1 << 16),
        _str(obj[2], "cluster", MAX_CLUSTER_CHARS),
        _str(obj[3], "node id"),
        _int(obj[4], "port", 0, 65535),
        _int(obj[5], "incarnation"),
    )


def _bye(obj: list[Any]) -> Bye:
    _arity(obj, 1, "bye")
    return Bye()


def _peer(p: object) -> tuple[str, str, int]:
    if type(p) is not list or len(p) != 3:
        _bad("a peer must be [node, host, port]")
    return _str(p[0], "node id"), _str(p[1], "host"), _int(p[2], "port", 1, 65535)


def _peer_list(obj: list[Any]) -> PeerList:
    _arity(obj, 2, "peer list")
    return PeerList(tuple(_peer(p) for p in _list(obj[1], "peers")))


def _admin_request(obj: list[Any]) -> AdminRequest:
    _arity(obj, 4, "admin request")
    op = obj[2]
    if type(op) is not str or op not in ADMIN_OPS:  # a list or map would not even hash
        shown = repr(op[:40]) if type(op) is str else f"of type {type(op).__name__}"
        _bad(f"unknown admin operation {shown}")
    args = _list(obj[3], "admin arguments")
    _shallow(args, "admin arguments")
    if len(args) != ADMIN_OPS[op]:
        _bad(f"admin {op} takes {ADMIN_OPS[op]} arguments")
    if op in ("get", "set", "delete"):
        _key(args[0])
    if op == "set" and args[2] is not None and type(args[2]) not in (int, float):
        _bad("admin set ttl must be a number or nil")
    return AdminRequest(_int(obj[1], "request"), op, tuple(args))


def _admin_reply(obj: list[Any]) -> AdminReply:
    _arity(obj, 4, "admin reply")
    if type(obj[2]) is not bool:
        _bad("admin reply ok must be a bool")
    _shallow(obj[3], "admin result")
    return AdminReply(_int(obj[1], "request"), obj[2], obj[3])


def _refuse(obj: list[Any]) -> Refuse:
    _arity(obj, 2, "refusal")
    return Refuse(_str(obj[1], "refusal reason", MAX_REASON_CHARS))


def _shallow(value: object, what: str) -> None:
    """Refuse a free-form field nested deeper than :data:`MAX_DEPTH` (walked without
    recursion; the frame's item budget bounds the walk)."""
    level: list[object] = [value]
    for _ in range(MAX_DEPTH):
        below: list[object] = []
        for v in level:
            if type(v) is list:
                below += v
            elif type(v) is dict:
                below += v.values()
        if not below:
            return
        level = below
    _bad(f"{what} nested deeper than {MAX_DEPTH}")


def _auth_hello(obj: list[Any]) -> AuthHello:
    _arity(obj, 3, "auth hello")
    return AuthHello(
        _int(obj[1], "auth version", 0, 1 << 16),
        _bin(obj[2], "nonce", NONCE_BYTES, NONCE_BYTES),
    )


def _auth_challenge(obj: list[Any]) -> AuthChallenge:
    _arity(obj, 3, "auth challenge")
    raw_tags = obj[2]
    if type(raw_tags) is not list or len(raw_tags) != MAX_SECRETS:
        _bad(f"an auth challenge carries exactly {MAX_SECRETS} tags")
    tags = tuple(_bin(t, "tag", TAG_BYTES, TAG_BYTES) for t in raw_tags)
    return AuthChallenge(_bin(obj[1], "nonce", NONCE_BYTES, NONCE_BYTES), tags)


def _auth_proof(obj: list[Any]) -> AuthProof:
    _arity(obj, 3, "auth proof or accept")
    return AuthProof(
        _bin(obj[1], "hello", 1, MAX_HELLO_BYTES), _bin(obj[2], "tag", TAG_BYTES, TAG_BYTES)
    )


def _auth_accept(obj: list[Any]) -> AuthAccept:
    proof = _auth_proof(obj)
    return AuthAccept(proof.hello, proof.tag)


#: The decoder of each message type code: checks the arity and every field.
_DECODERS: Final[dict[int, Callable[[list[Any]], WireMessage]]] = {
    _PUSH: _push,
    _SYNC_RESP: _sync_response,
    _SYNC_REQ: _sync_request,
    _ACK: _ack,
    _PING: _ping,
    _FETCH: _fetch,
    _FETCH_REPLY: _fetch_reply,
    _HELLO: _hello,
    _BYE: _bye,
    _PEERS: _peer_list,
    _ADMIN: _admin_request,
    _ADMIN_REPLY: _admin_reply,
    _REFUSE: _refuse,
    _AUTH_HELLO: _auth_hello,
    _AUTH_CHALLENGE: _auth_challenge,
    _AUTH_PROOF: _auth_proof,
    _AUTH_ACCEPT: _auth_accept,
}


#: Every byte that cannot start a msgpack array or map (deleted to count those that can).
_NOT_CONTAINER: Final = bytes(b for b in range(256) if not (0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF))


class _OverBudget(ProtocolError):
    """A frame holds more containers or items than its budget (see the module doc)."""


def _budget_hooks(
    containers: int, items: int
) -> tuple[Callable[[list[Any]], list[Any]], Callable[[dict[Any, Any]], dict[Any, Any]]]:
    """msgpack hooks that count each array and map as it completes, and stop the
    parse (freeing what it built) once either budget runs out."""
    left = [containers, items]

    def on_list(value: list[Any]) -> list[Any]:
        left[0] -= 1
        left[1] -= len(value)
        if left[0] < 0 or left[1] < 0:
            raise _OverBudget(f"frame over budget ({containers} containers, {items} items)")
        return value

    def on_map(value: dict[Any, Any]) -> dict[Any, Any]:
        left[0] -= 1
        left[1] -= 2 * len(value)
        if left[0] < 0 or left[1] < 0:
            raise _OverBudget(f"frame over budget ({containers} containers, {items} items)")
        return value

    return on_list, on_map


def _unpack(body: bytes, max_bytes: int) -> object:
    containers = len(body) // BYTES_PER_CONTAINER + MIN_CONTAINERS
    hooks: dict[str, Any] = {}
    # Each item takes a byte at least, and each container one of 36 header bytes: a
    # frame that cannot exceed either budget is parsed without counting (the common
    # case), any other one with the counting hooks.
    if len(body) > MAX_FRAME_ITEMS or len(body.translate(None, _NOT_CONTAINER)) > containers:
        hooks["list_hook"], hooks["object_hook"] = _budget_hooks(containers, MAX_FRAME_ITEMS)
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_array_len=MAX_ITEMS,
            max_map_len=MAX_ITEMS,
            max_ext_len=0,
            ext_hook=_ext_refused,
            **hooks,
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack's errors (and UnicodeDecodeError): all junk
        raise ProtocolError(f"undecodable frame: {type(exc).__name__}: {exc}") from exc


#: The decoders of the messages that carry records: they take the value limit too.
_VALUE_DECODERS: Final[dict[int, Callable[[list[Any], int], WireMessage]]] = {
    _PUSH: _push,
    _SYNC_RESP: _sync_response,
    _FETCH_REPLY: _fetch_reply,
}


def decode(
    body: bytes,
    max_bytes: int = MAX_FRAME_BYTES,
    *,
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
) -> WireMessage:
    """Decode and validate one frame body; raise :class:`ProtocolError` on anything wrong.

    ``max_value_bytes`` is the receiving node's value limit (a record over it is junk).
    """
    if len(body) > max_bytes:
        _bad("frame over the size limit")
    obj = _unpack(body, max_bytes)
    if type(obj) is not list or not obj or type(obj[0]) is not int:
        _bad("a frame must be a list starting with a message type")
    carrier = _VALUE_DECODERS.get(obj[0])
    if carrier is not None:
        return carrier(obj, max_value_bytes)
    decoder = _DECODERS.get(obj[0])
    if decoder is None:
        _bad(f"unknown message type {obj[0]}")
    return decoder(obj)
