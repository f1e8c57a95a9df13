"""One record format, four readers that agree: wire, snapshot, SQLite store and Redis.

The same record -- valid, or junk in any field -- is written the way each medium
writes it and read back through that medium's own reader. Every reader must give the
same verdict: all refuse it, or all accept it as the same entry. (Before the format
had one home, the wire accepted an expiry of ``inf`` or ``NaN`` that the other three
refused, and such an entry from a peer poisoned every node that persisted it.)
"""

from __future__ import annotations

import math
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtcache import CorruptStateError, ProtocolError
from crdtcache.core import Entry, Packed, Push, decode_value, encode_value
from crdtcache.core._format import (
    AMENDED,
    COUNTER,
    PACKED,
    PLAIN,
    STUB,
    TOMB,
    InvalidRecord,
    check_expires,
    entry_from_record,
    record_of,
    stored_kind,
)
from crdtcache.core._hlc import MAX_TS
from crdtcache.core._values import DEFAULT_MAX_VALUE_BYTES, MAX_KEY_CHARS
from crdtcache.runtime.redis._messages import record_entry, stamp_text
from crdtcache.store._snapshot import decode_snapshot, encode_snapshot
from crdtcache.store._sqlite import ReplicaStore
from crdtcache.wire._codec import decode
from tests.core.test_packing import JUNK, ext
from tests.store.helpers import T0, body_of, forge, make_replica
from tests.value_types import typed, values

Verdict = Entry | None  # None: refused
NOT_REPRESENTABLE = object()
# First bytes of a msgpack array, map or extension type: how a packed blob starts.
PACKED_FIRST_BYTES = frozenset(
    [*range(0x80, 0xA0), *range(0xDC, 0xE0), 0xC7, 0xC8, 0xC9, *range(0xD4, 0xD9)]
)

