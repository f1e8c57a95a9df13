"""snapshot/restore and persist_path, through the cache."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from crdtcache import (
    Cache,
    ClockDriftError,
    ConfigError,
    CorruptStateError,
    PersistenceError,
    SerializationError,
)
from crdtcache.core import NOT_HELD

from .conftest import FakeClock, memory_cache


async def test_snapshot_and_restore_into_another_cache(clock: FakeClock) -> None:
    async with memory_cache(clock, node_id="a") as a:
        await a.set("k", {"v": 1})
        await a.set("t", "x", ttl=100)
        await a.set("gone", 1)
        await a.delete("gone")
        snap = await a.snapshot()
    assert isinstance(snap, bytes)
    async with memory_cache(clock, node_id="b") as b:
        seen: list[str] = []
        b.on("set", lambda e: seen.append(e.key or ""))
        assert await b.restore(snap) == 3  # two values and a tombstone
        assert await b.get("k") == {"v": 1}
        assert await b.get("gone") is None
        assert sorted(seen) == ["k", "t"]
        assert await b.restore(snap) == 0  # idempotent
        stats = await b.get_statistics()
        assert stats.cluster.sync_latency_ms.samples == 0  # a restore is not replication


async def test_old_snapshot_never_overwrites_newer_values(cache: Cache) -> None:
    await cache.set("k", "old")
    snap = await cache.snapshot()
    await cache.set("k", "new")
    await cache.restore(snap)
    assert await cache.get("k") == "new"


async def test_restore_respects_the_tier_and_the_schema(clock: FakeClock) -> None:
    async with memory_cache(clock, node_id="a") as a:
        for i in range(10):
            await a.set(f"k{i}", i)
        await a.set("text", "not an int")
        snap = await a.snapshot()
    async with memory_cache(
        clock, node_id="b", max_size=5, schema=lambda v: isinstance(v, int)
    ) as b:
        await b.restore(snap)
        assert b._tier.count <= 5
        assert await b.get("text") is None
        assert (await b.get_statistics()).refused_values == 1


async def test_bad_snapshots_change_nothing(cache: Cache, clock: FakeClock) -> None:
    await cache.set("k", 1)
    snap = await cache.snapshot()
    with pytest.raises(CorruptStateError):
        await cache.restore(snap[:-3])
    with pytest.raises(CorruptStateError):
        await cache.restore(b"garbage")
    with pytest.raises(SerializationError):
        await cache.restore("text")  # type: ignore[arg-type]
    future = FakeClock(clock.now + 3600)
    async with memory_cache(future, node_id="f") as ahead:
        await ahead.set("x", 1)
        far = await ahead.snapshot()
    with pytest.raises(ClockDriftError):
        await cache.restore(far)
    assert await cache.keys() == ["k"]


async def test_persist_path_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    async with Cache(backend="memory", persist_path=path) as first:
        node = first.node_id
        await first.set("k", {"v": 1})
        await first.set("gone", 1)
        await first.delete("gone")
        await first.invalidate_pattern("p:*")
    async with Cache(backend="memory", persist_path=str(path)) as second:
        assert second.node_id == node
        assert await second.get("k") == {"v": 1}
        assert await second.get("gone") is None
        await second.set("k2", 2)  # stamps keep rising after the restart
        assert second._replica is not None
        assert second._replica.entries["k2"].ts > second._replica.entries["k"].ts


async def test_persist_path_writes_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    async with Cache(backend="memory", persist_path=path, node_id="n") as cache:
        await cache.set("k", 1)
        assert cache._persistence is not None
        for _ in range(100):
            if cache._persistence.store.get("k") is not None:
                break
            await asyncio.sleep(0.01)
        assert cache._persistence.store.get("k") is not None


async def test_evicted_values_are_read_back_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    async with Cache(backend="memory", persist_path=path, max_size=2) as cache:
        for key in "abc":
            await cache.set(key, key.upper())
        assert cache._entries["a"].value is NOT_HELD  # a stub: the file has the value
        assert cache._persistence is not None
        await cache._persistence.flush(cache._replica)  # type: ignore[arg-type]
        assert await cache.get("a") == "A"
        stats = await cache.get_statistics()
        assert stats.local.hits == 1 and stats.local.misses == 0
        assert cache._tier.count == 2


async def test_restart_holds_at_most_max_size(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    async with Cache(backend="memory", persist_path=path) as cache:
        for i in range(10):
            await cache.set(f"k{i}", i)
    async with Cache(backend="memory", persist_path=path, max_size=3) as cache:
        assert cache._tier.count == 3
        assert await cache.get("k0") == 0  # served from the file


async def test_persist_path_owned_by_another_node(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    async with Cache(backend="memory", persist_path=path, node_id="a"):
        pass
    with pytest.raises(ConfigError, match="belongs to node 'a'"):
        async with Cache(backend="memory", persist_path=path, node_id="b"):
            pass
    async with Cache(backend="memory", persist_path=path, node_id="a") as again:
        assert again.node_id == "a"


async def test_persist_path_that_is_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "other.txt"
    path.write_text("not a database")
    with pytest.raises(CorruptStateError):
        async with Cache(backend="memory", persist_path=path):
            pass
    assert path.read_text() == "not a database"


async def test_persist_path_in_use(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    async with Cache(backend="memory", persist_path=path):
        with pytest.raises(PersistenceError):
            async with Cache(backend="memory", persist_path=path):
                pass


async def test_failed_batches_are_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "node.db"
    async with Cache(backend="memory", persist_path=path) as cache:
        persistence = cache._persistence
        assert persistence is not None
        real_write = persistence.store.write
        fail = True

        def flaky(batch):  # type: ignore[no-untyped-def]
            if fail:
                raise PersistenceError("disk full")
            real_write(batch)

        monkeypatch.setattr(persistence.store, "write", flaky)
        await cache.set("k", 1)
        await persistence.flush(cache._replica)  # type: ignore[arg-type]
        assert persistence.errors == 1
        assert persistence.dirty == {"k"}
        fail = False
        await persistence.flush(cache._replica)  # type: ignore[arg-type]
        assert persistence.store.get("k") is not None
