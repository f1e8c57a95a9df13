"""Length-prefixed frames: a 4-byte big-endian length, then that many bytes of body.

:class:`FrameDecoder` is the one framer, sans-IO (bytes in, frame bodies out), so it is
fuzzed without sockets and the connection uses it for real. :meth:`FrameDecoder.needed`
says how many bytes complete the header or body in progress, so a reader that asks its
stream for exactly that many never buffers beyond one frame, and an oversized length is
refused from the header alone, before any of the body is read.
"""

from __future__ import annotations

import struct
from typing import Final

from crdtcache._errors import ProtocolError

__all__ = [
    "FRAME_OVERHEAD",
    "HEADER",
    "MAX_FRAME_BYTES",
    "FrameDecoder",
    "FrameTooLarge",
    "check_length",
    "encode_frame",
    "frame_limit",
]

#: Largest frame body accepted or sent by default (large transfers are split).
MAX_FRAME_BYTES: Final = 4 << 20
#: Room in a frame besides its largest value: one record (a key of up to 1024
#: characters, stamps, expiry), the message around it, and a seal.
FRAME_OVERHEAD: Final = 64 << 10
HEADER: Final = struct.Struct(">I")


def frame_limit(max_value_bytes: int) -> int:
    """The largest frame of a node whose values may take ``max_value_bytes``.

    A value travels whole, alone in its message when it is large: the limit grows with
    ``max_value_bytes`` (never below :data:`MAX_FRAME_BYTES`), which bounds the memory
    one connection needs to receive a frame. Nodes of one cluster must share
    ``max_value_bytes``: a frame over a receiver's limit ends the link.
    """
    return max(MAX_FRAME_BYTES, max_value_bytes + FRAME_OVERHEAD)


class FrameTooLarge(ProtocolError):
    """A frame header announced more bytes than the limit allows.

    ``header`` holds the offending header bytes (a TLS record read as a frame, say).
    """

    def __init__(self, message: str, header: bytes = b"") -> None:
        super().__init__(message)
        self.header = header


def encode_frame(body: bytes, max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Prefix ``body`` with its length; refuse (locally) a body over ``max_bytes``."""
    if len(body) > max_bytes:
        raise ValueError(f"frame of {len(body)} bytes exceeds the {max_bytes}-byte limit")
    return HEADER.pack(len(body)) + body


def check_length(length: int, max_bytes: int, header: bytes = b"") -> None:
    """Raise :class:`FrameTooLarge` if a header's ``length`` is over the limit."""
    if length > max_bytes:
        raise FrameTooLarge(f"frame of {length} bytes announced, limit is {max_bytes}", header)


class FrameDecoder:
    """Feed bytes with :meth:`feed`, take complete frame bodies from its result.

    ``max_bytes`` may be lowered and raised between frames (a handshake reads small
    frames only).
    """

    __slots__ = ("_buffer", "frames", "max_bytes")

    def __init__(self, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        #: Complete frames taken so far.
        self.frames = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every frame body now complete.

        Raises :class:`FrameTooLarge` as soon as a header announces too much.
        """
        self._buffer += data
        out: list[bytes] = []
        buf = self._buffer
        while len(buf) >= HEADER.size:
            (length,) = HEADER.unpack_from(buf)
            check_length(length, self.max_bytes, bytes(buf[: HEADER.size]))
            end = HEADER.size + length
            if len(buf) < end:
                break
            out.append(bytes(buf[HEADER.size : end]))
            del buf[:end]
        self.frames += len(out)
        return out

    def needed(self) -> int:
        """Bytes that complete the header, or the body, of the frame in progress (> 0)."""
        buf = self._buffer
        if len(buf) < HEADER.size:
            return HEADER.size - len(buf)
        length: int = HEADER.unpack_from(buf)[0]
        return HEADER.size + length - len(buf)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame (a truncated tail)."""
        return len(self._buffer)
