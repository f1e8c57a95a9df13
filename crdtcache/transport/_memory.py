"""In-memory streams and networks: real nodes, no sockets.

Theory of operation
-------------------
A :class:`MemoryHub` is one simulated network. Each node gets its own
:class:`HubNetwork` (a :class:`~crdtcache.transport._network.Network`) named after it;
listening binds a port of the hub (port 0 takes the next free one, counted from
:data:`FIRST_PORT`), dialling a bound ``host:port`` creates a pair of
:class:`MemoryStream` joined back to back and hands one end to the listener's callback.

A write lands in the peer's read buffer at once (zero latency, delivery in write order);
what the peer has not read yet counts as the writer's :meth:`~MemoryStream.buffered`
bytes, so a peer that stops reading fills its sender's buffer as over TCP. Closing ends
the peer's reads after what was already written; aborting resets the stream (the peer's
next read fails).

Faults: :meth:`MemoryHub.partition` splits the named nodes into groups: streams between
groups are reset and dials between them are refused until :meth:`MemoryHub.heal`;
:meth:`MemoryHub.break_links` resets the streams between two nodes once (they may
redial at once). Nothing here reads a clock or draws unseeded randomness: given the
same event loop schedule, a run repeats exactly.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Iterable
from typing import Any, Final

from crdtcache.transport._network import CONNECT_TIMEOUT, Accept, Listener
from crdtcache.transport._stream import Stream, StreamClosed, StreamError, TLSFailed

__all__ = ["FIRST_PORT", "HubNetwork", "MemoryHub", "MemoryStream"]

#: The first port a hub hands out for ``port=0`` (and the first client port).
FIRST_PORT: Final = 40000


class _Pipe:
    """One direction of a stream: bytes written and not yet read, and how it ended."""

    __slots__ = ("data", "ended", "reset", "waiter")

    def __init__(self) -> None:
        self.data = bytearray()
        self.ended = False
        self.reset = False
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class MemoryStream:
    """One end of an in-memory stream (implements :class:`~crdtcache.transport._stream.Stream`)."""

    def __init__(
        self,
        inbound: _Pipe,
        outbound: _Pipe,
        *,
        owner: str,
        peer: str,
        sockname: tuple[str, int],
        peername: tuple[str, int],
    ) -> None:
        self._in = inbound
        self._out = outbound
        #: The names of the nodes at this end and at the other.
        self.owner = owner
        self.peer = peer
        self._extra: dict[str, Any] = {"sockname": sockname, "peername": peername}
        self._closing = False

    async def read_exactly(self, n: int) -> bytes:
        """Read exactly ``n`` bytes, waiting for the peer to write them."""
        pipe = self._in
        while len(pipe.data) < n:
            if self._closing:
                raise StreamClosed("closed by this node")
            if pipe.reset:
                raise StreamError("connection reset")
            if pipe.ended:
                partial = bytes(pipe.data)
                pipe.data.clear()
                raise StreamClosed(partial=partial)
            pipe.waiter = asyncio.get_running_loop().create_future()
            await pipe.waiter
        out = bytes(pipe.data[:n])
        del pipe.data[:n]
        return out

    def write(self, data: bytes) -> None:
        """Hand ``data`` to the peer's side (dropped once either side closed)."""
        pipe = self._out
        if self._closing or pipe.ended or pipe.reset:
            return
        pipe.data += data
        pipe.wake()

    def buffered(self) -> int:
        """Bytes the peer has not read yet."""
        return 0 if self._out.reset else len(self._out.data)

    def is_closing(self) -> bool:
        """True once this end closed or the stream was reset."""
        return self._closing or self._in.reset

    def extra(self, name: str) -> Any:
        """``peername`` and ``sockname``; ``peercert`` is None (no TLS in memory)."""
        return self._extra.get(name)

    async def start_tls(
        self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None
    ) -> None:
        """In-memory streams carry no TLS: raises :class:`TLSFailed`."""
        raise TLSFailed("in-memory streams do not run TLS (use secret= to authenticate)")

    async def close(self, timeout: float) -> None:
        """End the stream: the peer reads what was written, then the end."""
        self._closing = True
        self._out.ended = True
        self._out.wake()
        self._in.wake()

    def abort(self) -> None:
        """Reset the stream: unread bytes are lost and the peer's next read fails."""
        self._closing = True
        self.reset()

    def reset(self) -> None:
        """Break the stream under both ends (the network failed): reads fail, writes drop."""
        for pipe in (self._out, self._in):
            pipe.reset = True
            pipe.data.clear()
            pipe.wake()


