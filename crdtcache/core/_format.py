"""THE record format: how a replica's entries look outside memory, and what is valid.

Theory of operation
-------------------
An entry leaves the process in four places: a gossip frame, a snapshot, a row of the
SQLite store and a Redis record. All four carry the same *record*::

    (key, kind, payload, ts, origin, expires)

``kind`` says how to read ``payload``: :data:`PLAIN` (an immutable scalar), :data:`PACKED`
(the packed bytes of any other value), :data:`TOMB` (deleted: no payload),
:data:`STUB` (the stamp is known, the value is not held: no payload) or
:data:`AMENDED` (an :class:`~crdtcache.core._entry.Amended` entry: touched, or a
counter). ``ts`` is a packed HLC stamp (:mod:`~crdtcache.core._hlc`), ``origin`` the
node that wrote it, ``expires`` an absolute expiry in seconds since the epoch or None.

An amended record's payload is ``[inner kind, inner payload, vts, vorigin, born]``:
the value as any record carries it, or with the inner kind :data:`COUNTER` a counter
``[start, xts, xorigin, [[node, up, down], ...]]`` (:mod:`~crdtcache.core._counter`),
then the lineage (``vorigin`` is ``""`` only in the lineage ``(0, "")`` of a counter
started on nothing, which is ``born``). The lineage precedes the record's own stamp,
and a counter's expiry stamp does not follow it.

Every reader of a record validates it here, and only here, so the four agree on what
is acceptable: a record one of them refuses, all refuse (a property test feeds the
same junk to all four). Anything wrong raises :class:`InvalidRecord`, which each
reader translates once into its own error (``ProtocolError`` on the wire,
``CorruptStateError`` for a snapshot or the store, a refused record in Redis). The
rules, each a named limit:

* a key or pattern is a str of at most :data:`MAX_KEY_CHARS` characters;
* a node id (and a cluster name) is a non-empty str of at most
  :data:`MAX_NODE_ID_CHARS` characters;
* a stamp is an int in ``[0, MAX_TS]`` (SQLite stores it as a signed 64-bit INTEGER);
  a mark may also be ``-1`` ("nothing seen");
* an expiry is None or a *finite* number: ``inf`` and ``NaN`` would make every
  computation of a due time fail later, far from where they came in;
* a plain payload is None, bool, float, an int in the 64-bit range, or a str or
  bytes of at most ``max_value_bytes`` (a str counted in UTF-8 bytes);
* a packed payload is the packed bytes of any other value (a list, dict, tuple, set,
  big int, datetime...: see :mod:`~crdtcache.core._packing` for the extension types),
  of at most ``max_value_bytes``, and exactly what packing its value produces
  (:func:`~crdtcache.core._values.unpack_stored`);
* a counter has a 64-bit ``start``, at most :data:`MAX_COUNTER_PARTS` parts in strictly
  ascending node order, and totals in ``[0, MAX_TOTAL]``.

``max_value_bytes`` is a keyword of every reader: the limit of the node that reads
(``Cache(max_value_bytes=...)``, reaching the readers through
``GossipConfig.max_value_bytes``); its default is the option's,
:data:`~crdtcache.core._values.DEFAULT_MAX_VALUE_BYTES`.
"""

from __future__ import annotations

import math
import reprlib
from typing import Any, Final

import msgpack

from crdtcache.core._counter import MAX_TOTAL, Counter, Part
from crdtcache.core._entry import NO_STAMP, NOT_HELD, TOMBSTONE, Amended, Entry, PatternTombstone
from crdtcache.core._hlc import MAX_NODE_ID_CHARS, MAX_TS
from crdtcache.core._values import (
    DEFAULT_MAX_VALUE_BYTES,
    INT_MAX,
    INT_MIN,
    MAX_KEY_CHARS,
    Packed,
    unpack_stored,
    value_bytes,
)

__all__ = [
    "AMENDED",
    "COUNTER",
    "KINDS",
    "MAX_COUNTER_PARTS",
    "MAX_CLUSTER_CHARS",
    "MAX_NODE_ID_CHARS",
    "PACKED",
    "PLAIN",
    "STUB",
    "TOMB",
    "InvalidRecord",
    "blob_stored",
    "check_cluster",
    "check_counter",
    "check_expires",
    "check_key",
    "check_mark",
    "check_marks",
    "check_node",
    "check_pattern_record",
    "check_stored",
    "check_ts",
    "entry_blob",
    "entry_from_blob",
    "entry_from_record",
    "pattern_from_record",
    "record_of",
    "stored_blob",
    "stored_kind",
]

