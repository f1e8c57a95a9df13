"""The dashboard over HTTP: routes, headers, access rules, event stream, lifecycle."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from crdtcache import Cache, ConfigError, Health, SyncCache
from crdtcache.dashboard import PUBLIC_ENV, access_token, serve
from crdtcache.dashboard import _monitor as monitor_module
from crdtcache.dashboard import _server as server
from crdtcache.metrics import PrometheusMetrics
from tests.dashboard.helpers import fetch, fetch_json, node_process, p2p_cluster, wait_for


def url_of(cache: Cache) -> str:
    assert cache.dashboard_url is not None
    return cache.dashboard_url


async def test_page_and_static_files(memory_dashboard: Cache) -> None:
    base = url_of(memory_dashboard)
    assert base.startswith("http://127.0.0.1:")
    status, headers, body = await fetch(base)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="dashboard.js"' in body and b"http" not in body.split(b"<body>")[0]
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, headers, body = await fetch(base + "dashboard.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert b"EventSource" in body
    status, headers, _ = await fetch(base + "dashboard.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css")
    status, _, body = await fetch(base, method="HEAD")
    assert status == 200 and body == b""


async def test_unknown_routes_and_methods(memory_dashboard: Cache) -> None:
    base = url_of(memory_dashboard)
    assert (await fetch(base + "nope"))[0] == 404
    assert (await fetch(base + "api/stats", method="POST"))[0] == 405
    assert (await fetch(base + "static/../../etc/passwd"))[0] == 404


async def test_api_stats_is_the_statistics(memory_dashboard: Cache) -> None:
    await memory_dashboard.set("a", 1)
    await memory_dashboard.get("a")
    status, body = await fetch_json(url_of(memory_dashboard) + "api/stats")
    expected = json.loads(json.dumps((await memory_dashboard.get_statistics()).as_dict()))
    assert status == 200 and body == expected
    assert body["node_id"] == "solo" and body["local"]["hits"] == 1


async def test_healthz(memory_dashboard: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    url = url_of(memory_dashboard) + "healthz"
    status, body = await fetch_json(url)
    assert status == 200
    assert body == {
        "node_id": "solo",
        "score": 100,
        "healthy": True,
        "threshold": 70,
        "reasons": [],
    }
    monkeypatch.setattr(memory_dashboard, "health", lambda: Health(70, ("-30: x",)))
    assert (await fetch_json(url))[0] == 200
    monkeypatch.setattr(memory_dashboard, "health", lambda: Health(69, ("-31: y",)))
    status, body = await fetch_json(url)
    assert status == 503 and body["healthy"] is False and body["reasons"] == ["-31: y"]


async def test_metrics_without_an_exporter(memory_dashboard: Cache) -> None:
    await memory_dashboard.set("a", 1)
    status, headers, body = await fetch(url_of(memory_dashboard) + "metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["crdtcache_keys"].samples[0].value == 1
    assert "crdtcache_cache_hits" in families and "crdtcache_health_score" in families


async def test_metrics_with_prometheus_exporter() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry=registry)
    async with Cache(
        backend="memory", metrics=metrics, dashboard="127.0.0.1:0", node_id="p"
    ) as cache:
        await cache.set("a", 1)
        await cache.get("a")
        status, _, body = await fetch(url_of(cache) + "metrics")
    text = body.decode()
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    hits = {s.labels["source"]: s.value for s in families["crdtcache_cache_hits"].samples}
    assert hits["local"] == 1
    assert "crdtcache_sync_latency_seconds" in families  # the exporter's histogram
    assert families["crdtcache_keys"].samples[0].value == 1  # what it lacks, added
    assert text.count("# TYPE crdtcache_cache_hits_total ") == 1


async def test_event_stream_sends_hello_then_samples(
    memory_dashboard: Cache, events: Callable[[str], Any]
) -> None:
    stream = await events(url_of(memory_dashboard) + "events")
    assert stream.response.headers["Content-Type"] == "text/event-stream"
    name, hello = await stream.next()
    assert name == "hello"
    assert hello["latest"]["node"]["id"] == "solo" and isinstance(hello["history"], list)
    await memory_dashboard.set("user:\n1", {"x": 1})  # a key that could break an SSE line
    name, frame = await stream.next()
    assert name == "sample" and frame["seq"] > hello["latest"]["seq"]
    ops = [(c["op"], c["key"]) for c in frame["changes"]]
    assert ("set", "user:\n1") in ops
    assert frame["keys"] == 1 and frame["instances"] == 1


async def test_snapshot_for_polling_clients(memory_dashboard: Cache) -> None:
    await memory_dashboard.set("k", 1)
    dashboard = memory_dashboard._running_services[0]
    assert dashboard is not None
    await dashboard.monitor.sample()
    status, body = await fetch_json(url_of(memory_dashboard) + "api/snapshot")
    assert status == 200 and body["latest"]["keys"] == 1
    assert [c["key"] for c in body["feed"]] == ["k"]


async def test_dns_rebinding_is_refused(memory_dashboard: Cache) -> None:
    base = url_of(memory_dashboard)
    port = base.rstrip("/").rsplit(":", 1)[1]
    assert (await fetch(base + "api/stats", headers={"Host": f"evil.example:{port}"}))[0] == 403
    assert (await fetch(base + "api/stats", headers={"Host": f"localhost:{port}"}))[0] == 200
    assert (await fetch(base + "api/stats", headers={"Host": f"[::1]:{port}"}))[0] == 200


async def test_public_bind_with_secret_needs_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PUBLIC_ENV, raising=False)
    secret = b"k" * 32
    async with Cache(backend="memory", secret=secret, dashboard="0.0.0.0:0") as cache:
        port = url_of(cache).rstrip("/").rsplit(":", 1)[1]
        base = f"http://127.0.0.1:{port}/"
        token = access_token(secret)
        for path in ("api/stats", "metrics", "events", "api/snapshot"):
            status, headers, _ = await fetch(base + path)
            assert status == 401, path
            assert headers["WWW-Authenticate"].startswith("Bearer")
        assert (await fetch(base + "api/stats?token=" + "0" * 32))[0] == 401
        assert (await fetch(base + "api/stats?token=" + token))[0] == 200
        auth = {"Authorization": f"Bearer {token}"}
        assert (await fetch(base + "metrics", headers=auth))[0] == 200
        # The page holds no data, and orchestrators probe /healthz without a token.
        assert (await fetch(base))[0] == 200
        assert (await fetch(base + "dashboard.js"))[0] == 200
        assert (await fetch(base + "healthz"))[0] == 200


async def test_rotation_accepts_the_token_of_each_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PUBLIC_ENV, raising=False)
    new, old, other = b"n" * 32, b"o" * 32, b"x" * 32
    async with Cache(backend="memory", secret=[new, old], dashboard="0.0.0.0:0") as cache:
        port = url_of(cache).rstrip("/").rsplit(":", 1)[1]
        stats = f"http://127.0.0.1:{port}/api/stats?token="
        assert (await fetch(stats + access_token(new)))[0] == 200
        assert (await fetch(stats + access_token(old)))[0] == 200
        assert (await fetch(stats + access_token(other)))[0] == 401


async def test_explicit_public_bind_is_open(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PUBLIC_ENV, "1")
    async with Cache(backend="memory", dashboard="0.0.0.0:0") as cache:
        port = url_of(cache).rstrip("/").rsplit(":", 1)[1]
        status, _, _ = await fetch(
            f"http://127.0.0.1:{port}/api/stats", headers={"Host": f"cache.example:{port}"}
        )
        assert status == 200


async def test_bind_failure_is_a_config_error_and_closes_the_cache() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cache = Cache(backend="p2p", discovery="none", dashboard=f"127.0.0.1:{port}")
        with pytest.raises(ConfigError, match="cannot listen"):
            await cache.start()
    assert cache._state == "closed" and cache.dashboard_url is None
    runtime = cache._runtime
    assert runtime is not None and runtime.statistics().connections == 0


async def test_close_ends_streams_promptly(events: Callable[[str], Any]) -> None:
    cache = Cache(backend="memory", dashboard="127.0.0.1:0")
    await cache.start()
    stream = await events(url_of(cache) + "events")
    assert (await stream.next())[0] == "hello"
    loop = asyncio.get_running_loop()
    started = loop.time()
    await cache.close()
    assert loop.time() - started < 2.0
    with pytest.raises((EOFError, ConnectionError, TimeoutError)):
        while True:
            await stream.next(timeout=2.0)
    assert cache.dashboard_url is None


async def test_stream_limit(
    memory_dashboard: Cache, events: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "MAX_STREAMS", 1)
    first = await events(url_of(memory_dashboard) + "events")
    assert (await first.next())[0] == "hello"
    assert (await fetch(url_of(memory_dashboard) + "events"))[0] == 503


async def test_dashboard_closed_with_its_cache_releases_pages(
    events: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(monitor_module, "SAMPLE_INTERVAL", 0.05)
    cache = Cache(backend="memory")
    await cache.start()
    dashboard = await serve(cache, "127.0.0.1:0")
    stream = await events(dashboard.url + "events")
    assert (await stream.next())[0] == "hello"
    await cache.close()  # before the dashboard: its sampler stops, pages are let go
    with pytest.raises((EOFError, ConnectionError, TimeoutError)):
        while True:
            await stream.next(timeout=3.0)
    await dashboard.close()


def test_dashboard_class_is_exported() -> None:
    import crdtcache.dashboard

    assert crdtcache.dashboard.Dashboard is server.Dashboard
    with pytest.raises(AttributeError):
        crdtcache.dashboard.nothing  # noqa: B018


async def test_serve_for_a_started_cache() -> None:
    async with Cache(backend="memory", node_id="cli") as cache:
        assert cache.dashboard_url is None
        async with await serve(cache, "127.0.0.1:0") as dashboard:
            assert dashboard.token is None
            status, body = await fetch_json(dashboard.url + "healthz")
            assert status == 200 and body["node_id"] == "cli"
        with pytest.raises(OSError):
            await fetch(dashboard.url + "healthz")
        with pytest.raises(ConfigError):
            await serve(cache, "0.0.0.0:0", public=False)


def test_sync_cache_serves_a_dashboard() -> None:
    with SyncCache(backend="memory", node_id="sync", dashboard="127.0.0.1:0") as cache:
        cache.set("k", 1)
        url = cache.dashboard_url
        assert url is not None
        with urllib.request.urlopen(url + "api/stats", timeout=5) as response:
            body = json.loads(response.read())
        assert body["node_id"] == "sync" and body["distributed"]["size"] == 1


async def test_p2p_peers_lag_and_failures_on_the_dashboard() -> None:
    a, b = await p2p_cluster(2)
    try:
        assert a.address is not None
        async with node_process("n2", a.address) as (c, process):
            await wait_for(lambda: len(a._engine.live_peers()) == 2, timeout=10)  # type: ignore[union-attr]
            await b.set("from-b", 1)
            await b.set("also-b", 2)
            dashboard = a._running_services[0]
            assert dashboard is not None
            monitor = dashboard.monitor
            await wait_for(lambda: len(a._replica.entries) == 2)  # type: ignore[union-attr]
            got = await monitor.sample()
            peers = {p["id"]: p for p in got["peers"]}
            assert set(peers) == {b.node_id, c}
            assert all(p["state"] == "alive" and p["linked"] for p in peers.values())
            assert peers[b.node_id]["address"] == b.address
            assert peers[b.node_id]["last_write_ms"] is not None
            assert peers[c]["last_write_ms"] is None and peers[c]["behind_ms"] == 0
            assert got["instances"] == 3 and got["keys"] == 2
            remote = {(ch["key"], ch["origin"]) for ch in got["changes"] if ch["remote"]}
            assert remote == {("from-b", b.node_id), ("also-b", b.node_id)}
            assert got["point"]["sync_samples"] == 2 and got["point"]["sync_p50"] is not None

            # Killed (no goodbye): suspect at once, the link lost, then dead.
            process.kill()
            await process.wait()

            async def state_of(peer: str) -> str | None:
                views = {p["id"]: p for p in (await monitor.sample())["peers"]}
                return views[peer]["state"] if peer in views else None

            for _ in range(300):
                if await state_of(c) == "dead":
                    break
                await asyncio.sleep(0.02)
            assert await state_of(c) == "dead"
            assert await state_of(b.node_id) == "alive"
            _, body = await fetch_json(url_of(a) + "healthz")
            assert body["score"] < 100 and any(c in reason for reason in body["reasons"])

        # Closed cleanly: it says goodbye and leaves; the feed says so.
        await b.close()
        for _ in range(300):
            if await state_of(b.node_id) in (None, "dead"):
                break
            await asyncio.sleep(0.02)
        assert await state_of(b.node_id) in (None, "dead")
        downs = [ch["origin"] for ch in monitor.recent_changes() if ch["op"] == "peer_down"]
        assert c in downs and b.node_id in downs
    finally:
        await a.close()
        await b.close()
