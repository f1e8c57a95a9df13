"""What a cache value may be, how large, and how it is held so reads never alias the replica.

*Plain* scalars (None, bool, float, str, bytes, and ints of 64 bits) are stored as they
are: handing them out is safe and costs nothing. Every other value -- list, dict,
tuple, set, frozenset, bytearray, a larger int, datetime, date, time, timedelta, UUID,
Decimal -- is stored as its packed bytes (:mod:`crdtcache.core._packing`: msgpack
with fixed extension codes) wrapped in :class:`Packed`; every read hands out a fresh
copy, so a caller who mutates what ``get`` returned cannot change this node's replica
behind its peers' back, and a tuple comes back a tuple.

*Flat reads.* Decoding is most of what a read of a list or dict costs. A *flat* one --
a list or dict whose items (and keys) are all str, int, float, bool, None or bytes,
which nothing can change in place -- is as safe to hand out as a shallow copy of a
decoded original, at a fraction of the cost; a flat tuple or frozenset is immutable
through and through and is handed out as it is. :class:`FlatReads` keeps those decoded
originals, by their packed bytes, for the values read most; anything nested (a list
in a dict, a bytearray, a datetime) is decoded on every read, as is a value too large
to keep (:data:`FLAT_READ_VALUE_BYTES`).

*Limits.* A key is a str of at most ``max_key_chars`` characters (default and most:
:data:`MAX_KEY_CHARS`). A value's size is the bytes it travels as -- a str's UTF-8
encoding, bytes as they are, anything else its packed bytes -- and may be at most
``max_value_bytes`` (default :data:`DEFAULT_MAX_VALUE_BYTES`, 1 MiB; configurable up
to :data:`MAX_VALUE_BYTES`, 32 MiB). None, bool, int and float are small and fixed,
and have no size to limit. The same limits apply when a value is written
(:func:`encode_value`) and when a record is read from outside
(:func:`unpack_stored`, :mod:`crdtcache.core._format`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from itertools import repeat
from typing import Any, Final

import msgpack

from crdtcache._errors import SerializationError
from crdtcache.core._counter import Counter
from crdtcache.core._packing import (
    INT_MAX,
    INT_MIN,
    SUPPORTED,
    TRUSTED_EXT_HOOK,
    is_plain,
    pack,
    unpack_checked,
)

__all__ = [
    "DEFAULT_MAX_VALUE_BYTES",
    "FLAT_READ_BYTES",
    "FLAT_READ_VALUE_BYTES",
    "FlatReads",
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
    "value_bytes",
]

#: Longest key, in characters: the default of ``max_key_chars`` and the most it may be.
MAX_KEY_CHARS: Final = 1024
#: Default largest value (``max_value_bytes``), in bytes of its encoding.
DEFAULT_MAX_VALUE_BYTES: Final = 1 << 20
#: The most ``max_value_bytes`` may be set to.
MAX_VALUE_BYTES: Final = 32 << 20
#: Packed bytes of the flat values a :class:`FlatReads` keeps decoded (their decoded
#: objects take a few times as much: about 1 MiB for small dicts).
FLAT_READ_BYTES: Final = 192 << 10
#: Largest packed value whose decoded original a :class:`FlatReads` keeps.
FLAT_READ_VALUE_BYTES: Final = 4096
#: What a :class:`FlatReads` charges its budget for a value it decodes on every read.
_DECODER_COST: Final = 64
#: What to do about a value of another type (said by every refusal).
WAYS_OUT: Final = (
    f"values may hold {SUPPORTED}; for other types pass schema= (a pydantic model, "
    "dataclass or TypeAdapter) or serializer= (a (dumps, loads) pair)"
)


def _unpack(stored: bytes) -> Any:
    """Packed bytes this process packed or checked, read (see :func:`decode_value`).

    The keywords are written out, not passed as ``**options``: unpacking a dict of
    options costs a small value's read about a quarter more. (``raw=False`` is
    msgpack's default: strings come back as str.)
    """
    return msgpack.unpackb(stored, strict_map_key=False, ext_hook=TRUSTED_EXT_HOOK)


class Packed(bytes):
    """The packed bytes of a value that is not a plain scalar, as held in a replica."""

    __slots__ = ()


def check_key(key: object, max_chars: int = MAX_KEY_CHARS) -> str:
    """Return ``key`` if it is a str of at most ``max_chars``, else raise ``SerializationError``."""
    if type(key) is not str:
        raise SerializationError(f"cache keys must be str, not {type(key).__name__}")
    if len(key) > max_chars:
        raise SerializationError(f"key of {len(key)} characters exceeds {max_chars}")
    return key


def value_bytes(stored: object) -> int:
    """The size ``max_value_bytes`` limits: UTF-8 bytes of a str, length of bytes, else 0.

    Raises ``UnicodeEncodeError`` for a str that is not valid Unicode (a lone surrogate
    cannot be sent anywhere).
    """
    if isinstance(stored, str):  # exact str only: values and records never hold a subclass
        return len(stored) if stored.isascii() else len(stored.encode())
    if isinstance(stored, bytes):  # bytes or Packed
        return len(stored)
    return 0


def encode_value(key: str, value: object, max_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> object:
    """Turn a user value into its stored form, or raise ``SerializationError``.

    Plain scalars are returned as they are, anything else as :class:`Packed` bytes.
    The error names the key, the offending type and the ways out.
    """
    # str and bytes first, and sized inline: they are most writes.
    if type(value) is str:
        if value.isascii():
            size = len(value)
        else:
            try:
                size = len(value.encode())
            except UnicodeEncodeError as exc:
                raise SerializationError(f"value for {key!r} cannot be carried: {exc}") from exc
        stored: object = value
    elif type(value) is bytes:
        size, stored = len(value), value
    elif is_plain(value):
        return value
    else:
        try:
            stored = Packed(pack(value))
        except TypeError as exc:
            raise SerializationError(
                f"value for {key!r} cannot be carried: it is or holds {exc}; {WAYS_OUT}"
            ) from exc
        except ValueError as exc:
            raise SerializationError(f"value for {key!r} cannot be carried: {exc}") from exc
        size = len(stored)
    if size > max_bytes:
        raise SerializationError(
            f"value for {key!r} exceeds {max_bytes} bytes (max_value_bytes): it takes {size}"
        )
    return stored


def decode_value(stored: object) -> Any:
    """Return a value safe to hand to a caller (a fresh copy of a packed value).

    A counter (:class:`~crdtcache.core._counter.Counter`) reads as its int.
    """
    if type(stored) is Packed:
        # Bytes this process packed or checked: no check needed, only the hook. (As
        # _unpack, written out here: one Python call fewer on every read of a dict.)
        return msgpack.unpackb(stored, strict_map_key=False, ext_hook=TRUSTED_EXT_HOOK)
    if type(stored) is Counter:
        return stored.total
    return stored


def unpack_stored(blob: bytes, max_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> Packed:
    """Validate packed bytes received from outside and wrap them, or raise ``ValueError``.

    Accepts exactly what :func:`encode_value` produces for a value that is not plain
    (see :func:`crdtcache.core._packing.unpack_checked`), up to ``max_bytes``.
    """
    if len(blob) > max_bytes:
        raise ValueError(f"packed value of {len(blob)} bytes exceeds max_value_bytes ({max_bytes})")
    if is_plain(unpack_checked(blob)):
        raise ValueError("a plain scalar is never packed (it travels as a plain value)")
    return Packed(blob)


def stored_size(stored: object) -> int:
    """Approximate bytes a stored value carries (for ``max_memory`` and frame budgets)."""
    if type(stored) in (str, bytes, Packed):
        return len(stored)  # type: ignore[arg-type]  # sized types checked above
    if type(stored) is Counter:
        return 16 + 24 * len(stored.parts)
    return 8


#: Types of the items a flat container may hold: nothing can change them in place.
_IMMUTABLE: Final = frozenset({str, int, float, bool, type(None), bytes})


def _flat(value: object) -> bool:
    """Whether ``value`` is a list, dict, tuple or frozenset of immutable scalars."""
    if type(value) is dict:
        return all(type(k) in _IMMUTABLE and type(v) in _IMMUTABLE for k, v in value.items())
    if type(value) is list or type(value) is tuple or type(value) is frozenset:
        return all(type(v) in _IMMUTABLE for v in value)
    return False


class FlatReads:
    """Packed values decoded for a reader, flat ones copied from a kept original.

    :meth:`decode` returns what :func:`decode_value` would: a fresh object nobody
    else holds, or an immutable one. For a flat list or dict (module doc) that is a
    shallow copy of an original decoded once and kept, never handed out; a flat tuple
    or frozenset is the kept original itself. Originals are kept by their packed bytes
    (equal bytes decode to equal values, so a kept original is never stale, whatever
    replaced the entry since), up to :data:`FLAT_READ_BYTES` of them; one more empties
    the memory and starts again (the values read most are back after one read each).

    A value that is not flat (or too large) is decoded on every read, by a decoder kept
    the same way (a ``partial`` of the unpacking: no flatness check again).
    The read path calls :attr:`copier` itself (one C call where :meth:`decode` is a
    Python one): ``copier(stored)`` is the function that returns a fresh copy of
    ``stored``'s value (copied or decoded), or None when none is kept yet.

    Safe from several threads at once (``SyncCache`` reads in its callers' threads):
    an original is never changed once kept, each step is one dict operation, and a
    race costs at most a decode.
    """

    __slots__ = ("_kept", "_kept_bytes", "copier")

    def __init__(self) -> None:
        self._kept: dict[Packed, Callable[[], Any]] = {}
        self._kept_bytes = 0
        self.copier: Callable[[Packed], Callable[[], Any] | None] = self._kept.get

    def decode(self, stored: Packed) -> Any:
        """A value safe to hand to a caller for ``stored`` (see the class doc)."""
        copy = self._kept.get(stored)
        if copy is not None:
            return copy()
        value = decode_value(stored)
        kind = type(value)
        if len(stored) > FLAT_READ_VALUE_BYTES or not _flat(value):
            # Nested (or large): decoded on every read, by a copier that calls msgpack
            # at once; it keeps no decoded object, so it is charged a pointer's worth.
            self._keep(stored, partial(_unpack, stored), _DECODER_COST)
            return value
        if kind is dict or kind is list:
            self._keep(stored, value.copy, len(stored))
            return value.copy()
        # A flat tuple or frozenset: immutable through and through, handed out as is.
        self._keep(stored, repeat(value).__next__, len(stored))
        return value

    def _keep(self, stored: Packed, copier: Callable[[], Any], cost: int) -> None:
        if self._kept_bytes + cost > FLAT_READ_BYTES:
            self._kept.clear()  # (the same dict: ``copier`` is its bound ``get``)
            self._kept_bytes = 0
        self._kept[stored] = copier
        self._kept_bytes += cost

    def __len__(self) -> int:
        """How many values have a copier kept (a decoded original, or a decoder)."""
        return len(self._kept)
