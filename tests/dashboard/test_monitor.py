"""What the dashboard computes: lag per peer, per-interval figures, feed bounds, metrics."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from crdtcache import Cache
from crdtcache.cache._statistics import LatencyWindow
from crdtcache.core import ALIVE, DEAD, SUSPECT, PeerInfo, pack_ts
from crdtcache.dashboard._monitor import (
    FEED_PER_FRAME,
    FEED_SIZE,
    Monitor,
    peer_views,
    render_metrics,
)

NOW = 1_700_000_000.0


def ts(seconds: float) -> int:
    return pack_ts(int(seconds * 1000), 3)


def test_peer_views_lag() -> None:
    peers = [
        PeerInfo("c", SUSPECT, last_heard=NOW - 2.5, linked=False),
        PeerInfo("a", ALIVE, last_heard=NOW - 0.1),
        PeerInfo("b", DEAD, last_heard=NOW - 60),
        PeerInfo("d", ALIVE, last_heard=NOW),
    ]
    marks = {"a": ts(NOW - 5), "b": ts(NOW - 70), "d": ts(NOW - 1)}
    high = {"a": ts(NOW - 5), "b": ts(NOW - 61.5), "c": ts(NOW - 3)}
    views = peer_views(peers, {"a": "127.0.0.1:1"}, marks, high, NOW)
    by_id = {v["id"]: v for v in views}
    assert [v["id"] for v in views] == ["a", "b", "c", "d"]
    assert by_id["a"] == {
        "id": "a",
        "address": "127.0.0.1:1",
        "state": ALIVE,
        "linked": True,
        "last_heard_ms": 100,
        "behind_ms": 0,  # everything heard from it is vouched for
        "last_write_ms": 5000,
    }
    assert by_id["b"]["behind_ms"] == 8500  # seen up to -61.5 s, complete up to -70 s
    assert by_id["b"]["last_heard_ms"] == 60_000 and by_id["b"]["state"] == DEAD
    assert by_id["c"]["behind_ms"] is None  # writes seen, no complete exchange yet
    assert by_id["c"]["linked"] is False and by_id["c"]["address"] is None
    assert by_id["d"]["behind_ms"] == 0 and by_id["d"]["last_write_ms"] is None


def test_mark_above_high_is_not_negative_lag() -> None:
    views = peer_views([PeerInfo("a", last_heard=NOW)], {}, {"a": ts(NOW)}, {"a": ts(NOW - 1)}, NOW)
    assert views[0]["behind_ms"] == 0


def test_latency_window_since() -> None:
    window = LatencyWindow(4)
    assert window.since(0).samples == 0
    for ms in (5.0, 1.0, 3.0):
        window.add(ms)
    assert (window.since(0).p50, window.since(0).samples) == (3.0, 3)
    assert (window.since(1).p50, window.since(1).p99, window.since(1).samples) == (1.0, 3.0, 2)
    assert window.since(3).samples == 0
    for ms in (10.0, 20.0, 30.0, 40.0):  # wraps around
        window.add(ms)
    assert window.count == 7
    assert (window.since(5).p50, window.since(5).p99) == (30.0, 40.0)
    assert window.since(0).samples == 4 and window.summary() == window.since(0)


async def test_frames_turn_counters_into_rates() -> None:
    async with Cache(backend="memory", node_id="m") as cache:
        monitor = Monitor(cache.view())
        await monitor.start()
        try:
            first = monitor.frame
            assert first is not None and first["point"]["hit_overall"] is None
            await cache.set("a", 1)
            for _ in range(3):
                await cache.get("a")
            await cache.get("missing")
            frame = await monitor.sample()
            point = frame["point"]
            assert point["lookups"] == 4 and point["hit_local"] == 0.75
            assert point["hit_distributed"] is None
            assert frame["keys"] == 1 and frame["memory"] > 0 and frame["peers"] == []
            assert [(c["op"], c["key"], c["remote"]) for c in frame["changes"]] == [
                ("set", "a", False)
            ]
            assert frame["changes"][0]["origin"] == "m"
            await cache.delete("a")
            frame = await monitor.sample()
            assert frame["point"]["lookups"] == 0 and frame["point"]["hit_overall"] is None
            assert frame["point"]["evict_explicit"] == 1
            assert [c["op"] for c in frame["changes"]] == ["delete"]
            assert len(monitor.hello()["history"]) == 3
        finally:
            await monitor.close()


async def test_feed_is_bounded() -> None:
    async with Cache(backend="memory", node_id="m") as cache:
        monitor = Monitor(cache.view())
        await monitor.start()
        try:
            writes = FEED_SIZE + 50
            for i in range(writes):
                await cache.set(f"k{i}", i)
            frame = await monitor.sample()
            assert len(frame["changes"]) == FEED_PER_FRAME
            assert frame["changes_skipped"] == writes - FEED_PER_FRAME
            assert frame["changes"][-1]["key"] == f"k{writes - 1}"
            assert len(monitor.recent_changes()) == FEED_SIZE
        finally:
            await monitor.close()
        assert monitor.closed and await monitor.next_frame(0) is None


async def test_long_keys_are_cut_in_the_feed() -> None:
    async with Cache(backend="memory") as cache:
        monitor = Monitor(cache.view())
        await monitor.start()
        try:
            await cache.set("k" * 1000, 1)
            frame = await monitor.sample()
            assert len(frame["changes"][0]["key"]) == 200
        finally:
            await monitor.close()


@pytest.mark.parametrize("counters", [True, False])
async def test_rendered_metrics_parse(counters: bool) -> None:
    async with Cache(backend="memory", node_id='we"ird\\id') as cache:
        await cache.set("a", 1)
        await cache.get("a")
        text = render_metrics(
            await cache.get_statistics(), cache.health(), memory=123, counters=counters
        )
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["crdtcache_keys"].samples[0].value == 1
    assert families["crdtcache_memory_bytes"].samples[0].value == 123
    assert families["crdtcache_health_score"].samples[0].value == 100
    assert families["crdtcache_keys"].samples[0].labels == {"node": 'we"ird\\id'}
    assert ("crdtcache_cache_hits" in families) is counters
    if counters:
        hits = {s.labels["source"]: s.value for s in families["crdtcache_cache_hits"].samples}
        assert hits == {"local": 1, "distributed": 0}
