"""The wire format: gossip messages to and from msgpack frame bodies.

Every body is one msgpack array ``[type, ...fields]``. Decoding is one bounded
``msgpack.unpackb`` per frame (lengths capped by the frame size, ``strict_map_key``,
ext types refused, never pickle), then a strict shape check of every field, so a
decoded message is always well-formed. Anything else raises :class:`ProtocolError`.

Entries travel as ``[key, kind, value, ts, origin, expires]`` where ``kind`` says how
to read ``value``: a plain scalar, a packed list/dict (validated by
:func:`~crdtcache.core.unpack_stored`), a tombstone, or a stub (value not held).

Versions: :data:`PROTOCOL_VERSION` (in the :class:`Hello`) versions this message set;
the authenticated handshake of ``secret=`` (:class:`AuthHello` … :class:`AuthAccept`,
driven by :mod:`crdtcache.wire._auth`) announces its own :data:`AUTH_VERSION` in
its first frame, so a node that does not speak it refuses the stream at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import msgpack

from crdtcache._errors import ProtocolError
from crdtcache.core import (
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
from crdtcache.wire._framing import MAX_FRAME_BYTES

__all__ = [
    "ADMIN_OPS",
    "AdminReply",
    "AdminRequest",
    "AUTH_VERSION",
    "MAX_HELLO_BYTES",
    "MAX_NODE_ID_CHARS",
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
    "WireMessage",
    "decode",
    "encode",
]

#: Most entries, keys or marks one message may carry.
MAX_ITEMS: Final = 1 << 16
#: Version of the authenticated handshake and sealed frames (``secret=``).
AUTH_VERSION: Final = 1
#: Bytes of a handshake nonce and of an HMAC-SHA256 tag.
NONCE_BYTES: Final = 32
TAG_BYTES: Final = 32
#: Secrets a keyring may hold (the first signs, all are accepted); the challenge always
#: carries this many tags so that it does not reveal how many secrets a node holds.
MAX_SECRETS: Final = 4
#: Largest encoded hello carried inside the authenticated handshake.
MAX_HELLO_BYTES: Final = 1024

_HELLO, _PUSH, _ACK, _SYNC_REQ, _SYNC_RESP, _PING, _FETCH, _FETCH_REPLY, _BYE, _PEERS = range(1, 11)
_AUTH_HELLO, _AUTH_CHALLENGE, _AUTH_PROOF, _AUTH_ACCEPT = range(11, 15)
_ADMIN, _ADMIN_REPLY = 15, 16
#: Operations a connected client may ask of a node, with their argument counts.
ADMIN_OPS: Final = {"get": 1, "set": 3, "delete": 1, "stats": 0}


@dataclass(frozen=True, slots=True)
class Hello:
    """The first frame each side sends: who it is and what it speaks.

    ``incarnation`` changes every time a node starts, so a peer can tell a restarted
    node's new connection from a stale one. ``port`` is where the node listens.
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
class PeerList:
    """Peers the sender is connected to, ``(node id, host, port)``: a full mesh forms
    from a single seed. Addresses are hints; each still has to pass the handshake."""

    peers: tuple[tuple[str, str, int], ...]


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
WireMessage = Message | Hello | Bye | PeerList | AdminRequest | AdminReply | AuthMessage


# ------------------------------------------------------------------ encoding
def _entries(entries: tuple[tuple[str, Entry], ...]) -> list[list[Any]]:
    return [record_of(k, e) for k, e in entries]


def _patterns(patterns: tuple[PatternTombstone, ...]) -> list[list[Any]]:
    return [[p.pattern, p.ts, p.origin] for p in patterns]


