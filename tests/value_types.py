"""Every supported value type as a hypothesis strategy, and an oracle for "the same value".

Shared by the core, store, cache and redis tests of issue 13's round trip: a value
must come back equal *and* of the same types all the way down (a tuple stays a tuple,
a set a set, an aware datetime keeps its offset), which ``==`` alone does not check
(``(1, 2) == [1, 2]`` is False but ``{1: 1} == {1.0: 1}`` and ``b"x" ==
bytearray(b"x")`` are True). :func:`typed` spells a value out with its types, without
using the code under test.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from time import monotonic
from typing import Any, TypeVar
from uuid import UUID

from hypothesis import strategies as st

T = TypeVar("T")

#: UTC offsets a tzinfo may have: strictly within a day, to the microsecond.
offsets = st.timedeltas(
    min_value=timedelta(hours=-23, minutes=-59, seconds=-59, microseconds=-999_999),
    max_value=timedelta(hours=23, minutes=59, seconds=59, microseconds=999_999),
)
tzinfos = st.none() | st.just(UTC) | st.builds(timezone, offsets)

#: Values that may be map keys and set items (hashable, of every supported type).
hashable_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # unbounded: ints beyond 64 bits too
    st.floats(),  # NaN and infinities included
    st.text(max_size=8),
    st.binary(max_size=8),
    st.datetimes(timezones=tzinfos),
    st.dates(),
    st.times(timezones=tzinfos),
    st.timedeltas(),
    st.uuids(),
    st.decimals(allow_nan=False),  # a signalling NaN cannot be hashed
)
hashables = st.recursive(
    hashable_scalars,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
scalars = st.one_of(
    hashable_scalars,
    st.decimals(),  # NaN, sNaN and infinities
    st.binary(max_size=8).map(bytearray),
    st.integers(min_value=1 << 64, max_value=1 << 200) | st.integers(max_value=-(1 << 63) - 1),
)
#: Any supported value, nested.
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(hashables, inner, max_size=4),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
    ),
    max_leaves=12,
)


def typed(value: Any) -> Any:
    """``value`` spelt out with every type in it: equal for the same value and types."""
    kind = type(value)
    name = kind.__name__
    if kind in (list, tuple):
        return (name, [typed(v) for v in value])
    if kind is dict:
        return (name, [(typed(k), typed(v)) for k, v in value.items()])
    if kind in (set, frozenset):
        return (name, sorted((typed(v) for v in value), key=repr))
    if kind is float:
        return (name, value.hex() if not math.isnan(value) else "nan")
    if kind in (datetime, time):
        return (name, value.isoformat(), value.fold, value.utcoffset())
    if kind in (int, bool, str, bytes, bytearray, date, timedelta, UUID, Decimal, type(None)):
        return (name, repr(value))
    raise AssertionError(f"typed() does not know {name}")


class BackgroundLoop:
    """An event loop in a thread, so that a (sync) hypothesis test can drive caches.

    Caches started in it live across the examples of one test: a cluster is built
    once, not once per example.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` in the loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Stop the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


#: What a read returns for a key that is not there (None is a value like any other).
MISSING: Any = object()


async def arrives(read: Callable[[], Awaitable[Any]], timeout: float = 5.0) -> Any:
    """What ``read()`` returns once it is not :data:`MISSING` (the value got there)."""
    deadline = monotonic() + timeout
    while (got := await read()) is MISSING:
        if monotonic() > deadline:
            raise AssertionError(f"nothing arrived within {timeout} s")
        await asyncio.sleep(0.005)
    return got
