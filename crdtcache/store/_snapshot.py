"""Snapshots: a replica's state as one self-checking byte string, and restore as a merge.

Theory of operation
-------------------
A snapshot is one msgpack array ``[MAGIC, version, digest, body]``. ``body`` is itself
msgpack bytes and ``digest`` is its BLAKE2b-256, so damage anywhere in the body is
caught before the body is even parsed. The checksum detects corruption, not tampering:
a snapshot from an untrusted place still goes through every check below.

The body is a map::

    {"node": str, "created": float, "clock": int,
     "entries": [[key, kind, value, ts, origin, expires], ...],
     "patterns": [[pattern, ts, origin], ...],
     "marks": {origin: ts}, "collected": {origin: ts}}

Entries use the wire format's layout and ``kind`` codes (0 plain scalar, 1 packed
value, 2 tombstone, 3 stub). Decoding is bounded (every length capped, ext types
refused, ``strict_map_key``, never pickle) and then every field is checked for shape,
type and limit (``MAX_KEY_CHARS``, the reader's ``max_value_bytes``, packed values
through :func:`~crdtcache.core.unpack_stored`) *before* anything is applied: a bad snapshot
raises :class:`~crdtcache.CorruptStateError` and changes nothing.

Decisions, and why:

* **Restore is a CRDT merge.** Pattern tombstones are merged first, then entries, each
  through :meth:`Replica.merge_entry` / :meth:`Replica.merge_pattern`: an old snapshot
  never overwrites a newer value, restoring twice changes nothing the second time, and
  the visible changes are returned. Every stamp is checked against ``max_drift`` before
  the first merge, so a snapshot from a clock too far ahead is refused whole
  (:class:`~crdtcache.ClockDriftError`) rather than half applied.
* **The clock observes the snapshot's highest stamp** (``clock``), so a node restored
  from its own backup never issues a stamp lower than one it issued before the backup,
  even for writes whose tombstones were collected since.
* **Marks and collected are recorded but not adopted.** A mark claims coverage ("I hold
  every write of origin *o* up to *S*, or what beat it"). Adopting the snapshot's marks
  would be sound only if the snapshot is an honest, complete state of this cluster,
  which restore cannot verify (a snapshot of another cluster, an edited file, a node id
  reused). A false mark is never repaired: this node would stop asking for those
  writes, and peers adopt its marks after an exchange, so the claim would spread.
  Not adopting costs one anti-entropy exchange that resends what the snapshot already
  brought (bounded by the snapshot's size). ``collected`` only has a meaning together
  with the marks, so it is not adopted either. The node's own mark is no exception:
  its own writes are covered by its clock (above), not by its mark.
* **Stubs are kept.** An entry whose value this node did not hold (``NOT_HELD``) is
  saved as a stub: its stamp still says a write happened, and dropping it would let an
  older value of the key win on restore. A restored stub reads as a miss and is fetched
  from a peer, like any evicted key.
* **Expired values are saved as tombstones** (stamp and expiry kept, value dropped),
  exactly what :meth:`Replica.collect` would turn them into: they read as absent
  either way and need not take space.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import msgpack

from crdtcache._errors import CorruptStateError, PersistenceError, SerializationError
from crdtcache.core import (
    DEFAULT_MAX_VALUE_BYTES,
    MAX_KEY_CHARS,
    MAX_NODE_ID_CHARS,
    TOMBSTONE,
    Change,
    Entry,
    PatternTombstone,
    Replica,
)
from crdtcache.core._entry import with_value
from crdtcache.core._format import (
    InvalidRecord,
    check_marks,
    check_node,
    check_pattern_record,
    check_ts,
    entry_from_record,
    record_of,
)

__all__ = [
    "MAX_SNAPSHOT_BYTES",
    "SNAPSHOT_MAGIC",
    "SNAPSHOT_VERSION",
    "Snapshot",
    "apply_snapshot",
    "decode_snapshot",
    "encode_snapshot",
    "load_snapshot_file",
    "restore_snapshot",
    "save_snapshot_file",
]

#: First element of every snapshot: identifies the format before anything is parsed.
SNAPSHOT_MAGIC: Final = "crdtcache-snapshot"
#: Version of the snapshot layout this module writes and reads.
SNAPSHOT_VERSION: Final = 1
#: Largest snapshot accepted by default, in bytes (decode, encode and file load).
MAX_SNAPSHOT_BYTES: Final = 1 << 30
_DIGEST_BYTES: Final = 32
# msgpack of a 4-item array followed by the magic str: checked on the raw bytes, so
# a file of another kind is named as such before any parsing.
_PREFIX: Final = b"\x94" + msgpack.packb(SNAPSHOT_MAGIC)
#: What a snapshot may be given as.
BytesLike = bytes | bytearray | memoryview
#: Items in the largest record (an entry); longer arrays are read by their header.
_MAX_RECORD_ITEMS: Final = 6
_BODY_KEYS: Final = frozenset(
    ("node", "created", "clock", "entries", "patterns", "marks", "collected")
)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A decoded, fully validated snapshot (what :func:`decode_snapshot` returns).

    ``node`` made it at ``created`` (seconds since the epoch) with its clock at
    ``clock_ts``. ``marks`` and ``collected`` are that node's, for inspection: restore
    does not adopt them (see the module doc).
    """

    node: str
    created: float
    clock_ts: int
    entries: tuple[tuple[str, Entry], ...]
    patterns: tuple[PatternTombstone, ...]
    marks: Mapping[str, int]
    collected: Mapping[str, int]


