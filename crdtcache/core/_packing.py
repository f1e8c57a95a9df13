"""Packing a value as msgpack bytes: the extension types, and the one rule for valid bytes.

Theory of operation
-------------------
msgpack carries None, bool, ints of 64 bits, floats, str, bytes, arrays and maps. Every
other type a cache value may hold travels as a msgpack *extension type* with a fixed
code. The codes and their payloads are part of the wire format (versioned by
``PROTOCOL_VERSION``) and of snapshots, SQLite stores and Redis records:

====  ==========  ==========================================================================
code  type        payload
====  ==========  ==========================================================================
1     int         an int outside [-2**63, 2**64 - 1]: big-endian two's complement, fewest
                  bytes
2     tuple       a msgpack array of the items, packed by these rules
3     set         a msgpack array of the items, in ascending order of their packed bytes
4     frozenset   as set
5     bytearray   the bytes
6     datetime    ``>HBBBBBIB``: year, month, day, hour, minute, second, microsecond, fold
                  (12 bytes); an aware datetime adds ``>q``, its UTC offset in
                  microseconds (20 bytes)
7     date        ``>HBB``: year, month, day
8     time        ``>BBBIB``: hour, minute, second, microsecond, fold (8 bytes); an aware
                  time adds ``>q``, its UTC offset in microseconds (16 bytes)
9     timedelta   ``>iII``: days, seconds, microseconds (as normalised by timedelta)
10    UUID        the 16 bytes
11    Decimal     ``str(d)`` in ASCII (exact: digits, exponent, sign, NaN and infinities)
====  ==========  ==========================================================================

Types are matched exactly: a subclass (an ``IntEnum``, a named tuple, an
``OrderedDict``, a pandas ``Timestamp``) would come back as its base type, so it is
refused rather than silently changed. Map keys may be any supported hashable value
(str, bytes, int, float, bool, None, tuple, frozenset, datetime, date, time,
timedelta, UUID, Decimal); they come back as the same type. A ``tzinfo`` comes back as
``datetime.timezone(offset)``: the UTC offset is kept, the zone's rules are not (a
``zoneinfo.ZoneInfo`` zone becomes the offset it had at that instant, since zone
rules are data that nodes need not agree on). A tzinfo that gives no offset (a
``time`` with a ``ZoneInfo``) is refused.

*One valid encoding.* :func:`pack` is a function of the value (a set is made canonical
by sorting its items' packed bytes). :func:`unpack_checked`, which reads bytes from
outside (a peer, a file, Redis), accepts a blob only if packing what it decodes to
gives back the very same bytes. So a reader accepts exactly what :func:`pack` can
produce, every reader that uses it gives the same verdict, and there is no second
description of the format to drift from the first. (Most values hold no extension
type and only str keys; for them msgpack alone decodes and re-packs at C speed, and
the blob is accepted when the bytes match within the depth bound. Anything else goes
the general way, which alone refuses; a test holds the two to the same verdicts.)

*Bounds on what bytes from outside can cost.*

* :data:`MAX_DEPTH` nested containers at most. Each extension container is unpacked
  by a nested msgpack call, which takes about 40 KiB of C stack: without a bound a
  small blob of nested tuples would overflow the stack (a crash, not an exception).
* Hash flooding: str and bytes hashes are randomised per process, but the hashes of
  ints, floats, tuples, frozensets, Decimals and UUIDs are not, so a peer could send a
  map or a set whose keys all collide and make building it quadratic (minutes of
  CPU for a few hundred kilobytes; the reason msgpack refuses non-str keys by
  default). A map or set whose keys include such types may hold at most
  :data:`MAX_HASH_COLLISIONS` keys whose hash equals another's; honest data has
  next to none (``-1`` and ``-2`` share a hash), and :func:`pack` applies the same
  rule so that whatever it produces is accepted.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Collection, Mapping
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from itertools import pairwise
from operator import itemgetter
from types import MappingProxyType
from typing import Any, Final

import msgpack

__all__ = [
    "EXT_BYTEARRAY",
    "EXT_CODES",
    "EXT_DATE",
    "EXT_DATETIME",
    "EXT_DECIMAL",
    "EXT_FROZENSET",
    "EXT_INT",
    "EXT_SET",
    "EXT_TIME",
    "EXT_TIMEDELTA",
    "EXT_TUPLE",
    "EXT_UUID",
    "INT_MAX",
    "INT_MIN",
    "MAX_DEPTH",
    "MAX_HASH_COLLISIONS",
    "SUPPORTED",
    "TRUSTED_EXT_HOOK",
    "is_plain",
    "pack",
    "unpack_checked",
]

#: Extension type codes (fixed: part of the wire and storage formats).
EXT_INT: Final = 1
EXT_TUPLE: Final = 2
EXT_SET: Final = 3
EXT_FROZENSET: Final = 4
EXT_BYTEARRAY: Final = 5
EXT_DATETIME: Final = 6
EXT_DATE: Final = 7
EXT_TIME: Final = 8
EXT_TIMEDELTA: Final = 9
EXT_UUID: Final = 10
EXT_DECIMAL: Final = 11
#: The extension code of each type that travels as one.
EXT_CODES: Final[Mapping[type, int]] = MappingProxyType(
    {
        int: EXT_INT,
        tuple: EXT_TUPLE,
        set: EXT_SET,
        frozenset: EXT_FROZENSET,
        bytearray: EXT_BYTEARRAY,
        datetime: EXT_DATETIME,
        date: EXT_DATE,
        time: EXT_TIME,
        timedelta: EXT_TIMEDELTA,
        uuid.UUID: EXT_UUID,
        Decimal: EXT_DECIMAL,
    }
)

#: The int range msgpack carries natively (int64 and uint64); beyond it, :data:`EXT_INT`.
INT_MIN: Final = -(1 << 63)
INT_MAX: Final = (1 << 64) - 1
#: Most containers (list, dict, tuple, set, frozenset) nested in one another.
MAX_DEPTH: Final = 64
#: Most keys of one map or set whose hash equals another key's (see the module doc).
MAX_HASH_COLLISIONS: Final = 64

_NONE: Final = type(None)
#: Types msgpack packs as they are, and that come back as the same type.
_LEAVES: Final = frozenset({_NONE, bool, int, float, str, bytes})
#: Types whose hash is randomised per process: no outsider can make them collide.
_RANDOM_HASH: Final = frozenset({str, bytes})
#: Every type a value may hold, for error messages.
SUPPORTED: Final = (
    "None, bool, int, float, str, bytes, bytearray, list, tuple, dict, set, frozenset, "
    "datetime, date, time, timedelta, UUID, Decimal"
)

_DATETIME: Final = struct.Struct(">HBBBBBIB")
_DATE: Final = struct.Struct(">HBB")
_TIME: Final = struct.Struct(">BBBIB")
_TIMEDELTA: Final = struct.Struct(">iII")
_OFFSET: Final = struct.Struct(">q")
_MICROSECOND: Final = timedelta(microseconds=1)


class Refused(ValueError):
    """Bytes from outside that :func:`pack` could not have produced."""


def is_plain(value: object) -> bool:
    """Whether ``value`` is a plain scalar: held and sent as it is, never packed."""
    kind = type(value)
    return kind in _LEAVES and (kind is not int or INT_MIN <= value <= INT_MAX)  # type: ignore[operator]  # an int: checked


# ------------------------------------------------------------------ packing
def pack(value: object) -> bytes:
    """The packed bytes of ``value`` (see the module doc for the format).

    Raises ``TypeError`` naming an unsupported type, and ``ValueError`` for a value the
    format's bounds refuse (nesting, hash collisions, a str that is not valid Unicode).
    """
    return _packb(_lower(value, 0))


def _packb(lowered: object) -> bytes:
    # strict_types: a tuple or a subclass must never be packed as its base type (they
    # are all converted by _lower already; this keeps msgpack from guessing).
    blob: bytes = msgpack.packb(lowered, default=_big_int, strict_types=True, use_bin_type=True)
    return blob


def _big_int(obj: object) -> msgpack.ExtType:
    # msgpack calls ``default`` for what it cannot pack; after _lower that is only an
    # int outside its 64-bit range.
    if type(obj) is not int:
        raise TypeError(f"type {type(obj).__name__} reached msgpack unconverted")
    length = ((obj if obj >= 0 else ~obj).bit_length() + 8) // 8
    return msgpack.ExtType(EXT_INT, obj.to_bytes(length, "big", signed=True))


def _lower(value: object, depth: int) -> object:
    """``value`` in terms msgpack packs faithfully; ``depth`` containers enclose it.

    Lists and dicts of plain scalars are returned as they are (checked at C speed);
    everything else becomes an ``ExtType`` or a converted copy.
    """
    kind = type(value)
    if kind in _LEAVES:
        return value
    if kind is list or kind is dict or kind in _CONTAINERS:
        if depth >= MAX_DEPTH:
            raise ValueError(f"containers nested deeper than {MAX_DEPTH} levels")
        if kind is list:
            return _lower_items(value, depth + 1)  # type: ignore[arg-type]  # a list: checked
        if kind is dict:
            return _lower_map(value, depth + 1)  # type: ignore[arg-type]  # a dict: checked
    encode = _ENCODERS.get(kind)
    if encode is None:
        raise TypeError(_unsupported(kind))
    return msgpack.ExtType(EXT_CODES[kind], encode(value, depth + 1))


def _unsupported(kind: type) -> str:
    carried = _LEAVES | EXT_CODES.keys() | {list, dict}
    base = next((b for b in kind.__mro__[1:] if b in carried), None)
    if base is None:
        return f"type {kind.__name__}"
    return (
        f"type {kind.__name__} (a subclass of {base.__name__}, which would come back "
        f"as {base.__name__})"
    )


# Leaves are tested inline (``type(v) in _LEAVES``) before calling _lower: most items
# of most values are leaves, and a call per item would double the cost of a write.
def _lower_items(items: list[Any], depth: int) -> list[Any]:
    if _LEAVES.issuperset(map(type, items)):
        return items
    return [v if type(v) in _LEAVES else _lower(v, depth) for v in items]


def _lower_map(mapping: dict[Any, Any], depth: int) -> dict[Any, Any]:
    key_types = set(map(type, mapping))
    if not key_types <= _RANDOM_HASH:
        _check_hashes(mapping)
    if key_types <= _LEAVES:
        if _LEAVES.issuperset(map(type, mapping.values())):
            return mapping
        return {k: v if type(v) in _LEAVES else _lower(v, depth) for k, v in mapping.items()}
    lowered = {
        _lower(k, depth): v if type(v) in _LEAVES else _lower(v, depth) for k, v in mapping.items()
    }
    if len(lowered) != len(mapping):
        # Two distinct keys with the same packed form (tuples holding distinct NaNs):
        # they would come back as one.
        raise ValueError("two keys of a dict pack to the same bytes")
    return lowered


def _check_hashes(keys: Collection[Any]) -> None:
    """Refuse keys of a map or set that flood one hash (see the module doc)."""
    if _RANDOM_HASH.issuperset(map(type, keys)):
        return
    collisions = len(keys) - len(set(map(hash, keys)))
    if collisions > MAX_HASH_COLLISIONS:
        raise ValueError(
            f"{collisions} keys share a hash with another key (at most "
            f"{MAX_HASH_COLLISIONS}): refused as hash flooding"
        )


def _array_header(n: int) -> bytes:
    # The header msgpack itself writes for an array of n items (the shortest).
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _pack_tuple(value: tuple[Any, ...], depth: int) -> bytes:
    return _packb(_lower_items(list(value), depth))


def _pack_set(value: set[Any] | frozenset[Any], depth: int) -> bytes:
    _check_hashes(value)
    items = sorted(_packb(_lower(v, depth)) for v in value)
    if any(a == b for a, b in pairwise(items)):
        raise ValueError("two items of a set pack to the same bytes")
    return _array_header(len(items)) + b"".join(items)


def _offset(value: datetime | time) -> bytes:
    if value.tzinfo is None:
        return b""
    offset = value.utcoffset()
    if offset is None:
        raise ValueError(
            f"{type(value).__name__} with tzinfo {value.tzinfo!r} has no UTC offset to keep"
        )
    return _OFFSET.pack(offset // _MICROSECOND)


def _pack_datetime(v: datetime, depth: int) -> bytes:
    fields = (v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, v.fold)
    return _DATETIME.pack(*fields) + _offset(v)


def _pack_time(v: time, depth: int) -> bytes:
    return _TIME.pack(v.hour, v.minute, v.second, v.microsecond, v.fold) + _offset(v)


_ENCODERS: Final[dict[type, Callable[[Any, int], bytes]]] = {
    tuple: _pack_tuple,
    set: _pack_set,
    frozenset: _pack_set,
    bytearray: lambda v, depth: bytes(v),
    datetime: _pack_datetime,
    date: lambda v, depth: _DATE.pack(v.year, v.month, v.day),
    time: _pack_time,
    timedelta: lambda v, depth: _TIMEDELTA.pack(v.days, v.seconds, v.microseconds),
    uuid.UUID: lambda v, depth: v.bytes,
    Decimal: lambda v, depth: str(v).encode("ascii"),
}
_CONTAINERS: Final = frozenset({tuple, set, frozenset})


# ---------------------------------------------------------------- unpacking
class _Reader:
    """Unpacks the bytes found ``depth`` extension containers deep.

    ``checked`` readers read bytes from outside: maps go through a hook that refuses
    duplicate and flooding keys, set items are checked likewise. Readers are chained
    (``inner`` reads the payload of a tuple or set found here) and the chain stops at
    :data:`MAX_DEPTH`, so nesting is bounded without any state shared between calls
    (``SyncCache`` reads from many threads at once).
    """

    __slots__ = ("checked", "inner", "options")

    def __init__(self, checked: bool, inner: _Reader | None) -> None:
        self.checked = checked
        self.inner = inner
        self.options: dict[str, Any] = {
            "raw": False,
            "strict_map_key": False,  # non-str keys are values too; see _checked_map
            "ext_hook": self.ext,
        }
        if checked:
            self.options["object_pairs_hook"] = _checked_map

    def unpack(self, blob: bytes) -> Any:
        """The value packed in ``blob``."""
        return msgpack.unpackb(blob, **self.options)

    def ext(self, code: int, data: bytes) -> Any:
        """msgpack's ``ext_hook``: the value of one extension type."""
        decode = _DECODERS.get(code)
        if decode is None:
            raise Refused(f"msgpack extension type {code} is not a cache value")
        try:
            return decode(data, self)
        except Refused:
            raise
        except Exception as exc:  # struct, int, datetime, Decimal...: all mean junk
            raise Refused(f"extension type {code}: {type(exc).__name__}: {exc}") from None

    def items(self, data: bytes) -> list[Any]:
        """The items of a tuple or set payload."""
        inner = self.inner
        if inner is None:
            raise Refused(f"containers nested deeper than {MAX_DEPTH} levels")
        items = inner.unpack(data)
        if type(items) is not list:
            raise ValueError("payload is not an array")  # ext() names the type
        return items

    def members(self, data: bytes) -> list[Any]:
        """The items of a set payload (checked for flooding when from outside)."""
        items = self.items(data)
        if self.checked:
            _check_hashes(items)
        return items


