"""Pattern tombstones: indexed by literal prefix, capped, and covering what brute force covers."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtcache.core import TOMBSTONE, Entry, HybridClock, PatternTombstone, Replica, pack_ts
from crdtcache.core._patterns import PatternIndex, PatternLimitError, literal_prefix

T = 1_700_000_000.0
globs = st.text(alphabet="ab:*?[]!", min_size=1, max_size=6)
keys = st.text(alphabet="ab:", max_size=6)


def test_literal_prefix() -> None:
    assert literal_prefix("user:*") == "user:"
    assert literal_prefix("user:1?") == "user:1"
    assert literal_prefix("[ab]x") == ""
    assert literal_prefix("exact") == "exact"


@given(st.lists(st.tuples(globs, st.integers(1, 50)), max_size=30), keys, st.integers(0, 60))
def test_the_index_finds_every_glob_that_matches(
    tombs: list[tuple[str, int]], key: str, ts: int
) -> None:
    index = PatternIndex({}, limit=1000)
    for glob, stamp in tombs:
        if glob not in index.by_glob or index.by_glob[glob].ts < stamp:
            index.put(PatternTombstone(glob, stamp, "o"))
    found = {t.pattern for m, t in index.candidates(key) if m.match(key)}
    expected = {g for g in index.by_glob if fnmatch.fnmatchcase(key, g)}
    assert found == expected


def test_a_merge_looks_only_at_globs_that_share_its_prefix() -> None:
    # The cost of a merge no longer grows with the number of pattern tombstones:
    # 5,000 of them under other prefixes leave no candidate to match.
    index = PatternIndex({}, limit=10_000)
    for i in range(5000):
        index.put(PatternTombstone(f"tenant{i}:*", 5, "o"))
    assert list(index.candidates("user:1")) == []
    assert [t.pattern for _, t in index.candidates("tenant42:x")] == ["tenant42:*"]


def test_the_number_of_pattern_tombstones_is_capped() -> None:
    replica = Replica(HybridClock("n"), max_patterns=3)
    for i in range(3):
        replica.invalidate_pattern(f"p{i}:*", T)
    replica.set("p9:k", "v", T)
    marks = dict(replica.marks)
    with pytest.raises(PatternLimitError, match="limit"):
        replica.invalidate_pattern("p9:*", T)
    assert replica.marks == marks  # refused before anything changed
    assert "p9:*" not in replica.patterns and replica.lookup("p9:k", T) is not None
    remote = PatternTombstone("q:*", pack_ts(int(T * 1000), 9), "peer")
    with pytest.raises(PatternLimitError):
        replica.merge_pattern(remote, T)
    replica.invalidate_pattern("p1:*", T + 1)  # a newer tombstone of a held glob: no new room
    assert len(replica.patterns) == 3
    replica.collect(T + 7200)  # collection frees room
    replica.invalidate_pattern("p9:*", T + 7200)
    assert replica.lookup("p9:k", T + 7200) is None


def test_collected_globs_leave_the_index() -> None:
    replica = Replica(HybridClock("n"), tombstone_grace=60)
    replica.invalidate_pattern("a:*", T)
    stale = Entry("v", pack_ts(int(T * 1000) - 10, 0), "p")
    assert replica.merge_entry("a:1", stale, T) is None  # covered
    replica.collect(T + 120)
    assert not replica.patterns
    assert replica.merge_entry("a:1", stale, T + 120) is not None  # beyond the grace
    assert replica.entries["a:1"].value is not TOMBSTONE


batches = st.lists(
    st.tuples(globs, st.integers(1, 60), st.sampled_from(["o", "p"])), min_size=1, max_size=8
)
states = st.lists(st.tuples(keys, st.integers(1, 60), st.sampled_from(["o", "p"])), max_size=12)


def _replica(entries: list[tuple[str, int, str]], limit: int, unanchored: int) -> Replica:
    replica = Replica(HybridClock("n"), max_patterns=limit)
    replica._pattern_index.unanchored_limit = unanchored
    for key, stamp, origin in entries:
        replica.merge_entry(key, Entry("v", pack_ts(int(T * 1000), stamp), origin), T)
    return replica


@given(states, batches, st.integers(1, 6), st.integers(1, 3))
def test_a_batch_of_pattern_tombstones_does_what_one_at_a_time_does(
    entries: list[tuple[str, int, str]],
    batch: list[tuple[str, int, str]],
    limit: int,
    unanchored: int,
) -> None:
    tombs = [PatternTombstone(g, pack_ts(int(T * 1000), s), o) for g, s, o in batch]
    one_by_one = _replica(entries, limit, unanchored)
    refused = 0
    for tomb in tombs:
        try:
            one_by_one.merge_pattern(tomb, T)
        except PatternLimitError:
            refused += 1
    together = _replica(entries, limit, unanchored)
    removed, _, errors = together.merge_patterns(tombs, T)
    assert together.entries == one_by_one.entries
    assert together.patterns == one_by_one.patterns
    assert bool(errors) == bool(refused)  # (a glob refused twice in one batch: once)
    assert {c.key for c in removed} == set(_replica(entries, limit, unanchored).entries) - set(
        together.entries
    )


def test_unanchored_globs_have_a_cap_of_their_own_and_are_skipped_at_once() -> None:
    index = PatternIndex({}, limit=100, unanchored_limit=2)
    index.put(PatternTombstone("*:a", 5, "o"))
    index.put(PatternTombstone("*:b", 5, "o"))
    assert index.admits("user:*") and not index.admits("*:c")
    with pytest.raises(PatternLimitError, match="without a literal prefix"):
        index.put(PatternTombstone("*:c", 5, "o"))
    assert list(index.candidates("user:z")) == []  # the union matched nothing
    assert [t.pattern for _, t in index.candidates("user:b")] == ["*:a", "*:b"]