def encode(message: WireMessage) -> bytes:
    """Encode one message as a frame body (without the length prefix)."""
    m = message
    body: list[Any]
    if isinstance(m, Push):
        body = [_PUSH, _entries(m.entries), _patterns(m.patterns), m.origin, m.since, m.upto]
        body += [m.hops, m.ack]
    elif isinstance(m, SyncResponse):
        body = [_SYNC_RESP, m.exchange, m.part, m.parts, _entries(m.entries)]
        body += [_patterns(m.patterns), dict(m.marks), m.full]
    elif isinstance(m, SyncRequest):
        body = [_SYNC_REQ, m.exchange, dict(m.marks)]
    elif isinstance(m, Ack):
        body = [_ACK, m.ack]
    elif isinstance(m, Ping):
        body = [_PING, m.seq]
    elif isinstance(m, Fetch):
        body = [_FETCH, m.request, list(m.keys)]
    elif isinstance(m, FetchReply):
        body = [_FETCH_REPLY, m.request, _entries(m.entries)]
    elif isinstance(m, Hello):
        body = [_HELLO, m.version, m.cluster, m.node, m.port, m.incarnation]
    elif isinstance(m, Bye):
        body = [_BYE]
    elif isinstance(m, PeerList):
        body = [_PEERS, [list(p) for p in m.peers]]
    elif isinstance(m, AdminRequest):
        body = [_ADMIN, m.request, m.op, list(m.args)]
    elif isinstance(m, AdminReply):
        body = [_ADMIN_REPLY, m.request, m.ok, m.result]
    elif isinstance(m, AuthHello):
        body = [_AUTH_HELLO, m.version, m.nonce]
    elif isinstance(m, AuthChallenge):
        body = [_AUTH_CHALLENGE, m.nonce, list(m.tags)]
    elif isinstance(m, AuthProof):
        body = [_AUTH_PROOF, m.hello, m.tag]
    elif isinstance(m, AuthAccept):
        body = [_AUTH_ACCEPT, m.hello, m.tag]
    else:
        raise TypeError(f"cannot encode {type(m).__name__}")
    packed: bytes = msgpack.packb(body, use_bin_type=True)
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


def _dec_entry(raw: object) -> tuple[str, Entry]:
    if type(raw) is not list or len(raw) != 6:
        _bad("an entry must be a 6-item list")
    try:
        return entry_from_record(*raw)
    except InvalidRecord as exc:
        _bad(str(exc))


def _dec_entries(raw: object) -> tuple[tuple[str, Entry], ...]:
    return tuple(_dec_entry(x) for x in _list(raw, "entries"))


def _dec_patterns(raw: object) -> tuple[PatternTombstone, ...]:
    try:
        return tuple(check_pattern_record(p) for p in _list(raw, "patterns"))
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