def _checked_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    keys = list(map(itemgetter(0), pairs))
    _check_hashes(keys)  # hash() also refuses an unhashable key (an array)
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        raise Refused("a map holds the same key twice")
    return mapping


def _tz(data: bytes, at: int) -> timezone | None:
    if len(data) == at:
        return None
    if len(data) != at + _OFFSET.size:
        raise Refused(f"payload of {len(data)} bytes")
    (micros,) = _OFFSET.unpack_from(data, at)
    return timezone(timedelta(microseconds=micros))


def _unpack_datetime(data: bytes, reader: _Reader) -> datetime:
    y, mo, d, h, mi, s, us, fold = _DATETIME.unpack_from(data)
    return datetime(y, mo, d, h, mi, s, us, _tz(data, _DATETIME.size), fold=fold)


def _unpack_time(data: bytes, reader: _Reader) -> time:
    h, mi, s, us, fold = _TIME.unpack_from(data)
    return time(h, mi, s, us, _tz(data, _TIME.size), fold=fold)


def _exact(layout: struct.Struct, data: bytes) -> tuple[Any, ...]:
    if len(data) != layout.size:
        raise Refused(f"payload of {len(data)} bytes, not {layout.size}")
    return layout.unpack(data)


def _unpack_int(data: bytes, reader: _Reader) -> int:
    if not data:
        raise Refused("empty payload")
    return int.from_bytes(data, "big", signed=True)


