"""Cluster authentication with a shared secret: a sans-IO handshake and sealed frames.

Theory of operation
-------------------
With ``secret=``, every stream starts with four frames before any state is exchanged
(I is the node that dialled, R the node that accepted; ``n_i`` and ``n_r`` are 32 random
bytes drawn for this stream only, ``h_i`` and ``h_r`` the two encoded :class:`Hello`)::

    I -> R  AuthHello(AUTH_VERSION, n_i)
    R -> I  AuthChallenge(n_r, [tag(k_s, "challenge") for each secret s of R's keyring,
                                padded with random bytes to MAX_SECRETS])
    I -> R  AuthProof(h_i, tag(k, "proof", h_i))         I checked R's challenge first
    R -> I  AuthAccept(h_r, tag(k, "accept", h_i, h_r))  R checked I's proof first

R answers :class:`Refuse` (a reason code, see :mod:`crdtcache.core._link`) instead of
``AuthAccept`` when I's proven hello fails its checks (another cluster): I raises
:class:`~crdtcache.core._link.LinkRefused`. Nobody gets that far without the secret.

For a secret ``s`` the keys are derived with HKDF (RFC 5869) over HMAC-SHA256::

    prk      = HMAC(key = n_i || n_r, s)                       HKDF-Extract, salt = nonces
    k        = Expand(prk, "crdtcache auth v1 handshake")
    tag(k,…) = HMAC(k, every field length-prefixed, the label first)
    th       = SHA-256(n_i, n_r, h_i, h_r, length-prefixed)    the transcript
    key I→R  = Expand(prk, "crdtcache auth v1 initiator" || th)
    key R→I  = Expand(prk, "crdtcache auth v1 responder" || th)

After the handshake every frame body is ``seq || payload || HMAC(key, seq || payload)``
where ``seq`` is 8 bytes counting 0, 1, 2… in each direction. :class:`FrameOpener`
checks the tag with :func:`hmac.compare_digest`, then that ``seq`` is exactly the next.

The handshake is a state machine with no IO (like h11): :meth:`Handshake.receive`
takes a frame body and returns the body to send back, if any. Bad input from the peer
raises :class:`AuthError` (a :class:`ProtocolError`); calling a method in the wrong state
is a local bug and raises :class:`RuntimeError`.

What it guarantees
  * Nobody completes the handshake without one secret in common with this node. The
    responder proves first, over both nonces and without revealing anything else; the
    initiator reveals its hello (node id, cluster, port, incarnation) only to a
    responder that proved, and the responder its own only to an initiator that proved.
    A party without a secret sees a version number, nonces and tags, and can change
    nothing: its frames never reach the engine.
  * Freshness: both nonces enter every tag and key, so nothing recorded from another
    stream verifies here. Labels differ per step and role, so no tag can be reflected
    to its maker or replayed at another step.
  * After the handshake, a frame that is forged, altered, replayed, reordered, cut
    out of the middle or reflected (the two directions have different keys) closes the
    connection at that frame. Both hellos, hence both node ids, are bound into the keys.
  * Rotation: a keyring is a list of secrets; the responder shows a tag for each (its
    first one first), the initiator uses the first of its own secrets that matches one.
    A node with ``[new, old]`` talks to nodes with ``[old]``, ``[new]`` or both.

What it does not guarantee
  * Confidentiality. Frames are authenticated, not encrypted: whoever can watch the
    wire reads the hellos and the data. Use ``ssl=`` (mutual TLS) for that; the two
    combine, the handshake then runs inside TLS.
  * Safety of a guessable secret: a recorded challenge lets an attacker test guesses
    offline. Hence :data:`MIN_SECRET_BYTES`; use random bytes (``secrets.token_bytes``).
  * Protection against a relay: a party may forward bytes between two genuine peers,
    as any TCP proxy does; it learns what a passive observer learns and changes nothing.
  * Detecting truncation: a stream cut after frame ``n`` looks like a peer that sent
    ``n`` frames and dropped the link; gossip repairs it like any lost link.
  * Good behaviour of an authenticated peer: it may still send valid but unwelcome
    gossip; the engine keeps refusing stamps beyond ``max_drift`` from anyone.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, NoReturn

from crdtcache._errors import ConfigError, ProtocolError
from crdtcache.core._link import IdentityError, LinkRefused
from crdtcache.wire._codec import (
    AUTH_VERSION,
    MAX_HELLO_BYTES,
    MAX_SECRETS,
    NONCE_BYTES,
    TAG_BYTES,
    AuthAccept,
    AuthChallenge,
    AuthHello,
    AuthProof,
    Hello,
    Refuse,
    WireMessage,
    decode,
    encode,
)

__all__ = [
    "AWAIT_ACCEPT",
    "AWAIT_CHALLENGE",
    "AWAIT_PROOF",
    "DONE",
    "FAILED",
    "MAX_HANDSHAKE_BYTES",
    "MIN_SECRET_BYTES",
    "PEER_PROVED",
    "SEALED_OVERHEAD",
    "START",
    "AuthError",
    "FrameOpener",
    "FrameSealer",
    "Handshake",
    "SessionKeys",
    "keyring",
    "refuse_secret_mismatch",
]

#: Shortest secret accepted (bytes): shorter ones are open to offline guessing.
MIN_SECRET_BYTES: Final = 16
#: Largest handshake frame body read before the peer has proved anything.
MAX_HANDSHAKE_BYTES: Final = MAX_HELLO_BYTES + 256
SEQ: Final = struct.Struct(">Q")
#: Bytes a sealed frame adds to its payload: the sequence number and the tag.
SEALED_OVERHEAD: Final = SEQ.size + TAG_BYTES
_MAX_SEQ: Final = (1 << 64) - 1

_LABEL_HANDSHAKE: Final = b"crdtcache auth v1 handshake"
_LABEL_I2R: Final = b"crdtcache auth v1 initiator"
_LABEL_R2I: Final = b"crdtcache auth v1 responder"
_STEP_CHALLENGE: Final = b"challenge"
_STEP_PROOF: Final = b"proof"
_STEP_ACCEPT: Final = b"accept"

# States. The initiator goes START -> AWAIT_CHALLENGE -> AWAIT_ACCEPT -> DONE; the
# responder START -> AWAIT_PROOF -> PEER_PROVED -> DONE (the node looks at the proven
# hello in PEER_PROVED and calls accept()). Any failure ends in FAILED.
START: Final = "start"
AWAIT_CHALLENGE: Final = "await-challenge"
AWAIT_PROOF: Final = "await-proof"
AWAIT_ACCEPT: Final = "await-accept"
PEER_PROVED: Final = "peer-proved"
DONE: Final = "done"
FAILED: Final = "failed"

#: What each state may receive, by role (True = initiator). A state missing here
#: receives nothing.
_EXPECTED: Final[dict[tuple[bool, str], type]] = {
    (False, START): AuthHello,
    (True, AWAIT_CHALLENGE): AuthChallenge,
    (False, AWAIT_PROOF): AuthProof,
    (True, AWAIT_ACCEPT): AuthAccept,
}


class AuthError(IdentityError):
    """The peer failed authentication, or sent a frame that is not authentic.

    ``reply`` is a frame body worth sending before closing (it tells a peer that
    has no secret why it is refused), or None.
    """

    def __init__(self, message: str, reply: bytes | None = None) -> None:
        super().__init__(message)
        self.reply = reply


def refuse_secret_mismatch(message: WireMessage, hello: Hello | None) -> None:
    """A node without a secret got ``message`` first: refuse an authenticated opening.

    Raises :class:`AuthError` for an :class:`AuthHello` (the peer requires a secret),
    carrying our plain ``hello`` as the reply (when given) so that the peer's log says
    why too. Anything else is left to the plain handshake.
    """
    if isinstance(message, AuthHello):
        raise AuthError(
            "the peer requires a cluster secret (secret=) and this node has none",
            None if hello is None else encode(hello),
        )


def keyring(secret: bytes | Sequence[bytes]) -> tuple[bytes, ...]:
    """Validate a ``secret=`` option: one secret, or a list (the first signs).

    Returns the secrets as a tuple of bytes. Raises :class:`ConfigError` for a str, an
    empty list, more than ``MAX_SECRETS`` secrets, or one shorter than
    ``MIN_SECRET_BYTES``.
    """
    if isinstance(secret, bytes | bytearray):
        secrets: list[object] = [secret]
    elif isinstance(secret, str) or not isinstance(secret, Sequence):
        raise ConfigError(f"secret must be bytes or a list of bytes, not {type(secret).__name__}")
    else:
        secrets = list(secret)
    if not 1 <= len(secrets) <= MAX_SECRETS:
        raise ConfigError(f"secret must hold 1 to {MAX_SECRETS} secrets, got {len(secrets)}")
    ring = []
    for s in secrets:
        if not isinstance(s, bytes | bytearray):
            raise ConfigError(f"each secret must be bytes, not {type(s).__name__}")
        if len(s) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"a secret must be at least {MIN_SECRET_BYTES} bytes (got {len(s)}); "
                "use secrets.token_bytes(32)"
            )
        ring.append(bytes(s))
    return tuple(ring)


# ------------------------------------------------------------ primitives
def _lp(*fields: bytes) -> bytes:
    """Length-prefix each field, so that no two different lists encode alike."""
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def _extract(nonce_i: bytes, nonce_r: bytes, secret: bytes) -> bytes:
    return hmac.digest(nonce_i + nonce_r, secret, "sha256")


def _expand(prk: bytes, info: bytes) -> bytes:
    # One HKDF-Expand block: every key here is exactly one SHA-256 output long.
    return hmac.digest(prk, info + b"\x01", "sha256")


def _tag(key: bytes, step: bytes, *fields: bytes) -> bytes:
    return hmac.digest(key, _lp(step, *fields), "sha256")


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The two directional frame keys of one authenticated stream."""

    send: bytes
    receive: bytes

    def __repr__(self) -> str:
        return "SessionKeys(<secret>)"  # keys never end up in a log line or traceback


