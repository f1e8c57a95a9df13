"""Helpers for the cache tests: a controllable clock, caches on it, fake peers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from crdtcache import Cache
from crdtcache.core import Entry, Push, encode_value, pack_ts

START = 1_700_000_000.0


class FakeClock:
    """Wall time that moves only when told to."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def memory_cache(clock: FakeClock | None = None, **options: Any) -> Cache:
    options.setdefault("backend", "memory")
    return Cache(_clock=clock or time.time, **options)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def cache(clock: FakeClock) -> AsyncIterator[Cache]:
    async with memory_cache(clock, node_id="me") as c:
        yield c


def remote_push(
    cache: Cache, items: dict[str, Any], *, origin: str = "peer", at: float | None = None
) -> None:
    """Merge writes "from" ``origin`` into ``cache`` as its runtime would, and drain them."""
    engine = cache._engine
    assert engine is not None
    now = cache._clock()
    ts = pack_ts(int((now if at is None else at) * 1000))
    entries = tuple(
        (key, Entry(encode_value(key, value), ts, origin, None)) for key, value in items.items()
    )
    engine.handle(origin, Push(entries), now)
    cache._on_changes(engine.drain_changes())
    engine.drain_peer_events()
