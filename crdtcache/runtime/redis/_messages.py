"""What redis mode keeps in Redis and sends through it: key layout, records, messages.

No IO here: bytes and values in, bytes and values out.

*Key layout* (``C`` is the ``cluster`` option; the braces make it a Redis Cluster hash
tag, so every key of one cluster hashes to one slot and multi-key scripts are legal):

==============================  ======  =============================================
``crdtcache:{C}:k:<key>``       hash    ``s`` stamp text, ``v`` value (msgpack; absent
                                        in a tombstone), ``x`` expiry (seconds since the
                                        epoch, absent: none); PEXPIREAT as below
``crdtcache:{C}:patterns``      hash    ``p:<glob>`` stamp of the newest pattern
                                        tombstone of the glob, ``c:<glob>`` stamp its
                                        records were deleted up to, ``""`` the newest
                                        pattern stamp of all, ``#`` a version raised by
                                        every tombstone recorded
``crdtcache:{C}:i:<node>``      string  heartbeat of an instance (PX ``heartbeat_ttl``)
``crdtcache:{C}:instances``     zset    node id -> heartbeat expiry (server ms): lists
                                        instances without SCAN
``crdtcache:{C}:size``          string  cached count of live records (PX 5 s)
``crdtcache:{C}:lock:cleanup``  string  who resumes an abandoned pattern cleanup
channel ``crdtcache:{C}:inv``           every write's invalidation, joins and leaves
channel ``crdtcache:{C}:ack:<node>``    acknowledgements of ``node``'s write-through
==============================  ======  =============================================

A *stamp text* is the HLC ``ts`` in 16 hex digits followed by the origin node id; it
sorts like the stamp (see :mod:`crdtcache.runtime.redis._scripts`). A record's fields
are checked by the one record format, :mod:`crdtcache.core._format`, after the
stamp and expiry texts are parsed here. A value record with a TTL expires in Redis
:data:`EXPIRED_GRACE` seconds after its expiry (readers treat it as absent from the
expiry on); a tombstone ``TOMBSTONE_GRACE`` seconds after its stamp; a value
without a TTL never does. :class:`ScriptCalls` builds each script's KEYS and ARGV.

*Channel messages* are msgpack arrays ``[kind, sender, ...]``:

* ``[1, sender, ack, [[key, ts, origin, expires, deleted, value | nil], ...]]`` the
  writes one WRITE script applied (the script assembles it from a head and one part
  per applied write);
* ``[2, sender, ack, glob, ts, origin, version]`` a pattern tombstone (the PATTERN
  script appends the version);
* ``[3, sender]`` join, ``[4, sender]`` leave;
* on an ``ack`` channel: ``[sender, [ack id, ...]]``.

Decoding checks the shape and every record field; anything else raises
:class:`InvalidMessage` (remote junk: the receiver counts and drops it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import msgpack

from crdtcache.core import (
    DEFAULT_MAX_VALUE_BYTES,
    MAX_KEY_CHARS,
    TOMBSTONE,
    Entry,
    PatternTombstone,
    Replica,
)
from crdtcache.core._format import (
    InvalidRecord,
    check_expires,
    check_key,
    check_node,
    check_ts,
    entry_from_blob,
    pattern_from_record,
    stored_blob,
)
from crdtcache.core._replica import collect_due_ms, collection_horizon
from crdtcache.runtime.redis._scripts import HEARTBEAT, PATTERN, WRITE, Script

__all__ = [
    "EXPIRED_GRACE",
    "MAX_BATCH",
    "MAX_INLINE_BATCH_BYTES",
    "MAX_INLINE_VALUE_BYTES",
    "MAX_MESSAGE_BYTES",
    "MSG_JOIN",
    "MSG_LEAVE",
    "MSG_PATTERN",
    "MSG_WRITES",
    "Acks",
    "AnnouncedWrite",
    "Call",
    "InvalidMessage",
    "Join",
    "KeyLayout",
    "Leave",
    "Message",
    "PatternRecorded",
    "PatternsHash",
    "ScriptCalls",
    "Writes",
    "decode_acks",
    "decode_message",
    "describe_instance",
    "encode_acks",
    "encode_join",
    "encode_leave",
    "instance_info",
    "parse_expiry",
    "parse_patterns",
    "parse_stamp",
    "pack_writes",
    "pattern_head",
    "record_entry",
    "sent_by",
    "stamp_text",
    "write_part",
    "writes_head",
]

#: Message kinds on the invalidation channel (module doc).
MSG_WRITES: Final = 1
MSG_PATTERN: Final = 2
MSG_JOIN: Final = 3
MSG_LEAVE: Final = 4
#: Writes per batch (one WRITE script, one invalidation message).
MAX_BATCH: Final = 512
#: Invalidations carry a value itself up to this size (write-behind, write-through),
#: and up to MAX_INLINE_BATCH_BYTES of values per message.
MAX_INLINE_VALUE_BYTES: Final = 16 * 1024
MAX_INLINE_BATCH_BYTES: Final = 64 * 1024
#: Seconds a value record with a TTL stays in Redis after its expiry, so that a write
#: with an older stamp arriving late (a delayed batch, a lagging clock) still loses.
EXPIRED_GRACE: Final = 60.0
#: Largest message accepted from a channel.
MAX_MESSAGE_BYTES: Final = MAX_BATCH * (4 * MAX_KEY_CHARS + 64) + MAX_INLINE_BATCH_BYTES + 4096


class InvalidMessage(ValueError):
    """A channel message that is not one an instance sends (remote junk)."""


# ------------------------------------------------------------------ layout
@dataclass(frozen=True, slots=True)
class KeyLayout:
    """The Redis key and channel names of one cluster, as seen by instance ``node``."""

    prefix: bytes
    records: bytes
    patterns: bytes
    instances: bytes
    instance: bytes
    size: bytes
    lock: bytes
    inv_channel: bytes
    ack_channel: bytes

    @classmethod
    def of(cls, cluster: str, node: str) -> KeyLayout:
        """The layout of ``cluster`` (module doc) for instance ``node``."""
        prefix = f"crdtcache:{{{cluster}}}:".encode()
        return cls(
            prefix=prefix,
            records=prefix + b"k:",
            patterns=prefix + b"patterns",
            instances=prefix + b"instances",
            instance=prefix + b"i:" + node.encode(),
            size=prefix + b"size",
            lock=prefix + b"lock:cleanup",
            inv_channel=prefix + b"inv",
            ack_channel=prefix + b"ack:" + node.encode(),
        )

    def record(self, key: str) -> bytes:
        """The name of ``key``'s record."""
        return self.records + key.encode("utf-8", "surrogatepass")

    def key_of(self, name: bytes) -> str | None:
        """The cache key of a record name (None: not one this cache could have written)."""
        try:
            return name[len(self.records) :].decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return None

    def instance_of(self, node: str) -> bytes:
        """The heartbeat key of instance ``node``."""
        return self.prefix + b"i:" + node.encode()

    def acks_to(self, writer: str) -> bytes:
        """The channel ``writer`` hears its acknowledgements on."""
        return self.prefix + b"ack:" + writer.encode()


