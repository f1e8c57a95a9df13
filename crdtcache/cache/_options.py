"""The options of a :class:`~crdtcache.Cache`, validated once, before anything starts.

Every check raises :class:`ConfigError` naming the option and what it accepts, so a
misconfigured cache fails at construction rather than on first use.
"""

from __future__ import annotations

import importlib.util
import math
import os
import ssl as _ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from crdtcache._errors import ConfigError
from crdtcache.core._format import MAX_CLUSTER_CHARS, MAX_NODE_ID_CHARS
from crdtcache.transport._tls import tls_option
from crdtcache.wire._auth import keyring

__all__ = [
    "BACKENDS",
    "DEFAULT_REDIS_URL",
    "DISCOVERY",
    "STRATEGIES",
    "CacheConfig",
    "check_ttl",
]

BACKENDS: Final = ("memory", "p2p", "redis")
STRATEGIES: Final = ("write-through", "write-behind", "on-demand")
DISCOVERY: Final = ("mdns", "static", "none")
#: Where ``backend="redis"`` connects when ``redis_url`` is not given.
DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
# Options of the p2p transport or replica that have no meaning against Redis, with
# what to do instead: refusing them beats silently ignoring them (a secret that
# protects nothing, a file that would serve stale data after a restart).
_NOT_FOR_REDIS: Final = (
    ("seeds", "instances find each other through Redis"),
    ("secret", "Redis authenticates with the password in redis_url (redis://user:pw@host)"),
    ("ssl", "use a rediss:// URL (ssl_* query parameters set the certificates)"),
    (
        "persist_path",
        "the data lives in Redis (use its persistence); a hot tier kept on disk would be "
        "stale after a restart",
    ),
    (
        "conflict_resolver",
        "Redis enforces last-writer-wins atomically in a Lua script, where a Python "
        "resolver cannot run",
    ),
)


def _address(option: str, value: object) -> str:
    from crdtcache.transport import parse_address

    if not isinstance(value, str):
        raise ConfigError(f"{option} must be a 'host:port' str, not {type(value).__name__}")
    try:
        parse_address(value)
    except ConfigError as exc:
        raise ConfigError(f"{option}: {exc}") from None
    return value


