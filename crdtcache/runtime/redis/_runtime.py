"""The runtime of ``backend="redis"``: asyncio loops around the redis-mode protocol.

Where each concept lives (all but this module and :mod:`._commands` without IO):

==================  =============================================================
:mod:`._protocol`   every decision of one instance, and the theory of operation
:mod:`._hottier`    the invalidation merge and the read race (the hot tier)
:mod:`._writes`     batches of local writes and Redis's answers (LWW, rechecks)
:mod:`._tables`     the outbox, the instance table, the ack waiters, the patterns
:mod:`._messages`   key layout, stamp texts, records, channel messages, script calls
:mod:`._scripts`    the Lua scripts: every change to the shared tier is one of them
:mod:`._topology`   which Redis a URL names: one server, a Redis Cluster, a Sentinel
:mod:`._commands`   redis-py: clients, EVALSHA, pipelines, SCAN, one exception map
:mod:`._writer`     sending batches: write-behind loop, write-through with acks
:mod:`._conditional` add, incr, touch: one script each, decided by Redis
:mod:`._keyspace`   fetches, keys, size, snapshot, restore, cleanup: reads of Redis
this module         the runtime: subscription, heartbeat and tick loops, events
==================  =============================================================

:class:`RedisRuntime` implements the cache's ``Runtime``. Its loops only move bytes
and time: they take what the protocol returns, send it with :class:`~._commands.Commands`,
feed back what Redis answered, and turn the protocol's events into listener calls,
resolved write-through waiters and scheduled work (:meth:`RedisRuntime._dispatch`,
the one place events go; it runs after every call into the protocol that can emit).

* *Subscription*: subscribe to the invalidation and own ack channels; once both are
  confirmed, reload the patterns, heartbeat, announce the join, and serve. A quiet
  link is PINGed every :data:`PUBSUB_PING_INTERVAL` and given up after
  :data:`PUBSUB_DEAD_AFTER`; a lost link is retried with doubling delays
  (:data:`RECONNECT_MIN` .. :data:`RESUBSCRIBE_MAX`: an instance refuses writes
  while it cannot hear invalidations, so it looks for the promoted primary often).
* *Heartbeat* every ``heartbeat_interval``: renews this instance's entry and lists the
  live ones; every tenth beat also resumes cleanups stalled for ``cleanup_stall``.
* *Batch writer* (:mod:`._writer`, write-behind, on-demand): one batch per
  ``sync_interval`` while writes are queued; a failed batch is retried.
* *Ticks*: the engine's own collection (expiry events of held values).
* *Cleanup*: one task at a time deletes the records of the pattern tombstones the
  protocol says are due (:meth:`~._keyspace.RedisKeySpace.clean`).

What a failover loses
---------------------
Behind a ``redis+cluster://`` or ``redis+sentinel://`` URL the primary that holds a
cache cluster's slot can die and a replica be promoted (about 2 s in a cluster with
``cluster-node-timeout 1000``, 3 s with sentinels' ``down-after 2000``). Redis
replicates *asynchronously*: the primary answers a script (the write is applied and
announced) before any replica has it. So a write the old primary acknowledged but had
not yet sent to the replica that is promoted is gone from Redis -- with a healthy link
that is the last fraction of a millisecond before the crash, with a slow or stalled
replica everything since it fell behind. crdtcache cannot keep what Redis lost; it
loses nothing Redis kept, and no instance goes on serving what Redis lost:

* every instance is subscribed to that primary, so every one finds its link lost and
  drops its hot tier; after subscribing again (to the promoted replica) it serves only
  what that replica holds -- a write Redis lost is gone for its writer too;
* write-behind writes still queued, or in a batch whose answer was lost with the
  connection, are written to the new primary (sending a batch twice is harmless: an
  equal stamp is the same write); a write-through write whose call failed raises
  :class:`PeerError` and is dropped here;
* a replica promoted does not know the scripts (they are not replicated): its first
  NOSCRIPT answer makes the call go again with the source.

``wait_replicas=N`` in the URL closes the window for write-through: the WRITE is
followed by ``WAIT N`` on the same connection, and ``set`` raises :class:`PeerError`
(the write stays on the primary and announced; counted, and shown in the health)
unless N replicas confirmed it within ``write_timeout``. With one replica per primary,
the only one a failover can promote, a write-through ``set`` that returned then
survives the death of its primary. ``WAIT`` is no consensus: with several replicas a
failover may promote one that had not confirmed (Redis prefers the most up-to-date,
without a promise), and a ``set`` that raised may still survive. Redis's own
``min-replicas-to-write`` bounds the window for every write, write-behind included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from crdtcache._errors import PeerError, ValidationError
from crdtcache.core import ALIVE, Change, Entry, GossipEngine, PatternTombstone, PeerEvent
from crdtcache.runtime._protocol import (
    AdminHandler,
    ChangeListener,
    EvictionListener,
    PeerListener,
    RuntimeStatistics,
)
from crdtcache.runtime.redis._commands import (
    COMMAND_TIMEOUT,
    CONNECT_TIMEOUT,
    RECONNECT_MIN,
    Commands,
    Subscription,
    reraise_cancellation,
)
from crdtcache.runtime.redis._conditional import ConditionalWriter, NotAnInteger
from crdtcache.runtime.redis._keyspace import RedisKeySpace
from crdtcache.runtime.redis._messages import (
    describe_instance,
    encode_join,
    encode_leave,
    instance_info,
)
from crdtcache.runtime.redis._protocol import (
    AckDone,
    AcksDue,
    ChangesMade,
    Event,
    Evicted,
    RedisProtocol,
)
from crdtcache.runtime.redis._scripts import (
    ADD,
    CLEAN,
    CLEANED,
    HEARTBEAT,
    INCR,
    PATTERN,
    STAT,
    TOUCH,
    WRITE,
)
from crdtcache.runtime.redis._writer import BatchWriter
from crdtcache.store._persistence import Persistence

__all__ = [
    "CLEANUP_STALL",
    "PUBSUB_DEAD_AFTER",
    "RESUBSCRIBE_MAX",
    "RedisRuntime",
    "RedisStatistics",
]

log = logging.getLogger(__name__)

#: A quiet pub/sub link is PINGed this often and given up after PUBSUB_DEAD_AFTER.
PUBSUB_PING_INTERVAL: Final = 1.0
PUBSUB_DEAD_AFTER: Final = 3.0
#: Longest wait between two attempts to subscribe again (from RECONNECT_MIN, doubling).
RESUBSCRIBE_MAX: Final = 0.5
#: Heartbeat period and how long an instance counts as alive after its last one.
HEARTBEAT_INTERVAL: Final = 1.0
HEARTBEAT_TTL: Final = 3.0
#: Seconds after which another instance resumes a pattern cleanup left unfinished.
CLEANUP_STALL: Final = 30.0
#: Seconds close() spends writing what write-behind still holds.
CLOSE_FLUSH_TIMEOUT: Final = 5.0
#: Longest sleep between two engine ticks, seconds.
MAX_IDLE: Final = 1.0

Write = tuple[str, Entry]


def _ignore(*args: object) -> None:
    """A listener nobody registered."""


@dataclass(frozen=True, slots=True)
class RedisStatistics:
    """Counters of a :class:`RedisRuntime` since start (its parts' own, gathered)."""

    commands: int
    bytes_sent: int
    bytes_received: int
    messages_received: int
    writes_applied: int
    writes_lost: int
    writes_rechecked: int
    writes_dropped: int
    write_errors: int
    reconnects: int
    hot_tier_drops: int
    scripts_loaded: int
    junk_messages: int
    refused_records: int
    refused_drift: int
    cleanups: int
    records_cleaned: int
    #: Write-through writes fewer replicas confirmed than the URL's wait_replicas.
    writes_unconfirmed: int = 0


class RedisRuntime:
    """Drives a :class:`GossipEngine` against a shared Redis (implements ``Runtime``).

    Also answers the cluster's key-space questions (:meth:`check_writable`,
    :meth:`live`, :meth:`keys`, :meth:`size`, :meth:`snapshot`, :meth:`restore`) from
    Redis. Every Redis failure reaches callers as :class:`PeerError`. Timings are
    instance attributes so that tests can shorten them before :meth:`start`.
    """

    heartbeat_interval: float = HEARTBEAT_INTERVAL
    heartbeat_ttl: float = HEARTBEAT_TTL
    pubsub_ping_interval: float = PUBSUB_PING_INTERVAL
    pubsub_dead_after: float = PUBSUB_DEAD_AFTER
    cleanup_stall: float = CLEANUP_STALL

    #: Redis may hold any key: a miss here is asked of Redis.
    answers_misses = True
    #: The hot tier is not the authority on stamps (Redis is): evicted keys go whole.
    keeps_stubs = False

    def __init__(
        self,
        engine: GossipEngine,
        *,
        url: str,
        cluster: str,
        strategy: str,
        sync_interval: float,
        local_ttl: float | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.url = url
        self.cluster = cluster
        self.node = engine.node
        self._clock = clock
        self.commands = Commands(
            url,
            client_name=f"crdtcache-{self.node}"[:64].replace(" ", "_"),
            on_unreachable=self._note_down,
        )
        self.protocol = RedisProtocol(
            engine,
            cluster=cluster,
            inline=strategy != "on-demand",
            local_ttl=local_ttl,
            where=self.commands.where,
        )
        self.writer = BatchWriter(
            self.protocol,
            self.commands,
            sync_interval=sync_interval,
            clock=clock,
            load_patterns=self._load_patterns,
            dispatch=self._dispatch,
        )
        self.conditional = ConditionalWriter(
            self.protocol,
            self.commands,
            self.writer,
            clock=clock,
            load_patterns=self._load_patterns,
            dispatch=self._dispatch,
            acks=strategy == "write-through",
        )
        self.keyspace = RedisKeySpace(
            self.protocol,
            self.commands,
            self.writer,
            clock=clock,
            load_patterns=self._load_patterns,
            dispatch=self._dispatch,
        )
        self._on_changes: ChangeListener = _ignore
        self._on_peer: PeerListener = _ignore
        self._on_evict: EvictionListener = _ignore
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._closed = False
        self._ready: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._cleaner: asyncio.Task[None] | None = None
        self._hot_timer: asyncio.TimerHandle | None = None
        self._info = instance_info(socket.gethostname(), os.getpid(), time.time())

    # ================================================================ Runtime
    @property
    def address(self) -> str | None:
        """None: instances talk only to Redis, never to each other."""
        return None

    def listen(
        self,
        on_changes: ChangeListener,
        on_peer: PeerListener,
        on_evict: EvictionListener | None = None,
    ) -> None:
        """Register the callbacks that receive changes, instance (peer) events and the
        hot tier's own evictions (``local_ttl``)."""
        self._on_changes = on_changes
        self._on_peer = on_peer
        self._on_evict = on_evict or _ignore

    def keep_durable(self, persistence: Persistence) -> None:
        """Not used: Redis holds the data (``persist_path`` does not apply)."""

    def serve_admin(self, handler: AdminHandler) -> None:
        """Nothing to serve: instances accept no client links."""

    async def start(self) -> None:
        """Connect, subscribe, register the heartbeat; :class:`PeerError` if Redis fails."""
        if self._started:
            return
        self._started = True
        loop = self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self.commands.connect()
        try:
            await self.commands.command("PING")
            await self.commands.load_scripts(
                (WRITE, PATTERN, CLEAN, CLEANED, STAT, HEARTBEAT, ADD, INCR, TOUCH)
            )
            self._tasks.append(loop.create_task(self._subscription()))
            try:
                await asyncio.wait_for(self._ready.wait(), CONNECT_TIMEOUT + COMMAND_TIMEOUT)
            except TimeoutError:
                why = self.protocol.down_reason
                raise PeerError(f"{self.commands.where}: could not subscribe ({why})") from None
        except BaseException:
            await self._shutdown()
            raise
        self._tasks.append(loop.create_task(self._heartbeats()))
        self._flusher = loop.create_task(self.writer.run())
        self._tasks.append(self._flusher)
        self._tasks.append(loop.create_task(self._tick_forever()))

    async def close(self) -> None:
        """Write what write-behind still holds, leave the cluster, disconnect; idempotent."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        if self._flusher is not None:
            # A batch it had in flight goes back to the outbox (rewriting it is
            # harmless: an equal stamp is the same write), and is written below.
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        self.protocol.take()
        if self.protocol.outbox:
            try:
                async with asyncio.timeout(CLOSE_FLUSH_TIMEOUT):
                    await self.writer.write_outbox()
            except (PeerError, TimeoutError) as exc:
                lost = self.protocol.writes.outbox_lost()
                log.error("closing: %d write-behind writes never reached Redis: %s", lost, exc)
        if self.protocol.subscribed:
            with contextlib.suppress(PeerError, TimeoutError):
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await self.commands.publish(
                        self.protocol.layout.inv_channel, encode_leave(self.node)
                    )
                    await self._heartbeat(leave=True)
        await self._shutdown()

    async def _shutdown(self) -> None:
        tasks = [*self._tasks, *self._side_tasks]
        if self._cleaner is not None:
            tasks.append(self._cleaner)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._side_tasks.clear()
        if self._hot_timer is not None:
            self._hot_timer.cancel()
            self._hot_timer = None
        self.protocol.closed()
        self._dispatch()
        await self.commands.close()
        self.engine.flush(self._clock())

    def wake(self) -> None:
        """A write was applied locally: queue it for the next batch (``sync_interval``)."""
        self.protocol.take()
        self.writer.wake()

    async def flush(self, *, ack: bool, timeout: float) -> frozenset[str]:
        """Write-through: write the pending writes now and wait for every live instance.

        Returns the instances that did not acknowledge within ``timeout``. Raises
        :class:`PeerError` if Redis did not take the writes: they are then dropped
        from this instance too (nothing is left applied that Redis does not hold).
        """
        return await self.writer.flush(ack=ack, timeout=timeout)

    async def fetch(self, keys: Sequence[str], timeout: float) -> None:
        """Read ``keys`` from Redis into the hot tier (see :mod:`._hottier`'s race).

        Raises :class:`PeerError` if Redis cannot be reached within ``timeout``.
        """
        await self.keyspace.fetch(keys, timeout)

    def statistics(self) -> RuntimeStatistics:
        """Traffic, instances and problems (see :meth:`redis_statistics` for Redis's own)."""
        proto = self.protocol
        traffic = self.commands.counters
        running = self._started and not self._closed
        return RuntimeStatistics(
            bytes_sent=traffic.bytes_sent,
            bytes_received=traffic.bytes_received,
            frames_sent=traffic.commands,
            frames_received=traffic.messages_received,
            connections=int(proto.subscribed),
            instances=1 + len(proto.instances.live()),
            peers=proto.instances.peers(),
            problems=tuple(proto.problems(self._clock(), running=running)),
            refused_drift=proto.counters.refused_drift,
        )

    def redis_statistics(self) -> RedisStatistics:
        """The Redis-specific counters of this runtime and its parts."""
        traffic = self.commands.counters
        proto = self.protocol.counters
        writes = self.protocol.writes.counters
        return RedisStatistics(
            commands=traffic.commands,
            bytes_sent=traffic.bytes_sent,
            bytes_received=traffic.bytes_received,
            messages_received=traffic.messages_received,
            writes_applied=writes.applied,
            writes_lost=writes.lost,
            writes_rechecked=writes.rechecked,
            writes_dropped=writes.dropped,
            write_errors=writes.errors,
            reconnects=proto.reconnects,
            hot_tier_drops=self.protocol.hot.drops,
            scripts_loaded=traffic.scripts_loaded,
            junk_messages=proto.junk_messages,
            refused_records=proto.refused_records,
            refused_drift=proto.refused_drift,
            cleanups=self.keyspace.cleanups,
            records_cleaned=self.keyspace.records_cleaned,
            writes_unconfirmed=writes.unconfirmed,
        )

    # ====================================================== the key space
    def check_writable(self) -> None:
        """Raise :class:`PeerError` before a write that could not be kept consistent."""
        self.protocol.check_writable()

    async def live(self, key: str) -> bool:
        """Whether ``key`` is live in Redis or in this node's unwritten writes."""
        return await self.keyspace.live(key)

    async def keys(self, pattern: str) -> list[str]:
        """Live keys matching the glob, in Redis and in this node's unwritten writes."""
        return await self.keyspace.keys(pattern)

    async def add(self, key: str, stored: object, expires: float | None) -> bool:
        """Write ``key`` only if Redis holds no live value for it (atomic across instances)."""
        return await self.conditional.add(key, stored, expires)

    async def incr(
        self, key: str, delta: int, expires: float | None, as_int: Callable[[object], int]
    ) -> int | None:
        """Add ``delta`` to the int Redis holds at ``key`` (INCRBY; its expiry kept).

        ``as_int`` is not needed: Redis reads the value. Raises
        :class:`~crdtcache.ValidationError` for a value that is not an int of 64 bits.
        """
        try:
            return await self.conditional.incr(key, delta, expires)
        except NotAnInteger as exc:
            raise ValidationError(f"incr {key!r}: {exc}") from None

    async def touch(self, key: str, expires: float | None) -> bool:
        """Give ``key``'s live value in Redis a new expiry; False if it has none."""
        return await self.conditional.touch(key, expires)

    async def size(self) -> int:
        """Live records in Redis (counted at most every few seconds, see ``_keyspace``)."""
        return await self.keyspace.size()

    async def snapshot(self) -> bytes:
        """The cluster's data in Redis (plus this node's unwritten writes) as a snapshot."""
        return await self.keyspace.snapshot()

    async def restore(self, data: bytes) -> list[Change]:
        """Merge a snapshot into Redis (LWW per key: nothing newer is overwritten).

        Raises like :func:`restore_snapshot`, or :class:`PeerError` if Redis fails
        part-way (restoring again completes it).
        """
        return await self.keyspace.restore(data)

    # ================================================================ events
    def _dispatch(self) -> None:
        """Act on the protocol's events: the one place they go (module doc)."""
        for event in self.protocol.drain_events():
            try:
                self._handle(event)
            except Exception:  # a listener's bug must not stop the runtime
                log.exception("handling %r failed", event)
        self._arm_hot_timer()

    def _handle(self, event: Event) -> None:
        loop = self._loop
        assert loop is not None  # events come only from a started runtime
        if isinstance(event, ChangesMade):
            self._on_changes(event.changes)
        elif isinstance(event, PeerEvent):
            if event.state == ALIVE and event.peer not in self.protocol.instances.described:
                self._spawn(self._describe(event.peer))
            self._on_peer(event)
        elif isinstance(event, Evicted):
            self._on_evict(event.key, event.reason)
        elif isinstance(event, AckDone):
            self.writer.acked(event.ack_id)
        elif isinstance(event, AcksDue):
            loop.call_soon(self._send_acks)
        elif self._cleaner is None or self._cleaner.done():  # CleanupDue
            self._cleaner = loop.create_task(self._clean_forever())

    def _note_down(self, reason: str) -> None:
        self.protocol.note_down(reason)

    def _arm_hot_timer(self) -> None:
        if self._hot_timer is not None or self._loop is None or self._closed:
            return
        due = self.protocol.hot_deadline()
        if due is not None:
            delay = max(0.0, due - self._clock())
            self._hot_timer = self._loop.call_later(delay, self._expire_hot)

    def _expire_hot(self) -> None:
        self._hot_timer = None
        self.protocol.expire_hot(self._clock())
        self._dispatch()

    def _send_acks(self) -> None:
        # One PUBLISH per writer for every invalidation handled in this loop turn.
        for channel, message in self.protocol.take_acks():
            self._spawn(self.commands.publish(channel, message))

    def _spawn(self, coro: Any) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_done)

    def _side_done(self, task: asyncio.Task[Any]) -> None:
        self._side_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("Redis call failed: %s", task.exception())

    async def _tick_forever(self) -> None:
        """Tick the engine for collection (expiry events of held values)."""
        engine = self.engine
        while True:
            reraise_cancellation()
            delay = min(max(engine.next_deadline() - self._clock(), 0.0), MAX_IDLE)
            await asyncio.sleep(delay)
            try:
                self.protocol.take()  # the engine's own flush would drop them: no peers
                engine.tick(self._clock())
                changes = engine.drain_changes()
                engine.drain_peer_events()
                if changes:
                    self._on_changes(changes)
            except Exception:  # a listener's bug must not stop expiry for good
                log.exception("tick failed")

    # ================================================================ pub/sub
    async def _subscription(self) -> None:
        """Keep the subscription up for the runtime's life (:mod:`._protocol`, link loss)."""
        delay = RECONNECT_MIN
        while True:
            reraise_cancellation()
            subscription = self.commands.subscription()
            reason = "connection closed"
            try:
                await self._listen(subscription)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the link: reconnect
                reraise_cancellation()
                cause = exc.__cause__ if isinstance(exc, PeerError) and exc.__cause__ else exc
                reason = str(cause) or type(cause).__name__
            finally:
                await subscription.close()
            if self.protocol.subscribed:
                delay = RECONNECT_MIN
            self._lost(reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESUBSCRIBE_MAX)

    async def _listen(self, subscription: Subscription) -> None:
        layout = self.protocol.layout
        await subscription.subscribe(layout.inv_channel, layout.ack_channel)
        waiting = {layout.inv_channel, layout.ack_channel}
        last_heard = last_ping = time.monotonic()
        confirmed = False
        while True:
            reraise_cancellation()
            msg = await subscription.next(timeout=self.pubsub_ping_interval)
            now = time.monotonic()
            if msg is None:
                if now - last_heard > self.pubsub_dead_after:
                    raise PeerError("pub/sub link silent")
                if confirmed and now - last_ping >= self.pubsub_ping_interval:
                    last_ping = now
                    await subscription.ping()
                continue
            last_heard = now
            kind, channel, data = msg
            if kind == "subscribe":
                waiting.discard(channel)
                if not waiting and not confirmed:
                    # Redis has our subscription: every write committed from now on
                    # reaches us, so the tier can be emptied and served again.
                    confirmed = True
                    await self._subscribed_now()
            elif kind == "message":
                self._on_message(channel, data)

    async def _subscribed_now(self) -> None:
        proto = self.protocol
        proto.link_up()
        try:
            await self._load_patterns()
            await self._heartbeat()
            await self.commands.publish(proto.layout.inv_channel, encode_join(self.node))
        except PeerError:
            proto.subscribed = False  # not serving: the loop reports the loss
            raise
        down_for = proto.link_ready(self._clock())
        if down_for is not None:
            log.warning("%s reachable again after %.1f s", self.commands.where, down_for)
        assert self._ready is not None
        self._ready.set()
        if proto.outbox:
            self.writer.reachable()

    def _lost(self, reason: str) -> None:
        if self.protocol.link_lost(reason, self._clock()):
            log.warning("Redis pub/sub link to %s lost: %s", self.commands.where, reason)
        self._dispatch()

    def _on_message(self, channel: object, data: object) -> None:
        try:
            self.protocol.receive(channel, data, self._clock())
        except Exception:  # a bug must not take the subscription down
            log.exception("handling a Redis message failed")
        self._dispatch()

    # ============================================================== patterns
    async def _load_patterns(self) -> list[PatternTombstone]:
        """Merge every pattern tombstone in Redis; returns those not cleaned up yet."""
        raw = await self.commands.command("HGETALL", self.protocol.layout.patterns)
        unclean = self.protocol.patterns_loaded(raw, self._clock())
        self._dispatch()
        return unclean

    async def _clean_forever(self) -> None:
        while (tomb := self.protocol.next_cleanup()) is not None:
            reraise_cancellation()
            try:
                await self.keyspace.clean(tomb)
            except PeerError as exc:
                # The tombstone stays unclean in Redis; a heartbeat check resumes it.
                log.warning("cleanup of pattern %r stopped: %s", tomb.pattern, exc)

    async def _resume_cleanups(self) -> None:
        """Run cleanups another instance started but did not finish (it may have died)."""
        unclean = await self._load_patterns()
        stalled = self.protocol.patterns.stalled(unclean, self._clock(), self.cleanup_stall)
        if not stalled:
            return
        lock = max(1000, int(self.cleanup_stall * 1000))
        layout = self.protocol.layout
        if await self.commands.command("SET", layout.lock, self.node, "NX", "PX", lock):
            for tomb in stalled:
                self.protocol.schedule_cleanup(tomb)
            self._dispatch()

    # ============================================================= instances
    async def _heartbeats(self) -> None:
        beats = 0
        while True:
            reraise_cancellation()
            await asyncio.sleep(self.heartbeat_interval)
            if not self.protocol.subscribed:
                continue  # an instance that cannot hear invalidations is not a member
            try:
                await self._heartbeat()
                beats += 1
                if beats % 10 == 0:
                    await self._resume_cleanups()
            except PeerError as exc:
                log.debug("heartbeat failed: %s", exc)
            self.protocol.instances.prune(self._clock())

    async def _describe(self, peer: str) -> None:
        """Read what a new instance says it is (its heartbeat key: host, process)."""
        raw = await self.commands.command("GET", self.protocol.layout.instance_of(peer))
        description = describe_instance(raw)
        if description is not None:
            self.protocol.instances.describe(peer, description)

    async def _heartbeat(self, *, leave: bool = False) -> None:
        call = self.protocol.calls.heartbeat(self._info, self.heartbeat_ttl, leave=leave)
        answer = await self.commands.eval(*call)
        if leave:
            return
        missed = self.protocol.heartbeat_answered(answer, self._clock(), self.heartbeat_ttl)
        self._dispatch()
        if missed:
            await self._load_patterns()  # a pattern announcement was missed
