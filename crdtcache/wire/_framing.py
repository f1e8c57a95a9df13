"""Length-prefixed frames: a 4-byte big-endian length, then that many bytes of body.

:class:`FrameDecoder` is sans-IO (bytes in, frames out) so it can be fuzzed without
sockets; the connection code reads the header first and refuses an oversized length
before reading the body.
"""

from __future__ import annotations

import struct
from typing import Final

from crdtcache._errors import ProtocolError

__all__ = [
    "HEADER",
    "MAX_FRAME_BYTES",
    "FrameDecoder",
    "FrameTooLarge",
    "check_length",
    "encode_frame",
]

#: Largest frame body accepted or sent by default (large transfers are split).
MAX_FRAME_BYTES: Final = 4 << 20
HEADER: Final = struct.Struct(">I")


class FrameTooLarge(ProtocolError):
    """A frame header announced more bytes than the limit allows."""


def encode_frame(body: bytes, max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Prefix ``body`` with its length; refuse (locally) a body over ``max_bytes``."""
    if len(body) > max_bytes:
        raise ValueError(f"frame of {len(body)} bytes exceeds the {max_bytes}-byte limit")
    return HEADER.pack(len(body)) + body


def check_length(length: int, max_bytes: int) -> None:
    """Raise :class:`FrameTooLarge` if a header's ``length`` is over the limit."""
    if length > max_bytes:
        raise FrameTooLarge(f"frame of {length} bytes announced, limit is {max_bytes}")


class FrameDecoder:
    """Feed bytes with :meth:`feed`, take complete frame bodies with :meth:`frames`."""

    __slots__ = ("_buffer", "max_bytes")

    def __init__(self, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every frame body now complete.

        Raises :class:`FrameTooLarge` as soon as a header announces too much.
        """
        self._buffer += data
        out: list[bytes] = []
        buf = self._buffer
        while len(buf) >= HEADER.size:
            (length,) = HEADER.unpack_from(buf)
            check_length(length, self.max_bytes)
            end = HEADER.size + length
            if len(buf) < end:
                break
            out.append(bytes(buf[HEADER.size : end]))
            del buf[:end]
        return out

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame (a truncated tail)."""
        return len(self._buffer)
