"""Entries: what one costs, how two compare, and the expiries local writes share."""

from __future__ import annotations

import gc
import math
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtcache.core import NOT_HELD, TOMBSTONE, Entry
from crdtcache.core._counter import Counter
from crdtcache.core._entry import EXPIRY_SHARE_SECONDS, Amended, Expiries, stub_of, with_value

T = 1_700_000_000.0


def test_an_entry_is_small_and_not_tracked_by_the_cycle_collector() -> None:
    # One entry exists per key: its size is the cache's overhead per entry, and a
    # tracked entry makes every full collection walk the whole map.
    entry = Entry("v", 1 << 56, "a", T + 60.0)
    assert sys.getsizeof(entry) <= 48
    assert not gc.is_tracked(entry)
    amended = Amended(Counter.started(1, 5, "a"), 7, "a", None, 5, "a")
    assert not gc.is_tracked(amended)
    assert not gc.is_tracked(stub_of(amended))


def test_entries_compare_by_type_and_content() -> None:
    assert Entry("v", 1, "a", 2.0) == Entry("v", 1, "a", 2.0)
    assert Entry("v", 1, "a") == Entry("v", 1, "a", None)
    assert Entry("v", 1, "a") != Entry("v", 1, "b")
    assert Entry("v", 1, "a") != Entry("w", 1, "a")
    assert Entry("v", 1, "a") != Entry("v", 1, "a", 2.0)
    # An amended entry never equals a plain one, whichever side asks.
    plain, amended = Entry("v", 1, "a"), Amended("v", 1, "a", None, 1, "a")
    assert plain != amended and amended != plain
    assert amended == Amended("v", 1, "a", None, 1, "a")
    assert amended != Amended("v", 1, "a", None, 1, "a", True)
    assert with_value(amended, TOMBSTONE) == Amended(TOMBSTONE, 1, "a", None, 1, "a")
    assert Entry("v", 1, "a") != ("v", 1, "a", None)
    with pytest.raises(TypeError):
        hash(plain)  # entries are never keys


def test_an_entry_reads_as_before() -> None:
    e = Entry(NOT_HELD, 5, "a", 10.0)
    assert e.stamp.ts == 5 and e.stamp.node == "a"
    assert not e.held and not e.deleted and e.expired(10.0) and not e.expired(9.9)
    assert repr(Entry("v", 1 << 16, "a")) == "Entry('v', Stamp(1.0@a), expires=None)"


def test_writes_in_one_millisecond_share_an_expiry() -> None:
    expiries = Expiries()
    first = expiries.at(T, 60.0)
    assert first == T + 60.0  # the first write of a burst gets the exact sum
    assert expiries.at(T, 60.0) is first
    assert expiries.at(T + 0.0005, 60.0) is first  # at most 1 ms early
    later = expiries.at(T + 0.002, 60.0)
    assert later == T + 60.002 and later is not first
    assert expiries.at(T + 0.002, 10.0) == T + 10.002  # another TTL: its own expiry


def test_an_expiry_at_or_before_now_is_never_shared() -> None:
    expiries = Expiries()
    last = expiries.at(T, 0.0005)
    # A later write whose own expiry is within 1 ms must not get one already past.
    assert expiries.at(T + 0.0006, 0.0001) == T + 0.0006 + 0.0001
    assert last == T + 0.0005


@given(
    st.lists(
        st.tuples(
            st.floats(0, 0.01, allow_nan=False),
            st.floats(1e-6, 1e6, allow_nan=False, allow_infinity=False),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_a_shared_expiry_is_never_late_and_never_past(steps: list[tuple[float, float]]) -> None:
    expiries, now = Expiries(), T
    for step, seconds in steps:
        now += step
        exact = now + seconds
        expires = expiries.at(now, seconds)
        assert math.isfinite(expires)
        assert expires <= exact  # never serves a value past its TTL
        assert exact - expires < EXPIRY_SHARE_SECONDS
        assert expires > now or expires == exact  # live when written, as the exact sum