_DECODERS: Final[dict[int, Callable[[bytes, _Reader], Any]]] = {
    EXT_INT: _unpack_int,
    EXT_TUPLE: lambda data, reader: tuple(reader.items(data)),
    EXT_SET: lambda data, reader: set(reader.members(data)),
    EXT_FROZENSET: lambda data, reader: frozenset(reader.members(data)),
    EXT_BYTEARRAY: lambda data, reader: bytearray(data),
    EXT_DATETIME: _unpack_datetime,
    EXT_DATE: lambda data, reader: date(*_exact(_DATE, data)),
    EXT_TIME: _unpack_time,
    EXT_TIMEDELTA: lambda data, reader: timedelta(*_exact(_TIMEDELTA, data)),
    EXT_UUID: lambda data, reader: uuid.UUID(bytes=data),
    EXT_DECIMAL: lambda data, reader: Decimal(data.decode("ascii")),
}


def _chain(checked: bool) -> _Reader:
    reader: _Reader | None = None
    for _ in range(MAX_DEPTH + 1):
        reader = _Reader(checked, reader)
    assert reader is not None
    return reader


_TRUSTED: Final = _chain(checked=False)
_CHECKED: Final = _chain(checked=True)
#: msgpack's ``ext_hook`` for bytes packed by this process or already checked (with
#: ``raw=False, strict_map_key=False``: see ``core._values.decode_value``).
TRUSTED_EXT_HOOK: Final = _TRUSTED.ext