class _HubListener:
    def __init__(self, hub: MemoryHub, address: tuple[str, int]) -> None:
        self.hub = hub
        self._address = address

    @property
    def address(self) -> tuple[str, int]:
        return self._address

    def loopback_only(self) -> bool:
        return True  # nothing outside this process can reach a hub

    def close(self) -> None:
        self.hub._listeners.pop(self._address, None)


class MemoryHub:
    """One in-memory network; :meth:`network` gives each node its view of it.

    ``seed`` seeds every node's randomness (:meth:`HubNetwork.random`).
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._listeners: dict[tuple[str, int], tuple[str, Accept]] = {}
        self._streams: list[MemoryStream] = []
        self._groups: list[frozenset[str]] | None = None
        self._next_port = FIRST_PORT
        self._tasks: set[asyncio.Task[None]] = set()
        self._networks: dict[str, HubNetwork] = {}

    def network(self, name: str, host: str = "127.0.0.1") -> HubNetwork:
        """The network as node ``name`` sees it (the same object for the same name)."""
        if name not in self._networks:
            self._networks[name] = HubNetwork(self, name, host)
        return self._networks[name]

    # --------------------------------------------------------------- faults
    def reachable(self, a: str, b: str) -> bool:
        """Whether nodes ``a`` and ``b`` can talk under the current partition."""
        return self._groups is None or any(a in g and b in g for g in self._groups)

    def partition(self, *groups: Iterable[str]) -> None:
        """Let nodes talk only within their group (a node in no group is alone)."""
        self._groups = [frozenset(g) for g in groups]
        self._reset(lambda s: not self.reachable(s.owner, s.peer))

    def heal(self) -> None:
        """Remove the partition (links are re-established by the nodes' redials)."""
        self._groups = None

    def break_links(self, a: str, b: str) -> None:
        """Reset every stream between nodes ``a`` and ``b`` (they may redial at once)."""
        self._reset(lambda s: {s.owner, s.peer} == {a, b})

    def _reset(self, which: Any) -> None:
        for stream in list(self._streams):
            if which(stream):
                stream.reset()
        self._streams = [s for s in self._streams if not s.is_closing()]

    # ------------------------------------------------------------- plumbing
    def _port(self) -> int:
        self._next_port += 1
        return self._next_port - 1

    def _bind(self, name: str, host: str, port: int, accept: Accept) -> Listener:
        address = (host, port or self._port())
        if address in self._listeners:
            raise StreamError(f"cannot listen on {host}:{port}: address in use")
        self._listeners[address] = (name, accept)
        return _HubListener(self, address)

    def _dial(self, source: HubNetwork, host: str, port: int) -> MemoryStream:
        bound = self._listeners.get((host, port))
        if bound is None:
            raise StreamError(f"connection refused by {host}:{port}")
        name, accept = bound
        if not self.reachable(source.name, name):
            raise StreamError(f"{host}:{port} is unreachable (network partition)")
        there, back = _Pipe(), _Pipe()
        local = (source.host, self._port())
        ours = MemoryStream(
            back, there, owner=source.name, peer=name, sockname=local, peername=(host, port)
        )
        theirs = MemoryStream(
            there, back, owner=name, peer=source.name, sockname=(host, port), peername=local
        )
        self._streams = [s for s in self._streams if not s.is_closing()]
        self._streams += [ours, theirs]

        async def accepted() -> None:
            await accept(theirs)

        task = asyncio.get_running_loop().create_task(accepted())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return ours


class HubNetwork:
    """Node ``name``'s view of a :class:`MemoryHub` (implements ``Network``)."""

    def __init__(self, hub: MemoryHub, name: str, host: str) -> None:
        self.hub = hub
        self.name = name
        self.host = host
        self._random = random.Random(f"{hub.seed}:{name}")

    async def listen(self, host: str, port: int, accept: Accept, *, tls: bool) -> Listener:
        """Bind ``host:port`` on the hub (``tls`` changes nothing: no TLS in memory)."""
        return self.hub._bind(self.name, host, port, accept)

    async def connect(self, host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> Stream:
        """Dial a node bound on the hub; refused at once if nothing listens there."""
        await asyncio.sleep(0)  # a dial is never synchronous: let others run, as TCP does
        return self.hub._dial(self, host, port)

    def random(self) -> random.Random:
        """This node's generator, seeded from the hub's seed and the node's name."""
        return self._random
