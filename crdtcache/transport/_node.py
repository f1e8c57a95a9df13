"""The p2p runtime: drives a gossip engine and its link sessions over streams, in asyncio.

Theory of operation
-------------------
The node holds no protocol of its own: the :class:`GossipEngine` decides what to
gossip, the :class:`~crdtcache.core._link.Mesh` and its link sessions decide which
links live and what a hello, a peer list, a goodbye or an admin message mean. The node
moves their messages over streams from a :class:`~crdtcache.transport._network.Network`
(TCP, or in memory for tests), arms the engine's timers, and turns completion events
into futures.

It listens on ``listen`` and dials every address it learns (discovery, seeds, peer
lists), redialling with backoff and jitter while the address is wanted
(:mod:`~crdtcache.transport._dialer`). Its :class:`~crdtcache.transport._links.Links`
carry every stream through :func:`~crdtcache.transport._handshake.open_link` (TLS,
the secret's handshake, hellos; before the engine hears of the peer) to its reader
task and its drop; a refused stream costs one log line and is counted in
``statistics()``.

The engine is touched only from the event loop: the reader task of each link hands
messages to the mesh and gossip to ``engine.handle``; a periodic callback calls
``engine.tick``; a write wakes a one-shot flush at the engine's flush deadline: on an
idle link in the next loop step (every write of this step travels in it), once the
engine's flush budget is spent on a timer (adaptive batching, see the engine).
Whatever the engine returns is encoded once per message and written to each peer's
connection, whose send buffer is bounded (a stuck peer loses frames, repaired by
anti-entropy, and is dropped if it stays stuck); the engine is told which peers'
buffers are filling up, and builds no anti-entropy answer for them meanwhile. A
write-through flush and a fetch wait on futures that
:class:`~crdtcache.core._completion.AckDone` and ``FetchDone`` resolve; an admin
request waits for its reply, or fails when its link drops.

Any exception while reading or handling a link's message drops that link, with one
log line; it never escapes into the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl as _ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from crdtcache._errors import ConfigError, ProtocolError
from crdtcache.core import Change, GossipEngine, Outgoing, PeerEvent
from crdtcache.core._completion import AckDone
from crdtcache.core._format import InvalidRecord, check_cluster
from crdtcache.core._link import (
    Identity,
    Mesh,
)
from crdtcache.core._messages import Message
from crdtcache.discovery._base import Discovery, PeerAddress
from crdtcache.transport._connection import MAX_SEND_BUFFER, Connection
from crdtcache.transport._dialer import FORGET_SILENT_AFTER, Dialer
from crdtcache.transport._links import Links
from crdtcache.transport._network import Listener, Network, TcpNetwork
from crdtcache.transport._tls import check_tls_contexts
from crdtcache.wire._auth import keyring
from crdtcache.wire._codec import encode
from crdtcache.wire._framing import frame_limit

__all__ = [
    "HANDSHAKE_IDLE_TIMEOUT",
    "HANDSHAKE_TIMEOUT",
    "MAX_CONNECTIONS",
    "MAX_HANDSHAKES",
    "Node",
    "TransportStatistics",
    "parse_address",
]

log = logging.getLogger(__name__)

#: Seconds a new stream has to complete its handshake (TLS, authentication, hellos).
HANDSHAKE_TIMEOUT: Final = 5.0
#: Established links accepted from peers at once; beyond, a new stream is refused.
#: Links this node dialled are not counted (they have limits of their own).
MAX_CONNECTIONS: Final = 256
#: Accepted streams still in their handshake at once. A smaller pool than the links:
#: unauthenticated streams can never take the room of established peers, and when it
#: is full the oldest idle one makes room for the newcomer.
MAX_HANDSHAKES: Final = 64
#: Seconds an accepted stream may go without progress (its first frame, or its TLS
#: handshake done) before it is dropped: a silent stream holds a slot only briefly.
HANDSHAKE_IDLE_TIMEOUT: Final = 1.0
#: Seconds between periodic engine ticks (heartbeats, anti-entropy, collection).
TICK_INTERVAL: Final = 0.05
#: Seconds a peer's send buffer may stay over the limit before the link is dropped.
STALL_TIMEOUT: Final = 10.0


def parse_address(text: str) -> tuple[str, int]:
    """Split ``"host:port"`` (or ``"[v6]:port"``), raising ``ConfigError`` if malformed."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"address {text!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class TransportStatistics:
    """Counters of a :class:`Node` (monotonic since start, except ``connections``)."""

    bytes_sent: int
    bytes_received: int
    frames_sent: int
    frames_received: int
    frames_dropped: int
    connections: int
    protocol_errors: int
    auth_failures: int
    handshake_failures: int
    refused_connections: int
    #: Accepted streams dropped mid-handshake: idle too long, or the oldest idle one
    #: when the handshake slots were full.
    evicted_handshakes: int
    #: Addresses named by peers or discovery and not dialled (beyond the caps).
    ignored_hints: int
    authenticated: bool
    tls: bool
    #: Connected peers: node id -> the address they listen on.
    peer_addresses: Mapping[str, str]


class Node:
    """Runs one :class:`GossipEngine` over a network (implements the cache's ``Runtime``).

    ``secret`` (bytes, or a list whose first entry signs and all are accepted) turns
    on the authenticated handshake and sealed frames; ``ssl_server`` and
    ``ssl_client`` (both or neither) turn on mutual TLS. ``network`` is where streams
    come from (TCP unless given) and ``clock`` the wall clock the engine runs on.
    Raises :class:`ConfigError` for a bad ``listen`` address, secret or TLS context,
    and :class:`PeerError` (at :meth:`start`) if the address cannot be bound.
    """

    def __init__(
        self,
        engine: GossipEngine,
        *,
        listen: str = "127.0.0.1:0",
        cluster: str = "default",
        discovery: Discovery | None = None,
        ssl_server: _ssl.SSLContext | None = None,
        ssl_client: _ssl.SSLContext | None = None,
        secret: bytes | Sequence[bytes] | None = None,
        clock: Callable[[], float] = time.time,
        max_frame_bytes: int | None = None,
        max_connections: int = MAX_CONNECTIONS,
        max_handshakes: int = MAX_HANDSHAKES,
        send_buffer: int = MAX_SEND_BUFFER,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        handshake_idle_timeout: float = HANDSHAKE_IDLE_TIMEOUT,
        forget_silent_after: float = FORGET_SILENT_AFTER,
        tick_interval: float = TICK_INTERVAL,
        client_mode: bool = False,
        network: Network | None = None,
    ) -> None:
        try:
            check_cluster(cluster)
        except InvalidRecord as exc:
            raise ConfigError(str(exc)) from None
        self.engine = engine
        self.node_id = engine.node
        self.cluster = cluster
        self._listen = parse_address(listen)
        self._discovery = discovery
        tls = check_tls_contexts(ssl_server, ssl_client)
        self._ssl_server: _ssl.SSLContext | None = tls[0] if tls else None
        self._ssl_client: _ssl.SSLContext | None = tls[1] if tls else None
        self._keyring = keyring(secret) if secret is not None else ()
        self._clock = clock
        self._network: Network = network or TcpNetwork()
        rng: random.Random = self._network.random()
        #: Largest frame read or sent: by default room for the largest value.
        self.max_frame_bytes = (
            frame_limit(engine.config.max_value_bytes)
            if max_frame_bytes is None
            else max_frame_bytes
        )
        self.max_connections = max_connections
        self.max_handshakes = max_handshakes
        self.send_buffer = send_buffer
        self.handshake_timeout = handshake_timeout
        self.handshake_idle_timeout = handshake_idle_timeout
        self.tick_interval = tick_interval
        self.incarnation = rng.getrandbits(62) + 1
        #: A client only asks for cache operations: no gossip, not dialled back or announced.
        self.client_mode = client_mode
        self.mesh = Mesh(Identity(self.node_id, cluster, 0, self.incarnation))
        self._dialer = Dialer(self, rng)
        self._dialer.forget_silent_after = forget_silent_after
        self.links = Links(self)
        self._address: str | None = None
        self._listener: Listener | None = None
        # An ordered set: shutdown cancels in a repeatable order (MemoryNetwork runs).
        self._tasks: dict[asyncio.Task[Any], None] = {}
        self._tick_handle: asyncio.TimerHandle | None = None
        self._flush_handle: asyncio.Handle | None = None
        # Futures resolved by the engine's completion events, by ack or fetch id.
        self._waiters: dict[tuple[bool, int], asyncio.Future[None]] = {}
        self._on_changes: Callable[[list[Change]], None] | None = None
        self._on_peer: Callable[[PeerEvent], None] | None = None
        self._started = False
        self._closing = False
        #: Serves :class:`AdminRequest` (the cache installs it): ``await admin(op, args)``.
        self.admin: Callable[[str, tuple[Any, ...]], Awaitable[Any]] | None = None

    # ------------------------------------------------------------ lifecycle
    @property
    def address(self) -> str | None:
        """``host:port`` actually bound (after :meth:`start`)."""
        return self._address

    def listen(
        self, on_changes: Callable[[list[Change]], None], on_peer: Callable[[PeerEvent], None]
    ) -> None:
        """Register the callbacks that receive drained changes and peer events."""
        self._on_changes = on_changes
        self._on_peer = on_peer

    async def start(self) -> None:
        """Bind, start ticking and start discovery. Raises :class:`PeerError`."""
        if self._started:
            return
        host, port = self._listen
        tls = self._ssl_server is not None
        self._listener = await self._network.listen(host, port, self.links.accept, tls=tls)
        bound_host, bound_port = self._listener.address
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self._address = f"{shown}:{bound_port}"
        if not self.client_mode:  # a client announces port 0: it is not to be dialled
            self.mesh.local = replace(self.mesh.local, port=bound_port)
        self._dialer.bound.set()
        if not self._keyring and not tls and not self._listener.loopback_only():
            # Redis's protected-mode idea: say it once, loudly, where operators look.
            log.warning(
                "node %s listens on %s without secret= or ssl=: anyone who can reach this "
                "port can read and change the cache; set a cluster secret or mutual TLS",
                self.node_id,
                self._address,
                extra={"node": self.node_id},
            )
        self._started = True
        if not self.client_mode:
            self._tick_handle = asyncio.get_running_loop().call_later(0, self._tick)
        if self._discovery is not None:
            me = PeerAddress(bound_host, bound_port, self.node_id)
            await self._discovery.start(self.node_id, me, self._dialer.found, self._dialer.lost)
        log.info("node %s listening on %s (cluster %r)", self.node_id, self._address, self.cluster)

    async def close(self) -> None:
        """Flush queued deltas to connected peers, say goodbye and stop. Idempotent."""
        if not self._started or self._closing:
            return
        self._closing = True
        for handle in (self._tick_handle, self._flush_handle):
            if handle is not None:
                handle.cancel()
        self._deliver(self.engine.flush(self._clock())[0])
        if self._discovery is not None:
            try:
                await self._discovery.close()
            except Exception:  # discovery trouble must not stop a clean shutdown
                log.exception("error while closing discovery")
        if self._listener is not None:
            self._listener.close()
        await self.links.close()
        # Cancel until none is left: a handshake finishing during shutdown may have
        # spawned a task, and on Python < 3.12 wait_for can swallow a cancellation.
        for _ in range(10):
            if not self._tasks:
                break
            for task in list(self._tasks):
                task.cancel()
            await asyncio.wait(list(self._tasks), timeout=1.0)
        self.links.abort()
        self.links.throttle.flush(self._clock(), force=True)
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        log.info("node %s closed", self.node_id)

    # ------------------------------------------------------- peers to dial
    def add_seed(self, address: str) -> None:
        """Keep a connection to ``host:port`` (retried with backoff for as long as we run)."""
        host, port = parse_address(address)
        self._dialer.want(PeerAddress(host, port), seed=True)

    def connect(self, address: PeerAddress) -> None:
        """Dial ``address`` (and redial while it is wanted)."""
        self._dialer.want(address, seed=False)

    def link_to(self, node_id: str) -> Connection | None:
        """The open connection to ``node_id``, if any."""
        return self.links.link_to(node_id)

    def connections(self) -> dict[str, Connection]:
        """The open connection to each linked peer, by node id."""
        return self.links.connections()

    # ------------------------------------------------------------- links
    async def dial(self, address: PeerAddress) -> Connection | None:
        """Dial ``address`` once and open the link (None: it lost a duplicate race)."""
        stream = await self._network.connect(address.host, address.port)
        return await self.links.open(self.links.connection(stream, dialed=True))

    def _member_joined(self, peer: str) -> bool:
        """A member link opened; False if the engine's peer table has no room for it."""
        self._deliver(self.engine.peer_reachable(peer, self._clock()))
        self._after_engine()
        return peer in self.engine.peers

    def _handle(self, peer: str, message: Message) -> None:
        try:
            out = self.engine.handle(peer, message, self._clock())
        except (ValueError, TypeError, KeyError) as exc:
            raise ProtocolError(f"message refused by the engine: {exc}") from exc
        self._deliver(out)
        self._after_engine()

    def _member_left(self, peer: str) -> None:
        # It left on purpose: forget it rather than keep a dead member around (a
        # restarted node, or a CLI client, is added again).
        self.engine.remove_peer(peer)
        self._after_engine()

    def _member_lost(self, peer: str) -> None:
        self.engine.peer_unreachable(peer, self._clock())
        self._after_engine()

    async def request(self, peer: str, op: str, *args: Any, timeout: float = 5.0) -> Any:
        """Ask ``peer`` to run the cache operation ``op``; return its result.

        Raises :class:`PeerError` if it is not connected, does not answer within
        ``timeout``, refuses (with its error text), or the link drops first.
        """
        return await self.links.request(peer, op, args, timeout)

    # ------------------------------------------------------------- engine
    def _deliver(self, outgoing: Sequence[Outgoing]) -> None:
        encoded: dict[int, bytes] = {}
        for peer, message in outgoing:
            conn = self.link_to(peer)
            if conn is None:
                continue
            body = encoded.get(id(message))
            if body is None:
                body = encoded[id(message)] = encode(message)
            if not conn.send(body) and conn.stalled_since is None:
                conn.stalled_since = self._clock()

    def _after_engine(self) -> None:
        engine = self.engine
        changes = engine.drain_changes()
        if changes and self._on_changes is not None:
            self._on_changes(changes)
        events = engine.drain_peer_events()
        if events and self._on_peer is not None:
            for event in events:
                self._on_peer(event)
        for done in engine.drain_completions():
            key = (True, done.ack) if isinstance(done, AckDone) else (False, done.request)
            waiter = self._waiters.pop(key, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _tick(self) -> None:
        if self._closing:
            return
        now = self._clock()
        try:
            for peer, conn in self.connections().items():
                # A peer whose send buffer is half full gets no anti-entropy answer
                # built for it until it drains (the frames would only be dropped).
                self.engine.set_congested(peer, conn.buffered() > conn.send_buffer // 2)
            self._deliver(self.engine.tick(now))
            self._after_engine()
            self.links.throttle.flush(now)
            for conn in list(self.links.by_session.values()):
                if conn.stalled_since is None:
                    continue
                if conn.buffered() <= conn.send_buffer:
                    conn.stalled_since = None
                elif now - conn.stalled_since > STALL_TIMEOUT:
                    stuck = now - conn.stalled_since
                    log.warning("dropping connection to %s: stuck for %.0f s", conn.label, stuck)
                    self.links.drop(conn, "send buffer stuck")
        finally:
            delay = min(self.tick_interval, max(0.0, self.engine.next_deadline() - now))
            self._tick_handle = asyncio.get_running_loop().call_later(delay, self._tick)

    def wake(self) -> None:
        """A local write was queued: flush it when the engine says it is due.

        Due now (an idle link), the flush runs in the next loop step rather than in
        this call, so that the writes a caller makes before it yields share one push.
        """
        if self._flush_handle is not None or self._closing or not self._started:
            return
        deadline = self.engine.flush_deadline()
        if deadline is None:
            return  # nothing may leave yet (the durability gate wakes us again)
        loop = asyncio.get_running_loop()
        delay = deadline - self._clock()
        if delay > 0:
            self._flush_handle = loop.call_later(delay, self._flush_now)
        else:
            self._flush_handle = loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_handle = None
        now = self._clock()
        if self.engine.flush_due(now):
            self._deliver(self.engine.flush(now)[0])
        else:
            # The loop's clock is not the engine's: a timer may fire a hair early.
            self.wake()

    async def flush(self, *, ack: bool, timeout: float) -> frozenset[str]:
        """Push queued deltas now; with ``ack``, wait for every live linked peer to apply.

        Returns the peers that had not acknowledged when ``timeout`` ran out.
        """
        out, ack_id = self.engine.flush(self._clock(), ack=ack)
        if not ack_id:
            self._deliver(out)
            return frozenset()
        await self._until_done((True, ack_id), out, timeout)
        missing = self.engine.unacked(ack_id)
        self.engine.forget_ack(ack_id)
        return missing

    async def fetch(self, keys: Sequence[str], timeout: float) -> None:
        """Ask live peers for ``keys``; returns once they arrived or nobody can answer.

        Returns after ``timeout`` seconds at the latest.
        """
        request, out = self.engine.start_fetch(keys, self._clock())
        if request:
            await self._until_done((False, request), out, timeout)
            self.engine.forget_fetch(request)

    async def _until_done(
        self, key: tuple[bool, int], out: Sequence[Outgoing], timeout: float
    ) -> None:
        """Send ``out`` and wait (at most ``timeout``) for the completion event ``key``."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[key] = waiter
        self._deliver(out)
        self._after_engine()
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters.pop(key, None)

    # ------------------------------------------------------------- helpers
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks[task] = None
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        # Every task's outcome is taken here, so none ends as "exception never retrieved".
        self._tasks.pop(task, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("node %s: a task failed", self.node_id, exc_info=exc)

    def connected_peers(self) -> dict[str, str]:
        """Connected peers: node id -> the address they listen on."""
        return {peer: conn.listen_address for peer, conn in self.connections().items()}

    @property
    def protocol_errors(self) -> int:
        """Links dropped (or refused) for junk from the peer."""
        return self.links.protocol_errors

    @property
    def auth_failures(self) -> int:
        """Links refused because the peer could not prove its identity."""
        return self.links.auth_failures

    @property
    def handshake_failures(self) -> int:
        """Streams whose handshake failed."""
        return self.links.handshake_failures

    @property
    def refused_connections(self) -> int:
        """Streams refused because ``max_connections`` were open."""
        return self.links.refused_connections

    def statistics(self) -> TransportStatistics:
        """Transport counters: bytes and frames sent/received, connections, errors."""
        links = self.links
        conns = list(links.streams)
        closed = links.closed_counts
        return TransportStatistics(
            bytes_sent=closed[0] + sum(c.bytes_sent for c in conns),
            bytes_received=closed[1] + sum(c.bytes_received for c in conns),
            frames_sent=closed[2] + sum(c.frames_sent for c in conns),
            frames_received=closed[3] + sum(c.frames_received for c in conns),
            frames_dropped=sum(c.dropped for c in conns),
            connections=len(self.mesh.links),
            protocol_errors=links.protocol_errors,
            auth_failures=links.auth_failures,
            handshake_failures=links.handshake_failures,
            refused_connections=links.refused_connections,
            evicted_handshakes=links.evicted_handshakes,
            ignored_hints=self._dialer.ignored_hints,
            authenticated=bool(self._keyring),
            tls=self._ssl_server is not None,
            peer_addresses=self.connected_peers(),
        )