def decode(body: bytes, max_bytes: int = MAX_FRAME_BYTES) -> WireMessage:
    """Decode and validate one frame body; raise :class:`ProtocolError` on anything wrong."""
    if len(body) > max_bytes:
        _bad("frame over the size limit")
    try:
        obj = msgpack.unpackb(
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
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack's errors (and UnicodeDecodeError): all junk
        raise ProtocolError(f"undecodable frame: {type(exc).__name__}: {exc}") from exc
    if type(obj) is not list or not obj or type(obj[0]) is not int:
        _bad("a frame must be a list starting with a message type")
    kind = obj[0]
    if kind == _PUSH:
        _arity(obj, 8, "push")
        origin = None if obj[3] is None else _str(obj[3], "push origin")
        return Push(
            _dec_entries(obj[1]),
            _dec_patterns(obj[2]),
            origin,
            _int(obj[4], "since", -1),
            _int(obj[5], "upto", -1),
            _int(obj[6], "hops", 0, 255),
            _int(obj[7], "ack"),
        )
    if kind == _SYNC_RESP:
        _arity(obj, 8, "sync response")
        parts = _int(obj[3], "parts", 1, MAX_ITEMS)
        if type(obj[7]) is not bool:
            _bad("full must be a bool")
        return SyncResponse(
            _int(obj[1], "exchange"),
            _int(obj[2], "part", 0, parts - 1),
            parts,
            _dec_entries(obj[4]),
            _dec_patterns(obj[5]),
            _dec_marks(obj[6]),
            obj[7],
        )
    if kind == _SYNC_REQ:
        _arity(obj, 3, "sync request")
        return SyncRequest(_int(obj[1], "exchange"), _dec_marks(obj[2]))
    if kind == _ACK:
        _arity(obj, 2, "ack")
        return Ack(_int(obj[1], "ack"))
    if kind == _PING:
        _arity(obj, 2, "ping")
        return Ping(_int(obj[1], "seq"))
    if kind == _FETCH:
        _arity(obj, 3, "fetch")
        keys = tuple(_key(k) for k in _list(obj[2], "keys"))
        return Fetch(_int(obj[1], "request"), keys)
    if kind == _FETCH_REPLY:
        _arity(obj, 3, "fetch reply")
        return FetchReply(_int(obj[1], "request"), _dec_entries(obj[2]))
    if kind == _HELLO:
        _arity(obj, 6, "hello")
        return Hello(
            _int(obj[1], "version", 0, 1 << 16),
            _str(obj[2], "cluster", MAX_CLUSTER_CHARS),
            _str(obj[3], "node id"),
            _int(obj[4], "port", 0, 65535),
            _int(obj[5], "incarnation"),
        )
    if kind == _BYE:
        _arity(obj, 1, "bye")
        return Bye()
    if kind == _PEERS:
        _arity(obj, 2, "peer list")
        peers = []
        for p in _list(obj[1], "peers"):
            if type(p) is not list or len(p) != 3:
                _bad("a peer must be [node, host, port]")
            peers.append((_str(p[0], "node id"), _str(p[1], "host"), _int(p[2], "port", 1, 65535)))
        return PeerList(tuple(peers))
    if kind == _ADMIN:
        _arity(obj, 4, "admin request")
        op = obj[2]
        if op not in ADMIN_OPS:
            _bad(f"unknown admin operation {op!r}")
        args = _list(obj[3], "admin arguments")
        if len(args) != ADMIN_OPS[op]:
            _bad(f"admin {op} takes {ADMIN_OPS[op]} arguments")
        if op in ("get", "set", "delete"):
            _key(args[0])
        if op == "set" and args[2] is not None and type(args[2]) not in (int, float):
            _bad("admin set ttl must be a number or nil")
        return AdminRequest(_int(obj[1], "request"), op, tuple(args))
    if kind == _ADMIN_REPLY:
        _arity(obj, 4, "admin reply")
        if type(obj[2]) is not bool:
            _bad("admin reply ok must be a bool")
        return AdminReply(_int(obj[1], "request"), obj[2], obj[3])
    if kind == _AUTH_HELLO:
        _arity(obj, 3, "auth hello")
        return AuthHello(
            _int(obj[1], "auth version", 0, 1 << 16),
            _bin(obj[2], "nonce", NONCE_BYTES, NONCE_BYTES),
        )
    if kind == _AUTH_CHALLENGE:
        _arity(obj, 3, "auth challenge")
        raw_tags = obj[2]
        if type(raw_tags) is not list or len(raw_tags) != MAX_SECRETS:
            _bad(f"an auth challenge carries exactly {MAX_SECRETS} tags")
        tags = tuple(_bin(t, "tag", TAG_BYTES, TAG_BYTES) for t in raw_tags)
        return AuthChallenge(_bin(obj[1], "nonce", NONCE_BYTES, NONCE_BYTES), tags)
    if kind in (_AUTH_PROOF, _AUTH_ACCEPT):
        _arity(obj, 3, "auth proof or accept")
        hello = _bin(obj[1], "hello", 1, MAX_HELLO_BYTES)
        tag = _bin(obj[2], "tag", TAG_BYTES, TAG_BYTES)
        return AuthProof(hello, tag) if kind == _AUTH_PROOF else AuthAccept(hello, tag)
    _bad(f"unknown message type {kind}")
