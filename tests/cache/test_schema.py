"""Schemas: validation before writing, models back on read, remote values refused."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import sys

import pydantic
import pytest

from crdtcache import Cache, ConfigError, SerializationError, ValidationError
from crdtcache.cache._schema import ValueCodec
from crdtcache.core import NOT_HELD

from .conftest import FakeClock, memory_cache, remote_push


class User(pydantic.BaseModel):
    id: int
    name: str
    seen: dt.datetime | None = None


@dataclasses.dataclass
class Point:
    x: int
    y: int


async def test_pydantic_model_round_trip(clock: FakeClock) -> None:
    async with memory_cache(clock, schema=User) as cache:
        when = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
        await cache.set("u", User(id=1, name="Alice", seen=when))
        await cache.set("v", {"id": "2", "name": "Bob"})  # lax input is coerced
        got = await cache.get("u")
        assert isinstance(got, User) and got == User(id=1, name="Alice", seen=when)
        got.name = "Mallory"
        assert (await cache.get("u")).name == "Alice"
        assert await cache.get("v") == User(id=2, name="Bob")
        assert await cache.get_or_set("w", lambda: {"id": 3, "name": "C"}) == User(id=3, name="C")


async def test_invalid_values_raise_before_writing(clock: FakeClock) -> None:
    async with memory_cache(clock, schema=User) as cache:
        seen: list[object] = []
        cache.on("set", seen.append)
        with pytest.raises(ValidationError, match=r"'u'.*User"):
            await cache.set("u", {"id": "not a number", "name": "x"})
        with pytest.raises(ValidationError):
            await cache.set("u", "just a string")
        assert await cache.get("u") is None
        assert seen == []
        assert cache._engine is not None and cache._engine.pending == 0


async def test_dataclass_schema(clock: FakeClock) -> None:
    async with memory_cache(clock, schema=Point) as cache:
        await cache.set("p", Point(1, 2))
        assert await cache.get("p") == Point(1, 2)
        with pytest.raises(ValidationError):
            await cache.set("p", {"x": "a", "y": 1})


async def test_type_adapter_schema(clock: FakeClock) -> None:
    async with memory_cache(clock, schema=pydantic.TypeAdapter(list[int])) as cache:
        await cache.set("l", ["1", 2])
        assert await cache.get("l") == [1, 2]
        with pytest.raises(ValidationError):
            await cache.set("l", ["x"])


async def test_callable_validator(clock: FakeClock) -> None:
    def positive(value: object) -> bool:
        if not isinstance(value, int):
            raise TypeError("an int please")
        return value > 0

    async with memory_cache(clock, schema=positive) as cache:
        await cache.set("n", 5)
        assert await cache.get("n") == 5
        with pytest.raises(ValidationError, match="positive"):
            await cache.set("n", -1)
        with pytest.raises(ValidationError, match="an int please"):
            await cache.set("n", "x")
        assert await cache.get("n") == 5


async def test_validator_returning_none_accepts(clock: FakeClock) -> None:
    async with memory_cache(clock, schema=lambda v: None) as cache:
        await cache.set("k", {"any": "thing"})
        assert await cache.get("k") == {"any": "thing"}


async def test_unserializable_model_field_is_a_serialization_error(clock: FakeClock) -> None:
    class Odd(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)
        thing: object

    async with memory_cache(clock, schema=Odd) as cache:
        with pytest.raises(SerializationError, match="'k'"):
            await cache.set("k", Odd(thing=object()))


def test_bad_schema_options() -> None:
    with pytest.raises(ConfigError, match="schema"):
        Cache(backend="memory", schema=42)


def test_dataclass_schema_without_pydantic_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pydantic", None)
    with pytest.raises(ConfigError, match=r"crdtcache\[pydantic\]"):
        ValueCodec(Point)
    assert ValueCodec(len).validator is len  # plain callables need no pydantic


async def test_remote_value_failing_the_schema_is_refused(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with memory_cache(clock, schema=User) as cache:
        events: list[object] = []
        cache.on("set", events.append)
        with caplog.at_level(logging.WARNING):
            remote_push(cache, {"good": {"id": 1, "name": "A"}, "bad": {"id": "x"}})
        assert await cache.get("good") == User(id=1, name="A")
        assert await cache.get("bad") is None
        # The stamp is kept (the replica converges on it); the value is not held.
        assert cache._entries["bad"].value is NOT_HELD
        assert "refused the value of 'bad' from peer" in caplog.text
        stats = await cache.get_statistics()
        assert stats.refused_values == 1
        assert stats.local.size == 1
        health = cache.health()
        assert any("schema" in r for r in health.reasons)
        assert len(events) == 2  # both stamps were applied


async def test_remote_value_refused_by_a_callable_validator(clock: FakeClock) -> None:
    async with memory_cache(clock, schema=lambda v: isinstance(v, int)) as cache:
        remote_push(cache, {"a": 1, "b": "no"})
        assert await cache.get("a") == 1
        assert await cache.get("b") is None


async def test_value_the_schema_no_longer_accepts_is_dropped_on_read(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with memory_cache(clock, schema=User) as cache:
        await cache.set("u", {"id": 1, "name": "A"})
        # As if the node restarted with a stricter schema over persisted data.
        cache._codec.adapter = pydantic.TypeAdapter(Point)
        with caplog.at_level(logging.WARNING):
            assert await cache.get("u") is None
        assert "no longer passes the schema" in caplog.text
