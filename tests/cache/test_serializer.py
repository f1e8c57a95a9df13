"""``serializer=``, ``max_value_bytes=`` and ``max_key_chars=``: the value options of a cache."""

from __future__ import annotations

import json
import logging
import pickle
from fractions import Fraction
from typing import Any

import pydantic
import pytest

from crdtcache import CacheError, SerializationError, ValidationError
from crdtcache.cache._schema import PICKLE_PROTOCOL, ValueCodec
from crdtcache.core import NOT_HELD, Packed

from .conftest import FakeClock, memory_cache, remote_push


class Money:
    """A type the value format does not carry (a user's own class)."""

    def __init__(self, cents: int) -> None:
        self.cents = cents

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and other.cents == self.cents

    def __hash__(self) -> int:
        return hash(self.cents)


class Item(pydantic.BaseModel):
    name: str
    tags: list[str]


def json_pair() -> tuple[Any, Any]:
    return (lambda v: json.dumps(v).encode(), json.loads)


async def test_pickle_carries_what_msgpack_cannot(clock: FakeClock) -> None:
    async with memory_cache(clock, serializer="pickle") as cache:
        await cache.set("m", {"price": Money(250), "ratio": Fraction(1, 3)})
        first = await cache.get("m")
        assert first == {"price": Money(250), "ratio": Fraction(1, 3)}
        first["price"].cents = 0  # a fresh object on every read: no aliasing
        assert (await cache.get("m"))["price"] == Money(250)


async def test_a_serializer_stores_opaque_bytes(clock: FakeClock) -> None:
    async with memory_cache(clock, serializer="pickle") as cache:
        await cache.set("t", (1, 2))
        assert cache._replica is not None
        stored = cache._replica.entries["t"].value
        assert type(stored) is bytes and pickle.loads(stored) == (1, 2)
        assert stored[1] == PICKLE_PROTOCOL  # fixed, whatever Python the node runs


async def test_a_dumps_loads_pair(clock: FakeClock) -> None:
    async with memory_cache(clock, serializer=json_pair()) as cache:
        await cache.set("j", {"a": [1, 2]})
        assert await cache.get("j") == {"a": [1, 2]}
        assert await cache.get_or_set("g", lambda: [3]) == [3]
        with pytest.raises(SerializationError, match=r"'x' cannot be serialized by .*set"):
            await cache.set("x", {1, 2})


async def test_serializer_errors_are_pickling_errors(clock: FakeClock) -> None:
    # Django's cache tests expect pickle.PickleError for a value that cannot be stored.
    async with memory_cache(clock, serializer="pickle") as cache:
        with pytest.raises(pickle.PickleError):
            await cache.set("f", lambda: None)
    async with memory_cache(clock) as cache:
        with pytest.raises(pickle.PickleError):
            await cache.set("f", Money(1))


async def test_a_serializer_must_return_bytes(clock: FakeClock) -> None:
    async with memory_cache(clock, serializer=(str, str)) as cache:
        with pytest.raises(SerializationError, match="returned str, not bytes"):
            await cache.set("k", 1.5)  # an int is never serialized (incr counts from it)


async def test_schema_first_then_serializer(clock: FakeClock) -> None:
    seen: list[object] = []

    def dumps(value: object) -> bytes:
        seen.append(value)
        return pickle.dumps(value)

    async with memory_cache(clock, schema=Item, serializer=(dumps, pickle.loads)) as cache:
        await cache.set("i", {"name": "pen", "tags": ("a",)})
        assert seen == [{"name": "pen", "tags": ["a"]}]  # the schema's JSON-mode dump
        assert await cache.get("i") == Item(name="pen", tags=["a"])
        with pytest.raises(ValidationError):
            await cache.set("i", {"name": 1})
        assert len(seen) == 1  # refused by the schema: never serialized


