"""EventBus and InvalidationRule: templating, globs, and invalidation across caches."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pytest

from crdtcache import ConfigError, EventBus, InvalidationRule

from .conftest import FakeClock, memory_cache


async def test_bus_calls_sync_and_async_handlers_in_order() -> None:
    bus = EventBus()
    calls: list[tuple[str, Any]] = []

    async def on_async(event: str, data: Any) -> None:
        calls.append(("async", data))

    bus.on("user:updated", lambda e, d: calls.append((e, d)))
    bus.on("user:updated", on_async)
    bus.on("other", lambda e, d: calls.append(("other", d)))
    assert await bus.emit("user:updated", 1) == 2
    assert calls == [("user:updated", 1), ("async", 1)]


async def test_bus_glob_subscriptions() -> None:
    bus = EventBus()
    seen: list[str] = []
    bus.on("product:*", lambda e, d: seen.append(e))
    await bus.emit("product:created")
    await bus.emit("product:deleted")
    await bus.emit("user:created")
    assert seen == ["product:created", "product:deleted"]


async def test_bus_handler_errors_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    seen: list[str] = []

    def bad(event: str, data: Any) -> None:
        raise RuntimeError("handler bug")

    bus.on("e", bad)
    bus.on("e", lambda e, d: seen.append(e))
    with caplog.at_level(logging.ERROR):
        assert await bus.emit("e") == 2
    assert seen == ["e"] and "handler bug" in caplog.text


async def test_bus_unsubscribe_and_validation() -> None:
    bus = EventBus()
    seen: list[str] = []
    off = bus.on("e", lambda e, d: seen.append(e))
    off()
    off()
    assert await bus.emit("e") == 0
    with pytest.raises(ConfigError):
        bus.on("", print)
    with pytest.raises(ConfigError):
        bus.on("e", "nope")  # type: ignore[arg-type]


@dataclass
class Payload:
    id: int
    data: dict[str, Any]


@pytest.mark.parametrize(
    ("template", "payload", "expected"),
    [
        ("user:{id}", {"id": 123}, "user:123"),
        ("user:{data.id}", {"data": {"id": "7"}}, "user:7"),
        ("user:{id}", {"data": {"id": "1"}}, "user:1"),  # looked up under data too
        ("user:{id}", Payload(5, {}), "user:5"),
        ("user:{data.name}", Payload(5, {"name": "x"}), "user:x"),
        ("order:{id:05d}", {"id": 42}, "order:00042"),
        ("k:{id!r}", {"id": "a"}, "k:'a'"),
        ("{{literal}}:{id}", {"id": 1}, "{literal}:1"),
        ("user:*", None, "user:*"),
        ("user:{id}:*", {"id": "a*b"}, "user:a[*]b:*"),  # values escaped in a glob
    ],
)
def test_rule_rendering(template: str, payload: Any, expected: str) -> None:
    assert InvalidationRule(event="e", pattern=template).render(payload) == expected


def test_rule_globness() -> None:
    assert not InvalidationRule("e", "user:{id}").is_glob
    assert InvalidationRule("e", "user:*").is_glob
    assert InvalidationRule("e", "user:[ab]{id}").is_glob


def test_rule_missing_field() -> None:
    rule = InvalidationRule("e", "user:{id}")
    with pytest.raises(LookupError, match="'id'"):
        rule.render({"other": 1})
    with pytest.raises(LookupError):
        rule.render(None)
    with pytest.raises(LookupError):
        InvalidationRule("e", "user:{_private}").render(Payload(1, {}))


@pytest.mark.parametrize(
    ("event", "pattern"),
    [("", "p"), ("e", ""), (1, "p"), ("e", "user:{"), ("e", "user:{}"), ("e", "{a..b}")],
)
def test_rule_validation(event: Any, pattern: Any) -> None:
    with pytest.raises(ConfigError):
        InvalidationRule(event=event, pattern=pattern)


def test_rule_matches() -> None:
    rule = InvalidationRule("product:*", "product:*")
    assert rule.matches("product:updated")
    assert not rule.matches("user:updated")


async def test_event_invalidates_matching_keys_in_every_cache(clock: FakeClock) -> None:
    bus = EventBus()
    rules = [
        InvalidationRule(event="user:updated", pattern="user:{id}"),
        InvalidationRule(event="user:deleted", pattern="user:*"),
        InvalidationRule(event="product:*", pattern="product:{data.sku}"),
    ]
    async with (
        memory_cache(clock, event_bus=bus, invalidation_rules=rules) as one,
        memory_cache(clock, event_bus=bus, invalidation_rules=rules) as two,
    ):
        for cache in (one, two):
            for key in ["user:1", "user:2", "product:9", "product:10"]:
                await cache.set(key, 1)
        await bus.emit("user:updated", {"data": {"id": "1"}})
        assert await one.keys("user:*") == await two.keys("user:*") == ["user:2"]
        await bus.emit("product:restocked", {"data": {"sku": 9}})
        assert await one.keys("product:*") == ["product:10"]
        await bus.emit("user:deleted", {})
        assert await two.keys("user:*") == []
        await bus.emit("user:updated", {"nothing": "here"})  # logged, nothing invalidated
        assert await one.keys("product:*") == ["product:10"]


async def test_rules_need_a_bus_and_are_rules() -> None:
    with pytest.raises(ConfigError, match="event_bus"):
        memory_cache(invalidation_rules=[InvalidationRule("e", "k")])
    with pytest.raises(ConfigError, match="InvalidationRule"):
        memory_cache(event_bus=EventBus(), invalidation_rules=[("e", "k")])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="event_bus"):
        memory_cache(event_bus=object())  # type: ignore[arg-type]


async def test_unsubscribed_at_close(clock: FakeClock) -> None:
    bus = EventBus()
    rules = [InvalidationRule("e", "k")]
    async with memory_cache(clock, event_bus=bus, invalidation_rules=rules):
        pass
    assert await bus.emit("e", {}) == 0
