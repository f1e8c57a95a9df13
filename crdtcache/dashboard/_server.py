"""The dashboard's HTTP side: an aiohttp application in the cache's own event loop.

Routes (all ``GET``, ``HEAD`` too):

* ``/`` and its two static files: the live page (no CDN; works on an isolated LAN);
* ``/events``: server-sent events, a ``hello`` (newest frame, history, feed) and then
  one ``sample`` a second; at most ``MAX_STREAMS`` at once, and a page that does not
  take a frame within ``WRITE_TIMEOUT`` is dropped (it reconnects by itself);
* ``/api/stats``: ``Cache.get_statistics()`` as JSON; ``/api/snapshot``: what a page
  gets first, for polling clients;
* ``/metrics``: Prometheus text: the cache's ``PrometheusMetrics`` registry if it has
  one, plus what that exporter lacks (keys, memory, health, traffic); without one,
  the same names rendered from the statistics;
* ``/healthz``: ``Cache.health()`` as JSON, HTTP 503 when the score is below
  ``HEALTHY_SCORE`` (70: ``Health.healthy``).

Access rules are in :mod:`crdtcache.dashboard._access`. aiohttp's exceptions stop
here: a bind failure becomes :class:`ConfigError`, a page that went away ends its
stream quietly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.resources
import logging
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler

from crdtcache._errors import ConfigError
from crdtcache.dashboard._access import BindPolicy, is_loopback_host
from crdtcache.dashboard._monitor import (
    HEALTHY_SCORE,
    Monitor,
    render_metrics,
    sse_event,
    to_json,
)

if TYPE_CHECKING:
    from crdtcache.cache._view import CacheView

__all__ = ["MAX_STREAMS", "WRITE_TIMEOUT", "Dashboard", "start_dashboard"]

log = logging.getLogger(__name__)

#: Live pages (event streams) served at once; more get 503.
MAX_STREAMS: Final = 32
#: Seconds a page may take to accept one frame before its stream is dropped.
WRITE_TIMEOUT: Final = 10.0
#: Seconds ``close()`` waits for open requests once the streams have been told to end.
SHUTDOWN_TIMEOUT: Final = 1.0
_STATIC: Final = {
    "/": ("index.html", "text/html"),
    "/dashboard.css": ("dashboard.css", "text/css"),
    "/dashboard.js": ("dashboard.js", "text/javascript"),
}
_OPEN_PATHS: Final = frozenset((*_STATIC, "/healthz", "/favicon.ico"))
_PROMETHEUS_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _host_name(host: str) -> str:
    """The name part of a ``Host`` header (``[::1]:80`` -> ``[::1]``, ``a:80`` -> ``a``)."""
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0]


def _static(name: str) -> bytes:
    return importlib.resources.files("crdtcache.dashboard").joinpath("static", name).read_bytes()


class Dashboard:
    """A dashboard serving one cache; made by :func:`start_dashboard` (or ``dashboard=``).

    ``url`` is where it listens once started (``http://host:port/``).

    Examples:
        ```python
        import crdtcache

        async with crdtcache.Cache(backend="memory", dashboard="127.0.0.1:0") as cache:
            assert cache.dashboard_url.startswith("http://127.0.0.1:")
            # the page, /api/stats, /metrics and /healthz are served from there
        ```
    """

    def __init__(self, cache: CacheView, policy: BindPolicy) -> None:
        self._cache = cache
        self._policy = policy
        self.monitor = Monitor(cache)
        self._runner: web.AppRunner | None = None
        self._streams: set[asyncio.Task[Any]] = set()
        self._files = {path: (_static(name), kind) for path, (name, kind) in _STATIC.items()}
        self.url = ""

    @property
    def token(self) -> str | None:
        """The access token data routes require (None when they are open)."""
        return self._policy.token

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Start sampling and listening; raises :class:`ConfigError` if it cannot bind."""
        policy = self._policy
        app = web.Application(middlewares=[self._guard], client_max_size=1024)
        for path in self._files:
            app.router.add_get(path, self._file)
        app.router.add_get("/events", self._events, allow_head=False)
        app.router.add_get("/api/stats", self._stats)
        app.router.add_get("/api/snapshot", self._snapshot)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        await self.monitor.start()
        try:
            await runner.setup()
            site = web.TCPSite(runner, policy.host, policy.port, reuse_address=True)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            await self.monitor.close()
            raise ConfigError(
                f"dashboard cannot listen on {policy.host}:{policy.port}: {exc}"
            ) from exc
        self._runner = runner
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}/"
        log.info("dashboard of %s at %s", self._cache.node_id, self.url)

    async def close(self) -> None:
        """End every stream and stop listening; idempotent."""
        await self.monitor.close()  # wakes every stream, which then ends
        if self._streams:
            await asyncio.wait(set(self._streams), timeout=SHUTDOWN_TIMEOUT)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Dashboard:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------- plumbing
    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        policy = self._policy
        if policy.loopback and not is_loopback_host(_host_name(request.host)):
            # DNS rebinding: a page elsewhere that resolved its name to 127.0.0.1.
            raise web.HTTPForbidden(text="this dashboard answers to loopback host names only")
        if policy.tokens and request.path not in _OPEN_PATHS:
            given = request.query.get("token", "")
            auth = request.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                given = auth[7:].strip()
            # Every token compared, so the time taken says nothing about which matched.
            matched = [hmac.compare_digest(given.encode(), t.encode()) for t in policy.tokens]
            if not any(matched):
                raise web.HTTPUnauthorized(
                    text="this dashboard needs its access token (?token= or a Bearer header)",
                    headers={"WWW-Authenticate": 'Bearer realm="crdtcache"'},
                )
        response = await handler(request)
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @staticmethod
    def _json(data: Any, status: int = 200) -> web.Response:
        return web.Response(
            text=to_json(data),
            status=status,
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    # --------------------------------------------------------------- routes
    async def _file(self, request: web.Request) -> web.Response:
        body, kind = self._files[request.path]
        return web.Response(
            body=body, content_type=kind, charset="utf-8", headers={"Cache-Control": "no-cache"}
        )

    async def _stats(self, request: web.Request) -> web.Response:
        stats = await self._cache.statistics()
        return self._json(stats.as_dict())

    async def _snapshot(self, request: web.Request) -> web.Response:
        return self._json(self.monitor.hello())

    async def _healthz(self, request: web.Request) -> web.Response:
        health = self._cache.health()
        healthy = health.score >= HEALTHY_SCORE
        body = {
            "node_id": self._cache.node_id,
            "score": health.score,
            "healthy": healthy,
            "threshold": HEALTHY_SCORE,
            "reasons": list(health.reasons),
        }
        return self._json(body, 200 if healthy else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        cache = self._cache
        stats = await cache.statistics()
        exporter = cache.metrics
        registry = getattr(exporter, "registry", None)
        text = ""
        if registry is not None:
            from prometheus_client import generate_latest

            text = generate_latest(registry).decode("utf-8")
        text += render_metrics(
            stats, cache.health(), memory=cache.memory_bytes, counters=registry is None
        )
        return web.Response(
            body=text.encode("utf-8"),
            headers={"Content-Type": _PROMETHEUS_TYPE, "Cache-Control": "no-store"},
        )

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if len(self._streams) >= MAX_STREAMS:
            raise web.HTTPServiceUnavailable(text="too many live pages open on this dashboard")
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
                **_HEADERS,
            }
        )
        monitor = self.monitor
        try:
            await response.prepare(request)
            seq = monitor.seq
            first = b"retry: 2000\n\n" + sse_event("hello", monitor.hello(), event_id=seq)
            await asyncio.wait_for(response.write(first), WRITE_TIMEOUT)
            while (got := await monitor.next_frame(seq)) is not None:
                seq, data = got
                await asyncio.wait_for(response.write(data), WRITE_TIMEOUT)
        except (ConnectionError, TimeoutError):
            pass  # the page went away or stalled; it reconnects by itself if it can
        finally:
            self._streams.discard(task)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response


async def start_dashboard(cache: CacheView, policy: BindPolicy) -> Dashboard:
    """Start a :class:`Dashboard` for a started cache (its view) in the running loop."""
    dashboard = Dashboard(cache, policy)
    await dashboard.start()
    return dashboard
