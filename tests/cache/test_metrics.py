"""Metrics reported by the cache, and the Prometheus exporter."""

from __future__ import annotations

import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from crdtcache import ConfigError
from crdtcache.metrics import Metrics, PrometheusMetrics, check_metrics

from .conftest import FakeClock, memory_cache, remote_push


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def hit(self, source: str) -> None:
        self.calls.append(("hit", source))

    def miss(self) -> None:
        self.calls.append(("miss", None))

    def eviction(self, reason: str) -> None:
        self.calls.append(("eviction", reason))

    def sync_latency(self, seconds: float) -> None:
        self.calls.append(("sync_latency", round(seconds, 3)))

    def peers(self, count: int) -> None:
        self.calls.append(("peers", count))


async def test_cache_reports_into_metrics(clock: FakeClock) -> None:
    recorder = Recorder()
    assert isinstance(recorder, Metrics)
    async with memory_cache(clock, metrics=recorder, max_size=1) as cache:
        await cache.set("a", 1)
        await cache.get("a")
        await cache.get("b")
        await cache.set("b", 1)  # evicts a
        remote_push(cache, {"r": 1}, at=clock.now - 0.002)
        await cache.delete("b")
        from crdtcache.core import PeerEvent

        cache._on_peer(PeerEvent("p", "alive", None))
    assert recorder.calls[:4] == [
        ("hit", "local"),
        ("miss", None),
        ("eviction", "size"),
        ("sync_latency", 0.002),
    ]
    assert ("eviction", "explicit") in recorder.calls
    assert recorder.calls[-1] == ("peers", 1)


def test_metrics_must_offer_every_method() -> None:
    class Half:
        def hit(self, source: str) -> None: ...

    with pytest.raises(ConfigError, match="miss"):
        check_metrics(Half())
    with pytest.raises(ConfigError):
        memory_cache(metrics=Half())  # type: ignore[arg-type]


async def test_prometheus_exporter(clock: FakeClock) -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry=registry, namespace="t")
    async with memory_cache(clock, metrics=metrics) as cache:
        await cache.set("a", 1)
        await cache.get("a")
        await cache.get("zz")
        await cache.delete("a")
        remote_push(cache, {"r": 1})
        metrics.peers(3)
    text = generate_latest(registry).decode()
    assert 't_cache_hits_total{source="local"} 1.0' in text
    assert "t_cache_misses_total 1.0" in text
    assert 't_cache_evictions_total{reason="explicit"} 1.0' in text
    assert "t_sync_latency_seconds_count 1.0" in text
    assert "t_peers 3.0" in text


def test_prometheus_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigError, match=r"crdtcache\[prometheus\]"):
        PrometheusMetrics()