# ----------------------------------------------------------------- validation
def fail(where: str, problem: str) -> NoReturn:
    """Raise :class:`CorruptStateError` for ``problem`` found in ``where``.

    Persisted records are validated by :mod:`crdtcache.core._format` (the same rules as
    the wire and Redis); this is where its verdict becomes the store layer's error.
    """
    raise CorruptStateError(f"{where}: {problem}")


def _refuse_ext(code: int, data: bytes) -> NoReturn:
    raise ValueError(f"msgpack ext type {code} refused")


# ------------------------------------------------------------------- encoding
def encode_snapshot(replica: Replica, now: float, *, max_bytes: int = MAX_SNAPSHOT_BYTES) -> bytes:
    """Encode ``replica``'s whole state as a snapshot (see the module doc).

    ``now`` is recorded as the creation time and decides which values have expired
    (those are saved as tombstones). Raises :class:`SerializationError` if the result
    would exceed ``max_bytes``, or if the node id is longer than
    :data:`MAX_NODE_ID_CHARS`, since :func:`decode_snapshot` would refuse either.
    """
    if len(replica.node) > MAX_NODE_ID_CHARS:
        raise SerializationError(
            f"node id of {len(replica.node)} characters exceeds {MAX_NODE_ID_CHARS}"
        )
    entries: list[list[Any]] = []
    for key, e in replica.entries.items():
        if e.value is not TOMBSTONE and e.expires is not None and e.expires <= now:
            e = with_value(e, TOMBSTONE)  # its lineage kept: see core._replica
        entries.append(record_of(key, e))
    body = {
        "node": replica.node,
        "created": float(now),
        "clock": replica.clock.last_ts,
        "entries": entries,
        "patterns": [[p.pattern, p.ts, p.origin] for p in replica.patterns.values()],
        "marks": dict(replica.marks),
        "collected": dict(replica.collected),
    }
    raw: bytes = msgpack.packb(body, use_bin_type=True)
    digest = hashlib.blake2b(raw, digest_size=_DIGEST_BYTES).digest()
    data: bytes = msgpack.packb([SNAPSHOT_MAGIC, SNAPSHOT_VERSION, digest, raw], use_bin_type=True)
    if len(data) > max_bytes:
        raise SerializationError(
            f"snapshot of {len(data)} bytes exceeds max_bytes ({max_bytes}); "
            "raise the limit on both snapshot and restore"
        )
    return data