# ----------------------------------------------------------------- records
def stamp_text(ts: int, origin: str) -> str:
    """A stamp as stored in Redis: 16 hex digits of ``ts``, then the origin."""
    return f"{ts:016x}{origin}"


def parse_stamp(raw: object) -> tuple[int, str]:
    """``(ts, origin)`` from a stamp text read from Redis; raises :class:`InvalidRecord`."""
    if type(raw) is bytes:
        try:
            raw = raw.decode()
        except UnicodeDecodeError:
            raise InvalidRecord("stamp is not UTF-8") from None
    if type(raw) is not str or len(raw) < 17:
        raise InvalidRecord(f"not a stamp: {raw!r:.60}")
    try:
        ts = int(raw[:16], 16)
    except ValueError:
        raise InvalidRecord(f"not a stamp: {raw!r:.60}") from None
    return check_ts(ts), check_node(raw[16:])


def parse_expiry(raw: object) -> float | None:
    """An expiry text read from Redis as a number; raises :class:`InvalidRecord`."""
    if raw is None:
        return None
    try:
        expires = float(raw)  # type: ignore[arg-type]  # bytes or str from Redis
    except (TypeError, ValueError):
        raise InvalidRecord(f"expiry is not a number: {raw!r:.40}") from None
    return check_expires(expires)


