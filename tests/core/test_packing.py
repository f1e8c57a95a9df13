"""The packed value format: fixed extension codes, faithful round trips, one valid encoding."""

from __future__ import annotations

import collections
import enum
import uuid
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtcache import SerializationError
from crdtcache.core import Packed, decode_value, encode_value, unpack_stored
from crdtcache.core._packing import (
    EXT_CODES,
    INT_MAX,
    INT_MIN,
    MAX_DEPTH,
    MAX_HASH_COLLISIONS,
    _unpack_checked,
    pack,
    unpack_checked,
)
from tests.value_types import typed, values


def ext(code: int, payload: bytes) -> bytes:
    """An extension type spelt out by hand (msgpack's packer is not the thing tested)."""
    n = len(payload)
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
    if n in fixed:
        return bytes((fixed[n], code)) + payload
    assert n < 256
    return bytes((0xC7, n, code)) + payload


def round_trip(value: Any) -> Any:
    return decode_value(encode_value("k", value))


def test_the_extension_codes_are_fixed() -> None:
    # Part of the wire and storage formats: changing one breaks every other node.
    assert dict(EXT_CODES) == {
        int: 1,
        tuple: 2,
        set: 3,
        frozenset: 4,
        bytearray: 5,
        datetime: 6,
        date: 7,
        time: 8,
        timedelta: 9,
        uuid.UUID: 10,
        Decimal: 11,
    }


@given(values)
def test_every_supported_value_comes_back_with_its_types(value: Any) -> None:
    assert typed(round_trip(value)) == typed(value)


@given(values)
def test_what_encoding_produces_is_accepted_from_outside(value: Any) -> None:
    stored = encode_value("k", value)
    if type(stored) is Packed:
        again = unpack_stored(bytes(stored))
        assert again == stored
        assert typed(decode_value(again)) == typed(value)


@given(values)
def test_packing_is_a_function_of_the_value(value: Any) -> None:
    # Sets are iterated in hash order, which differs between processes for str items:
    # their packed form must not.
    assert pack(value) == pack(round_trip(value))


def _mutate(value: Any) -> None:
    if type(value) is list:
        for item in value:
            _mutate(item)
        value.append("mutated")
    elif type(value) is dict:
        for item in value.values():
            _mutate(item)
        value["mutated"] = True
    elif type(value) is set:
        value.add("mutated")
    elif type(value) is bytearray:
        value.extend(b"mutated")
    elif type(value) is tuple:
        for item in value:
            _mutate(item)


@given(values)
def test_a_read_never_aliases_what_is_stored(value: Any) -> None:
    stored = encode_value("k", value)
    _mutate(decode_value(stored))
    assert typed(decode_value(stored)) == typed(value)


# ------------------------------------------------------------------ examples
def test_tuples_stay_tuples_at_every_depth() -> None:
    value = (1, [2, (3, (4,))], {"t": ()})
    assert typed(round_trip(value)) == typed(value)


def test_dict_keys_keep_their_types() -> None:
    value = {1: "int", 1.5: "float", b"k": "bytes", None: 0, (1, "a"): "tuple"}
    value[frozenset({2})] = "frozenset"
    value[date(2024, 1, 1)] = "date"
    value[uuid.UUID(int=7)] = "uuid"
    value[1 << 70] = "big"
    assert typed(round_trip(value)) == typed(value)


@pytest.mark.parametrize("number", [INT_MAX + 1, INT_MIN - 1, 10**40, -(10**40), 1 << 1000])
def test_ints_beyond_64_bits_travel_as_an_extension(number: int) -> None:
    stored = encode_value("n", number)
    assert type(stored) is Packed
    assert msgpack.unpackb(stored, ext_hook=lambda code, data: code) == 1  # EXT_INT
    assert round_trip(number) == number


@pytest.mark.parametrize("number", [INT_MAX, INT_MIN, 0, -1])
def test_ints_of_64_bits_are_plain(number: int) -> None:
    assert encode_value("n", number) is number


