"""Where a node's streams come from: listening and dialling, over TCP or in memory.

A :class:`Network` binds a listener that hands each accepted :class:`Stream` to a
callback, and dials a ``host:port``. :class:`TcpNetwork` is the real one (asyncio
sockets); :class:`~crdtcache.transport._memory.MemoryHub` gives in-memory ones. A
network also hands out the node's randomness (:meth:`Network.random`): a real network
gives a fresh generator, a simulated one a seeded generator, so that a simulated run
repeats exactly.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from crdtcache.transport._stream import AsyncioStream, Stream, StreamError, stream_errors

__all__ = ["CONNECT_TIMEOUT", "Accept", "Listener", "Network", "TcpNetwork"]

#: Seconds a dial may take.
CONNECT_TIMEOUT: Final = 3.0
#: Bytes asyncio's stream reader buffers before it stops reading the socket.
_READ_LIMIT: Final = 1 << 16

Accept = Callable[[Stream], Awaitable[None]]


class Listener(Protocol):
    """A bound listening address."""

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound."""
        ...

    def loopback_only(self) -> bool:
        """True if only this machine can connect (a loopback address)."""
        ...

    def close(self) -> None:
        """Stop accepting."""
        ...


class Network(Protocol):
    """Listening and dialling for one node."""

    async def listen(self, host: str, port: int, accept: Accept, *, tls: bool) -> Listener:
        """Bind ``host:port`` (port 0: any) and call ``accept`` for every new stream.

        With ``tls``, a stream reads nothing until the handshake starts TLS on it.
        Raises :class:`StreamError` if the address cannot be bound.
        """
        ...

    async def connect(self, host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> Stream:
        """Dial ``host:port``; raises :class:`StreamError` (also past ``timeout``)."""
        ...

    def random(self) -> random.Random:
        """The randomness a node on this network draws from."""
        ...


class _PausedStreamProtocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol; with ``pause``, reading waits for the TLS upgrade.

    Without the pause the peer's TLS ClientHello could be read into the plain stream
    buffer before the handshake swaps in TLS, and be lost.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        on_connected: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
        *,
        pause: bool,
    ) -> None:
        super().__init__(reader, on_connected)
        self._pause = pause

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._pause and isinstance(transport, asyncio.ReadTransport):
            transport.pause_reading()
        super().connection_made(transport)


class _TcpListener:
    def __init__(self, server: asyncio.Server) -> None:
        self.server = server

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    def loopback_only(self) -> bool:
        for sock in self.server.sockets:
            try:
                if not ipaddress.ip_address(sock.getsockname()[0].split("%")[0]).is_loopback:
                    return False
            except ValueError:  # not an IP address (a Unix socket?): be cautious
                return False
        return True

    def close(self) -> None:
        self.server.close()


class TcpNetwork:
    """The real network: asyncio TCP sockets."""

    async def listen(self, host: str, port: int, accept: Accept, *, tls: bool) -> Listener:
        """Bind with asyncio (TLS is started by the handshake, not by the server)."""
        loop = asyncio.get_running_loop()

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accept(AsyncioStream(reader, writer))

        def factory() -> asyncio.StreamReaderProtocol:
            reader = asyncio.StreamReader(limit=_READ_LIMIT, loop=loop)
            return _PausedStreamProtocol(reader, accepted, pause=tls)

        # Like asyncio.start_server, but TLS is started by the handshake itself so that
        # a failed TLS handshake is logged, counted and timed out like any refusal.
        try:
            server = await loop.create_server(factory, host, port)
        except OSError as exc:
            raise StreamError(f"cannot listen on {host}:{port}: {exc}") from exc
        return _TcpListener(server)

    async def connect(self, host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> Stream:
        """Open a TCP stream to ``host:port``."""
        try:
            with stream_errors():
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, limit=_READ_LIMIT), timeout
                )
        except TimeoutError:
            raise StreamError(f"no answer from {host}:{port} within {timeout} s") from None
        return AsyncioStream(reader, writer)

    def random(self) -> random.Random:
        """A fresh, unseeded generator."""
        return random.Random()
