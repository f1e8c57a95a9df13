"""The cache: the public API over one replica, its local tier and a runtime.

Theory of operation
-------------------
A :class:`Cache` is built from :class:`~crdtcache.cache._options.CacheOptions`; at
start the composition root (:mod:`._compose`) opens the store, builds the
:class:`Replica`, the :class:`GossipEngine` and the runtime for the backend, and the
cache talks to them without asking which backend it is. Everything that touches the
replica runs in the event loop that started the cache, with one exception:
:meth:`_read`, the local-hit path, which ``SyncCache`` calls from its callers'
threads (see :mod:`crdtcache.cache._sync` for why that is safe).

*Writes.* A write validates the key, the TTL and the value (schema first, then the
stored form) before anything is applied, applies locally, enforces the tier's bounds,
then replicates by strategy: write-behind wakes the runtime (sent at once when idle,
batched under load, within ``sync_interval``), write-through waits for every live
peer's ack and raises :class:`PeerError` naming the ones that did not answer in time
(the write stays applied here and reaches them by anti-entropy), on-demand ships only
stamps. Every visible change is reported by the :class:`~._reporting.Reporter`.

*Reads.* A hit reads the entry and hands out a fresh copy (no aliasing): decoded, or
for a flat list or dict a shallow copy of a decoded original (``core.FlatReads``). A key this
node knows only as a stub (evicted here, or on-demand) is read from the store file or
fetched from whoever holds it; a key with no entry at all is absent cluster-wide unless
the runtime ``answers_misses`` (redis), so a p2p miss costs no network round trip.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from crdtcache._errors import CacheError, PeerError, SerializationError, ValidationError
from crdtcache.cache._admin import serve_admin
from crdtcache.cache._compose import Parts, assemble, choose_node_id
from crdtcache.cache._events import CacheEvent
from crdtcache.cache._health import assess
from crdtcache.cache._options import CacheOptions, check_ttl, takes_options
from crdtcache.cache._refresh import Refresher, maybe_await, rule_handler
from crdtcache.cache._reporting import Callback, Reporter
from crdtcache.cache._schema import ValueCodec
from crdtcache.cache._services import Service, prepare_services
from crdtcache.cache._statistics import CacheStatistics, Counters, Health
from crdtcache.cache._tier import LocalTier
from crdtcache.core import (
    MAX_KEY_CHARS,
    NOT_HELD,
    TOMBSTONE,
    Change,
    Entry,
    GossipEngine,
    Packed,
    PeerEvent,
    Replica,
    check_key,
)
from crdtcache.core._counter import Counter, CounterError
from crdtcache.core._entry import Expiries
from crdtcache.core._values import FlatReads
from crdtcache.runtime._protocol import Runtime
from crdtcache.store._persistence import Persistence

if TYPE_CHECKING:
    from crdtcache.cache._view import CacheView

__all__ = ["ABSENT", "Cache"]

log = logging.getLogger(__name__)


class _Absent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


#: What :meth:`Cache._read` returns when the local tier cannot answer.
ABSENT: Final = _Absent()

_NEW, _RUNNING, _CLOSED = "new", "running", "closed"


class Cache:
    """A replicated cache node. Use as ``async with Cache(...) as cache:``.

    Options are keyword arguments, each defined once in
    :class:`~crdtcache.cache.CacheOptions` (with its type and default);
    :class:`ConfigError` at construction for an invalid one:

    * ``backend``: ``"memory"`` (one process), ``"p2p"`` (peers over TCP) or
      ``"redis"`` (a shared Redis at ``redis_url``, this node's tier a hot cache in
      front of it; see :mod:`crdtcache.runtime.redis`).
    * ``node_id``: this node's id; random unless given, and with ``persist_path`` the
      id stored in the file. ``cluster``: name that isolates groups on one network.
    * ``listen`` (``host:port`` for peer traffic), ``discovery`` (``"mdns"``,
      ``"static"``, ``"none"``), ``seeds`` (``host:port`` to dial), ``secret`` and
      ``ssl`` (cluster authentication, TLS): the p2p transport's options.
    * ``persist_path``: SQLite file that keeps the replica across restarts.
    * ``max_size`` / ``max_memory``: bounds of the values held here (count / bytes of
      key and stored value); eviction is local, a peer may serve the value again.
    * ``default_ttl``: seconds a value lives when ``set`` gives no ``ttl``.
    * ``sync_strategy``: ``"write-behind"`` (sent within ``sync_interval`` s),
      ``"write-through"`` (``set`` waits for every live peer, ``write_timeout``) or
      ``"on-demand"`` (only stamps replicate; values are fetched on a miss).
    * ``conflict_resolver(local, remote) -> winner``: replaces last-writer-wins; must
      be deterministic and order-independent (see ``crdtcache.core.check_resolver``).
    * ``schema``: pydantic model, dataclass or TypeAdapter (values come back as
      models), or a callable that raises or returns False to reject a value.
    * ``serializer``: ``"msgpack"`` (default: None, bool, int of any size, float,
      str, bytes, bytearray, list, tuple, dict, set, frozenset, datetime, date, time,
      timedelta, UUID and Decimal round-trip as themselves), a ``(dumps, loads)`` pair
      for other types (applied after ``schema``; the bytes travel as an opaque
      value), or ``"pickle"``, refused unless ``secret`` or ``ssl`` is set (redis:
      a password or rediss:// in ``redis_url``): loading a pickle runs its writer's
      code, so any peer that can write could run code on every node.
    * ``max_value_bytes`` (default 1 MiB, up to 32 MiB) and ``max_key_chars``
      (default and most 1024): the largest value (a str in UTF-8 bytes, others as
      encoded) and the longest key, refused on write with :class:`SerializationError`.
      Every reader (peers' frames, Redis records, snapshots, the store) applies this
      node's limit; frames grow with it (a large value travels whole, in one frame,
      and delays what follows it on the link: about 10 ms a MiB on loopback). Give
      every node of a cluster the same limit: a record over a peer's is junk to it.
    * ``event_bus`` + ``invalidation_rules``: invalidate keys on application events.
    * ``on_change(ChangeEvent)``: every visible change, local or remote.
    * ``warm_up(cache)``: run at start. ``refresh(key)`` every ``refresh_interval``
      seconds for the live keys this node wrote last; its result is stored.
    * ``metrics``: a :class:`~crdtcache.metrics.Metrics`, e.g. ``PrometheusMetrics()``.
    * ``local_max_size``, ``local_ttl``, ``redis_url``: redis mode only: the hot
      tier's bound (default ``max_size``), the seconds a value stays in it (default:
      until invalidated or evicted), and the server (default
      ``redis://127.0.0.1:6379/0``; the ``redis`` extra). There ``delete`` answers
      for Redis, ``invalidate_pattern`` counts the keys it removed from this
      instance's hot tier, and a miss or a write while Redis is unreachable raises
      :class:`PeerError` (nothing is applied).
    * ``dashboard``: ``host:port`` of a live page, ``/api/stats``, ``/metrics`` and
      ``/healthz`` served from this node's loop (the ``dashboard`` extra; see
      :mod:`crdtcache.dashboard`). Loopback only, unless ``secret`` is set (the page
      then needs ``crdtcache.dashboard.access_token(secret)``) or the environment has
      ``CRDTCACHE_DASHBOARD_PUBLIC=1``.

    Examples:
        ```python
        import crdtcache

        async with crdtcache.Cache(backend="memory", default_ttl=300) as cache:
            await cache.set("user:1", {"name": "Ada"}, ttl=60)
            assert await cache.get("user:1") == {"name": "Ada"}
            assert await cache.get("user:2", default="?") == "?"
            assert await cache.keys("user:*") == ["user:1"]
            assert await cache.invalidate_pattern("user:*") == 1  # on every node
        ```
    """

    #: Seconds write-through waits for every live peer's ack before raising PeerError.
    write_timeout: float = 2.0
    #: Seconds a read waits for a peer to send a value this node holds only as a stub.
    fetch_timeout: float = 0.5

    @takes_options(CacheOptions)
    def __init__(self, **options: Any) -> None:
        config = CacheOptions(**options)
        self._config = config
        self._codec = ValueCodec(
            config.schema,
            config.serializer,
            max_value_bytes=config.max_value_bytes,
            max_key_chars=config.max_key_chars,
        )
        self._clock = config._clock
        # Local writes of a burst share their expiry object (24 bytes per entry).
        self._expiries = Expiries()
        self._services = prepare_services(config)
        self._node_id = choose_node_id(config)
        self._tier = LocalTier(
            node=self._node_id,
            max_size=config.local_max_size or config.max_size,
            max_memory=config.max_memory,
            admit=self._admit if self._codec.checks_remote else None,
            on_over=self._schedule_enforce,
        )
        self._counters = Counters()
        self._reporter = Reporter(
            self._counters,
            self._tier,
            metrics=config.metrics,
            on_change=config.on_change,
            clock=self._clock,
        )
        # The hit path reads these attributes directly (see _read).
        self._entries: dict[str, Entry] = {}
        self._load = self._codec.load
        # Flat lists and dicts read here are copied from a decoded original, not decoded.
        self._flat = FlatReads()
        self._flat_copier = self._flat.copier
        self._hit_cbs = self._reporter.hit_listeners
        self._metrics = config.metrics
        self._state = _NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._parts: Parts | None = None
        # Keys a reader awaits from a peer (how many readers each): spared by eviction.
        self._fetching: dict[str, int] = {}
        self._inflight: dict[str, asyncio.Future[object]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._refresher: Refresher | None = None
        self._enforce_pending = False
        self._unsubscribe: list[Callable[[], None]] = []
        self._running_services: list[Service] = []

    # ------------------------------------------------------------ lifecycle
    @property
    def node_id(self) -> str:
        """This node's id (random unless given)."""
        return self._node_id

    @property
    def address(self) -> str | None:
        """``host:port`` bound for peer traffic once started (None for ``"memory"``)."""
        return self._parts.runtime.address if self._parts is not None else None

    @property
    def dashboard_url(self) -> str | None:
        """``http://host:port/`` of the running dashboard (None without ``dashboard=``)."""
        for service in self._running_services:
            url = getattr(service, "url", None)
            if isinstance(url, str):
                return url
        return None

    async def start(self) -> None:
        """Start the node in the running loop: runtime, subscriptions, warm-up, refresh.

        Idempotent. Raises :class:`CacheError` if the cache was closed, and
        :class:`PeerError` if the network runtime cannot start.
        """
        if self._state == _RUNNING:
            return
        if self._state == _CLOSED:
            raise CacheError("a closed cache cannot be restarted; create a new one")
        config = self._config
        self._loop = loop = asyncio.get_running_loop()
        parts = assemble(config, self._node_id, self._tier, self._clock)
        self._node_id = parts.replica.node
        parts.runtime.listen(self._reporter.changes, self._on_peer, self._reporter.eviction)
        parts.runtime.serve_admin(serve_admin(self))  # ``crdtcache get/set`` from a shell
        try:
            await parts.runtime.start()
        except BaseException:
            if parts.persistence is not None:
                parts.persistence.store.close()
            raise
        self._parts = parts
        self._entries = parts.replica.entries
        self._state = _RUNNING
        if config.event_bus is not None:
            for rule in config.invalidation_rules:
                handler = rule_handler(
                    rule,
                    invalidate=self.invalidate,
                    invalidate_pattern=self.invalidate_pattern,
                    loop=loop,
                )
                self._unsubscribe.append(config.event_bus.on(rule.event, handler))
        if config.warm_up is not None:
            try:
                await maybe_await(config.warm_up(self))
            except Exception:
                log.exception("warm_up failed; the cache starts without it")
        if config.refresh is not None:
            assert config.refresh_interval is not None
            self._refresher = Refresher(
                config.refresh,
                config.refresh_interval,
                node_id=lambda: self._node_id,
                replica=lambda: self._running().replica,
                clock=self._clock,
                store=self.set,
            )
            self._tasks.append(loop.create_task(self._refresher.run_forever()))
        if parts.persistence is not None:
            self._tasks.append(loop.create_task(parts.persistence.run(parts.replica)))
        try:
            for start_service in self._services:
                self._running_services.append(await start_service(self.view()))
        except BaseException:
            await self.close()
            raise
        if parts.persistence is not None and parts.persistence.load is not None:
            # Last, so that start() returns before the first chunk: reads are served
            # meanwhile (a key not loaded yet is read from the file: _check_key).
            self._tasks.append(loop.create_task(parts.persistence.load.run()))

    async def close(self) -> None:
        """Flush what is queued to peers, stop the node and its tasks; idempotent."""
        if self._state != _RUNNING:
            self._state = _CLOSED
            return
        self._state = _CLOSED
        services, self._running_services = self._running_services, []
        for service in reversed(services):
            await service.close()
        self._entries = {}
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._reporter.close()
        parts = self._parts
        assert parts is not None
        try:
            await parts.runtime.close()
        finally:
            if parts.persistence is not None:
                await parts.persistence.close(parts.replica)

    async def __aenter__(self) -> Cache:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _running(self) -> Parts:
        if self._state != _RUNNING:
            raise CacheError(
                "the cache is closed"
                if self._state == _CLOSED
                else "the cache is not started: use `async with cache:` or `await cache.start()`"
            )
        assert self._parts is not None
        return self._parts

    # The parts of a started cache, for the read-only view and for tests.
    @property
    def _replica(self) -> Replica | None:
        return self._parts.replica if self._parts is not None else None

    @property
    def _engine(self) -> GossipEngine | None:
        return self._parts.engine if self._parts is not None else None

    @property
    def _runtime(self) -> Runtime | None:
        return self._parts.runtime if self._parts is not None else None

    @property
    def _persistence(self) -> Persistence | None:
        return self._parts.persistence if self._parts is not None else None

    def _on_changes(self, changes: list[Change], **how: bool) -> None:
        self._reporter.changes(changes, **how)

    def view(self) -> CacheView:
        """A read-only view of this node for dashboards and tools (see ``CacheView``)."""
        from crdtcache.cache._view import CacheView

        return CacheView(self)

    # --------------------------------------------------------------- reads
    def _read(self, key: str) -> Any:
        """The value of ``key`` if held here and live, else :data:`ABSENT` (any thread).

        Counts a local hit; never blocks, never touches anything but the entry map
        (read), the tier's epoch marks and counters (see :mod:`crdtcache.cache._sync`).
        """
        try:
            e = self._entries.get(key)
        except TypeError:  # an unhashable key: the slow path names the problem
            return ABSENT
        if e is None:
            return ABSENT
        value = e.value
        if value is TOMBSTONE or value is NOT_HELD:
            return ABSENT
        expires = e.expires
        if expires is not None and expires <= self._clock():
            return ABSENT
        if self._load is None:
            if type(value) is Packed:  # a list or dict: hand out a fresh copy
                copy = self._flat_copier(value)  # (FlatReads.decode, its hit inlined)
                value = copy() if copy is not None else self._flat.decode(value)
            elif type(value) is Counter:
                value = value.total
        else:
            try:
                value = self._codec.read(value)
            except Exception:  # the schema no longer accepts it: the slow path refuses it
                return ABSENT
        tier = self._tier
        tier.bits[hash(key) & tier.mask] = tier.epoch
        self._counters.local_hits += 1
        if self._metrics is not None:
            self._metrics.hit("local")
        return value

    async def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` if absent or expired.

        A key held only as a stub here is fetched from peers (``fetch_timeout``).
        Returns a fresh copy of lists and dicts, a model instance with a schema.
        Raises :class:`SerializationError` for a key that is not a str or too long.
        """
        value = self._read(key)
        if value is ABSENT:
            return await self._get_slow(key, default)
        if self._hit_cbs:
            self._reporter.emit(CacheEvent("hit", key, source="local"))
        return value

    async def _get_slow(self, key: str, default: Any) -> Any:
        parts = self._running()
        replica = parts.replica
        self._check_key(key)
        e = replica.lookup(key, self._clock())
        if e is not None and e.value is not NOT_HELD:
            try:
                value = self._codec.read(e.value)
            except Exception as exc:
                log.warning("dropping %r here: its value no longer passes the schema: %s", key, exc)
                replica.evict(key)
                e = None
            else:
                return self._hit(key, value, "local")
        if e is not None and parts.persistence is not None:  # evicted: the file has it
            stored = parts.persistence.read(key)
            if (
                stored is not None
                and stored.held
                and (stored.ts, stored.origin) == (e.ts, e.origin)
            ):
                replica.merge_entry(key, stored, self._clock())  # fills the stub
                value = self._filled(replica, key)
                if value is not ABSENT:
                    return self._hit(key, value, "local")
        counters = self._counters
        counters.local_misses += 1
        if e is not None or parts.runtime.answers_misses:
            self._fetching[key] = self._fetching.get(key, 0) + 1
            try:
                await parts.runtime.fetch([key], self.fetch_timeout)
                value = self._filled(replica, key)
            finally:
                if self._fetching[key] == 1:
                    del self._fetching[key]
                else:
                    self._fetching[key] -= 1
            if value is not ABSENT:
                counters.dist_hits += 1
                return self._hit(key, value, "distributed")
            counters.dist_misses += 1
        if self._metrics is not None:
            self._metrics.miss()
        if self._reporter.listeners["miss"]:
            self._reporter.emit(CacheEvent("miss", key))
        return default

    def _check_key(self, key: str) -> None:
        """Check ``key``; while the store still loads, merge its stored row first (an
        operation that reads the key's entry must see what the file holds)."""
        check_key(key, self._codec.max_key_chars)
        persistence = self._persistence
        if persistence is not None:
            persistence.settle(key)

    async def _whole(self) -> Parts:
        """The parts, once every stored row is loaded (for whole-map operations)."""
        parts = self._running()
        if parts.persistence is not None:
            await parts.persistence.loaded()
        return self._running()  # (closed meanwhile: raises)

    def _filled(self, replica: Replica, key: str) -> Any:
        """The value of a stub just filled (from disk or a peer), else :data:`ABSENT`."""
        self._enforce(keep=key)  # the fill may break a bound: never at this key's cost
        e = replica.lookup(key, self._clock())
        if e is None or e.value is NOT_HELD:
            return ABSENT
        return self._codec.read(e.value)

    def _hit(self, key: str, value: Any, source: str) -> Any:
        self._tier.touch(key)
        if source == "local":
            self._counters.local_hits += 1
        if self._metrics is not None:
            self._metrics.hit(source)
        if self._hit_cbs:
            self._reporter.emit(CacheEvent("hit", key, source=source))
        return value

    async def wait_for_peers(self, count: int = 1, timeout: float = 5.0) -> int:
        """Wait until at least ``count`` peers are connected; return how many are.

        Raises :class:`PeerError` if ``timeout`` seconds pass first. Useful before a
        first write-through ``set``, which only waits for peers already connected.
        """
        engine = self._running().engine
        deadline = time.monotonic() + timeout
        while len(engine.live_peers()) < count:
            if time.monotonic() > deadline:
                raise PeerError(
                    f"{len(engine.live_peers())} of {count} peers connected after {timeout} s"
                )
            await asyncio.sleep(0.005)
        return len(engine.live_peers())

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The values of those of ``keys`` that are live, by key (absent ones left out).

        Local hits are read at once; the other keys are asked of peers (or Redis) in
        one request. Raises like :meth:`get` for a bad key (and for a single str passed
        instead of an iterable of keys).
        """
        found, slow = self._get_many_local(keys, self._reporter.emit)
        if slow:
            found.update(await self._get_many_slow(slow))
        return found

    def _get_many_local(
        self, keys: Iterable[str], emit_hit: Callable[[CacheEvent], object]
    ) -> tuple[dict[str, Any], list[str]]:
        """The local part of :meth:`get_many` (``SyncCache`` runs it in its caller's
        thread): the values hit here, and the keys left for :meth:`_get_many_slow`.

        ``emit_hit`` reports each hit event while hit listeners exist: the caller knows
        which thread may run the reporter.
        """
        found: dict[str, Any] = {}
        slow: list[str] = []
        for key in _key_list(keys, "get_many"):
            value = self._read(key)
            if value is ABSENT:
                slow.append(key)
                continue
            found[key] = value
            if self._hit_cbs:
                emit_hit(CacheEvent("hit", key, source="local"))
        return found, slow

    async def _get_many_slow(self, keys: list[str]) -> dict[str, Any]:
        """The slow path of :meth:`get_many`: one fetch for every key that needs one."""
        parts = self._running()
        replica, runtime = parts.replica, parts.runtime
        now = self._clock()
        remote: list[str] = []
        for key in dict.fromkeys(keys):
            self._check_key(key)
            e = replica.lookup(key, now)
            stub = e is not None and e.value is NOT_HELD and parts.persistence is None
            if stub or (e is None and runtime.answers_misses):
                remote.append(key)
        found: dict[str, Any] = {}
        asked: set[str] = set()
        if len(remote) > 1:  # one request for all; a single key goes the usual way
            asked = set(remote)
            for key in remote:
                self._fetching[key] = self._fetching.get(key, 0) + 1
            try:
                await runtime.fetch(remote, self.fetch_timeout)
            finally:
                for key in remote:
                    left = self._fetching[key] - 1
                    if left:
                        self._fetching[key] = left
                    else:
                        del self._fetching[key]
        counters = self._counters
        for key in dict.fromkeys(keys):
            e = replica.lookup(key, self._clock()) if key in asked else None
            if key in asked and not (e is not None and e.value is NOT_HELD):
                counters.local_misses += 1
                value = self._filled(replica, key)
                if value is not ABSENT:
                    counters.dist_hits += 1
                    found[key] = self._hit(key, value, "distributed")
                    continue
                counters.dist_misses += 1
                self._missed(key)
            else:  # not asked, or a stub a capped reply left out: the usual way
                value = await self._get_slow(key, ABSENT)
                if value is not ABSENT:
                    found[key] = value
        return found

    def _missed(self, key: str) -> None:
        if self._metrics is not None:
            self._metrics.miss()
        if self._reporter.listeners["miss"]:
            self._reporter.emit(CacheEvent("miss", key))

    async def exists(self, key: str) -> bool:
        """Whether ``key`` has a live value (held here or not). Raises like :meth:`get`."""
        parts = self._running()
        self._check_key(key)
        if parts.replica.lookup(key, self._clock()) is not None:
            return True
        return parts.runtime.answers_misses and await parts.runtime.live(key)

    async def ttl(self, key: str) -> float | None:
        """Seconds left before ``key`` expires: None if it never does, and ``-1.0`` if
        it has no live value (absent, deleted or expired).

        Raises like :meth:`get` for a bad key, and :class:`PeerError` in redis mode
        when Redis cannot be reached.
        """
        parts = self._running()
        self._check_key(key)
        replica = parts.replica
        e = replica.lookup(key, self._clock())
        if e is None and parts.runtime.answers_misses:
            await parts.runtime.fetch([key], self.fetch_timeout)
            e = replica.lookup(key, self._clock())
        if e is None:
            return -1.0
        return None if e.expires is None else max(0.0, e.expires - self._clock())

    async def keys(self, pattern: str = "*") -> list[str]:
        """Sorted live keys matching the glob ``pattern`` (``fnmatch``, case-sensitive).

        Includes keys whose value is held only by peers: the cluster's key space.
        """
        runtime = (await self._whole()).runtime
        _check_pattern(pattern)
        return await runtime.keys(pattern)

    # -------------------------------------------------------------- writes
    def _apply_set(self, key: str, stored: object, ttl: float | None) -> None:
        """Write a stored value locally; ``ttl`` was checked by the caller."""
        parts = self._running()
        parts.runtime.check_writable()
        seconds = self._config.default_ttl if ttl is None else ttl
        now = self._clock()
        expires = None if seconds is None else self._expiries.at(now, seconds)
        parts.engine.set(key, stored, now, expires)
        self._counters.writes += 1
        self._after_write(parts.engine, key=key)

    def _after_write(
        self, engine: GossipEngine, *, as_invalidate: bool = False, key: str | None = None
    ) -> None:
        self._reporter.changes(engine.drain_changes(), as_invalidate=as_invalidate)
        self._enforce(keep=key)

    async def _replicate(self, what: str) -> None:
        parts = self._running()
        runtime = parts.runtime
        if self._config.sync_strategy != "write-through":
            runtime.wake()
            return
        # With a shared store the wait includes its commit even without other instances.
        waited = bool(parts.engine.live_peers()) or runtime.answers_misses
        started = time.perf_counter()
        missing = await runtime.flush(ack=True, timeout=self.write_timeout)
        if missing:
            self._counters.ack_failures += 1
            raise PeerError(
                f"{what} was not acknowledged within {self.write_timeout:g} s by "
                f"{', '.join(sorted(missing))}; it is applied on this node and reaches "
                "them by anti-entropy"
            )
        if waited:
            self._counters.ack_window.add((time.perf_counter() - started) * 1000.0)

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (None: ``default_ttl``).

        Raises :class:`ValidationError` (schema) or :class:`SerializationError` (key
        or value) before anything is written, :class:`ConfigError` for a bad ``ttl``;
        with write-through, :class:`PeerError` naming the peers that did not ack in
        ``write_timeout`` (the value stays applied here).
        """
        self._running()
        check_key(key, self._codec.max_key_chars)
        check_ttl(ttl)
        self._apply_set(key, self._codec.dump(key, value), ttl)
        await self._replicate(f"set {key!r}")

    async def _set_stored(self, key: str, stored: object, ttl: float | None) -> None:
        """:meth:`set` of a value already dumped (``SyncCache`` dumps in its caller's
        thread: a serializer may run code that must not run in the loop's)."""
        self._running()
        check_key(key, self._codec.max_key_chars)
        check_ttl(ttl)
        self._apply_set(key, stored, ttl)
        await self._replicate(f"set {key!r}")

    async def delete(self, key: str) -> bool:
        """Delete ``key`` on every node; True if it was live here.

        Raises like :meth:`set` for a bad key or a write-through timeout.
        """
        return await self._delete(key, as_invalidate=False)

    async def set_many(self, mapping: Mapping[str, Any], ttl: float | None = None) -> None:
        """Store every value of ``mapping`` for ``ttl`` seconds, as one replicated batch.

        Every key and value is checked before anything is written (nothing is written
        if one fails, raising like :meth:`set`). With write-through the batch is
        acknowledged once: :class:`PeerError` names the peers that did not ack it.
        """
        await self._set_many_stored(self._dump_many(mapping), ttl)

    def _dump_many(self, mapping: Mapping[str, Any]) -> list[tuple[str, object]]:
        """Every ``(key, stored value)`` of ``mapping``, checked (see :meth:`set_many`)."""
        if not isinstance(mapping, Mapping):
            raise SerializationError(f"set_many takes a mapping, not {type(mapping).__name__}")
        max_chars = self._codec.max_key_chars
        return [
            (check_key(key, max_chars), self._codec.dump(key, value))
            for key, value in mapping.items()
        ]

    async def _set_many_stored(self, batch: list[tuple[str, object]], ttl: float | None) -> None:
        """:meth:`set_many` of values already dumped (see :meth:`_set_stored`)."""
        self._running()
        check_ttl(ttl)
        if not batch:
            return
        for key, stored in batch:
            self._apply_set(key, stored, ttl)
        await self._replicate(f"set_many of {len(batch)} keys")

    async def delete_many(self, keys: Iterable[str]) -> int:
        """Delete ``keys`` on every node, as one replicated batch; how many were live.

        Raises like :meth:`delete`.
        """
        parts = self._running()
        wanted = list(dict.fromkeys(_key_list(keys, "delete_many")))
        for key in wanted:
            self._check_key(key)
        if not wanted:
            return 0
        runtime, engine = parts.runtime, parts.engine
        runtime.check_writable()
        deleted = 0
        for key in wanted:
            existed = False
            if runtime.answers_misses and parts.replica.lookup(key, self._clock()) is None:
                existed = await runtime.live(key)
            deleted += engine.delete(key, self._clock()) or existed
            self._counters.writes += 1
        self._after_write(engine)
        await self._replicate(f"delete_many of {len(wanted)} keys")
        return deleted

    async def add(self, key: str, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` has no live value; whether it stored it.

        Atomic among the callers of this node: of N concurrent ``add`` calls, one
        returns True. In redis mode atomic across instances too (Redis decides). In
        p2p mode **not across nodes** (that would need consensus): two nodes adding the
        same key at once both store and both return True, and last-writer-wins then
        keeps one of the two values on every node. Raises like :meth:`set`.
        """
        self._running()
        self._check_key(key)
        return await self._add_stored(key, self._codec.dump(key, value), ttl)

    async def _add_stored(self, key: str, stored: object, ttl: float | None) -> bool:
        """:meth:`add` of a value already dumped (see :meth:`_set_stored`)."""
        parts = self._running()
        self._check_key(key)
        check_ttl(ttl)
        parts.runtime.check_writable()
        added = await parts.runtime.add(key, stored, self._expires(ttl))
        if added:
            self._counters.writes += 1
            self._after_write(parts.engine, key=key)
            await self._replicate(f"add {key!r}")
        return added

    async def incr(self, key: str, delta: int = 1, ttl: float | None = None) -> int:
        """Add ``delta`` to the integer at ``key``; returns the new value.

        A missing key starts from 0 and lives ``ttl`` seconds (None: ``default_ttl``);
        an existing key keeps its expiry, and ``ttl`` is ignored. In p2p (and memory)
        mode the key becomes a convergent counter: increments made concurrently on
        different nodes are all counted once the cluster has converged. In redis mode
        Redis adds atomically. A ``set`` replaces a counter with its value (and
        increments concurrent with that set are lost); ``incr`` on a set int counts
        from it. Raises :class:`ValidationError` if the value is not an int (nothing
        changes), :class:`SerializationError` for a ``delta`` that is not an int, and
        like :meth:`set` otherwise.
        """
        parts = self._running()
        self._check_key(key)
        check_ttl(ttl)
        if type(delta) is not int:
            raise SerializationError(f"delta must be an int, not {type(delta).__name__}")
        runtime = parts.runtime
        runtime.check_writable()
        expires = self._expires(ttl)
        try:
            value = await runtime.incr(key, delta, expires, self._codec.as_int)
            if value is None:  # held elsewhere: fill it here, then count
                await self._hold(key)
                value = await runtime.incr(key, delta, expires, self._codec.as_int)
        except CounterError as exc:
            raise ValidationError(f"incr {key!r}: {exc}") from None
        if value is None:
            raise PeerError(
                f"incr {key!r}: no peer sent its value within {self.fetch_timeout:g} s; "
                "nothing was changed"
            )
        self._counters.writes += 1
        self._after_write(parts.engine, key=key)
        await self._replicate(f"incr {key!r}")
        return value

    async def decr(self, key: str, delta: int = 1, ttl: float | None = None) -> int:
        """Subtract ``delta`` from the integer at ``key`` (see :meth:`incr`)."""
        if type(delta) is not int:
            raise SerializationError(f"delta must be an int, not {type(delta).__name__}")
        return await self.incr(key, -delta, ttl)

    async def touch(self, key: str, ttl: float | None) -> bool:
        """Make ``key`` expire ``ttl`` seconds from now (None: never), without rewriting
        its value; False if it has no live value.

        A ``set`` made meanwhile on another node always survives the touch: the new
        expiry applies to the value it was given for, never to an older one (see
        :mod:`crdtcache.core._entry`). Raises like :meth:`set`.
        """
        parts = self._running()
        self._check_key(key)
        check_ttl(ttl)
        parts.runtime.check_writable()
        expires = None if ttl is None else self._expiries.at(self._clock(), ttl)
        touched = await parts.runtime.touch(key, expires)
        if touched:
            self._counters.writes += 1
            self._after_write(parts.engine, key=key)
            await self._replicate(f"touch {key!r}")
        return touched

    async def expire(self, key: str, ttl: float | None) -> bool:
        """The same as :meth:`touch` (the name Redis and cashews use)."""
        return await self.touch(key, ttl)

    def _expires(self, ttl: float | None) -> float | None:
        """The absolute expiry of a value written now for ``ttl`` (None: ``default_ttl``)."""
        seconds = self._config.default_ttl if ttl is None else ttl
        return None if seconds is None else self._expiries.at(self._clock(), seconds)

    async def _hold(self, key: str) -> None:
        """Fill the value of a key this node holds only as a stub (file, then peers)."""
        parts = self._running()
        replica = parts.replica
        e = replica.lookup(key, self._clock())
        if e is None or e.value is not NOT_HELD:
            return
        if parts.persistence is not None:
            stored = parts.persistence.read(key)
            if (
                stored is not None
                and stored.held
                and (stored.ts, stored.origin) == (e.ts, e.origin)
            ):
                replica.merge_entry(key, stored, self._clock())
                return
        self._fetching[key] = self._fetching.get(key, 0) + 1
        try:
            await parts.runtime.fetch([key], self.fetch_timeout)
        finally:
            if self._fetching[key] == 1:
                del self._fetching[key]
            else:
                self._fetching[key] -= 1

    async def invalidate(self, key: str) -> bool:
        """Like :meth:`delete`, reported as an ``invalidate`` event on this node.

        Peers see a delete: both are the same replicated tombstone.
        """
        return await self._delete(key, as_invalidate=True)

    async def _delete(self, key: str, *, as_invalidate: bool) -> bool:
        parts = self._running()
        self._check_key(key)
        runtime = parts.runtime
        runtime.check_writable()
        existed = False
        if runtime.answers_misses and parts.replica.lookup(key, self._clock()) is None:
            existed = await runtime.live(key)  # "live here" is "live in the shared store"
        existed = parts.engine.delete(key, self._clock()) or existed
        self._counters.writes += 1
        self._after_write(parts.engine, as_invalidate=as_invalidate)
        await self._replicate(f"{'invalidate' if as_invalidate else 'delete'} {key!r}")
        return existed

    async def invalidate_pattern(self, pattern: str) -> int:
        """Remove every key matching the glob on every node, as one replicated tombstone.

        The tombstone also covers matching keys written before it that this node
        has not received yet. Returns how many keys it removed here.
        """
        parts = await self._whole()  # the count covers every stored row
        _check_pattern(pattern)
        parts.runtime.check_writable()
        removed = len(parts.engine.invalidate_pattern(pattern, self._clock()))
        self._counters.writes += 1
        self._after_write(parts.engine)
        await self._replicate(f"invalidate_pattern {pattern!r}")
        return removed

    async def clear(self) -> int:
        """Remove every key on every node (the pattern ``*``); returns how many here."""
        return await self.invalidate_pattern("*")

    async def get_or_set(
        self, key: str, loader: Callable[[], Any], ttl: float | None = None
    ) -> Any:
        """The value of ``key``; on a miss, ``loader()`` (sync or async) fills it.

        Single flight: concurrent callers for one key share one loader call (each gets
        its own copy of the value). The loader's exceptions reach every waiting caller;
        a write-through ack timeout is logged, not raised: the value is applied here.
        """
        value = await self.get(key, ABSENT)
        if value is not ABSENT:
            return value
        check_ttl(ttl)
        while (leader := self._inflight.get(key)) is not None:
            try:
                stored = await asyncio.shield(leader)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if leader.cancelled() and not (task is not None and task.cancelling()):
                    continue  # the leader was cancelled, not us: load it ourselves
                raise
            return self._codec.read(stored)
        assert self._loop is not None
        flight: asyncio.Future[object] = self._loop.create_future()
        self._inflight[key] = flight
        try:
            stored = self._codec.dump(key, await maybe_await(loader()))
            await self._fill(key, stored, ttl)
        except asyncio.CancelledError:
            flight.cancel()
            raise
        except BaseException as exc:
            flight.set_exception(exc)
            flight.exception()  # retrieved: waiters get it, no "never retrieved" log
            raise
        else:
            flight.set_result(stored)
        finally:
            del self._inflight[key]
        return self._codec.read(stored)

    async def _fill(self, key: str, stored: object, ttl: float | None) -> None:
        """Apply a loaded value and replicate it; a write-through timeout is only logged."""
        self._apply_set(key, stored, ttl)
        try:
            await self._replicate(f"set {key!r}")
        except PeerError as exc:
            log.warning("get_or_set: %s", exc)

    # ------------------------------------------------------------- eviction
    def _enforce(self, keep: str | None = None) -> None:
        """Evict until the tier's bounds hold again (sparing ``keep``, just written,
        and keys a reader is fetching: a fill must not be evicted before it is read)."""
        parts = self._parts
        if not self._tier.over or parts is None:
            return
        spare = set(self._fetching)
        if keep is not None:
            spare.add(keep)
        evicted = self._tier.evict_over(
            parts.replica, self._clock(), forget=not parts.runtime.keeps_stubs, keep=spare
        )
        for key, reason in evicted:
            self._reporter.eviction(key, reason)

    def _schedule_enforce(self) -> None:
        # Called from inside a replica operation: never evict re-entrantly. One
        # pending call is enough however many values arrive before it runs.
        if not self._enforce_pending and self._loop is not None and self._state == _RUNNING:
            self._enforce_pending = True
            self._loop.call_soon(self._enforce_soon)

    def _enforce_soon(self) -> None:
        self._enforce_pending = False
        self._enforce()

    def _admit(self, key: str, entry: Entry) -> bool:
        """Whether a value from a peer passes the schema (see LocalTier)."""
        try:
            self._codec.check(key, entry.value)
        except CacheError as exc:
            log.warning("refused the value of %r from %s: %s", key, entry.origin, exc)
            return False
        return True

    def _on_peer(self, event: PeerEvent) -> None:
        parts = self._parts
        if parts is None:
            return
        stats = parts.runtime.statistics()
        address = next((p.address for p in stats.peers if p.id == event.peer), None)
        self._reporter.peer(event, stats.instances - 1, address)

    # --------------------------------------------------------------- events
    def on(self, event: str, callback: Callback) -> Callable[[], None]:
        """Call ``callback(CacheEvent)`` on ``event``; returns an unsubscribe function.

        ``event`` is one of hit, miss, set, delete, invalidate, expire, eviction,
        peer_up, peer_down. Callbacks may be sync or async; one that raises is logged
        and never breaks the cache. Raises :class:`ConfigError` for an unknown event.
        """
        return self._reporter.on(event, callback)

    # ------------------------------------------------------------ snapshots
    async def snapshot(self) -> bytes:
        """This node's whole replica (values, tombstones, stamps) as self-checking bytes.

        In redis mode, the data in Redis. Raises :class:`SerializationError` if it
        would exceed ``MAX_SNAPSHOT_BYTES``.
        """
        return await (await self._whole()).runtime.snapshot()

    async def restore(self, data: bytes) -> int:
        """Merge a snapshot into this node; returns how many keys it changed here.

        A CRDT merge: an old snapshot never overwrites newer values, and restoring
        twice changes nothing the second time; peers get what they lack by
        anti-entropy. Values written by other nodes pass the schema like any remote
        value. Raises :class:`CorruptStateError` or :class:`SerializationError` for bad
        bytes and :class:`ClockDriftError` for stamps too far ahead, with nothing changed.
        """
        changes: list[Change] = await (await self._whole()).runtime.restore(data)
        self._reporter.changes(changes, restored=True)
        self._enforce()
        return len(changes)

    # ----------------------------------------------------------- reporting
    async def get_statistics(self) -> CacheStatistics:
        """Counters of this node: tiers, evictions, cluster, traffic, latencies.

        A coroutine because the live key count may ask the runtime (in Redis mode, a
        round trip to Redis); :meth:`health` needs no I/O and is a plain method.
        Raises :class:`CacheError` unless the cache is running.
        """
        parts = self._running()
        runtime = parts.runtime
        live_keys = await runtime.size()
        traffic = runtime.statistics()
        return self._counters.snapshot(
            node_id=self._node_id,
            backend=self._config.backend,
            sync_strategy=self._config.sync_strategy,
            held=self._tier.count,
            live_keys=live_keys,
            runtime=traffic,
            refused_values=self._tier.refused,
            refused_drift=parts.engine.stats.refused_drift + traffic.refused_drift,
        )

    def health(self) -> Health:
        """A 0-100 score with the reason for every point taken off.

        Looks at peers (suspect or down), sync latency, hit rate, eviction pressure,
        refused stamps and values, write-through timeouts and dropped events.

        A plain method, unlike :meth:`get_statistics`: it reads only what this node
        holds in memory, never waits on a peer or Redis, and never raises (a cache
        that is not running scores 0, "not running"), so a liveness probe or a sync
        callback can call it. :meth:`SyncCache.health` behaves the same.
        """
        parts = self._parts
        if self._state != _RUNNING or parts is None:
            return Health(0, ("not running",))
        return assess(
            self._counters,
            parts.runtime.statistics(),
            parts.engine.stats,
            refused_values=self._tier.refused,
        )

    def __repr__(self) -> str:
        return (
            f"<Cache {self._node_id} backend={self._config.backend} "
            f"strategy={self._config.sync_strategy} {self._state}>"
        )


def _key_list(keys: Iterable[str], what: str) -> list[str]:
    """``keys`` as a list; a str (an iterable of characters) is refused."""
    if isinstance(keys, (str, bytes)):
        raise SerializationError(
            f"{what} takes an iterable of keys, not a single {type(keys).__name__}"
        )
    return list(keys)


def _check_pattern(pattern: object) -> None:
    if type(pattern) is not str or not pattern:
        raise SerializationError("a pattern must be a non-empty str (an fnmatch glob)")
    if len(pattern) > MAX_KEY_CHARS:
        raise SerializationError(f"pattern of {len(pattern)} characters exceeds {MAX_KEY_CHARS}")
