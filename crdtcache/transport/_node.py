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
lists), redialling with exponential backoff and jitter while the address is wanted.
Every stream is opened by :func:`~crdtcache.transport._handshake.open_link` (TLS, the
secret's handshake, hellos) within the handshake timeout, before the engine hears of
the peer; a refused stream costs one log line and is counted in ``statistics()``.

The engine is touched only from the event loop: the reader task of each link hands
messages to the mesh and gossip to ``engine.handle``; a periodic callback calls
``engine.tick``; a write wakes a one-shot flush at the engine's next flush time.
Whatever the engine returns is encoded once per message and written to each peer's
connection, whose send buffer is bounded (a stuck peer loses frames, repaired by
anti-entropy, and is dropped if it stays stuck). A write-through flush and a fetch
wait on futures that :class:`~crdtcache.core._completion.AckDone` and ``FetchDone``
resolve; an admin request waits for its reply, or fails when its link drops.

Any exception while reading or handling a link's message drops that link, with one
log line; it never escapes into the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl as _ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from crdtcache._errors import CacheError, ConfigError, PeerError, ProtocolError
from crdtcache.core import GossipEngine, Outgoing
from crdtcache.core._completion import AckDone
from crdtcache.core._format import InvalidRecord, check_cluster
from crdtcache.core._link import (
    AdminAnswered,
    AdminAsked,
    Dial,
    Gossip,
    Identity,
    IdentityError,
    Left,
    LinkEvent,
    LinkSession,
    Mesh,
    SelfDial,
)
from crdtcache.core._messages import AdminReply, AdminRequest, Bye, Message
from crdtcache.discovery._base import Discovery, PeerAddress
from crdtcache.runtime._protocol import ChangeListener, PeerListener
from crdtcache.transport._connection import MAX_SEND_BUFFER, Connection
from crdtcache.transport._dialer import Dialer
from crdtcache.transport._handshake import open_link
from crdtcache.transport._network import Listener, Network, TcpNetwork
from crdtcache.transport._stream import Stream, StreamClosed, StreamError
from crdtcache.transport._tls import check_tls_contexts
from crdtcache.wire._auth import keyring
from crdtcache.wire._codec import encode
from crdtcache.wire._framing import MAX_FRAME_BYTES

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "MAX_CONNECTIONS",
    "Node",
    "TransportStatistics",
    "parse_address",
]

log = logging.getLogger(__name__)

