"""Hybrid logical clock rules (Kulkarni et al., 2014) as HybridClock keeps them."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtcache import ClockDriftError
from crdtcache.core import (
    MAX_DRIFT,
    MAX_NODE_ID_CHARS,
    HybridClock,
    PatternTombstone,
    Stamp,
    pack_ts,
)
from tests.core.helpers import T0, make_entry, make_replica, ts

#: Wall-clock readings around T0, including steps back (seconds).
walls = st.floats(T0 - 5, T0 + 5, allow_nan=False)


def test_pack_ts_orders_by_milliseconds_then_counter() -> None:
    assert pack_ts(10, 65535) < pack_ts(11, 0)
    s = Stamp(pack_ts(1_700_000_000_123, 7), "a")
    assert (s.wall_ms, s.logical, s.wall) == (1_700_000_000_123, 7, 1_700_000_000.123)
    assert repr(s) == "Stamp(1700000000123.7@a)"


def test_node_id_breaks_ties_between_equal_times() -> None:
    assert Stamp(5, "a") < Stamp(5, "b") < Stamp(6, "a")


def test_clock_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        HybridClock("")
    with pytest.raises(ValueError, match=f"at most {MAX_NODE_ID_CHARS}"):
        HybridClock("n" * (MAX_NODE_ID_CHARS + 1))
    assert HybridClock("n" * MAX_NODE_ID_CHARS).node == "n" * MAX_NODE_ID_CHARS
    with pytest.raises(ValueError, match="max_drift"):
        HybridClock("a", max_drift=0)


def test_first_stamp_is_the_wall_time() -> None:
    clock = HybridClock("a")
    stamp = clock.now(T0)
    assert stamp == Stamp(ts(T0), "a")
    assert clock.last_ts == stamp.ts


@given(st.lists(walls, min_size=1, max_size=50))
def test_stamps_strictly_increase_even_when_the_wall_clock_steps_back(times: list[float]) -> None:
    clock = HybridClock("a")
    stamps = [clock.now(t) for t in times]
    assert all(a < b for a, b in pairwise(stamps))
    # Never behind the greatest wall time read.
    assert stamps[-1].wall_ms >= int(max(times) * 1000)


@given(st.lists(st.tuples(walls, st.integers(0, 10**4)), min_size=1, max_size=30), walls)
def test_after_receive_the_next_stamp_is_above_the_remote(
    remotes: list[tuple[float, int]], local: float
) -> None:
    clock = HybridClock("b")
    for wall, logical in remotes:
        remote = pack_ts(int(wall * 1000), logical)
        received = clock.receive(remote, local)
        assert received.ts > remote
        assert clock.now(local).ts > remote


@given(
    st.lists(st.floats(-0.2, 0.2, allow_nan=False), min_size=2, max_size=8),
    st.lists(st.floats(0, 0.05, allow_nan=False), min_size=8, max_size=8),
)
def test_happened_before_is_preserved_along_a_message_chain(
    offsets: list[float], delays: list[float]
) -> None:
    """A -> B -> C ...: each send is stamped above the receive that caused it."""
    clocks = [HybridClock(f"n{i}") for i in range(len(offsets))]
    now = T0
    sent = clocks[0].now(now + offsets[0])
    chain = [sent]
    for i in range(1, len(clocks)):
        now += delays[i]
        received = clocks[i].receive(sent.ts, now + offsets[i])
        sent = clocks[i].now(now + offsets[i])
        chain += [received, sent]
    assert all(a < b for a, b in pairwise(chain))


def test_counter_overflow_carries_into_the_millisecond_and_keeps_increasing() -> None:
    clock = HybridClock("a")
    stamps = [clock.now(T0).ts for _ in range(65536 + 10)]
    assert all(a < b for a, b in pairwise(stamps))
    first, last = Stamp(stamps[0], "a"), Stamp(stamps[-1], "a")
    assert first.logical == 0
    # 65536 events fill the counter of T0's millisecond; the rest spill into the next.
    assert Stamp(stamps[65535], "a").logical == 65535
    assert (last.wall_ms, last.logical) == (first.wall_ms + 1, 9)


def test_clock_resumes_above_a_persisted_last_ts() -> None:
    clock = HybridClock("a", last_ts=ts(T0 + 10))
    assert clock.now(T0).ts == ts(T0 + 10) + 1


def test_remote_stamp_beyond_max_drift_is_refused_and_changes_nothing() -> None:
    clock = HybridClock("a", max_drift=1.0)
    clock.now(T0)
    before = clock.last_ts
    with pytest.raises(ClockDriftError, match="ahead of local time"):
        clock.receive(ts(T0 + 1.5), T0)
    with pytest.raises(ClockDriftError):
        clock.observe(ts(T0 + 1.5), T0)
    assert clock.last_ts == before
    assert clock.refused == 2
    # Exactly at the bound is accepted.
    clock.observe(ts(T0 + 1.0), T0)
    assert clock.last_ts == ts(T0 + 1.0)


def test_default_max_drift_is_a_minute() -> None:
    clock = HybridClock("a")
    assert MAX_DRIFT == 60.0
    clock.check(ts(T0 + 59.9), T0)
    with pytest.raises(ClockDriftError):
        clock.check(ts(T0 + 60.5), T0)


def test_replica_refuses_a_drifting_entry_unchanged_and_counts_it() -> None:
    r = make_replica("a", max_drift=1.0)
    r.set("k", "mine", T0)
    entries, patterns, marks = dict(r.entries), dict(r.patterns), dict(r.marks)
    last = r.clock.last_ts
    with pytest.raises(ClockDriftError):
        r.merge_entry("k", make_entry("future", T0 + 30, "b"), T0)
    with pytest.raises(ClockDriftError):
        r.merge_entry("new", make_entry("future", T0 + 30, "b"), T0)
    assert (r.entries, r.patterns, r.marks) == (entries, patterns, marks)
    assert r.clock.last_ts == last
    assert r.refused_drift == 2
    assert r.clock.refused == 2


def test_replica_refuses_a_drifting_pattern_tombstone() -> None:
    r = make_replica("a", max_drift=1.0)
    r.set("user:1", "x", T0)
    with pytest.raises(ClockDriftError):
        r.merge_pattern(PatternTombstone("user:*", ts(T0 + 30), "b"), T0)
    assert r.lookup("user:1", T0) is not None
    assert r.patterns == {}
    assert r.refused_drift == 1
