"""A restart on a large ``persist_path`` serves at once and loads the rest behind.

Chunks are made tiny here (``START_ROWS``, ``LOAD_CHUNK``) so that a store of a few
dozen rows behaves as 100 000 would: whether a row is loaded yet is read from the
load's own counters, never from a clock.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crdtcache.store._loading as loading
import crdtcache.store._persistence as persistence_module
from crdtcache import Cache
from crdtcache.store._loading import StoreLoad
from crdtcache.testing import MemoryNetwork

from .conftest import remote_push

KEYS = 40


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(persistence_module, "START_ROWS", 5)
    monkeypatch.setattr(loading, "LOAD_CHUNK", 5)
    yield


async def fill(path: Path, count: int = KEYS) -> None:
    async with Cache(backend="memory", persist_path=path, node_id="me") as cache:
        await cache.set_many({f"k{i}": i for i in range(count)})


def load_of(cache: Cache) -> StoreLoad:
    persistence = cache._persistence
    assert persistence is not None and persistence.load is not None
    return persistence.load


def unloaded(cache: Cache) -> list[str]:
    replica = cache._replica
    assert replica is not None
    return [f"k{i}" for i in range(KEYS) if f"k{i}" not in replica.entries]


async def test_start_returns_before_the_load_is_done(tmp_path: Path) -> None:
    await fill(tmp_path / "node.db")
    async with Cache(backend="memory", persist_path=tmp_path / "node.db") as cache:
        load = load_of(cache)
        assert not load.done and load.loaded == 5 < KEYS
        assert cache._engine is not None and cache._engine.exchanges_held
        await load.wait()
        assert load.loaded == KEYS and load.refused == 0
        assert not cache._engine.exchanges_held
        assert {k: await cache.get(k) for k in unloaded(cache)} == {}
        assert await cache.get_many([f"k{i}" for i in range(KEYS)]) == {
            f"k{i}": i for i in range(KEYS)
        }


async def test_a_key_not_loaded_yet_is_read_from_the_file(tmp_path: Path) -> None:
    await fill(tmp_path / "node.db")
    async with Cache(backend="memory", persist_path=tmp_path / "node.db") as cache:
        a, b, c, d, e, f, g = later = unloaded(cache)[:7]
        assert len(later) == 7 and not load_of(cache).done
        assert await cache.get(a) == int(a[1:])
        assert await cache.exists(b)
        assert await cache.ttl(c) is None
        assert await cache.get_many([d, e]) == {d: int(d[1:]), e: int(e[1:])}
        assert await cache.add(f, "new") is False  # it exists: in the file
        assert await cache.incr(g, 2) == int(g[1:]) + 2


async def test_writes_during_the_load_beat_the_stored_rows(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    await fill(path)
    async with Cache(backend="memory", persist_path=path) as cache:
        written, deleted, touched = unloaded(cache)[-3:]
        await cache.set(written, "new")  # a blind write: no lookup, the stamp decides
        assert await cache.delete(deleted) is True  # it was live: in the file
        assert await cache.touch(touched, 100.0) is True
        await load_of(cache).wait()
        assert await cache.get(written) == "new"
        assert await cache.get(deleted) is None
        assert await cache.get(touched) == int(touched[1:])
        assert (await cache.ttl(touched) or 0) > 0
        assert deleted not in await cache.keys()
    async with Cache(backend="memory", persist_path=path) as again:
        await load_of(again).wait()
        assert await again.get(written) == "new" and await again.get(deleted) is None


async def test_a_peers_older_write_of_a_key_not_loaded_yet_never_shows(tmp_path: Path) -> None:
    # A push stamped before the stored row (the peer missed this node's newer write)
    # must lose to that row at once, not be served until the chunk reaches it.
    path = tmp_path / "node.db"
    await fill(path)
    async with Cache(backend="memory", persist_path=path) as cache:
        key = unloaded(cache)[-1]
        assert not load_of(cache).done
        remote_push(cache, {key: "older"}, origin="peer", at=1.0)  # stamped in 1970
        assert await cache.get(key) == int(key[1:])
        await load_of(cache).wait()
        assert await cache.get(key) == int(key[1:])


async def test_whole_map_operations_wait_for_the_load(tmp_path: Path) -> None:
    await fill(tmp_path / "node.db")
    async with Cache(backend="memory", persist_path=tmp_path / "node.db") as cache:
        assert not load_of(cache).done
        assert len(await cache.keys()) == KEYS
    async with Cache(backend="memory", persist_path=tmp_path / "node.db") as cache:
        assert not load_of(cache).done
        assert await cache.clear() == KEYS
        await load_of(cache).wait()
        assert await cache.keys() == []


async def test_a_corrupt_row_is_never_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "node.db"
    await fill(path)
    with sqlite3.connect(path) as conn:  # two damaged rows: one looked up, one loaded
        last = [k for (k,) in conn.execute("SELECT key FROM entries ORDER BY rowid")][-2:]
        conn.execute("UPDATE entries SET value = x'c1' WHERE key IN (?, ?)", last)
    conn.close()
    early, late = last
    with caplog.at_level(logging.ERROR):
        async with Cache(backend="memory", persist_path=path) as cache:
            assert not load_of(cache).done
            assert await cache.get(early) is None  # looked up before its chunk
            await load_of(cache).wait()
            assert load_of(cache).refused == 2
            assert await cache.get(late) is None and await cache.get(early) is None
            assert len(await cache.keys()) == KEYS - 2  # every good row is served
            replica = cache._replica
            assert replica is not None and set(replica.marks) == {"me"}  # ask peers again
    assert sum("not served" in r.getMessage() for r in caplog.records) == 2
    with sqlite3.connect(path) as conn:  # left in the file as it was
        rows = conn.execute("SELECT key, value FROM entries WHERE value = x'c1'")
        assert sorted(rows.fetchall()) == sorted([(early, b"\xc1"), (late, b"\xc1")])
    conn.close()


def test_peers_see_the_whole_store_once_loaded(tmp_path: Path) -> None:
    path = tmp_path / "a.db"

    async def main(net: MemoryNetwork) -> None:
        async with net.cache(node_id="a", persist_path=path) as a:
            await a.set_many({f"k{i}": i for i in range(KEYS)})
        async with (
            net.cache(node_id="b") as b,
            net.cache(node_id="a", persist_path=path, seeds=[b.address]) as a,
        ):
            assert a._engine is not None and a._engine.exchanges_held
            await load_of(a).wait()
            for _ in range(2000):
                if len(await b.keys()) == KEYS:
                    break
                await asyncio.sleep(0.01)
            assert await b.get_many([f"k{i}" for i in range(KEYS)]) == {
                f"k{i}": i for i in range(KEYS)
            }

    with MemoryNetwork(seed=1) as net:
        net.run(main(net), timeout=600)


# One step of an interleaving: a chunk of the load runs, or the cache is used.
_steps = st.lists(
    st.one_of(
        st.just(("chunk", 0, 0)),
        st.tuples(
            st.sampled_from(["get", "set", "delete", "incr"]), st.integers(0, 11), st.integers(0, 9)
        ),
    ),
    max_size=30,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=_steps)
def test_any_interleaving_of_use_and_load_reads_like_a_loaded_store(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int, int]]
) -> None:
    path = tmp_path_factory.mktemp("interleaving") / "node.db"
    model: dict[str, int | None] = {f"k{i}": i for i in range(12)}

    async def main() -> None:
        await fill(path, 12)
        async with Cache(backend="memory", persist_path=path) as cache:
            # Chunks run where the steps say, and wherever the background task gets
            # a turn: the outcome must not depend on which.
            load = load_of(cache)
            for op, i, v in steps:
                key = f"k{i}"
                if op == "chunk":
                    load.step()
                elif op == "get":
                    assert await cache.get(key) == model[key]
                elif op == "set":
                    await cache.set(key, v)
                    model[key] = v
                elif op == "delete":
                    assert await cache.delete(key) is (model[key] is not None)
                    model[key] = None
                else:
                    current = model[key]
                    model[key] = (current or 0) + v
                    assert await cache.incr(key, v) == model[key]
            while not load.done:
                load.step()
            assert {k: await cache.get(k) for k in model} == model
        async with Cache(backend="memory", persist_path=path) as again:
            await load_of(again).wait()
            assert {k: await again.get(k) for k in model} == model

    asyncio.run(main())
