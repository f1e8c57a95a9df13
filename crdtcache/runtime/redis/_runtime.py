"""The runtime of ``backend="redis"``: a local hot tier in front of a shared Redis.

Theory of operation
-------------------
Redis holds the cluster's data; each instance's :class:`~crdtcache.core.Replica` is
only its *hot tier* (bounded by ``local_max_size`` / ``max_memory``, and by
``local_ttl`` seconds per value). The cache writes through the same engine as in
p2p mode; this runtime takes the engine's pending deltas
(:meth:`GossipEngine.take_pending`) and writes them to Redis instead of gossiping
them, and fills the hot tier from Redis on a miss (:meth:`RedisRuntime.fetch`).

*Key layout* (``C`` is the ``cluster`` option; the braces make it a Redis Cluster hash
tag, so every key of one cluster hashes to one slot and multi-key scripts are legal):

==============================  ======  =============================================
``crdtcache:{C}:k:<key>``       hash    ``s`` stamp text, ``v`` value (msgpack; absent
                                        in a tombstone), ``x`` expiry (seconds since the
                                        epoch, absent: none); PEXPIREAT as below
``crdtcache:{C}:patterns``      hash    ``p:<glob>`` stamp of the newest pattern
                                        tombstone of the glob, ``c:<glob>`` stamp its
                                        records were deleted up to, ``""`` the newest
                                        pattern stamp of all, ``#`` a version raised by
                                        every tombstone recorded
``crdtcache:{C}:i:<node>``      string  heartbeat of an instance (PX ``heartbeat_ttl``)
``crdtcache:{C}:instances``     zset    node id -> heartbeat expiry (server ms): lists
                                        instances without SCAN
``crdtcache:{C}:size``          string  cached count of live records (PX 5 s)
``crdtcache:{C}:lock:cleanup``  string  who resumes an abandoned pattern cleanup
channel ``crdtcache:{C}:inv``           every write's invalidation, joins and leaves
channel ``crdtcache:{C}:ack:<node>``    acknowledgements of ``node``'s write-through
==============================  ======  =============================================

A stamp text is the HLC ``ts`` in 16 hex digits followed by the origin node id; it
sorts like the stamp (see :mod:`crdtcache.runtime.redis._scripts`). A value record with a TTL
expires in Redis :data:`EXPIRED_GRACE` seconds after its expiry (readers treat it as
absent from the expiry on); a tombstone expires ``TOMBSTONE_GRACE`` seconds after its
stamp; a value without a TTL never does. With a cluster hash tag, one cluster lives
in one slot, that is on one Redis Cluster shard: run separate ``cluster`` names to
spread load over shards.

*Writes: last-writer-wins enforced in Redis.* Writes go to Redis in batches (one per
``sync_interval`` with write-behind and on-demand, one per ``set`` with write-through;
at most :data:`MAX_BATCH` writes), each batch one ``WRITE`` script. For each write it
replaces the record only if the write's stamp is greater than the stored one (an
equal stamp is the same write, retried), and refuses a stamp further ahead of the
server's clock than ``max_drift``; then it publishes one invalidation listing the
writes it applied, in the same atomic step. So an older stamp never overwrites a
newer one whichever instance writes last, nothing is half-written, and no committed
write goes unannounced. A writer whose write lost drops its local copy and observes
the winning stamp (its next write wins). Write-behind writes wait in a bounded outbox
(:data:`MAX_OUTBOX`) and are retried while Redis is unreachable.

*Pattern tombstones.* ``invalidate_pattern(glob)`` records "every key matching the glob
stamped at or before S is gone" in the patterns hash (``PATTERN`` script, announced like
a write), then deletes the matching records by SCAN (never KEYS) under the prefix,
each page through ``CLEAN``, which deletes only records stamped at or before S. A
write must not land under a tombstone that covers it: every instance holds all
pattern tombstones (loaded at (re)subscription, kept current by their announcements)
and drops covered writes itself. Each recorded tombstone raises the version ``#``; an
instance knows the version it holds every tombstone of (set by a full load, raised by
announcements that arrive in sequence), and ``WRITE`` is given it: when Redis's
version differs and its newest tombstone is not older than the write, the script
answers "recheck" instead of writing (the writer reloads the patterns and decides),
so a tombstone the writer has not heard of cannot be overtaken. Guaranteed: once the
tombstone is recorded, no write stamped at or before S that matches it is stored or
served (readers refuse covered records, and records present when the SCAN starts
are deleted); records written later with greater stamps survive. Not guaranteed:
glob matching is evaluated in Python (``fnmatch``) by each instance, so instances
must agree on the pattern; a cleanup abandoned by a crashed instance is resumed by
another one after :data:`CLEANUP_STALL` seconds; a tombstone is collected (like
p2p's, after ``TOMBSTONE_GRACE``) only once its cleanup completed, and a write stamped
before it that arrives after that is accepted (Cassandra's gc_grace rule).

*Invalidation protocol.* Each instance subscribes to ``inv`` (and its own ``ack``
channel) before it serves anything. A batch's message carries, per applied write, the
key, stamp and expiry, and with write-behind / write-through small values inline
(:data:`MAX_INLINE_VALUE_BYTES`). A receiver that holds the key merges it by stamp:
an older or equal stamp changes nothing; a newer one replaces the local copy with
the inline value, or else drops it (the next read fetches from Redis). One that does
not hold the key only reports the change (``on_change``, events). With on-demand only
stamps travel. With write-through the writer waits until every live instance
acknowledged (or raises :class:`PeerError` naming the ones that did not).

*The race* between a reader's fetch and a concurrent write, which both go through
Redis: the reader R sends HMGET and the writer's script W commits and publishes at
some point of Redis's serial order (a single server is linearizable; with replicas,
reads go to the primary like writes).

* HMGET before W: R gets the old stamp s1; W's announcement (s2 > s1) reaches R after
  that. If R merged the old value first, the announcement replaces it. If the
  announcement arrived first -- possible, pub/sub and replies travel on different
  connections -- R was fetching the key, so the announcement is kept as a stub with
  s2 (not dropped, as for keys not held), and the late reply with s1 loses to it; R
  fetches again and gets s2.
* HMGET after W: R reads s2 itself.

No interleaving leaves R holding s1 after W's announcement has been processed. With
write-through, the writer returns only after every live instance processed it, hence
"no instance serves a stale copy after a write returned"; with write-behind and
on-demand the window is the batch interval plus pub/sub delivery (``local_ttl``
bounds it even if announcements are lost).

*Subscription loss.* While the pub/sub link is down an instance cannot hear
invalidations, so the moment the link is found down the whole hot tier is dropped,
writes raise :class:`PeerError` (nothing is applied), and reads go to Redis without
keeping what they fetch. After resubscribing (and before serving from the tier
again) the tier is dropped once more -- it may have been refilled by reads in
flight -- and the pattern tombstones are reloaded. A silent link (no RST) is found
down by PING within :data:`PUBSUB_DEAD_AFTER` seconds; until then ``local_ttl`` is
the only bound on staleness.

*Instances* renew a heartbeat key and their entry in the instances zset every
``heartbeat_interval``; ``cluster.instances`` is the zset's size, and an instance
whose entry expired is reported dead (``peer_down``). Join and leave announcements
make a clean start or stop visible at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
import os
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import msgpack
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from crdtcache._errors import ClockDriftError, PeerError, SerializationError
from crdtcache.core import (
    ALIVE,
    DEAD,
    MAX_KEY_CHARS,
    NOT_HELD,
    TOMBSTONE,
    Change,
    Entry,
    GossipEngine,
    HybridClock,
    PatternTombstone,
    PeerEvent,
    Replica,
)
from crdtcache.core._entry import compile_pattern
from crdtcache.core._format import (
    InvalidRecord,
    blob_stored,
    check_expires,
    check_key,
    check_node,
    check_ts,
    entry_from_blob,
    pattern_from_record,
    stored_blob,
)
from crdtcache.core._hlc import ts_at, ts_seconds
from crdtcache.core._replica import collect_due_ms, collection_horizon
from crdtcache.core._values import stored_size
from crdtcache.runtime._protocol import (
    AdminHandler,
    ChangeListener,
    EvictionListener,
    PeerListener,
    PeerState,
    Problem,
    RuntimeStatistics,
)
from crdtcache.runtime.redis._scripts import CLEAN, CLEANED, HEARTBEAT, PATTERN, STAT, WRITE, Script
from crdtcache.store._snapshot import decode_snapshot, encode_snapshot

__all__ = [
    "CLEANUP_STALL",
    "EXPIRED_GRACE",
    "MAX_BATCH",
    "MAX_INLINE_VALUE_BYTES",
    "MAX_OUTBOX",
    "PUBSUB_DEAD_AFTER",
    "RedisRuntime",
    "redact_url",
]

log = logging.getLogger(__name__)

#: Seconds a value record with a TTL stays in Redis after its expiry, so that a write
#: with an older stamp arriving late (a delayed batch, a lagging clock) still loses.
EXPIRED_GRACE: Final = 60.0
#: Invalidations carry the value itself up to this size (write-behind, write-through),
#: and up to MAX_INLINE_BATCH_BYTES of values per message.
MAX_INLINE_VALUE_BYTES: Final = 16 * 1024
MAX_INLINE_BATCH_BYTES: Final = 64 * 1024
#: Write-behind writes accepted but not yet in Redis; a full queue refuses new writes.
MAX_OUTBOX: Final = 100_000
#: Writes per batch (one WRITE script, one invalidation message), and their bytes:
#: a batch holds Redis for about a microsecond per write, so it stays short.
MAX_BATCH: Final = 512
MAX_BATCH_BYTES: Final = 4 << 20
#: Connections to Redis for commands (a burst of misses waits for a free one).
MAX_CONNECTIONS: Final = 32
#: Seconds to connect, and to wait for one command's answer.
CONNECT_TIMEOUT: Final = 2.0
COMMAND_TIMEOUT: Final = 5.0
#: Reconnection delays (doubling) after the pub/sub link or a write batch failed.
RECONNECT_MIN: Final = 0.05
RECONNECT_MAX: Final = 2.0
#: A quiet pub/sub link is PINGed this often and given up after PUBSUB_DEAD_AFTER.
PUBSUB_PING_INTERVAL: Final = 1.0
PUBSUB_DEAD_AFTER: Final = 3.0
#: Heartbeat period and how long an instance counts as alive after its last one.
HEARTBEAT_INTERVAL: Final = 1.0
HEARTBEAT_TTL: Final = 3.0
#: Seconds a dead instance stays listed in the statistics.
DEAD_LISTED: Final = 60.0
#: Seconds after which another instance resumes a pattern cleanup left unfinished.
CLEANUP_STALL: Final = 30.0
#: Keys per SCAN step (a hint to Redis) and seconds ``distributed.size`` is cached.
SCAN_COUNT: Final = 1000
SIZE_CACHE: Final = 5.0
#: Largest invalidation message accepted from the channel.
MAX_MESSAGE_BYTES: Final = MAX_BATCH * (4 * MAX_KEY_CHARS + 64) + MAX_INLINE_BATCH_BYTES + 4096
#: Reads of one key retried when an invalidation overtook the reply, and writes
#: retried after reloading the pattern tombstones (module doc, pattern tombstones).
FETCH_ATTEMPTS: Final = 3
RECHECK_ATTEMPTS: Final = 3
#: Seconds close() spends writing what write-behind still holds.
CLOSE_FLUSH_TIMEOUT: Final = 5.0

# Message kinds on the invalidation channel: [kind, sender, ...].
# _WRITES: [1, sender, ack, [[key, ts, origin, expires, deleted, value | nil], ...]]
# _PATTERN: [2, sender, ack, glob, ts, origin, version] (the PATTERN script appends
# the version); _JOIN, _LEAVE: [3 | 4, sender]
_WRITES, _PATTERN, _JOIN, _LEAVE = 1, 2, 3, 4
_UNREACHABLE: Final = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


def redact_url(url: str) -> str:
    """``url`` without its password (for messages and logs)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urllib.parse.urlunsplit(parts._replace(netloc=user + host))


