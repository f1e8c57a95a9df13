"""Redis mode's commands: redis-py, scripts, pipelines, SCAN, pub/sub. No decisions.

:class:`Commands` owns the clients of one runtime -- a pool for commands and a
connection for the subscription -- and says nothing about what the answers mean (that
is :mod:`._protocol`'s job). Every failure leaves here as :class:`PeerError`, translated
once by :meth:`Commands.mapped` (httpcore's ``map_exceptions``): a connection error,
a timeout, an ``OSError`` or a cluster that is reshaping itself (CLUSTERDOWN, TRYAGAIN,
a slot no node serves, READONLY from a demoted primary) reads "unreachable" and is
also reported to the ``on_unreachable`` listener; anything else Redis refused reads
"refused". Inside a pipeline, a call Redis refused comes back as a :class:`PeerError`
*value* in its place, so one refused write does not hide the answers to the others.

Scripts run by SHA (EVALSHA); a server that does not know one (restarted, promoted
from replica: scripts are not replicated, or its scripts flushed) answers NOSCRIPT,
and the call is sent again with the source (EVAL, which caches it). A cancellation
can be lost inside redis-py (see :func:`reraise_cancellation`), so the map re-raises
it before translating anything.

*Topologies* (:mod:`._topology` parses the URL). One server: a pooled client and a
subscriber client. **Sentinel**: both clients come from the sentinels
(``master_for``): every new connection asks them where the primary is, so after a
failover the next connection reaches the promoted replica. **Redis Cluster**:
commands go through redis-py's cluster client, which routes by key and follows
MOVED and failovers; every key of a cache cluster carries the hash tag ``{C}``, so
all of them, its scripts and its channels live in one slot, on one shard. The
subscription is a plain connection to the primary that owns that slot, subscribed
with ``SSUBSCRIBE`` (sharded pub/sub; the scripts ``SPUBLISH``, see
:func:`~._scripts.sharded`): the invalidations of one cache cluster then stay on its
shard instead of being broadcast over the whole Redis Cluster's bus, and the
subscriber sees the failover of that primary as a lost link (the hot tier is then
dropped, see :mod:`._protocol`). Each new subscription refreshes the slot map first.
SCAN runs on the slot's owner only (the other shards hold none of the keys). In a
cluster a server answers ``sunsubscribe`` when it stops owning the slot: that too
is a lost link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from crdtcache._errors import PeerError
from crdtcache.runtime.redis._messages import Call
from crdtcache.runtime.redis._scripts import Script, sharded
from crdtcache.runtime.redis._topology import (
    CLUSTER,
    SENTINEL,
    RedisTarget,
    parse_redis_url,
    redact_url,
)

__all__ = [
    "COMMAND_TIMEOUT",
    "CONNECT_TIMEOUT",
    "MAX_CONNECTIONS",
    "RECONNECT_MAX",
    "RECONNECT_MIN",
    "SCAN_COUNT",
    "CommandCounters",
    "Commands",
    "Subscription",
    "redact_url",
    "reraise_cancellation",
]

log = logging.getLogger(__name__)

#: Connections to Redis for commands (a burst of misses waits for a free one).
MAX_CONNECTIONS: Final = 32
#: Seconds to connect, and to wait for one command's answer.
CONNECT_TIMEOUT: Final = 2.0
COMMAND_TIMEOUT: Final = 5.0
#: Keys per SCAN step (a hint to Redis).
SCAN_COUNT: Final = 1000
#: Reconnection delays (doubling) after the pub/sub link or a write batch failed.
RECONNECT_MIN: Final = 0.05
RECONNECT_MAX: Final = 2.0

# What "unreachable" means (module doc): the server, or the slot's owner, is not
# there right now; retrying later may succeed.
_UNREACHABLE: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    TimeoutError,
    ClusterDownError,
    TryAgainError,
    ReadOnlyError,
    RedisClusterException,  # not a RedisError: a slot no node serves, no node answering
)


def reraise_cancellation() -> None:
    """Raise CancelledError if the running task is being cancelled.

    A cancellation can be lost inside redis-py: its blocking pool waits with
    ``asyncio.wait_for``, which on Python 3.11 swallows a cancel that arrives as the
    wait completes, and a cancel landing mid-command can surface as a connection
    error. The task still counts as cancelling, so the runtime's loops check here at
    every turn and the exception map after every failure, instead of retrying forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _glob_escape(text: bytes) -> bytes:
    # Redis MATCH patterns treat these as special; a backslash makes them literal.
    return b"".join(b"\\" + bytes([c]) if c in b"\\*?[]" else bytes([c]) for c in text)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _traffic(args: Sequence[Any]) -> int:
    return sum(len(a) for a in args if type(a) is bytes)


