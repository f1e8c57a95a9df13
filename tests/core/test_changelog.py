"""The change log behind ``Replica.changes_since`` (core._changelog): always the answer
of a scan of the map, at the cost of what changed."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from crdtcache.core import (
    NOT_HELD,
    TOMBSTONE,
    Entry,
    HybridClock,
    PatternTombstone,
    Replica,
    _changelog,
    decode_value,
)
from crdtcache.core._changelog import CHUNK
from crdtcache.core._counter import CounterError
from crdtcache.core._entry import Amended
from crdtcache.store._snapshot import encode_snapshot, restore_snapshot
from tests.core.helpers import RESOLVERS, T0, budget, make_replica, ts


def scan(r: Replica, marks: Mapping[str, int]) -> dict[str, Entry]:
    """What ``changes_since`` answered before the log: a scan of the whole map."""
    return {k: e for k, e in r.entries.items() if e.ts > marks.get(e.origin, -1)}


def check_answers(r: Replica, marks: Mapping[str, int]) -> None:
    """The log's answer is the scan's: the same keys, each once, the very entries."""
    got, patterns = r.changes_since(marks)
    expected = scan(r, marks)
    assert len(got) == len({k for k, _ in got}), "a key answered twice"
    assert {k for k, _ in got} == set(expected)
    assert all(e is expected[k] for k, e in got)
    assert set(patterns) == {p for p in r.patterns.values() if p.ts > marks.get(p.origin, -1)}
    sliced = r.entries_since(marks, limit=10**9)
    assert sliced is not None and dict(sliced) == dict(got)


def marks_to_try(r: Replica) -> Iterator[dict[str, int]]:
    """Empty marks, the replica's own, and every threshold of every origin's stamps."""
    yield {}
    yield dict(r.marks)
    stamps: dict[str, set[int]] = {}
    for e in r.entries.values():
        stamps.setdefault(e.origin, set()).add(e.ts)
    for origin, held in stamps.items():
        for t in sorted(held):
            yield {origin: t}
            yield {origin: t - 1}
            yield {o: (t if o == origin else max(s)) for o, s in stamps.items()}


def check_structure(r: Replica) -> None:
    """The log's invariants (module doc): disjoint increasing ranges, every entry listed
    in the one chunk of its origin whose range holds its stamp, stale positions counted
    exactly and at most as many as the live ones."""
    logs = r._log._origins
    for log in logs.values():
        assert log.hi and all(lo <= hi for lo, hi in zip(log.lo, log.hi, strict=True))
        assert all(a < b for a, b in zip(log.hi, log.lo[1:], strict=False))
        assert all(2 * stale <= len(keys) for stale, keys in zip(log.stale, log.keys, strict=True))
    for key, e in r.entries.items():
        log = logs[e.origin]
        i = log.chunk_of(e.ts)
        assert i >= 0 and key in log.keys[i], f"{key!r} not where its stamp says"
    stats = r.change_log_statistics()
    assert stats.positions - stats.stale == len(r.entries)
    assert stats.positions <= 2 * len(r.entries)


def check_log(r: Replica) -> None:
    """The log holds the map, and every answer is the scan's."""
    check_structure(r)
    for marks in marks_to_try(r):
        check_answers(r, marks)


def as_int(stored: object) -> int:
    value = decode_value(stored)
    if type(value) is not int:
        raise TypeError(f"not an int: {value!r}")
    return value


KEYS = st.sampled_from([f"k{i}" for i in range(6)] + [f"p:{i}" for i in range(4)])
NODES = st.sampled_from("abc")
PATTERNS = st.sampled_from(["p:*", "k1*", "*", "k?"])


