"""What a value may be, how large, how it is held, and that reads never alias the replica.

The types beyond plain scalars, and the packed format, are tested in ``test_packing``.
"""

from __future__ import annotations

import math
import pickle
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtcache import CacheError, SerializationError
from crdtcache.core import (
    DEFAULT_MAX_VALUE_BYTES,
    MAX_KEY_CHARS,
    MAX_VALUE_BYTES,
    Packed,
    check_key,
    decode_value,
    encode_value,
    unpack_stored,
)
from crdtcache.core._values import stored_size
from tests.core.helpers import T0, make_replica

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


@pytest.mark.parametrize("value", [None, True, 0, -(1 << 63), (1 << 64) - 1, 1.5, "s", b"b"])
def test_scalars_are_stored_as_they_are(value: object) -> None:
    assert encode_value("k", value) is value
    assert decode_value(value) is value


def test_containers_are_stored_packed_and_read_as_fresh_copies() -> None:
    stored = encode_value("k", {"a": [1, 2]})
    assert type(stored) is Packed
    first, second = decode_value(stored), decode_value(stored)
    assert first == second == {"a": [1, 2]}
    assert first is not second


def test_a_tuple_reads_back_as_a_tuple() -> None:
    # It used to come back as a list, locally and on every peer.
    back = decode_value(encode_value("k", (1, "x", (2,))))
    assert back == (1, "x", (2,)) and type(back) is tuple and type(back[2]) is tuple


@pytest.mark.parametrize("value", [(1, 2), {1, 2}, frozenset(), bytearray(b"x"), 1 << 64])
def test_values_beyond_plain_scalars_are_packed(value: object) -> None:
    assert type(encode_value("k", value)) is Packed


@given(values)
def test_every_allowed_value_round_trips(value: Any) -> None:
    assert decode_value(encode_value("k", value)) == value


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(object(), "object"), ({1j, 2}, "complex"), (1 + 2j, "complex"), (math, "module")],
)
def test_unsupported_type_names_the_key_and_the_type(value: object, type_name: str) -> None:
    with pytest.raises(SerializationError, match=rf"'user:1'.*type {type_name}\b"):
        encode_value("user:1", value)


def test_unsupported_type_names_the_ways_out() -> None:
    with pytest.raises(SerializationError, match=r"datetime.*UUID.*Decimal.*schema=.*serializer="):
        encode_value("k", [object()])


def test_serialization_error_is_a_cache_error_and_a_type_error() -> None:
    with pytest.raises(CacheError):
        encode_value("k", object())
    with pytest.raises(TypeError):
        encode_value("k", object())


def test_serialization_error_is_a_pickling_error() -> None:
    # Django's cache tests expect pickle.PickleError for a value a backend cannot store.
    with pytest.raises(pickle.PicklingError):
        encode_value("k", object())
    assert issubclass(SerializationError, CacheError)


def test_dict_with_int_keys_round_trips() -> None:
    back = decode_value(encode_value("cfg", {1: "a", 2.5: "b"}))
    assert back == {1: "a", 2.5: "b"} and [type(k) for k in back] == [int, float]


def test_dict_with_bytes_keys_round_trips() -> None:
    back = decode_value(encode_value("cfg", {b"k": 1, "k": 2}))
    assert back == {b"k": 1, "k": 2} and [type(k) for k in back] == [bytes, str]


def test_nested_unsupported_value_is_refused() -> None:
    with pytest.raises(SerializationError, match="'k' cannot be carried"):
        encode_value("k", [1, {"x": object()}])


@pytest.mark.parametrize("number", [1 << 64, -(1 << 63) - 1, 10**30])
def test_int_beyond_64_bits_round_trips(number: int) -> None:
    assert decode_value(encode_value("n", number)) == number


def test_int_beyond_64_bits_inside_a_list_round_trips() -> None:
    assert decode_value(encode_value("n", [1 << 64, -(10**40)])) == [1 << 64, -(10**40)]