@dataclass(slots=True)
class CommandCounters:
    """Traffic to and from Redis since start."""

    commands: int = 0
    scripts_loaded: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_received: int = 0


class Commands:
    """The Redis clients of one runtime (see module doc)."""

    def __init__(
        self, url: str, *, client_name: str, on_unreachable: Callable[[str], None]
    ) -> None:
        self.url = url
        #: How messages name the server (no password).
        self.where = f"Redis at {redact_url(url)}"
        self.counters = CommandCounters()
        #: What the URL names (set by :meth:`connect`).
        self.target: RedisTarget | None = None
        self._client_name = client_name
        self._on_unreachable = on_unreachable
        self._client: Any = None  # aioredis.Redis or RedisCluster
        self._sub_client: aioredis.Redis | None = None
        self._sentinel: Sentinel | None = None
        self._node_options: dict[str, Any] = {}
        self._variants: dict[str, Script] = {}
        self._subscriptions = 0
        # Commands in flight, at most one per pooled connection (a burst of misses
        # waits here rather than failing with "too many connections").
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    @property
    def clustered(self) -> bool:
        """Whether the target is a Redis Cluster (sharded pub/sub, SCAN on one node)."""
        return self.target is not None and self.target.kind == CLUSTER

    @property
    def wait_replicas(self) -> int:
        """Replicas write-through waits for (the URL's ``wait_replicas``, 0: none)."""
        return self.target.wait_replicas if self.target is not None else 0

    def connect(self) -> None:
        """Build the clients (no IO yet); :class:`PeerError` for a URL redis-py refuses."""
        common: dict[str, Any] = {
            "socket_timeout": COMMAND_TIMEOUT,
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "protocol": 2,
            "client_name": self._client_name,
        }
        try:
            target = self.target = parse_redis_url(self.url)
            if target.kind == CLUSTER:
                self._connect_cluster(target, common)
            elif target.kind == SENTINEL:
                self._connect_sentinel(target, common)
            else:
                # One immediate retry: a pooled connection found dead after a Redis
                # restart is replaced at once instead of failing the command that found
                # it. The pool's bound is kept by self._slots: redis-py's blocking pool
                # would do it too, at about 15 us per command.
                pool = aioredis.ConnectionPool.from_url(
                    target.url,
                    max_connections=MAX_CONNECTIONS,
                    retry=Retry(NoBackoff(), 1),
                    **common,
                )
                self._client = aioredis.Redis(connection_pool=pool)
                # The subscriber must see every disconnection (the runtime then drops
                # the hot tier), so its client never reconnects behind our back.
                self._sub_client = aioredis.Redis.from_url(
                    target.url, retry=Retry(NoBackoff(), 0), **common
                )
        except (ValueError, TypeError, RedisError, RedisClusterException) as exc:
            raise PeerError(f"redis_url {redact_url(self.url)!r}: {exc}") from exc

    def _options(self, target: RedisTarget, common: dict[str, Any]) -> dict[str, Any]:
        """Connection options of the data nodes, as redis-py reads a URL."""
        options: dict[str, Any] = dict(parse_url(target.node_url()))
        for name in ("host", "port", "path"):
            options.pop(name, None)
        if options.pop("connection_class", None) is SSLConnection:
            options["ssl"] = True
        return {**options, **common}

    def _connect_cluster(self, target: RedisTarget, common: dict[str, Any]) -> None:
        options = self._options(target, common)
        options.pop("db", None)  # a cluster has only database 0 (the URL says 0)
        self._node_options = options
        self._client = RedisCluster(
            startup_nodes=[ClusterNode(e.host, e.port) for e in target.hosts],
            max_connections=MAX_CONNECTIONS,
            **options,
        )

    def _connect_sentinel(self, target: RedisTarget, common: dict[str, Any]) -> None:
        options = self._options(target, common)
        db = options.pop("db", target.db)
        asking: dict[str, Any] = {
            "socket_timeout": COMMAND_TIMEOUT,
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "protocol": 2,
        }
        if target.sentinel_username:
            asking["username"] = target.sentinel_username
        if target.sentinel_password:
            asking["password"] = target.sentinel_password
        if target.tls:
            asking["ssl"] = True
        self._sentinel = sentinel = Sentinel(  # type: ignore[no-untyped-call]  # untyped in redis-py
            [(e.host, e.port) for e in target.hosts], sentinel_kwargs=asking, **options
        )
        service = target.service
        assert service is not None  # the parser refuses a sentinel URL without one
        self._client = sentinel.master_for(
            service, db=db, max_connections=MAX_CONNECTIONS, retry=Retry(NoBackoff(), 1)
        )
        self._sub_client = sentinel.master_for(service, db=db, retry=Retry(NoBackoff(), 0))

    async def close(self) -> None:
        """Close every client and its connections (errors are of no interest now)."""
        clients: list[Any] = [self._sub_client, self._client]
        if self._sentinel is not None:
            clients += self._sentinel.sentinels
        for client in clients:
            if client is None:
                continue
            with contextlib.suppress(RedisError, RedisClusterException, OSError):
                if isinstance(client, RedisCluster):
                    await client.aclose()
                else:
                    await client.aclose(close_connection_pool=True)

    @contextlib.contextmanager
    def mapped(self, what: str) -> Iterator[None]:
        """The one exception map of this seam (module doc)."""
        try:
            yield
        except _UNREACHABLE as exc:
            reraise_cancellation()
            self._on_unreachable(_reason(exc))
            raise PeerError(f"{self.where} unreachable: {exc}") from exc
        except RedisError as exc:
            reraise_cancellation()
            raise PeerError(f"{self.where} refused {what}: {exc}") from exc

    def _pool(self) -> Any:
        if self._client is None:
            raise PeerError("redis runtime is not started")
        return self._client

    def _script(self, script: Script) -> Script:
        """``script`` as this topology runs it (a cluster's publishes are sharded)."""
        if not self.clustered:
            return script
        variant = self._variants.get(script.sha)
        if variant is None:
            variant = self._variants[script.sha] = sharded(script)
        return variant

    async def command(self, *args: Any) -> Any:
        """Run one command; its answer as redis-py gives it."""
        with self.mapped(str(args[0])):
            return await self._execute(args)

    async def _execute(self, args: Sequence[Any], **options: Any) -> Any:
        client = self._pool()
        self.counters.commands += 1
        self.counters.bytes_sent += _traffic(args)
        # redis-py leaves execute_command unannotated; its answer is Any anyway.
        execute = cast(Callable[..., Awaitable[Any]], client.execute_command)
        async with self._slots:
            return await execute(*args, **options)

    async def eval(self, script: Script, keys: Sequence[bytes], args: Sequence[Any]) -> Any:
        """Run ``script`` by SHA, falling back to EVAL (which caches it) on NOSCRIPT."""
        script = self._script(script)
        with self.mapped(script.name):
            try:
                return await self._execute(("EVALSHA", script.sha, len(keys), *keys, *args))
            except NoScriptError:
                pass
            self.counters.scripts_loaded += 1
            return await self._execute(("EVAL", script.source, len(keys), *keys, *args))

    async def load_scripts(self, scripts: Sequence[Script]) -> None:
        """Cache ``scripts`` in the server (EVALSHA then finds them).

        In a cluster, on every primary (``SCRIPT LOAD`` names no key for redis-py to
        route by); a replica promoted later answers NOSCRIPT once, see :meth:`eval`.
        """
        client = self._pool()
        with self.mapped("SCRIPT LOAD"):
            for script in scripts:
                self.counters.commands += 1
                await client.script_load(self._script(script).source)

    async def pipeline(self, calls: Sequence[Call]) -> list[Any]:
        """Run script calls in one pipeline; a NOSCRIPT answer is retried with EVAL.

        Returns one answer per call, a :class:`PeerError` value for a call Redis
        refused; raises :class:`PeerError` if the connection fails.
        """
        results, _ = await self.pipeline_replicated(calls, 0, 0)
        return results

    async def pipeline_replicated(
        self, calls: Sequence[Call], replicas: int, wait_ms: int
    ) -> tuple[list[Any], int]:
        """:meth:`pipeline`, then with ``replicas`` > 0 ``WAIT replicas wait_ms`` on the
        same connection: returns the answers and how many replicas confirmed having
        every write of the pipeline (``replicas`` when none was asked for).

        ``WAIT`` cannot run inside a script, and covers the writes of the connection
        it is sent on: so it ends each pipeline (the NOSCRIPT retry is a second one).
        """
        client = self._pool()
        c = self.counters
        c.commands += len(calls)
        confirmed = replicas
        target: dict[str, Any] = {}
        async with self._slots:
            with self.mapped("a pipeline"):
                if replicas and self.clustered and calls:
                    # WAIT names no key: send it to the node the scripts went to.
                    await client.initialize()
                    target["target_nodes"] = client.get_node_from_key(calls[0][1][0])
                pipe = client.pipeline(transaction=False)
                for script, keys, args in calls:
                    script = self._script(script)
                    c.bytes_sent += _traffic(keys) + _traffic(args)
                    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                if replicas:
                    pipe.execute_command("WAIT", replicas, wait_ms, **target)
                results = await pipe.execute(raise_on_error=False)
                if replicas:
                    confirmed = min(confirmed, self._confirmed(results.pop()))
                self._raise_unreachable(results)
                missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                if missing:  # the server restarted (or flushed its scripts) since start
                    c.scripts_loaded += len(missing)
                    pipe = client.pipeline(transaction=False)
                    for i in missing:
                        script, keys, args = calls[i]
                        source = self._script(script).source
                        pipe.execute_command("EVAL", source, len(keys), *keys, *args)
                    if replicas:
                        pipe.execute_command("WAIT", replicas, wait_ms, **target)
                    retried = await pipe.execute(raise_on_error=False)
                    if replicas:
                        confirmed = min(confirmed, self._confirmed(retried.pop()))
                    self._raise_unreachable(retried)
                    for i, result in zip(missing, retried, strict=True):
                        results[i] = result
        return [self._refusal(r) if isinstance(r, RedisError) else r for r in results], confirmed

    @staticmethod
    def _raise_unreachable(results: list[Any]) -> None:
        # A pipeline that lost its connection (a cluster's failover may report it per
        # call) failed as a whole: its writes go back to the outbox, never "refused".
        for result in results:
            if isinstance(result, _UNREACHABLE):
                raise result

    def _confirmed(self, answer: Any) -> int:
        if isinstance(answer, BaseException):
            self._raise_unreachable([answer])
            log.warning("WAIT failed: %s", answer)
            return 0
        return int(answer)

    def _refusal(self, exc: RedisError) -> PeerError:
        refused = PeerError(f"{self.where}: {exc}")
        refused.__cause__ = exc
        return refused

    async def read_rows(self, names: Sequence[bytes]) -> list[list[Any]]:
        """The ``s v x`` fields of each record (HMGET; None where a field is absent)."""
        if len(names) == 1:
            rows = [await self.command("HMGET", names[0], "s", "v", "x")]
        else:
            client = self._pool()
            self.counters.commands += len(names)
            with self.mapped("HMGET"):
                pipe = client.pipeline(transaction=False)
                for name in names:
                    pipe.execute_command("HMGET", name, "s", "v", "x")
                async with self._slots:
                    rows = await pipe.execute()
        self.counters.bytes_received += sum(_traffic(row) for row in rows)
        return rows

    async def scan(self, prefix: bytes) -> AsyncIterator[list[bytes]]:
        """Pages of the names of keys starting with ``prefix`` (SCAN, never KEYS).

        In a cluster only the node owning the prefix's slot is scanned (module doc);
        should that owner change between two pages (a failover), the cursor means
        nothing on the new one, and :class:`PeerError` says so rather than miss keys.
        """
        match = _glob_escape(prefix) + b"*"
        options: dict[str, Any] = {}
        owner: str | None = None
        if self.clustered:
            client = self._pool()
            with self.mapped("SCAN"):
                await client.initialize()
                node = client.get_node_from_key(prefix)
            options["target_nodes"], owner = node, node.name
        cursor: Any = 0
        while True:
            with self.mapped("SCAN"):
                answer = await self._execute(
                    ("SCAN", cursor, "MATCH", match, "COUNT", SCAN_COUNT), **options
                )
            cursor, names = answer
            if owner is not None:  # a cluster answers {node name: cursor}
                if set(cursor) != {owner}:
                    raise PeerError(f"{self.where}: the slot moved during SCAN; try again")
                cursor = cursor[owner]
            if names:
                yield list(names)
            if int(cursor) == 0:
                return

    async def publish(self, channel: bytes, message: bytes) -> None:
        """Send ``message`` to whoever subscribes to ``channel``."""
        await self.command("SPUBLISH" if self.clustered else "PUBLISH", channel, message)

    def subscription(self) -> Subscription:
        """A new subscription (one connection; it connects on :meth:`Subscription.subscribe`)."""
        if self._client is None:
            raise PeerError("redis runtime is not started")
        return Subscription(self)

    async def _open_pubsub(self, channel: bytes) -> tuple[Any, aioredis.Redis | None]:
        """A pub/sub object for ``channel``, and a client to close with it (cluster)."""
        self._subscriptions += 1
        if not self.clustered:
            assert self._sub_client is not None
            return self._sub_client.pubsub(), None
        client = self._pool()
        if self._subscriptions > 1:
            # The link was lost: perhaps its node failed over. Ask the cluster again.
            await client.nodes_manager.initialize()
        else:
            await client.initialize()
        node = client.get_node_from_key(channel)
        owner = aioredis.Redis(
            host=node.host, port=node.port, retry=Retry(NoBackoff(), 0), **self._node_options
        )
        return owner.pubsub(), owner