def stamp_text(ts: int, origin: str) -> str:
    """A stamp as stored in Redis: 16 hex digits of ``ts``, then the origin."""
    return f"{ts:016x}{origin}"


def parse_stamp(raw: object) -> tuple[int, str]:
    """``(ts, origin)`` from a stamp text read from Redis; raises :class:`InvalidRecord`."""
    if type(raw) is bytes:
        try:
            raw = raw.decode()
        except UnicodeDecodeError:
            raise InvalidRecord("stamp is not UTF-8") from None
    if type(raw) is not str or len(raw) < 17:
        raise InvalidRecord(f"not a stamp: {raw!r:.60}")
    try:
        ts = int(raw[:16], 16)
    except ValueError:
        raise InvalidRecord(f"not a stamp: {raw!r:.60}") from None
    return ts, check_node(raw[16:])


def record_entry(key: str, stamp: object, blob: object, expires: object) -> Entry:
    """The entry of a Redis record's fields (``s``, ``v``, ``x``); raises :class:`InvalidRecord`.

    The stamp and expiry are kept as text in Redis; once parsed, the record is
    validated by the one record format (:mod:`crdtcache.core._format`).
    """
    ts, origin = parse_stamp(stamp)
    if expires is not None:
        try:
            expires = float(expires)  # type: ignore[arg-type]  # bytes or str from Redis
        except (TypeError, ValueError):
            raise InvalidRecord(f"expiry is not a number: {expires!r:.40}") from None
    return entry_from_blob(key, None, blob, ts, origin, expires)[1]


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} refused")


def _decode_message(data: object) -> list[Any]:
    """Decode and shape-check one channel message; raises ValueError for junk."""
    if type(data) is not bytes or len(data) > MAX_MESSAGE_BYTES:
        raise ValueError("not a message of an acceptable size")
    msg = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_refuse_ext)
    if type(msg) is not list or len(msg) < 2 or type(msg[0]) is not int:
        raise ValueError("not a message")
    check_node(msg[1])
    kind = msg[0]
    if kind == _WRITES:
        if len(msg) != 4 or type(msg[2]) is not int or type(msg[3]) is not list:
            raise ValueError("malformed writes message")
        for item in msg[3]:
            if type(item) is not list or len(item) != 6:
                raise ValueError("malformed write in a writes message")
            key, ts, origin, expires, deleted, blob = item
            if type(deleted) is not bool or (blob is not None and type(blob) is not bytes):
                raise ValueError("malformed write in a writes message")
            # The fields every record has: the one record format's checks.
            check_key(key)
            check_ts(ts)
            check_node(origin, "origin node id")
            check_expires(expires)
    elif kind == _PATTERN:
        if len(msg) != 7:
            raise ValueError("pattern message of the wrong length")
        _, _, ack, pattern, ts, origin, version = msg
        if type(version) is not int or type(ack) is not int or not pattern:
            raise ValueError("malformed pattern message")
        pattern_from_record(pattern, ts, origin)
    elif kind not in (_JOIN, _LEAVE) or len(msg) != 2:
        raise ValueError(f"unknown message kind {kind}")
    return msg


