"""Snapshots: encode/decode round trips, restore as a CRDT merge, refusal of bad bytes."""

from __future__ import annotations

import math
import os
import tracemalloc
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtcache._errors import (
    CacheError,
    ClockDriftError,
    CorruptStateError,
    PersistenceError,
    SerializationError,
)
from crdtcache.core import (
    DEFAULT_MAX_VALUE_BYTES,
    MAX_KEY_CHARS,
    MAX_NODE_ID_CHARS,
    NOT_HELD,
    TOMBSTONE,
    Entry,
    PatternTombstone,
    encode_value,
)
from crdtcache.store._snapshot import (
    SNAPSHOT_VERSION,
    Snapshot,
    apply_snapshot,
    decode_snapshot,
    encode_snapshot,
    load_snapshot_file,
    restore_snapshot,
    save_snapshot_file,
)

from .helpers import (
    T0,
    body_of,
    entries,
    forge,
    make_replica,
    patterns,
    replica_from,
    sample_replica,
    state_of,
    ts,
)


# ------------------------------------------------------------------ round trips
def test_decode_returns_everything_encoded() -> None:
    r = sample_replica()
    snap = decode_snapshot(encode_snapshot(r, T0))
    assert isinstance(snap, Snapshot)
    assert snap.node == "a"
    assert snap.created == T0
    assert snap.clock_ts == r.clock.last_ts
    assert snap.marks == r.marks
    assert snap.collected == r.collected == {"c": ts(T0 - 600)}
    assert set(snap.patterns) == set(r.patterns.values())
    decoded = dict(snap.entries)
    assert decoded.keys() == r.entries.keys()
    for key, e in r.entries.items():
        if key == "expired":
            continue
        assert decoded[key] == e, key
        assert type(decoded[key].value) is type(e.value), key  # Packed stays Packed


def test_expired_values_are_saved_as_tombstones() -> None:
    r = sample_replica()
    decoded = dict(decode_snapshot(encode_snapshot(r, T0)).entries)
    old = r.entries["expired"]
    assert decoded["expired"] == Entry(TOMBSTONE, old.ts, old.origin, old.expires)


def test_stubs_are_kept_as_stubs() -> None:
    r = sample_replica()
    decoded = dict(decode_snapshot(encode_snapshot(r, T0)).entries)
    assert decoded["evicted"].value is NOT_HELD
    assert decoded["stub"] == r.entries["stub"]


def test_restore_into_an_empty_replica() -> None:
    source = sample_replica()
    target = make_replica("z")
    changes = restore_snapshot(target, encode_snapshot(source, T0), T0)
    assert target.visible(T0) == source.visible(T0)
    assert dict(target.patterns) == dict(source.patterns)
    assert {k for k, e in target.entries.items()} == set(source.entries)
    # Visible changes: every key that now reads as set, plus the deletions.
    assert {c.key for c in changes if c.kind == "set"} == {
        k for k, e in target.entries.items() if not e.deleted
    }
    assert all(c.remote for c in changes)


def test_restored_entries_are_offered_to_peers() -> None:
    # Restore goes through the replica's merge, so its indexes (what anti-entropy and
    # collection consult) know the restored entries.
    source = sample_replica()
    target = make_replica("z")
    restore_snapshot(target, encode_snapshot(source, T0), T0)
    entries, tombs = target.changes_since({})
    assert dict(entries) == target.entries
    assert set(tombs) == set(target.patterns.values())
    target.collect(T0 + 10**6)
    assert all(not e.deleted for e in target.entries.values())


def test_restore_twice_changes_nothing_the_second_time() -> None:
    data = encode_snapshot(sample_replica(), T0)
    target = make_replica("z")
    restore_snapshot(target, data, T0)
    before = state_of(target)
    assert restore_snapshot(target, data, T0) == []
    assert state_of(target) == before


def test_restore_never_overwrites_newer_values() -> None:
    source = make_replica("a")
    source.set("k", encode_value("k", "old"), T0 - 10)
    source.set("only-old", encode_value("only-old", 1), T0 - 10)
    source.delete("deleted-later", T0 - 10)
    data = encode_snapshot(source, T0 - 10)

    target = make_replica("b")
    target.set("k", encode_value("k", "new"), T0)
    target.delete("only-old", T0)
    target.set("deleted-later", encode_value("deleted-later", "back"), T0)
    changes = restore_snapshot(target, data, T0)
    assert changes == []
    assert target.visible(T0).keys() == {"k", "deleted-later"}
    assert target.lookup("k", T0).value == "new"  # type: ignore[union-attr]


