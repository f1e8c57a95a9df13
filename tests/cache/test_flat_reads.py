"""No read aliases the replica, whatever the value's shape, on every path a hit takes.

Flat lists and dicts are read as shallow copies of a decoded original kept by the
cache (``core.FlatReads``), everything else is decoded on each read: either way, a
caller who mutates everything it got, at every depth, reads the original value back.
"""

from __future__ import annotations

import copy
import threading
from datetime import UTC, datetime
from typing import Any

import msgpack
import pytest

from crdtcache import Cache, SyncCache
from crdtcache.core import Packed, encode_value
from crdtcache.core._values import FLAT_READ_VALUE_BYTES, FlatReads, decode_value
from tests.backends import caches_on
from tests.value_types import typed

SHAPES: dict[str, Any] = {
    "flat dict": {"id": 1, "name": "a", "ok": True, "score": 1.5, "none": None, "raw": b"x"},
    "flat dict, int keys": {1: "a", 2: "b", -(2**70): "big"},
    "flat list": [1, "a", None, 2.5, b"y", False, 2**70],
    "empty dict": {},
    "empty list": [],
    "nested dict": {"a": {"b": [1, 2]}, "c": [{"d": 1}]},
    "nested list": [[1], {"a": [2]}, bytearray(b"z")],
    "dict of a set": {"s": {1, 2}},
    "list of a datetime": [datetime(2024, 1, 2, tzinfo=UTC), 1],
    "flat tuple": (1, "a", None),
    "tuple of a list": (1, [2, 3]),
    "frozenset": frozenset({1, "a"}),
    "set": {1, 2},
    "bytearray": bytearray(b"abc"),
    "bytes": b"raw",
    "str": "text",
    "large flat list": list(range(FLAT_READ_VALUE_BYTES)),  # too large to keep decoded
}


def vandalize(value: Any) -> None:
    """Change everything in ``value`` that can be changed, at every depth."""
    if isinstance(value, dict):
        for item in list(value.values()):
            vandalize(item)
        value.clear()
        value["vandal"] = 1
    elif isinstance(value, list):
        for item in value:
            vandalize(item)
        value.append("vandal")
        value.reverse()
    elif isinstance(value, set):
        value.add("vandal")
    elif isinstance(value, bytearray):
        value[:] = b"vandal"
    elif isinstance(value, tuple | frozenset):
        for item in value:
            vandalize(item)


def test_vandalize_changes_every_mutable_shape() -> None:
    """(The check of the checker: each mutable shape reads differently once vandalized.)"""
    for name, value in SHAPES.items():
        got = copy.deepcopy(value)
        vandalize(got)
        mutable = name not in {"flat tuple", "frozenset", "bytes", "str"}
        assert (typed(got) != typed(value)) is mutable, name


@pytest.mark.parametrize("name", SHAPES)
def test_flat_reads_hand_out_copies_and_keep_their_original(name: str) -> None:
    value = SHAPES[name]
    stored = encode_value("k", value)
    if type(stored) is not Packed:
        pytest.skip("a plain scalar: stored and read as it is")
    reads = FlatReads()
    for _ in range(3):
        got = reads.decode(stored)
        assert typed(got) == typed(value)
        vandalize(got)
    assert typed(reads.decode(stored)) == typed(value)
    assert typed(decode_value(stored)) == typed(value)


def test_every_read_is_a_new_object_but_for_immutable_ones() -> None:
    reads = FlatReads()
    for name in ("flat dict", "flat list", "nested dict", "nested list", "large flat list"):
        stored = encode_value("k", SHAPES[name])
        assert type(stored) is Packed
        first, second = reads.decode(stored), reads.decode(stored)
        assert first == second and first is not second, name
    for name in ("flat tuple", "frozenset"):
        stored = encode_value("k", SHAPES[name])
        assert type(stored) is Packed
        assert reads.decode(stored) is reads.decode(stored), name  # immutable: shared
    nested = encode_value("k", SHAPES["nested dict"])
    assert reads.decode(nested)["c"] is not reads.decode(nested)["c"]  # type: ignore[arg-type]  # packed


async def _check_cache(reader: Cache, writer: Cache) -> None:
    for name, value in SHAPES.items():
        await writer.set(name, value)  # (write-through: a peer has it when set returns)
    for _ in range(3):
        for name, value in SHAPES.items():
            got = await reader.get(name)
            assert typed(got) == typed(value), name
            vandalize(got)
        # get_many takes the same local path.
        for got in (await reader.get_many(list(SHAPES))).values():
            vandalize(got)
    for name, value in SHAPES.items():
        assert typed(await reader.get(name)) == typed(value), name


@pytest.mark.parametrize("backend", ["memory", "p2p", "p2p-pair"])
async def test_no_read_aliases_the_replica(backend: str) -> None:
    """Written locally (memory, p2p) or by a peer (the second node of a p2p pair)."""
    async with caches_on(backend) as caches:
        await _check_cache(caches[-1], caches[0])


def test_no_read_of_a_sync_cache_aliases_the_replica() -> None:
    with SyncCache(backend="memory") as cache:
        for name, value in SHAPES.items():
            cache.set(name, value)
        for _ in range(3):
            for name, value in SHAPES.items():
                got = cache.get(name)
                assert typed(got) == typed(value), name
                vandalize(got)
            for got in cache.get_many(list(SHAPES)).values():
                vandalize(got)
        for name, value in SHAPES.items():
            assert typed(cache.get(name)) == typed(value), name


async def test_a_flat_value_read_again_is_copied_not_decoded_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Decoding is most of a read's cost: a flat list or dict is decoded once, then
    copied; a nested one is still decoded on every read."""
    calls = 0
    unpackb = msgpack.unpackb

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return unpackb(*args, **kwargs)

    async with caches_on("memory") as (cache,):
        await cache.set("flat", SHAPES["flat dict"])
        await cache.set("nested", SHAPES["nested dict"])
        monkeypatch.setattr(msgpack, "unpackb", counted)
        for _ in range(50):
            await cache.get("flat")
        assert calls <= 1
        calls = 0
        for _ in range(50):
            await cache.get("nested")
        assert calls == 50


def test_threads_reading_and_vandalizing_while_the_value_changes() -> None:
    """SyncCache hits run in the callers' threads: each read is one of the values
    written, whole, however the other readers mangle theirs."""
    versions = [{"n": i, "name": f"v{i}", "ok": True} for i in range(50)]
    seen_wrong: list[Any] = []
    with SyncCache(backend="memory") as cache:
        cache.set("k", versions[0])
        stop = threading.Event()

        def reader() -> None:
            while not stop.is_set():
                got = cache.get("k")
                if got not in versions:
                    seen_wrong.append(got)
                vandalize(got)

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for version in versions[1:]:
                cache.set("k", version)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert cache.get("k") == versions[-1]
    assert seen_wrong == []