class Handshake:
    """One side of the authenticated handshake, with no IO.

    ``hello`` is this node's hello, revealed only to a peer that proved the secret.
    The initiator calls :meth:`start` and sends what it returns; both sides feed
    every frame body received to :meth:`receive` and send what it returns. The
    responder, in state ``PEER_PROVED``, inspects :attr:`peer_hello` and calls
    :meth:`accept`. In state ``DONE``, :meth:`session_keys` gives the frame keys.
    """

    def __init__(
        self,
        keyring: Sequence[bytes],
        hello: Hello,
        *,
        initiator: bool,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not 1 <= len(keyring) <= MAX_SECRETS:
            raise ValueError("a handshake needs a keyring of 1 to MAX_SECRETS secrets")
        self.initiator = initiator
        self.state = START
        #: The peer's hello, once it has proved the secret.
        self.peer_hello: Hello | None = None
        self._keyring = tuple(keyring)
        self._random = random_bytes
        self._hello = encode(hello)
        if len(self._hello) > MAX_HELLO_BYTES:
            raise ValueError("hello too large for the authenticated handshake")
        self._nonce_i = b""
        self._nonce_r = b""
        self._peer_hello_bytes = b""
        # (prk, handshake key) per candidate secret; one is left once the peer proved.
        self._candidates: list[tuple[bytes, bytes]] = []
        self._keys: SessionKeys | None = None

    # ------------------------------------------------------------ driving
    def start(self) -> bytes:
        """Initiator: the first frame body (an :class:`AuthHello`) to send."""
        if not (self.initiator and self.state == START):
            self._misuse("start()")
        self._nonce_i = self._nonce()
        self.state = AWAIT_CHALLENGE
        return encode(AuthHello(AUTH_VERSION, self._nonce_i))

    def receive(self, body: bytes) -> bytes | None:
        """Take one frame body from the peer; return the body to send back, if any.

        Raises :class:`AuthError` (or another :class:`ProtocolError` for a malformed
        frame) when the peer fails; the handshake is then ``FAILED`` for good.
        """
        expected = _EXPECTED.get((self.initiator, self.state))
        if expected is None:
            self._misuse("receive()")
        try:
            message = decode(body, MAX_HANDSHAKE_BYTES)
            if not isinstance(message, expected):
                self._wrong_message(message)
            if isinstance(message, AuthHello):
                return self._on_hello(message)
            if isinstance(message, AuthChallenge):
                return self._on_challenge(message)
            if isinstance(message, AuthProof):
                self._on_proof(message)
                return None
            assert isinstance(message, AuthAccept)
            self._on_accept(message)
            return None
        except ProtocolError:
            self.state = FAILED
            raise

    def accept(self) -> bytes:
        """Responder, after checking :attr:`peer_hello`: the :class:`AuthAccept` to send."""
        if self.initiator or self.state != PEER_PROVED:
            self._misuse("accept()")
        prk, key = self._candidates[0]
        tag = _tag(key, _STEP_ACCEPT, self._peer_hello_bytes, self._hello)
        i2r, r2i = _session(prk, self._nonce_i, self._nonce_r, self._peer_hello_bytes, self._hello)
        self._keys = SessionKeys(send=r2i, receive=i2r)
        self.state = DONE
        return encode(AuthAccept(self._hello, tag))

    def session_keys(self) -> SessionKeys:
        """The directional frame keys (state ``DONE`` only)."""
        if self._keys is None:
            self._misuse("session_keys()")
        return self._keys

    # ------------------------------------------------------------ steps
    def _on_hello(self, m: AuthHello) -> bytes:
        if m.version != AUTH_VERSION:
            raise AuthError(f"authentication version {m.version}, this node speaks {AUTH_VERSION}")
        self._nonce_i, self._nonce_r = m.nonce, self._nonce()
        self._candidates = [self._derive(s) for s in self._keyring]
        tags = [_tag(key, _STEP_CHALLENGE) for _prk, key in self._candidates]
        # Random padding is indistinguishable from tags: the keyring's size stays private.
        tags += [self._random(TAG_BYTES) for _ in range(MAX_SECRETS - len(tags))]
        self.state = AWAIT_PROOF
        return encode(AuthChallenge(self._nonce_r, tuple(tags)))

    def _on_challenge(self, m: AuthChallenge) -> bytes:
        self._nonce_r = m.nonce
        chosen = None
        for secret in self._keyring:  # our order: our signing secret wins when shared
            prk, key = self._derive(secret)
            expected = _tag(key, _STEP_CHALLENGE)
            matched = False
            for tag in m.tags:
                matched |= hmac.compare_digest(expected, tag)
            if matched:
                chosen = (prk, key)
                break
        if chosen is None:
            raise AuthError(
                "the peer does not know the cluster secret "
                "(its challenge matches no secret of this node)"
            )
        self._candidates = [chosen]
        self.state = AWAIT_ACCEPT
        return encode(AuthProof(self._hello, _tag(chosen[1], _STEP_PROOF, self._hello)))

    def _on_proof(self, m: AuthProof) -> None:
        chosen = None
        for prk, key in self._candidates:
            if hmac.compare_digest(_tag(key, _STEP_PROOF, m.hello), m.tag):
                chosen = (prk, key)
                break
        if chosen is None:
            raise AuthError(
                "the peer does not know the cluster secret "
                "(its proof matches no secret of this node)"
            )
        self._candidates = [chosen]
        self.peer_hello = self._proven_hello(m.hello)
        self.state = PEER_PROVED

    def _on_accept(self, m: AuthAccept) -> None:
        prk, key = self._candidates[0]
        if not hmac.compare_digest(_tag(key, _STEP_ACCEPT, self._hello, m.hello), m.tag):
            raise AuthError("the peer's accept does not verify (altered handshake)")
        self.peer_hello = self._proven_hello(m.hello)
        i2r, r2i = _session(prk, self._nonce_i, self._nonce_r, self._hello, m.hello)
        self._keys = SessionKeys(send=i2r, receive=r2i)
        self.state = DONE

    # ------------------------------------------------------------ helpers
    def _derive(self, secret: bytes) -> tuple[bytes, bytes]:
        prk = _extract(self._nonce_i, self._nonce_r, secret)
        return prk, _expand(prk, _LABEL_HANDSHAKE)

    def _nonce(self) -> bytes:
        nonce = self._random(NONCE_BYTES)
        if len(nonce) != NONCE_BYTES:
            raise RuntimeError("random_bytes returned the wrong number of bytes")
        return nonce

    def _proven_hello(self, body: bytes) -> Hello:
        self._peer_hello_bytes = body
        hello = decode(body, MAX_HELLO_BYTES)
        if not isinstance(hello, Hello):
            raise AuthError(f"the authenticated hello is a {type(hello).__name__}")
        return hello

    def _wrong_message(self, message: WireMessage) -> None:
        if isinstance(message, Hello):
            # A peer without a secret speaks the plain protocol; say so on both sides.
            reply = None
            if not self.initiator:
                reply = encode(AuthHello(AUTH_VERSION, self._nonce()))
            raise AuthError(
                "the peer has no cluster secret (it sent an unauthenticated hello) "
                "and this node requires one",
                reply,
            )
        if isinstance(message, Refuse) and self.state == AWAIT_ACCEPT:
            # The responder checked the hello we revealed with our proof and refused it.
            raise LinkRefused(message.reason)
        expected = _EXPECTED[(self.initiator, self.state)].__name__
        raise AuthError(
            f"expected {expected} in the authenticated handshake, got {type(message).__name__}"
        )

    def _misuse(self, what: str) -> NoReturn:
        role = "initiator" if self.initiator else "responder"
        raise RuntimeError(f"{what} is not allowed for the {role} in state {self.state}")


def _session(
    prk: bytes, nonce_i: bytes, nonce_r: bytes, hello_i: bytes, hello_r: bytes
) -> tuple[bytes, bytes]:
    """The (initiator -> responder, responder -> initiator) frame keys."""
    transcript = hashlib.sha256(_lp(nonce_i, nonce_r, hello_i, hello_r)).digest()
    return _expand(prk, _LABEL_I2R + transcript), _expand(prk, _LABEL_R2I + transcript)


# ------------------------------------------------------------ sealed frames
class FrameSealer:
    """Seals outgoing frame bodies: ``seq || payload || tag``, ``seq`` counting from 0.

    Seal a body only when it is certain to be written: a skipped sequence number
    makes the peer close the stream.
    """

    __slots__ = ("_mac", "next_seq")

    def __init__(self, key: bytes) -> None:
        # Keyed once; each frame copies the keyed state instead of rekeying.
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self.next_seq = 0

    def seal(self, payload: bytes) -> bytes:
        """Return the sealed body for ``payload`` and advance the sequence number."""
        if self.next_seq > _MAX_SEQ:  # 2**64 frames: unreachable, but never wrap
            raise ProtocolError("sequence numbers exhausted on this stream")
        head = SEQ.pack(self.next_seq)
        mac = self._mac.copy()
        mac.update(head)
        mac.update(payload)
        self.next_seq += 1
        return b"".join((head, payload, mac.digest()))


class FrameOpener:
    """Checks incoming sealed bodies: the tag first, then the sequence number."""

    __slots__ = ("_mac", "next_seq")

    def __init__(self, key: bytes) -> None:
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self.next_seq = 0

    def open(self, body: bytes) -> bytes:
        """Return the payload of a sealed body; raise :class:`AuthError` if not authentic."""
        if len(body) < SEALED_OVERHEAD:
            raise AuthError(f"sealed frame of {len(body)} bytes is shorter than its tag")
        view = memoryview(body)
        mac = self._mac.copy()
        mac.update(view[:-TAG_BYTES])
        if not hmac.compare_digest(mac.digest(), view[-TAG_BYTES:]):
            raise AuthError(
                f"frame {self.next_seq} failed authentication (altered, or not sent by this peer)"
            )
        # The tag covers the sequence number: a mismatch here is a genuine frame of this
        # stream played again or out of its place, never a corrupted number.
        (seq,) = SEQ.unpack_from(body)
        if seq != self.next_seq:
            if seq < self.next_seq:
                raise AuthError(f"replayed frame (sequence {seq} again, expected {self.next_seq})")
            raise AuthError(
                f"frame out of order (sequence {seq}, expected {self.next_seq}): "
                "reordered or removed in transit"
            )
        self.next_seq += 1
        return body[SEQ.size : -TAG_BYTES]