#: Record kinds (the same codes on the wire, in snapshots and in the SQLite store).
PLAIN: Final = 0
PACKED: Final = 1
TOMB: Final = 2
STUB: Final = 3
AMENDED: Final = 4
KINDS: Final = (PLAIN, PACKED, TOMB, STUB, AMENDED)
#: The inner kind of a counter (only ever inside an :data:`AMENDED` payload).
COUNTER: Final = 5
#: Most parts a counter record may list (a local increment stops far earlier:
#: ``MAX_COUNTER_NODES``; merged copies may hold more).
MAX_COUNTER_PARTS: Final = 1 << 16
#: Longest cluster name accepted (options, hello, mDNS).
MAX_CLUSTER_CHARS: Final = MAX_NODE_ID_CHARS

_SCALARS: Final = (type(None), bool, int, float, str, bytes)
# First byte of a msgpack array, map or extension type: a blob starting so holds a
# packed value; a plain scalar's msgpack never starts so.
_PACKED_BYTES: Final = frozenset(
    [*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF, 0xC7, 0xC8, 0xC9, *range(0xD4, 0xD9)]
)


class InvalidRecord(ValueError):
    """A record (or one of its fields) is not one a replica can hold.

    ``problem`` says what is wrong, ``key`` (when known) which record; the reader
    that caught it says where (a frame, a snapshot entry, a store row).
    """

    def __init__(self, problem: str, key: str | None = None) -> None:
        super().__init__(problem if key is None else f"key {key[:80]!r}: {problem}")
        self.problem = problem
        self.key = key


def _shower() -> reprlib.Repr:
    shown = reprlib.Repr()  # (keyword arguments only from Python 3.12)
    shown.maxlevel, shown.maxstring, shown.maxother = 2, 40, 40
    shown.maxlist = shown.maxdict = shown.maxtuple = shown.maxset = 4
    return shown


#: How refusals show a value: a few levels and characters (a hostile one may be huge).
_SHOWN: Final = _shower()


def _show(value: object) -> str:
    text = _SHOWN.repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


# ------------------------------------------------------------------ fields
def check_key(key: object, what: str = "key") -> str:
    """Return ``key`` if it is a str of at most ``MAX_KEY_CHARS``, else raise."""
    if type(key) is not str or len(key) > MAX_KEY_CHARS:
        raise InvalidRecord(f"{what} must be a str of at most {MAX_KEY_CHARS} characters")
    return key


def check_node(node: object, what: str = "node id") -> str:
    """Return ``node`` if it is a valid node id, else raise :class:`InvalidRecord`."""
    if type(node) is not str or not node or len(node) > MAX_NODE_ID_CHARS:
        raise InvalidRecord(
            f"{what} must be a non-empty str of at most {MAX_NODE_ID_CHARS} characters, "
            f"not {_show(node)}"
        )
    return node


def check_cluster(cluster: object) -> str:
    """Return ``cluster`` if it is a valid cluster name, else raise :class:`InvalidRecord`."""
    if type(cluster) is not str or not cluster or len(cluster) > MAX_CLUSTER_CHARS:
        raise InvalidRecord(
            f"cluster must be a non-empty str of at most {MAX_CLUSTER_CHARS} characters"
        )
    return cluster


def check_ts(ts: object) -> int:
    """Return ``ts`` if it is a stamp (an int in ``[0, MAX_TS]``), else raise."""
    if type(ts) is not int or not 0 <= ts <= MAX_TS:
        raise InvalidRecord(f"stamp must be an int in [0, {MAX_TS}], not {_show(ts)}")
    return ts


def check_mark(ts: object) -> int:
    """Return ``ts`` if it is a mark (a stamp, or -1 for none), else raise."""
    if type(ts) is not int or not -1 <= ts <= MAX_TS:
        raise InvalidRecord(f"mark must be a stamp (an int in [-1, {MAX_TS}]), not {_show(ts)}")
    return ts


def check_marks(mapping: object) -> dict[str, int]:
    """Validate an ``origin -> stamp`` map (marks, collected stamps), or raise."""
    if type(mapping) is not dict:
        raise InvalidRecord(f"marks must be a map, not {_show(mapping)}")
    return {check_node(o, "mark origin node id"): check_mark(ts) for o, ts in mapping.items()}


