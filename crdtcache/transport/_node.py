"""The p2p runtime: drives a gossip engine over TCP in an asyncio event loop.

Theory of operation
-------------------
The node listens on ``listen`` and dials every address it learns (from discovery,
from seeds, or from a peer's hello). Each stream starts with a :class:`Hello` both
ways (protocol version, cluster name, node id, listening port, incarnation); a
mismatch drops the stream with one log line. There is one connection per pair of
nodes: when both dial at once, both keep the one dialed by the smaller node id; a
hello with a new incarnation replaces a stale connection of a restarted peer.

Security, all inside the handshake timeout and before the engine hears of the peer:
with ``ssl``, the stream is first upgraded to mutual TLS (the node id of the hello must
be one the peer's certificate names, see :mod:`~crdtcache.transport._tls`); with a
``secret``, the hellos travel inside the authenticated handshake of
:mod:`~crdtcache.wire._auth` and every later frame is sealed. A refused stream
costs one log line and is counted in ``statistics()``.

The engine is touched only from the event loop: frames are decoded in the reader
task and handed to ``engine.handle``; a periodic callback calls ``engine.tick``; a
write wakes a one-shot flush at the engine's next flush time. Whatever the engine
returns is encoded once per message and written to each peer's connection, whose
send buffer is bounded (a stuck peer loses frames, repaired by anti-entropy, and is
dropped if it stays stuck).

Lost links are reported to the engine at once (it stops pushing to the peer and
write-through stops waiting for it) and redialled with exponential backoff and jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import ssl as _ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from crdtcache._errors import CacheError, ConfigError, PeerError, ProtocolError
from crdtcache.core import Change, GossipEngine, Outgoing, PeerEvent
from crdtcache.core._format import InvalidRecord, check_cluster
from crdtcache.discovery._base import Discovery, PeerAddress
from crdtcache.transport._connection import MAX_SEND_BUFFER, Connection
from crdtcache.transport._tls import certificate_node_ids, check_tls_contexts
from crdtcache.wire._auth import (
    AWAIT_ACCEPT,
    AWAIT_CHALLENGE,
    AWAIT_PROOF,
    DONE,
    MAX_HANDSHAKE_BYTES,
    PEER_PROVED,
    AuthError,
    Handshake,
    keyring,
)
from crdtcache.wire._codec import (
    PROTOCOL_VERSION,
    AdminReply,
    AdminRequest,
    AuthAccept,
    AuthChallenge,
    AuthHello,
    AuthProof,
    Bye,
    Hello,
    PeerList,
    encode,
)
from crdtcache.wire._framing import MAX_FRAME_BYTES

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "TransportStatistics",
    "MAX_BACKOFF",
    "MAX_CONNECTIONS",
    "Node",
    "parse_address",
]

log = logging.getLogger(__name__)

#: Seconds a new stream has to complete its handshake (TLS, authentication, hellos).
HANDSHAKE_TIMEOUT: Final = 5.0
#: Why a peer that closes the stream silently in each handshake state most likely did.
_CLOSED_DURING_AUTH: Final = {
    AWAIT_CHALLENGE: "the peer closed the stream instead of answering the authenticated "
    "handshake (it refuses this node's version or configuration)",
    AWAIT_PROOF: "the peer closed the stream after this node's challenge: "
    "it does not hold the cluster secret",
    AWAIT_ACCEPT: "the peer closed the stream after this node's proof: it refused this "
    "node (cluster, node id or certificate)",
}
#: Seconds a dial may take.
CONNECT_TIMEOUT: Final = 3.0
#: Streams (handshaking or established) accepted at once; more are refused.
MAX_CONNECTIONS: Final = 256
#: Redial backoff bounds, seconds.
INITIAL_BACKOFF: Final = 0.05
MAX_BACKOFF: Final = 5.0
#: Seconds between periodic engine ticks (heartbeats, anti-entropy, collection).
TICK_INTERVAL: Final = 0.05
#: Seconds a peer's send buffer may stay over the limit before the link is dropped.
STALL_TIMEOUT: Final = 10.0
#: Seconds to keep redialling an address that never answered (not a seed).
FORGET_AFTER: Final = 120.0


def parse_address(text: str) -> tuple[str, int]:
    """Split ``"host:port"`` (or ``"[v6]:port"``), raising ``ConfigError`` if malformed."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"address {text!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


@dataclass(slots=True)
class _Dialing:
    address: PeerAddress
    seed: bool
    task: asyncio.Task[None] | None = None


class Node:
    """Runs one :class:`GossipEngine` over TCP (implements the cache's ``Runtime``).

    ``secret`` (bytes, or a list whose first entry signs and all are accepted) turns
    on the authenticated handshake and sealed frames; ``ssl_server`` and
    ``ssl_client`` (both or neither) turn on mutual TLS. Raises :class:`ConfigError`
    for a bad ``listen`` address, secret or TLS context, and :class:`PeerError` if the
    address cannot be bound.
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
        self.max_frame_bytes = max_frame_bytes
        self.max_connections = max_connections
        self.send_buffer = send_buffer
        self.handshake_timeout = handshake_timeout
        self.tick_interval = tick_interval
        self.incarnation = random.getrandbits(62) + 1
        self._rng = random.Random()
        self._address: str | None = None
        self._server: asyncio.Server | None = None
        self._conns: dict[str, Connection] = {}
        self._streams: set[Connection] = set()
        self._dialing: dict[str, _Dialing] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tick_handle: asyncio.TimerHandle | None = None
        self._flush_handle: asyncio.TimerHandle | None = None
        self._ack_waiters: dict[int, asyncio.Future[None]] = {}
        self._on_changes: Callable[[list[Change]], None] | None = None
        self._on_peer: Callable[[PeerEvent], None] | None = None
        self._started = False
        self._bound = asyncio.Event()
        #: A client only asks nodes for cache operations: it follows no gossip, is not
        #: dialled back and is not announced to other peers.
        self.client_mode = client_mode
        #: Serves :class:`AdminRequest` (the cache installs it): ``await admin(op, args)``.
        self.admin: Callable[[str, tuple[Any, ...]], Awaitable[Any]] | None = None
        self._admin_seq = 0
        self._admin_waiters: dict[int, asyncio.Future[AdminReply]] = {}
        self._closing = False
        self.protocol_errors = 0
        self.refused_connections = 0
        self.auth_failures = 0
        self.handshake_failures = 0
        self._closed_bytes = [0, 0, 0, 0]  # counters of closed connections

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
        """Bind, start ticking and start discovery."""
        if self._started:
            return
        host, port = self._listen
        try:
            self._server = await self._listen_on(host, port)
        except OSError as exc:
            raise PeerError(f"cannot listen on {host}:{port}: {exc}") from exc
        sock = self._server.sockets[0].getsockname()
        bound_host = f"[{sock[0]}]" if ":" in sock[0] else sock[0]
        self._address = f"{bound_host}:{sock[1]}"
        self._bound.set()
        if not self._keyring and self._ssl_server is None and not self._loopback_only():
            # Redis's protected-mode idea: say it once, loudly, where operators look.
            log.warning(
                "node %s listens on %s without secret= or ssl=: anyone who can reach this "
                "port can read and change the cache; set a cluster secret or mutual TLS",
                self.node_id,
                self._address,
                extra={"node": self.node_id},
            )
        self._started = True
        loop = asyncio.get_running_loop()
        if not self.client_mode:
            self._tick_handle = loop.call_later(0, self._tick)
        if self._discovery is not None:
            await self._discovery.start(
                self.node_id, PeerAddress(sock[0], sock[1], self.node_id), self._found, self._lost
            )
        log.info("node %s listening on %s (cluster %r)", self.node_id, self._address, self.cluster)

    async def _listen_on(self, host: str, port: int) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        tls = self._ssl_server is not None

        def factory() -> asyncio.StreamReaderProtocol:
            reader = asyncio.StreamReader(limit=1 << 16, loop=loop)
            return _StreamProtocol(reader, self._accept, pause=tls)

        # Like asyncio.start_server, but TLS is started by the handshake itself (not by
        # the server) so that a failed TLS handshake is logged, counted and timed out
        # like any other refusal.
        return await loop.create_server(factory, host, port)

    def _loopback_only(self) -> bool:
        assert self._server is not None
        for sock in self._server.sockets:
            try:
                if not ipaddress.ip_address(sock.getsockname()[0].split("%")[0]).is_loopback:
                    return False
            except ValueError:  # not an IP address (a Unix socket?): be cautious
                return False
        return True

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
        for conn in list(self._conns.values()):
            conn.send(bye)
        if self._discovery is not None:
            try:
                await self._discovery.close()
            except Exception:  # discovery trouble must not stop a clean shutdown
                log.exception("error while closing discovery")
        if self._server is not None:
            self._server.close()
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
        for waiter in self._ack_waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        log.info("node %s closed", self.node_id)

    # ------------------------------------------------------- peers to dial
    def add_seed(self, address: str) -> None:
        """Keep a connection to ``host:port`` (retried with backoff for as long as we run)."""
        host, port = parse_address(address)
        self._want(PeerAddress(host, port), seed=True)

    def connect(self, address: PeerAddress) -> None:
        """Dial ``address`` (and redial while it is wanted)."""
        self._want(address, seed=False)

    def _found(self, address: PeerAddress) -> None:
        if address.node_id != self.node_id:
            self._want(address, seed=False)

    def _lost(self, node_id: str) -> None:
        for key, dialing in list(self._dialing.items()):
            if dialing.address.node_id == node_id and not dialing.seed:
                self._stop_dialing(key)

    def _want(self, address: PeerAddress, *, seed: bool) -> None:
        if self._closing:
            return
        key = str(address)
        if key == self._address:
            return
        current = self._dialing.get(key)
        if current is not None:
            if address.node_id and not current.address.node_id:
                current.address = address
            return
        dialing = _Dialing(address, seed)
        self._dialing[key] = dialing
        dialing.task = self._spawn(self._maintain(key, dialing))

    def _stop_dialing(self, key: str) -> None:
        dialing = self._dialing.pop(key, None)
        if dialing is not None and dialing.task is not None:
            dialing.task.cancel()

    async def _maintain(self, key: str, dialing: _Dialing) -> None:
        """Keep one link to an address: dial, wait for it to drop, back off, redial."""
        backoff = INITIAL_BACKOFF
        failing_since: float | None = None
        # Seeds may be added before start(): dial only once we listen, or our hello
        # would announce port 0 and the peer would take us for a client.
        await self._bound.wait()
        while not self._closing:
            node_id = dialing.address.node_id
            existing = self._conns.get(node_id) if node_id else None
            if existing is not None:
                await asyncio.shield(existing.closed)
                backoff = INITIAL_BACKOFF
                continue
            if node_id is not None and node_id > self.node_id and failing_since is None:
                # Both sides know each other: let the smaller id dial first, which
                # avoids a duplicate connection that would be closed at once.
                await asyncio.sleep(0.1 * (1 + self._rng.random()))
                if node_id in self._conns:
                    continue
            try:
                conn = await self._dial(dialing.address)
            except _SelfDial:
                self._dialing.pop(key, None)
                return
            except (OSError, TimeoutError, ProtocolError, asyncio.IncompleteReadError) as exc:
                now = self._clock()
                failing_since = failing_since or now
                if not dialing.seed and now - failing_since > FORGET_AFTER:
                    log.info("giving up on %s after %.0f s of failures", key, now - failing_since)
                    self._dialing.pop(key, None)
                    return
                if isinstance(exc, AuthError):
                    # A refused secret or certificate does not fix itself in 50 ms: retry
                    # slowly (the operator may be rotating), one log line each time.
                    backoff = MAX_BACKOFF
                log.debug("dial %s failed: %s; retrying in %.2f s", key, exc, backoff)
                await asyncio.sleep(backoff * (0.5 + self._rng.random()))
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            failing_since = None
            backoff = INITIAL_BACKOFF
            if self._closing:
                return
            if conn is not None:
                if dialing.address.node_id is None and conn.peer is not None:
                    dialing.address = PeerAddress(
                        dialing.address.host, dialing.address.port, conn.peer
                    )
                await asyncio.shield(conn.closed)

    async def _dial(self, address: PeerAddress) -> Connection | None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address.host, address.port, limit=1 << 16),
            CONNECT_TIMEOUT,
        )
        conn = Connection(
            reader,
            writer,
            dialed=True,
            max_frame_bytes=self.max_frame_bytes,
            send_buffer=self.send_buffer,
        )
        return await self._run_handshake(conn)

    # ------------------------------------------------------------ streams
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:
            log.debug(
                "refusing a connection from %s: shutting down", writer.get_extra_info("peername")
            )
            writer.transport.abort()
            return
        if len(self._streams) >= self.max_connections:
            self.refused_connections += 1
            log.warning(
                "refusing a connection from %s: %d streams open (limit %d)",
                writer.get_extra_info("peername"),
                len(self._streams),
                self.max_connections,
            )
            writer.transport.abort()
            return
        conn = Connection(
            reader,
            writer,
            dialed=False,
            max_frame_bytes=self.max_frame_bytes,
            send_buffer=self.send_buffer,
        )
        # A failed handshake has been logged once already; letting it escape would make
        # asyncio log it again ("Unhandled exception in client_connected_cb").
        with contextlib.suppress(
            _SelfDial, ProtocolError, asyncio.IncompleteReadError, ConnectionError, OSError
        ):
            await self._run_handshake(conn)

    def _hello(self) -> Hello:
        port = int(self._address.rpartition(":")[2]) if self._address else 0
        if self.client_mode:
            port = 0  # a client is not to be dialled back or announced
        return Hello(PROTOCOL_VERSION, self.cluster, self.node_id, port, self.incarnation)

    async def _run_handshake(self, conn: Connection) -> Connection | None:
        """TLS (with ``ssl``), then hellos (authenticated with a ``secret``); register.

        Returns the registered connection, or None if it lost a duplicate race.
        Raises for a failed handshake (after logging and closing the stream).
        """
        self._streams.add(conn)
        try:
            try:
                async with asyncio.timeout(self.handshake_timeout):
                    if self._ssl_server is not None:
                        await self._start_tls(conn)
                    if self._keyring:
                        hello = await self._authenticate(conn)
                    else:
                        hello = await self._exchange_hellos(conn)
            except TimeoutError:
                raise ProtocolError(
                    f"handshake not finished within {self.handshake_timeout:.1f} s "
                    "(handshake timeout)"
                ) from None
            conn.peer, conn.peer_port, conn.incarnation = hello.node, hello.port, hello.incarnation
        except _SelfDial:
            self._streams.discard(conn)
            conn.abort()
            raise
        except (ProtocolError, asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            self._streams.discard(conn)
            self.handshake_failures += 1
            self.protocol_errors += isinstance(exc, ProtocolError)
            self.auth_failures += isinstance(exc, AuthError)
            reason = _reason(exc)
            if conn.tls and isinstance(exc, asyncio.IncompleteReadError) and not exc.partial:
                # TLS 1.3 reports a refused client certificate only after the handshake.
                reason = (
                    "the peer closed the stream right after TLS "
                    "(it may have refused this node's certificate)"
                )
            log.warning(
                "dropping connection from %s: %s", conn.label, reason, extra={"node": self.node_id}
            )
            reply = exc.reply if isinstance(exc, AuthError) else None
            if reply is not None:
                # Tell a peer speaking the other mode why, so its log says so too.
                conn.send(reply)
                await conn.close(0.2)
            else:
                conn.abort()
            raise
        if self._closing or not self._register(conn):
            self._streams.discard(conn)
            await conn.close(0.1)
            return None
        self._spawn(self._read_loop(conn))
        if self.client_mode or not conn.peer_port:
            # We are a client, or the peer is one (it listens nowhere): no membership,
            # no gossip, only cache operations.
            log.debug("connected to %s (client link)", conn.label)
            return conn
        now = self._clock()
        self._deliver(self.engine.peer_reachable(conn.peer, now))
        self._after_engine()
        if conn.peer_port:
            # A peer that dialled us is dialled back after a drop, too.
            self._want(PeerAddress(conn.remote_host, conn.peer_port, conn.peer), seed=False)
        self._announce(conn)
        log.info("connected to %s%s", conn.label, " (authenticated)" if conn.secured else "")
        return conn

    async def _start_tls(self, conn: Connection) -> None:
        context = self._ssl_client if conn.dialed else self._ssl_server
        assert context is not None
        # Only a context that checks host names needs one; ours check node ids.
        hostname = conn.remote_host if conn.dialed and context.check_hostname else None
        try:
            await conn.start_tls(context, hostname)
        except _ssl.SSLError as exc:
            raise AuthError(f"TLS handshake failed: {_tls_reason(exc)}") from exc
        except ConnectionError as exc:
            raise AuthError(
                "TLS handshake failed: the peer closed the stream (no ssl= on its side, "
                "or it refused this node's certificate)"
            ) from exc

    async def _exchange_hellos(self, conn: Connection) -> Hello:
        """The plain handshake: hellos both ways, the dialer first."""
        if conn.dialed:
            conn.send(encode(self._hello()))
        message = await conn.read_message()
        if isinstance(message, AuthHello):
            raise AuthError(
                "the peer requires a cluster secret (secret=) and this node has none",
                None if conn.dialed else encode(self._hello()),
            )
        if not isinstance(message, Hello):
            raise ProtocolError(f"expected a hello, got {type(message).__name__}")
        self._check_hello(conn, message)
        if not conn.dialed:
            conn.send(encode(self._hello()))
        return message

    async def _authenticate(self, conn: Connection) -> Hello:
        """Drive the authenticated handshake; the stream is sealed when it returns."""
        shake = Handshake(self._keyring, self._hello(), initiator=conn.dialed)
        if conn.dialed:
            conn.send(shake.start())
        while shake.state != DONE:
            try:
                body = await conn.read_body(MAX_HANDSHAKE_BYTES)
            except asyncio.IncompleteReadError as exc:
                reason = _CLOSED_DURING_AUTH.get(shake.state)
                if exc.partial or reason is None:
                    raise
                raise AuthError(reason) from None
            reply = shake.receive(body)
            if reply is not None:
                conn.send(reply)
            if shake.state == PEER_PROVED:
                # The responder reveals its hello only once the peer's checks out here.
                assert shake.peer_hello is not None
                self._check_hello(conn, shake.peer_hello)
                conn.send(shake.accept())
        hello = shake.peer_hello
        assert hello is not None
        if conn.dialed:
            self._check_hello(conn, hello)
        conn.secure(shake.session_keys())
        return hello

    def _check_hello(self, conn: Connection, hello: Hello) -> None:
        if hello.version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"protocol version {hello.version}, this node speaks {PROTOCOL_VERSION}"
            )
        if hello.cluster != self.cluster:
            raise ProtocolError(f"cluster {hello.cluster!r}, this node is in {self.cluster!r}")
        if hello.node == self.node_id:
            raise _SelfDial()
        cert = conn.peer_certificate()
        if cert is not None:
            named = certificate_node_ids(cert)
            if hello.node not in named:
                names = ", ".join(sorted(named)) or "no crdtcache node id"
                raise AuthError(
                    f"the hello says node {hello.node!r} but the peer's certificate names {names}"
                )

    def _announce(self, new: Connection) -> None:
        """Tell the new peer whom we know, and everyone else about the new peer."""
        known = tuple(
            (peer, c.remote_host, c.peer_port)
            for peer, c in self._conns.items()
            if c.peer_port and peer != new.peer
        )
        if known:
            new.send(encode(PeerList(known)))
        if new.peer_port and new.peer is not None:
            about_new = encode(PeerList(((new.peer, new.remote_host, new.peer_port),)))
            for _peer, c in self._conns.items():
                if c is not new:
                    c.send(about_new)

    def _register(self, conn: Connection) -> bool:
        """One connection per pair: decide whether ``conn`` replaces the existing one."""
        assert conn.peer is not None
        existing = self._conns.get(conn.peer)
        if existing is not None and not existing.closed.done():
            if existing.incarnation == conn.incarnation:
                dialer_new = self.node_id if conn.dialed else conn.peer
                dialer_old = self.node_id if existing.dialed else conn.peer
                if dialer_new == dialer_old or dialer_old < dialer_new:
                    log.debug("keeping the existing connection to %s", conn.peer)
                    return False
            log.debug("replacing the connection to %s", conn.peer)
            self._conns[conn.peer] = conn
            existing.abort()
            return True
        self._conns[conn.peer] = conn
        return True

    async def _read_loop(self, conn: Connection) -> None:
        peer = conn.peer
        assert peer is not None
        reason = "closed by peer"
        try:
            while True:
                message = await conn.read_message()
                if isinstance(message, Bye):
                    reason = "peer said goodbye"
                    # It left on purpose: forget it rather than keep a dead member
                    # around (a restarted node, or a CLI client, is added again).
                    self.engine.remove_peer(peer)
                    self._after_engine()
                    break
                if isinstance(message, AdminRequest):
                    self._spawn(self._serve_admin(conn, message))
                    continue
                if isinstance(message, AdminReply):
                    waiter = self._admin_waiters.pop(message.request, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(message)
                    continue
                if self.client_mode:
                    continue  # a client follows no gossip
                if isinstance(message, Hello | AuthHello | AuthChallenge | AuthProof | AuthAccept):
                    raise ProtocolError(f"a {type(message).__name__} after the handshake")
                if isinstance(message, PeerList):
                    for node_id, host, port in message.peers:
                        if node_id != self.node_id and node_id not in self._conns:
                            self._want(PeerAddress(host, port, node_id), seed=False)
                    continue
                try:
                    out = self.engine.handle(peer, message, self._clock())
                except (ValueError, TypeError, KeyError) as exc:
                    raise ProtocolError(f"message refused by the engine: {exc}") from exc
                self._deliver(out)
                self._after_engine()
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                self.protocol_errors += 1
                log.warning("dropping connection from %s: truncated frame", conn.label)
            reason = "closed by peer"
        except ProtocolError as exc:
            self.protocol_errors += 1
            self.auth_failures += isinstance(exc, AuthError)
            log.warning(
                "dropping connection from %s: %s", conn.label, exc, extra={"node": self.node_id}
            )
            reason = str(exc)
        except (ConnectionError, OSError) as exc:
            reason = _reason(exc)
        finally:
            self._drop(conn, reason)

    async def _serve_admin(self, conn: Connection, request: AdminRequest) -> None:
        handler = self.admin
        if handler is None:
            reply = AdminReply(request.request, False, "this node serves no cache operations")
        else:
            try:
                reply = AdminReply(request.request, True, await handler(request.op, request.args))
            except CacheError as exc:
                reply = AdminReply(request.request, False, str(exc))
        try:
            conn.send(encode(reply))
        except (TypeError, ValueError, ProtocolError) as exc:
            conn.send(encode(AdminReply(request.request, False, f"unsendable result: {exc}")))

    async def request(self, peer: str, op: str, *args: Any, timeout: float = 5.0) -> Any:
        """Ask ``peer`` to run the cache operation ``op``; return its result.

        Raises :class:`PeerError` if it is not connected, does not answer within
        ``timeout``, or refuses (with its error text).
        """
        conn = self._conns.get(peer)
        if conn is None:
            raise PeerError(f"not connected to {peer}")
        self._admin_seq += 1
        waiter: asyncio.Future[AdminReply] = asyncio.get_running_loop().create_future()
        self._admin_waiters[self._admin_seq] = waiter
        conn.send(encode(AdminRequest(self._admin_seq, op, args)))
        try:
            reply = await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise PeerError(f"{peer} did not answer {op} within {timeout} s") from None
        finally:
            self._admin_waiters.pop(self._admin_seq, None)
        if not reply.ok:
            raise PeerError(f"{peer} refused {op}: {reply.result}")
        return reply.result

    def _drop(self, conn: Connection, reason: str) -> None:
        conn.abort()
        self._streams.discard(conn)
        for i, v in enumerate((conn.bytes_sent, conn.bytes_received)):
            self._closed_bytes[i] += v
        self._closed_bytes[2] += conn.frames_sent
        self._closed_bytes[3] += conn.frames_received
        if conn.peer is not None and self._conns.get(conn.peer) is conn:
            del self._conns[conn.peer]
            if not self._closing:
                log.info("lost %s: %s", conn.label, reason)
                self.engine.peer_unreachable(conn.peer, self._clock())
                self._after_engine()

    # ------------------------------------------------------------- engine
    def _deliver(self, outgoing: Sequence[Outgoing]) -> None:
        encoded: dict[int, bytes] = {}
        for peer, message in outgoing:
            conn = self._conns.get(peer)
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
        if self._ack_waiters:
            for ack_id, waiter in list(self._ack_waiters.items()):
                if not engine.unacked(ack_id) and not waiter.done():
                    waiter.set_result(None)

    def _tick(self) -> None:
        if self._closing:
            return
        now = self._clock()
        try:
            self._deliver(self.engine.tick(now))
            self._after_engine()
            for conn in list(self._conns.values()):
                if conn.stalled_since is not None:
                    if conn.buffered() <= conn.send_buffer:
                        conn.stalled_since = None
                    elif now - conn.stalled_since > STALL_TIMEOUT:
                        log.warning(
                            "dropping connection to %s: stuck for %.0f s",
                            conn.label,
                            now - conn.stalled_since,
                        )
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
        self._deliver(out)
        if not ack_id:
            return frozenset()
        waiter = asyncio.get_running_loop().create_future()
        self._ack_waiters[ack_id] = waiter
        self._after_engine()
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            self._ack_waiters.pop(ack_id, None)
        missing = self.engine.unacked(ack_id)
        self.engine.forget_ack(ack_id)
        return missing

    async def fetch(self, keys: Sequence[str], timeout: float) -> None:
        """Ask live peers for ``keys``; returns when one answered or ``timeout`` passed."""
        out = self.engine.fetch(keys, self._clock())
        if not out:
            return
        self._deliver(out)
        deadline = self._clock() + timeout
        replica = self.engine.replica
        # Replies are merged by the reader tasks; poll briefly instead of tracking
        # each request, since any one answer is enough.
        while self._clock() < deadline:
            await asyncio.sleep(0.001)
            now = self._clock()
            if all((e := replica.lookup(k, now)) is None or e.held for k in keys):
                return

    # ------------------------------------------------------------- helpers
    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def connected_peers(self) -> dict[str, str]:
        """Connected peers: node id -> the address they listen on."""
        return {peer: conn.listen_address for peer, conn in self._conns.items()}

    def statistics(self) -> TransportStatistics:
        """Transport counters: bytes and frames sent/received, connections, errors."""
        conns = list(self._streams)
        return TransportStatistics(
            bytes_sent=self._closed_bytes[0] + sum(c.bytes_sent for c in conns),
            bytes_received=self._closed_bytes[1] + sum(c.bytes_received for c in conns),
            frames_sent=self._closed_bytes[2] + sum(c.frames_sent for c in conns),
            frames_received=self._closed_bytes[3] + sum(c.frames_received for c in conns),
            frames_dropped=sum(c.dropped for c in conns),
            connections=len(self._conns),
            protocol_errors=self.protocol_errors,
            auth_failures=self.auth_failures,
            handshake_failures=self.handshake_failures,
            refused_connections=self.refused_connections,
            authenticated=bool(self._keyring),
            tls=self._ssl_server is not None,
            peer_addresses=self.connected_peers(),
        )


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


class _SelfDial(Exception):
    """The address dialled is this node's own."""


class _StreamProtocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol; with ``pause``, reading waits for the TLS upgrade.

    Without the pause the peer's TLS ClientHello could be read into the plain stream
    buffer before the handshake task swaps in TLS, and be lost.
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


#: OpenSSL reasons worth a plain-words explanation in the log line.
_TLS_REASONS: Final = {
    "WRONG_VERSION_NUMBER": "the peer does not speak TLS 1.3 (no ssl= on its side?)",
    "HTTP_REQUEST": "the peer does not speak TLS (no ssl= on its side?)",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust this node's certificate (unknown CA)",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires a certificate from this node",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version in common (TLS 1.3 is required)",
    "UNSUPPORTED_PROTOCOL": "no TLS version in common (TLS 1.3 is required)",
}


def _tls_reason(exc: _ssl.SSLError) -> str:
    if isinstance(exc, _ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    reason = exc.reason or ""
    return _TLS_REASONS.get(reason, reason or str(exc))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, _ssl.SSLError):
        return f"TLS error: {_tls_reason(exc)}"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the peer"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "truncated frame" if exc.partial else "closed before the handshake finished"
    return str(exc) or type(exc).__name__
