"""One TCP (or TLS) stream to a peer: frame reading, bounded buffered writing, counters.

After an authenticated handshake (``secret=``) the connection is :meth:`secured
<Connection.secure>`: every body written is sealed and every body read is opened
(see :mod:`crdtcache.wire._auth`) before the codec sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any, Final

from crdtcache._errors import ProtocolError
from crdtcache.wire._auth import SEALED_OVERHEAD, FrameOpener, FrameSealer, SessionKeys
from crdtcache.wire._codec import WireMessage, decode
from crdtcache.wire._framing import HEADER, MAX_FRAME_BYTES, check_length, encode_frame

__all__ = ["MAX_SEND_BUFFER", "Connection"]

#: Bytes a connection may have waiting in its send buffer; beyond, frames are dropped
#: (gossip tolerates loss: anti-entropy repairs it) rather than memory growing.
MAX_SEND_BUFFER: Final = 32 << 20


class Connection:
    """A framed message stream to one peer.

    Writes go straight to the asyncio transport, whose buffer is bounded by
    ``send_buffer`` bytes: a slow or stuck peer makes :meth:`send` return False (the
    frame is dropped and counted) instead of growing memory.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        dialed: bool,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        send_buffer: int = MAX_SEND_BUFFER,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.dialed = dialed
        self.max_frame_bytes = max_frame_bytes
        self.send_buffer = send_buffer
        peer = writer.get_extra_info("peername")
        self.remote_host: str = peer[0] if isinstance(peer, tuple) else "?"
        self.remote_port: int = peer[1] if isinstance(peer, tuple) else 0
        #: Set after the handshake.
        self.peer: str | None = None
        self.peer_port = 0
        self.incarnation = 0
        self.bytes_sent = self.bytes_received = 0
        self.frames_sent = self.frames_received = 0
        self.dropped = 0
        self.stalled_since: float | None = None
        self.closed = asyncio.get_running_loop().create_future()
        #: Whether the stream runs over TLS (set by :meth:`start_tls`).
        self.tls = False
        self._sealer: FrameSealer | None = None
        self._opener: FrameOpener | None = None

    @property
    def label(self) -> str:
        """How log lines name this connection."""
        who = self.peer or "unidentified peer"
        return f"{who} at {self.remote_host}:{self.remote_port}"

    @property
    def listen_address(self) -> str:
        """Where the peer listens (its host as seen here, its announced port)."""
        host = self.remote_host
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.peer_port}"

    @property
    def secured(self) -> bool:
        """Whether frames are sealed (after an authenticated handshake)."""
        return self._sealer is not None

    def secure(self, keys: SessionKeys) -> None:
        """Seal every frame from now on, and accept only sealed frames."""
        self._sealer = FrameSealer(keys.send)
        self._opener = FrameOpener(keys.receive)

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        """Upgrade the stream to TLS (the side is the one this stream was opened on).

        Raises ``ssl.SSLError`` if the TLS handshake fails.
        """
        await self.writer.start_tls(context, server_hostname=server_hostname)
        self.tls = True

    def peer_certificate(self) -> dict[str, Any] | None:
        """The peer's verified certificate (``getpeercert()``), or None without TLS."""
        ssl_object = self.writer.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
        cert: dict[str, Any] | None = ssl_object.getpeercert()
        return cert or {}

    async def read_body(self, max_bytes: int | None = None) -> bytes:
        """Read one raw frame body; the length is checked before the body is read.

        ``max_bytes`` lowers the limit (the handshake reads small frames only).
        Raises :class:`ProtocolError` for an oversized header and
        ``asyncio.IncompleteReadError`` when the stream ends.
        """
        header = await self.reader.readexactly(HEADER.size)
        (length,) = HEADER.unpack(header)
        limit = self.max_frame_bytes if max_bytes is None else min(max_bytes, self.max_frame_bytes)
        if length > limit and self.frames_received == 0 and header[:2] == b"\x16\x03":
            # A TLS record header (handshake, version 3.x) read as a frame length.
            raise ProtocolError("the peer opened with TLS (ssl=) and this node has no ssl context")
        check_length(length, limit)
        body = await self.reader.readexactly(length)
        self.bytes_received += HEADER.size + length
        self.frames_received += 1
        return body

    async def read_message(self) -> WireMessage:
        """Read, open (if secured) and decode one frame.

        Raises :class:`ProtocolError` for junk (:class:`~crdtcache.transport.AuthError`
        for a frame that is not authentic), ``asyncio.IncompleteReadError`` when the
        stream ends (``partial`` non-empty means a truncated frame).
        """
        body = await self.read_body()
        if self._opener is not None:
            body = self._opener.open(body)
        return decode(body, self.max_frame_bytes)

    def send(self, body: bytes) -> bool:
        """Queue one encoded message; False if dropped (buffer full or closing)."""
        transport = self.writer.transport
        if transport.is_closing():
            return False
        if transport.get_write_buffer_size() > self.send_buffer:
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
        self.writer.write(frame)
        self.bytes_sent += len(frame)
        self.frames_sent += 1
        return True

    def buffered(self) -> int:
        """Bytes waiting in the send buffer."""
        return self.writer.transport.get_write_buffer_size()

    async def drain(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until the send buffer is flushed to the OS."""
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            await asyncio.wait_for(self.writer.drain(), timeout)

    def abort(self) -> None:
        """Close now, discarding anything unsent."""
        self.writer.transport.abort()
        if not self.closed.done():
            self.closed.set_result(None)

    async def close(self, timeout: float = 1.0) -> None:
        """Close after trying to flush what is queued (for at most ``timeout``)."""
        await self.drain(timeout)
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), timeout)
        except (TimeoutError, ConnectionError, OSError):
            self.writer.transport.abort()
        if not self.closed.done():
            self.closed.set_result(None)