class Subscription:
    """One pub/sub connection, its errors mapped like every command's."""

    def __init__(self, commands: Commands) -> None:
        self._commands = commands
        self._pubsub: Any = None  # redis-py's PubSub is mostly unannotated
        self._owner: aioredis.Redis | None = None

    async def subscribe(self, *channels: bytes) -> None:
        """Connect and ask for ``channels``; each is confirmed by a ``subscribe`` message.

        In a cluster the channels must share one slot (they carry the ``{C}`` tag).
        """
        commands = self._commands
        with commands.mapped("SUBSCRIBE"):
            self._pubsub, self._owner = await commands._open_pubsub(channels[0])
            if commands.clustered:
                await self._pubsub.ssubscribe(*channels)
            else:
                await self._pubsub.subscribe(*channels)

    async def next(self, timeout: float) -> tuple[str, object, object] | None:
        """``(type, channel, data)`` of the next message, or None after ``timeout``.

        Sharded kinds read like the classic ones (``smessage`` as ``message``,
        ``ssubscribe`` as ``subscribe``); a server ending the subscription by itself
        (``sunsubscribe``: it no longer owns the slot) raises :class:`PeerError`.
        """
        with self._commands.mapped("a subscription"):
            msg = await self._pubsub.get_message(timeout=timeout)
        if msg is None:
            return None
        data = msg.get("data")
        kind = msg.get("type")
        if kind == "smessage":
            kind = "message"
        elif kind == "ssubscribe":
            kind = "subscribe"
        elif kind in ("sunsubscribe", "unsubscribe"):
            raise PeerError(f"{self._commands.where}: the server ended the subscription")
        if kind == "message":
            counters = self._commands.counters
            counters.messages_received += 1
            counters.bytes_received += len(data) if type(data) is bytes else 0
        return kind, msg.get("channel"), data

    async def ping(self) -> None:
        """Check the quiet link (the answer arrives as a message)."""
        with self._commands.mapped("PING"):
            await self._pubsub.ping()

    async def close(self) -> None:
        """Close the connection (errors are of no interest now)."""
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        if self._owner is not None:
            with contextlib.suppress(Exception):
                await self._owner.aclose(close_connection_pool=True)
