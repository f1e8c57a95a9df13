"""The SQLite store: open/save/reopen, incremental batches, collection, refusal of bad files."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtcache._errors import ConfigError, CorruptStateError, PersistenceError, SerializationError
from crdtcache.core import NOT_HELD, TOMBSTONE, Entry, PatternTombstone, Replica, encode_value
from crdtcache.store._sqlite import (
    APPLICATION_ID,
    STORE_VERSION,
    ReplicaStore,
    StoreBatch,
    StoredState,
)

from .helpers import (
    T0,
    entries,
    held_by_another_process,
    make_replica,
    patterns,
    replica_from,
    sample_replica,
    state_of,
    ts,
)


def _new_store(path: Path, node: str = "a") -> ReplicaStore:
    store = ReplicaStore(path)
    assert store.open() is None
    store.initialize(node)
    return store


def _reopen(path: Path) -> StoredState:
    store = ReplicaStore(path)
    try:
        state = store.open()
    finally:
        store.close()
    assert state is not None
    return state


def _fingerprint(folder: Path) -> dict[str, str]:
    """Every file in ``folder`` and the hash of its bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _same_content(a: Replica, b: Replica) -> None:
    assert a.node == b.node
    assert a.entries == b.entries
    assert dict(a.patterns) == dict(b.patterns)
    assert a.marks == b.marks
    assert a.collected == b.collected