def record_entry(
    key: str,
    stamp: object,
    blob: object,
    expires: object,
    *,
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
) -> Entry:
    """The entry of a Redis record's fields (``s``, ``v``, ``x``); raises :class:`InvalidRecord`.

    The stamp and expiry are kept as text in Redis; once parsed, the record is
    validated by the one record format (:mod:`crdtcache.core._format`), with the
    reading instance's ``max_value_bytes``.
    """
    ts, origin = parse_stamp(stamp)
    return entry_from_blob(
        key, None, blob, ts, origin, parse_expiry(expires), max_value_bytes=max_value_bytes
    )[1]


# ---------------------------------------------------------------- messages
#: One write of a writes message: ``(key, ts, origin, expires, deleted, value blob)``.
AnnouncedWrite: TypeAlias = tuple[str, int, str, float | None, bool, bytes | None]


@dataclass(frozen=True, slots=True)
class Writes:
    """Writes one WRITE script applied; ``ack`` is the writer's ack id (0: none)."""

    sender: str
    ack: int
    writes: tuple[AnnouncedWrite, ...]


@dataclass(frozen=True, slots=True)
class PatternRecorded:
    """A pattern tombstone recorded in Redis, and the patterns' version it raised."""

    sender: str
    ack: int
    tomb: PatternTombstone
    version: int


@dataclass(frozen=True, slots=True)
class Join:
    """An instance subscribed and serves from now on."""

    sender: str


@dataclass(frozen=True, slots=True)
class Leave:
    """An instance stopped cleanly."""

    sender: str


@dataclass(frozen=True, slots=True)
class Acks:
    """``sender`` applied the writes announced with these ack ids."""

    sender: str
    ids: tuple[int, ...]


Message: TypeAlias = Writes | PatternRecorded | Join | Leave


def _refuse_ext(code: int, data: bytes) -> Any:
    raise InvalidMessage(f"msgpack ext type {code} refused")


def _unpack(data: object) -> Any:
    if type(data) is not bytes or len(data) > MAX_MESSAGE_BYTES:
        raise InvalidMessage("not a message of an acceptable size")
    try:
        return msgpack.unpackb(
            data, raw=False, use_list=False, strict_map_key=True, ext_hook=_refuse_ext
        )
    except InvalidMessage:
        raise
    except Exception as exc:  # msgpack raises a wide family; all mean junk
        raise InvalidMessage(f"not msgpack: {exc}") from None


def _write(item: object) -> AnnouncedWrite:
    if type(item) is not tuple or len(item) != 6:
        raise InvalidMessage("malformed write in a writes message")
    key, ts, origin, expires, deleted, blob = item
    if type(deleted) is not bool or (blob is not None and (deleted or type(blob) is not bytes)):
        raise InvalidMessage("malformed write in a writes message")
    # The fields every record has: the one record format's checks.
    return (
        check_key(key),
        check_ts(ts),
        check_node(origin, "origin node id"),
        check_expires(expires),
        deleted,
        blob,
    )


def _decode(msg: Any) -> Message:
    if type(msg) is not tuple or len(msg) < 2 or type(msg[0]) is not int:
        raise InvalidMessage("not a message")
    kind, sender = msg[0], check_node(msg[1], "sender node id")
    if kind == MSG_WRITES and len(msg) == 4:
        ack, writes = msg[2], msg[3]
        if type(ack) is not int or type(writes) is not tuple:
            raise InvalidMessage("malformed writes message")
        return Writes(sender, ack, tuple(_write(item) for item in writes))
    if kind == MSG_PATTERN and len(msg) == 7:
        ack, version = msg[2], msg[6]
        if type(ack) is not int or type(version) is not int:
            raise InvalidMessage("malformed pattern message")
        return PatternRecorded(sender, ack, pattern_from_record(*msg[3:6]), version)
    if kind == MSG_JOIN and len(msg) == 2:
        return Join(sender)
    if kind == MSG_LEAVE and len(msg) == 2:
        return Leave(sender)
    raise InvalidMessage(f"unknown message kind {kind} or wrong length {len(msg)}")


def sent_by(data: object, sender: bytes) -> bool:
    """Whether channel message ``data`` names the msgpack-packed ``sender`` as its
    sender (its second item), read without decoding the rest: an instance skips its
    own announcements, the largest messages it receives, at no cost."""
    return type(data) is bytes and data[2 : 2 + len(sender)] == sender and 0x92 <= data[0] <= 0x97


