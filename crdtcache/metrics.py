"""Metrics a cache reports into, and a Prometheus exporter.

A cache given ``metrics=`` calls the :class:`Metrics` methods as things happen. Hits
on a ``SyncCache`` are reported from its callers' threads, so an implementation used
there must be thread-safe (``PrometheusMetrics`` is: prometheus_client locks).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from crdtcache._errors import ConfigError

__all__ = ["Metrics", "PrometheusMetrics", "check_metrics"]

_METHODS = ("hit", "miss", "eviction", "sync_latency", "peers")


@runtime_checkable
class Metrics(Protocol):
    """What a cache reports; every method must be cheap and must not raise.

    Any object with these five methods will do (a ``typing.Protocol``).

    Examples:
        ```python
        import collections
        import crdtcache

        class Counting:
            def __init__(self) -> None:
                self.counts: collections.Counter[str] = collections.Counter()

            def hit(self, source: str) -> None:
                self.counts[f"hit:{source}"] += 1

            def miss(self) -> None:
                self.counts["miss"] += 1

            def eviction(self, reason: str) -> None:
                self.counts[f"eviction:{reason}"] += 1

            def sync_latency(self, seconds: float) -> None:
                self.counts["synced"] += 1

            def peers(self, count: int) -> None:
                self.counts["peers"] = count

        metrics = Counting()
        async with crdtcache.Cache(backend="memory", metrics=metrics) as cache:
            await cache.set("k", "v")
            await cache.get("k")
            await cache.get("absent")
        assert metrics.counts == {"hit:local": 1, "miss": 1}
        ```
    """

    def hit(self, source: str) -> None:
        """A lookup was answered; ``source`` is "local" or "distributed"."""
        ...

    def miss(self) -> None:
        """A lookup found nothing on this node or its peers."""
        ...

    def eviction(self, reason: str) -> None:
        """A value left the local tier ("ttl", "size", "memory" or "explicit")."""
        ...

    def sync_latency(self, seconds: float) -> None:
        """A change from a peer was applied ``seconds`` after its origin stamp."""
        ...

    def peers(self, count: int) -> None:
        """The number of live peers changed to ``count``."""
        ...


def check_metrics(metrics: object) -> Metrics | None:
    """Return ``metrics`` if it offers every :class:`Metrics` method, else raise ConfigError.

    The cache calls it on its ``metrics=`` option.

    Examples:
        >>> import crdtcache
        >>> from crdtcache.metrics import check_metrics
        >>> try:
        ...     check_metrics(object())
        ... except crdtcache.ConfigError as exc:
        ...     print(exc)
        metrics must implement crdtcache.metrics.Metrics;
        missing hit, miss, eviction, sync_latency, peers
    """
    if metrics is None:
        return None
    missing = [m for m in _METHODS if not callable(getattr(metrics, m, None))]
    if missing:
        raise ConfigError(
            f"metrics must implement crdtcache.metrics.Metrics; missing {', '.join(missing)}"
        )
    return metrics  # type: ignore[return-value]  # checked method by method above


class PrometheusMetrics:
    """Exports cache metrics with ``prometheus_client`` (the ``prometheus`` extra).

    Metrics (prefixed by ``namespace``): ``cache_hits_total{source}``,
    ``cache_misses_total``, ``cache_evictions_total{reason}``,
    ``sync_latency_seconds`` (histogram) and ``peers`` (gauge). Pass a
    ``CollectorRegistry`` as ``registry`` to run several caches in one process.
    Raises :class:`ConfigError` if prometheus_client is not installed.

    Examples:
        ```python
        import crdtcache
        from crdtcache.metrics import PrometheusMetrics
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry()
        metrics = PrometheusMetrics(registry=registry)
        async with crdtcache.Cache(backend="memory", metrics=metrics) as cache:
            await cache.get("absent")
        assert b"crdtcache_cache_misses_total 1.0" in generate_latest(registry)
        ```
    """

    def __init__(self, *, namespace: str = "crdtcache", registry: Any = None) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            raise ConfigError(
                "PrometheusMetrics needs prometheus_client: pip install 'crdtcache[prometheus]'"
            ) from None
        registry = prom.REGISTRY if registry is None else registry
        self.registry = registry
        self._hits = prom.Counter(
            "cache_hits", "Lookups answered", ["source"], namespace=namespace, registry=registry
        )
        self._misses = prom.Counter(
            "cache_misses", "Lookups not answered", namespace=namespace, registry=registry
        )
        self._evictions = prom.Counter(
            "cache_evictions",
            "Values that left the local tier",
            ["reason"],
            namespace=namespace,
            registry=registry,
        )
        self._latency = prom.Histogram(
            "sync_latency_seconds",
            "Origin stamp to local apply of changes from peers",
            namespace=namespace,
            registry=registry,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
        )
        self._peers = prom.Gauge("peers", "Live peers", namespace=namespace, registry=registry)

    def hit(self, source: str) -> None:
        """Count a hit from ``source``."""
        self._hits.labels(source).inc()

    def miss(self) -> None:
        """Count a miss."""
        self._misses.inc()

    def eviction(self, reason: str) -> None:
        """Count an eviction for ``reason``."""
        self._evictions.labels(reason).inc()

    def sync_latency(self, seconds: float) -> None:
        """Observe one replication latency."""
        self._latency.observe(seconds)

    def peers(self, count: int) -> None:
        """Set the live peer gauge."""
        self._peers.set(count)