def check_expires(expires: object) -> float | None:
    """Return an absolute expiry (None, or a finite number as float), else raise."""
    if expires is None:
        return None
    if type(expires) is float and math.isfinite(expires):
        return expires
    if type(expires) is int and abs(expires) <= MAX_TS:
        return float(expires)
    raise InvalidRecord(f"expiry must be a finite number or nil, not {_show(expires)}")


def check_stored(
    kind: object, payload: object, *, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
) -> object:
    """The replica's stored value for a record's ``(kind, payload)``, or raise."""
    if kind == PLAIN and type(kind) is int:
        vt = type(payload)
        if vt is str or vt is bytes:
            try:
                size = value_bytes(payload)
            except UnicodeEncodeError:
                raise InvalidRecord("str value is not valid Unicode") from None
            if size > max_value_bytes:
                raise InvalidRecord(
                    f"value of {size} bytes exceeds max_value_bytes ({max_value_bytes})"
                )
        elif vt is int:
            if not INT_MIN <= payload <= INT_MAX:  # type: ignore[operator]  # int checked
                raise InvalidRecord("plain int value does not fit in 64 bits")
        elif vt not in _SCALARS:
            raise InvalidRecord(
                f"plain value of a wrong type: must be a scalar, not {_show(payload)}"
            )
        return payload
    if kind == PACKED and type(kind) is int:
        if type(payload) is not bytes:
            raise InvalidRecord(f"packed value must be bytes, not {_show(payload)}")
        try:
            return unpack_stored(payload, max_value_bytes)
        except ValueError as exc:
            raise InvalidRecord(f"packed value is invalid: {exc}") from None
    if type(kind) is int and kind in (TOMB, STUB):
        if payload is not None:
            raise InvalidRecord("a tombstone or stub carries no value")
        return TOMBSTONE if kind == TOMB else NOT_HELD
    raise InvalidRecord(f"unknown value kind {_show(kind)}")


def stored_kind(value: object) -> int:
    """The record kind of a replica's stored value."""
    if value is TOMBSTONE:
        return TOMB
    if value is NOT_HELD:
        return STUB
    if type(value) is Packed:
        return PACKED
    return PLAIN


# ----------------------------------------------------------------- records
def entry_from_record(
    key: object,
    kind: object,
    payload: object,
    ts: object,
    origin: object,
    expires: object,
    *,
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
) -> tuple[str, Entry]:
    """Validate one record and build its entry, or raise :class:`InvalidRecord`."""
    key = check_key(key)
    try:
        if kind == AMENDED and type(kind) is int:
            entry: Entry = _amended(payload, ts, origin, expires, max_value_bytes)
        else:
            stored = check_stored(kind, payload, max_value_bytes=max_value_bytes)
            entry = Entry(
                stored, check_ts(ts), check_node(origin, "origin node id"), check_expires(expires)
            )
    except InvalidRecord as exc:
        raise InvalidRecord(exc.problem, key) from None
    return key, entry


def check_counter(payload: object) -> Counter:
    """The counter of a ``[start, xts, xorigin, parts]`` payload, or raise."""
    if type(payload) is not list or len(payload) != 4:
        raise InvalidRecord("a counter must be a 4-item list [start, xts, xorigin, parts]")
    start, xts, xorigin, raw_parts = payload
    if type(start) is not int or not INT_MIN <= start <= INT_MAX:
        raise InvalidRecord("a counter's start must be an int of 64 bits")
    if type(raw_parts) is not list or len(raw_parts) > MAX_COUNTER_PARTS:
        raise InvalidRecord(f"a counter's parts must be a list of at most {MAX_COUNTER_PARTS}")
    parts: list[Part] = []
    for raw in raw_parts:
        if type(raw) is not list or len(raw) != 3:
            raise InvalidRecord("a counter part must be a 3-item list [node, up, down]")
        node, up, down = raw
        check_node(node, "counter node id")
        for total in (up, down):
            if type(total) is not int or not 0 <= total <= MAX_TOTAL:
                raise InvalidRecord(f"a counter total must be an int in [0, {MAX_TOTAL}]")
        if parts and parts[-1].node >= node:
            raise InvalidRecord("a counter's parts must be in strictly ascending node order")
        parts.append(Part(node, up, down))
    return Counter(start, tuple(parts), check_ts(xts), check_node(xorigin, "expiry origin"))