def test_restore_replaces_older_values() -> None:
    source = make_replica("a")
    source.set("k", encode_value("k", "newer"), T0)
    target = make_replica("b")
    target.set("k", encode_value("k", "older"), T0 - 10)
    changes = restore_snapshot(target, encode_snapshot(source, T0), T0)
    assert [(c.key, c.kind) for c in changes] == [("k", "set")]
    assert target.lookup("k", T0).value == "newer"  # type: ignore[union-attr]


def test_restored_pattern_tombstone_removes_older_local_keys() -> None:
    source = make_replica("a")
    source.invalidate_pattern("user:*", T0)
    target = make_replica("b")
    target.set("user:1", 1, T0 - 5)
    target.set("user:2", 2, T0 + 1)  # newer than the pattern: stays
    target.set("other", 3, T0 - 5)
    changes = restore_snapshot(target, encode_snapshot(source, T0), T0 + 1)
    assert [(c.key, c.kind, c.pattern) for c in changes] == [("user:1", "invalidate", "user:*")]
    assert set(target.visible(T0 + 1)) == {"user:2", "other"}


def test_restore_does_not_adopt_marks_or_collected() -> None:
    source = sample_replica()
    target = make_replica("z")
    target.set("mine", 1, T0)
    marks_before = dict(target.marks)
    restore_snapshot(target, encode_snapshot(source, T0), T0)
    assert target.marks == marks_before
    assert target.collected == {}


def test_restore_moves_the_clock_past_the_snapshot_clock() -> None:
    # The node's own backup: its tombstones were collected, so no entry carries its
    # last stamp; the clock must still never go back below it.
    source = make_replica("a", grace=1.0)
    source.delete("k", T0)
    source.collect(T0 + 5)
    assert source.entries == {}
    data = encode_snapshot(source, T0 + 5)
    fresh = make_replica("a")
    restore_snapshot(fresh, data, T0 - 30)  # the wall clock went back (within max_drift)
    assert fresh.clock.now(T0 - 30).ts > source.clock.last_ts


def test_restore_refuses_a_snapshot_from_a_clock_too_far_ahead() -> None:
    source = make_replica("a")
    source.set("k", 1, T0)
    source.set("later", 2, T0 + 3600)
    data = encode_snapshot(source, T0 + 3600)
    target = make_replica("b")
    target.set("mine", 1, T0)
    before = state_of(target)
    with pytest.raises(ClockDriftError):
        restore_snapshot(target, data, T0)
    assert state_of(target) == before


def test_restore_into_a_replica_with_a_resolver_uses_it() -> None:
    def keep_larger(local: Any, remote: Any) -> Any:
        return remote if (remote.value or 0) > (local.value or 0) else local

    source = make_replica("a")
    source.set("k", 5, T0 - 10)
    target = make_replica("b")
    target.resolver = keep_larger
    target.set("k", 3, T0)
    restore_snapshot(target, encode_snapshot(source, T0), T0)
    assert target.lookup("k", T0).value == 5  # type: ignore[union-attr]


# --------------------------------------------------------------- bad snapshots
def _assert_refused(
    data: object, match: str | None = None, error: type[Exception] = CorruptStateError
) -> None:
    target = sample_replica(node="victim")
    before = state_of(target)
    with pytest.raises(error, match=match):
        restore_snapshot(target, data, T0)  # type: ignore[arg-type]
    assert state_of(target) == before


def test_every_truncation_is_refused() -> None:
    data = encode_snapshot(sample_replica(), T0)
    for length in range(len(data)):
        _assert_refused(data[:length])


def test_every_flipped_byte_is_refused() -> None:
    data = encode_snapshot(sample_replica(), T0)
    for i in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(data)
            damaged[i] ^= mask
            with pytest.raises(CorruptStateError):
                decode_snapshot(bytes(damaged))
    _assert_refused(data[:100] + bytes([data[100] ^ 1]) + data[101:], "checksum mismatch")


