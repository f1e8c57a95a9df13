"""The LWW replica: reads, writes, merge laws, pattern tombstones, marks, expiry and GC."""

from __future__ import annotations

import fnmatch
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtcache.core import (
    NOT_HELD,
    TOMBSTONE,
    Entry,
    PatternTombstone,
    Replica,
    Stamp,
    Version,
    check_resolver,
    last_writer_wins,
)
from tests.core.helpers import (
    RESOLVERS,
    T0,
    apply_deltas,
    budget,
    deletes_win,
    full,
    make_entry,
    make_replica,
    max_value_wins,
    merge_state,
    merged,
    observable,
    ts,
)

Delta = tuple[str, Entry] | PatternTombstone

KEYS = ("user:1", "user:2", "item:1", "x")
PATTERNS = ("user:*", "item:*", "*", "user:?")
#: Times at which merged states are compared: before any expiry, amid, after all.
PROBES = (T0, T0 + 0.05, T0 + 0.5, T0 + 100)


# ------------------------------------------------------------------ deltas
op = st.tuples(
    st.integers(0, 3),  # origin
    st.sampled_from(["set", "set", "delete", "pattern"]),
    st.integers(0, 3),  # key or pattern index
    st.integers(0, 3),  # value
    st.sampled_from([None, None, 0.05, 0.5]),  # ttl
    st.sampled_from([0, 0, 1, 7]),  # ms elapsed before the op
)


@st.composite
def deltas(draw: st.DrawFn, min_size: int = 1) -> list[Delta]:
    """Writes by four origins, with equal milliseconds across origins, TTLs and tombstones."""
    origins = [make_replica(f"o{i}") for i in range(4)]
    now = T0
    out: list[Delta] = []
    for origin, kind, index, value, ttl, elapsed in draw(
        st.lists(op, min_size=min_size, max_size=14)
    ):
        now += elapsed / 1000
        r = origins[origin]
        if kind == "set":
            expires = None if ttl is None else now + ttl
            out.append((KEYS[index], r.set(KEYS[index], value, now, expires)))
        elif kind == "delete":
            out.append((KEYS[index], r.delete(KEYS[index], now)))
        else:
            out.append(r.invalidate_pattern(PATTERNS[index], now)[0])
    return out


@st.composite
def states(draw: st.DrawFn, count: int) -> list[Replica]:
    """``count`` replicas, each holding a random subset of one history, merged in random order."""
    history = draw(deltas())
    subsets = st.lists(st.sampled_from(history), max_size=len(history)) if history else st.just([])
    return [apply_deltas(draw(subsets)) for _ in range(count)]


def same(a: Replica, b: Replica) -> bool:
    return all(observable(a, t) == observable(b, t) for t in PROBES) and full(a) == full(b)


# ---------------------------------------------------------------- merge laws
@given(states(2))
def test_merge_is_commutative(pair: list[Replica]) -> None:
    a, b = pair
    assert same(merged(a, b), merged(b, a))


@given(states(3))
def test_merge_is_associative(triple: list[Replica]) -> None:
    a, b, c = triple
    assert same(merged(merged(a, b), c), merged(a, merged(b, c)))


@given(states(1))
def test_merge_is_idempotent(single: list[Replica]) -> None:
    (a,) = single
    assert same(merged(a, a), merged(a))
    again = merged(a)
    merge_state(again, a, T0)
    assert same(again, merged(a))