# ------------------------------------------------------------------- decoding
def decode_snapshot(
    data: BytesLike,
    *,
    max_bytes: int = MAX_SNAPSHOT_BYTES,
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
) -> Snapshot:
    """Parse and validate a snapshot without applying it.

    ``max_value_bytes`` is the reading node's limit (larger values are refused).
    Raises :class:`CorruptStateError` naming the problem (wrong magic or version,
    checksum mismatch, truncation, a field of the wrong shape, type or size), or
    :class:`SerializationError` if ``data`` is not bytes.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SerializationError(f"a snapshot is bytes, not {type(data).__name__}")
    data = bytes(data)  # one copy, so a caller's bytearray cannot change under us
    where = "snapshot"
    if len(data) > max_bytes:
        fail(where, f"{len(data)} bytes exceeds max_bytes ({max_bytes})")
    if not data.startswith(_PREFIX):
        fail(where, "not a crdtcache snapshot (wrong magic)")
    try:
        outer = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=len(SNAPSHOT_MAGIC),
            max_bin_len=len(data),
            max_array_len=4,
            max_map_len=0,
            max_ext_len=0,
            ext_hook=_refuse_ext,
        )
    except Exception as exc:  # msgpack raises a wide family; all mean damaged bytes
        fail(where, f"truncated or malformed ({exc})")
    if type(outer) is not list or len(outer) != 4:
        fail(where, "header must be a 4-item array")
    _, version, digest, raw = outer
    if type(version) is not int or version != SNAPSHOT_VERSION:
        fail(
            where,
            f"format version {version!r:.40} is not supported "
            f"(this crdtcache reads version {SNAPSHOT_VERSION})",
        )
    if type(digest) is not bytes or type(raw) is not bytes:
        fail(where, "checksum and body must be bytes")
    expected = hashlib.blake2b(raw, digest_size=_DIGEST_BYTES).digest()
    if not hmac.compare_digest(digest, expected):
        fail(where, "checksum mismatch: the snapshot was damaged")
    return _read_body(raw, where, max_value_bytes)


def _read_body(raw: bytes, where: str, max_value_bytes: int) -> Snapshot:
    """Parse and validate the body as a stream, one record at a time.

    Memory stays proportional to what is valid so far: a hostile body (millions of
    nested empty arrays, a huge map) is refused at its first bad item instead of
    first being built whole, as one ``unpackb`` of the body would.
    """
    unpacker = msgpack.Unpacker(
        raw=False,
        strict_map_key=True,
        max_buffer_size=max(len(raw), 1),
        # Coarse bounds on memory; the record format checks each value exactly.
        max_str_len=4 * max(max_value_bytes, MAX_KEY_CHARS),
        max_bin_len=max_value_bytes,
        max_array_len=_MAX_RECORD_ITEMS,  # a record; the long arrays are read by header
        max_map_len=0,  # the maps (body, marks) are read by header too
        max_ext_len=0,
        ext_hook=_refuse_ext,
    )
    unpacker.feed(raw)
    try:
        fields = _read_fields(unpacker, where, max_value_bytes)
        try:
            unpacker.unpack()
        except msgpack.OutOfData:
            pass
        else:
            fail(where, "trailing data after the body")
    except CorruptStateError:
        raise
    except Exception as exc:  # msgpack raises a wide family; all mean damaged bytes
        fail(where, f"body is malformed ({type(exc).__name__}: {exc})")
    return _body(fields, where)


def _read_fields(unpacker: msgpack.Unpacker, where: str, max_value_bytes: int) -> dict[str, Any]:
    """The body's fields, each record validated as soon as it is read."""
    keys = f"body must be a map with exactly the keys {sorted(_BODY_KEYS)}"
    count = _header(unpacker.read_map_header, where, keys)
    fields: dict[str, Any] = {}
    for _ in range(count):
        name = unpacker.unpack()
        if name not in _BODY_KEYS or name in fields:
            fail(where, keys)
        if name == "entries":
            fields[name] = _read_entries(unpacker, where, max_value_bytes)
        elif name == "patterns":
            fields[name] = _read_patterns(unpacker, where)
        elif name in ("marks", "collected"):
            pairs = {}
            for _ in range(_header(unpacker.read_map_header, where, f"{name} must be a map")):
                origin = unpacker.unpack()
                pairs[origin] = unpacker.unpack()
            try:
                fields[name] = check_marks(pairs)
            except InvalidRecord as exc:
                fail(where, str(exc))
        else:
            fields[name] = unpacker.unpack()
    if set(fields) != _BODY_KEYS:
        fail(where, keys)
    return fields


def _header(read: Callable[[], int], where: str, problem: str) -> int:
    """The length of the array or map that must come next, or CorruptStateError."""
    try:
        return read()
    except ValueError:  # msgpack: "Unexpected type header on stream"
        fail(where, problem)


def _record(unpacker: msgpack.Unpacker, where: str, shape: str) -> Any:
    """The next record (a short array); anything larger or of another type is refused."""
    try:
        return unpacker.unpack()
    except ValueError as exc:
        # A nested array or a map where a record stands: the record's shape is wrong.
        if "max_array_len" in str(exc) or "max_map_len" in str(exc):
            fail(where, f"must be a {shape}")
        raise


def _read_entries(unpacker: msgpack.Unpacker, where: str, max_value_bytes: int) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    shape = "6-item array [key, kind, value, ts, origin, expires]"
    for i in range(_header(unpacker.read_array_header, where, "entries must be an array")):
        item = _record(unpacker, f"{where} entry {i}", shape)
        try:
            if type(item) is not list or len(item) != 6:
                raise InvalidRecord(
                    "must be a 6-item array [key, kind, value, ts, origin, expires]"
                )
            key, entry = entry_from_record(*item, max_value_bytes=max_value_bytes)
            if key in entries:
                raise InvalidRecord(f"key {key!r} appears twice")
        except InvalidRecord as exc:
            fail(f"{where} entry {i}", str(exc))
        entries[key] = entry
    return entries