def _counter_payload(c: Counter) -> list[Any]:
    return [c.start, c.xts, c.xorigin, [list(p) for p in c.parts]]


def _amended(
    payload: object, ts: object, origin: object, expires: object, max_value_bytes: int
) -> Amended:
    """An amended entry from its payload and record fields (see the module doc), or raise."""
    if type(payload) is not list or len(payload) != 5:
        raise InvalidRecord(
            "an amended value must be a 5-item list [kind, payload, vts, vorigin, born]"
        )
    inner_kind, inner, vts, vorigin, born = payload
    ts, origin = check_ts(ts), check_node(origin, "origin node id")
    if type(born) is not bool:
        raise InvalidRecord("an amended value's born flag must be a bool")
    if (vts, vorigin) == NO_STAMP and type(vts) is int and type(vorigin) is str:
        if not born:
            raise InvalidRecord("only a counter started on nothing has the lineage (0, '')")
    else:
        check_ts(vts)
        check_node(vorigin, "lineage origin node id")
    if (vts, vorigin) >= (ts, origin):
        raise InvalidRecord("an amended value's lineage must precede its stamp")
    stored: object
    if inner_kind == COUNTER and type(inner_kind) is int:
        counter = check_counter(inner)
        if (counter.xts, counter.xorigin) > (ts, origin):
            raise InvalidRecord("a counter's expiry stamp must not follow the record's")
        stored = counter
    elif inner_kind == AMENDED:
        raise InvalidRecord("an amended value cannot hold another")
    else:
        stored = check_stored(inner_kind, inner, max_value_bytes=max_value_bytes)
    return Amended(stored, ts, origin, check_expires(expires), vts, vorigin, born)


def _inner(value: object) -> tuple[int, Any]:
    """The ``(kind, payload)`` a stored value travels as inside an amended record."""
    if value is TOMBSTONE:
        return TOMB, None
    if value is NOT_HELD:
        return STUB, None
    if type(value) is Packed:
        return PACKED, bytes(value)
    if type(value) is Counter:
        return COUNTER, _counter_payload(value)
    return PLAIN, value


def _amended_payload(e: Amended) -> list[Any]:
    kind, payload = _inner(e.value)
    return [kind, payload, e.vts, e.vorigin, e.born]


def entry_from_blob(
    key: object,
    kind: object,
    blob: object,
    ts: object,
    origin: object,
    expires: object,
    *,
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
) -> tuple[str, Entry]:
    """Like :func:`entry_from_record` for a medium that keeps values as bytes.

    ``blob`` is :func:`stored_blob`'s bytes for a held value and None for a tombstone
    or stub; :func:`entry_blob` says what an amended entry's are. ``kind`` is the
    record kind where the medium keeps it (SQLite), or None where it does not (Redis:
    no blob means a tombstone; Redis keeps no amended entries).
    """
    key = check_key(key)
    try:
        if type(kind) is int and (kind == AMENDED or (kind == STUB and blob is not None)):
            return key, _amended_blob(kind, blob, ts, origin, expires, max_value_bytes)
        if kind is None and blob is None:
            stored: object = TOMBSTONE
        elif type(kind) is int and kind in (TOMB, STUB):
            stored = check_stored(kind, blob)
        else:
            stored = blob_stored(blob, kind, max_value_bytes=max_value_bytes)
        entry = Entry(
            stored, check_ts(ts), check_node(origin, "origin node id"), check_expires(expires)
        )
    except InvalidRecord as exc:
        raise InvalidRecord(exc.problem, key) from None
    return key, entry


def record_of(key: str, e: Entry) -> list[Any]:
    """The record of one entry: ``[key, kind, payload, ts, origin, expires]``."""
    if type(e) is Amended:
        return [key, AMENDED, _amended_payload(e), e.ts, e.origin, e.expires]
    v = e.value
    if v is TOMBSTONE:
        return [key, TOMB, None, e.ts, e.origin, e.expires]
    if v is NOT_HELD:
        return [key, STUB, None, e.ts, e.origin, e.expires]
    if type(v) is Packed:
        return [key, PACKED, bytes(v), e.ts, e.origin, e.expires]
    return [key, PLAIN, v, e.ts, e.origin, e.expires]