def test_an_aware_datetime_keeps_its_offset() -> None:
    tz = timezone(timedelta(hours=5, minutes=30, seconds=15, microseconds=7))
    value = datetime(2024, 3, 1, 12, 0, 0, 1, tzinfo=tz)
    back = round_trip(value)
    assert back == value and back.utcoffset() == value.utcoffset()
    assert round_trip(datetime(2024, 3, 1)).tzinfo is None


def test_a_zoneinfo_datetime_comes_back_at_its_fixed_offset() -> None:
    value = datetime(2024, 7, 1, 12, tzinfo=ZoneInfo("Europe/Paris"))
    back = round_trip(value)
    assert back == value
    assert back.tzinfo == timezone(timedelta(hours=2))


def test_fold_is_kept() -> None:
    value = datetime(2024, 11, 3, 1, 30, fold=1)
    assert round_trip(value).fold == 1
    assert round_trip(time(1, 30, fold=1)).fold == 1


def test_a_time_whose_tzinfo_gives_no_offset_is_refused() -> None:
    with pytest.raises(SerializationError, match="no UTC offset"):
        encode_value("t", time(12, tzinfo=ZoneInfo("Europe/Paris")))


def test_decimals_keep_their_exact_form() -> None:
    for text in ["1.2300E+5", "-0", "0E-7", "NaN123", "-sNaN", "Infinity", "1" * 200]:
        assert str(round_trip(Decimal(text))) == text


class Color(enum.IntEnum):
    RED = 1


class Point(NamedTuple):
    x: int


class Name(str):
    __slots__ = ()


@pytest.mark.parametrize(
    ("value", "base"),
    [
        (Color.RED, "int"),
        (Point(1), "tuple"),
        (collections.OrderedDict(a=1), "dict"),
        ([Name("n")], "str"),
        ({"k": collections.defaultdict(int)}, "dict"),
    ],
)
def test_a_subclass_is_refused_rather_than_changed(value: object, base: str) -> None:
    with pytest.raises(SerializationError, match=f"subclass of {base}.*schema=.*serializer="):
        encode_value("k", value)


@pytest.mark.parametrize(
    "value",
    [object(), [memoryview(b"x")], [msgpack.ExtType(1, b"x")], {"t": msgpack.Timestamp(1)}],
)
def test_what_msgpack_would_carry_unfaithfully_is_refused(value: object) -> None:
    with pytest.raises(SerializationError, match=r"'k' cannot be carried.*serializer="):
        encode_value("k", value)


def test_a_str_that_is_not_valid_unicode_is_refused_on_write() -> None:
    for value in ["\ud800", ["\udfff"]]:
        with pytest.raises(SerializationError, match="surrogates"):
            encode_value("k", value)


# -------------------------------------------------------------------- bounds
def nested(depth: int) -> Any:
    value: Any = 0
    for i in range(depth):
        value = (value,) if i % 2 else [value]
    return value


def test_nesting_is_bounded_on_write() -> None:
    assert typed(round_trip(nested(MAX_DEPTH))) == typed(nested(MAX_DEPTH))
    with pytest.raises(SerializationError, match=f"deeper than {MAX_DEPTH}"):
        encode_value("k", nested(MAX_DEPTH + 1))
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(SerializationError, match="deeper"):
        encode_value("k", loop)


def test_deeply_nested_extensions_from_outside_are_refused_without_a_crash() -> None:
    # 5000 nested tuples would take ~200 MB of C stack to unpack: a crash, unbounded.
    blob = msgpack.packb(0)
    for _ in range(5000):
        blob = ext(2, b"\x91" + blob) if len(blob) + 1 < 256 else _ext_long(2, b"\x91" + blob)
    with pytest.raises(ValueError, match=f"deeper than {MAX_DEPTH}"):
        unpack_stored(blob)