def decode_message(data: object) -> Message:
    """Decode and check one invalidation-channel message; raises :class:`InvalidMessage`."""
    msg = _unpack(data)
    try:
        return _decode(msg)
    except InvalidRecord as exc:
        raise InvalidMessage(str(exc)) from None


def decode_acks(data: object) -> Acks:
    """Decode and check one ack-channel message; raises :class:`InvalidMessage`."""
    msg = _unpack(data)
    if type(msg) is not tuple or len(msg) != 2 or type(msg[1]) is not tuple:
        raise InvalidMessage("not an acknowledgement")
    if not all(type(i) is int for i in msg[1]):
        raise InvalidMessage("an ack id is not an int")
    try:
        return Acks(check_node(msg[0], "sender node id"), msg[1])
    except InvalidRecord as exc:
        raise InvalidMessage(str(exc)) from None


def _pack(item: object) -> bytes:
    packed: bytes = msgpack.packb(item, use_bin_type=True)
    return packed


def encode_join(node: str) -> bytes:
    """The message announcing that ``node`` joined."""
    return _pack([MSG_JOIN, node])


def encode_leave(node: str) -> bytes:
    """The message announcing that ``node`` left."""
    return _pack([MSG_LEAVE, node])


def encode_acks(node: str, ids: list[int]) -> bytes:
    """``node``'s acknowledgement of the writes announced with ``ids``."""
    return _pack([node, ids])


def writes_head(node: str, ack: int) -> bytes:
    """The head of a writes message: a 4-array's header and its first three items.

    The WRITE script appends the array of applied writes (their :func:`write_part`).
    """
    return b"\x94" + _pack(MSG_WRITES) + _pack(node) + _pack(ack)


def write_part(key: str, e: Entry, inline: bytes | None) -> bytes:
    """One write of a writes message; ``inline`` is its value blob, if it travels."""
    return _pack([key, e.ts, e.origin, e.expires, e.deleted, inline])


def pack_writes(rows: list[tuple[str, bytes, str, str, str, bytes]]) -> bytes:
    """The writes of one WRITE call as its script reads them (one msgpack array).

    Packed without the bin type (bytes travel as msgpack str, which Redis's Lua
    ``cmsgpack`` reads as the same bytes; it does not know bin).
    """
    packed: bytes = msgpack.packb(rows, use_bin_type=False)
    return packed


def pattern_head(node: str, ack: int, tomb: PatternTombstone) -> bytes:
    """A pattern message but its last item, the version, which the PATTERN script appends."""
    items = (MSG_PATTERN, node, ack, tomb.pattern, tomb.ts, tomb.origin)
    return b"\x97" + b"".join(_pack(item) for item in items)


# ----------------------------------------------------------- script calls
#: One script call: the script, its KEYS and its ARGV.
Call: TypeAlias = tuple[Script, list[bytes], list[Any]]


