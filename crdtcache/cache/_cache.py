"""The cache: the public API over one replica, its local tier and a runtime.

Theory of operation
-------------------
A :class:`Cache` owns a :class:`Replica` wrapped in a :class:`GossipEngine`, a
:class:`LocalTier` that bounds the values held here, and a runtime that moves the
engine's messages (:class:`LocalRuntime` for ``"memory"``, the TCP node for ``"p2p"``).
Everything that touches the replica runs in the event loop that started the cache,
with one exception: :meth:`_read`, the local-hit path, which ``SyncCache`` calls from
its callers' threads (see :mod:`crdtcache.cache._sync` for why that is safe).

*One path for changes.* Every visible change -- a local write, a merged delta, an
expiry found by collection -- is drained from the engine and handed to
:meth:`_on_changes`, which counts evictions and fires events. Local writes drain at
once, so their events fire before the write returns; the runtime drains the rest.

*Writes.* A write validates the key, the TTL and the value (schema first, then the
stored form) before anything is applied, applies locally, enforces the tier's bounds,
then replicates by strategy: write-behind wakes the runtime (batched every
``sync_interval``), write-through waits for every live peer's ack and raises
:class:`PeerError` naming the ones that did not answer in time (the write stays
applied here and reaches them by anti-entropy), on-demand ships only stamps.

*Reads.* A hit reads the entry and decodes a fresh copy (no aliasing). A key this
node knows only as a stub (evicted here, or on-demand) is fetched from peers; a key
with no entry at all is absent cluster-wide (modulo replication lag), so a miss costs
no network round trip.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from crdtcache._errors import CacheError, ConfigError, PeerError, SerializationError
from crdtcache.cache._events import (
    EVENTS,
    CacheEvent,
    ChangeEvent,
    EventBus,
    InvalidationRule,
)
from crdtcache.cache._options import CacheConfig, check_ttl
from crdtcache.cache._schema import ValueCodec
from crdtcache.cache._statistics import (
    CacheStatistics,
    ClusterStatistics,
    EvictionStatistics,
    Health,
    LatencyWindow,
    OverallStatistics,
    PeerStatistics,
    TierStatistics,
    TrafficStatistics,
    rate,
)
from crdtcache.cache._tier import LocalTier
from crdtcache.core import (
    ALIVE,
    DEAD,
    MAX_KEY_CHARS,
    NOT_HELD,
    SUSPECT,
    TOMBSTONE,
    Change,
    Entry,
    GossipConfig,
    GossipEngine,
    HybridClock,
    Packed,
    PeerEvent,
    Replica,
    check_key,
    decode_value,
)
from crdtcache.core._entry import compile_pattern
from crdtcache.core._hlc import ts_ms
from crdtcache.metrics import Metrics, check_metrics
from crdtcache.runtime._memory import LocalRuntime
from crdtcache.runtime._protocol import Runtime, SharedTier
from crdtcache.store._persistence import Persistence
from crdtcache.store._snapshot import encode_snapshot, restore_snapshot

if TYPE_CHECKING:
    from crdtcache.dashboard._access import BindPolicy
    from crdtcache.dashboard._server import Dashboard

__all__ = ["ABSENT", "Cache"]

log = logging.getLogger(__name__)

Callback = Callable[[Any], Any]


class _Absent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


#: What :meth:`Cache._read` returns when the local tier cannot answer.
ABSENT: Final = _Absent()

_NEW, _RUNNING, _CLOSED = "new", "running", "closed"


class Cache:
    """A replicated cache node. Use as ``async with Cache(...) as cache:``.

    Options (all keyword; :class:`ConfigError` at construction for an invalid one):

    * ``backend``: ``"memory"`` (one process), ``"p2p"`` (peers over TCP) or
      ``"redis"`` (a shared Redis at ``redis_url``, this node's tier a hot cache in
      front of it; see :mod:`crdtcache.runtime.redis._runtime`).
    * ``node_id``: this node's id; random unless given, and with ``persist_path`` the
      id stored in the file. ``cluster``: name that isolates groups on one network.
    * ``listen`` (``host:port`` for peer traffic), ``discovery`` (``"mdns"``,
      ``"static"``, ``"none"``), ``seeds`` (``host:port`` to dial), ``secret`` and
      ``ssl`` (cluster authentication, TLS): the p2p transport's options.
    * ``persist_path``: SQLite file that keeps the replica across restarts.
    * ``max_size`` / ``max_memory``: bounds of the values held here (count / bytes of
      key and stored value); eviction is local, a peer may serve the value again.
    * ``default_ttl``: seconds a value lives when ``set`` gives no ``ttl``.
    * ``sync_strategy``: ``"write-behind"`` (batched every ``sync_interval`` s),
      ``"write-through"`` (``set`` waits for every live peer, ``write_timeout``) or
      ``"on-demand"`` (only stamps replicate; values are fetched on a miss).
    * ``conflict_resolver(local, remote) -> winner``: replaces last-writer-wins; must
      be deterministic and order-independent (see ``crdtcache.core.check_resolver``).
    * ``schema``: pydantic model, dataclass or TypeAdapter (values come back as
      models), or a callable that raises or returns False to reject a value.
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
    """

    #: Seconds write-through waits for every live peer's ack before raising PeerError.
    write_timeout: float = 2.0
    #: Seconds a read waits for a peer to send a value this node holds only as a stub.
    fetch_timeout: float = 0.5

    def __init__(
        self,
        *,
        backend: str = "p2p",
        node_id: str | None = None,
        cluster: str = "default",
        listen: str = "127.0.0.1:0",
        discovery: str = "mdns",
        seeds: Iterable[str] = (),
        redis_url: str | None = None,
        persist_path: str | None = None,
        max_size: int | None = 10_000,
        max_memory: int | None = None,
        default_ttl: float | None = None,
        local_max_size: int | None = None,
        local_ttl: float | None = None,
        sync_strategy: str = "write-behind",
        sync_interval: float = 0.005,
        conflict_resolver: Callable[..., Any] | None = None,
        schema: Any = None,
        event_bus: EventBus | None = None,
        invalidation_rules: Iterable[InvalidationRule] = (),
        on_change: Callable[[ChangeEvent], Any] | None = None,
        warm_up: Callable[[Cache], Any] | None = None,
        refresh_interval: float | None = None,
        refresh: Callable[[str], Any] | None = None,
        metrics: Metrics | None = None,
        secret: bytes | Sequence[bytes] | None = None,
        ssl: Any = None,
        dashboard: str | None = None,
        _clock: Callable[[], float] = time.time,
    ) -> None:
        config = CacheConfig.build(
            backend=backend,
            node_id=node_id,
            cluster=cluster,
            listen=listen,
            discovery=discovery,
            seeds=seeds,
            redis_url=redis_url,
            persist_path=persist_path,
            max_size=max_size,
            max_memory=max_memory,
            default_ttl=default_ttl,
            local_max_size=local_max_size,
            local_ttl=local_ttl,
            sync_strategy=sync_strategy,
            sync_interval=sync_interval,
            conflict_resolver=conflict_resolver,
            on_change=on_change,
            warm_up=warm_up,
            refresh_interval=refresh_interval,
            refresh=refresh,
            secret=secret,
            ssl=ssl,
            dashboard=dashboard,
        )
        self._dashboard_policy: BindPolicy | None = None
        if config.dashboard is not None:
            from crdtcache.dashboard import policy

            # Every secret of a rotation gets a token (see crdtcache.dashboard._access).
            self._dashboard_policy = policy(config.dashboard, secret=config.secret)
        rules = tuple(invalidation_rules)
        for rule in rules:
            if not isinstance(rule, InvalidationRule):
                raise ConfigError(f"invalidation_rules must hold InvalidationRule, not {rule!r}")
        if rules and event_bus is None:
            raise ConfigError("invalidation_rules need an event_bus to listen to")
        if event_bus is not None and not callable(getattr(event_bus, "on", None)):
            raise ConfigError("event_bus must be an EventBus (with .on(event, handler))")
        self._config = config
        self._codec = ValueCodec(schema)
        self._rules = rules
        self._bus = event_bus
        self._metrics = check_metrics(metrics)
        self._clock = _clock
        stable = config.persist_path is not None or config.backend == "memory"
        if config.node_id is not None and not stable:
            # Without its data a node must never speak for its earlier writes (its
            # marks would claim writes it no longer holds), so a given id gets a
            # per-start suffix; with persist_path the id is stable, as is the data. In
            # redis mode two instances started with one id would also take each
            # other's invalidations for their own and ignore them.
            self._node_id = f"{config.node_id}~{uuid.uuid4().hex[:6]}"
        else:
            self._node_id = config.node_id or uuid.uuid4().hex[:12]
        # An evicted value that neither a peer nor the file could serve again is
        # dropped with its stub rather than kept as one; in redis mode Redis serves it
        # again, and a stub would only cost memory.
        self._forget = config.backend == "redis" or (
            config.backend == "memory" and config.persist_path is None
        )
        self._tier = LocalTier(
            node=self._node_id,
            max_size=config.local_max_size or config.max_size,
            max_memory=config.max_memory,
            admit=self._admit if self._codec.adapter or self._codec.validator else None,
            on_over=self._schedule_enforce,
        )
        # The hit path reads these attributes directly (see _read).
        self._entries: dict[str, Entry] = {}
        self._load = self._codec.load
        self._listeners: dict[str, list[Callback]] = {name: [] for name in EVENTS}
        self._hit_cbs = self._listeners["hit"]
        self._state = _NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._replica: Replica | None = None
        # Keys a reader awaits from a peer (how many readers each): spared by eviction.
        self._fetching: dict[str, int] = {}
        self._engine: GossipEngine | None = None
        self._runtime: Runtime | None = None
        # Redis mode: the store that answers for the whole key space (see SharedTier).
        self._shared: SharedTier | None = None
        self._inflight: dict[str, asyncio.Future[object]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._refresher: asyncio.Task[None] | None = None
        self._persistence: Persistence | None = None
        self._persister: asyncio.Task[None] | None = None
        self._enforce_pending = False
        self._unsubscribe: list[Callable[[], None]] = []
        self._dashboard: Dashboard | None = None
        # Counters (see get_statistics).
        self._local_hits = 0
        self._local_misses = 0
        self._dist_hits = 0
        self._dist_misses = 0
        self._writes = 0
        self._evictions = dict.fromkeys(("ttl", "size", "memory", "explicit"), 0)
        self._ack_failures = 0
        self._last_sync: float | None = None
        self._sync_window = LatencyWindow()
        self._ack_window = LatencyWindow()

    # ------------------------------------------------------------ lifecycle
    @property
    def node_id(self) -> str:
        """This node's id (random unless given)."""
        return self._node_id

    @property
    def address(self) -> str | None:
        """``host:port`` bound for peer traffic once started (None for ``"memory"``)."""
        return self._runtime.address if self._runtime is not None else None

    @property
    def dashboard_url(self) -> str | None:
        """``http://host:port/`` of the running dashboard (None without ``dashboard=``)."""
        return self._dashboard.url if self._dashboard is not None else None

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
        self._loop = asyncio.get_running_loop()
        if config.persist_path is not None:
            self._persistence = Persistence(config.persist_path)
            replica = self._persistence.open(
                node_id=config.node_id,
                new_id=self._node_id,
                now=self._clock(),
                resolver=config.conflict_resolver,
                max_held=config.max_size,
            )
            self._node_id = self._tier.node = replica.node
            self._tier.dirty = set()
            self._tier.evicted = {}
        else:
            replica = Replica(HybridClock(self._node_id), resolver=config.conflict_resolver)
        self._tier.attach(replica)
        engine = GossipEngine(
            replica,
            random.Random(),
            GossipConfig(
                sync_interval=config.sync_interval,
                on_demand=config.sync_strategy == "on-demand",
            ),
        )
        runtime = self._make_runtime(engine)
        runtime.listen(self._on_changes, self._on_peer)
        if hasattr(runtime, "admin"):
            runtime.admin = self._serve_admin  # crdtcache get/set/stats from the shell
        try:
            await runtime.start()
        except BaseException:
            if self._persistence is not None:
                self._persistence.store.close()
            raise
        self._replica, self._engine, self._runtime = replica, engine, runtime
        self._entries = replica.entries
        self._state = _RUNNING
        if self._bus is not None:
            for rule in self._rules:
                self._unsubscribe.append(self._bus.on(rule.event, self._rule_handler(rule)))
        if config.warm_up is not None:
            try:
                await _maybe_await(config.warm_up(self))
            except Exception:
                log.exception("warm_up failed; the cache starts without it")
        if config.refresh is not None:
            self._refresher = self._loop.create_task(self._refresh_forever())
        if self._persistence is not None:
            self._persister = self._loop.create_task(self._persistence.run(replica, self._tier))
        if self._dashboard_policy is not None:
            from crdtcache.dashboard._server import start_dashboard

            try:
                self._dashboard = await start_dashboard(self, self._dashboard_policy)
            except BaseException:
                await self.close()
                raise

    def _make_runtime(self, engine: GossipEngine) -> Runtime:
        config = self._config
        if config.backend == "memory":
            return LocalRuntime(engine, clock=self._clock)
        if config.backend == "redis":
            return self._redis_runtime(engine)
        try:
            from crdtcache.transport import make_node
        except ImportError as exc:  # pragma: no cover - the transport ships with the package
            raise ConfigError(f"backend='p2p' needs the transport: {exc}") from exc
        return make_node(
            engine,
            listen=config.listen,
            cluster=config.cluster,
            discovery=config.discovery,
            seeds=config.seeds,
            secret=config.secret,
            ssl=config.ssl,
        )

    def _redis_runtime(self, engine: GossipEngine) -> Runtime:
        config = self._config
        try:
            from crdtcache.runtime.redis._runtime import RedisRuntime
        except ImportError as exc:  # checked at construction; a broken install lands here
            raise ConfigError(f"backend='redis' needs 'crdtcache[redis]': {exc}") from exc
        assert config.redis_url is not None  # the config fills in the default
        runtime = RedisRuntime(
            engine,
            url=config.redis_url,
            cluster=config.cluster,
            strategy=config.sync_strategy,
            sync_interval=config.sync_interval,
            local_ttl=config.local_ttl,
            clock=self._clock,
            on_evict=self._count_eviction,
        )
        self._shared = runtime
        return runtime

    async def close(self) -> None:
        """Flush what is queued to peers, stop the node and its tasks; idempotent."""
        if self._state != _RUNNING:
            self._state = _CLOSED
            return
        self._state = _CLOSED
        dashboard, self._dashboard = self._dashboard, None
        if dashboard is not None:
            await dashboard.close()
        self._entries = {}
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        tasks = list(self._tasks)
        tasks += [t for t in (self._refresher, self._persister) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert self._runtime is not None and self._replica is not None
        try:
            await self._runtime.close()
        finally:
            if self._persistence is not None:
                await self._persistence.close(self._replica, self._tier)

    async def __aenter__(self) -> Cache:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _running(self) -> tuple[Replica, GossipEngine, Runtime]:
        if self._state != _RUNNING:
            raise CacheError(
                "the cache is closed"
                if self._state == _CLOSED
                else "the cache is not started: use `async with cache:` or `await cache.start()`"
            )
        assert self._replica is not None and self._engine is not None
        assert self._runtime is not None
        return self._replica, self._engine, self._runtime

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
        load = self._load
        if load is None:
            if type(value) is Packed:  # a list or dict: hand out a fresh copy
                value = decode_value(value)
        else:
            try:
                value = load(decode_value(value))
            except Exception:  # the schema no longer accepts it: the slow path refuses it
                return ABSENT
        tier = self._tier
        tier.bits[hash(key) & tier.mask] = tier.epoch
        self._local_hits += 1
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
            self._emit(CacheEvent("hit", key, source="local"))
        return value

    async def _get_slow(self, key: str, default: Any) -> Any:
        replica, _, runtime = self._running()
        check_key(key)
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
        if e is not None and self._persistence is not None:  # evicted: the file has it
            stored = self._persistence.read(key)
            if (
                stored is not None
                and stored.held
                and (stored.ts, stored.origin) == (e.ts, e.origin)
            ):
                replica.merge_entry(key, stored, self._clock())  # fills the stub
                value = self._filled(replica, key)
                if value is not ABSENT:
                    return self._hit(key, value, "local")
        self._local_misses += 1
        # A stub: a peer holds the value. In redis mode Redis may hold any key.
        if e is not None or self._shared is not None:
            self._fetching[key] = self._fetching.get(key, 0) + 1
            try:
                await runtime.fetch([key], self.fetch_timeout)
                value = self._filled(replica, key)
            finally:
                if self._fetching[key] == 1:
                    del self._fetching[key]
                else:
                    self._fetching[key] -= 1
            if value is not ABSENT:
                self._dist_hits += 1
                return self._hit(key, value, "distributed")
            self._dist_misses += 1
        if self._metrics is not None:
            self._metrics.miss()
        if self._listeners["miss"]:
            self._emit(CacheEvent("miss", key))
        return default

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
            self._local_hits += 1
        if self._metrics is not None:
            self._metrics.hit(source)
        if self._hit_cbs:
            self._emit(CacheEvent("hit", key, source=source))
        return value

    async def _serve_admin(self, op: str, args: tuple[Any, ...]) -> Any:
        """Run one operation a connected client asked for (``crdtcache get/set/stats``)."""
        if op == "get":
            missing = object()
            value = await self.get(args[0], missing)
            if value is missing:
                return {"found": False}
            # The plain (msgpack) form, also for schema models.
            return {"found": True, "value": decode_value(self._codec.dump(args[0], value))}
        if op == "set":
            await self.set(args[0], args[1], ttl=args[2])
            return True
        if op == "delete":
            return await self.delete(args[0])
        if op == "stats":
            return (await self.get_statistics()).as_dict()
        raise ConfigError(f"unknown operation {op!r}")

    async def wait_for_peers(self, count: int = 1, timeout: float = 5.0) -> int:
        """Wait until at least ``count`` peers are connected; return how many are.

        Raises :class:`PeerError` if ``timeout`` seconds pass first. Useful before a
        first write-through ``set``, which only waits for peers already connected.
        """
        _, engine, _ = self._running()
        deadline = time.monotonic() + timeout
        while len(engine.live_peers()) < count:
            if time.monotonic() > deadline:
                raise PeerError(
                    f"{len(engine.live_peers())} of {count} peers connected after {timeout} s"
                )
            await asyncio.sleep(0.005)
        return len(engine.live_peers())

    async def keys(self, pattern: str = "*") -> list[str]:
        """Sorted live keys matching the glob ``pattern`` (``fnmatch``, case-sensitive).

        Includes keys whose value is held only by peers: the cluster's key space.
        """
        replica, _, _ = self._running()
        _check_pattern(pattern)
        if self._shared is not None:
            return await self._shared.keys(pattern)
        live = replica.live_keys(self._clock())
        if pattern == "*":
            return sorted(live)
        match = compile_pattern(pattern).match
        return sorted(k for k in live if match(k))

    # -------------------------------------------------------------- writes
    def _apply_set(self, key: str, stored: object, ttl: float | None) -> None:
        """Write a stored value locally; ``ttl`` was checked by the caller."""
        _, engine, _ = self._running()
        self._writable()
        seconds = self._config.default_ttl if ttl is None else ttl
        now = self._clock()
        engine.set(key, stored, now, None if seconds is None else now + seconds)
        self._writes += 1
        self._after_write(key=key)

    def _writable(self) -> None:
        """Redis mode: refuse a write before applying it if Redis cannot take it."""
        if self._shared is not None:
            self._shared.check_writable()

    def _after_write(self, *, as_invalidate: bool = False, key: str | None = None) -> None:
        assert self._engine is not None
        self._on_changes(self._engine.drain_changes(), as_invalidate=as_invalidate)
        self._enforce(keep=key)

    async def _replicate(self, what: str) -> None:
        _, engine, runtime = self._running()
        if self._config.sync_strategy != "write-through":
            runtime.wake()
            return
        # In redis mode the wait includes Redis's commit even without other instances.
        waited = bool(engine.live_peers()) or self._shared is not None
        started = time.perf_counter()
        missing = await runtime.flush(ack=True, timeout=self.write_timeout)
        if missing:
            self._ack_failures += 1
            raise PeerError(
                f"{what} was not acknowledged within {self.write_timeout:g} s by "
                f"{', '.join(sorted(missing))}; it is applied on this node and reaches "
                "them by anti-entropy"
            )
        if waited:
            self._ack_window.add((time.perf_counter() - started) * 1000.0)

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (None: ``default_ttl``).

        Raises :class:`ValidationError` (schema) or :class:`SerializationError` (key
        or value) before anything is written, :class:`ConfigError` for a bad ``ttl``;
        with write-through, :class:`PeerError` naming the peers that did not ack in
        ``write_timeout`` (the value stays applied here).
        """
        self._running()
        check_key(key)
        check_ttl(ttl)
        self._apply_set(key, self._codec.dump(key, value), ttl)
        await self._replicate(f"set {key!r}")

    async def delete(self, key: str) -> bool:
        """Delete ``key`` on every node; True if it was live here.

        Raises like :meth:`set` for a bad key or a write-through timeout.
        """
        return await self._delete(key, as_invalidate=False)

    async def invalidate(self, key: str) -> bool:
        """Like :meth:`delete`, reported as an ``invalidate`` event on this node.

        Peers see a delete: both are the same replicated tombstone.
        """
        return await self._delete(key, as_invalidate=True)

    async def _delete(self, key: str, *, as_invalidate: bool) -> bool:
        replica, engine, _ = self._running()
        check_key(key)
        self._writable()
        existed = False
        if self._shared is not None and replica.lookup(key, self._clock()) is None:
            existed = await self._shared.live(key)  # "live here" is "live in Redis"
        existed = engine.delete(key, self._clock()) or existed
        self._writes += 1
        self._after_write(as_invalidate=as_invalidate)
        await self._replicate(f"{'invalidate' if as_invalidate else 'delete'} {key!r}")
        return existed

    async def invalidate_pattern(self, pattern: str) -> int:
        """Remove every key matching the glob on every node, as one replicated tombstone.

        The tombstone also covers matching keys written before it that this node
        has not received yet. Returns how many keys it removed here.
        """
        _, engine, _ = self._running()
        _check_pattern(pattern)
        self._writable()
        removed = len(engine.invalidate_pattern(pattern, self._clock()))
        self._writes += 1
        self._after_write()
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
            stored = self._codec.dump(key, await _maybe_await(loader()))
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

    # ------------------------------------------------------ change handling
    def _on_changes(
        self, changes: list[Change], *, as_invalidate: bool = False, restored: bool = False
    ) -> None:
        """Count and report visible changes (local and remote; see module doc).

        ``as_invalidate`` reports a local delete as an invalidation; ``restored``
        changes (from a snapshot) are not replication and are not timed.
        """
        left = self._tier.left
        listeners = self._listeners
        on_change = self._config.on_change
        metrics = self._metrics
        now = None
        for c in changes:
            kind = c.kind
            if kind == "delete" and as_invalidate and not c.remote:
                kind = "invalidate"
            if c.remote and not restored:
                now = now if now is not None else self._clock()
                self._last_sync = now
                latency = max(0.0, now * 1000.0 - ts_ms(c.ts))
                self._sync_window.add(latency)
                if metrics is not None:
                    metrics.sync_latency(latency / 1000.0)
            if kind != "set" and c.key in left:
                reason = "ttl" if kind == "expire" else "explicit"
                self._count_eviction(c.key, reason)
            if listeners[kind]:
                self._emit(
                    CacheEvent(kind, c.key, origin=c.origin, remote=c.remote, pattern=c.pattern)
                )
            if on_change is not None:
                self._call(on_change, ChangeEvent(c.key, kind, c.origin, c.remote, c.ts, c.pattern))
        left.clear()

    def _count_eviction(self, key: str, reason: str) -> None:
        self._evictions[reason] += 1
        if self._metrics is not None:
            self._metrics.eviction(reason)
        if self._listeners["eviction"]:
            self._emit(CacheEvent("eviction", key, reason=reason))

    def _enforce(self, keep: str | None = None) -> None:
        """Evict until the tier's bounds hold again (sparing ``keep``, just written,
        and keys a reader is fetching: a fill must not be evicted before it is read)."""
        if not self._tier.over or self._replica is None:
            return
        spare = set(self._fetching)
        if keep is not None:
            spare.add(keep)
        evicted = self._tier.evict_over(
            self._replica, self._clock(), forget=self._forget, keep=spare
        )
        for key, reason in evicted:
            self._count_eviction(key, reason)

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
        if event.state == ALIVE and event.previous in (None, DEAD):
            name = "peer_up"
        elif event.state == DEAD and event.previous != DEAD:
            name = "peer_down"
        else:
            return
        if self._metrics is not None and self._engine is not None:
            live = len(self._engine.live_peers())
            if self._shared is not None and self._runtime is not None:
                live = int(self._runtime.statistics()["instances"]) - 1  # redis: instances
            self._metrics.peers(live)
        if self._listeners[name]:
            self._emit(CacheEvent(name, peer=event.peer, address=self._peer_address(event.peer)))

    def _peer_address(self, peer: str) -> str | None:
        if self._runtime is None:
            return None
        address = self._runtime.statistics().get("peer_addresses", {}).get(peer)
        return address if isinstance(address, str) else None

    # --------------------------------------------------------------- events
    def on(self, event: str, callback: Callback) -> Callable[[], None]:
        """Call ``callback(CacheEvent)`` on ``event``; returns an unsubscribe function.

        ``event`` is one of hit, miss, set, delete, invalidate, expire, eviction,
        peer_up, peer_down. Callbacks may be sync or async; one that raises is logged
        and never breaks the cache. Raises :class:`ConfigError` for an unknown event.
        """
        if event not in self._listeners:
            raise ConfigError(f"unknown event {event!r}; one of {', '.join(EVENTS)}")
        if not callable(callback):
            raise ConfigError("callback must be callable")
        callbacks = self._listeners[event]
        callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in callbacks:
                callbacks.remove(callback)

        return unsubscribe

    def _emit(self, event: CacheEvent) -> None:
        for callback in tuple(self._listeners[event.name]):
            self._call(callback, event)

    def _call(self, callback: Callback, arg: object) -> None:
        try:
            result = callback(arg)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._callback_done)
        except Exception:
            log.exception("callback %r failed", callback)

    def _callback_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("callback failed", exc_info=task.exception())

    def _rule_handler(self, rule: InvalidationRule) -> Callable[[str, Any], Awaitable[None]]:
        async def handle(event: str, data: Any) -> None:
            try:
                target = rule.render(data)
            except LookupError as exc:
                log.warning("%s on %r: %s; nothing invalidated", rule, event, exc)
                return
            write = self.invalidate_pattern(target) if rule.is_glob else self.invalidate(target)
            if asyncio.get_running_loop() is self._loop:
                await write
            else:  # emitted in another thread's loop (SyncCache): run it in ours
                assert self._loop is not None
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(write, self._loop))

        return handle

    # -------------------------------------------------------------- refresh
    async def _refresh_forever(self) -> None:
        interval = self._config.refresh_interval
        assert interval is not None
        while True:
            await asyncio.sleep(interval)
            try:
                await self._refresh_round()
            except CacheError as exc:
                log.warning("refresh round stopped: %s", exc)

    async def _refresh_round(self) -> int:
        """Reload every live value this node wrote last; returns how many were set.

        Only the node that wrote a key refreshes it, so a cluster reloads each key
        once per round, not once per node.
        """
        replica, _, _ = self._running()
        refresh = self._config.refresh
        assert refresh is not None
        now = self._clock()
        mine = [
            key
            for key, e in replica.entries.items()
            if e.origin == self._node_id
            and e.value is not TOMBSTONE
            and e.value is not NOT_HELD
            and (e.expires is None or e.expires > now)
        ]
        done = 0
        for key in mine:
            try:
                value = await _maybe_await(refresh(key))
            except Exception:
                log.exception("refresh of %r failed; keeping the current value", key)
                continue
            if replica.lookup(key, self._clock()) is None:
                continue  # deleted while reloading: do not bring it back
            try:
                await self.set(key, value)
            except PeerError as exc:
                log.warning("refresh: %s", exc)
            except (SerializationError, ConfigError, CacheError) as exc:
                log.warning("refresh of %r returned a value that cannot be stored: %s", key, exc)
                continue
            done += 1
        return done

    # ------------------------------------------------------------ snapshots
    async def snapshot(self) -> bytes:
        """This node's whole replica (values, tombstones, stamps) as self-checking bytes.

        Raises :class:`SerializationError` if it would exceed ``MAX_SNAPSHOT_BYTES``.
        """
        replica, _, _ = self._running()
        if self._shared is not None:
            return await self._shared.snapshot()
        return encode_snapshot(replica, self._clock())

    async def restore(self, data: bytes) -> int:
        """Merge a snapshot into this node; returns how many keys it changed here.

        A CRDT merge: an old snapshot never overwrites newer values, and restoring
        twice changes nothing the second time; peers get what they lack by
        anti-entropy. Values written by other nodes pass the schema like any remote
        value. Raises :class:`CorruptStateError` or :class:`SerializationError` for bad
        bytes and :class:`ClockDriftError` for stamps too far ahead, with nothing changed.
        """
        replica, _, _ = self._running()
        if self._shared is not None:
            changes = await self._shared.restore(data)
        else:
            changes = restore_snapshot(replica, data, self._clock())
        self._on_changes(changes, restored=True)
        self._enforce()
        return len(changes)

    # ----------------------------------------------------------- reporting
    async def get_statistics(self) -> CacheStatistics:
        """Counters of this node: tiers, evictions, cluster, traffic, latencies."""
        replica, engine, runtime = self._running()
        transport = runtime.statistics()
        addresses = transport.get("peer_addresses", {})
        listed = transport.get("peers")
        if listed is not None:  # a runtime that tracks members itself (redis: instances)
            peers = tuple(PeerStatistics(*p) for p in listed)
            instances = int(transport.get("instances", 1 + len(peers)))
        else:
            peers = tuple(
                PeerStatistics(p.id, addresses.get(p.id), p.state)
                for p in sorted(engine.peers.values(), key=lambda p: p.id)
            )
            instances = 1 + len(engine.live_peers())
        now = self._clock()
        if self._shared is not None:
            live_keys = await self._shared.size()
        else:
            live_keys = sum(1 for _ in replica.live_keys(now))
        hits, misses = self._local_hits, self._local_misses
        dh, dm = self._dist_hits, self._dist_misses
        return CacheStatistics(
            node_id=self._node_id,
            backend=self._config.backend,
            sync_strategy=self._config.sync_strategy,
            local=TierStatistics(hits, misses, rate(hits, misses), self._tier.count),
            distributed=TierStatistics(dh, dm, rate(dh, dm), live_keys),
            overall=OverallStatistics(rate(hits + dh, misses - dh)),
            evictions=EvictionStatistics(**self._evictions),
            cluster=ClusterStatistics(
                instances=instances,
                peers=peers,
                last_sync_time=self._last_sync,
                sync_latency_ms=self._sync_window.summary(),
            ),
            traffic=TrafficStatistics(
                bytes_sent=int(transport.get("bytes_sent", 0)),
                bytes_received=int(transport.get("bytes_received", 0)),
                frames_sent=int(transport.get("frames_sent", 0)),
                frames_received=int(transport.get("frames_received", 0)),
            ),
            write_ack_ms=self._ack_window.summary(),
            refused_values=self._tier.refused,
            refused_drift=engine.stats.refused_drift,
        )

    def health(self) -> Health:
        """A 0-100 score with the reason for every point taken off.

        Looks at peers (suspect or down), sync latency, hit rate, eviction pressure,
        refused stamps and values, write-through timeouts and dropped events.
        """
        if self._state != _RUNNING or self._engine is None:
            return Health(0, ("not running",))
        engine = self._engine
        reasons: list[str] = []
        score = 100

        def take(points: int, reason: str) -> None:
            nonlocal score
            score -= points
            reasons.append(f"-{points}: {reason}")

        transport = self._runtime.statistics() if self._runtime is not None else {}
        listed = transport.get("peers")
        states = (
            [(p[0], p[2]) for p in listed]
            if listed is not None
            else [(p.id, p.state) for p in engine.peers.values()]
        )
        for points, problem in transport.get("problems", ()):  # the runtime's own findings
            take(points, problem)
        for state, each, label in ((SUSPECT, 10, "suspect"), (DEAD, 15, "down")):
            ids = sorted(peer for peer, peer_state in states if peer_state == state)
            if ids:
                take(min(30, each * len(ids)), f"{len(ids)} peer(s) {label}: {', '.join(ids)}")
        p99 = self._sync_window.summary().p99
        if p99 is not None and p99 > 1000:
            take(20, f"sync latency p99 {p99:.0f} ms")
        elif p99 is not None and p99 > 100:
            take(10, f"sync latency p99 {p99:.0f} ms")
        lookups = self._local_hits + self._local_misses
        hit_rate = rate(self._local_hits + self._dist_hits, self._local_misses - self._dist_hits)
        if lookups >= 100 and hit_rate < 0.5:
            take(10, f"hit rate {hit_rate:.0%} over {lookups} lookups")
        pressure = self._evictions["size"] + self._evictions["memory"]
        if self._writes >= 100 and pressure > self._writes // 4:
            take(10, f"{pressure} evictions for {self._writes} writes: the local tier is small")
        if engine.stats.refused_drift:
            take(15, f"{engine.stats.refused_drift} stamps refused for clock drift")
        if self._tier.refused:
            take(10, f"{self._tier.refused} values from peers refused by the schema")
        if self._ack_failures:
            take(20, f"{self._ack_failures} write-through writes not acknowledged in time")
        if engine.stats.events_dropped:
            take(5, f"{engine.stats.events_dropped} change events dropped")
        return Health(max(0, score), tuple(reasons))

    def __repr__(self) -> str:
        return (
            f"<Cache {self._node_id} backend={self._config.backend} "
            f"strategy={self._config.sync_strategy} {self._state}>"
        )


def _check_pattern(pattern: object) -> None:
    if type(pattern) is not str or not pattern:
        raise SerializationError("a pattern must be a non-empty str (an fnmatch glob)")
    if len(pattern) > MAX_KEY_CHARS:
        raise SerializationError(f"pattern of {len(pattern)} characters exceeds {MAX_KEY_CHARS}")


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value