@pytest.mark.parametrize(
    "value",
    [
        "x" * (DEFAULT_MAX_VALUE_BYTES + 1),
        b"x" * (DEFAULT_MAX_VALUE_BYTES + 1),
        ["x" * DEFAULT_MAX_VALUE_BYTES],
        "\u00e9" * (DEFAULT_MAX_VALUE_BYTES // 2 + 1),  # fewer characters, more UTF-8 bytes
        bytearray(DEFAULT_MAX_VALUE_BYTES),
    ],
)
def test_too_large_value_is_refused(value: object) -> None:
    with pytest.raises(SerializationError, match=f"'big' exceeds {DEFAULT_MAX_VALUE_BYTES} bytes"):
        encode_value("big", value)


def test_largest_value_is_accepted() -> None:
    big = b"x" * DEFAULT_MAX_VALUE_BYTES
    assert len(encode_value("big", big)) == DEFAULT_MAX_VALUE_BYTES  # type: ignore[arg-type]  # bytes in, bytes out


def test_the_value_limit_is_a_parameter() -> None:
    assert len(encode_value("big", b"x" * MAX_VALUE_BYTES, MAX_VALUE_BYTES)) == MAX_VALUE_BYTES  # type: ignore[arg-type]  # bytes in, bytes out
    with pytest.raises(SerializationError, match="'small' exceeds 10 bytes"):
        encode_value("small", [1] * 10, 10)
    assert encode_value("small", 1 << 60, 1) == 1 << 60  # fixed-size scalars have no size


def test_check_key_accepts_str_up_to_the_limit() -> None:
    key = "k" * MAX_KEY_CHARS
    assert check_key(key) is key
    assert check_key("k" * 8, 8) == "k" * 8
    with pytest.raises(SerializationError, match="exceeds 8"):
        check_key("k" * 9, 8)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (b"k", "must be str, not bytes"),
        (1, "must be str, not int"),
        (None, "must be str, not NoneType"),
        ("k" * (MAX_KEY_CHARS + 1), f"exceeds {MAX_KEY_CHARS}"),
    ],
)
def test_check_key_refuses_bad_keys(key: object, message: str) -> None:
    with pytest.raises(SerializationError, match=message):
        check_key(key)


def test_check_key_refuses_a_str_subclass() -> None:
    class Name(str):
        __slots__ = ()

    with pytest.raises(SerializationError):
        check_key(Name("k"))


def test_unpack_stored_accepts_a_packed_container() -> None:
    blob = msgpack.packb({"a": 1})
    assert type(unpack_stored(blob)) is Packed
    assert type(unpack_stored(msgpack.packb({1: 2}))) is Packed  # int keys are values too


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"\xc1", "not valid msgpack"),
        (msgpack.packb(5), "plain scalar is never packed"),
        # [ExtType(99, b"x")], spelled out: under pytest-cov msgpack's C packer
        # writes an ExtType as a plain array.
        (b"\x91\xd4\x63x", "extension type 99"),
        (b"\x91\xd4\x01x", "canonical"),  # ExtType(1): an int that fits 64 bits
        (b"\x00" * (DEFAULT_MAX_VALUE_BYTES + 1), "exceeds max_value_bytes"),
    ],
)
def test_unpack_stored_refuses_junk(blob: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        unpack_stored(blob)


def test_stored_size_counts_bytes_of_sized_values() -> None:
    assert stored_size("abc") == 3
    assert stored_size(b"ab") == 2
    assert stored_size(encode_value("k", [1])) == 2
    assert stored_size(encode_value("k", (1,))) == 4
    assert stored_size(12345) == 8


# ----------------------------------------------------------------- no aliasing
def test_mutating_a_read_value_does_not_change_the_replica() -> None:
    r = make_replica()
    r.set("user:1", encode_value("user:1", {"name": "Alice", "tags": ["a"]}), T0)
    read = r.visible(T0)["user:1"][0]
    read["name"] = "Mallory"
    read["tags"].append("b")
    assert r.visible(T0)["user:1"][0] == {"name": "Alice", "tags": ["a"]}


def test_mutating_the_written_value_afterwards_does_not_change_the_replica() -> None:
    r = make_replica()
    value = {"n": [1]}
    r.set("k", encode_value("k", value), T0)
    value["n"].append(2)
    assert r.visible(T0)["k"][0] == {"n": [1]}