def _ext_long(code: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 1 << 16:
        return b"\xc8" + n.to_bytes(2, "big") + bytes((code,)) + payload
    return b"\xc9" + n.to_bytes(4, "big") + bytes((code,)) + payload


def colliding_ints(count: int) -> list[int]:
    """Distinct ints with one hash (CPython hashes an int modulo 2**61 - 1)."""
    modulus = (1 << 61) - 1
    return [5 + i * modulus for i in range(count)]


def test_keys_flooding_one_hash_are_refused_on_write() -> None:
    assert len(set(map(hash, colliding_ints(3)))) == 1
    fine = dict.fromkeys(colliding_ints(MAX_HASH_COLLISIONS + 1), 0)
    assert round_trip(fine) == fine
    with pytest.raises(SerializationError, match="hash flooding"):
        encode_value("k", dict.fromkeys(colliding_ints(MAX_HASH_COLLISIONS + 2), 0))
    with pytest.raises(SerializationError, match="hash flooding"):
        encode_value("k", set(colliding_ints(MAX_HASH_COLLISIONS + 2)))


def test_keys_flooding_one_hash_from_outside_are_refused_quickly() -> None:
    count = 20_000  # about 0.4 MB: building this dict would take minutes
    keys = colliding_ints(count)
    body = b"".join(pack(k) + b"\x00" for k in keys)
    blob = b"\xde" + count.to_bytes(2, "big") + body
    with pytest.raises(ValueError, match="hash flooding"):
        unpack_stored(blob, max_bytes=len(blob))
    members = b"".join(pack(k) for k in keys)
    as_set = _ext_long(3, b"\xdc" + count.to_bytes(2, "big") + members)
    with pytest.raises(ValueError, match="hash flooding"):
        unpack_stored(as_set, max_bytes=len(as_set))


# ---------------------------------------------------------------------- junk
# 2024-01-01 00:00 with a UTC offset of a whole day (offsets must be less).
DAY_OFFSET = b"\x07\xe8\x01\x01" + b"\x00" * 8 + (86_400 * 10**6).to_bytes(8, "big")
JUNK: list[tuple[str, bytes, str]] = [
    ("unknown extension code", ext(99, b"x"), "extension type 99"),
    ("msgpack timestamp", b"\x91\xd6\xff\x00\x00\x00\x01", "Timestamp"),
    ("int that fits 64 bits", ext(1, b"\x05"), "canonical"),
    ("int with extra bytes", ext(1, b"\x00" * 8 + b"\x01"), "canonical"),
    ("empty int", b"\xc7\x00\x01", "empty"),
    ("float32", b"\x91\xca\x3f\x80\x00\x00", "canonical"),
    ("long header for a short str", b"\x91\xd9\x01a", "canonical"),
    ("set out of order", ext(3, b"\x92\x02\x01"), "canonical"),
    ("set item twice", ext(3, b"\x92\x01\x01"), "canonical"),
    ("map key twice", b"\x82\x01\x01\x01\x02", "twice"),
    ("tuple payload not an array", ext(2, b"\x01"), "not an array"),
    ("tuple payload with trailing bytes", ext(2, b"\x90\x00"), "extension type 2"),
    ("unhashable map key", b"\x81\x90\x00", "unhashable"),
    ("datetime month 13", ext(6, bytes.fromhex("07e80d0100000000000000" + "00")), "month"),
    ("datetime of 13 bytes", ext(6, b"\x07\xe8\x01\x01" + b"\x00" * 9), "13 bytes"),
    ("offset of a day", ext(6, DAY_OFFSET), "offset must be"),
    ("date of 3 bytes", ext(7, b"\x07\xe8\x01"), "3 bytes"),
    ("time fold 2", ext(8, b"\x00\x00\x00\x00\x00\x00\x00\x02"), "fold"),
    ("timedelta seconds out of range", ext(9, b"\x00" * 4 + b"\xff" * 8), "canonical"),
    ("uuid of 15 bytes", ext(10, b"\x00" * 15), "extension type 10"),
    ("decimal with spaces", ext(11, b" 1 "), "canonical"),
    ("decimal not a number", ext(11, b"one"), "extension type 11"),
    ("decimal not ascii", ext(11, b"\xff"), "extension type 11"),
    ("plain scalar packed", msgpack.packb(5), "plain scalar"),
    ("trailing bytes", b"\x90\x00", "msgpack"),
    ("not msgpack", b"\xc1", "msgpack"),
]


@pytest.mark.parametrize(("name", "blob", "match"), JUNK, ids=[j[0] for j in JUNK])
def test_junk_from_outside_is_refused(name: str, blob: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        unpack_stored(blob)


@given(st.binary(max_size=40))
def test_arbitrary_bytes_are_refused_or_are_a_canonical_packing(blob: bytes) -> None:
    try:
        value = unpack_checked(blob)
    except ValueError:
        return
    assert pack(value) == blob


# -------------------------------------------- the fast path takes no shortcut
def verdict(check: Any, blob: bytes) -> Any:
    try:
        return ("accepted", typed(check(blob)))
    except ValueError:
        return "refused"


def packb_loosely(value: Any) -> bytes:
    """msgpack as another packer might write it: str as raw, floats of 32 bits."""
    try:
        return msgpack.packb(value, use_bin_type=False, use_single_float=True)
    except OverflowError:  # a float too large for 32 bits
        return b"\xc1"


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=10,
)


@given(
    st.one_of(
        st.binary(max_size=40),
        values.map(pack),
        json_like.map(lambda v: msgpack.packb(v, use_bin_type=True)),
        json_like.map(packb_loosely),
        st.tuples(values.map(pack), st.integers(0, 200), st.integers(0, 255)).map(
            lambda t: (
                t[0][: t[1] % (len(t[0]) or 1)]
                + bytes((t[2],))
                + t[0][t[1] % (len(t[0]) or 1) + 1 :]
            )
        ),
    )
)
def test_the_fast_check_agrees_with_the_rule(blob: bytes) -> None:
    # unpack_checked decodes plain msgpack at C speed; _unpack_checked is the rule.
    assert verdict(unpack_checked, blob) == verdict(_unpack_checked, blob)


def test_deep_plain_nesting_from_outside_is_refused_by_the_fast_check() -> None:
    deep = b"\x91" * MAX_DEPTH + b"\x00"
    assert unpack_checked(deep) is not None
    with pytest.raises(ValueError, match=f"deeper than {MAX_DEPTH}"):
        unpack_checked(b"\x91" * (MAX_DEPTH + 1) + b"\x00")
    with pytest.raises(ValueError, match=f"deeper than {MAX_DEPTH}"):
        unpack_checked(b"\x81\xa1k" * (MAX_DEPTH + 1) + b"\x00")


@pytest.mark.parametrize("count", [15, 16, 65_535, 65_536])
def test_large_sets_and_tuples_round_trip_and_are_accepted(count: int) -> None:
    # The array header of a set is written by hand: it must be the one msgpack writes.
    for value in (set(range(count)), frozenset(map(str, range(count))), tuple(range(count))):
        stored = encode_value("k", value, max_bytes=1 << 22)
        assert typed(decode_value(unpack_stored(bytes(stored), 1 << 22))) == typed(value)


def test_distinct_keys_that_pack_alike_are_refused() -> None:
    # Tuples holding two distinct NaN objects are distinct keys but pack to one form:
    # they would come back as one key.
    first, second = (float("nan"),), (float("nan"),)
    with pytest.raises(SerializationError, match="pack to the same bytes"):
        encode_value("k", {first: 1, second: 2})
    with pytest.raises(SerializationError, match="pack to the same bytes"):
        encode_value("k", {first, second})