async def test_a_value_over_max_value_bytes_is_refused(clock: FakeClock) -> None:
    async with memory_cache(clock, max_value_bytes=100) as cache:
        await cache.set("ok", "x" * 100)
        for value in ["x" * 101, b"x" * 101, ["x" * 100], "\u00e9" * 51]:
            with pytest.raises(SerializationError, match="exceeds 100 bytes"):
                await cache.set("big", value)
        assert await cache.get("big") is None
    async with memory_cache(clock, max_value_bytes=100, serializer="pickle") as cache:
        with pytest.raises(SerializationError, match="exceeds 100 bytes"):
            await cache.set("big", "x" * 90)  # over the limit once pickled


async def test_a_large_value_with_a_raised_limit(clock: FakeClock, tmp_path: Any) -> None:
    big = b"\x01" * (3 << 20)
    path = tmp_path / "node.db"
    async with memory_cache(clock, max_value_bytes=4 << 20, persist_path=path) as cache:
        await cache.set("big", [big])
        assert await cache.get("big") == [big]
        snapshot = await cache.snapshot()
    async with memory_cache(clock, max_value_bytes=4 << 20, persist_path=path) as cache:
        assert await cache.get("big") == [big]  # read back from the store
    async with memory_cache(clock, max_value_bytes=4 << 20) as cache:
        assert await cache.restore(snapshot) == 1
        assert await cache.get("big") == [big]
    async with memory_cache(clock) as cache:
        with pytest.raises(CacheError, match="exceeds"):
            await cache.restore(snapshot)  # this node's limit is the default


async def test_max_key_chars(clock: FakeClock) -> None:
    async with memory_cache(clock, max_key_chars=8) as cache:
        await cache.set("k" * 8, 1)
        for call in (cache.set("k" * 9, 1), cache.get("k" * 9), cache.delete("k" * 9)):
            with pytest.raises(SerializationError, match="exceeds 8"):
                await call


async def test_values_from_peers_over_a_lowered_limit_are_not_held(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with memory_cache(clock, max_value_bytes=10, max_key_chars=4) as cache:
        with caplog.at_level(logging.WARNING, "crdtcache.cache._cache"):
            remote_push(cache, {"s": "x" * 10, "big": "x" * 11, "k": "x", "long-key": 1})
        assert cache._replica is not None
        entries = cache._replica.entries
        assert entries["s"].value == "x" * 10
        assert entries["k"].value == "x"
        assert entries["big"].value is NOT_HELD  # the stamp is kept, the value not held
        assert entries["long-key"].value is NOT_HELD
        assert "max_value_bytes" in caplog.text and "max_key_chars" in caplog.text


async def test_values_from_peers_must_be_bytes_under_a_serializer(clock: FakeClock) -> None:
    async with memory_cache(clock, serializer="pickle") as cache:
        remote_push(cache, {"good": pickle.dumps([1]), "bad": [1]})
        assert await cache.get("good") == [1]
        assert cache._replica is not None
        assert cache._replica.entries["bad"].value is NOT_HELD


async def test_a_validator_sees_the_loaded_value_from_peers(clock: FakeClock) -> None:
    def positive(value: object) -> bool:
        return isinstance(value, int) and value > 0

    async with memory_cache(clock, schema=positive, serializer="pickle") as cache:
        remote_push(cache, {"good": pickle.dumps(1), "bad": pickle.dumps(-1), "junk": b"x"})
        assert await cache.get("good") == 1
        assert cache._replica is not None
        assert cache._replica.entries["bad"].value is NOT_HELD
        assert cache._replica.entries["junk"].value is NOT_HELD


def test_the_codec_does_not_check_peers_without_a_reason() -> None:
    # Each remote value pays a call when the codec checks them: only when needed.
    assert not ValueCodec().checks_remote
    assert ValueCodec(max_value_bytes=1 << 10).checks_remote
    assert ValueCodec(serializer="pickle").checks_remote
    assert type(ValueCodec().dump("k", (1,))) is Packed