@given(st.data())
def test_any_delivery_order_gives_the_same_state(data: st.DataObject) -> None:
    history = data.draw(deltas())
    shuffled = data.draw(st.permutations(history))
    doubled = data.draw(st.permutations(history + history[: len(history) // 2]))
    assert same(apply_deltas(history), apply_deltas(shuffled))
    assert same(apply_deltas(history), apply_deltas(doubled))


@given(st.data())
def test_merged_state_matches_the_reference_model(data: st.DataObject) -> None:
    """Per key the greatest-stamped write wins unless deleted, expired or pattern-covered."""
    history = data.draw(deltas())
    r = apply_deltas(data.draw(st.permutations(history)))
    for now in PROBES:
        assert {k: v[:2] for k, v in r.visible(now).items()} == model(history, now)


def model(history: list[Delta], now: float) -> dict[str, tuple[Any, Stamp]]:
    best: dict[str, Entry] = {}
    for d in history:
        if not isinstance(d, PatternTombstone):
            key, e = d
            if key not in best or e.stamp > best[key].stamp:
                best[key] = e
    tombs = [d for d in history if isinstance(d, PatternTombstone)]
    out = {}
    for key, e in best.items():
        covered = any(t.stamp >= e.stamp and _glob(t.pattern, key) for t in tombs)
        if not (e.deleted or e.expired(now) or covered):
            out[key] = (e.value, e.stamp)
    return out


def _glob(pattern: str, key: str) -> bool:
    return fnmatch.fnmatchcase(key, pattern)


# ------------------------------------------------- merge laws with a resolver
@pytest.mark.parametrize("name", sorted(RESOLVERS))
@settings(max_examples=budget(3))
@given(data=st.data())
def test_any_delivery_order_gives_the_same_state_with_a_lawful_resolver(
    name: str, data: st.DataObject
) -> None:
    """Pattern tombstones included: a resolver that keeps the laws must still converge."""
    resolver = RESOLVERS[name]
    history = data.draw(deltas())
    entries = [d[1] for d in history if not isinstance(d, PatternTombstone)]
    samples = [Version("k", e.value, e.stamp, e.expires, e.deleted) for e in entries[:5]]
    assert check_resolver(resolver, samples) == []
    order = data.draw(st.permutations(history))
    first = apply_deltas(history, resolver=resolver)
    second = apply_deltas(order, resolver=resolver)
    assert all(observable(first, t) == observable(second, t) for t in PROBES)


@given(st.data())
def test_last_writer_wins_as_a_resolver_equals_the_default(data: st.DataObject) -> None:
    history = data.draw(deltas())
    order = data.draw(st.permutations(history))
    assert same(apply_deltas(order, resolver=last_writer_wins), apply_deltas(history))


def test_a_resolver_decides_whether_a_pattern_tombstone_removes_a_key() -> None:
    """A pattern tombstone is a delete of every key it matches, stamped like it."""
    newer_small = ("user:1", make_entry(5, T0 + 2, "b"))
    older_big = ("user:1", make_entry(10, T0, "a"))
    tomb = PatternTombstone("user:*", ts(T0 + 1), "c")
    for resolver, expected in ((max_value_wins, {"user:1": 10}), (deletes_win, {})):
        for order in itertools.permutations([newer_small, older_big, tomb]):
            r = apply_deltas(order, resolver=resolver)
            assert {k: v[0] for k, v in r.visible(T0 + 3).items()} == expected, order


def test_a_local_write_ranked_below_a_pattern_tombstone_leaves_the_key_gone() -> None:
    r = make_replica("a", resolver=deletes_win)
    tomb, _ = r.invalidate_pattern("user:*", T0)
    kept = r.set("user:1", "v", T0 + 1)
    assert kept.deleted and kept.stamp == tomb.stamp
    assert r.visible(T0 + 1) == {}
    assert r.set("item:1", "v", T0 + 1).value == "v"


def test_with_a_resolver_expiry_does_not_change_the_version_it_sees() -> None:
    """Regression: shrinking an expired value to a tombstone made a resolver that
    ranks deletes first prefer it to a newer write on nodes that had collected."""
    older = make_entry(0, T0, "a", expires=T0 + 0.05)
    newer = make_entry(0, T0 + 0.01, "a")
    results = []
    for collect_first in (False, True):
        r = make_replica("m", resolver=deletes_win, grace=10)
        r.merge_entry("k", older, T0)
        if collect_first:
            _, expired = r.collect(T0 + 1)
            assert [c.kind for c in expired] == ["expire"]
            assert r.entries["k"] == older  # kept, unreadable
            assert r.visible(T0 + 1) == {}
        r.merge_entry("k", newer, T0 + 1)
        results.append(r.visible(T0 + 1))
    assert results[0] == results[1] == {"k": (0, newer.stamp, None)}


def test_with_a_resolver_an_expired_value_is_reported_once_and_dropped_after_the_grace() -> None:
    r = make_replica("m", resolver=max_value_wins, grace=10)
    r.merge_entry("k", make_entry(5, T0, "a", expires=T0 + 1), T0)
    reports = [c.kind for t in range(2, 30) for c in r.collect(T0 + t)[1]]
    assert reports == ["expire"]
    assert "k" not in r.entries
    assert r.collected == {"a": ts(T0)}


# ------------------------------------------------------------ reads & writes
def test_set_then_lookup() -> None:
    r = make_replica()
    e = r.set("k", "v", T0)
    assert r.lookup("k", T0) is e
    assert r.visible(T0) == {"k": ("v", Stamp(ts(T0), "a"), None)}
    assert list(r.live_keys(T0)) == ["k"]
    assert r.marks == {"a": e.ts}
    assert len(r) == 1


def test_delete_leaves_a_tombstone() -> None:
    r = make_replica()
    r.set("k", "v", T0)
    tomb = r.delete("k", T0)
    assert tomb.deleted and not tomb.held
    assert r.lookup("k", T0) is None
    assert r.visible(T0) == {}
    assert list(r.live_keys(T0)) == []
    assert r.entries["k"].value is TOMBSTONE


def test_expired_entry_reads_as_absent() -> None:
    r = make_replica()
    r.set("k", "v", T0, expires=T0 + 1)
    assert r.lookup("k", T0 + 0.999) is not None
    assert r.lookup("k", T0 + 1) is None
    assert r.visible(T0 + 1) == {}
    assert list(r.live_keys(T0 + 1)) == []


def test_replica_rejects_non_positive_grace() -> None:
    with pytest.raises(ValueError, match="tombstone_grace"):
        make_replica(grace=0)


def test_entry_equality_and_repr() -> None:
    e = make_entry("v", T0, "a", expires=T0 + 1)
    assert e == make_entry("v", T0, "a", expires=T0 + 1)
    assert e != make_entry("w", T0, "a", expires=T0 + 1)
    assert e != "v"
    assert repr(e) == f"Entry('v', {Stamp(ts(T0), 'a')!r}, expires={T0 + 1!r})"
    assert repr(TOMBSTONE) == "TOMBSTONE" and repr(NOT_HELD) == "NOT_HELD"
    with pytest.raises(TypeError):
        hash(e)


# ------------------------------------------------------------- equal stamps
def test_the_same_write_twice_is_idempotent() -> None:
    r = make_replica("b")
    e = make_entry("v", T0, "a")
    change = r.merge_entry("k", e, T0)
    assert change is not None and (change.kind, change.remote) == ("set", True)
    snapshot = full(r)
    assert r.merge_entry("k", make_entry("v", T0, "a"), T0) is None
    assert full(r) == snapshot


def test_equal_time_breaks_ties_by_node_id() -> None:
    for order in ((("a", "x"), ("b", "y")), (("b", "y"), ("a", "x"))):
        r = make_replica("m")
        for node, value in order:
            r.merge_entry("k", make_entry(value, T0, node), T0)
        assert r.visible(T0)["k"][0] == "y"


def test_a_not_held_stub_is_filled_by_the_held_value() -> None:
    r = make_replica("b")
    assert r.merge_entry("k", make_entry(NOT_HELD, T0, "a"), T0) is not None
    assert r.visible(T0)["k"][0] is NOT_HELD
    assert r.lookup("k", T0) is not None  # known, must be fetched
    assert r.merge_entry("k", make_entry("v", T0, "a"), T0) is None
    assert r.visible(T0)["k"][0] == "v"
    # The reverse does not empty a held value.
    r.merge_entry("k", make_entry(NOT_HELD, T0, "a"), T0)
    assert r.visible(T0)["k"][0] == "v"


def test_evict_keeps_the_stamp_and_drops_the_value() -> None:
    r = make_replica()
    e = r.set("k", "v", T0, expires=T0 + 9)
    assert r.evict("k")
    assert r.entries["k"] == Entry(NOT_HELD, e.ts, "a", T0 + 9)
    assert not r.evict("k")
    assert not r.evict("missing")
    r.delete("k", T0)
    assert not r.evict("k")
    # An older write cannot come back over the evicted stub.
    assert r.merge_entry("k", make_entry("old", T0 - 1, "z"), T0) is None


# --------------------------------------------------------- pattern tombstones
def test_pattern_tombstone_removes_matching_older_keys() -> None:
    r = make_replica()
    r.set("user:1", 1, T0)
    r.set("user:2", 2, T0)
    r.set("item:1", 3, T0)
    r.delete("user:3", T0)
    tomb, changes = r.invalidate_pattern("user:*", T0)
    assert {c.key for c in changes} == {"user:1", "user:2"}
    assert all(c.kind == "invalidate" and c.pattern == "user:*" for c in changes)
    assert set(r.entries) == {"item:1"}
    assert r.patterns == {"user:*": tomb}
    assert r.marks["a"] == tomb.ts


def test_pattern_tombstone_covers_keys_not_received_yet() -> None:
    r = make_replica("b")
    r.merge_pattern(PatternTombstone("user:*", ts(T0 + 1), "c"), T0 + 1)
    assert r.merge_entry("user:1", make_entry("late", T0, "a"), T0 + 1) is None
    assert r.merge_entry("user:1", make_entry("same ms", T0 + 1, "a"), T0 + 1) is None
    assert "user:1" not in r.entries
    # Newer writes and non-matching keys are not covered.
    assert r.merge_entry("user:2", make_entry("new", T0 + 2, "a"), T0 + 2) is not None
    assert r.merge_entry("item:1", make_entry("other", T0, "a"), T0 + 2) is not None
    # At an equal ts the node id decides, as for entries.
    assert r.merge_entry("user:3", make_entry("d wins", T0 + 1, "d"), T0 + 2) is not None


def test_pattern_tombstone_newest_per_pattern_wins() -> None:
    r = make_replica("b")
    old = PatternTombstone("user:*", ts(T0), "a")
    new = PatternTombstone("user:*", ts(T0 + 1), "a")
    r.merge_pattern(new, T0)
    assert r.merge_pattern(old, T0) == []
    assert r.patterns["user:*"] is new
    assert r.merge_pattern(new, T0) == []


def test_clear_is_the_star_pattern() -> None:
    r = make_replica()
    for i in range(100):
        r.set(f"k{i}", i, T0)
    r.invalidate_pattern("*", T0)
    assert r.visible(T0) == {} and len(r) == 0
    assert len(r.patterns) == 1


# ----------------------------------------------------------------- expiry
def test_an_older_short_ttl_write_expiring_does_not_hide_a_newer_write() -> None:
    old = make_entry("old", T0, "a", expires=T0 + 1)
    new = make_entry("new", T0 + 0.5, "b")
    for order in ((old, new), (new, old)):
        r = make_replica("c")
        for e in order:
            r.merge_entry("k", e, T0 + 0.5)
        r.collect(T0 + 2)
        assert r.visible(T0 + 2)["k"][0] == "new"


def test_an_expired_write_shrunk_to_a_tombstone_still_loses_to_a_newer_write() -> None:
    r = make_replica("c")
    r.merge_entry("k", make_entry("old", T0, "a", expires=T0 + 1), T0)
    r.collect(T0 + 2)
    assert r.entries["k"].deleted
    assert r.merge_entry("k", make_entry("new", T0 + 0.5, "b"), T0 + 2) is not None
    assert r.visible(T0 + 2)["k"][0] == "new"


def test_an_expired_entry_does_not_let_an_older_write_reappear() -> None:
    older = make_entry("older", T0, "a")
    newer = make_entry("newer", T0 + 0.5, "b", expires=T0 + 1)
    for collect in (False, True):
        for order in ((older, newer), (newer, older)):
            r = make_replica("c")
            for e in order:
                r.merge_entry("k", e, T0 + 0.5)
                if collect:
                    r.collect(T0 + 2)
            assert r.lookup("k", T0 + 2) is None
            assert r.visible(T0 + 2) == {}


@given(st.data())
def test_expiry_never_beats_a_newer_write(data: st.DataObject) -> None:
    """Whatever the order and collection, the newest write's value is what reads see."""
    history = data.draw(deltas(min_size=2))
    order = data.draw(st.permutations(history))
    collect_at = data.draw(st.lists(st.sampled_from(PROBES), max_size=3).map(sorted))
    r = make_replica("m")
    for i, d in enumerate(order):
        if isinstance(d, PatternTombstone):
            r.merge_pattern(d, T0)
        else:
            r.merge_entry(d[0], d[1], T0)
        if collect_at and i == len(order) // 2:
            for t in collect_at:
                r.collect(t)
    for now in PROBES:
        if not collect_at or now >= collect_at[-1]:
            assert {k: v[:2] for k, v in r.visible(now).items()} == model(history, now)


# -------------------------------------------------------------- marks & AE
def test_changes_since_sends_only_what_is_above_the_marks() -> None:
    r = make_replica("a")
    first = r.set("k1", 1, T0)
    r.set("k2", 2, T0 + 1)
    tomb, _ = r.invalidate_pattern("z*", T0 + 2)
    entries, patterns = r.changes_since({"a": first.ts})
    assert [k for k, _ in entries] == ["k2"]
    assert patterns == [tomb]
    assert r.changes_since(r.marks) == ([], [])
    entries, patterns = r.changes_since({})
    assert len(entries) == 2 and patterns == [tomb]
    assert r.full_state() == (list(r.entries.items()), [tomb])


def test_ahead_of_and_advance_marks() -> None:
    r = make_replica("a")
    assert not r.ahead_of({})
    e = r.set("k", 1, T0)
    assert r.ahead_of({})
    assert not r.ahead_of({"a": e.ts})
    r.advance_marks({"a": 0, "b": 5})
    assert r.marks == {"a": e.ts, "b": 5}
    r.advance_marks({"b": 3})
    assert r.marks["b"] == 5


def test_advance_stream_needs_a_gap_free_chain() -> None:
    r = make_replica("a")
    assert r.advance_stream("b", -1, 10)
    assert r.marks["b"] == 10
    assert not r.advance_stream("b", 20, 30)  # (10, 20] missed
    assert r.marks["b"] == 10
    assert r.advance_stream("b", 5, 8)  # an old, duplicate batch: no harm
    assert r.marks["b"] == 10
    assert not r.advance_stream("a", -1, 99)  # never for our own stream
    assert "a" not in r.marks


# --------------------------------------------------------------- collection
def test_collect_shrinks_expired_values_then_drops_them_after_the_grace() -> None:
    r = make_replica("a", grace=10)
    e = r.set("k", "v", T0, expires=T0 + 1)
    dropped, expired = r.collect(T0 + 2)
    assert dropped == 0
    assert [(c.key, c.kind, c.remote) for c in expired] == [("k", "expire", False)]
    assert r.entries["k"] == Entry(TOMBSTONE, e.ts, "a", T0 + 1)
    assert r.collect(T0 + 3) == (0, [])  # already reported
    dropped, _ = r.collect(T0 + 10)
    assert dropped == 1 and "k" not in r.entries
    assert r.collected == {"a": e.ts}


def test_collect_drops_tombstones_and_patterns_past_the_grace() -> None:
    r = make_replica("a", grace=10)
    r.delete("k", T0)
    tomb, _ = r.invalidate_pattern("p*", T0 + 1)
    assert r.collect(T0 + 9.5) == (0, [])
    assert r.collect(T0 + 11) == (2, [])
    assert r.entries == {} and r.patterns == {}
    assert r.collected == {"a": tomb.ts}
    # The pattern no longer covers anything once collected.
    assert r.merge_entry("p1", make_entry("v", T0, "b"), T0 + 11) is not None


def test_collect_keeps_live_values() -> None:
    r = make_replica("a", grace=1)
    r.set("k", "v", T0)
    assert r.collect(T0 + 100) == (0, [])
    assert "k" in r.entries


def test_needs_full_state_when_marks_are_below_a_collected_stamp() -> None:
    r = make_replica("a", grace=1)
    t = r.delete("k", T0)
    r.collect(T0 + 5)
    assert r.needs_full_state({})
    assert r.needs_full_state({"a": t.ts - 1})
    assert not r.needs_full_state({"a": t.ts})


def test_forget_unlisted_drops_what_the_sender_covers_but_no_longer_has() -> None:
    r = make_replica("r")
    r.merge_entry("gone", make_entry("old", T0, "a"), T0)
    r.merge_entry("deleted", make_entry(TOMBSTONE, T0, "a"), T0)
    r.merge_entry("kept", make_entry("v", T0, "a"), T0)
    r.merge_entry("newer", make_entry("v", T0 + 5, "a"), T0)
    mine = r.set("mine", "v", T0 + 6)
    changes = r.forget_unlisted(["kept"], {"a": ts(T0 + 1)})
    assert [(c.key, c.kind) for c in changes] == [("gone", "delete")]
    assert set(r.entries) == {"kept", "newer", "mine"}
    assert r.entries["mine"] is mine
