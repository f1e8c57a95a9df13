"""A live dashboard for one cache node: page, ``/api/stats``, ``/metrics``, ``/healthz``.

Start it with ``Cache(dashboard="127.0.0.1:8080")`` (it runs and stops with the cache),
or for a started cache with ``await crdtcache.dashboard.serve(cache, "127.0.0.1:8080")``
(the command line does this). It runs in the cache's own event loop, on aiohttp:
``pip install 'crdtcache[dashboard]'``.

The page shows, once a second and without reloading: every peer with its state,
address, last heartbeat and lag; hit rate by tier, keys, memory, sync latency p50/p99
and evictions by reason over the last five minutes; the changes as they happen; and a
drawing of the cluster as this node sees it. ``/api/stats`` is
``Cache.get_statistics()`` as JSON, ``/metrics`` Prometheus text, ``/healthz``
``Cache.health()`` as JSON with HTTP 503 below :data:`HEALTHY_SCORE`.

Who may reach it: loopback only, unless the cache has a ``secret`` (then data routes
need :func:`access_token`) or the operator opts in (``public=True`` or
``CRDTCACHE_DASHBOARD_PUBLIC=1``). See :mod:`crdtcache.dashboard._access`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from crdtcache._errors import ConfigError
from crdtcache.cache._services import ServiceStarter, register_service
from crdtcache.dashboard._access import PUBLIC_ENV, BindPolicy, access_token, bind_policy
from crdtcache.dashboard._monitor import (
    FEED_SIZE,
    HEALTHY_SCORE,
    HISTORY,
    SAMPLE_INTERVAL,
)

if TYPE_CHECKING:
    from crdtcache.cache._cache import Cache
    from crdtcache.cache._view import CacheView
    from crdtcache.dashboard._server import Dashboard

__all__ = [
    "FEED_SIZE",
    "HEALTHY_SCORE",
    "HISTORY",
    "PUBLIC_ENV",
    "SAMPLE_INTERVAL",
    "Dashboard",
    "access_token",
    "policy",
    "serve",
]


def policy(
    address: str, *, secret: bytes | Sequence[bytes] | None, public: bool | None = None
) -> BindPolicy:
    """Check that a dashboard can be served at ``address`` and return how.

    Raises :class:`ConfigError` if aiohttp is not installed, the address is malformed,
    or it is not loopback without a ``secret`` or an opt-in (see the module doc).

    Examples:
        >>> import crdtcache
        >>> from crdtcache.dashboard import policy
        >>> policy("127.0.0.1:8080", secret=None)
        BindPolicy(host='127.0.0.1', port=8080, loopback=True, tokens=())
        >>> try:
        ...     policy("0.0.0.0:8080", secret=None)
        ... except crdtcache.ConfigError as exc:
        ...     print(exc)
        dashboard '0.0.0.0:8080' is not a loopback address: ...
        >>> len(policy("0.0.0.0:8080", secret=b"s" * 32).tokens)  # data routes need a token
        1
    """
    if importlib.util.find_spec("aiohttp") is None:
        raise ConfigError("the dashboard needs aiohttp: pip install 'crdtcache[dashboard]'")
    return bind_policy(address, secret=secret, public=public)


async def serve(
    cache: Cache, address: str = "127.0.0.1:8080", *, public: bool | None = None
) -> Dashboard:
    """Serve a dashboard for a started ``cache`` in the running loop; returns it.

    ``address`` is ``host:port`` (port 0 picks one: see ``Dashboard.url``);
    ``public`` as in :func:`policy`, whose errors it raises, and
    :class:`ConfigError` if the address cannot be bound. Close it with
    ``await dashboard.close()`` (or ``async with``) before closing the cache.

    Examples:
        ```python
        import asyncio
        import json
        import urllib.request
        import crdtcache
        from crdtcache.dashboard import serve

        async with crdtcache.Cache(backend="memory") as cache:
            dashboard = await serve(cache, "127.0.0.1:0")  # port 0: any free port
            try:
                url = dashboard.url + "healthz"
                body = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read())
                assert json.loads(body)["score"] == 100
            finally:
                await dashboard.close()
        ```
    """
    view = cache.view()
    chosen = policy(address, secret=view.options.secret, public=public)
    from crdtcache.dashboard._server import start_dashboard

    return await start_dashboard(view, chosen)


def _prepare(address: str, secret: bytes | Sequence[bytes] | None) -> ServiceStarter:
    """``Cache(dashboard=address)``: checked when the cache is built, started with it."""
    chosen = policy(address, secret=secret)

    async def start(view: CacheView) -> Dashboard:
        from crdtcache.dashboard._server import start_dashboard

        return await start_dashboard(view, chosen)

    return start


register_service("dashboard", _prepare)


def __getattr__(name: str) -> Any:
    if name == "Dashboard":  # imported on use: it needs aiohttp
        from crdtcache.dashboard._server import Dashboard

        return Dashboard
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