keys = st.one_of(
    st.text(max_size=8),
    st.just("k" * (MAX_KEY_CHARS + 1)),
    st.integers(0, 5),
    st.none(),
)
kinds = st.one_of(
    st.sampled_from([PLAIN, PACKED, TOMB, STUB, AMENDED]), st.integers(-2, 9), st.just("x")
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.integers(min_value=1 << 64, max_value=1 << 70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
    st.binary(max_size=10),
    st.just("s" * (DEFAULT_MAX_VALUE_BYTES + 1)),
    st.just("\u00e9" * (DEFAULT_MAX_VALUE_BYTES // 2 + 1)),  # over the limit in UTF-8 bytes
    st.builds(
        lambda v: bytes(encode_value("k", v)) if type(encode_value("k", v)) is Packed else v, values
    ),
    st.builds(ext, st.integers(0, 127), st.binary(max_size=12)),
    st.builds(
        lambda code, data: b"\x91" + ext(code, data), st.integers(0, 15), st.binary(max_size=12)
    ),
    st.builds(lambda v: msgpack.packb(v), st.lists(st.integers(0, 9), max_size=3)),
    st.builds(lambda v: msgpack.packb(v), st.dictionaries(st.text(max_size=3), st.integers(-9, 9))),
    st.just(msgpack.packb({1: 2})),
    st.just(b"\x91\xd4\x01x"),  # [ExtType(1, b"x")]
    st.just(b"\xc1"),
    st.lists(st.integers(), max_size=2),
)
stamps = st.one_of(
    st.integers(0, MAX_TS),
    st.just(-1),
    st.just(MAX_TS + 1),
    st.just("soon"),
    st.just(1.5),
)
origins = st.one_of(st.sampled_from(["a", "b"]), st.just(""), st.just("n" * 129), st.just(7))
small_stamps = st.one_of(st.integers(0, 1 << 41), stamps)
totals = st.one_of(st.integers(0, 9), st.just((1 << 64) - 1), st.just(1 << 64), st.just(-1))
parts = st.lists(st.tuples(st.sampled_from(["a", "b", "c", ""]), totals, totals).map(list))
counters = st.builds(
    lambda start, xts, xorigin, ps, fix: [start, xts, xorigin, sorted(ps) if fix else ps],
    st.one_of(st.integers(-9, 9), st.just(1 << 64), st.just("0")),
    small_stamps,
    origins,
    parts,
    st.booleans(),
)
amended = st.builds(
    lambda kind, inner, vts, vorigin, born: [kind, inner, vts, vorigin, born],
    st.one_of(st.sampled_from([PLAIN, PACKED, TOMB, STUB, COUNTER]), st.integers(-1, 6)),
    st.one_of(scalars, counters),
    small_stamps,
    origins,
    st.one_of(st.booleans(), st.just(1)),
)
payloads = st.one_of(scalars, amended, st.just([STUB, None, 0, "", True]))
expiries = st.one_of(
    st.none(),
    st.floats(min_value=0, max_value=4e9),
    st.integers(0, 4_000_000_000),
    st.sampled_from([math.inf, -math.inf, math.nan]),
    st.just("never"),
)
records = st.tuples(keys, kinds, payloads, stamps, origins, expiries)


def _format_verdict(record: tuple[Any, ...]) -> Verdict:
    try:
        return entry_from_record(*record)[1]
    except InvalidRecord:
        return None


def _wire(record: tuple[Any, ...]) -> Verdict | object:
    try:
        body = msgpack.packb([2, [list(record)], [], None, -1, -1, 0, 0], use_bin_type=True)
    except OverflowError:
        return NOT_REPRESENTABLE  # msgpack carries no int beyond 64 bits
    try:
        message = decode(body)
    except ProtocolError:
        return None
    assert isinstance(message, Push)
    return message.entries[0][1]


def _snapshot(record: tuple[Any, ...]) -> Verdict | object:
    body = body_of(encode_snapshot(make_replica("a"), T0))
    body["entries"] = [list(record)]
    try:
        data = forge(body)
    except OverflowError:
        return NOT_REPRESENTABLE
    try:
        snapshot = decode_snapshot(data)
    except CorruptStateError:
        return None
    return snapshot.entries[0][1]


def _blob(kind: object, payload: object) -> object:
    """How SQLite and Redis keep a payload: msgpack bytes for a scalar or an amended
    value (see ``entry_blob``), packed as is."""
    if kind in (PLAIN, AMENDED) and type(kind) is int:
        try:
            return msgpack.packb(payload, use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            return NOT_REPRESENTABLE
    return payload


def _sqlite_row(kind: object, payload: object) -> tuple[object, object]:
    """``(kind, blob)`` of a row: an amended stub is kind STUB with its lineage."""
    if (
        kind == AMENDED
        and type(kind) is int
        and type(payload) is list
        and len(payload) == 5
        and payload[0] == STUB
        and type(payload[0]) is int
    ):
        if payload[1] is not None:
            return kind, NOT_REPRESENTABLE  # a stub's row has no room for a value
        return STUB, _blob(PLAIN, payload[2:])
    return kind, _blob(kind, payload)


def _sqlite(record: tuple[Any, ...], path: Path) -> Verdict | object:
    key, kind, payload, ts, origin, expires = record
    kind, blob = _sqlite_row(kind, payload)
    if blob is NOT_REPRESENTABLE or isinstance(blob, list):
        return NOT_REPRESENTABLE
    if type(expires) is float and math.isnan(expires):
        return NOT_REPRESENTABLE  # SQLite keeps NaN as NULL: no such row can exist
    if type(key) is not str or type(origin) is not str:
        return NOT_REPRESENTABLE  # TEXT columns turn a number into its text
    if any(
        type(v) is int and not -(1 << 63) <= v < (1 << 63) for v in (key, kind, blob, *record[3:])
    ):
        return NOT_REPRESENTABLE  # beyond SQLite's INTEGER
    store = ReplicaStore(path)
    try:
        assert store.open() is None
        store.initialize("a")
    finally:
        store.close()
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute(
                "INSERT INTO entries (key, kind, value, ts, origin, expires)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (key, kind, blob, ts, origin, expires),
            )
    finally:
        conn.close()
    store = ReplicaStore(path)
    try:
        state = store.open()
    except CorruptStateError:
        return None
    finally:
        store.close()
    assert state is not None
    return state.entries[0][1]


def _redis(record: tuple[Any, ...]) -> Verdict | object:
    key, kind, payload, ts, origin, expires = record
    if type(key) is not str or kind == STUB or type(kind) is not int:
        return NOT_REPRESENTABLE  # a record's key is its name; Redis keeps no stubs
    if kind == TOMB:
        if payload is not None:
            return NOT_REPRESENTABLE  # a tombstone is a record without a value field
        blob = None
    elif kind in (PLAIN, PACKED):
        blob = _blob(kind, payload)
        if blob is NOT_REPRESENTABLE or not isinstance(blob, bytes):
            return NOT_REPRESENTABLE
        if blob and (kind == PACKED) != (blob[0] in PACKED_FIRST_BYTES):
            return NOT_REPRESENTABLE  # Redis tells packed from plain by the first byte
    else:
        return NOT_REPRESENTABLE
    if type(ts) is int and 0 <= ts < (1 << 64) and type(origin) is str:
        stamp: object = stamp_text(ts, origin)
    else:
        stamp = f"junk{ts!r}{origin!r}"
    text = None if expires is None else repr(expires).encode()
    try:
        return record_entry(key, stamp.encode() if isinstance(stamp, str) else stamp, blob, text)
    except InvalidRecord:
        return None


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(record=records)
def test_every_reader_gives_the_same_verdict(record: tuple[Any, ...], tmp_path: Path) -> None:
    expected = _format_verdict(record)
    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        sqlite_verdict = _sqlite(record, Path(folder) / "node.db")
    verdicts = {
        "wire": _wire(record),
        "snapshot": _snapshot(record),
        "sqlite": sqlite_verdict,
        "redis": _redis(record),
    }
    for reader, verdict in verdicts.items():
        if verdict is NOT_REPRESENTABLE:
            continue
        assert verdict == expected, f"{reader} disagrees on {record!r}"


def _verdicts(record: tuple[Any, ...], tmp_path: Path) -> dict[str, Verdict | object]:
    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        sqlite_verdict = _sqlite(record, Path(folder) / "node.db")
    return {
        "format": _format_verdict(record),
        "wire": _wire(record),
        "snapshot": _snapshot(record),
        "sqlite": sqlite_verdict,
        "redis": _redis(record),
    }


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(value=values)
def test_every_reader_accepts_every_value_encoding_produces(value: Any, tmp_path: Path) -> None:
    stored = encode_value("k", value)
    payload = bytes(stored) if type(stored) is Packed else stored
    record = ("k", stored_kind(stored), payload, 1 << 40, "a", None)
    for reader, verdict in _verdicts(record, tmp_path).items():
        assert isinstance(verdict, Entry), f"{reader} refused {value!r}"
        assert typed(decode_value(verdict.value)) == typed(value), reader


@pytest.mark.parametrize(("name", "blob", "match"), JUNK, ids=[j[0] for j in JUNK])
def test_every_reader_refuses_junk_packed_values(
    name: str, blob: bytes, match: str, tmp_path: Path
) -> None:
    record = ("k", PACKED, blob, 1 << 40, "a", None)
    verdicts = _verdicts(record, tmp_path)
    for reader, verdict in verdicts.items():
        assert verdict is None or verdict is NOT_REPRESENTABLE, f"{reader} accepted {name}"
    assert verdicts["wire"] is None


def test_a_str_that_is_not_valid_unicode_is_refused() -> None:
    # Only reachable from Python (msgpack never decodes one), but refused all the same.
    assert _format_verdict(("k", PLAIN, "\ud800", 1 << 40, "a", None)) is None


@pytest.mark.parametrize("expires", [math.inf, -math.inf, math.nan])
def test_a_non_finite_expiry_is_refused_everywhere(expires: float) -> None:
    record = ("k", PLAIN, "v", 1 << 40, "a", expires)
    assert _format_verdict(record) is None
    assert _wire(record) is None
    assert _snapshot(record) is None
    assert _redis(record) is None
    with pytest.raises(InvalidRecord, match="finite"):
        check_expires(expires)


def _amended_entries() -> list[tuple[str, Entry]]:
    """Every shape of amended entry a replica makes: touched, counted, shrunk, stubs."""
    from crdtcache.core._entry import stub_of
    from tests.core.test_lineage import as_int

    a, b = make_replica("a"), make_replica("b")
    a.set("touched", encode_value("touched", [1, "x"]), T0, T0 + 5)
    a.touch("touched", T0 + 1, T0 + 50)
    a.set("scalar", "v", T0)
    a.touch("scalar", T0 + 1, None)
    a.incr("born", 3, T0 + 2, T0 + 9, as_int)
    a.set("from-int", 7, T0)
    a.incr("from-int", -2, T0 + 2, None, as_int)
    a.touch("from-int", T0 + 3, T0 + 70)
    b.merge_entry("from-int", a.entries["from-int"], T0 + 3)
    b.incr("from-int", 1, T0 + 4, None, as_int)
    a.merge_entry("from-int", b.entries["from-int"], T0 + 5)  # a joins, nothing to mint
    a.set("expiring", "x", T0, T0 + 4)
    a.touch("expiring", T0 + 1, T0 + 2)
    a.collect(T0 + 3)  # shrinks to a tombstone of its lineage
    joined = ("joined", b.entries["from-int"])
    return [*a.entries.items(), joined, ("stub", stub_of(a.entries["touched"]))]


@pytest.mark.parametrize(("key", "entry"), _amended_entries(), ids=lambda x: str(x)[:20])
def test_every_reader_accepts_every_amended_entry_a_replica_makes(
    key: str, entry: Entry, tmp_path: Path
) -> None:
    record = tuple(record_of(key, entry))
    for reader, verdict in _verdicts(record, tmp_path).items():
        if verdict is NOT_REPRESENTABLE:
            assert reader == "redis" or entry.value is not None, reader
            continue
        assert verdict == entry, reader


def test_counter_and_lineage_junk_is_refused_with_a_reason() -> None:
    good = ["k", AMENDED, [COUNTER, [0, 5, "a", [["a", 1, 0]]], 1, "a", False], 9, "a", None]
    assert entry_from_record(*good)[1].value is not None
    cases = {
        "lineage must precede": [COUNTER, [0, 5, "a", []], 9, "a", False],
        "strictly ascending": [COUNTER, [0, 5, "a", [["b", 1, 0], ["a", 1, 0]]], 1, "a", False],
        "total must be": [COUNTER, [0, 5, "a", [["a", -1, 0]]], 1, "a", False],
        "expiry stamp must not follow": [COUNTER, [0, 10, "a", []], 1, "a", False],
        "only a counter started on nothing": [PLAIN, "v", 0, "", False],
        "cannot hold another": [AMENDED, None, 1, "a", False],
        "born flag": [PLAIN, "v", 1, "a", 1],
        "5-item list": [PLAIN, "v", 1, "a"],
    }
    for problem, payload in cases.items():
        with pytest.raises(InvalidRecord, match=problem):
            entry_from_record("k", AMENDED, payload, 9, "a", None)