# ------------------------------------------------------------------ lifecycle
def test_a_new_file_opens_empty_then_remembers_its_node(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    store = _new_store(path, "node-1")
    assert store.node_id == "node-1"
    store.close()
    store.close()  # idempotent
    state = _reopen(path)
    assert state.node_id == "node-1"
    assert state.entries == () and state.patterns == ()
    assert state.marks == {} and state.collected == {}
    # The header says what the file is, before SQLite opens it.
    header = path.read_bytes()[:100]
    assert int.from_bytes(header[68:72], "big") == APPLICATION_ID
    assert int.from_bytes(header[60:64], "big") == STORE_VERSION


def test_created_but_never_initialized_is_still_new(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    store = ReplicaStore(path)
    assert store.open() is None
    store.close()
    with ReplicaStore(path) as again:
        assert again.open() is None
        again.initialize("b")
    assert _reopen(path).node_id == "b"


def test_an_empty_file_is_a_new_store(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    path.touch()
    with _new_store(path, "a"):
        pass
    assert _reopen(path).node_id == "a"


def test_save_and_reopen_gives_an_equal_replica(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    replica = sample_replica()
    with _new_store(path) as store:
        store.write(StoreBatch.capture(replica))
    state = _reopen(path)
    assert state.clock_ts == replica.clock.last_ts
    rebuilt = state.build_replica(T0, tombstone_grace=60.0, stamp_headroom=0.0)
    # The store keeps evicted values: the rebuilt replica holds "evicted" again.
    expected = dict(replica.entries)
    stored = state.entries
    assert dict(stored)["evicted"].value is NOT_HELD  # written as a stub, never held
    _same_content(rebuilt, replica)
    assert rebuilt.entries == expected
    assert rebuilt.clock.last_ts == replica.clock.last_ts
    assert rebuilt.tombstone_grace == 60.0


def test_rebuilt_replica_offers_its_entries_and_collects_them(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    replica = sample_replica()
    with _new_store(path) as store:
        store.write(StoreBatch.capture(replica))
    rebuilt = _reopen(path).build_replica(T0, tombstone_grace=60.0, stamp_headroom=0)
    entries, tombs = rebuilt.changes_since({})
    assert dict(entries) == rebuilt.entries
    assert set(tombs) == set(rebuilt.patterns.values())
    assert rebuilt.collect(T0 + 10**6)[0] == replica.collect(T0 + 10**6)[0]
    assert rebuilt.entries == replica.entries


def test_restarted_clock_continues_above_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    replica = make_replica("a")
    replica.set("k", 1, T0)
    with _new_store(path) as store:
        store.write(StoreBatch.capture(replica))
    old_last = replica.clock.last_ts
    # Restarted with the wall clock behind: stamps still go up, by the headroom too.
    rebuilt = _reopen(path).build_replica(T0 - 30)
    stamp = rebuilt.set("k", 2, T0 - 30)
    assert stamp.ts > old_last + (1000 << 16)
    assert rebuilt.lookup("k", T0).value == 2  # type: ignore[union-attr]


def test_clock_is_persisted_even_without_entries(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    replica = make_replica("a")
    replica.clock.observe(ts(T0 + 20), T0)  # a peer slightly ahead
    with _new_store(path) as store:
        store.write(StoreBatch.capture(replica, []))
        # An older batch (captured before) never lowers it.
        store.apply([], patterns=[], marks={}, collected={}, clock_ts=5)
    state = _reopen(path)
    assert state.clock_ts == ts(T0 + 20)
    assert state.build_replica(T0, stamp_headroom=0).clock.now(T0).ts > ts(T0 + 20)


def test_incremental_batches(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    replica = make_replica("a", grace=10.0)
    store = _new_store(path)
    replica.set("a", 1, T0)
    replica.set("b", encode_value("b", {"x": 1}), T0)
    replica.delete("c", T0)
    store.write(StoreBatch.capture(replica, ["a", "b", "c"]))
    # b overwritten, a's tombstone collected (gone from the replica), new pattern.
    replica.set("b", 2, T0 + 1)
    replica.delete("a", T0 + 1)
    replica.collect(T0 + 20)
    replica.set("d", 4, T0 + 20)
    replica.invalidate_pattern("p:*", T0 + 20)
    store.write(StoreBatch.capture(replica, ["a", "b", "c", "d", "a"]))
    stats = store.statistics()
    store.close()
    assert stats.batches == 2
    assert stats.entries_deleted == 2  # "a" and "c", collected
    state = _reopen(path)
    assert dict(state.entries) == replica.entries
    assert set(state.patterns) == set(replica.patterns.values())
    assert state.collected == replica.collected


def test_patterns_follow_the_replica(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    store = _new_store(path)
    one = PatternTombstone("a*", ts(T0), "a")
    two = PatternTombstone("b*", ts(T0), "a")
    newer = PatternTombstone("a*", ts(T0 + 1), "b")
    store.apply([], patterns=[one, two], marks={}, collected={}, clock_ts=0)
    store.apply([], patterns=[newer], marks={}, collected={}, clock_ts=0)
    store.close()
    assert _reopen(path).patterns == (newer,)


def test_marks_and_collected_never_go_down(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    store = _new_store(path)
    store.apply([], patterns=[], marks={"a": 10, "b": 5}, collected={"c": 7}, clock_ts=0)
    store.apply([], patterns=[], marks={"a": 3, "b": 6}, collected={"c": 1, "d": 2}, clock_ts=0)
    store.close()
    state = _reopen(path)
    assert state.marks == {"a": 10, "b": 6}
    assert state.collected == {"c": 7, "d": 2}


def test_evicted_values_stay_in_the_store(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    replica = make_replica("a")
    replica.set("k", encode_value("k", [1, 2]), T0)
    replica.set("old", 1, T0)
    store = _new_store(path)
    store.write(StoreBatch.capture(replica))
    replica.evict("k")
    replica.evict("old")
    # A newer write known only as a stub supersedes the stored value.
    replica.merge_entry("old", Entry(NOT_HELD, ts(T0 + 1), "b"), T0)
    store.write(StoreBatch.capture(replica, ["k", "old"]))
    kept = store.get("k")
    assert kept is not None and kept.value == encode_value("k", [1, 2])
    assert store.get("old") == Entry(NOT_HELD, ts(T0 + 1), "b")
    assert store.get("missing") is None
    store.close()
    rebuilt = _reopen(path).build_replica(T0)
    assert rebuilt.lookup("k", T0).value == encode_value("k", [1, 2])  # type: ignore[union-attr]


def test_max_held_keeps_only_the_newest_values_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    replica = make_replica("a")
    for i in range(10):
        replica.set(f"k{i}", i, T0 + i)
    replica.delete("gone", T0 + 20)
    with _new_store(path) as store:
        store.write(StoreBatch.capture(replica))
    rebuilt = _reopen(path).build_replica(T0 + 20, max_held=3)
    held = {k for k, e in rebuilt.entries.items() if e.held}
    assert held == {"k7", "k8", "k9"}
    assert rebuilt.entries["k0"].value is NOT_HELD
    assert rebuilt.entries["gone"].value is TOMBSTONE


def test_stored_entries_covered_by_a_pattern_are_not_restored(tmp_path: Path) -> None:
    # A tombstone removed by a pattern leaves no change behind, so its row may linger;
    # rebuilding must still give what the replica held.
    path = tmp_path / "node.db"
    replica = make_replica("a")
    replica.delete("user:1", T0)
    with _new_store(path) as store:
        store.write(StoreBatch.capture(replica))
        replica.invalidate_pattern("user:*", T0 + 1)
        store.write(StoreBatch.capture(replica, []))
    rebuilt = _reopen(path).build_replica(T0 + 1)
    _same_content(rebuilt, replica)


def test_collect_mirrors_the_replica(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    grace = 10.0
    replica = make_replica("a", grace=grace)
    replica.delete("old-tomb", T0)
    replica.set("old-expired", 1, T0, expires=T0 + 1)
    replica.set("live", 1, T0)
    replica.set("live-expiring", 1, T0, expires=T0 + 100)
    replica.invalidate_pattern("p*", T0)
    replica.delete("new-tomb", T0 + 50)
    replica.merge_entry("remote-tomb", Entry(TOMBSTONE, ts(T0 + 1), "b"), T0 + 1)
    store = _new_store(path)
    store.write(StoreBatch.capture(replica))
    now = T0 + 30
    dropped, _ = replica.collect(now)
    assert store.collect(now, grace) == dropped == 4
    assert store.statistics().rows_collected == 4
    store.close()
    state = _reopen(path)
    assert dict(state.entries) == replica.entries
    assert state.patterns == ()
    assert state.collected == replica.collected == {"a": ts(T0, 4), "b": ts(T0 + 1)}


def test_writes_from_threads(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    store = _new_store(path)
    replica = make_replica("a")

    async def main() -> None:
        batches = []
        for i in range(20):
            replica.set(f"k{i}", i, T0)
            batches.append(StoreBatch.capture(replica, [f"k{i}"]))
        await asyncio.gather(*(asyncio.to_thread(store.write, b) for b in batches))

    asyncio.run(main())
    store.close()
    state = _reopen(path)
    assert dict(state.entries) == replica.entries
    assert state.marks == replica.marks


# ------------------------------------------------------------ misuse, failures
def test_a_second_opener_is_refused_while_the_store_is_open(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    _new_store(path).close()
    # The other opener is another process (a second one in this process is told so:
    # see test_store_paths.py).
    with (
        held_by_another_process(path),
        pytest.raises(PersistenceError, match="in use by another process"),
    ):
        ReplicaStore(path).open()
    store = ReplicaStore(path)
    store.open()
    with pytest.raises(PersistenceError, match="already open"):
        store.open()
    store.close()
    assert _reopen(path).node_id == "a"


def test_initialize_checks_its_argument(tmp_path: Path) -> None:
    store = ReplicaStore(tmp_path / "node.db")
    store.open()
    with pytest.raises(ConfigError, match="node id"):
        store.initialize("")
    store.initialize("a")
    with pytest.raises(ConfigError, match="already belongs to node 'a'"):
        store.initialize("b")
    store.close()


def test_writing_before_initialize_is_refused(tmp_path: Path) -> None:
    store = ReplicaStore(tmp_path / "node.db")
    assert store.open() is None
    with pytest.raises(PersistenceError, match="initialize"):
        store.write(StoreBatch.capture(sample_replica()))
    store.close()


def test_negative_headroom_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    _new_store(path).close()
    with pytest.raises(ValueError, match="stamp_headroom"):
        _reopen(path).build_replica(T0, stamp_headroom=-1)


def test_using_a_closed_store_raises(tmp_path: Path) -> None:
    store = _new_store(tmp_path / "node.db")
    store.close()
    with pytest.raises(PersistenceError, match="not open"):
        store.write(StoreBatch.capture(make_replica("a")))
    with pytest.raises(PersistenceError, match="not open"):
        store.get("k")


def test_unopenable_paths_are_persistence_errors(tmp_path: Path) -> None:
    # A missing directory is created now: this one cannot be (a file is in the way).
    (tmp_path / "a-file").write_text("")
    with pytest.raises(PersistenceError, match="no-such-dir"):
        ReplicaStore(tmp_path / "a-file" / "no-such-dir" / "node.db").open()
    with pytest.raises(PersistenceError):
        ReplicaStore(tmp_path).open()  # a directory


def test_sqlite_errors_are_translated_and_roll_back(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    store = _new_store(path)
    replica = make_replica("a")
    replica.set("first", 1, T0)
    store.write(StoreBatch.capture(replica))
    assert store._conn is not None
    store._conn.execute("DROP TABLE patterns")  # the next batch's pattern write fails
    replica.set("second", 2, T0)
    replica.invalidate_pattern("x*", T0)
    with pytest.raises(PersistenceError, match="write failed") as info:
        store.write(StoreBatch.capture(replica, ["second"]))
    assert isinstance(info.value.__cause__, sqlite3.Error)
    assert store.get("second") is None  # the whole batch was rolled back
    assert store.statistics().errors == 1


def test_unstorable_values_are_refused_before_writing(tmp_path: Path) -> None:
    store = _new_store(tmp_path / "node.db")
    with pytest.raises(SerializationError, match="'k'"):
        store.apply(
            [("k", Entry(object(), 1, "a"))], patterns=[], marks={}, collected={}, clock_ts=0
        )
    with pytest.raises(SerializationError, match="stamp"):
        store.apply(
            [("k", Entry(1, 1 << 64, "a"))], patterns=[], marks={}, collected={}, clock_ts=0
        )
    assert store.get("k") is None
    store.close()


# --------------------------------------------------------- files not to touch
def _refused_untouched(path: Path, match: str) -> None:
    before = _fingerprint(path.parent)
    with pytest.raises(CorruptStateError, match=match) as info:
        ReplicaStore(path).open()
    assert str(path) in str(info.value)
    assert _fingerprint(path.parent) == before


def test_garbage_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    path.write_bytes(os.urandom(4096))
    _refused_untouched(path, "not an SQLite database")


def test_short_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    path.write_bytes(b"SQLite format 3\x00")
    _refused_untouched(path, "not an SQLite database")


def test_foreign_sqlite_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('alice')")
    conn.commit()
    conn.close()
    _refused_untouched(path, "another application")


def test_foreign_sqlite_file_in_wal_mode_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value)")
    conn.commit()
    conn.close()
    _refused_untouched(path, "another application")


def _crafted(path: Path, *statements: str) -> None:
    """Make a valid store, then change it behind the store's back."""
    replica = sample_replica()
    with _new_store(path) as store:
        store.write(StoreBatch.capture(replica))
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in statements:
        conn.execute(statement)
    conn.close()


@pytest.mark.parametrize(
    ("statements", "match"),
    [
        (("PRAGMA user_version = 2",), "format version 2 is not supported"),
        (("CREATE TABLE extra (x)",), "unexpected tables"),
        (("DROP TABLE marks",), "unexpected tables"),
        (("UPDATE meta SET value = 'other' WHERE key = 'format'",), "meta table"),
        (("UPDATE meta SET value = 'x' WHERE key = 'clock_ts'",), "meta.*stamp"),
        (("UPDATE meta SET value = '' WHERE key = 'node'",), "meta.*node id"),
        (("UPDATE entries SET kind = 9 WHERE key = 'int'",), "row 'int'.*kind"),
        (("UPDATE entries SET kind = 'x' WHERE key = 'int'",), "row 'int'.*kind"),
        (("UPDATE entries SET value = x'c1' WHERE key = 'int'",), "row 'int'.*msgpack"),
        (("UPDATE entries SET value = x'9101' WHERE key = 'int'",), "row 'int'.*msgpack"),
        (("UPDATE entries SET value = 5 WHERE key = 'int'",), "row 'int'.*blob"),
        (("UPDATE entries SET value = x'01' WHERE key = 'list'",), "row 'list'.*packed"),
        (("UPDATE entries SET ts = -1 WHERE key = 'int'",), "row 'int'.*stamp"),
        (("UPDATE entries SET ts = 'soon' WHERE key = 'int'",), "row 'int'.*stamp"),
        (("UPDATE entries SET origin = '' WHERE key = 'int'",), "row 'int'.*node id"),
        (("UPDATE entries SET expires = 'never' WHERE key = 'int'",), "row 'int'.*expiry"),
        (("UPDATE entries SET value = x'01' WHERE key = 'deleted'",), "row 'deleted'.*no value"),
        (("UPDATE entries SET key = x'01' WHERE key = 'int'",), "key must be a str"),
        (("UPDATE patterns SET ts = 'x'",), "patterns.*stamp"),
        (("UPDATE marks SET ts = 1.5",), "marks.*stamp"),
        (("UPDATE collected SET origin = ''",), "collected.*node id"),
    ],
)
def test_invalid_rows_are_refused_and_left_untouched(
    tmp_path: Path, statements: tuple[str, ...], match: str
) -> None:
    path = tmp_path / "node.db"
    _crafted(path, *statements)
    _refused_untouched(path, match)


def test_journal_mode_is_only_changed_once_the_file_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    _crafted(path, "PRAGMA journal_mode = DELETE", "UPDATE entries SET kind = 9 WHERE key = 'int'")
    _refused_untouched(path, "kind")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE entries SET kind = 0 WHERE key = 'int'")
    conn.close()
    with ReplicaStore(path) as store:
        assert store.open() is not None
        assert store._conn is not None
        assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_damaged_pages_are_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    replica = make_replica("a")
    for i in range(2000):
        replica.set(f"key:{i}", "x" * 50, T0)
    with _new_store(path) as store:
        store.write(StoreBatch.capture(replica))
    data = bytearray(path.read_bytes())
    assert len(data) > 8192
    # One whole page in the middle (a table or index page; header and schema intact).
    middle = len(data) // 2 // 4096 * 4096
    data[middle : middle + 4096] = os.urandom(4096)
    path.write_bytes(bytes(data))
    _refused_untouched(path, "damaged")


def test_truncated_store_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    replica = make_replica("a")
    for i in range(2000):
        replica.set(f"key:{i}", "x" * 50, T0)
    with _new_store(path) as store:
        store.write(StoreBatch.capture(replica))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _refused_untouched(path, "damaged")


# ------------------------------------------------------------------ properties
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(entries(), max_size=25), st.lists(patterns, max_size=3), st.data())
def test_property_store_round_trip(
    tmp_path: Path,
    items: list[tuple[str, Entry]],
    tombs: list[PatternTombstone],
    data: st.DataObject,
) -> None:
    replica = replica_from(items, tombs, "node")
    replica.advance_marks({"b": ts(T0)})
    path = tmp_path / f"p{data.draw(st.integers(0, 10**9))}.db"
    if path.exists():
        path.unlink()
    with _new_store(path, "node") as store:
        # Write in two batches, as a running node does.
        keys = list(replica.entries)
        cut = data.draw(st.integers(0, len(keys)))
        store.write(StoreBatch.capture(replica, keys[:cut]))
        store.write(StoreBatch.capture(replica, keys[cut:]))
    rebuilt = _reopen(path).build_replica(T0, stamp_headroom=0)
    _same_content(rebuilt, replica)
    assert state_of(rebuilt) == state_of(replica)
