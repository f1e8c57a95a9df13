"""Touches and counters in the replica: lineages, joins, mints (core._replica, core._counter)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtcache.core import NOT_HELD, TOMBSTONE, Entry, Replica, decode_value
from crdtcache.core._counter import MAX_COUNTER_NODES, Counter, CounterError, Part
from crdtcache.core._entry import NO_STAMP, Amended, lineage, stub_of
from tests.core.helpers import T0, budget, make_replica


def as_int(stored: object) -> int:
    value = decode_value(stored)
    if type(value) is not int:
        raise TypeError(f"not an int: {value!r}")
    return value


def value(r: Replica, key: str, now: float = T0 + 100) -> Any:
    e = r.lookup(key, now)
    return None if e is None else decode_value(e.value)


def exchange(*replicas: Replica, now: float = T0 + 1) -> None:
    """Merge every replica into every other until nothing changes any more."""
    while True:
        changed = False
        for dst in replicas:
            for src in replicas:
                if dst is src:
                    continue
                for tomb in list(src.patterns.values()):
                    changed |= bool(dst.merge_pattern(tomb, now))
                for key, e in list(src.entries.items()):
                    changed |= dst.merge_entry(key, e, now) is not None
        if not changed:
            return


# ---------------------------------------------------------------- counters
counters = st.builds(
    lambda start, adds: _counter(start, adds),
    st.integers(-10, 10),
    st.lists(st.tuples(st.sampled_from("abcd"), st.integers(-5, 5)), max_size=8),
)


def _counter(start: int, adds: list[tuple[str, int]]) -> Counter:
    c = Counter.started(start, 1, "a")
    for node, delta in adds:
        c = c.add(node, delta)
    return c


@given(counters, counters)
def test_counter_join_is_commutative(a: Counter, b: Counter) -> None:
    assert a.join(b) == b.join(a)


@given(counters, counters, counters)
def test_counter_join_is_associative(a: Counter, b: Counter, c: Counter) -> None:
    assert a.join(b).join(c) == a.join(b.join(c))


@given(counters)
def test_counter_join_is_idempotent(a: Counter) -> None:
    assert a.join(a) == a


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(-9, 9)), max_size=20))
def test_a_join_of_every_node_s_copy_counts_every_increment(adds: list[tuple[str, int]]) -> None:
    copies = {n: Counter.started(5, 1, "a") for n in "abc"}
    for node, delta in adds:
        copies[node] = copies[node].add(node, delta)
    joined = copies["a"].join(copies["b"]).join(copies["c"])
    assert joined.total == 5 + sum(d for _, d in adds)


def test_a_counter_refuses_a_node_past_its_limit_and_a_total_past_64_bits() -> None:
    parts = tuple(Part(f"n{i:05}", 1, 0) for i in range(MAX_COUNTER_NODES))
    full = Counter.started(0, 1, "a", parts)
    assert full.add("n00000", 1).total == MAX_COUNTER_NODES + 1
    with pytest.raises(CounterError, match="counts 4096 nodes"):
        full.add("newcomer", 1)
    with pytest.raises(CounterError, match="would pass"):
        Counter.started(0, 1, "a").add("a", 1 << 64)


# --------------------------------------------------------------- touches
def test_a_touch_keeps_the_value_and_its_lineage_and_changes_the_expiry() -> None:
    r = make_replica("a")
    written = r.set("k", "v", T0, T0 + 10)
    touched = r.touch("k", T0 + 1, T0 + 100)
    assert isinstance(touched, Amended)
    assert touched.value == "v" and touched.expires == T0 + 100
    assert lineage(touched) == (written.ts, "a", False)
    assert touched.ts > written.ts
    assert r.lookup("k", T0 + 50) is touched
    assert r.touch("missing", T0 + 1, None) is None


def test_a_touch_never_carries_an_old_value_over_a_concurrent_newer_set() -> None:
    a, b = make_replica("a"), make_replica("b")
    a.set("k", "old", T0)
    exchange(a, b)
    b.set("k", "new", T0 + 1)  # concurrent with the touch below
    a.touch("k", T0 + 5, T0 + 500)  # a later stamp than the set: it must still lose
    assert a.entries["k"].ts > b.entries["k"].ts
    exchange(a, b)
    assert value(a, "k") == value(b, "k") == "new"
    assert a.entries["k"].expires is None


def test_a_touch_reaches_a_replica_that_holds_the_value() -> None:
    a, b = make_replica("a"), make_replica("b")
    a.set("k", "v", T0, T0 + 10)
    exchange(a, b)
    b.touch("k", T0 + 1, T0 + 1000)
    exchange(a, b)
    assert a.lookup("k", T0 + 500) is not None and a.entries["k"].expires == T0 + 1000


def test_the_later_of_two_concurrent_touches_wins() -> None:
    a, b = make_replica("a"), make_replica("b")
    a.set("k", "v", T0)
    exchange(a, b)
    a.touch("k", T0 + 1, T0 + 100)
    b.touch("k", T0 + 2, T0 + 200)
    exchange(a, b)
    assert a.entries["k"].expires == b.entries["k"].expires == T0 + 200


def test_an_evicted_touched_value_keeps_its_lineage_and_still_loses_to_a_newer_set() -> None:
    a, b = make_replica("a"), make_replica("b")
    a.set("k", "old", T0)
    exchange(a, b)
    b.set("k", "new", T0 + 1)
    a.touch("k", T0 + 5, None)
    assert a.evict("k")
    stub = a.entries["k"]
    assert stub.value is NOT_HELD and lineage(stub) == lineage(stub_of(stub))
    assert isinstance(stub, Amended)
    exchange(a, b)
    assert value(a, "k") == "new"


def test_an_expired_touched_value_shrinks_to_a_tombstone_of_its_lineage() -> None:
    a, b = make_replica("a", grace=10_000), make_replica("b", grace=10_000)
    a.set("k", "old", T0)
    exchange(a, b)
    b.set("k", "new", T0 + 1)
    a.touch("k", T0 + 5, T0 + 6)
    a.collect(T0 + 7)
    shrunk = a.entries["k"]
    assert shrunk.value is TOMBSTONE and isinstance(shrunk, Amended)
    exchange(a, b, now=T0 + 8)
    assert value(a, "k", T0 + 8) == value(b, "k", T0 + 8) == "new"


def test_a_pattern_tombstone_covers_a_touched_value_by_its_lineage() -> None:
    a, b = make_replica("a"), make_replica("b")
    a.set("user:1", "v", T0)
    exchange(a, b)
    b.invalidate_pattern("user:*", T0 + 1)
    a.touch("user:1", T0 + 5, None)  # touched after the tombstone, but the value is older
    exchange(a, b)
    assert value(a, "user:1") is None and value(b, "user:1") is None


# ------------------------------------------------------------- increments
def test_incr_starts_a_counter_born_on_nothing_with_the_given_expiry() -> None:
    r = make_replica("a")
    e = r.incr("hits", 3, T0, T0 + 60, as_int)
    assert e is not None and decode_value(e.value) == 3 and e.expires == T0 + 60
    assert lineage(e) == (*NO_STAMP, True)
    e = r.incr("hits", -1, T0 + 1, None, as_int)
    assert e is not None and decode_value(e.value) == 2 and e.expires == T0 + 60


def test_incr_on_a_set_int_starts_from_it_and_keeps_its_expiry() -> None:
    r = make_replica("a")
    written = r.set("n", 40, T0, T0 + 30)
    e = r.incr("n", 2, T0 + 1, T0 + 999, as_int)
    assert e is not None and decode_value(e.value) == 42 and e.expires == T0 + 30
    assert lineage(e) == (written.ts, "a", False)


def test_incr_on_a_value_that_is_not_an_int_changes_nothing() -> None:
    r = make_replica("a")
    before = r.set("s", "text", T0)
    with pytest.raises(TypeError):
        r.incr("s", 1, T0 + 1, None, as_int)
    assert r.entries["s"] is before


def test_incr_on_a_stub_asks_for_the_value_first() -> None:
    r = make_replica("a")
    r.merge_entry("n", Entry(NOT_HELD, r.clock.tick(T0), "b"), T0)
    assert r.incr("n", 1, T0 + 1, None, as_int) is None


def test_concurrent_increments_on_two_replicas_are_all_counted() -> None:
    a, b = make_replica("a"), make_replica("b")
    for _ in range(5):
        a.incr("c", 1, T0, None, as_int)
    for _ in range(7):
        b.incr("c", 2, T0, None, as_int)
    exchange(a, b)
    assert value(a, "c") == value(b, "c") == 19
    assert a.entries["c"] == b.entries["c"]


def test_a_join_that_equals_neither_copy_is_minted_and_announced() -> None:
    a, b, c = make_replica("a"), make_replica("b"), make_replica("c")
    minted: list[tuple[str, Entry]] = []
    c.on_mint = lambda key, e: minted.append((key, e))
    a.incr("k", 1, T0, None, as_int)
    b.incr("k", 1, T0, None, as_int)
    c.merge_entry("k", a.entries["k"], T0)
    assert not minted  # c held nothing: a's copy is taken as it is
    change = c.merge_entry("k", b.entries["k"], T0)
    assert change is not None and len(minted) == 1
    key, e = minted[0]
    assert key == "k" and e.origin == "c" and decode_value(e.value) == 2
    assert c.marks["c"] == e.ts
    # A copy that adds nothing to what c holds changes nothing and mints nothing.
    assert c.merge_entry("k", a.entries["k"], T0) is None and len(minted) == 1


def test_a_touch_on_a_counter_survives_a_concurrent_later_increment() -> None:
    a, b = make_replica("a"), make_replica("b")
    a.incr("k", 1, T0, T0 + 10, as_int)
    exchange(a, b)
    a.touch("k", T0 + 1, T0 + 500)
    b.incr("k", 1, T0 + 2, None, as_int)  # later stamp, knows nothing of the touch
    exchange(a, b)
    assert value(a, "k") == value(b, "k") == 2
    assert a.entries["k"].expires == b.entries["k"].expires == T0 + 500


def test_a_set_replaces_a_counter_and_increments_concurrent_with_it_are_lost() -> None:
    a, b = make_replica("a"), make_replica("b")
    a.incr("k", 5, T0, None, as_int)
    exchange(a, b)
    a.set("k", 100, T0 + 1)
    b.incr("k", 1, T0 + 2, None, as_int)  # on the old counter
    exchange(a, b)
    assert value(a, "k") == value(b, "k") == 100
    a.incr("k", 1, T0 + 3, None, as_int)  # after seeing the set: counted from it
    exchange(a, b)
    assert value(b, "k") == 101


def test_increments_after_a_delete_start_one_counter_on_every_replica() -> None:
    a, b = make_replica("a"), make_replica("b")
    a.incr("k", 5, T0, None, as_int)
    exchange(a, b)
    a.delete("k", T0 + 1)
    exchange(a, b)
    a.incr("k", 1, T0 + 2, None, as_int)
    b.incr("k", 1, T0 + 2, None, as_int)
    assert lineage(a.entries["k"]) == lineage(b.entries["k"])
    exchange(a, b)
    assert value(a, "k") == value(b, "k") == 2


def test_increments_after_a_clear_are_not_covered_by_it() -> None:
    a, b = make_replica("a"), make_replica("b")
    a.incr("k", 5, T0, None, as_int)
    exchange(a, b)
    a.invalidate_pattern("*", T0 + 1)
    exchange(a, b)
    assert "k" not in a.entries
    a.incr("k", 1, T0 + 2, None, as_int)
    b.incr("k", 2, T0 + 2, None, as_int)
    exchange(a, b)
    assert value(a, "k") == value(b, "k") == 3


def test_a_counter_is_never_evicted_to_a_stub() -> None:
    r = make_replica("a")
    r.incr("k", 1, T0, None, as_int)
    assert not r.evict("k")
    assert decode_value(r.entries["k"].value) == 1


# ------------------------------------------------------- order independence
ops = st.lists(
    st.tuples(
        st.sampled_from(["set", "delete", "incr", "touch", "clear"]),
        st.integers(0, 2),  # replica
        st.sampled_from(["k", "j"]),
        st.integers(-3, 3),
        st.booleans(),  # exchange with a random other replica afterwards
        st.integers(0, 2),
    ),
    max_size=25,
)


@settings(max_examples=budget(2))
@given(ops)
def test_replicas_converge_whatever_the_history_of_sets_touches_and_increments(
    history: list[tuple[str, int, str, int, bool, int]],
) -> None:
    replicas = [make_replica(n, grace=10_000) for n in "abc"]
    now = T0
    for op, i, key, n, sync, j in history:
        now += 0.01
        r = replicas[i]
        if op == "set":
            r.set(key, n, now)
        elif op == "delete":
            r.delete(key, now)
        elif op == "incr":
            r.incr(key, n, now, None, as_int)
        elif op == "touch":
            r.touch(key, now, now + 100 + n)
        else:
            r.invalidate_pattern("*", now)
        if sync and i != j:
            exchange(replicas[i], replicas[j], now=now)
    exchange(*replicas, now=now)
    a, b, c = (
        {k: (decode_value(e.value), e.expires) for k, e in r.entries.items()} for r in replicas
    )
    assert a == b == c
    assert replicas[0].entries == replicas[1].entries == replicas[2].entries


@settings(max_examples=budget(2))
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(-5, 5), st.booleans()), max_size=30))
def test_increments_are_all_counted_whatever_the_exchanges(
    incs: list[tuple[int, int, bool]],
) -> None:
    replicas = [make_replica(n) for n in "abc"]
    now = T0
    for i, delta, sync in incs:
        now += 0.01
        replicas[i].incr("c", delta, now, None, as_int)
        if sync:
            exchange(replicas[i], replicas[(i + 1) % 3], now=now)
    exchange(*replicas, now=now)
    for r in replicas:
        assert value(r, "c", now) == (sum(d for _, d, _ in incs) if incs else None)