def unpack_checked(blob: bytes) -> Any:
    """The value packed in ``blob`` from outside, if ``blob`` is what :func:`pack` makes.

    Raises ``ValueError`` saying what is wrong: not msgpack, an unknown or malformed
    extension type, a bound exceeded, or bytes other than ``pack(value)``.
    """
    # Most values hold no extension type and only str keys: msgpack alone can decode
    # and re-pack them (pack would convert nothing), at C speed. Anything else takes
    # the general path, which alone refuses: this one only accepts.
    try:
        value = msgpack.unpackb(blob, raw=False, strict_map_key=True, ext_hook=_no_ext, timestamp=3)
        # strict_types, no conversion: a msgpack timestamp (a datetime, by timestamp=3)
        # cannot be packed back, so it goes to the general path like pack refuses it.
        again = msgpack.packb(value, strict_types=True, use_bin_type=True)
    except Exception:  # an extension type, a non-str key, junk
        return _unpack_checked(blob)
    if again == blob and (
        type(value) not in (list, dict)
        # Fewer bytes that could start a container than MAX_DEPTH: cannot nest deeper.
        or len(blob.translate(None, _NOT_CONTAINER_BYTES)) <= MAX_DEPTH
        or _within_depth(value, MAX_DEPTH)
    ):
        return value
    return _unpack_checked(blob)


