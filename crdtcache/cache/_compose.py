"""The composition root: from validated options to a running node's parts.

Everything that depends on the backend is decided here, once: which runtime moves the
engine's messages, whether the replica is backed by a SQLite file, whether evicted
keys keep their stubs. :class:`~crdtcache.Cache` receives the parts and never asks
which backend it runs on.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from crdtcache._errors import ConfigError
from crdtcache.cache._options import CacheOptions
from crdtcache.cache._tier import LocalTier
from crdtcache.core import GossipConfig, GossipEngine, HybridClock, Replica
from crdtcache.runtime._memory import LocalRuntime
from crdtcache.runtime._protocol import Runtime
from crdtcache.store._persistence import Persistence

__all__ = ["Parts", "assemble", "choose_node_id"]


@dataclass(slots=True)
class Parts:
    """What a started cache runs on."""

    replica: Replica
    engine: GossipEngine
    runtime: Runtime
    persistence: Persistence | None


def choose_node_id(options: CacheOptions) -> str:
    """This node's id before start (a file may replace it with the id it stores).

    Without its data a p2p node must never speak for its earlier writes (its marks
    would claim writes it no longer holds), so a given id gets a per-start suffix
    unless ``persist_path`` keeps the data; in redis mode two instances started with
    one id would also take each other's invalidations for their own and ignore them.
    """
    stable = options.persist_path is not None or options.backend == "memory"
    network = options._network  # a simulated network draws ids from its seed
    token = uuid.uuid4().hex if network is None else network.random().randbytes(16).hex()
    if options.node_id is not None and not stable:
        return f"{options.node_id}~{token[:6]}"
    return options.node_id or token[:12]


def assemble(
    options: CacheOptions, node_id: str, tier: LocalTier, clock: Callable[[], float]
) -> Parts:
    """Open the store (if any), build the replica, engine and runtime for ``options``.

    Raises :class:`ConfigError` or :class:`~crdtcache.PersistenceError` (nothing is left
    open then).
    """
    persistence: Persistence | None = None
    # Only p2p peers ask a replica what they lack: elsewhere no change log is kept.
    peers_ask = options.backend == "p2p"
    if options.persist_path is not None:
        assert isinstance(options.persist_path, str)  # normalised by CacheOptions
        persistence = Persistence(options.persist_path, max_value_bytes=options.max_value_bytes)
        replica = persistence.open(
            node_id=options.node_id,
            new_id=node_id,
            now=clock(),
            resolver=options.conflict_resolver,
            max_held=options.max_size,
            clock=clock,  # rows past the first few load after start
            change_log=peers_ask,
        )
    else:
        replica = Replica(
            HybridClock(node_id), resolver=options.conflict_resolver, change_log=peers_ask
        )
    tier.node = replica.node
    tier.attach(replica)
    engine = GossipEngine(
        replica,
        random.Random() if options._network is None else options._network.random(),
        GossipConfig(
            sync_interval=options.sync_interval,
            on_demand=options.sync_strategy == "on-demand",
            max_value_bytes=options.max_value_bytes,
        ),
    )
    try:
        runtime = _runtime(options, engine, clock, keeps_stubs=persistence is not None)
    except BaseException:
        if persistence is not None:
            persistence.store.close()
        raise
    if persistence is not None:
        runtime.keep_durable(persistence)
        load = persistence.load
        if load is not None:
            # The replica's marks claim rows not loaded yet: no peer may adopt them,
            # and no full state may make this node forget only what is loaded.
            engine.hold_exchanges()
            load.on_done = lambda: engine.release_exchanges(clock())
    return Parts(replica, engine, runtime, persistence)


def _runtime(
    options: CacheOptions,
    engine: GossipEngine,
    clock: Callable[[], float],
    *,
    keeps_stubs: bool,
) -> Runtime:
    if options.backend == "memory":
        return LocalRuntime(engine, clock=clock, keeps_stubs=keeps_stubs)
    if options.backend == "redis":
        try:
            from crdtcache.runtime.redis._runtime import RedisRuntime
        except ImportError as exc:  # checked by the options; a broken install lands here
            raise ConfigError(f"backend='redis' needs 'crdtcache[redis]': {exc}") from exc
        assert options.redis_url is not None  # the options fill in the default
        return RedisRuntime(
            engine,
            url=options.redis_url,
            cluster=options.cluster,
            strategy=options.sync_strategy,
            sync_interval=options.sync_interval,
            local_ttl=options.local_ttl,
            clock=clock,
        )
    from crdtcache.runtime._p2p import P2PRuntime

    return P2PRuntime.build(
        engine,
        clock=clock,
        listen=options.listen,
        cluster=options.cluster,
        discovery=options.discovery,
        seeds=options.seeds,
        secret=options.secret,
        ssl=options.ssl,
        network=options._network,
    )
