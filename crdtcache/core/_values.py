"""What a cache value may be, and how it is held so that reads never alias the replica.

Immutable scalars (None, bool, int, float, str, bytes) are stored as they are: handing
them out is safe and costs nothing. Lists and dicts are stored as their msgpack
encoding wrapped in :class:`Packed`; every read decodes a fresh copy, so a caller who
mutates what ``get`` returned cannot change this node's replica behind its peers' back.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack

from crdtcache._errors import SerializationError

__all__ = [
    "INT_MAX",
    "INT_MIN",
    "MAX_KEY_CHARS",
    "MAX_VALUE_BYTES",
    "Packed",
    "check_key",
    "decode_value",
    "encode_value",
    "stored_size",
    "unpack_stored",
]

#: Longest key accepted, in characters (on the API and on the wire).
MAX_KEY_CHARS: Final = 1024
#: Largest value accepted, in bytes of its encoding (on the API and on the wire).
MAX_VALUE_BYTES: Final = 1 << 20

#: The int range a value may hold (msgpack's: int64 and uint64).
INT_MIN: Final = -(1 << 63)
INT_MAX: Final = (1 << 64) - 1
_SCALARS: Final = (str, bytes, bool, float, type(None))


class Packed(bytes):
    """The msgpack encoding of a list or dict value, as held in a replica."""

    __slots__ = ()


def _str_keys(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    for k, _ in pairs:
        if type(k) is not str:
            raise ValueError(f"map keys must be str, not {type(k).__name__}")
    return dict(pairs)


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not a cache value")


def _validate(blob: bytes) -> Any:
    """Unpack ``blob`` as a cache value: str map keys only, no extension types."""
    value = msgpack.unpackb(
        blob, raw=False, strict_map_key=True, object_pairs_hook=_str_keys, ext_hook=_no_ext
    )
    # msgpack decodes its timestamp extension (type -1, whose header holds a 0xff byte)
    # itself, without asking ext_hook: refuse it with a second, ext-less pass, paid
    # only by blobs that hold a 0xff byte at all.
    if b"\xff" in blob:
        try:
            msgpack.unpackb(blob, raw=False, strict_map_key=True, max_ext_len=0)
        except ValueError:
            raise ValueError("msgpack extension type -1 is not a cache value") from None
    return value


def check_key(key: object) -> str:
    """Return ``key`` if it is a str of acceptable length, else raise ``SerializationError``."""
    if type(key) is not str:
        raise SerializationError(f"cache keys must be str, not {type(key).__name__}")
    if len(key) > MAX_KEY_CHARS:
        raise SerializationError(f"key of {len(key)} characters exceeds {MAX_KEY_CHARS}")
    return key


def encode_value(key: str, value: object) -> object:
    """Turn a user value into its stored form, or raise ``SerializationError``.

    Raises naming the key and the offending type, so the caller knows what to fix.
    """
    kind = type(value)
    if kind is str or kind is bytes:
        if len(value) > MAX_VALUE_BYTES:  # type: ignore[arg-type]  # str/bytes checked above
            raise SerializationError(f"value for {key!r} exceeds {MAX_VALUE_BYTES} bytes")
        return value
    if kind is int:
        if not INT_MIN <= value <= INT_MAX:  # type: ignore[operator]  # int checked above
            raise SerializationError(f"int value for {key!r} does not fit in 64 bits")
        return value
    if kind in (bool, float, type(None)):
        return value
    if isinstance(value, (list, tuple, dict)):
        try:
            blob = msgpack.packb(value, use_bin_type=True)
            # Unpacking once proves the round trip: map keys are str, nothing is lost.
            _validate(blob)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(
                f"value for {key!r} cannot be carried: {exc} (allowed: None, bool, int, "
                "float, str, bytes, lists and dicts with str keys)"
            ) from exc
        if len(blob) > MAX_VALUE_BYTES:
            raise SerializationError(f"value for {key!r} exceeds {MAX_VALUE_BYTES} bytes")
        return Packed(blob)
    raise SerializationError(
        f"value for {key!r} has type {kind.__name__}, which cannot be carried "
        "(allowed: None, bool, int, float, str, bytes, lists and dicts with str keys)"
    )


def decode_value(stored: object) -> Any:
    """Return a value safe to hand to a caller (a fresh copy for lists and dicts)."""
    if type(stored) is Packed:
        return msgpack.unpackb(stored, raw=False, strict_map_key=True)
    return stored


def unpack_stored(blob: bytes) -> Packed:
    """Validate a packed container received from a peer and wrap it, or raise ``ValueError``."""
    if len(blob) > MAX_VALUE_BYTES:
        raise ValueError("packed value over MAX_VALUE_BYTES")
    try:
        decoded = _validate(blob)
    except Exception as exc:  # msgpack raises a wide family; all mean "junk"
        raise ValueError(f"packed value is not valid msgpack: {exc}") from exc
    if not isinstance(decoded, (list, dict)):
        raise ValueError("packed value is not a list or dict")
    return Packed(blob)


def stored_size(stored: object) -> int:
    """Approximate bytes a stored value carries (for ``max_memory`` and frame budgets)."""
    if type(stored) in (str, bytes, Packed):
        return len(stored)  # type: ignore[arg-type]  # sized types checked above
    return 8