def _no_ext(code: int, data: bytes) -> Any:
    raise Refused("an extension type")


def _within_depth(container: list[Any] | dict[Any, Any], room: int) -> bool:
    """Whether a decoded list or dict nests at most ``room`` containers deep."""
    items = container.values() if type(container) is dict else container
    if _NATIVE.isdisjoint(map(type, items)):
        return True
    return room > 1 and all(
        _within_depth(v, room - 1) for v in items if type(v) is list or type(v) is dict
    )


_NATIVE: Final = frozenset({list, dict})
# Every byte but those that start a msgpack array or map (bytes.translate deletes them).
_NOT_CONTAINER_BYTES: Final = bytes(
    b for b in range(256) if not (0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF)
)


def _unpack_checked(blob: bytes) -> Any:
    """:func:`unpack_checked` for any blob: the one rule, ``pack(value) == blob``."""
    try:
        value = _CHECKED.unpack(blob)
    except Refused:
        raise
    except Exception as exc:  # msgpack raises a wide family; all mean junk
        raise Refused(f"not valid msgpack: {type(exc).__name__}: {exc}") from None
    try:
        again = pack(value)
    except (TypeError, ValueError) as exc:
        raise Refused(f"holds what no value packs to: {exc}") from None
    if again != blob:
        raise Refused("not the canonical packing of its value")
    return value