def test_trailing_bytes_are_refused() -> None:
    _assert_refused(encode_snapshot(sample_replica(), T0) + b"\x00", "malformed")


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage bytes", b"SQLite format 3\x00" + bytes(100), msgpack.packb({"a": 1})],
)
def test_other_bytes_are_refused_as_not_a_snapshot(data: bytes) -> None:
    _assert_refused(data, "wrong magic")


def test_wrong_magic_is_refused() -> None:
    body = body_of(encode_snapshot(sample_replica(), T0))
    _assert_refused(forge(body, magic="crdtcache-snapshoX"), "wrong magic")


@pytest.mark.parametrize("version", [0, SNAPSHOT_VERSION + 1, "1", None, True, 1.0])
def test_wrong_version_is_refused(version: object) -> None:
    body = body_of(encode_snapshot(sample_replica(), T0))
    _assert_refused(forge(body, version=version), "version")


def test_non_bytes_are_refused_as_a_serialization_error() -> None:
    data = encode_snapshot(sample_replica(), T0)
    _assert_refused(data.decode("latin-1"), "bytes", SerializationError)
    # bytearray and memoryview are bytes too.
    assert decode_snapshot(bytearray(data)) == decode_snapshot(memoryview(data))


def test_oversized_snapshot_is_refused_before_parsing() -> None:
    data = encode_snapshot(sample_replica(), T0)
    with pytest.raises(CorruptStateError, match="max_bytes"):
        decode_snapshot(data, max_bytes=len(data) - 1)
    assert decode_snapshot(data, max_bytes=len(data)).node == "a"
    with pytest.raises(SerializationError, match="max_bytes"):
        encode_snapshot(sample_replica(), T0, max_bytes=100)
    # An over-long node id cannot even make a replica (the clock refuses it).
    with pytest.raises(ValueError, match="node id"):
        make_replica("n" * (MAX_NODE_ID_CHARS + 1))


def _entry_row(**changes: Any) -> list[Any]:
    row: dict[str, Any] = {
        "key": "k",
        "kind": 0,
        "value": 1,
        "ts": ts(T0),
        "origin": "b",
        "expires": None,
    }
    row.update(changes)
    return list(row.values())


BAD_ENTRIES: list[tuple[str, Any, str]] = [
    ("key too long", _entry_row(key="k" * (MAX_KEY_CHARS + 1)), "key must be a str"),
    ("key not str", _entry_row(key=b"k"), "key must be a str"),
    ("value too long", _entry_row(value="v" * (DEFAULT_MAX_VALUE_BYTES + 1)), "max_value_bytes"),
    ("bytes too long", _entry_row(value=b"v" * (DEFAULT_MAX_VALUE_BYTES + 1)), "malformed"),
    ("plain container", _entry_row(value=[1, 2]), "scalar"),
    ("unknown kind", _entry_row(kind=7), "kind"),
    ("bool kind", _entry_row(kind=False), "kind"),
    ("str kind", _entry_row(kind="plain"), "kind"),
    ("packed not bytes", _entry_row(kind=1, value="[]"), "packed value must be bytes"),
    ("packed not msgpack", _entry_row(kind=1, value=b"\xc1"), "packed value is invalid"),
    ("packed scalar", _entry_row(kind=1, value=msgpack.packb(5)), "packed value is invalid"),
    (
        "packed ext type",
        _entry_row(kind=1, value=b"\x91\xd4\x03x"),  # [ExtType(3, b"x")]
        "packed value is invalid.*ext",
    ),
    (
        "packed timestamp",
        _entry_row(kind=1, value=b"\x91\xd6\xff\x00\x00\x00\x01"),  # [Timestamp(1)]
        "packed value is invalid",
    ),
    ("tombstone with value", _entry_row(kind=2, value=1), "carries no value"),
    ("stub with value", _entry_row(kind=3, value=b""), "carries no value"),
    ("negative ts", _entry_row(ts=-1), "stamp"),
    ("ts too large", _entry_row(ts=1 << 63), "stamp"),
    ("bool ts", _entry_row(ts=True), "stamp"),
    ("float ts", _entry_row(ts=1.0), "stamp"),
    ("empty origin", _entry_row(origin=""), "node id"),
    ("long origin", _entry_row(origin="o" * (MAX_NODE_ID_CHARS + 1)), "node id"),
    ("expires str", _entry_row(expires="soon"), "expiry"),
    ("expires nan", _entry_row(expires=math.nan), "expiry"),
    ("expires inf", _entry_row(expires=math.inf), "expiry"),
    ("short row", _entry_row()[:5], "6-item"),
    ("row not array", {"key": "k"}, "6-item"),
]


