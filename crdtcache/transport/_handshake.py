"""Opening a link over a connection: TLS, then the hellos (authenticated with a secret).

The decisions are not made here: :class:`~crdtcache.core._link.LinkSession` checks the
hellos, :class:`~crdtcache.wire._auth.Handshake` runs the secret's handshake. This
module only moves their frames over the connection, in order, within one timeout:

1. with ``ssl``, upgrade the stream to mutual TLS;
2. with a ``secret``, the four-frame authenticated handshake, which carries the hellos
   (the responder checks the initiator's hello before it reveals its own); the
   connection is sealed afterwards;
3. without one, the plain hellos, the dialer first.

It returns once the session is open, or raises :class:`ProtocolError` (an
:class:`~crdtcache.wire._auth.AuthError` for a refused identity, with a reply worth
sending in ``reply``; a :class:`~crdtcache.core._link.LinkRefused` when the peer
refused this node's hello), :class:`~crdtcache.core._link.SelfDial`, or a
:class:`~crdtcache.transport._stream.StreamError`. When this node refused the peer's
hello, the session's ``refusal`` is the message to send before closing.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Final

from crdtcache._errors import ProtocolError
from crdtcache.core._link import LinkSession
from crdtcache.transport._connection import Connection
from crdtcache.transport._stream import StreamClosed, TLSFailed
from crdtcache.transport._tls import certificate_node_ids
from crdtcache.wire._auth import (
    AWAIT_ACCEPT,
    AWAIT_CHALLENGE,
    AWAIT_PROOF,
    DONE,
    MAX_HANDSHAKE_BYTES,
    PEER_PROVED,
    AuthError,
    Handshake,
    refuse_secret_mismatch,
)
from crdtcache.wire._codec import MAX_HELLO_BYTES, encode

__all__ = ["open_link"]

#: Why a peer that closes the stream silently in each handshake state most likely did.
_CLOSED_DURING_AUTH: Final = {
    AWAIT_CHALLENGE: "the peer closed the stream instead of answering the authenticated "
    "handshake (it refuses this node's version or configuration)",
    AWAIT_PROOF: "the peer closed the stream after this node's challenge: "
    "it does not hold the cluster secret",
    AWAIT_ACCEPT: "the peer closed the stream after this node's proof: it refused this "
    "node (cluster, node id or certificate)",
}


async def open_link(
    conn: Connection,
    session: LinkSession,
    *,
    tls: ssl.SSLContext | None,
    keyring: Sequence[bytes],
    timeout: float,
) -> None:
    """Run the handshake of ``conn`` (see the module doc) within ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            if tls is not None:
                await _start_tls(conn, tls)
            if keyring:
                await _authenticate(conn, session, keyring)
            else:
                await _exchange_hellos(conn, session)
    except TimeoutError:
        raise ProtocolError(
            f"handshake not finished within {timeout:.1f} s (handshake timeout)"
        ) from None


def _certificate_names(conn: Connection) -> frozenset[str] | None:
    cert = conn.peer_certificate()
    return None if cert is None else certificate_node_ids(cert)


async def _start_tls(conn: Connection, context: ssl.SSLContext) -> None:
    # Only a context that checks host names needs one; ours check node ids.
    hostname = conn.remote_host if conn.dialed and context.check_hostname else None
    try:
        await conn.start_tls(context, hostname)
    except TLSFailed as exc:
        raise AuthError(f"TLS handshake failed: {exc}") from exc


async def _exchange_hellos(conn: Connection, session: LinkSession) -> None:
    """The plain handshake: hellos both ways, the dialer first."""
    for hello in session.opening():
        conn.send(encode(hello))
    # Nobody is known yet: the first frame may be a hello, so no larger than one.
    message = await conn.read_message(MAX_HELLO_BYTES)
    refuse_secret_mismatch(message, None if conn.dialed else session.local.hello())
    for reply in session.receive_hello(message, _certificate_names(conn)):
        conn.send(encode(reply))


async def _authenticate(conn: Connection, session: LinkSession, keyring: Sequence[bytes]) -> None:
    """Drive the authenticated handshake; the connection is sealed when it returns."""
    shake = Handshake(tuple(keyring), session.local.hello(), initiator=conn.dialed)
    if conn.dialed:
        conn.send(shake.start())
    while shake.state != DONE:
        try:
            body = await conn.read_body(MAX_HANDSHAKE_BYTES)
        except StreamClosed as exc:
            reason = _CLOSED_DURING_AUTH.get(shake.state)
            if exc.truncated or reason is None:
                raise
            raise AuthError(reason) from None
        reply = shake.receive(body)
        if reply is not None:
            conn.send(reply)
        if shake.state == PEER_PROVED:
            # The responder reveals its hello only once the peer's checks out here.
            assert shake.peer_hello is not None
            session.accept_hello(shake.peer_hello, _certificate_names(conn))
            conn.send(shake.accept())
    # Sealed before the dialer checks the responder's hello: the responder is sealed
    # already, so a refusal of its hello must be sealed to reach it.
    conn.secure(shake.session_keys())
    if conn.dialed:
        assert shake.peer_hello is not None
        session.accept_hello(shake.peer_hello, _certificate_names(conn))
