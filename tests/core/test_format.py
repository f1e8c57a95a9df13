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
    PACKED,
    PLAIN,
    STUB,
    TOMB,
    InvalidRecord,
    check_expires,
    entry_from_record,
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
kinds = st.one_of(st.sampled_from([PLAIN, PACKED, TOMB, STUB]), st.integers(-2, 9), st.just("x"))
payloads = st.one_of(
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
    """How SQLite and Redis keep a payload: msgpack bytes for a scalar, packed as is."""
    if kind == PLAIN and type(kind) is int:
        try:
            return msgpack.packb(payload, use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            return NOT_REPRESENTABLE
    return payload


def _sqlite(record: tuple[Any, ...], path: Path) -> Verdict | object:
    key, kind, payload, ts, origin, expires = record
    blob = _blob(kind, payload)
    if blob is NOT_REPRESENTABLE or isinstance(blob, list):
        return NOT_REPRESENTABLE
    if type(expires) is float and math.isnan(expires):
        return NOT_REPRESENTABLE  # SQLite keeps NaN as NULL: no such row can exist
    if type(key) is not str or type(origin) is not str:
        return NOT_REPRESENTABLE  # TEXT columns turn a number into its text
    if any(
        type(v) is int and not -(1 << 63) <= v < (1 << 63) for v in (*record[:2], blob, *record[3:])
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
