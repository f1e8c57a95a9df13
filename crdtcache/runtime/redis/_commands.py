"""Redis mode's commands: redis-py, scripts, pipelines, SCAN, pub/sub. No decisions.

:class:`Commands` owns the two clients of one runtime -- a pool for commands and a
client for the subscription -- and says nothing about what the answers mean (that is
:mod:`._protocol`'s job). Every failure leaves here as :class:`PeerError`, translated
once by :meth:`Commands.mapped` (httpcore's ``map_exceptions``): a connection error,
a timeout or an ``OSError`` reads "unreachable" and is also reported to the
``on_unreachable`` listener; anything else Redis refused reads "refused". Inside a
pipeline, a call Redis refused comes back as a :class:`PeerError` *value* in its
place, so one refused write does not hide the answers to the others.

Scripts run by SHA (EVALSHA); a server that does not know one (restarted, or its
scripts flushed) answers NOSCRIPT, and the call is sent again with the source (EVAL,
which caches it). A cancellation can be lost inside redis-py (see
:func:`reraise_cancellation`), so the map re-raises it before translating anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from crdtcache._errors import PeerError
from crdtcache.runtime.redis._messages import Call
from crdtcache.runtime.redis._scripts import Script

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
        self._client_name = client_name
        self._on_unreachable = on_unreachable
        self._client: aioredis.Redis | None = None
        self._sub_client: aioredis.Redis | None = None
        # Commands in flight, at most one per pooled connection (a burst of misses
        # waits here rather than failing with "too many connections").
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    def connect(self) -> None:
        """Build the clients (no IO yet); :class:`PeerError` for a URL redis-py refuses."""
        common: dict[str, Any] = {
            "socket_timeout": COMMAND_TIMEOUT,
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "protocol": 2,
            "client_name": self._client_name,
        }
        try:
            # One immediate retry: a pooled connection found dead after a Redis restart
            # is replaced at once instead of failing the command that found it. The
            # pool's bound is kept by self._slots: redis-py's blocking pool would do
            # it too, at about 15 us per command.
            pool = aioredis.ConnectionPool.from_url(
                self.url, max_connections=MAX_CONNECTIONS, retry=Retry(NoBackoff(), 1), **common
            )
            self._client = aioredis.Redis(connection_pool=pool)
            # The subscriber must see every disconnection (the runtime then drops the
            # hot tier), so its client never reconnects behind our back.
            self._sub_client = aioredis.Redis.from_url(
                self.url, retry=Retry(NoBackoff(), 0), **common
            )
        except (ValueError, RedisError) as exc:
            raise PeerError(f"redis_url {redact_url(self.url)!r}: {exc}") from exc

    async def close(self) -> None:
        """Close both clients and their connections (errors are of no interest now)."""
        for client in (self._sub_client, self._client):
            if client is not None:
                with contextlib.suppress(RedisError, OSError):
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

    def _pool(self) -> aioredis.Redis:
        if self._client is None:
            raise PeerError("redis runtime is not started")
        return self._client

    async def command(self, *args: Any) -> Any:
        """Run one command; its answer as redis-py gives it."""
        with self.mapped(str(args[0])):
            return await self._execute(args)

    async def _execute(self, args: Sequence[Any]) -> Any:
        client = self._pool()
        self.counters.commands += 1
        self.counters.bytes_sent += _traffic(args)
        # redis-py leaves execute_command unannotated; its answer is Any anyway.
        execute = cast(Callable[..., Awaitable[Any]], client.execute_command)
        async with self._slots:
            return await execute(*args)

    async def eval(self, script: Script, keys: Sequence[bytes], args: Sequence[Any]) -> Any:
        """Run ``script`` by SHA, falling back to EVAL (which caches it) on NOSCRIPT."""
        with self.mapped(script.name):
            try:
                return await self._execute(("EVALSHA", script.sha, len(keys), *keys, *args))
            except NoScriptError:
                pass
            self.counters.scripts_loaded += 1
            return await self._execute(("EVAL", script.source, len(keys), *keys, *args))

    async def load_scripts(self, scripts: Sequence[Script]) -> None:
        """Cache ``scripts`` in the server (EVALSHA then finds them)."""
        for script in scripts:
            await self.command("SCRIPT", "LOAD", script.source)

    async def pipeline(self, calls: Sequence[Call]) -> list[Any]:
        """Run script calls in one pipeline; a NOSCRIPT answer is retried with EVAL.

        Returns one answer per call, a :class:`PeerError` value for a call Redis
        refused; raises :class:`PeerError` if the connection fails.
        """
        client = self._pool()
        c = self.counters
        c.commands += len(calls)
        async with self._slots:
            with self.mapped("a pipeline"):
                pipe = client.pipeline(transaction=False)
                for script, keys, args in calls:
                    c.bytes_sent += _traffic(keys) + _traffic(args)
                    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                results = await pipe.execute(raise_on_error=False)
                missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                if missing:  # the server restarted (or flushed its scripts) since start
                    c.scripts_loaded += len(missing)
                    pipe = client.pipeline(transaction=False)
                    for i in missing:
                        script, keys, args = calls[i]
                        pipe.execute_command("EVAL", script.source, len(keys), *keys, *args)
                    retried = await pipe.execute(raise_on_error=False)
                    for i, result in zip(missing, retried, strict=True):
                        results[i] = result
        return [self._refusal(r) if isinstance(r, RedisError) else r for r in results]

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
        """Pages of the names of keys starting with ``prefix`` (SCAN, never KEYS)."""
        match = _glob_escape(prefix) + b"*"
        cursor: Any = 0
        while True:
            cursor, names = await self.command("SCAN", cursor, "MATCH", match, "COUNT", SCAN_COUNT)
            if names:
                yield list(names)
            if int(cursor) == 0:
                return

    async def publish(self, channel: bytes, message: bytes) -> None:
        """Send ``message`` to whoever subscribes to ``channel``."""
        await self.command("PUBLISH", channel, message)

    def subscription(self) -> Subscription:
        """A new subscription on the subscriber client (one per connection)."""
        if self._sub_client is None:
            raise PeerError("redis runtime is not started")
        return Subscription(self, self._sub_client.pubsub())


class Subscription:
    """One pub/sub connection, its errors mapped like every command's."""

    def __init__(self, commands: Commands, pubsub: Any) -> None:
        self._commands = commands
        self._pubsub = pubsub  # redis-py's PubSub is mostly unannotated

    async def subscribe(self, *channels: bytes) -> None:
        """Ask for ``channels``; each is confirmed by a ``subscribe`` message."""
        with self._commands.mapped("SUBSCRIBE"):
            await self._pubsub.subscribe(*channels)

    async def next(self, timeout: float) -> tuple[str, object, object] | None:
        """``(type, channel, data)`` of the next message, or None after ``timeout``."""
        with self._commands.mapped("a subscription"):
            msg = await self._pubsub.get_message(timeout=timeout)
        if msg is None:
            return None
        data = msg.get("data")
        if msg.get("type") == "message":
            counters = self._commands.counters
            counters.messages_received += 1
            counters.bytes_received += len(data) if type(data) is bytes else 0
        return msg.get("type"), msg.get("channel"), data

    async def ping(self) -> None:
        """Check the quiet link (the answer arrives as a message)."""
        with self._commands.mapped("PING"):
            await self._pubsub.ping()

    async def close(self) -> None:
        """Close the connection (errors are of no interest now)."""
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()