def _batches(entries: list[tuple[str, Entry]]) -> Iterator[list[tuple[str, Entry]]]:
    """``entries`` in batches of at most MAX_BATCH writes and about MAX_BATCH_BYTES."""
    batch: list[tuple[str, Entry]] = []
    size = 0
    for key, e in entries:
        if batch and (len(batch) == MAX_BATCH or size > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append((key, e))
        size += len(key) + stored_size(e.value)
    if batch:
        yield batch


def _reraise_cancellation() -> None:
    """Raise CancelledError if the running task is being cancelled.

    A cancellation can be lost inside redis-py: its blocking pool waits with
    ``asyncio.wait_for``, which on Python 3.11 swallows a cancel that arrives as the
    wait completes, and a cancel landing mid-command can surface as a connection
    error. The task still counts as cancelling, so the runtime's loops check here at
    every turn and after every failure instead of retrying forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _glob_escape(text: str) -> str:
    # Redis MATCH patterns treat these as special; a backslash makes them literal.
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)


def _literal_prefix(pattern: str) -> str:
    """The part of an fnmatch glob before its first wildcard."""
    for i, c in enumerate(pattern):
        if c in "*?[":
            return pattern[:i]
    return pattern


@dataclass(slots=True)
class _Waiter:
    """A write-through write waiting for every live instance's acknowledgement."""

    expected: set[str]
    done: asyncio.Future[None]


@dataclass(slots=True)
class RedisStatistics:
    """Counters of a :class:`RedisRuntime` since start."""

    commands: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_received: int = 0
    writes_applied: int = 0
    writes_lost: int = 0
    writes_rechecked: int = 0
    writes_dropped: int = 0
    reconnects: int = 0
    hot_tier_drops: int = 0
    scripts_loaded: int = 0
    junk_messages: int = 0
    refused_records: int = 0
    cleanups: int = 0
    records_cleaned: int = 0


class RedisRuntime:
    """Drives a :class:`GossipEngine` against a shared Redis (implements ``Runtime``).

    Also implements the cache's ``SharedTier`` (:meth:`check_writable`, :meth:`live`,
    :meth:`keys`, :meth:`size`, :meth:`snapshot`, :meth:`restore`). Every Redis
    failure reaches callers as :class:`PeerError`. Timings are instance attributes so
    that tests can shorten them before :meth:`start`.
    """

    heartbeat_interval: float = HEARTBEAT_INTERVAL
    heartbeat_ttl: float = HEARTBEAT_TTL
    pubsub_ping_interval: float = PUBSUB_PING_INTERVAL
    pubsub_dead_after: float = PUBSUB_DEAD_AFTER
    cleanup_stall: float = CLEANUP_STALL

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
        self._strategy = strategy
        self._inline = strategy != "on-demand"
        self._sync_interval = sync_interval
        self._local_ttl = local_ttl
        self._clock = clock
        self._on_evict: EvictionListener | None = None
        self._on_changes: ChangeListener | None = None
        self._on_peer: PeerListener | None = None
        prefix = f"crdtcache:{{{cluster}}}:".encode()
        self._prefix = prefix
        self._records = prefix + b"k:"
        self._patterns_key = prefix + b"patterns"
        self._instance_key = prefix + b"i:" + self.node.encode()
        self._instances_key = prefix + b"instances"
        self._size_key = prefix + b"size"
        self._lock_key = prefix + b"lock:cleanup"
        self._inv_channel = prefix + b"inv"
        self._ack_channel = prefix + b"ack:" + self.node.encode()
        self._client: aioredis.Redis | None = None
        # Commands in flight, at most one per pooled connection (a burst of misses
        # waits here rather than failing with "too many connections").
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._sub_client: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._closed = False
        # Connection state (see module doc, "Subscription loss").
        self._subscribed = False
        self._ready: asyncio.Event | None = None
        self._epoch = 0
        self._down_since: float | None = None
        self._down_reason = "not connected yet"
        # Write-behind: newest accepted write per key not yet in Redis, and the ones
        # being written right now (reads consult both: they are this node's writes).
        self._outbox: dict[str, Entry] = {}
        self._outbox_patterns: list[PatternTombstone] = []
        self._inflight: dict[str, Entry] = {}
        self._flush_wanted: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        # Reads in flight per key: an invalidation for such a key is kept as a stub.
        self._fetching: dict[str, int] = {}
        # Hot-tier deadlines (local_ttl), in loop time, in deadline order.
        self._hot: dict[str, float] = {}
        self._hot_timer: asyncio.TimerHandle | None = None
        # Write-through acknowledgements.
        self._ack_ids = itertools.count(1)
        self._waiters: dict[int, _Waiter] = {}
        self._acks_out: dict[str, list[int]] = {}
        self._acks_scheduled = False
        # Other instances: id -> alive/dead, and when each died.
        self._instances: dict[str, str] = {}
        self._dead_at: dict[str, float] = {}
        self._server_offset = 0.0
        # The patterns' version this node holds every tombstone of (module doc).
        self._patterns_version = 0
        # Pattern cleanups to run, newest tombstone per glob.
        self._cleanups: dict[str, PatternTombstone] = {}
        self._cleaner: asyncio.Task[None] | None = None
        self._matchers: dict[str, Callable[[str], object]] = {}
        self._size: tuple[float, int] | None = None
        self._write_errors = 0
        self.stats = RedisStatistics()
        self._info: bytes = msgpack.packb(
            {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        )

    # ================================================================ Runtime
    @property
    def address(self) -> str | None:
        """None: instances talk only to Redis, never to each other."""
        return None

    #: Redis may hold any key: a miss here is asked of Redis.
    answers_misses = True
    #: The hot tier is not the authority on stamps (Redis is): evicted keys go whole.
    keeps_stubs = False

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
        self._on_evict = on_evict

    async def start(self) -> None:
        """Connect, subscribe, register the heartbeat; :class:`PeerError` if Redis fails."""
        if self._started:
            return
        self._started = True
        loop = self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._flush_wanted = asyncio.Event()
        common: dict[str, Any] = {
            "socket_timeout": COMMAND_TIMEOUT,
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "protocol": 2,
            "client_name": f"crdtcache-{self.node}"[:64].replace(" ", "_"),
        }
        try:
            # One immediate retry: a pooled connection found dead after a Redis restart
            # is replaced at once instead of failing the command that found it. The
            # pool's bound is kept by self._slots: redis-py's blocking pool would do
            # it too, at about 15 us per command.
            pool = aioredis.ConnectionPool.from_url(
                self.url,
                max_connections=MAX_CONNECTIONS,
                retry=Retry(NoBackoff(), 1),
                **common,
            )
            self._client = aioredis.Redis(connection_pool=pool)
            # The subscriber must see every disconnection (it then drops the hot tier),
            # so its client never reconnects behind our back.
            self._sub_client = aioredis.Redis.from_url(
                self.url, retry=Retry(NoBackoff(), 0), **common
            )
        except (ValueError, RedisError) as exc:
            raise PeerError(f"redis_url {redact_url(self.url)!r}: {exc}") from exc
        try:
            await self._command("PING")
            await self._load_scripts()
            self._tasks.append(loop.create_task(self._subscription()))
            try:
                await asyncio.wait_for(self._ready.wait(), CONNECT_TIMEOUT + COMMAND_TIMEOUT)
            except TimeoutError:
                raise PeerError(
                    f"Redis at {redact_url(self.url)}: could not subscribe ({self._down_reason})"
                ) from None
        except BaseException:
            await self._shutdown()
            raise
        self._tasks.append(loop.create_task(self._heartbeats()))
        self._flusher = loop.create_task(self._flush_forever())
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
        self._take()
        if self._outbox or self._outbox_patterns:
            try:
                async with asyncio.timeout(CLOSE_FLUSH_TIMEOUT):
                    await self._write_outbox()
            except (PeerError, TimeoutError) as exc:
                lost = len(self._outbox) + len(self._outbox_patterns)
                self.stats.writes_dropped += lost
                log.error("closing: %d write-behind writes never reached Redis: %s", lost, exc)
        if self._subscribed:
            with contextlib.suppress(PeerError, TimeoutError):
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await self._publish(self._inv_channel, msgpack.packb([_LEAVE, self.node]))
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
        self._subscribed = False
        self._fail_waiters()
        for client in (self._sub_client, self._client):
            if client is not None:
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose(close_connection_pool=True)
        self.engine.flush(self._clock())

    def serve_admin(self, handler: AdminHandler) -> None:
        """Nothing to serve: instances accept no client links."""

    def wake(self) -> None:
        """A write was applied locally: queue it for the next batch (``sync_interval``)."""
        self._take()
        if self._flush_wanted is not None:
            self._flush_wanted.set()

    async def flush(self, *, ack: bool, timeout: float) -> frozenset[str]:
        """Write-through: write the pending writes now and wait for every live instance.

        Returns the instances that did not acknowledge within ``timeout``. Raises
        :class:`PeerError` if Redis did not take the writes: they are then dropped
        from this instance too (nothing is left applied that Redis does not hold).
        """
        self._take()
        entries = list(self._outbox.items())
        patterns = self._outbox_patterns
        self._outbox = {}
        self._outbox_patterns = []
        if not entries and not patterns:
            return frozenset()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        ack_id = 0
        waiter = None
        expected = self._live_instances() if ack else set()
        if expected:
            ack_id = next(self._ack_ids)
            waiter = _Waiter(set(expected), loop.create_future())
            self._waiters[ack_id] = waiter
        try:
            try:
                applied = 0
                async with asyncio.timeout(timeout):
                    for batch in _batches(entries) if entries else iter([[]]):
                        applied += await self._write(batch, patterns, ack_id, requeue=False)
                        patterns = []
            except PeerError:
                self._dropped(entries)  # also batches before the failed one: re-read later
                raise
            except TimeoutError:
                self._dropped(entries)
                raise PeerError(
                    f"Redis at {redact_url(self.url)} did not answer within {timeout:g} s; "
                    "the write is dropped from this instance and may or may not be in Redis"
                ) from None
            if waiter is None or not applied or not waiter.expected:
                return frozenset()
            left = max(0.0, deadline - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter.done), left)
            return frozenset(waiter.expected)
        finally:
            self._waiters.pop(ack_id, None)

    async def fetch(self, keys: Sequence[str], timeout: float) -> None:
        """Read ``keys`` from Redis into the hot tier (see the module doc's race analysis).

        Raises :class:`PeerError` if Redis cannot be reached within ``timeout``.
        """
        if not keys:
            return
        self._take()
        for key in keys:
            self._fetching[key] = self._fetching.get(key, 0) + 1
        try:
            async with asyncio.timeout(timeout):
                await self._fetch(list(keys))
        except TimeoutError:
            self._note_down("read timed out")
            raise PeerError(
                f"Redis at {redact_url(self.url)} did not answer within {timeout:g} s"
            ) from None
        finally:
            for key in keys:
                left = self._fetching[key] - 1
                if left:
                    self._fetching[key] = left
                else:
                    del self._fetching[key]
                    self._settle(key)

    async def _fetch(self, keys: list[str]) -> None:
        replica = self.engine.replica
        for _ in range(FETCH_ATTEMPTS):
            kept = self._subscribed
            epoch = self._epoch
            records = await self._read_records(keys)
            now = self._clock()
            again: list[str] = []
            for key, record in zip(keys, records, strict=True):
                if record is not None:
                    self._merge_quietly(key, record, now)
                own = self._inflight.get(key) or self._outbox.get(key)
                if own is not None:  # this node's write, not yet (or just) in Redis
                    self._merge_quietly(key, own, now)
                local = replica.entries.get(key)
                if local is None:
                    continue
                if local.value is NOT_HELD and (
                    record is None or (local.ts, local.origin) > (record.ts, record.origin)
                ):
                    again.append(key)  # an invalidation overtook the reply: read again
                elif local.held:
                    if kept and epoch == self._epoch and self._subscribed:
                        self._register_hot(key)
                    else:
                        # Read while invalidations could be missed: serve it to this
                        # caller (who reads it right after this returns), keep nothing.
                        assert self._loop is not None
                        self._loop.call_soon(self._drop_if, key, local)
            if not again:
                return
            keys = again

    def statistics(self) -> RuntimeStatistics:
        """Traffic, instances and problems (see :meth:`redis_statistics` for Redis's own)."""
        s = self.stats
        now = self._clock()
        problems: list[Problem] = []
        if not self._subscribed and self._started and not self._closed:
            since = f" for {now - self._down_since:.0f} s" if self._down_since else ""
            problems.append(
                Problem(
                    50, f"Redis at {redact_url(self.url)} unreachable{since}: {self._down_reason}"
                )
            )
        if len(self._outbox) > MAX_OUTBOX // 2:
            problems.append(
                Problem(10, f"{len(self._outbox)} write-behind writes waiting for Redis")
            )
        if s.writes_dropped or self._write_errors:
            lost = s.writes_dropped + self._write_errors
            problems.append(Problem(20, f"{lost} writes could not be stored in Redis"))
        if s.junk_messages or s.refused_records:
            problems.append(
                Problem(5, f"{s.junk_messages + s.refused_records} malformed messages or records")
            )
        if abs(self._server_offset) > 1.0:
            problems.append(
                Problem(10, f"clock differs from Redis's by {self._server_offset:+.1f} s")
            )
        peers = tuple(PeerState(p, None, state) for p, state in sorted(self._instances.items()))
        return RuntimeStatistics(
            bytes_sent=s.bytes_sent,
            bytes_received=s.bytes_received,
            frames_sent=s.commands,
            frames_received=s.messages_received,
            connections=int(self._subscribed),
            instances=1 + sum(1 for state in self._instances.values() if state == ALIVE),
            peers=peers,
            problems=tuple(problems),
        )

    def redis_statistics(self) -> RedisStatistics:
        """A copy of the Redis-specific counters."""
        return dataclasses.replace(self.stats)

    # ============================================================= SharedTier
    def check_writable(self) -> None:
        """Raise :class:`PeerError` before a write that could not be kept consistent."""
        if not self._subscribed:
            raise PeerError(
                f"Redis at {redact_url(self.url)} is unreachable ({self._down_reason}); "
                "nothing was written"
            )
        if len(self._outbox) >= MAX_OUTBOX:
            raise PeerError(
                f"{len(self._outbox)} write-behind writes are waiting for Redis (MAX_OUTBOX); "
                "nothing was written"
            )

    async def live(self, key: str) -> bool:
        """Whether Redis holds a live value for ``key`` (for ``delete``'s answer)."""
        record = (await self._read_records([key]))[0]
        return (
            record is not None
            and record.value is not TOMBSTONE
            and not record.expired(self._clock())
            and not self._covered(key, record.ts, record.origin)
        )

    async def keys(self, pattern: str) -> list[str]:
        """Live keys matching the glob, in Redis and in this node's unwritten writes."""
        self._take()
        match = compile_pattern(pattern).match
        view: dict[str, tuple[int, str, bool]] = {}
        now = self._clock()
        async for names in self._scan(_literal_prefix(pattern)):
            chosen = [(n, k) for n, k in names if match(k)]
            if not chosen:
                continue
            rows = await self._eval(STAT, [n for n, _ in chosen], [])
            for (_, key), row in zip(chosen, rows, strict=True):
                try:
                    if row[0] is None:
                        continue
                    ts, origin = parse_stamp(row[0])
                    expires = None if row[1] is None else float(row[1])
                except (InvalidRecord, ValueError, TypeError):
                    self.stats.refused_records += 1
                    continue
                live = bool(row[2]) and (expires is None or expires > now)
                view[key] = (ts, origin, live and not self._covered(key, ts, origin))
        # What this node wrote and Redis does not show yet decides where it is newer.
        local: Iterable[tuple[str, Entry]] = itertools.chain(
            self.engine.replica.entries.items(), self._inflight.items(), self._outbox.items()
        )
        for key, e in local:
            if match(key):
                seen = view.get(key)
                if seen is None or (e.ts, e.origin) > seen[:2]:
                    # A queued write this node's own pattern tombstone covers is gone
                    # (it will never be written), like a record in Redis it covers.
                    live = e.value is not TOMBSTONE and not e.expired(now)
                    view[key] = (e.ts, e.origin, live and not self._covered(key, e.ts, e.origin))
        return sorted(k for k, (_, _, live) in view.items() if live)

    async def size(self) -> int:
        """Live records in Redis, counted by SCAN at most every :data:`SIZE_CACHE` s.

        The count is shared through Redis, so N instances asking cost one SCAN. On a
        Redis failure the last known count is returned.
        """
        now = time.monotonic()
        if self._size is not None and now - self._size[0] < SIZE_CACHE:
            return self._size[1]
        try:
            cached = await self._command("GET", self._size_key)
            if cached is not None:
                count = int(cached)
            else:
                count = await self._count_live()
                await self._command("SET", self._size_key, count, "PX", int(SIZE_CACHE * 1000))
        except (PeerError, ValueError) as exc:
            log.debug("distributed size not refreshed: %s", exc)
            return self._size[1] if self._size is not None else 0
        self._size = (now, count)
        return count

    async def _count_live(self) -> int:
        count = 0
        now = self._clock()
        async for names in self._scan(""):
            rows = await self._eval(STAT, [n for n, _ in names], [])
            for (_, key), row in zip(names, rows, strict=True):
                try:
                    if row[0] is None or not row[2]:
                        continue
                    ts, origin = parse_stamp(row[0])
                    if row[1] is not None and float(row[1]) <= now:
                        continue
                except (InvalidRecord, ValueError, TypeError):
                    continue
                if not self._covered(key, ts, origin):
                    count += 1
        return count

    async def snapshot(self) -> bytes:
        """The cluster's data in Redis (plus this node's unwritten writes) as a snapshot."""
        self._take()
        await self._load_patterns()
        replica = self.engine.replica
        newest = replica.clock.last_ts
        entries: list[tuple[str, Entry]] = []
        async for names in self._scan(""):
            records = await self._read_records([k for _, k in names])
            for (_, key), record in zip(names, records, strict=True):
                if record is not None:
                    entries.append((key, record))
                    newest = max(newest, record.ts)
        entries += [*self._outbox.items(), *self._inflight.items()]
        copy = Replica(
            HybridClock(self.node, last_ts=newest),
            tombstone_grace=replica.tombstone_grace,
        )
        merge_now = ts_seconds(newest)
        for tomb in replica.patterns.values():
            copy.merge_pattern(tomb, max(merge_now, self._clock()))
        for key, record in entries:
            copy.merge_entry(key, record, merge_now, observed=True)
        return encode_snapshot(copy, self._clock())

    async def restore(self, data: bytes) -> list[Change]:
        """Merge a snapshot into Redis (LWW per key: nothing newer is overwritten).

        Returns one change per key the snapshot changed in Redis, and per key of this
        hot tier a restored pattern removed. Raises like :func:`restore_snapshot`, or
        :class:`PeerError` if Redis fails part-way (what was written stays: each
        write is a CRDT merge, so restoring again completes it).
        """
        snap = decode_snapshot(data)
        now = self._clock()
        replica = self.engine.replica
        newest = max([e.ts for _, e in snap.entries] + [p.ts for p in snap.patterns], default=0)
        replica.clock.check(newest, now)
        await self._load_patterns()
        changes: list[Change] = []
        for tomb in snap.patterns:
            changes += replica.merge_pattern(tomb, now)
        entries = [(k, e) for k, e in snap.entries if e.value is not NOT_HELD]
        applied: list[tuple[str, Entry]] = []
        patterns = list(snap.patterns)
        for batch in _batches(entries) if entries else iter([[]]):
            await self._write(batch, patterns, 0, requeue=False, applied=applied)
            patterns = []
        for key, e in applied:
            local = replica.entries.get(key)
            if local is not None:
                self._merge_quietly(key, Entry(NOT_HELD, e.ts, e.origin, e.expires), now)
                self._settle(key)
            changes.append(
                Change(key, "delete" if e.value is TOMBSTONE else "set", e.origin, e.ts, True)
            )
        return changes

    # ========================================================== redis access
    def _unreachable(self, exc: BaseException) -> PeerError:
        self._note_down(str(exc) or type(exc).__name__)
        return PeerError(f"Redis at {redact_url(self.url)} unreachable: {exc}")

    def _note_down(self, reason: str) -> None:
        self._down_reason = reason

    async def _command(self, *args: Any) -> Any:
        client = self._client
        if client is None:
            raise PeerError("redis runtime is not started")
        self.stats.commands += 1
        try:
            # redis-py leaves execute_command unannotated; its answer is Any anyway.
            execute = cast(Callable[..., Awaitable[Any]], client.execute_command)
            async with self._slots:
                return await execute(*args)
        except _UNREACHABLE as exc:
            _reraise_cancellation()
            raise self._unreachable(exc) from exc
        except RedisError as exc:
            _reraise_cancellation()
            raise PeerError(f"Redis at {redact_url(self.url)} refused {args[0]}: {exc}") from exc

    async def _eval(self, script: Script, keys: Sequence[bytes], args: Sequence[Any]) -> Any:
        """Run ``script`` by SHA, falling back to EVAL (which caches it) on NOSCRIPT."""
        try:
            return await self._command("EVALSHA", script.sha, len(keys), *keys, *args)
        except PeerError as exc:
            if not isinstance(exc.__cause__, NoScriptError):
                raise
        self.stats.scripts_loaded += 1
        return await self._command("EVAL", script.source, len(keys), *keys, *args)

    async def _load_scripts(self) -> None:
        for script in (WRITE, PATTERN, CLEAN, CLEANED, STAT, HEARTBEAT):
            await self._command("SCRIPT", "LOAD", script.source)

    async def _pipeline(self, calls: list[tuple[Script, list[bytes], list[Any]]]) -> list[Any]:
        """Run scripts in one pipeline; a NOSCRIPT answer is retried with EVAL.

        Returns one result per call (a ``ResponseError`` for a call Redis refused);
        raises :class:`PeerError` if the connection fails.
        """
        client = self._client
        if client is None:
            raise PeerError("redis runtime is not started")
        self.stats.commands += len(calls)
        await self._slots.acquire()
        try:
            pipe = client.pipeline(transaction=False)
            for script, keys, args in calls:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:  # the server restarted (or flushed its scripts) since start
                self.stats.scripts_loaded += len(missing)
                pipe = client.pipeline(transaction=False)
                for i in missing:
                    script, keys, args = calls[i]
                    pipe.execute_command("EVAL", script.source, len(keys), *keys, *args)
                retried = await pipe.execute(raise_on_error=False)
                for i, result in zip(missing, retried, strict=True):
                    results[i] = result
        except _UNREACHABLE as exc:
            _reraise_cancellation()
            raise self._unreachable(exc) from exc
        except RedisError as exc:
            _reraise_cancellation()
            raise PeerError(f"Redis at {redact_url(self.url)}: {exc}") from exc
        finally:
            self._slots.release()
        return list(results)

    async def _publish(self, channel: bytes, message: bytes) -> None:
        self.stats.bytes_sent += len(message)
        await self._command("PUBLISH", channel, message)

    def _record_key(self, key: str) -> bytes:
        return self._records + key.encode("utf-8", "surrogatepass")

    async def _read_records(self, keys: Sequence[str]) -> list[Entry | None]:
        """The records of ``keys`` in Redis (None: absent or unreadable)."""
        if len(keys) == 1:
            rows = [await self._command("HMGET", self._record_key(keys[0]), "s", "v", "x")]
        else:
            client = self._client
            if client is None:
                raise PeerError("redis runtime is not started")
            self.stats.commands += len(keys)
            try:
                pipe = client.pipeline(transaction=False)
                for key in keys:
                    pipe.execute_command("HMGET", self._record_key(key), "s", "v", "x")
                async with self._slots:
                    rows = await pipe.execute()
            except _UNREACHABLE as exc:
                _reraise_cancellation()
                raise self._unreachable(exc) from exc
            except RedisError as exc:
                _reraise_cancellation()
                raise PeerError(f"Redis at {redact_url(self.url)}: {exc}") from exc
        return [self._record(key, row) for key, row in zip(keys, rows, strict=True)]

    def _record(self, key: str, row: list[Any]) -> Entry | None:
        stamp, blob, expires = row
        if stamp is None:
            return None
        self.stats.bytes_received += len(stamp) + (len(blob) if blob else 0)
        try:
            return record_entry(key, stamp, blob, expires)
        except InvalidRecord as exc:
            # Someone else's data under our prefix, or damage: never served.
            self.stats.refused_records += 1
            log.error("refusing the Redis record of %r: %s", key, exc)
            return None

    async def _scan(self, literal: str) -> AsyncIterator[list[tuple[bytes, str]]]:
        """Pages of ``(record key, cache key)`` whose key starts with ``literal``."""
        match = _glob_escape(self._records.decode()) + _glob_escape(literal) + "*"
        cursor: Any = 0
        start = len(self._records)
        while True:
            cursor, names = await self._command("SCAN", cursor, "MATCH", match, "COUNT", SCAN_COUNT)
            page: list[tuple[bytes, str]] = []
            for name in names:
                try:
                    page.append((name, name[start:].decode("utf-8", "surrogatepass")))
                except UnicodeDecodeError:
                    continue
            if page:
                yield page
            if int(cursor) == 0:
                return

    # ================================================================ writes
    def _take(self) -> None:
        """Move the engine's pending local writes to the outbox."""
        entries, patterns = self.engine.take_pending()
        outbox = self._outbox
        for key, entry in entries:
            outbox[key] = entry
        if patterns:
            self._outbox_patterns.extend(patterns)

    async def _flush_forever(self) -> None:
        """Write-behind: one pipeline per ``sync_interval`` while writes are queued."""
        wanted = self._flush_wanted
        assert wanted is not None
        delay = RECONNECT_MIN
        while True:
            _reraise_cancellation()
            await wanted.wait()
            await asyncio.sleep(self._sync_interval)
            wanted.clear()
            try:
                await self._write_outbox()
                delay = RECONNECT_MIN
            except Exception as exc:  # the flusher must outlive any one failure
                _reraise_cancellation()
                if isinstance(exc, PeerError):
                    log.warning("write-behind batch not written, retry in %.2f s: %s", delay, exc)
                else:
                    log.exception("write-behind batch failed, retry in %.2f s", delay)
                wanted.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)

    async def _write_outbox(self) -> None:
        """Write everything queued, in batches; what fails goes back to the outbox."""
        self._take()
        outbox = self._outbox
        while outbox or self._outbox_patterns:
            batch = next(_batches(list(outbox.items())), [])
            for key, _ in batch:
                del outbox[key]
            patterns, self._outbox_patterns = self._outbox_patterns, []
            await self._write(batch, patterns, 0, requeue=True)

    def _covered(self, key: str, ts: int, origin: str) -> bool:
        """Whether a known pattern tombstone covers a write of ``key`` at ``(ts, origin)``."""
        for tomb in self.engine.replica.patterns.values():
            if (ts, origin) <= (tomb.ts, tomb.origin):
                match = self._matchers.get(tomb.pattern)
                if match is None:
                    match = self._matchers[tomb.pattern] = compile_pattern(tomb.pattern).match
                if match(key):
                    return True
        return False

    def _batch_call(
        self, entries: list[tuple[str, Entry]], ack_id: int, known: str
    ) -> tuple[Script, list[bytes], list[Any]]:
        """The WRITE call for a batch (see :mod:`crdtcache.runtime.redis._scripts`)."""
        replica = self.engine.replica
        head = b"\x94" + msgpack.packb(_WRITES) + msgpack.packb(self.node) + msgpack.packb(ack_id)
        keys = [self._patterns_key]
        args: list[Any] = [known, replica.clock.max_drift_ms, self._inv_channel, head]
        inline_budget = MAX_INLINE_BATCH_BYTES if self._inline else 0
        sent = len(head)
        for key, e in entries:
            at: int | None
            if e.value is TOMBSTONE:
                blob = None
                at = collect_due_ms(e.ts, replica.tombstone_grace)
            else:
                blob = stored_blob(e.value)
                at = None if e.expires is None else math.ceil((e.expires + EXPIRED_GRACE) * 1000)
            inline = None
            if blob is not None and len(blob) <= min(MAX_INLINE_VALUE_BYTES, inline_budget):
                inline = blob  # receivers holding the key update it without a read
                inline_budget -= len(blob)
            part = msgpack.packb(
                [key, e.ts, e.origin, e.expires, e.deleted, inline], use_bin_type=True
            )
            keys.append(self._record_key(key))
            args += [
                stamp_text(e.ts, e.origin),
                blob if blob is not None else b"",
                "1" if blob is None else "0",
                "" if e.expires is None else repr(e.expires),
                "" if at is None else at,
                part,
            ]
            sent += len(part) + (len(blob) if blob is not None else 0)
        self.stats.bytes_sent += sent
        return WRITE, keys, args

    def _pattern_call(
        self, tomb: PatternTombstone, ack_id: int
    ) -> tuple[Script, list[bytes], list[Any]]:
        replica = self.engine.replica
        # A 7-array whose last item, the version, the script appends.
        message = b"\x97" + b"".join(
            msgpack.packb(item, use_bin_type=True)
            for item in (_PATTERN, self.node, ack_id, tomb.pattern, tomb.ts, tomb.origin)
        )
        horizon = collection_horizon(self._clock(), replica.tombstone_grace)
        self.stats.bytes_sent += len(message)
        return (
            PATTERN,
            [self._patterns_key],
            [
                tomb.pattern,
                stamp_text(tomb.ts, tomb.origin),
                replica.clock.max_drift_ms,
                self._inv_channel,
                message,
                stamp_text(max(0, horizon), ""),
            ],
        )

    async def _write(
        self,
        entries: list[tuple[str, Entry]],
        patterns: list[PatternTombstone],
        ack_id: int,
        *,
        requeue: bool,
        applied: list[tuple[str, Entry]] | None = None,
    ) -> int:
        """Write one batch; returns how many writes Redis applied (and announced).

        On a connection failure the batch goes back to the outbox (``requeue``) or is
        dropped from this instance; either way :class:`PeerError` is raised.
        """
        count = 0
        errors: list[str] = []
        for _ in range(RECHECK_ATTEMPTS):
            # Covered writes are gone here already; writing them would only lose.
            entries = [(k, e) for k, e in entries if not self._covered(k, e.ts, e.origin)]
            entries = [(k, e) for k, e in entries if self._encodable(k, e, errors)]
            patterns = [t for t in patterns if self._encodable(t.pattern, None, errors)]
            known = str(self._patterns_version)
            calls = [self._pattern_call(tomb, ack_id) for tomb in patterns]
            if entries:
                try:
                    calls.append(self._batch_call(entries, ack_id, known))
                except (TypeError, ValueError, OverflowError) as exc:  # pragma: no cover
                    raise SerializationError(f"a queued write cannot be encoded: {exc}") from exc
            if not calls:
                break
            for key, e in entries:
                self._inflight[key] = e
            try:
                results = await self._pipeline(calls)
            except (PeerError, asyncio.CancelledError):
                if requeue:
                    self._requeue(entries, patterns)
                else:
                    self._dropped(entries)
                    self._requeue([], patterns)  # an invalidation is safe to retry later
                raise
            finally:
                for key, e in entries:
                    if self._inflight.get(key) is e:
                        del self._inflight[key]
            for tomb, result in zip(patterns, results, strict=False):
                count += self._pattern_result(tomb, result, errors)
            recheck: list[tuple[str, Entry]] = []
            answers: list[Any] = []
            if entries:
                batch = results[len(patterns)]
                # A refused script (OOM, a key of another type) refuses the whole batch.
                answers = [batch] * len(entries) if isinstance(batch, Exception) else batch[:-1]
            for (key, e), result in zip(entries, answers, strict=True):
                outcome = self._entry_result(key, e, result, errors)
                if outcome == 1:
                    count += 1
                    if applied is not None:
                        applied.append((key, e))
                elif outcome == -1:
                    recheck.append((key, e))
            if not recheck:
                break
            # A pattern tombstone this node has not heard of may cover these writes.
            self.stats.writes_rechecked += len(recheck)
            try:
                await self._load_patterns()
            except (PeerError, asyncio.CancelledError):
                if requeue:
                    self._requeue(recheck, [])
                else:
                    self._dropped(recheck)
                raise
            entries, patterns = recheck, []
        else:
            # Still unsure after every attempt (tombstones keep arriving): never guess.
            if requeue:
                self._requeue(entries, [])
            else:
                self._dropped(entries)
                errors.append(f"{len(entries)} writes raced with pattern invalidations")
        if errors and not requeue:
            raise PeerError("Redis refused writes: " + "; ".join(errors[:3]))
        return count

    def _encodable(self, key: str, e: Entry | None, errors: list[str]) -> bool:
        """False (the write is dropped) for a key no message can carry (lone surrogates)."""
        try:
            key.encode()
        except UnicodeEncodeError:
            self._write_errors += 1
            errors.append(f"{key!r}: not encodable as UTF-8")
            log.error("dropping the write of %r: the key is not encodable as UTF-8", key)
            if e is not None:
                self._drop_local(key, e)
            return False
        return True

    def _entry_result(self, key: str, e: Entry, result: Any, errors: list[str]) -> int:
        """Apply one WRITE answer here; 1 applied, 0 not, -1 recheck the patterns."""
        if isinstance(result, Exception):
            self._write_errors += 1
            errors.append(f"{key!r}: {result}")
            log.error("Redis refused the write of %r: %s", key, result)
            self._drop_local(key, e)
            return 0
        code = int(result[0])
        if code == 1:
            self.stats.writes_applied += 1
            self._committed(key, e)
            return 1
        if code == 0:
            try:
                winner = parse_stamp(result[1])
            except InvalidRecord:
                winner = (e.ts, e.origin)
            if winner == (e.ts, e.origin):  # the same write, retried: it is in Redis
                self._committed(key, e)
                return 0
            self.stats.writes_lost += 1
            with contextlib.suppress(ClockDriftError):
                self.engine.replica.clock.observe(winner[0], self._clock())
            local = self.engine.replica.entries.get(key)
            if local is not None and (local.ts, local.origin) < winner:
                self._drop_local(key, local)
            return 0
        if code == -1:
            return -1
        self.engine.stats.refused_drift += 1
        self._write_errors += 1
        errors.append(f"{key!r}: stamp ahead of the Redis server's clock by more than max_drift")
        log.error("Redis refused the write of %r: its stamp is ahead of the server clock", key)
        self._drop_local(key, e)
        return 0

    def _pattern_result(self, tomb: PatternTombstone, result: Any, errors: list[str]) -> int:
        if isinstance(result, Exception):
            self._write_errors += 1
            errors.append(f"pattern {tomb.pattern!r}: {result}")
            log.error("Redis refused the pattern tombstone %r: %s", tomb.pattern, result)
            return 0
        code = int(result[0])
        if code == 1:
            self._pattern_recorded(int(result[2]))
            self._schedule_cleanup(tomb)
            return 1
        if code == -2:
            self.engine.stats.refused_drift += 1
            self._write_errors += 1
            errors.append(f"pattern {tomb.pattern!r}: stamp ahead of the Redis server's clock")
        return 0

    def _requeue(self, entries: list[tuple[str, Entry]], patterns: list[PatternTombstone]) -> None:
        for key, e in entries:
            newer = self._outbox.get(key)
            if newer is None or (newer.ts, newer.origin) < (e.ts, e.origin):
                self._outbox[key] = e
        self._outbox_patterns[:0] = patterns

    def _dropped(self, entries: list[tuple[str, Entry]]) -> None:
        for key, e in entries:
            self._drop_local(key, e)

    def _committed(self, key: str, e: Entry) -> None:
        """Redis holds ``e``: make the hot tier agree (it may hold an older fetch)."""
        replica = self.engine.replica
        local = replica.entries.get(key)
        if local is None:
            return
        if local is not e and (local.ts, local.origin) < (e.ts, e.origin):
            self._merge_quietly(key, e, self._clock())
        self._settle(key)

    # ===================================================== hot-tier upkeep
    def _merge_quietly(self, key: str, entry: Entry, now: float) -> None:
        """Merge without reporting: a fetch or a commit is not a new change."""
        try:
            self.engine.replica.merge_entry(key, entry, now)
        except ClockDriftError as exc:
            self.engine.stats.refused_drift += 1
            log.error("refused the Redis record of %r: %s", key, exc)

    def _settle(self, key: str) -> None:
        """Keep only held values (and stubs a read in flight needs) in the hot tier."""
        entries = self.engine.replica.entries
        e = entries.get(key)
        if e is None:
            return
        if e.held:
            if self._subscribed:
                self._register_hot(key)
            return
        if key not in self._fetching:
            del entries[key]  # a stub or tombstone: Redis has it, nothing to keep here

    def _drop_local(self, key: str, e: Entry) -> None:
        """Drop ``e`` from the hot tier if it is still there (no event: not a change)."""
        replica = self.engine.replica
        if replica.entries.get(key) is not e:
            return
        if e.held:
            replica.evict(key)  # through a stub: an eviction, not a delete, for the tier
        if key not in self._fetching:
            replica.entries.pop(key, None)

    def _drop_if(self, key: str, e: Entry) -> None:
        self._drop_local(key, e)

    def _drop_hot_tier(self) -> None:
        """Forget every local copy: invalidations may have been missed."""
        replica = self.engine.replica
        dropped = 0
        for key, e in list(replica.entries.items()):
            if e.held:
                replica.evict(key)
                dropped += 1
            if key not in self._fetching:
                replica.entries.pop(key, None)
        self._hot.clear()
        if dropped:
            self.stats.hot_tier_drops += 1
            log.info("dropped %d values from the hot tier (pub/sub link lost)", dropped)

    def _register_hot(self, key: str) -> None:
        if self._local_ttl is None or self._loop is None:
            return
        hot = self._hot
        hot.pop(key, None)
        hot[key] = self._loop.time() + self._local_ttl
        if self._hot_timer is None:
            self._hot_timer = self._loop.call_at(hot[key], self._expire_hot)

    def _expire_hot(self) -> None:
        """Evict values held longer than ``local_ttl`` (deadlines are in insertion order)."""
        self._hot_timer = None
        loop = self._loop
        assert loop is not None
        now = loop.time()
        hot = self._hot
        replica = self.engine.replica
        while hot:
            key, deadline = next(iter(hot.items()))
            if deadline > now:
                self._hot_timer = loop.call_at(deadline, self._expire_hot)
                return
            del hot[key]
            e = replica.entries.get(key)
            if e is not None and e.held and key not in self._fetching:
                replica.evict(key)
                replica.entries.pop(key, None)
                if self._on_evict is not None:
                    self._on_evict(key, "ttl")

    async def _tick_forever(self) -> None:
        """Tick the engine for collection (expiry events of held values)."""
        engine = self.engine
        while True:
            _reraise_cancellation()
            delay = min(max(engine.next_deadline() - self._clock(), 0.0), 1.0)
            await asyncio.sleep(delay)
            try:
                self._take()  # the engine's own flush would drop them: no gossip peers
                engine.tick(self._clock())
                changes = engine.drain_changes()
                engine.drain_peer_events()
                if changes and self._on_changes is not None:
                    self._on_changes(changes)
            except Exception:  # a listener's bug must not stop expiry for good
                log.exception("tick failed")

    # ================================================================ pub/sub
    async def _subscription(self) -> None:
        """Keep the subscription up for the runtime's life (module doc, subscription loss)."""
        delay = RECONNECT_MIN
        while True:
            _reraise_cancellation()
            client = self._sub_client
            assert client is not None
            pubsub: Any = client.pubsub()  # redis-py's PubSub is mostly unannotated
            reason = "connection closed"
            try:
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the link: reconnect
                _reraise_cancellation()
                reason = str(exc) or type(exc).__name__
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            if self._subscribed:
                delay = RECONNECT_MIN
            self._lost(reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _listen(self, pubsub: Any) -> None:
        await pubsub.subscribe(self._inv_channel, self._ack_channel)
        waiting = {self._inv_channel, self._ack_channel}
        last_heard = last_ping = time.monotonic()
        confirmed = False
        while True:
            _reraise_cancellation()
            msg = await pubsub.get_message(timeout=self.pubsub_ping_interval)
            now = time.monotonic()
            if msg is None:
                if now - last_heard > self.pubsub_dead_after:
                    raise PeerError("pub/sub link silent")
                if confirmed and now - last_ping >= self.pubsub_ping_interval:
                    last_ping = now
                    await pubsub.ping()
                continue
            last_heard = now
            kind = msg.get("type")
            if kind == "subscribe":
                waiting.discard(msg.get("channel"))
                if not waiting and not confirmed:
                    # Redis has our subscription: every write committed from now on
                    # reaches us, so the tier can be emptied and served again.
                    confirmed = True
                    await self._subscribed_now()
            elif kind == "message":
                self._on_message(msg.get("channel"), msg.get("data"))

    async def _subscribed_now(self) -> None:
        first = self._epoch == 0
        self._epoch += 1
        if not first:
            self.stats.reconnects += 1
            self._drop_hot_tier()
        self._subscribed = True
        try:
            await self._load_patterns()
            await self._heartbeat()
            await self._publish(self._inv_channel, msgpack.packb([_JOIN, self.node]))
        except PeerError:
            self._subscribed = False
            raise
        if self._down_since is not None:
            log.warning(
                "Redis at %s reachable again after %.1f s",
                redact_url(self.url),
                self._clock() - self._down_since,
            )
        self._down_since = None
        self._down_reason = ""
        assert self._ready is not None
        self._ready.set()
        if self._outbox and self._flush_wanted is not None:
            self._flush_wanted.set()

    def _lost(self, reason: str) -> None:
        if self._subscribed:
            log.warning("Redis pub/sub link to %s lost: %s", redact_url(self.url), reason)
        self._subscribed = False
        self._note_down(reason)
        if self._down_since is None:
            self._down_since = self._clock()
        self._drop_hot_tier()
        self._fail_waiters()

    def _fail_waiters(self) -> None:
        # No acknowledgement can arrive without the link: answer the waiters now.
        for waiter in self._waiters.values():
            if not waiter.done.done():
                waiter.done.set_result(None)

    def _on_message(self, channel: object, data: object) -> None:
        self.stats.messages_received += 1
        if type(data) is bytes:
            self.stats.bytes_received += len(data)
        try:
            if channel == self._ack_channel:
                self._on_ack(data)
            else:
                self._on_invalidation(_decode_message(data))
        except (ValueError, InvalidRecord, TypeError) as exc:
            self.stats.junk_messages += 1
            log.warning("dropped a malformed message on %r: %s", channel, exc)
        except Exception:  # a listener's bug must not take the subscription down
            log.exception("handling a Redis message failed")

    def _on_ack(self, data: object) -> None:
        if type(data) is not bytes or len(data) > MAX_MESSAGE_BYTES:
            raise ValueError("not an acknowledgement")
        msg = msgpack.unpackb(data, raw=False, ext_hook=_refuse_ext)
        if type(msg) is not list or len(msg) != 2 or type(msg[1]) is not list:
            raise ValueError("not an acknowledgement")
        sender = check_node(msg[0])
        for ack_id in msg[1]:
            waiter = self._waiters.get(ack_id) if type(ack_id) is int else None
            if waiter is not None:
                waiter.expected.discard(sender)
                if not waiter.expected and not waiter.done.done():
                    waiter.done.set_result(None)

    def _on_invalidation(self, msg: list[Any]) -> None:
        kind, sender = msg[0], msg[1]
        if sender == self.node:
            return
        if kind == _LEAVE:
            self._instance_gone(sender, forget=True)
            return
        self._instance_seen(sender)
        if kind == _JOIN:
            return
        replica = self.engine.replica
        now = self._clock()
        changes: list[Change] = []
        ack = msg[2]
        applied = True
        if kind == _PATTERN:
            _, _, _, pattern, ts, origin, version = msg
            try:
                changes += replica.merge_pattern(PatternTombstone(pattern, ts, origin), now)
                self._pattern_recorded(version)
            except ClockDriftError as exc:
                applied = self._refused(sender, exc)
        else:
            for key, ts, origin, expires, deleted, blob in msg[3]:
                try:
                    self._apply_write(key, ts, origin, expires, deleted, blob, now, changes)
                except ClockDriftError as exc:
                    applied = self._refused(sender, exc)
        if changes and self._on_changes is not None:
            self._on_changes(changes)
        # Not all applied, not acknowledged: a write-through writer names this node.
        if ack and applied:
            self._acks_out.setdefault(sender, []).append(ack)
            if not self._acks_scheduled and self._loop is not None:
                self._acks_scheduled = True
                self._loop.call_soon(self._send_acks)

    def _apply_write(
        self,
        key: str,
        ts: int,
        origin: str,
        expires: float | None,
        deleted: bool,
        blob: bytes | None,
        now: float,
        changes: list[Change],
    ) -> None:
        """Apply one announced write to the hot tier (module doc, invalidation protocol)."""
        replica = self.engine.replica
        replica.clock.observe(ts, now)
        local = replica.entries.get(key)
        if local is not None or key in self._fetching:
            value: object = TOMBSTONE if deleted else NOT_HELD
            if not deleted and blob is not None and local is not None and local.held:
                try:
                    value = blob_stored(blob)  # update in place, no read needed
                except InvalidRecord:
                    value = NOT_HELD
            replica.merge_entry(key, Entry(value, ts, origin, expires), now, observed=True)
            self._settle(key)
        # Every write is announced once, so each is reported once here -- also when a
        # read fetched it before its announcement arrived -- unless this node knows
        # something newer (the write lost) or a pattern tombstone covers it.
        newer_here = local is not None and (local.ts, local.origin) > (ts, origin)
        if not newer_here and not self._covered(key, ts, origin):
            changes.append(Change(key, "delete" if deleted else "set", origin, ts, True))

    def _refused(self, sender: str, exc: ClockDriftError) -> bool:
        self.engine.stats.refused_drift += 1
        log.error("refused an invalidation from %s: %s", sender, exc)
        return False

    def _send_acks(self) -> None:
        # One PUBLISH per writer for every invalidation handled in this loop turn.
        self._acks_scheduled = False
        acks, self._acks_out = self._acks_out, {}
        for writer, ids in acks.items():
            channel = self._prefix + b"ack:" + writer.encode()
            self._spawn(self._publish(channel, msgpack.packb([self.node, ids])))

    def _spawn(self, coro: Any) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_done)

    def _side_done(self, task: asyncio.Task[Any]) -> None:
        self._side_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("Redis call failed: %s", task.exception())

    # ============================================================== patterns
    def _pattern_recorded(self, version: int) -> None:
        """A tombstone of ``version`` is held here: the next in sequence raises ours.

        Out of sequence, one in between is missing here: ours stays, and the next
        WRITE of an old enough stamp makes this node reload them all.
        """
        if version == self._patterns_version + 1:
            self._patterns_version = version

    async def _load_patterns(self) -> list[PatternTombstone]:
        """Merge every pattern tombstone in Redis; returns those not cleaned up yet."""
        raw = await self._command("HGETALL", self._patterns_key)
        if not isinstance(raw, dict):
            raw = dict(zip(raw[::2], raw[1::2], strict=True))
        tombs: list[PatternTombstone] = []
        cleaned: dict[str, tuple[int, str]] = {}
        version = 0
        for field, value in raw.items():
            try:
                name = field.decode("utf-8", "surrogatepass")
                if name.startswith("p:"):
                    tombs.append(PatternTombstone(name[2:], *parse_stamp(value)))
                elif name.startswith("c:"):
                    cleaned[name[2:]] = parse_stamp(value)
                elif name == "#":
                    version = int(value)
            except (InvalidRecord, UnicodeDecodeError, ValueError) as exc:
                self.stats.refused_records += 1
                log.error("refusing a pattern tombstone in Redis: %s", exc)
        replica = self.engine.replica
        now = self._clock()
        changes: list[Change] = []
        for tomb in tombs:
            try:
                changes += replica.merge_pattern(tomb, now)
            except ClockDriftError as exc:
                self.engine.stats.refused_drift += 1
                log.error("refused the pattern tombstone %r: %s", tomb.pattern, exc)
        if changes and self._on_changes is not None:
            self._on_changes(changes)
        # HGETALL is atomic: every tombstone up to this version is merged now. (Not
        # max(): a Redis restarted empty counts again from 0.)
        self._patterns_version = version
        return [t for t in tombs if cleaned.get(t.pattern, (-1, "")) < (t.ts, t.origin)]

    def _schedule_cleanup(self, tomb: PatternTombstone) -> None:
        current = self._cleanups.get(tomb.pattern)
        if current is None or (current.ts, current.origin) < (tomb.ts, tomb.origin):
            self._cleanups[tomb.pattern] = tomb
        if (self._cleaner is None or self._cleaner.done()) and self._loop is not None:
            self._cleaner = self._loop.create_task(self._clean_forever())

    async def _clean_forever(self) -> None:
        while self._cleanups:
            _reraise_cancellation()
            pattern = next(iter(self._cleanups))
            tomb = self._cleanups.pop(pattern)
            try:
                await self._clean(tomb)
            except PeerError as exc:
                # The tombstone stays unclean in Redis; a heartbeat check resumes it.
                log.warning("cleanup of pattern %r stopped: %s", pattern, exc)

    async def _clean(self, tomb: PatternTombstone) -> None:
        """Delete the records ``tomb`` covers (SCAN under the prefix, never KEYS)."""
        match = compile_pattern(tomb.pattern).match
        stamp = stamp_text(tomb.ts, tomb.origin)
        self.stats.cleanups += 1
        async for names in self._scan(_literal_prefix(tomb.pattern)):
            chosen = [n for n, k in names if match(k)]
            if chosen:
                self.stats.records_cleaned += int(await self._eval(CLEAN, chosen, [stamp]))
        await self._eval(CLEANED, [self._patterns_key], [tomb.pattern, stamp])

    async def _resume_cleanups(self) -> None:
        """Run cleanups another instance started but did not finish (it may have died)."""
        unclean = await self._load_patterns()
        horizon = ts_at(self._clock() - self.cleanup_stall)
        stalled = [t for t in unclean if t.ts < horizon]
        if not stalled:
            return
        lock = max(1000, int(self.cleanup_stall * 1000))
        if await self._command("SET", self._lock_key, self.node, "NX", "PX", lock):
            for tomb in stalled:
                self._schedule_cleanup(tomb)

    # ============================================================= instances
    async def _heartbeats(self) -> None:
        beats = 0
        while True:
            _reraise_cancellation()
            await asyncio.sleep(self.heartbeat_interval)
            if not self._subscribed:
                continue  # an instance that cannot hear invalidations is not a member
            try:
                await self._heartbeat()
                beats += 1
                if beats % 10 == 0:
                    await self._resume_cleanups()
            except PeerError as exc:
                log.debug("heartbeat failed: %s", exc)
            now = self._clock()
            for peer, died in list(self._dead_at.items()):
                if now - died > DEAD_LISTED:
                    del self._dead_at[peer]
                    self._instances.pop(peer, None)

    async def _heartbeat(self, *, leave: bool = False) -> None:
        ttl = int(self.heartbeat_ttl * 1000)
        members, version, server_ms = await self._eval(
            HEARTBEAT,
            [self._instance_key, self._instances_key, self._patterns_key],
            [self.node, self._info, ttl, "1" if leave else "0"],
        )
        if leave:
            return
        self._server_offset = self._clock() - server_ms / 1000.0
        live: set[str] = set()
        for member in members:
            with contextlib.suppress(UnicodeDecodeError, InvalidRecord):
                live.add(check_node(member.decode()))
        live.discard(self.node)
        for peer in live:
            self._instance_seen(peer)
        for peer, state in list(self._instances.items()):
            if state == ALIVE and peer not in live:
                self._instance_gone(peer)
        if version is not None and int(version) != self._patterns_version:
            await self._load_patterns()  # a pattern announcement was missed

    def _live_instances(self) -> set[str]:
        return {p for p, state in self._instances.items() if state == ALIVE}

    def _instance_seen(self, peer: str) -> None:
        previous = self._instances.get(peer)
        if previous == ALIVE:
            return
        self._instances[peer] = ALIVE
        self._dead_at.pop(peer, None)
        if self._on_peer is not None:
            self._on_peer(PeerEvent(peer, ALIVE, previous))

    def _instance_gone(self, peer: str, *, forget: bool = False) -> None:
        """``peer`` stopped: forgotten if it said goodbye, else listed dead for a while."""
        previous = self._instances.get(peer)
        if previous != ALIVE:
            return
        if forget:
            del self._instances[peer]
        else:
            self._instances[peer] = DEAD
            self._dead_at[peer] = self._clock()
        for waiter in self._waiters.values():
            waiter.expected.discard(peer)
            if not waiter.expected and not waiter.done.done():
                waiter.done.set_result(None)
        if self._on_peer is not None:
            self._on_peer(PeerEvent(peer, DEAD, previous))