@pytest.mark.parametrize(("name", "row", "match"), BAD_ENTRIES, ids=[b[0] for b in BAD_ENTRIES])
def test_bad_entry_is_refused_and_nothing_is_applied(name: str, row: Any, match: str) -> None:
    body = body_of(encode_snapshot(sample_replica(), T0))
    # Valid entries before the bad one: they must not be applied either.
    body["entries"] = [_entry_row(key=f"fine{i}") for i in range(5)] + [row]
    _assert_refused(forge(body), match)


def _with(**changes: Any) -> Any:
    body = body_of(encode_snapshot(sample_replica(), T0))
    body.update(changes)
    return body


BAD_BODIES: list[tuple[str, Any, str]] = [
    ("body not a map", [1, 2], "body must be a map"),
    ("extra key", _with(extra=1), "exactly the keys"),
    ("node missing", {k: v for k, v in _with().items() if k != "node"}, "exactly the keys"),
    ("node empty", _with(node=""), "node id"),
    ("created str", _with(created="now"), "created"),
    ("created nan", _with(created=math.nan), "created"),
    ("clock negative", _with(clock=-5), "stamp"),
    ("entries map", _with(entries={}), "entries must be an array"),
    ("duplicate key", _with(entries=[_entry_row(), _entry_row()]), "appears twice"),
    ("patterns map", _with(patterns={}), "patterns must be an array"),
    ("pattern arity", _with(patterns=[["*", 1]]), "3-item"),
    ("pattern not str", _with(patterns=[[1, 1, "a"]]), "pattern must be a str"),
    ("pattern ts", _with(patterns=[["*", "1", "a"]]), "stamp"),
    ("pattern twice", _with(patterns=[["*", 1, "a"], ["*", 2, "a"]]), "appears twice"),
    ("marks list", _with(marks=[]), "must be a map"),
    ("marks value", _with(marks={"a": "x"}), "stamp"),
    ("collected key", _with(collected={"": 1}), "node id"),
]


