"""get_many, set_many, delete_many, exists, ttl, touch, add, incr and decr on every backend.

Each test runs on memory, one p2p node, two p2p nodes (write-through: the second node
must see every write once the first returns), one redis instance and two (see
``tests/backends.py``). ``last`` is the cache that did not write: on a pair, the
other node.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import pytest

from crdtcache import Cache, SerializationError, SyncCache, ValidationError
from tests.backends import BACKENDS, caches_on

every_backend = pytest.mark.parametrize("backend", BACKENDS)


def pair(caches: list[Cache]) -> tuple[Cache, Cache]:
    return caches[0], caches[-1]


@every_backend
async def test_get_many_set_many_delete_many_and_exists(backend: str) -> None:
    async with caches_on(backend) as caches:
        a, b = pair(caches)
        await a.set_many({"k1": 1, "k2": [1, 2], "k3": datetime(2024, 1, 2)}, ttl=60)
        assert await b.get_many(["k1", "k2", "k3", "nope"]) == {
            "k1": 1,
            "k2": [1, 2],
            "k3": datetime(2024, 1, 2),
        }
        assert await b.get_many([]) == {}
        assert await b.exists("k2") and not await b.exists("nope")
        assert 59 < (await b.ttl("k1") or 0) <= 60
        assert await a.delete_many(["k1", "k3", "nope", "k1"]) == 2
        assert await b.get_many(["k1", "k2", "k3"]) == {"k2": [1, 2]}
        assert not await b.exists("k1")
        await a.set_many({})
        assert await a.delete_many([]) == 0


@every_backend
async def test_set_many_checks_everything_before_writing_anything(backend: str) -> None:
    async with caches_on(backend) as caches:
        a, _ = pair(caches)
        with pytest.raises(SerializationError):
            await a.set_many({"good": 1, "bad": object()})
        assert await a.get("good") is None
        with pytest.raises(SerializationError, match="iterable of keys"):
            await a.get_many("abc")
        with pytest.raises(SerializationError, match="mapping"):
            await a.set_many([("k", 1)])  # type: ignore[arg-type]


@every_backend
async def test_ttl_says_no_expiry_remaining_seconds_or_missing(backend: str) -> None:
    async with caches_on(backend) as caches:
        a, b = pair(caches)
        await a.set("forever", 1)
        await a.set("short", 1, ttl=30)
        assert await b.ttl("forever") is None
        assert 29 < (await b.ttl("short") or 0) <= 30
        assert await b.ttl("missing") == -1.0
        await a.set("gone", 1, ttl=0.05)
        await asyncio.sleep(0.1)
        assert await b.ttl("gone") == -1.0


@every_backend
async def test_touch_changes_the_expiry_and_keeps_the_value(backend: str) -> None:
    async with caches_on(backend) as caches:
        a, b = pair(caches)
        await a.set("k", {"v": 1}, ttl=0.3)
        assert await a.touch("k", 60)
        assert 59 < (await b.ttl("k") or 0) <= 60
        await asyncio.sleep(0.4)
        assert await b.get("k") == {"v": 1}
        assert await b.expire("k", None)  # no expiry any more
        assert await a.ttl("k") is None
        assert await a.touch("k", 0.05)
        await asyncio.sleep(0.1)
        assert await b.get("k") is None
        assert not await a.touch("k", 10) and not await a.touch("never", 10)


@every_backend
async def test_add_stores_only_where_no_live_value_is(backend: str) -> None:
    async with caches_on(backend) as caches:
        a, b = pair(caches)
        assert await a.add("lock", "first", ttl=0.2)
        assert not await b.add("lock", "second")
        assert await b.get("lock") == "first"
        await asyncio.sleep(0.3)
        assert await b.add("lock", "after expiry", ttl=60)
        assert await a.get("lock") == "after expiry"
        await a.delete("lock")
        assert await a.add("lock", "after delete")


@every_backend
async def test_incr_and_decr_count_and_keep_the_expiry(backend: str) -> None:
    async with caches_on(backend) as caches:
        a, b = pair(caches)
        assert await a.incr("hits") == 1
        assert await b.incr("hits", 5) == 6
        assert await a.decr("hits", 2) == 4
        assert await b.get("hits") == 4 and await a.get("hits") == 4
        assert await a.incr("win", ttl=30) == 1
        assert await b.incr("win", ttl=1000) == 2  # an existing key keeps its expiry
        assert 29 < (await a.ttl("win") or 0) <= 30
        await a.set("n", 40, ttl=20)
        assert await b.incr("n", 2) == 42
        assert 19 < (await a.ttl("n") or 0) <= 20
        assert await a.incr("big", (1 << 62)) == 1 << 62
        assert await a.decr("neg", 3) == -3


@every_backend
async def test_incr_refuses_a_value_that_is_not_an_int_and_changes_nothing(backend: str) -> None:
    async with caches_on(backend) as caches:
        a, b = pair(caches)
        await a.set("s", "text")
        with pytest.raises(ValidationError, match="int"):
            await b.incr("s")
        assert await a.get("s") == "text"
        with pytest.raises(SerializationError, match="delta"):
            await a.incr("s", 1.5)  # type: ignore[arg-type]


@every_backend
async def test_a_set_replaces_a_counter_and_incr_counts_from_the_set_value(backend: str) -> None:
    async with caches_on(backend) as caches:
        a, b = pair(caches)
        await a.incr("c", 10)
        await b.set("c", 100)
        assert await a.get("c") == 100
        assert await a.incr("c") == 101
        await a.delete("c")
        assert await b.incr("c") == 1


@every_backend
async def test_counters_are_ints_whatever_the_serializer(backend: str) -> None:
    if backend.startswith("redis"):
        # pickle needs an authenticated Redis; a (dumps, loads) pair behaves alike
        serializer: object = (lambda v: repr(v).encode(), lambda b: eval(b))
    else:
        serializer = "pickle"
    options = {"serializer": serializer}
    if backend.startswith("p2p"):
        options["secret"] = uuid.uuid4().bytes * 2
    async with caches_on(backend, **options) as caches:
        a, b = pair(caches)
        await a.set("n", 5)
        assert await b.incr("n") == 6
        assert await b.get("n") == 6
        await a.set("t", ("a", 1))
        assert await b.get("t") == ("a", 1)
        with pytest.raises(ValidationError):
            await b.incr("t")


def test_the_sync_cache_has_every_operation() -> None:
    with SyncCache(backend="memory") as c:
        c.set_many({"a": 1, "b": 2}, ttl=60)
        assert c.get_many(["a", "b", "c"]) == {"a": 1, "b": 2}
        assert c.exists("a") and not c.exists("c")
        assert c.add("c", 3) and not c.add("c", 4)
        assert c.incr("a") == 2 and c.decr("a", 3) == -1
        assert c.touch("b", None) and c.ttl("b") is None
        assert c.expire("b", 30) and 29 < (c.ttl("b") or 0) <= 30
        assert c.ttl("nope") == -1.0
        assert c.delete_many(["a", "b", "nope"]) == 2
        assert c.get_many(["a", "b", "c"]) == {"c": 3}