def _count(option: str, value: object, *, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if type(value) is not int or value < 1:
        raise ConfigError(f"{option} must be a positive int{' or None' if optional else ''}")
    return value


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


def _redis_url(options: dict[str, Any]) -> str:
    """Validate the options of ``backend="redis"``; returns the URL to connect to."""
    if importlib.util.find_spec("redis") is None:
        raise ConfigError("backend='redis' needs redis-py: pip install 'crdtcache[redis]'")
    for option, instead in _NOT_FOR_REDIS:
        if options[option]:
            raise ConfigError(f"{option} does not apply to backend='redis': {instead}")
    url = options["redis_url"]
    if url is None:
        return DEFAULT_REDIS_URL
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError("redis_url must be a URL such as 'redis://host:6379/0'")
    if url.split("://", 1)[0].lower() not in ("redis", "rediss", "unix"):
        raise ConfigError("redis_url must start with redis://, rediss:// or unix://")
    return url


def check_ttl(ttl: object) -> float | None:
    """Return ``ttl`` as float seconds (None: no expiry), or raise ``ConfigError``."""
    return _seconds("ttl", ttl, optional=True)


def _callable(option: str, value: object) -> Any:
    if value is not None and not callable(value):
        raise ConfigError(f"{option} must be callable or None, not {type(value).__name__}")
    return value


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """The validated options of one cache (see :class:`~crdtcache.Cache` for each)."""

    backend: str
    node_id: str | None
    cluster: str
    listen: str
    discovery: str
    seeds: tuple[str, ...]
    redis_url: str | None
    persist_path: str | None
    max_size: int | None
    max_memory: int | None
    default_ttl: float | None
    local_max_size: int | None
    local_ttl: float | None
    sync_strategy: str
    sync_interval: float
    conflict_resolver: Callable[..., Any] | None
    on_change: Callable[..., Any] | None
    warm_up: Callable[..., Any] | None
    refresh_interval: float | None
    refresh: Callable[..., Any] | None
    secret: bytes | Sequence[bytes] | None
    ssl: _ssl.SSLContext | tuple[_ssl.SSLContext, _ssl.SSLContext] | None
    dashboard: str | None

    @classmethod
    def build(cls, **options: Any) -> CacheConfig:
        """Validate raw options; raises :class:`ConfigError` for the first bad one."""
        o = options
        backend = o["backend"]
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        node_id = o["node_id"]
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
        cluster = o["cluster"]
        if not isinstance(cluster, str) or not cluster or len(cluster) > MAX_CLUSTER_CHARS:
            raise ConfigError(
                f"cluster must be a non-empty str of at most {MAX_CLUSTER_CHARS} characters"
            )
        discovery = o["discovery"]
        if discovery not in DISCOVERY:
            raise ConfigError(f"discovery must be one of {', '.join(DISCOVERY)}; got {discovery!r}")
        seeds = o["seeds"]
        if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
            raise ConfigError("seeds must be a list of 'host:port' strings, not a single str")
        seeds = tuple(_address("seeds", s) for s in seeds)
        redis_url = o["redis_url"]
        if redis_url is not None and backend != "redis":
            raise ConfigError("redis_url applies to backend='redis' only")
        if backend == "redis":
            redis_url = _redis_url(o)
        for option in ("local_max_size", "local_ttl"):
            if o[option] is not None and backend != "redis":
                raise ConfigError(f"{option} (the hot tier) applies to backend='redis' only")
        persist_path = o["persist_path"]
        if persist_path is not None:
            if not isinstance(persist_path, (str, os.PathLike)):
                raise ConfigError("persist_path must be a str or path-like, or None")
            persist_path = os.fspath(persist_path)
            if not isinstance(persist_path, str) or not persist_path:
                raise ConfigError("persist_path must name a file")
        strategy = o["sync_strategy"]
        if strategy not in STRATEGIES:
            raise ConfigError(
                f"sync_strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}"
            )
        refresh_interval = _seconds("refresh_interval", o["refresh_interval"], optional=True)
        refresh = _callable("refresh", o["refresh"])
        if (refresh_interval is None) != (refresh is None):
            raise ConfigError("refresh_interval and refresh go together: give both or neither")
        secret = o["secret"]
        if secret is not None:
            keyring(secret)  # bytes or a list of bytes (rotation), each long enough
        ssl = o["ssl"]
        tls_option(ssl)
        dashboard = o["dashboard"]
        if dashboard is not None:
            _address("dashboard", dashboard)
        if o["conflict_resolver"] is not None and not callable(o["conflict_resolver"]):
            raise ConfigError("conflict_resolver must be callable(local, remote) -> winner")
        return cls(
            backend=backend,
            node_id=node_id,
            cluster=cluster,
            listen=_address("listen", o["listen"]),
            discovery=discovery,
            seeds=seeds,
            redis_url=redis_url,
            persist_path=persist_path,
            max_size=_count("max_size", o["max_size"], optional=True),
            max_memory=_count("max_memory", o["max_memory"], optional=True),
            default_ttl=_seconds("default_ttl", o["default_ttl"], optional=True),
            local_max_size=_count("local_max_size", o["local_max_size"], optional=True),
            local_ttl=_seconds("local_ttl", o["local_ttl"], optional=True),
            sync_strategy=strategy,
            sync_interval=_seconds("sync_interval", o["sync_interval"], optional=False) or 0.0,
            conflict_resolver=o["conflict_resolver"],
            on_change=_callable("on_change", o["on_change"]),
            warm_up=_callable("warm_up", o["warm_up"]),
            refresh_interval=refresh_interval,
            refresh=refresh,
            secret=secret,
            ssl=ssl,
            dashboard=dashboard,
        )