#: Seconds a new stream has to complete its handshake (TLS, authentication, hellos).
HANDSHAKE_TIMEOUT: Final = 5.0
#: Streams (handshaking or established) accepted at once; more are refused.
MAX_CONNECTIONS: Final = 256
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
        max_frame_bytes: int = MAX_FRAME_BYTES,
        max_connections: int = MAX_CONNECTIONS,
        send_buffer: int = MAX_SEND_BUFFER,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
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
        self.max_frame_bytes = max_frame_bytes
        self.max_connections = max_connections
        self.send_buffer = send_buffer
        self.handshake_timeout = handshake_timeout
        self.tick_interval = tick_interval
        self.incarnation = rng.getrandbits(62) + 1
        #: A client only asks nodes for cache operations: it follows no gossip, is not
        #: dialled back and is not announced to other peers.
        self.client_mode = client_mode
        self.mesh = Mesh(Identity(self.node_id, cluster, 0, self.incarnation))
        self._dialer = Dialer(self, rng)
        self._address: str | None = None
        self._listener: Listener | None = None
        self._links: dict[LinkSession, Connection] = {}
        # Dicts used as ordered sets: shutdown walks them in a repeatable order, which a
        # simulated network (crdtcache.testing.MemoryNetwork) needs to repeat a run.
        self._streams: dict[Connection, None] = {}
        self._tasks: dict[asyncio.Task[Any], None] = {}
        self._tick_handle: asyncio.TimerHandle | None = None
        self._flush_handle: asyncio.TimerHandle | None = None
        # Futures resolved by the engine's completion events, by ack or fetch id.
        self._waiters: dict[tuple[bool, int], asyncio.Future[None]] = {}
        self._admin_waiters: dict[tuple[LinkSession, int], asyncio.Future[AdminReply]] = {}
        self._on_changes: ChangeListener | None = None
        self._on_peer: PeerListener | None = None
        self._started = False
        self._closing = False
        #: Serves :class:`AdminRequest` (the cache installs it): ``await admin(op, args)``.
        self.admin: Callable[[str, tuple[Any, ...]], Awaitable[Any]] | None = None
        self.protocol_errors = 0
        self.refused_connections = 0
        self.auth_failures = 0
        self.handshake_failures = 0
        self._closed_counts = [0, 0, 0, 0]  # bytes and frames of closed connections

    # ------------------------------------------------------------ lifecycle
    @property
    def address(self) -> str | None:
        """``host:port`` actually bound (after :meth:`start`)."""
        return self._address

    def listen(self, on_changes: ChangeListener, on_peer: PeerListener) -> None:
        """Register the callbacks that receive drained changes and peer events."""
        self._on_changes = on_changes
        self._on_peer = on_peer

    async def start(self) -> None:
        """Bind, start ticking and start discovery. Raises :class:`PeerError`."""
        if self._started:
            return
        host, port = self._listen
        tls = self._ssl_server is not None
        self._listener = await self._network.listen(host, port, self._accept, tls=tls)
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
        bye = encode(Bye())
        for conn in self._links.values():
            conn.send(bye)
        if self._discovery is not None:
            try:
                await self._discovery.close()
            except Exception:  # discovery trouble must not stop a clean shutdown
                log.exception("error while closing discovery")
        if self._listener is not None:
            self._listener.close()
        await asyncio.gather(*(c.close() for c in list(self._streams)), return_exceptions=True)
        # Cancel until none is left: a handshake finishing during shutdown may have
        # spawned a task, and on Python < 3.12 wait_for can swallow a cancellation.
        for _ in range(10):
            if not self._tasks:
                break
            for task in list(self._tasks):
                task.cancel()
            await asyncio.wait(list(self._tasks), timeout=1.0)
        for conn in list(self._streams):
            conn.abort()
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
        session = self.mesh.links.get(node_id)
        return None if session is None else self._links.get(session)

    def connections(self) -> dict[str, Connection]:
        """The open connection to each linked peer, by node id."""
        return {peer: self._links[s] for peer, s in self.mesh.links.items() if s in self._links}

    async def dial(self, address: PeerAddress) -> Connection | None:
        """Dial ``address`` once and open the link (see :meth:`_open`)."""
        stream = await self._network.connect(address.host, address.port)
        conn = Connection(
            stream, dialed=True, max_frame_bytes=self.max_frame_bytes, send_buffer=self.send_buffer
        )
        return await self._open(conn)

    # ------------------------------------------------------------ streams
    async def _accept(self, stream: Stream) -> None:
        if self._closing:
            log.debug("refusing a connection from %s: shutting down", stream.extra("peername"))
            stream.abort()
            return
        if len(self._streams) >= self.max_connections:
            self.refused_connections += 1
            log.warning(
                "refusing a connection from %s: %d streams open (limit %d)",
                stream.extra("peername"),
                len(self._streams),
                self.max_connections,
            )
            stream.abort()
            return
        conn = Connection(
            stream, dialed=False, max_frame_bytes=self.max_frame_bytes, send_buffer=self.send_buffer
        )
        # A failed handshake has been logged once already; letting it escape would make
        # asyncio log it again ("Unhandled exception in client_connected_cb").
        with contextlib.suppress(SelfDial, PeerError):
            await self._open(conn)

    async def _open(self, conn: Connection) -> Connection | None:
        """Run the handshake and register the link.

        Returns the registered connection, or None if it lost a duplicate race.
        Raises for a failed handshake (after logging and closing the stream).
        """
        session = self.mesh.session(dialed=conn.dialed, remote_host=conn.remote_host)
        conn.session = session
        self._streams[conn] = None
        tls = self._ssl_client if conn.dialed else self._ssl_server
        try:
            await open_link(
                conn, session, tls=tls, keyring=self._keyring, timeout=self.handshake_timeout
            )
        except SelfDial:
            self._streams.pop(conn, None)
            conn.abort()
            raise
        except Exception as exc:
            await self._refused(conn, exc)
            raise exc if isinstance(exc, PeerError) else ProtocolError(str(exc)) from exc
        kept, replaced = self.mesh.register(session) if not self._closing else (False, None)
        if not kept:
            log.debug("keeping the existing connection to %s", session.peer)
            self._streams.pop(conn, None)
            await conn.close(0.1)
            return None
        self._links[session] = conn
        if replaced is not None and replaced in self._links:
            log.debug("replacing the connection to %s", session.peer)
            self._links[replaced].abort()
        self._spawn(self._read_loop(conn, session))
        self._joined(conn, session)
        return conn

    async def _refused(self, conn: Connection, exc: Exception) -> None:
        """Count and log a failed handshake once; tell the peer why if it is worth it."""
        self._streams.pop(conn, None)
        self.handshake_failures += 1
        self.protocol_errors += isinstance(exc, ProtocolError)
        self.auth_failures += isinstance(exc, IdentityError)
        reason = _reason(exc)
        if conn.tls and isinstance(exc, StreamClosed) and not exc.truncated:
            # TLS 1.3 reports a refused client certificate only after the handshake.
            reason = (
                "the peer closed the stream right after TLS "
                "(it may have refused this node's certificate)"
            )
        log.warning(
            "dropping connection from %s: %s", conn.label, reason, extra={"node": self.node_id}
        )
        if not isinstance(exc, PeerError):  # a bug of ours: show where
            log.error("unexpected handshake error", exc_info=exc)
        reply = getattr(exc, "reply", None)
        if isinstance(reply, bytes):
            # Tell a peer speaking the other mode why, so its log says so too.
            conn.send(reply)
            await conn.close(0.2)
        else:
            conn.abort()

    def _joined(self, conn: Connection, session: LinkSession) -> None:
        assert session.peer is not None
        if not session.member:
            # We are a client, or the peer is one (it listens nowhere): no membership,
            # no gossip, only cache operations.
            log.debug("connected to %s (client link)", conn.label)
            return
        self._deliver(self.engine.peer_reachable(session.peer, self._clock()))
        self._after_engine()
        announcements, dials = self.mesh.joined(session)
        for dial in dials:
            self._dialer.want(PeerAddress(dial.host, dial.port, dial.node), seed=False)
        for announce in announcements:
            self._links[announce.link].send(encode(announce.message))
        log.info("connected to %s%s", conn.label, " (authenticated)" if conn.secured else "")

    async def _read_loop(self, conn: Connection, session: LinkSession) -> None:
        reason = "closed by peer"
        try:
            while True:
                message = await conn.read_message()
                for event in self.mesh.receive(session, message):
                    self._on_event(conn, session, event)
                if isinstance(message, Bye):
                    reason = "peer said goodbye"
                    break
        except StreamClosed as exc:
            if exc.truncated:
                self.protocol_errors += 1
                log.warning("dropping connection from %s: truncated frame", conn.label)
        except ProtocolError as exc:
            self.protocol_errors += 1
            self.auth_failures += isinstance(exc, IdentityError)
            log.warning(
                "dropping connection from %s: %s", conn.label, exc, extra={"node": self.node_id}
            )
            reason = str(exc)
        except StreamError as exc:
            reason = str(exc)
        except Exception as exc:  # a bug of ours must cost one link, never the node
            self.protocol_errors += 1
            log.exception("dropping connection from %s: unexpected error", conn.label)
            reason = f"unexpected error: {exc!r}"
        finally:
            self._drop(conn, reason)

    def _on_event(self, conn: Connection, session: LinkSession, event: LinkEvent) -> None:
        peer = session.peer
        assert peer is not None
        if isinstance(event, Gossip):
            self._handle(peer, event.message)
        elif isinstance(event, Left):
            # It left on purpose: forget it rather than keep a dead member around (a
            # restarted node, or a CLI client, is added again).
            self.engine.remove_peer(peer)
            self._after_engine()
        elif isinstance(event, AdminAsked):
            self._spawn(self._serve_admin(conn, event.request))
        elif isinstance(event, AdminAnswered):
            waiter = self._admin_waiters.pop((session, event.reply.request), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(event.reply)
        elif isinstance(event, Dial):
            self._dialer.want(PeerAddress(event.host, event.port, event.node), seed=False)

    def _handle(self, peer: str, message: Message) -> None:
        try:
            out = self.engine.handle(peer, message, self._clock())
        except (ValueError, TypeError, KeyError) as exc:
            raise ProtocolError(f"message refused by the engine: {exc}") from exc
        self._deliver(out)
        self._after_engine()

    def _drop(self, conn: Connection, reason: str) -> None:
        conn.abort()
        if conn in self._streams:  # counted once, however many paths drop it
            self._streams.pop(conn, None)
            counts = (conn.bytes_sent, conn.bytes_received, conn.frames_sent, conn.frames_received)
            self._closed_counts = [a + b for a, b in zip(self._closed_counts, counts, strict=True)]
        session = conn.session
        if session is None or self._links.pop(session, None) is None:
            return
        for request in session.close():
            waiter = self._admin_waiters.pop((session, request), None)
            if waiter is not None and not waiter.done():
                waiter.set_exception(PeerError(f"lost the link to {session.peer}: {reason}"))
        if self.mesh.remove(session) and not self._closing:
            assert session.peer is not None
            log.info("lost %s: %s", conn.label, reason)
            self.engine.peer_unreachable(session.peer, self._clock())
            self._after_engine()

    # ------------------------------------------------------ admin requests
    async def _serve_admin(self, conn: Connection, request: AdminRequest) -> None:
        handler = self.admin
        if handler is None:
            reply = AdminReply(request.request, False, "this node serves no cache operations")
        else:
            try:
                reply = LinkSession.answer(request, True, await handler(request.op, request.args))
            except CacheError as exc:
                reply = LinkSession.answer(request, False, str(exc))
        try:
            conn.send(encode(reply))
        except (TypeError, ValueError, ProtocolError) as exc:
            conn.send(encode(AdminReply(request.request, False, f"unsendable result: {exc}")))

    async def request(self, peer: str, op: str, *args: Any, timeout: float = 5.0) -> Any:
        """Ask ``peer`` to run the cache operation ``op``; return its result.

        Raises :class:`PeerError` if it is not connected, does not answer within
        ``timeout``, refuses (with its error text), or the link drops first.
        """
        session = self.mesh.links.get(peer)
        if session is None or session not in self._links:
            raise PeerError(f"not connected to {peer}")
        message = session.ask(op, args)
        key = (session, message.request)
        waiter: asyncio.Future[AdminReply] = asyncio.get_running_loop().create_future()
        self._admin_waiters[key] = waiter
        self._links[session].send(encode(message))
        try:
            reply = await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise PeerError(f"{peer} did not answer {op} within {timeout} s") from None
        finally:
            self._admin_waiters.pop(key, None)
            session.forget(message.request)
        if not reply.ok:
            raise PeerError(f"{peer} refused {op}: {reply.result}")
        return reply.result

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
            self._deliver(self.engine.tick(now))
            self._after_engine()
            for conn in list(self._links.values()):
                if conn.stalled_since is None:
                    continue
                if conn.buffered() <= conn.send_buffer:
                    conn.stalled_since = None
                elif now - conn.stalled_since > STALL_TIMEOUT:
                    stuck = now - conn.stalled_since
                    log.warning("dropping connection to %s: stuck for %.0f s", conn.label, stuck)
                    self._drop(conn, "send buffer stuck")
        finally:
            delay = min(self.tick_interval, max(0.0, self.engine.next_deadline() - now))
            self._tick_handle = asyncio.get_running_loop().call_later(delay, self._tick)

    def wake(self) -> None:
        """A local write was queued: flush it at the engine's next flush time."""
        if self._flush_handle is not None or self._closing or not self._started:
            return
        delay = max(0.0, self.engine.next_deadline() - self._clock())
        self._flush_handle = asyncio.get_running_loop().call_later(delay, self._flush_now)

    def _flush_now(self) -> None:
        self._flush_handle = None
        self._deliver(self.engine.flush(self._clock())[0])

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

    def statistics(self) -> TransportStatistics:
        """Transport counters: bytes and frames sent/received, connections, errors."""
        conns = list(self._streams)
        closed = self._closed_counts
        return TransportStatistics(
            bytes_sent=closed[0] + sum(c.bytes_sent for c in conns),
            bytes_received=closed[1] + sum(c.bytes_received for c in conns),
            frames_sent=closed[2] + sum(c.frames_sent for c in conns),
            frames_received=closed[3] + sum(c.frames_received for c in conns),
            frames_dropped=sum(c.dropped for c in conns),
            connections=len(self.mesh.links),
            protocol_errors=self.protocol_errors,
            auth_failures=self.auth_failures,
            handshake_failures=self.handshake_failures,
            refused_connections=self.refused_connections,
            authenticated=bool(self._keyring),
            tls=self._ssl_server is not None,
            peer_addresses=self.connected_peers(),
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, StreamClosed):
        return "truncated frame" if exc.truncated else "closed before the handshake finished"
    return str(exc) or type(exc).__name__