class ReplicasWithLogs(RuleBasedStateMachine):
    """Three replicas written, touched, counted, pattern-deleted, collected, evicted,
    shed, restored and merged in any order, checked after every step against a scan.

    Chunks of two keys (instead of :data:`CHUNK`) make a few keys enough for every way
    a chunk changes: appends, gap inserts, splits, compactions.
    """

    resolver_name: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self._chunk = _changelog.CHUNK
        _changelog.CHUNK = 2  # type: ignore[misc]  # a test-sized chunk (restored in teardown)
        resolver = None if self.resolver_name is None else RESOLVERS[self.resolver_name]
        self.replicas = {
            n: make_replica(n, grace=50.0, resolver=resolver, max_drift=1e6) for n in "abc"
        }
        self.now = T0

    def teardown(self) -> None:
        _changelog.CHUNK = self._chunk  # type: ignore[misc]  # restored

    @initialize()
    def start(self) -> None:
        pass

    # -------------------------------------------------------------- local writes
    @rule(dt=st.sampled_from([0.0, 0.001, 0.5, 3.0, 40.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule(node=NODES, key=KEYS, value=st.integers(0, 9), ttl=st.sampled_from([None, 1.0, 30.0]))
    def set(self, node: str, key: str, value: int, ttl: float | None) -> None:
        self.replicas[node].set(key, value, self.now, None if ttl is None else self.now + ttl)

    @rule(node=NODES, key=KEYS)
    def delete(self, node: str, key: str) -> None:
        self.replicas[node].delete(key, self.now)

    @rule(node=NODES, key=KEYS, ttl=st.sampled_from([None, 2.0]))
    def touch(self, node: str, key: str, ttl: float | None) -> None:
        self.replicas[node].touch(key, self.now, None if ttl is None else self.now + ttl)

    @precondition(lambda self: self.resolver_name is None)
    @rule(node=NODES, key=KEYS, delta=st.integers(-3, 3))
    def incr(self, node: str, key: str, delta: int) -> None:
        with contextlib.suppress(TypeError, CounterError):  # not an int, or too many
            self.replicas[node].incr(key, delta, self.now, None, as_int)

    @rule(node=NODES, pattern=PATTERNS)
    def invalidate_pattern(self, node: str, pattern: str) -> None:
        self.replicas[node].invalidate_pattern(pattern, self.now)

    # ------------------------------------------------------------- locality
    @rule(node=NODES, key=KEYS)
    def evict(self, node: str, key: str) -> None:
        self.replicas[node].evict(key)

    @rule(node=NODES, key=KEYS)
    def shed(self, node: str, key: str) -> None:
        self.replicas[node].shed(key)

    @rule(node=NODES, key=KEYS)
    def drop(self, node: str, key: str) -> None:
        self.replicas[node].drop(key)

    @rule(node=NODES)
    def collect(self, node: str) -> None:
        self.replicas[node].collect(self.now)

    # -------------------------------------------------------------- merging
    @rule(
        node=NODES,
        key=KEYS,
        origin=st.sampled_from("xy"),
        back=st.sampled_from([0.0, 0.002, 1.0, 5.0, 100.0]),
        logical=st.integers(0, 2),
        kind=st.sampled_from(["value", "tombstone", "stub", "amended"]),
    )
    def merge_remote_entry(
        self, node: str, key: str, origin: str, back: float, logical: int, kind: str
    ) -> None:
        """A write from a node out of sight, stamped now or well before: out of order."""
        stamp = ts(self.now - back, logical)
        e: Entry
        if kind == "value":
            e = Entry(logical, stamp, origin)
        elif kind == "tombstone":
            e = Entry(TOMBSTONE, stamp, origin)
        elif kind == "stub":
            e = Entry(NOT_HELD, stamp, origin)
        else:
            e = Amended(logical, stamp, origin, None, ts(self.now - back - 1), origin)
        self.replicas[node].merge_entry(key, e, self.now)

    @rule(node=NODES, pattern=PATTERNS, back=st.sampled_from([0.0, 1.0, 100.0]))
    def merge_remote_pattern(self, node: str, pattern: str, back: float) -> None:
        self.replicas[node].merge_pattern(
            PatternTombstone(pattern, ts(self.now - back), "x"), now=self.now
        )

    @rule(src=NODES, dst=NODES)
    def anti_entropy(self, src: str, dst: str) -> None:
        """A complete exchange, built from the scan (the oracle), not from the log."""
        a, b = self.replicas[src], self.replicas[dst]
        if a is b:
            return
        for tomb in list(a.patterns.values()):
            b.merge_pattern(tomb, self.now)
        for key, e in scan(a, b.marks).items():
            b.merge_entry(key, e, self.now)
        b.advance_marks(a.marks)

    @rule(src=NODES, dst=NODES, seed=st.integers(0, 3), keep=st.floats(0, 1))
    def deliver_some(self, src: str, dst: str, seed: int, keep: float) -> None:
        """Some of a replica's entries, in a shuffled order (a forwarded or lost batch)."""
        a, b = self.replicas[src], self.replicas[dst]
        if a is b:
            return
        items = list(a.entries.items())
        random.Random(seed).shuffle(items)
        for key, e in items[: int(len(items) * keep)]:
            b.merge_entry(key, e, self.now)

    @rule(src=NODES, dst=NODES)
    def full_state(self, src: str, dst: str) -> None:
        """A full-state transfer: everything merged, then what the sender lacks dropped."""
        a, b = self.replicas[src], self.replicas[dst]
        if a is b:
            return
        entries, patterns = a.full_state()
        for tomb in patterns:
            b.merge_pattern(tomb, self.now)
        for key, e in reversed(entries):
            b.merge_entry(key, e, self.now)
        b.forget_unlisted([k for k, _ in entries], a.marks)
        b.advance_marks(a.marks)

    @rule(node=NODES)
    def restart_from_snapshot(self, node: str) -> None:
        """A restart: a fresh replica restored from a snapshot of this one."""
        old = self.replicas[node]
        data = encode_snapshot(old, self.now)
        fresh = make_replica(node, grace=50.0, resolver=old.resolver, max_drift=1e6)
        restore_snapshot(fresh, data, self.now)
        self.replicas[node] = fresh

    @invariant()
    def every_answer_is_the_scans(self) -> None:
        for r in self.replicas.values():
            check_log(r)


ReplicasWithLogs.TestCase.settings = settings(
    max_examples=budget(1), stateful_step_count=40, deadline=None
)
TestReplicasWithLogs = ReplicasWithLogs.TestCase


class ReplicasWithLogsAndAResolver(ReplicasWithLogs):
    """The same under a custom resolver (pattern deletes become per-key tombstones)."""

    resolver_name = "deletes win"


ReplicasWithLogsAndAResolver.TestCase.settings = settings(
    max_examples=budget(0.5), stateful_step_count=40, deadline=None
)
TestReplicasWithLogsAndAResolver = ReplicasWithLogsAndAResolver.TestCase


# ------------------------------------------------------- at the real chunk size
@settings(max_examples=budget(0.5))
@given(st.randoms(use_true_random=False), st.integers(1, 6 * CHUNK))
def test_entries_merged_in_any_order_are_answered_like_a_scan(rng: Any, n: int) -> None:
    """A restore or a full state arrives in map order, not stamp order: any order works."""
    source = make_replica("a")
    for i in range(n):
        source.set(f"k{rng.randrange(n)}", i, T0 + i * 0.001)
    items = list(source.entries.items())
    rng.shuffle(items)
    r = make_replica("b")
    for key, e in items:
        r.merge_entry(key, e, T0 + n)
    check_log(r)


def test_rewriting_keys_keeps_the_log_the_size_of_the_map() -> None:
    r = make_replica("a")
    for i in range(10 * CHUNK):
        r.set(f"k{i}", i, T0)
    for i in range(50 * CHUNK):
        r.set("hot", i, T0 + 1 + i * 0.001)
        r.set(f"k{i * 7 % (10 * CHUNK)}", i, T0 + 1 + i * 0.001)
    assert len(r.entries) == 10 * CHUNK + 1
    check_log(r)  # (at most twice as many positions as entries)


def test_overwrites_all_over_the_map_keep_chunks_mostly_full() -> None:
    """Overwrites thin out old chunks: compacted, and joined once a quarter full."""
    r = make_replica("a")
    n = 40 * CHUNK
    for i in range(n):
        r.set(f"k{i}", i, T0 + i * 0.001)
    rng = random.Random(7)
    for j in range(4 * n):
        r.set(f"k{rng.randrange(n)}", j, T0 + 100 + j * 0.001)
    stats = r.change_log_statistics()
    assert stats.chunks <= 2 * n // (CHUNK // 4)
    check_structure(r)
    check_answers(r, {"a": ts(T0 + 100)})


def test_keys_sharing_one_stamp_are_kept_together() -> None:
    """A pattern tombstone under a resolver leaves many keys on one stamp: no cut there."""
    r = make_replica("a", resolver=RESOLVERS["deletes win"])
    for i in range(3 * CHUNK):
        r.merge_entry(f"k{i}", Entry(TOMBSTONE, ts(T0), "x"), T0)
    for i in range(3 * CHUNK):
        r.merge_entry(f"j{i}", Entry(TOMBSTONE, ts(T0 - 1 + i * 0.001), "x"), T0)
    check_log(r)
    assert r.change_log_statistics().chunks > 1


# ------------------------------------------------------------------- the cost
class _CountedEntry(Entry):
    """An entry that counts reads of its stamp: a scan reads every entry's."""

    # (No ``__slots__ = ()``: an Entry is a msgspec Struct, whose subclasses get their
    # layout from msgspec; an unannotated class attribute stays a class attribute.)
    reads = 0

    def __getattribute__(self, name: str) -> Any:
        if name in ("ts", "origin"):
            _CountedEntry.reads += 1
        return object.__getattribute__(self, name)


@pytest.mark.parametrize("origins", [1, 3])
def test_catching_up_costs_the_changes_not_the_map(origins: int) -> None:
    """Ten changes among 20,000 entries: a peer's catch-up reads about that many entries.

    (A scan of the map, as before the change log, reads every entry's stamp.)
    """
    r = make_replica("a")
    for i in range(20_000):
        origin = "abc"[i % origins]
        if origin == "a":
            r.set(f"k{i}", i, T0 + i * 0.0001)
        else:
            r.merge_entry(f"k{i}", Entry(i, ts(T0 + i * 0.0001), origin), T0 + 2)
    marks = dict(r.high)
    for i in range(10):
        r.set(f"k{i * 997}", -i, T0 + 5 + i * 0.001)
    # Every entry counts the reads of its stamp from now on (same stamps: the log holds).
    for key, e in list(r.entries.items()):
        r.entries[key] = _CountedEntry(e.value, e.ts, e.origin, e.expires)
    _CountedEntry.reads = 0
    entries, _ = r.changes_since(marks)
    assert sorted(k for k, _ in entries) == sorted(f"k{i * 997}" for i in range(10))
    examined = 10 + 2 * CHUNK  # the changes and the chunk the mark falls in, at most
    assert _CountedEntry.reads <= 2 * examined  # (a stamp is two reads: ts and origin)
    assert r.change_log_statistics().examined <= examined


@given(st.randoms(use_true_random=False), st.integers(1, 300))
@settings(max_examples=30, deadline=None)
def test_a_replica_without_a_change_log_answers_like_one_with(rng: Any, n: int) -> None:
    """``change_log=False`` (no peer asks: memory, Redis mode) keeps nothing per entry
    and still answers ``changes_since`` by a scan; ``entries_since`` past its limit
    defers to the caller's slices, as the log does."""
    r = Replica(HybridClock("b", max_drift=60.0), change_log=False)
    source = make_replica("a")
    for i in range(n):
        key = f"k{rng.randrange(n)}"
        if rng.random() < 0.2:
            r.delete(key, T0 + i * 0.001)
        else:
            r.set(key, i, T0 + i * 0.001)
        source.set(f"s{rng.randrange(n)}", i, T0 + i * 0.001)
    for key, e in source.entries.items():
        r.merge_entry(key, e, T0 + n)
    assert r.change_log_statistics().positions == 0
    for marks in marks_to_try(r):
        check_answers(r, marks)
    assert r.entries_since({}, limit=len(r.entries) - 1) is None