@pytest.mark.parametrize(("name", "body", "match"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_body_is_refused(name: str, body: Any, match: str) -> None:
    _assert_refused(forge(body), match)


# Ext values are spelled out as bytes in these tests: under a tracer (coverage),
# msgpack's C packer packs an ExtType as a plain array instead.
@pytest.mark.parametrize("ext", [b"\xd4\x01a", b"\xc7\x00\x01"])  # ExtType(1, b"a"), (1, b"")
def test_ext_types_in_the_body_are_refused(ext: bytes) -> None:
    _assert_refused(forge(b"\x81\xa4node" + ext), "ext")


def test_checksum_and_body_must_be_bytes() -> None:
    data = msgpack.packb(["crdtcache-snapshot", 1, "digest", b"body"], use_bin_type=True)
    _assert_refused(data, "must be bytes")


def test_errors_are_cache_errors() -> None:
    assert issubclass(CorruptStateError, CacheError)
    assert issubclass(CorruptStateError, PersistenceError)
    assert issubclass(CorruptStateError, ValueError)


# ----------------------------------------------------------------------- files
def test_save_and_load_a_snapshot_file(tmp_path: Path) -> None:
    data = encode_snapshot(sample_replica(), T0)
    path = tmp_path / "snap.bin"
    save_snapshot_file(path, data)
    assert load_snapshot_file(path) == data
    # Overwriting is atomic and leaves no temporary file behind.
    save_snapshot_file(str(path), b"second")
    assert load_snapshot_file(path) == b"second"
    assert os.listdir(tmp_path) == ["snap.bin"]
    assert (path.stat().st_mode & 0o077) == 0  # owner only: snapshots hold cache data


def test_failed_save_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "snap.bin"
    save_snapshot_file(path, b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(PersistenceError, match="No space left"):
        save_snapshot_file(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["snap.bin"]


def test_file_errors_are_persistence_errors(tmp_path: Path) -> None:
    with pytest.raises(PersistenceError, match="missing"):
        load_snapshot_file(tmp_path / "missing")
    with pytest.raises(PersistenceError, match="no-such-dir"):
        save_snapshot_file(tmp_path / "no-such-dir" / "snap.bin", b"x")
    big = tmp_path / "big"
    big.write_bytes(b"x" * 1000)
    with pytest.raises(CorruptStateError, match="max_bytes"):
        load_snapshot_file(big, max_bytes=999)


# ------------------------------------------------------------------ properties
@given(st.lists(entries(), max_size=25), st.lists(patterns, max_size=3))
def test_property_decode_inverts_encode(
    items: list[tuple[str, Entry]], tombs: list[PatternTombstone]
) -> None:
    r = replica_from(items, tombs)
    snap = decode_snapshot(encode_snapshot(r, T0))
    expected = {
        k: Entry(TOMBSTONE, e.ts, e.origin, e.expires)
        if e.expires is not None and e.expires <= T0
        else e
        for k, e in r.entries.items()
    }
    assert dict(snap.entries) == expected
    assert set(snap.patterns) == set(r.patterns.values())
    assert snap.clock_ts == r.clock.last_ts


@given(st.lists(entries(), max_size=25), st.lists(patterns, max_size=3))
def test_property_restore_into_empty_gives_the_same_visible_state(
    items: list[tuple[str, Entry]], tombs: list[PatternTombstone]
) -> None:
    r = replica_from(items, tombs)
    target = make_replica("z")
    restore_snapshot(target, encode_snapshot(r, T0), T0)
    assert target.visible(T0) == r.visible(T0)
    assert dict(target.patterns) == dict(r.patterns)


@given(
    st.lists(entries(), max_size=20),
    st.lists(patterns, max_size=2),
    st.lists(entries(), max_size=20),
    st.lists(patterns, max_size=2),
)
def test_property_restore_is_a_commutative_merge(
    a_items: list[tuple[str, Entry]],
    a_tombs: list[PatternTombstone],
    b_items: list[tuple[str, Entry]],
    b_tombs: list[PatternTombstone],
) -> None:
    a = replica_from(a_items, a_tombs, "x", salt=0)
    b = replica_from(b_items, b_tombs, "y", salt=1)
    a_snap, b_snap = encode_snapshot(a, T0), encode_snapshot(b, T0)
    restore_snapshot(a, b_snap, T0)
    restore_snapshot(b, a_snap, T0)
    # Same visible state and pattern tombstones whichever side restored which.
    assert a.visible(T0) == b.visible(T0)
    assert dict(a.patterns) == dict(b.patterns)
    # Restoring what is already merged changes nothing.
    assert restore_snapshot(a, a_snap, T0) == []


def test_apply_snapshot_is_restore_without_the_decoding() -> None:
    data = encode_snapshot(sample_replica(), T0)
    one, two = make_replica("z"), make_replica("z")
    assert restore_snapshot(one, data, T0) == apply_snapshot(two, decode_snapshot(data), T0)
    assert state_of(one) == state_of(two)


def _hostile_body(entries: bytes, count: int) -> bytes:
    head = msgpack.packb(
        {"node": "a", "created": T0, "clock": 1, "marks": {}, "collected": {}, "patterns": []}
    )
    # The same map with one more key ("entries") whose array is spelled out by hand.
    return (
        b"\x87" + head[1:] + msgpack.packb("entries") + b"\xdd" + count.to_bytes(4, "big") + entries
    )


@pytest.mark.parametrize(
    "shape",
    ["millions of empty arrays", "arrays nested deep", "a map per entry"],
)
def test_a_hostile_snapshot_is_refused_in_memory_proportional_to_its_size(shape: str) -> None:
    # A crafted 8 MiB body with a valid checksum used to be unpacked whole first:
    # ~560 MiB of Python objects before the first check refused it.
    size = 8 << 20
    if shape == "millions of empty arrays":
        data = forge(_hostile_body(b"\x90" * size, size))
    elif shape == "arrays nested deep":
        data = forge(_hostile_body(b"\x91" * size + b"\x90", 1))
    else:
        data = forge(_hostile_body(b"\x81\xa1k\x90" * (size // 4), size // 4))
    tracemalloc.start()
    try:
        with pytest.raises(CorruptStateError):
            decode_snapshot(data, max_bytes=64 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(data), f"{peak / (1 << 20):.0f} MiB to refuse {len(data) >> 20} MiB"
