"""The options of a cache, defined once: a frozen, validated dataclass.

:class:`CacheOptions` is the one definition of every option: its name, its type (with
``Literal`` types where only some values are valid, so mypy refuses
``backend="memroy"``), its default, and its check. :class:`~crdtcache.Cache` and
:class:`~crdtcache.SyncCache` take the same keyword arguments through
:func:`takes_options`, which gives their ``__init__`` the dataclass's signature for
type checkers; at run time the keywords build a :class:`CacheOptions`, whose
``__post_init__`` validates everything before anything starts. Every check raises
:class:`ConfigError` naming the option and what it accepts.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import os
import ssl as _ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, Final, Literal, ParamSpec, TypeVar, get_args
from urllib.parse import parse_qs, urlsplit

from crdtcache._errors import ConfigError
from crdtcache.cache._events import ChangeEvent, EventBus, InvalidationRule
from crdtcache.core import (
    DEFAULT_MAX_VALUE_BYTES,
    MAX_KEY_CHARS,
    MAX_VALUE_BYTES,
    Version,
    last_writer_wins,
)
from crdtcache.core._format import MAX_CLUSTER_CHARS, MAX_NODE_ID_CHARS
from crdtcache.metrics import Metrics, check_metrics
from crdtcache.runtime.redis._topology import SINGLE, parse_redis_url, redact_url
from crdtcache.transport import Network, parse_address, tls_option
from crdtcache.wire._auth import keyring

__all__ = [
    "BACKENDS",
    "DEFAULT_REDIS_URL",
    "DISCOVERY",
    "PICKLE_RISK",
    "SERIALIZERS",
    "STRATEGIES",
    "Backend",
    "CacheOptions",
    "DiscoveryMode",
    "Serializer",
    "SerializerName",
    "SyncStrategy",
    "check_ttl",
    "takes_options",
]

Backend = Literal["memory", "p2p", "redis"]
SyncStrategy = Literal["write-through", "write-behind", "on-demand"]
DiscoveryMode = Literal["mdns", "static", "none"]
SerializerName = Literal["msgpack", "pickle"]
#: ``serializer=``: a name, or a ``(dumps, loads)`` pair turning a value into bytes and back.
Serializer = SerializerName | tuple[Callable[[Any], bytes], Callable[[bytes], Any]]
BACKENDS: Final = get_args(Backend)
SERIALIZERS: Final = get_args(SerializerName)
STRATEGIES: Final = get_args(SyncStrategy)
DISCOVERY: Final = get_args(DiscoveryMode)
#: Where ``backend="redis"`` connects when ``redis_url`` is not given.
DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"

# Options that have no meaning for a backend, with what to do instead: refusing them
# beats silently ignoring them (a secret that protects nothing, a file that would serve
# stale data after a restart). Only a value other than the default is refused.
_NOT_FOR: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "redis": (
        ("seeds", "instances find each other through Redis"),
        ("discovery", "instances find each other through Redis"),
        ("listen", "instances talk to Redis only, they listen nowhere"),
        ("secret", "Redis authenticates with the password in redis_url (redis://user:pw@host)"),
        ("ssl", "use a rediss:// URL (ssl_* query parameters set the certificates)"),
        (
            "persist_path",
            "the data lives in Redis (use its persistence); a hot tier kept on disk would "
            "be stale after a restart",
        ),
        (
            "conflict_resolver",
            "Redis enforces last-writer-wins atomically in a Lua script, where a Python "
            "resolver cannot run (the built-in last_writer_wins is what the script runs "
            "and is accepted). Running yours in the client instead would turn every write "
            "into a read, a resolve and a compare-and-swap per key (no batch of writes in "
            "one script), and a value the resolver kept under an older stamp would break "
            "the stamp order the instances' invalidations rely on. Resolve before calling "
            "set (get, merge, set), or use backend='p2p', where every replica runs the "
            "resolver",
        ),
    ),
    "memory": (
        ("seeds", "a memory cache has no peers (use backend='p2p')"),
        ("discovery", "a memory cache has no peers to find (use backend='p2p')"),
        ("listen", "a memory cache listens nowhere (use backend='p2p')"),
        ("ssl", "a memory cache has no peers to talk TLS to (use backend='p2p')"),
    ),
    "p2p": (),
}
# The largest max_value_bytes each backend carries. Every reader of records is given
# the node's own limit (GossipConfig.max_value_bytes): the wire codec, whose frames grow
# with it (wire._framing.frame_limit), the snapshot and store readers, and Redis's.
_MOST_VALUE_BYTES: Final = {
    "memory": MAX_VALUE_BYTES,
    "p2p": MAX_VALUE_BYTES,
    "redis": MAX_VALUE_BYTES,
}
#: Why ``serializer="pickle"`` needs a cluster secret or TLS (said by the refusal).
PICKLE_RISK: Final = (
    "loading a pickle runs code chosen by whoever wrote it, so any peer that can write "
    "to this cache could run code on every node that reads the value"
)
_BACKEND_ONLY: Final = (
    ("redis_url", "redis"),
    ("local_max_size", "redis"),
    ("local_ttl", "redis"),
)


def _seconds(option: str, value: object, *, optional: bool) -> float | None:
    if value is None and optional:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        more = " or None" if optional else ""
        raise ConfigError(f"{option} must be a positive number of seconds{more}, not {value!r}")
    return float(value)


def check_ttl(ttl: object) -> float | None:
    """Return ``ttl`` as float seconds (None: no expiry), or raise ``ConfigError``."""
    return _seconds("ttl", ttl, optional=True)


def _count(option: str, value: object) -> None:
    if value is not None and (type(value) is not int or value < 1):
        raise ConfigError(f"{option} must be a positive int or None, not {value!r}")


def _address(option: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{option} must be a 'host:port' str, not {type(value).__name__}")
    try:
        parse_address(value)
    except ConfigError as exc:
        raise ConfigError(f"{option}: {exc}") from None
    return value


def _limit(option: str, value: object, most: int, why: str = "") -> None:
    if type(value) is not int or not 1 <= value <= most:
        raise ConfigError(f"{option} must be an int from 1 to {most}{why}, not {value!r:.40}")


def _redis_authenticated(url: str | None) -> bool:
    """Whether a Redis URL authenticates the client (a password) or uses TLS."""
    if url is None:
        return False
    try:
        target = parse_redis_url(url)
    except ValueError:
        return False  # refused elsewhere, with the reason
    if target.kind != SINGLE:
        return target.authenticated
    parts = urlsplit(url)
    return target.tls or bool(parts.password or parse_qs(parts.query).get("password"))


def _callable(option: str, value: object) -> None:
    if value is not None and not callable(value):
        raise ConfigError(f"{option} must be callable or None, not {type(value).__name__}")


def _choice(option: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{option} must be one of {', '.join(allowed)}; got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheOptions:
    """Every option of a cache, validated on construction (see :class:`~crdtcache.Cache`).

    Raises :class:`ConfigError` for the first invalid option. ``_clock`` is a testing
    hook: the wall clock the node stamps writes and expiries with. ``_network`` is
    another (p2p only): where the node's streams and randomness come from, as
    :class:`crdtcache.testing.MemoryNetwork` sets it.

    Examples:
        >>> import crdtcache
        >>> from crdtcache.cache import CacheOptions
        >>> options = CacheOptions(backend="memory", max_size=100)
        >>> options.max_size, options.sync_strategy, options.listen
        (100, 'write-behind', '127.0.0.1:0')
        >>> try:
        ...     CacheOptions(backend="redis", seeds=["10.0.0.2:7946"])
        ... except crdtcache.ConfigError as exc:
        ...     print(exc)
        seeds does not apply to backend='redis': instances find each other through Redis
    """

    #: ``"memory"`` (one process), ``"p2p"`` (peers over TCP) or ``"redis"``.
    backend: Backend = "p2p"
    #: This node's id: random unless given; with ``persist_path``, the file's.
    node_id: str | None = None
    #: Name that isolates groups of nodes on one network.
    cluster: str = "default"
    #: ``host:port`` for peer traffic (p2p).
    listen: str = "127.0.0.1:0"
    #: How peers are found (p2p): mDNS, the ``seeds`` only, or not at all.
    discovery: DiscoveryMode = "mdns"
    #: ``host:port`` of peers to dial (p2p, in every discovery mode).
    seeds: Sequence[str] = ()
    #: The server of ``backend="redis"`` (default ``redis://127.0.0.1:6379/0``).
    redis_url: str | None = None
    #: SQLite file that keeps the replica across restarts.
    persist_path: str | os.PathLike[str] | None = None
    #: Most values held here (LRU); eviction is local, a peer may serve the value again.
    max_size: int | None = 10_000
    #: Most bytes (keys and stored values) held here.
    max_memory: int | None = None
    #: Seconds a value lives when ``set`` gives no ``ttl``.
    default_ttl: float | None = None
    #: Redis mode: the hot tier's bound (default ``max_size``).
    local_max_size: int | None = None
    #: Redis mode: seconds a value stays in the hot tier (default: until invalidated).
    local_ttl: float | None = None
    #: When a write reaches peers (see the README's sync strategies).
    sync_strategy: SyncStrategy = "write-behind"
    #: The longest (seconds) a write-behind write waits to be sent: p2p sends a write
    #: at once when idle and batches only under load; Redis mode pipelines this often.
    sync_interval: float = 0.005
    #: ``resolver(local, remote) -> winner`` replacing last-writer-wins.
    conflict_resolver: Callable[[Version, Version], Version] | None = None
    #: A pydantic model, dataclass or TypeAdapter, or a callable validator.
    schema: Any = None
    #: How values become bytes: ``"msgpack"`` (the built-in value types), ``"pickle"``
    #: (only with ``secret`` or ``ssl``), or a ``(dumps, loads)`` pair; after ``schema``.
    serializer: Serializer = "msgpack"
    #: Largest value, in bytes of its encoding (str: UTF-8; others: packed or serialized).
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    #: Longest key, in characters (at most 1024).
    max_key_chars: int = MAX_KEY_CHARS
    #: An :class:`~crdtcache.EventBus` whose events the ``invalidation_rules`` follow.
    event_bus: EventBus | None = None
    invalidation_rules: Sequence[InvalidationRule] = ()
    #: Called with every visible change, local or remote.
    on_change: Callable[[ChangeEvent], Any] | None = None
    #: Run at start with the cache.
    warm_up: Callable[[Any], Any] | None = None
    #: Every ``refresh_interval`` seconds, ``refresh(key)`` reloads the keys written here.
    refresh_interval: float | None = None
    refresh: Callable[[str], Any] | None = None
    #: Where hits, misses, evictions and latencies are reported.
    metrics: Metrics | None = None
    #: Cluster secret (bytes), or a list of them during a rotation (p2p).
    secret: bytes | Sequence[bytes] | None = None
    #: Mutual TLS: a (server, client) context pair, or one context (p2p).
    ssl: _ssl.SSLContext | tuple[_ssl.SSLContext, _ssl.SSLContext] | None = None
    #: ``host:port`` of the live dashboard (the ``dashboard`` extra).
    dashboard: str | None = None
    _clock: Callable[[], float] = time.time
    _network: Network | None = None

    def __post_init__(self) -> None:
        _choice("backend", self.backend, BACKENDS)
        _choice("sync_strategy", self.sync_strategy, STRATEGIES)
        _choice("discovery", self.discovery, DISCOVERY)
        self._check_names()
        self._check_backend()  # first: an option that does not apply says so, however set
        self._check_network()
        self._check_storage()
        self._check_callbacks()
        self._check_events()
        self._check_values()

    def _set(self, option: str, value: object) -> None:
        # Normalising a frozen dataclass in its own __post_init__.
        object.__setattr__(self, option, value)

    def _check_names(self) -> None:
        node_id = self.node_id
        if node_id is not None and (
            not isinstance(node_id, str)
            or not node_id
            or len(node_id) > MAX_NODE_ID_CHARS
            or not node_id.isprintable()
            or any(c.isspace() for c in node_id)
        ):
            raise ConfigError(
                f"node_id must be a non-empty printable str without spaces of at most "
                f"{MAX_NODE_ID_CHARS} characters, or None; got {node_id!r}"
            )
        cluster = self.cluster
        if not isinstance(cluster, str) or not cluster or len(cluster) > MAX_CLUSTER_CHARS:
            raise ConfigError(
                f"cluster must be a non-empty str of at most {MAX_CLUSTER_CHARS} characters"
            )

    def _check_network(self) -> None:
        _address("listen", self.listen)
        seeds = self.seeds
        if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
            raise ConfigError("seeds must be a list of 'host:port' strings, not a single str")
        self._set("seeds", tuple(_address("seeds", s) for s in seeds))
        if self.secret is not None:
            keyring(self.secret)  # bytes or a list of bytes (rotation), each long enough
        tls_option(self.ssl)
        if self.dashboard is not None:
            _address("dashboard", self.dashboard)

    def _check_storage(self) -> None:
        path = self.persist_path
        if path is not None:
            if not isinstance(path, (str, os.PathLike)):
                raise ConfigError("persist_path must be a str or path-like, or None")
            path = os.fspath(path)
            if not isinstance(path, str) or not path:
                raise ConfigError("persist_path must name a file")
            self._set("persist_path", path)
        for option in ("max_size", "max_memory", "local_max_size"):
            _count(option, getattr(self, option))
        for option in ("default_ttl", "local_ttl", "refresh_interval"):
            self._set(option, _seconds(option, getattr(self, option), optional=True))
        self._set("sync_interval", _seconds("sync_interval", self.sync_interval, optional=False))

    def _check_callbacks(self) -> None:
        for option in ("conflict_resolver", "on_change", "warm_up", "refresh", "_clock"):
            _callable(option, getattr(self, option))
        if (self.refresh_interval is None) != (self.refresh is None):
            raise ConfigError("refresh_interval and refresh go together: give both or neither")
        check_metrics(self.metrics)
        if self._network is not None and self.backend != "p2p":
            raise ConfigError("_network applies to backend='p2p' only")

    def _check_backend(self) -> None:
        defaults = _DEFAULTS
        for option, backend in _BACKEND_ONLY:
            if getattr(self, option) is not None and self.backend != backend:
                raise ConfigError(f"{option} applies to backend={backend!r} only")
        if self.backend == "redis" and self.conflict_resolver is last_writer_wins:
            self._set("conflict_resolver", None)  # what Redis's scripts run: the default
        for option, instead in _NOT_FOR[self.backend]:
            if getattr(self, option) not in (defaults[option], ()):
                raise ConfigError(f"{option} does not apply to backend={self.backend!r}: {instead}")
        if self.backend == "redis":
            if importlib.util.find_spec("redis") is None:
                raise ConfigError("backend='redis' needs redis-py: pip install 'crdtcache[redis]'")
            url = self.redis_url
            if url is None:
                self._set("redis_url", DEFAULT_REDIS_URL)
            elif not isinstance(url, str) or "://" not in url:
                raise ConfigError("redis_url must be a URL such as 'redis://host:6379/0'")
            else:
                try:
                    parse_redis_url(url)
                except ValueError as exc:
                    raise ConfigError(f"redis_url {exc} (not {redact_url(url)!r})") from None

    def _check_events(self) -> None:
        rules = self.invalidation_rules
        if isinstance(rules, (str, bytes)) or not hasattr(rules, "__iter__"):
            raise ConfigError("invalidation_rules must be a list of InvalidationRule")
        rules = tuple(rules)
        for rule in rules:
            if not isinstance(rule, InvalidationRule):
                raise ConfigError(f"invalidation_rules must hold InvalidationRule, not {rule!r}")
        self._set("invalidation_rules", rules)
        bus = self.event_bus
        if rules and bus is None:
            raise ConfigError("invalidation_rules need an event_bus to listen to")
        if bus is not None and not callable(getattr(bus, "on", None)):
            raise ConfigError("event_bus must be an EventBus (with .on(event, handler))")

    def _check_values(self) -> None:
        most = _MOST_VALUE_BYTES[self.backend]
        why = f" on backend={self.backend!r}" if most < MAX_VALUE_BYTES else ""
        _limit("max_value_bytes", self.max_value_bytes, most, why)
        _limit("max_key_chars", self.max_key_chars, MAX_KEY_CHARS)
        serializer = self.serializer
        if isinstance(serializer, str) and serializer in SERIALIZERS:
            if serializer == "pickle":
                self._check_pickle()
        elif (
            isinstance(serializer, (tuple, list))
            and len(serializer) == 2
            and all(callable(f) for f in serializer)
        ):
            self._set("serializer", tuple(serializer))
        else:
            raise ConfigError(
                "serializer must be 'msgpack', 'pickle' or a (dumps, loads) pair of "
                f"callables; got {serializer!r:.60}"
            )

    def _check_pickle(self) -> None:
        # Pickle is safe only where nobody untrusted can write: p2p with a cluster
        # secret or mutual TLS; Redis behind a password or TLS (the redis equivalent:
        # secret= and ssl= do not apply there); memory has no one else who writes.
        if self.backend == "p2p" and self.secret is None and self.ssl is None:
            raise ConfigError(
                f"serializer='pickle' needs secret= or ssl= on backend='p2p': {PICKLE_RISK}. "
                "A cluster secret or mutual TLS lets only trusted nodes write. Without "
                "them, keep the default serializer (schema= or a (dumps, loads) pair "
                "carry other types)"
            )
        if self.backend == "redis" and not _redis_authenticated(self.redis_url):
            raise ConfigError(
                "serializer='pickle' needs a password in redis_url "
                f"(redis://:password@host) or a rediss:// URL on backend='redis': {PICKLE_RISK}"
            )

    @property
    def shared_store(self) -> bool:
        """Whether the data lives in a shared store (Redis) rather than in the replica."""
        return self.backend == "redis"


_DEFAULTS: Final = {
    "seeds": (),
    "discovery": "mdns",
    "listen": "127.0.0.1:0",
    "secret": None,
    "ssl": None,
    "persist_path": None,
    "conflict_resolver": None,
}

P = ParamSpec("P")
T = TypeVar("T")


def takes_options(
    options: Callable[P, Any],
) -> Callable[[Callable[..., None]], Callable[Concatenate[Any, P], None]]:
    """Give an ``__init__(self, **options)`` the keyword signature of ``options``.

    Only type checkers see a difference: ``Cache(backend="memroy")`` or a misspelt
    option is an error there, from the one definition in :class:`CacheOptions`.
    """

    def decorate(init: Callable[..., None]) -> Callable[Concatenate[Any, P], None]:
        # And ``inspect.signature`` (help(), IDEs, docs) sees the options too.
        fields = inspect.signature(options).parameters.values()
        self_ = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        init.__signature__ = inspect.Signature([self_, *fields])  # type: ignore[attr-defined]  # functions take any attribute
        return init

    return decorate
