"""The stream seam: the few byte-stream operations a node needs, and asyncio's streams behind them.

Everything above this module (connections, the handshake, the node) sees a
:class:`Stream` and this module's exceptions only: a real TCP (or TLS) stream is an
:class:`AsyncioStream`; tests and :class:`crdtcache.testing.MemoryNetwork` use the
in-memory streams of :mod:`crdtcache.transport._memory`. Errors from asyncio, ssl and
the OS are translated once, here, by :func:`stream_errors` (httpcore's
``map_exceptions``): a stream that ends is :class:`StreamClosed` (``partial`` holds the
bytes of a cut-off read), a failed TLS handshake :class:`TLSFailed` with a reason in
plain words, anything else :class:`StreamError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator
from typing import Any, Final, Protocol

from crdtcache._errors import PeerError

__all__ = [
    "AsyncioStream",
    "Stream",
    "StreamClosed",
    "StreamError",
    "TLSFailed",
    "stream_errors",
    "tls_reason",
]


class StreamError(PeerError):
    """A stream failed: reset, refused, unreachable, or broken by the OS."""


class StreamClosed(StreamError):
    """The peer closed the stream; ``partial`` holds the bytes of a read it cut short.

    ``truncated`` is True when the stream ended inside a frame (a read cut short, or
    one whose earlier part was read already).
    """

    def __init__(
        self, message: str = "closed by peer", partial: bytes = b"", *, truncated: bool = False
    ) -> None:
        super().__init__(message)
        self.partial = partial
        self.truncated = truncated or bool(partial)


class TLSFailed(StreamError):
    """The TLS handshake failed; the message says why in plain words."""


class Stream(Protocol):
    """A bidirectional byte stream to one peer."""

    async def read_exactly(self, n: int) -> bytes:
        """Read exactly ``n`` bytes; raises :class:`StreamClosed` if the stream ends first."""
        ...

    def write(self, data: bytes) -> None:
        """Queue ``data`` for sending (never blocks; see :meth:`buffered`)."""
        ...

    def buffered(self) -> int:
        """Bytes written but not yet taken by the peer's side."""
        ...

    def is_closing(self) -> bool:
        """True once closed or aborted (by either side)."""
        ...

    def extra(self, name: str) -> Any:
        """Transport details: ``"peername"`` (host, port), ``"peercert"`` (with TLS)."""
        ...

    async def start_tls(
        self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None
    ) -> None:
        """Upgrade to TLS; raises :class:`TLSFailed` (or :class:`StreamError`)."""
        ...

    async def close(self, timeout: float) -> None:
        """Flush what is queued (for at most ``timeout``), then close. Never raises."""
        ...

    def abort(self) -> None:
        """Close now, discarding anything unsent."""
        ...


#: OpenSSL reasons worth a plain-words explanation in the log line.
_TLS_REASONS: Final = {
    "WRONG_VERSION_NUMBER": "the peer does not speak TLS 1.3 (no ssl= on its side?)",
    "HTTP_REQUEST": "the peer does not speak TLS (no ssl= on its side?)",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust this node's certificate (unknown CA)",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires a certificate from this node",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version in common (TLS 1.3 is required)",
    "UNSUPPORTED_PROTOCOL": "no TLS version in common (TLS 1.3 is required)",
}


def tls_reason(exc: ssl.SSLError) -> str:
    """Why a TLS handshake failed, in plain words where OpenSSL's are cryptic."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    reason = exc.reason or ""
    return _TLS_REASONS.get(reason, reason or str(exc))


@contextlib.contextmanager
def stream_errors() -> Iterator[None]:
    """Translate asyncio's, ssl's and the OS's stream errors into this module's."""
    try:
        yield
    except asyncio.IncompleteReadError as exc:
        raise StreamClosed(partial=exc.partial) from None
    except ssl.SSLError as exc:
        raise StreamError(f"TLS error: {tls_reason(exc)}") from exc
    except ConnectionResetError as exc:
        raise StreamError("connection reset by the peer") from exc
    except (OSError, EOFError) as exc:
        raise StreamError(str(exc) or type(exc).__name__) from exc


class AsyncioStream:
    """A :class:`Stream` over asyncio's ``StreamReader``/``StreamWriter`` (TCP, TLS)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read_exactly(self, n: int) -> bytes:
        """Read exactly ``n`` bytes (see :class:`Stream`)."""
        with stream_errors():
            return await self.reader.readexactly(n)

    def write(self, data: bytes) -> None:
        """Queue ``data``; a stream closing already drops it (the reader sees the end)."""
        if not self.writer.transport.is_closing():
            self.writer.write(data)

    def buffered(self) -> int:
        """Bytes in the transport's send buffer."""
        return self.writer.transport.get_write_buffer_size()

    def is_closing(self) -> bool:
        """True once closed or aborted."""
        return self.writer.transport.is_closing()

    def extra(self, name: str) -> Any:
        """``peername``, ``ssl_object``, or ``peercert`` (the verified certificate)."""
        if name == "peercert":
            ssl_object = self.writer.get_extra_info("ssl_object")
            return None if ssl_object is None else (ssl_object.getpeercert() or {})
        return self.writer.get_extra_info(name)

    async def start_tls(
        self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None
    ) -> None:
        """Upgrade to TLS (the side is the one the stream was opened on)."""
        try:
            await self.writer.start_tls(context, server_hostname=server_hostname)
        except ssl.SSLError as exc:
            raise TLSFailed(tls_reason(exc)) from exc
        except (ConnectionError, OSError) as exc:
            raise TLSFailed(
                "the peer closed the stream (no ssl= on its side, "
                "or it refused this node's certificate)"
            ) from exc

    async def close(self, timeout: float) -> None:
        """Flush (at most ``timeout``), close, wait for the close (at most ``timeout``)."""
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            await asyncio.wait_for(self.writer.drain(), timeout)
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), timeout)
        except (TimeoutError, ConnectionError, OSError):
            self.writer.transport.abort()

    def abort(self) -> None:
        """Close now."""
        self.writer.transport.abort()
