"""The links of a node: streams accepted and dialled, their handshakes, readers and drops.

Theory of operation
-------------------
:class:`Links` carries every stream of one :class:`~crdtcache.transport._node.Node`
from the accept (or the dial) to the drop. A stream is opened by
:func:`~crdtcache.transport._handshake.open_link` and registered with the node's
:class:`~crdtcache.core._link.Mesh`, which decides whether it is the one link to its
peer; each open link then has one reader task that feeds its messages to the mesh and
acts on the events that come back (gossip to the node's engine, a goodbye, admin
requests and replies, peers to dial). All protocol decisions are the mesh's; this
class only does the IO, the counting and the one log line per refused or dropped link.

A reader task ends on any exception (junk from the peer, a broken stream, a bug of
ours): the link is dropped and logged, the node goes on, and nothing reaches the event
loop's "exception never retrieved" handler.

*Capacity.* Established links accepted from peers are capped (``max_connections``); a
stream beyond is refused before its handshake. Accepted streams still in their
handshake have a smaller pool of their own (``max_handshakes``), so unauthenticated
streams can never take the room of established peers: when the pool is full, the
oldest idle handshake (nothing received yet, else the oldest) is dropped to make room,
never the newcomer, and any accepted stream without progress for
``handshake_idle_timeout`` is dropped. Streams this node dials count against neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Final

from crdtcache._errors import CacheError, PeerError, ProtocolError
from crdtcache.core._link import (
    AdminAnswered,
    AdminAsked,
    Dial,
    Gossip,
    IdentityError,
    Left,
    LinkEvent,
    LinkSession,
    SelfDial,
)
from crdtcache.core._messages import AdminReply, AdminRequest, Bye
from crdtcache.core._throttle import LogThrottle
from crdtcache.discovery._base import PeerAddress
from crdtcache.transport._connection import Connection
from crdtcache.transport._handshake import open_link
from crdtcache.transport._stream import Stream, StreamClosed, StreamError
from crdtcache.wire._codec import encode

if TYPE_CHECKING:
    from crdtcache.transport._node import Node

__all__ = ["YIELD_EVERY", "Links", "RequestRefused"]

#: A link's reader lets other tasks run after this many messages in a row.
YIELD_EVERY: Final = 16

# Log lines keep the node's logger name: operators (and tests) filter on it.
log = logging.getLogger("crdtcache.transport._node")


class RequestRefused(PeerError):
    """The peer ran an admin request and refused it; the message carries its error text."""


class Links:
    """The streams and link sessions of one node (see the module doc)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.mesh = node.mesh
        #: The connection of each session that passed its handshake and was kept.
        self.by_session: dict[LinkSession, Connection] = {}
        # Dicts used as ordered sets: shutdown walks them in a repeatable order, which a
        # simulated network (crdtcache.testing.MemoryNetwork) needs to repeat a run.
        self.streams: dict[Connection, None] = {}
        self._admin_waiters: dict[tuple[LinkSession, int], asyncio.Future[AdminReply]] = {}
        self.protocol_errors = 0
        self.refused_connections = 0
        self.evicted_handshakes = 0
        # Dropped by _evict: their failing handshake is not logged a second time.
        self._evicted: set[Connection] = set()
        #: Accepted streams in their handshake, oldest first.
        self.handshaking: dict[Connection, None] = {}
        self.auth_failures = 0
        self.handshake_failures = 0
        self.closed_counts = [0, 0, 0, 0]  # bytes and frames of closed connections
        #: Lines that peers cause (refusals, drops): a burst per kind, then counts.
        self.throttle = LogThrottle(log)

    def _say(self, kind: str, level: int, message: str, *args: Any, **kwargs: Any) -> None:
        """Log a line a peer caused: rate-limited per kind, the rest counted."""
        self.throttle.log(self.node._clock(), kind, level, message, *args, **kwargs)

    # ------------------------------------------------------------- queries
    def link_to(self, node_id: str | None) -> Connection | None:
        """The open connection to ``node_id``, if any."""
        session = self.mesh.links.get(node_id) if node_id else None
        return None if session is None else self.by_session.get(session)

    def connections(self) -> dict[str, Connection]:
        """The open connection to each linked peer, by node id."""
        links = self.mesh.links.items()
        return {peer: self.by_session[s] for peer, s in links if s in self.by_session}

    def connection(self, stream: Stream, *, dialed: bool) -> Connection:
        """A connection on ``stream`` with the node's limits."""
        node = self.node
        return Connection(
            stream,
            dialed=dialed,
            max_frame_bytes=node.max_frame_bytes,
            send_buffer=node.send_buffer,
            max_value_bytes=node.engine.config.max_value_bytes,
        )

    # ------------------------------------------------------------- opening
    async def accept(self, stream: Stream) -> None:
        """A stream was accepted: refuse it if closing or full, else open the link."""
        node = self.node
        if node._closing:
            log.debug("refusing a connection from %s: shutting down", stream.extra("peername"))
            stream.abort()
            return
        if self._full(stream.extra("peername")):
            stream.abort()
            return
        if len(self.handshaking) >= node.max_handshakes:
            self._evict(self._idlest(), "the handshake slots are full")
        conn = self.connection(stream, dialed=False)
        self.handshaking[conn] = None
        idle = asyncio.get_running_loop().call_later(
            node.handshake_idle_timeout, self._check_idle, conn
        )
        try:
            # A failed handshake has been logged once already; letting it escape would
            # make asyncio log it again ("Unhandled exception in client_connected_cb").
            with contextlib.suppress(SelfDial, PeerError):
                await self.open(conn)
        finally:
            idle.cancel()
            self.handshaking.pop(conn, None)

    def _full(self, who: object) -> bool:
        """Whether the accepted links are at their cap (then counted and logged)."""
        accepted = sum(1 for c in self.by_session.values() if not c.dialed)
        if accepted < self.node.max_connections:
            return False
        self.refused_connections += 1
        self._say(
            "refused connections",
            logging.WARNING,
            "refusing a connection from %s: %d links accepted (limit %d)",
            who,
            accepted,
            self.node.max_connections,
        )
        return True

    def _idlest(self) -> Connection:
        """The handshake to drop for a newcomer: the oldest that received nothing, else
        the oldest (a genuine peer finishes in a few round trips; it is rarely either)."""
        for conn in self.handshaking:
            if not conn.progressed:
                return conn
        return next(iter(self.handshaking))

    def _check_idle(self, conn: Connection) -> None:
        if conn in self.handshaking and not conn.progressed:
            self._evict(conn, f"nothing received for {self.node.handshake_idle_timeout:.1f} s")

    def _evict(self, conn: Connection, why: str) -> None:
        """Drop a stream in its handshake (its ``open`` then fails and cleans up)."""
        self.handshaking.pop(conn, None)
        self._evicted.add(conn)
        self.evicted_handshakes += 1
        self._say(
            "evicted handshakes",
            logging.WARNING,
            "dropping connection from %s during its handshake: %s",
            conn.label,
            why,
        )
        conn.abort()

    async def open(self, conn: Connection) -> Connection | None:
        """Run the handshake and register the link.

        Returns the registered connection, or None if it lost a duplicate race.
        Raises for a failed handshake (after logging and closing the stream).
        """
        node = self.node
        session = self.mesh.session(dialed=conn.dialed, remote_host=conn.remote_host)
        conn.session = session
        self.streams[conn] = None
        tls = node._ssl_client if conn.dialed else node._ssl_server
        try:
            await open_link(
                conn, session, tls=tls, keyring=node._keyring, timeout=node.handshake_timeout
            )
        except SelfDial:
            self.streams.pop(conn, None)
            conn.abort()
            raise
        except Exception as exc:
            await self._refused(conn, exc)
            raise exc if isinstance(exc, PeerError) else ProtocolError(str(exc)) from exc
        if not conn.dialed and self._full(conn.label):
            # Checked again once open: streams accepted together all passed the first
            # check, only the cap's worth of them may stay.
            self.streams.pop(conn, None)
            conn.abort()
            return None
        kept, replaced = self.mesh.register(session) if not node._closing else (False, None)
        if not kept:
            log.debug("keeping the existing connection to %s", session.peer)
            self.streams.pop(conn, None)
            await conn.close(0.1)
            return None
        self.by_session[session] = conn
        if replaced is not None and replaced in self.by_session:
            log.debug("replacing the connection to %s", session.peer)
            self.by_session[replaced].abort()
        node._spawn(self._read_loop(conn, session))
        try:
            self._joined(conn, session)
        except Exception as exc:  # a bug of ours must cost one link, never the node
            self.protocol_errors += 1
            self._say(
                "links dropped for an unexpected error",
                logging.ERROR,
                "dropping connection from %s: unexpected error",
                conn.label,
                exc_info=exc,
            )
            self.drop(conn, f"unexpected error: {exc!r}")
            return None
        return conn

    async def _refused(self, conn: Connection, exc: Exception) -> None:
        """Count and log a failed handshake once; tell the peer why if it is worth it."""
        self.streams.pop(conn, None)
        if conn in self._evicted:  # logged and counted when it was dropped
            self._evicted.discard(conn)
            conn.abort()
            return
        self.handshake_failures += 1
        self.protocol_errors += isinstance(exc, ProtocolError)
        self.auth_failures += isinstance(exc, IdentityError)
        reason = _reason(exc)
        level = logging.WARNING
        if isinstance(exc, StreamClosed) and not exc.truncated:
            if conn.tls:
                # TLS 1.3 reports a refused client certificate only after the handshake.
                reason = (
                    "the peer closed the stream right after TLS "
                    "(it may have refused this node's certificate)"
                )
            else:
                # A peer that leaves mid-handshake (shutting down, a duplicate link it
                # gave up, a port check) did nothing wrong; a refusal would say so.
                level = logging.INFO
        if self.node.client_mode:
            level = logging.DEBUG  # the client's caller gets the error and reports it
        node_id = self.node.node_id
        direction = "to" if conn.dialed else "from"
        self._say(
            "failed handshakes",
            level,
            "dropping connection %s %s: %s",
            direction,
            conn.label,
            reason,
            extra={"node": node_id},
        )
        if not isinstance(exc, PeerError):  # a bug of ours: show where
            self._say(
                "unexpected handshake errors",
                logging.ERROR,
                "unexpected handshake error",
                exc_info=exc,
            )
        reply = getattr(exc, "reply", None)
        session = conn.session
        if reply is None and session is not None and session.refusal is not None:
            reply = encode(session.refusal)  # so that the refused node can say why
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
        if not self.node._member_joined(session.peer):
            self._say(
                "refused members",
                logging.WARNING,
                "dropping connection from %s: the peer table is full (max_peers)",
                conn.label,
            )
            self.drop(conn, "the peer table is full")
            return
        announcements, dials = self.mesh.joined(session)
        for dial in dials:
            address = PeerAddress(dial.host, dial.port, dial.node)
            self.node._dialer.want(address, seed=False, source=session.peer)
        for announce in announcements:
            self.by_session[announce.link].send(encode(announce.message))
        log.info("connected to %s%s", conn.label, " (authenticated)" if conn.secured else "")

    # ------------------------------------------------------------- reading
    async def _read_loop(self, conn: Connection, session: LinkSession) -> None:
        reason = "closed by peer"
        handled = 0
        try:
            while True:
                message = await conn.read_message()
                for event in self.mesh.receive(session, message):
                    self._on_event(conn, session, event)
                if isinstance(message, Bye):
                    reason = "peer said goodbye"
                    break
                handled += 1
                if handled % YIELD_EVERY == 0:
                    # A read that finds its bytes buffered does not yield: without this,
                    # one peer's burst of frames would hold the loop until it is spent.
                    await asyncio.sleep(0)
        except StreamClosed as exc:
            if exc.truncated:
                self.protocol_errors += 1
                self._say(
                    "dropped links",
                    logging.WARNING,
                    "dropping connection from %s: truncated frame",
                    conn.label,
                )
        except ProtocolError as exc:
            self.protocol_errors += 1
            self.auth_failures += isinstance(exc, IdentityError)
            node_id = self.node.node_id
            self._say(
                "dropped links",
                logging.WARNING,
                "dropping connection from %s: %s",
                conn.label,
                exc,
                extra={"node": node_id},
            )
            reason = str(exc)
        except StreamError as exc:
            reason = str(exc)
        except Exception as exc:  # a bug of ours must cost one link, never the node
            self.protocol_errors += 1
            self._say(
                "links dropped for an unexpected error",
                logging.ERROR,
                "dropping connection from %s: unexpected error",
                conn.label,
                exc_info=exc,
            )
            reason = f"unexpected error: {exc!r}"
        finally:
            self.drop(conn, reason)

    def _on_event(self, conn: Connection, session: LinkSession, event: LinkEvent) -> None:
        peer = session.peer
        assert peer is not None
        if isinstance(event, Gossip):
            self.node._handle(peer, event.message)
        elif isinstance(event, Left):
            self.node._member_left(peer)
        elif isinstance(event, AdminAsked):
            self.node._spawn(self._serve_admin(conn, event.request))
        elif isinstance(event, AdminAnswered):
            waiter = self._admin_waiters.pop((session, event.reply.request), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(event.reply)
        elif isinstance(event, Dial):
            address = PeerAddress(event.host, event.port, event.node)
            self.node._dialer.want(address, seed=False, source=peer)

    def drop(self, conn: Connection, reason: str) -> None:
        """Close ``conn``; if it was its peer's link, the peer is lost (idempotent)."""
        conn.abort()
        if conn in self.streams:  # counted once, however many paths drop it
            self.streams.pop(conn, None)
            counts = (conn.bytes_sent, conn.bytes_received, conn.frames_sent, conn.frames_received)
            self.closed_counts = [a + b for a, b in zip(self.closed_counts, counts, strict=True)]
        session = conn.session
        if session is None or self.by_session.pop(session, None) is None:
            return
        for request in session.close():
            waiter = self._admin_waiters.pop((session, request), None)
            if waiter is not None and not waiter.done():
                waiter.set_exception(PeerError(f"lost the link to {session.peer}: {reason}"))
        if self.mesh.remove(session) and not self.node._closing:
            assert session.peer is not None
            log.info("lost %s: %s", conn.label, reason)
            self.node._member_lost(session.peer)

    async def close(self) -> None:
        """Say goodbye on every link, close every stream (flushing briefly), then abort."""
        bye = encode(Bye())
        for conn in self.by_session.values():
            conn.send(bye)
        await asyncio.gather(*(c.close() for c in list(self.streams)), return_exceptions=True)

    def abort(self) -> None:
        """Abort every stream still open."""
        for conn in list(self.streams):
            conn.abort()

    # ------------------------------------------------------ admin requests
    async def _serve_admin(self, conn: Connection, request: AdminRequest) -> None:
        handler = self.node.admin
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

    async def request(self, peer: str, op: str, args: tuple[Any, ...], timeout: float) -> Any:
        """Ask ``peer`` to run ``op`` (see :meth:`Node.request`)."""
        session = self.mesh.links.get(peer)
        if session is None or session not in self.by_session:
            raise PeerError(f"not connected to {peer}")
        message = session.ask(op, args)
        key = (session, message.request)
        waiter: asyncio.Future[AdminReply] = asyncio.get_running_loop().create_future()
        self._admin_waiters[key] = waiter
        self.by_session[session].send(encode(message))
        try:
            reply = await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise PeerError(f"{peer} did not answer {op} within {timeout} s") from None
        finally:
            self._admin_waiters.pop(key, None)
            session.forget(message.request)
        if not reply.ok:
            raise RequestRefused(f"{peer} refused {op}: {reply.result}")
        return reply.result


def _reason(exc: BaseException) -> str:
    if isinstance(exc, StreamClosed):
        return "truncated frame" if exc.truncated else "closed before the handshake finished"
    return str(exc) or type(exc).__name__
