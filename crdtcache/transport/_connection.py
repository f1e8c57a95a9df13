"""One stream to a peer: framing, sealing, bounded writing, counters.

A :class:`Connection` reads whole frames with the one framer,
:class:`~crdtcache.wire._framing.FrameDecoder`, asking its :class:`Stream` for exactly
the bytes the decoder needs (so a frame's length is checked before its body is read),
and writes frames with a bounded send buffer. After an authenticated handshake
(``secret=``) it is :meth:`secured <Connection.secure>`: every body written is sealed
and every body read is opened (see :mod:`crdtcache.wire._auth`) before the codec sees
it. The protocol of the link lives in its :class:`~crdtcache.core._link.LinkSession`.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Final

from crdtcache._errors import ProtocolError
from crdtcache.core import DEFAULT_MAX_VALUE_BYTES
from crdtcache.core._link import LinkSession
from crdtcache.transport._stream import Stream, StreamClosed
from crdtcache.wire._auth import SEALED_OVERHEAD, FrameOpener, FrameSealer, SessionKeys
from crdtcache.wire._codec import WireMessage, decode
from crdtcache.wire._framing import MAX_FRAME_BYTES, FrameDecoder, FrameTooLarge, encode_frame

__all__ = ["MAX_SEND_BUFFER", "Connection"]

#: Bytes a connection may have waiting in its send buffer; beyond, frames are dropped
#: (gossip tolerates loss: anti-entropy repairs it) rather than memory growing.
MAX_SEND_BUFFER: Final = 32 << 20
#: A TLS record header (handshake, version 3.x), as a frame length it is far too large.
_TLS_RECORD: Final = b"\x16\x03"


class Connection:
    """A framed message stream to one peer.

    Writes go straight to the stream, whose buffer is bounded by ``send_buffer`` bytes:
    a slow or stuck peer makes :meth:`send` return False (the frame is dropped and
    counted) instead of growing memory.
    """

    def __init__(
        self,
        stream: Stream,
        *,
        dialed: bool,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        send_buffer: int = MAX_SEND_BUFFER,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    ) -> None:
        self.stream = stream
        self.dialed = dialed
        self.max_frame_bytes = max_frame_bytes
        #: The node's value limit: a received record over it is junk.
        self.max_value_bytes = max_value_bytes
        self.send_buffer = send_buffer
        peer = stream.extra("peername")
        self.remote_host: str = str(peer[0]) if isinstance(peer, tuple) else "?"
        self.remote_port: int = int(peer[1]) if isinstance(peer, tuple) else 0
        #: The link's protocol state (the node sets it before the handshake).
        self.session: LinkSession | None = None
        self.bytes_sent = self.bytes_received = 0
        self.frames_sent = self.frames_received = 0
        self.dropped = 0
        self.stalled_since: float | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: Whether the stream runs over TLS (set by :meth:`start_tls`).
        self.tls = False
        self._decoder = FrameDecoder(max_frame_bytes)
        self._sealer: FrameSealer | None = None
        self._opener: FrameOpener | None = None

    @property
    def peer(self) -> str | None:
        """The peer's node id, once its hello was accepted."""
        return None if self.session is None else self.session.peer

    @property
    def label(self) -> str:
        """How log lines name this connection."""
        return f"{self.peer or 'unidentified peer'} at {self.remote_host}:{self.remote_port}"

    @property
    def listen_address(self) -> str:
        """Where the peer listens (its host as seen here, its announced port)."""
        host = f"[{self.remote_host}]" if ":" in self.remote_host else self.remote_host
        return f"{host}:{0 if self.session is None else self.session.peer_port}"

    @property
    def progressed(self) -> bool:
        """Whether the peer did anything yet: a frame header received, or TLS done."""
        return self.bytes_received > 0 or self.tls

    @property
    def secured(self) -> bool:
        """Whether frames are sealed (after an authenticated handshake)."""
        return self._sealer is not None

    def secure(self, keys: SessionKeys) -> None:
        """Seal every frame from now on, and accept only sealed frames."""
        self._sealer = FrameSealer(keys.send)
        self._opener = FrameOpener(keys.receive)

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        """Upgrade the stream to TLS (as the side that dialled or accepted it).

        Raises :class:`~crdtcache.transport._stream.TLSFailed` if the handshake fails.
        """
        await self.stream.start_tls(
            context, server_side=not self.dialed, server_hostname=server_hostname
        )
        self.tls = True

    def peer_certificate(self) -> dict[str, Any] | None:
        """The peer's verified certificate (``getpeercert()``), or None without TLS."""
        cert: dict[str, Any] | None = self.stream.extra("peercert")
        return cert

    async def read_body(self, max_bytes: int | None = None) -> bytes:
        """Read one raw frame body; its length is checked before the body is read.

        ``max_bytes`` lowers the limit (the handshake reads small frames only). Raises
        :class:`~crdtcache.wire._framing.FrameTooLarge` for an oversized header and
        :class:`~crdtcache.transport._stream.StreamClosed` when the stream ends
        (``truncated`` if inside a frame).
        """
        decoder = self._decoder
        limit = self.max_frame_bytes
        decoder.max_bytes = limit if max_bytes is None else min(max_bytes, limit)
        frames: list[bytes] = []
        while not frames:
            try:
                data = await self.stream.read_exactly(decoder.needed())
            except StreamClosed as exc:
                if decoder.buffered or exc.partial:
                    raise StreamClosed("truncated frame", exc.partial, truncated=True) from None
                raise
            try:
                frames = decoder.feed(data)
            except FrameTooLarge as exc:
                if decoder.frames == 0 and exc.header.startswith(_TLS_RECORD):
                    raise ProtocolError(
                        "the peer opened with TLS (ssl=) and this node has no ssl context"
                    ) from None
                raise
            self.bytes_received += len(data)
        self.frames_received += 1
        return frames[0]

    async def read_message(self, max_bytes: int | None = None) -> WireMessage:
        """Read, open (if secured) and decode one frame (``max_bytes`` lowers the limit).

        Raises :class:`ProtocolError` for junk (:class:`~crdtcache.wire._auth.AuthError`
        for a frame that is not authentic), ``StreamClosed`` when the stream ends.
        """
        body = await self.read_body(max_bytes)
        if self._opener is not None:
            body = self._opener.open(body)
        return decode(body, self.max_frame_bytes, max_value_bytes=self.max_value_bytes)

    def send(self, body: bytes) -> bool:
        """Queue one encoded message; False if dropped (buffer full or closing).

        Raises :class:`ProtocolError` for a body over the frame limit (a local refusal:
        nothing is sent).
        """
        stream = self.stream
        if stream.is_closing():
            return False
        if stream.buffered() > self.send_buffer:
            self.dropped += 1
            return False
        sealer = self._sealer
        if sealer is not None:
            # Checked before sealing: a sealed frame that is not written would leave a
            # gap in the sequence numbers, which the peer treats as an attack.
            if len(body) + SEALED_OVERHEAD > self.max_frame_bytes:
                raise ProtocolError(
                    f"refusing to send: sealed frame of {len(body) + SEALED_OVERHEAD} bytes "
                    f"exceeds the {self.max_frame_bytes}-byte limit"
                )
            body = sealer.seal(body)
        try:
            frame = encode_frame(body, self.max_frame_bytes)
        except ValueError as exc:
            raise ProtocolError(f"refusing to send: {exc}") from exc
        stream.write(frame)
        self.bytes_sent += len(frame)
        self.frames_sent += 1
        return True

    def buffered(self) -> int:
        """Bytes waiting in the send buffer."""
        return self.stream.buffered()

    def abort(self) -> None:
        """Close now, discarding anything unsent."""
        self.stream.abort()
        if not self.closed.done():
            self.closed.set_result(None)

    async def close(self, timeout: float = 1.0) -> None:
        """Close after trying to flush what is queued (for at most ``timeout``)."""
        await self.stream.close(timeout)
        if not self.closed.done():
            self.closed.set_result(None)