def _read_patterns(unpacker: msgpack.Unpacker, where: str) -> dict[str, PatternTombstone]:
    patterns: dict[str, PatternTombstone] = {}
    shape = "3-item array [pattern, ts, origin]"
    for i in range(_header(unpacker.read_array_header, where, "patterns must be an array")):
        item = _record(unpacker, f"{where} pattern {i}", shape)
        try:
            tomb = check_pattern_record(item)
            if tomb.pattern in patterns:
                raise InvalidRecord(f"pattern {tomb.pattern!r} appears twice")
        except InvalidRecord as exc:
            fail(f"{where} pattern {i}", str(exc))
        patterns[tomb.pattern] = tomb
    return patterns


def _body(fields: dict[str, Any], where: str) -> Snapshot:
    created = fields["created"]
    if type(created) not in (int, float) or not math.isfinite(created):
        fail(where, "created must be a finite number")
    try:
        node = check_node(fields["node"])
        clock_ts = check_ts(fields["clock"])
    except InvalidRecord as exc:
        fail(where, str(exc))
    return Snapshot(
        node=node,
        created=float(created),
        clock_ts=clock_ts,
        entries=tuple(fields["entries"].items()),
        patterns=tuple(fields["patterns"].values()),
        marks=fields["marks"],
        collected=fields["collected"],
    )


# -------------------------------------------------------------------- restore
def apply_snapshot(replica: Replica, snapshot: Snapshot, now: float) -> list[Change]:
    """Merge a decoded snapshot into ``replica``; return the visible changes.

    Raises :class:`~crdtcache.ClockDriftError` (nothing changed) if any stamp in it is
    further ahead of ``now`` than the replica's clock allows. A ``conflict_resolver``
    that raises stops the merge where it is: what was merged before stays, which is
    still a valid state (every step is a join).
    """
    newest = max(
        [snapshot.clock_ts]
        + [e.ts for _, e in snapshot.entries]
        + [p.ts for p in snapshot.patterns]
    )
    # Checking the greatest stamp is checking them all; doing it first keeps restore
    # all-or-nothing, where merging one by one would stop half way. Observing it (and
    # the snapshot's clock) once then lets every entry skip its own drift check.
    replica.clock.check(newest, now)
    replica.clock.observe(newest, now)
    changes: list[Change] = []
    # Patterns first: entries they cover are then refused on arrival, not added and
    # removed again.
    for tomb in snapshot.patterns:
        changes += replica.merge_pattern(tomb, now)
    for key, entry in snapshot.entries:
        change = replica.merge_entry(key, entry, now, observed=True)
        if change is not None:
            changes.append(change)
    return changes


def restore_snapshot(
    replica: Replica,
    data: BytesLike,
    now: float,
    *,
    max_bytes: int = MAX_SNAPSHOT_BYTES,
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
) -> list[Change]:
    """Validate ``data`` completely, then merge it into ``replica`` (see the module doc).

    Returns the visible changes. Raises :class:`CorruptStateError` or
    :class:`SerializationError` for bad bytes and :class:`~crdtcache.ClockDriftError`
    for stamps too far ahead; in every case the replica is unchanged.
    """
    snapshot = decode_snapshot(data, max_bytes=max_bytes, max_value_bytes=max_value_bytes)
    return apply_snapshot(replica, snapshot, now)


# ---------------------------------------------------------------------- files
def save_snapshot_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a reader sees the old file or the new one.

    The bytes go to a temporary file in the same directory, which is fsynced and then
    renamed over ``path``; the directory is fsynced so the rename survives a power
    cut. The file is created readable by its owner only (snapshots hold cache data).
    Raises :class:`PersistenceError` naming the path on any OS error.
    """
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(
            dir=folder, prefix=f".{os.path.basename(target)}.", suffix=".tmp"
        )
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        tmp = None
        _fsync_dir(folder)
    except OSError as exc:
        raise PersistenceError(f"cannot write snapshot {target!r}: {exc}") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _fsync_dir(folder: str) -> None:
    # Not every platform can open a directory (Windows cannot); there the rename is
    # as durable as the OS makes it.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_snapshot_file(
    path: str | os.PathLike[str], *, max_bytes: int = MAX_SNAPSHOT_BYTES
) -> bytes:
    """Read a snapshot file written by :func:`save_snapshot_file` (not yet validated).

    Raises :class:`PersistenceError` if it cannot be read and
    :class:`CorruptStateError` if it is larger than ``max_bytes`` (checked before
    reading, so a huge file is not loaded into memory).
    """
    target = os.fspath(path)
    try:
        with open(target, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                fail(f"snapshot file {target!r}", f"{size} bytes exceeds max_bytes ({max_bytes})")
            return f.read(max_bytes + 1)
    except OSError as exc:
        raise PersistenceError(f"cannot read snapshot {target!r}: {exc}") from exc
