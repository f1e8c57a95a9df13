"""A hand-driven peer on a real loopback socket, for the hostile-peer tests.

It speaks the wire format with the library's own codec, but decides itself what to
send and when: the messages a buggy or hostile peer would send, in any order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from crdtcache.core._messages import Fetch, FetchReply
from crdtcache.transport import PROTOCOL_VERSION, Hello, Node, decode, encode, encode_frame
from crdtcache.transport._node import parse_address
from crdtcache.wire._codec import WireMessage
from crdtcache.wire._framing import HEADER


async def open_socket(node: Node) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain TCP connection to ``node`` (nothing sent)."""
    assert node.address is not None
    host, port = parse_address(node.address)
    return await asyncio.open_connection(host, port)


class RawPeer:
    """One stream to a node, with the plain (no secret) hello already exchanged."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        #: Every message read from the node so far, in order.
        self.received: list[WireMessage] = []

    @classmethod
    async def join(
        cls, node: Node, node_id: str = "intruder", *, port: int = 1, cluster: str = "default"
    ) -> RawPeer:
        """Connect and say hello as ``node_id`` (``port`` 0: a client link)."""
        reader, writer = await open_socket(node)
        peer = cls(reader, writer)
        peer.send(Hello(PROTOCOL_VERSION, cluster, node_id, port, 1))
        hello = await peer.receive()
        assert isinstance(hello, Hello), hello
        return peer

    def send(self, message: WireMessage) -> None:
        """Write one message as a frame."""
        self.writer.write(encode_frame(encode(message)))

    def send_raw(self, body: bytes) -> None:
        """Write one frame around ``body`` as given."""
        self.writer.write(encode_frame(body))

    async def receive(self, timeout: float = 5.0) -> WireMessage:
        """Read the next message from the node."""
        header = await asyncio.wait_for(self.reader.readexactly(HEADER.size), timeout)
        (length,) = HEADER.unpack(header)
        body = await asyncio.wait_for(self.reader.readexactly(length), timeout)
        message = decode(body)
        self.received.append(message)
        return message

    async def wait_for(
        self, accept: Callable[[WireMessage], bool], timeout: float = 5.0
    ) -> WireMessage:
        """Read until a message ``accept`` takes; return it."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such message within {timeout} s: {self.received[-5:]}")
            message = await self.receive(left)
            if accept(message):
                return message

    async def drain(self, seconds: float) -> list[WireMessage]:
        """Read whatever the node sends for ``seconds``; return it."""
        got: list[WireMessage] = []
        deadline = time.monotonic() + seconds
        with contextlib.suppress(TimeoutError, asyncio.IncompleteReadError):
            while (left := deadline - time.monotonic()) > 0:
                got.append(await self.receive(left))
        return got

    async def closed_by_node(self, timeout: float = 5.0) -> bool:
        """Read until the node closes the stream; False if it is still open after ``timeout``."""

        async def until_eof() -> None:
            while await self.reader.read(65536):
                pass

        try:
            await asyncio.wait_for(until_eof(), timeout)
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        return True

    def close(self) -> None:
        """Close the stream (no goodbye)."""
        self.writer.close()

    async def barrier_or_none(self, seconds: float = 0.1) -> None:
        """Give the node ``seconds`` to handle what was sent (a client gets no answer)."""
        await self.drain(seconds)

    async def barrier(self, request: int = 1) -> None:
        """Wait until the node handled everything sent so far (a fetch is answered in order)."""
        self.send(Fetch(request, ()))
        await self.wait_for(lambda m: isinstance(m, FetchReply) and m.request == request)