class ScriptCalls:
    """The script calls of instance ``node`` of a cluster (see :mod:`._scripts`)."""

    def __init__(self, layout: KeyLayout, node: str, replica: Replica) -> None:
        self.layout = layout
        self.node = node
        self._replica = replica

    def write(
        self, entries: list[tuple[str, Entry]], ack: int, *, known: int, inline_budget: int
    ) -> Call:
        """The WRITE call of a batch; ``known`` is the patterns' version held here.

        Values up to :data:`MAX_INLINE_VALUE_BYTES` travel in the invalidation too,
        while ``inline_budget`` bytes last (0: stamps only). A record's expiry in Redis
        (PEXPIREAT, "" never): see the module doc.
        """
        layout = self.layout
        records = layout.records
        keys = [layout.patterns]
        rows: list[tuple[str, bytes, str, str, str, bytes]] = []
        # The hot loop of write-behind: one pass, no call that is not needed.
        for key, e in entries:
            keys.append(records + key.encode("utf-8", "surrogatepass"))
            stamp = f"{e.ts:016x}{e.origin}"  # stamp_text, inline
            if e.value is TOMBSTONE:
                due = str(collect_due_ms(e.ts, self._replica.tombstone_grace))
                rows.append((stamp, b"", "1", "", due, write_part(key, e, None)))
                continue
            blob = stored_blob(e.value)
            inline = None
            if len(blob) <= inline_budget and len(blob) <= MAX_INLINE_VALUE_BYTES:
                inline = blob  # receivers holding the key update it without a read
                inline_budget -= len(blob)
            if e.expires is None:
                rows.append((stamp, blob, "0", "", "", write_part(key, e, inline)))
            else:
                due = str(math.ceil((e.expires + EXPIRED_GRACE) * 1000))
                rows.append((stamp, blob, "0", repr(e.expires), due, write_part(key, e, inline)))
        args: list[Any] = [
            str(known),
            self._replica.clock.max_drift_ms,
            layout.inv_channel,
            writes_head(self.node, ack),
            pack_writes(rows),
        ]
        return WRITE, keys, args

    def pattern(self, tomb: PatternTombstone, ack: int, now: float) -> Call:
        """The PATTERN call recording ``tomb`` (and collecting old clean tombstones)."""
        horizon = collection_horizon(now, self._replica.tombstone_grace)
        return (
            PATTERN,
            [self.layout.patterns],
            [
                tomb.pattern,
                stamp_text(tomb.ts, tomb.origin),
                self._replica.clock.max_drift_ms,
                self.layout.inv_channel,
                pattern_head(self.node, ack, tomb),
                stamp_text(max(0, horizon), ""),
            ],
        )

    def heartbeat(self, info: bytes, ttl: float, *, leave: bool = False) -> Call:
        """The HEARTBEAT call renewing (or with ``leave``, removing) this instance."""
        layout = self.layout
        return (
            HEARTBEAT,
            [layout.instance, layout.instances, layout.patterns],
            [self.node, info, int(ttl * 1000), "1" if leave else "0"],
        )


# ------------------------------------------------------------- instances
#: Longest host name shown for another instance.
MAX_HOST_CHARS: Final = 255


def instance_info(host: str, pid: int, started: float) -> bytes:
    """What an instance stores in its heartbeat key about itself."""
    packed: bytes = msgpack.packb({"host": host[:MAX_HOST_CHARS], "pid": pid, "started": started})
    return packed


def describe_instance(raw: object) -> str | None:
    """``"host pid N"`` of another instance's heartbeat key (None: absent or junk)."""
    try:
        info = msgpack.unpackb(raw, raw=False, strict_map_key=True) if type(raw) is bytes else None
    except Exception:  # msgpack raises a wide family; all mean junk
        return None
    if not isinstance(info, dict):
        return None
    host, pid = info.get("host"), info.get("pid")
    if type(host) is not str or not 0 < len(host) <= MAX_HOST_CHARS or type(pid) is not int:
        return None
    return f"{host} pid {pid}"


# ---------------------------------------------------------- patterns hash
@dataclass(frozen=True, slots=True)
class PatternsHash:
    """The patterns hash as read (HGETALL): tombstones, cleanup marks, version."""

    tombs: list[PatternTombstone]
    cleaned: dict[str, tuple[int, str]]
    version: int
    refused: list[str]

    def unclean(self) -> list[PatternTombstone]:
        """The tombstones whose records were not all deleted yet."""
        none = (-1, "")
        return [t for t in self.tombs if self.cleaned.get(t.pattern, none) < (t.ts, t.origin)]


def parse_patterns(raw: Any) -> PatternsHash:
    """Read an HGETALL answer of the patterns hash; refused fields are listed, not raised."""
    if not isinstance(raw, dict):
        raw = dict(zip(raw[::2], raw[1::2], strict=True))
    tombs: list[PatternTombstone] = []
    cleaned: dict[str, tuple[int, str]] = {}
    refused: list[str] = []
    version = 0
    for field, value in raw.items():
        try:
            name = field.decode("utf-8", "surrogatepass")
            if name.startswith("p:"):
                tombs.append(pattern_from_record(name[2:], *parse_stamp(value)))
            elif name.startswith("c:"):
                cleaned[name[2:]] = parse_stamp(value)
            elif name == "#":
                version = int(value)
        except (InvalidRecord, UnicodeDecodeError, ValueError) as exc:
            refused.append(str(exc))
    return PatternsHash(tombs, cleaned, version, refused)