def pattern_from_record(pattern: object, ts: object, origin: object) -> PatternTombstone:
    """Validate one pattern tombstone ``[pattern, ts, origin]`` and build it, or raise."""
    if not check_key(pattern, "pattern"):
        raise InvalidRecord("a pattern must not be empty")
    return PatternTombstone(pattern, check_ts(ts), check_node(origin, "pattern origin node id"))  # type: ignore[arg-type]  # a str: checked above


def check_pattern_record(raw: object) -> PatternTombstone:
    """A pattern tombstone from its 3-item list form, or raise :class:`InvalidRecord`."""
    if type(raw) is not list or len(raw) != 3:
        raise InvalidRecord("a pattern tombstone must be a 3-item list [pattern, ts, origin]")
    return pattern_from_record(*raw)


def _amended_blob(
    kind: int, blob: object, ts: object, origin: object, expires: object, max_value_bytes: int
) -> Amended:
    """An amended entry kept as bytes (see :func:`entry_blob`), or raise."""
    if type(blob) is not bytes:
        raise InvalidRecord(f"an amended value must be a blob, not {_show(blob)}")
    try:
        payload = msgpack.unpackb(
            blob,
            raw=False,
            strict_map_key=True,
            max_str_len=max_value_bytes,
            max_bin_len=max_value_bytes,
            max_array_len=MAX_COUNTER_PARTS,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises a wide family; all mean junk
        raise InvalidRecord(f"amended value is not msgpack ({exc})") from None
    if kind == STUB:
        if type(payload) is not list or len(payload) != 3:
            raise InvalidRecord("an amended stub must be a 3-item list [vts, vorigin, born]")
        payload = [STUB, None, *payload]
    return _amended(payload, ts, origin, expires, max_value_bytes)


def entry_blob(e: Entry) -> tuple[int, bytes | None]:
    """``(kind, blob)``: how a medium that keeps values as bytes (SQLite) keeps ``e``.

    Plain and packed values are :func:`stored_blob`'s bytes, tombstones and stubs have
    none. An amended entry is kind :data:`AMENDED` with its payload as msgpack, or, as
    a stub, kind :data:`STUB` with its lineage ``[vts, vorigin, born]`` as msgpack: a
    stub of either shape is then recognised by its kind alone (the store keeps the
    value a stub of the same write would replace).
    """
    if type(e) is Amended:
        if e.value is NOT_HELD:
            return STUB, msgpack.packb([e.vts, e.vorigin, e.born], use_bin_type=True)
        return AMENDED, msgpack.packb(_amended_payload(e), use_bin_type=True)
    kind = stored_kind(e.value)
    return kind, stored_blob(e.value) if kind <= PACKED else None


# ------------------------------------------------------------------- blobs
# Where a medium keeps a value as bytes (SQLite, Redis), a scalar goes through msgpack so
# that bool stays bool and every int of the range fits; a packed value is its bytes.
def stored_blob(stored: object) -> bytes:
    """The bytes a held value is kept as where values are bytes (SQLite, Redis)."""
    if type(stored) is Packed:
        return bytes(stored)
    blob: bytes = msgpack.packb(stored, use_bin_type=True)
    return blob


def blob_stored(
    blob: object, kind: object = None, *, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
) -> object:
    """The stored value kept as ``blob`` (see :func:`stored_blob`), or raise.

    ``kind`` is checked against the blob when the medium records it (SQLite); without
    it (Redis) the blob's first byte tells a packed value from a plain scalar.
    """
    if type(blob) is not bytes or not blob:
        raise InvalidRecord(f"value must be a non-empty blob, not {_show(blob)}")
    packed = blob[0] in _PACKED_BYTES
    if kind is not None and kind != (PACKED if packed else PLAIN):
        if kind == PLAIN and type(kind) is int:
            raise InvalidRecord("plain value is not a msgpack scalar (a packed value)")
        if kind == PACKED and type(kind) is int:
            raise InvalidRecord("packed value is invalid: not a msgpack array, map or ext")
        raise InvalidRecord(f"unknown value kind {_show(kind)}")
    if packed:
        return check_stored(PACKED, blob, max_value_bytes=max_value_bytes)
    try:
        value = msgpack.unpackb(
            blob,
            raw=False,
            strict_map_key=True,
            max_str_len=max_value_bytes,
            max_bin_len=max_value_bytes,
            max_array_len=0,  # a plain value is a scalar: no container at all
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises a wide family; all mean junk
        raise InvalidRecord(f"value is not a msgpack scalar ({exc})") from None
    return check_stored(PLAIN, value, max_value_bytes=max_value_bytes)
