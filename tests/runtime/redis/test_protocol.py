"""Redis mode's protocol decisions, without a server: properties of the sans-IO parts.

A :class:`FakeRedis` plays the two scripts that decide anything (WRITE and PATTERN,
as :mod:`crdtcache.runtime.redis._scripts` documents them) on dicts, so the write
path, the recheck rule and the read race run here as they run against Redis.
"""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import importlib
import inspect
import math
import random
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from crdtcache._errors import PeerError
from crdtcache.core import (
    ALIVE,
    DEAD,
    MAX_KEY_CHARS,
    MAX_NODE_ID_CHARS,
    TOMBSTONE,
    Entry,
    GossipEngine,
    HybridClock,
    PatternTombstone,
    Replica,
    encode_value,
)
from crdtcache.core._format import (
    InvalidRecord,
    check_expires,
    check_key,
    check_node,
    check_ts,
)
from crdtcache.core._hlc import MAX_TS
from crdtcache.runtime.redis._hottier import FETCH_ATTEMPTS
from crdtcache.runtime.redis._messages import (
    MSG_WRITES,
    Acks,
    InvalidMessage,
    Join,
    Leave,
    PatternRecorded,
    Writes,
    decode_acks,
    decode_message,
    encode_acks,
    encode_join,
    encode_leave,
    parse_stamp,
    pattern_head,
    stamp_text,
    write_part,
    writes_head,
)
from crdtcache.runtime.redis._protocol import AckDone, RedisProtocol
from crdtcache.runtime.redis._scripts import PATTERN, WRITE
from crdtcache.runtime.redis._tables import (
    DEAD_LISTED,
    MAX_BATCH,
    InstanceTable,
    Outbox,
    PatternBook,
    batches,
)
from crdtcache.runtime.redis._writes import RECHECK_ATTEMPTS, WriteReport
from tests.core.test_purity import FORBIDDEN, imported_roots

NOW = 1_700_000_000.0

chars = st.characters(blacklist_categories=("Cs",))  # no lone surrogates
keys = st.text(chars, max_size=40)
nodes = st.text(chars, min_size=1, max_size=20)
stamps = st.integers(0, MAX_TS)
expiries = st.none() | st.floats(allow_nan=False, allow_infinity=False)


def instance(node: str, *, inline: bool = True) -> RedisProtocol:
    """A subscribed instance's protocol (no Redis, no event loop)."""
    engine = GossipEngine(Replica(HybridClock(node)), random.Random(0))
    proto = RedisProtocol(engine, cluster="c", inline=inline, local_ttl=None, where="Redis")
    proto.link_up()
    proto.link_ready(NOW)
    return proto


def assemble_writes(head: bytes, parts: list[bytes]) -> bytes:
    """The writes message the WRITE script publishes: head, array header, parts."""
    n = len(parts)
    array = bytes([0x90 + n]) if n < 16 else b"\xdc" + struct.pack(">H", n)
    return head + array + b"".join(parts)


def assemble_pattern(head: bytes, version: int) -> bytes:
    """The pattern message the PATTERN script publishes: head, then the version."""
    return head + b"\xce" + struct.pack(">I", version)


# ================================================================== messages
@given(sender=nodes, ack=st.integers(0, 1 << 31), data=st.data())
def test_a_writes_message_round_trips(sender: str, ack: int, data: st.DataObject) -> None:
    writes = data.draw(
        st.lists(st.tuples(keys, stamps, nodes, expiries, st.booleans(), st.binary(max_size=40)))
    )
    parts: list[bytes] = []
    expected = []
    for key, ts, origin, expires, deleted, blob in writes:
        inline = None if deleted or not blob else blob
        parts.append(
            write_part(key, Entry(TOMBSTONE if deleted else 1, ts, origin, expires), inline)
        )
        expected.append((key, ts, origin, expires, deleted, inline))
    got = decode_message(assemble_writes(writes_head(sender, ack), parts))
    assert got == Writes(sender, ack, tuple(expected))


@given(sender=nodes, ack=st.integers(0, 1 << 31), glob=keys.filter(bool), ts=stamps, origin=nodes)
def test_pattern_join_leave_and_ack_messages_round_trip(
    sender: str, ack: int, glob: str, ts: int, origin: str
) -> None:
    tomb = PatternTombstone(glob, ts, origin)
    got = decode_message(assemble_pattern(pattern_head(sender, ack, tomb), 7))
    assert got == PatternRecorded(sender, ack, tomb, 7)
    assert decode_message(encode_join(sender)) == Join(sender)
    assert decode_message(encode_leave(sender)) == Leave(sender)
    assert decode_acks(encode_acks(sender, [ack, 1])) == Acks(sender, (ack, 1))


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 63), (1 << 64) - 1),  # what msgpack can carry
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
)
junk_objects = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=7) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=20,
)


@given(st.binary(max_size=300) | junk_objects.map(msgpack.packb))
def test_junk_is_refused_as_one_error_type(data: bytes) -> None:
    """Whatever arrives, decoding returns a message or raises InvalidMessage."""
    for decode in (decode_message, decode_acks):
        with contextlib.suppress(InvalidMessage):
            decode(data)


@given(kind=st.sampled_from([1, 2, 3, 4]), items=st.lists(junk_objects, max_size=6))
def test_messages_of_a_known_kind_with_junk_items_are_refused_or_well_formed(
    kind: int, items: list[Any]
) -> None:
    try:
        msg = decode_message(msgpack.packb([kind, "s", *items]))
    except InvalidMessage:
        return
    assert isinstance(msg, (Writes, PatternRecorded, Join, Leave))


# The record format's verdicts, one junk value per field: a message carrying it is junk.
FIELD_JUNK = [
    ("key", 5, check_key),
    ("key", "k" * (MAX_KEY_CHARS + 1), check_key),
    ("ts", -1, check_ts),
    ("ts", MAX_TS + 1, check_ts),
    ("ts", 1.5, check_ts),
    ("ts", True, check_ts),
    ("origin", "", check_node),
    ("origin", "n" * (MAX_NODE_ID_CHARS + 1), check_node),
    ("origin", 7, check_node),
    ("expires", math.inf, check_expires),
    ("expires", -math.inf, check_expires),
    ("expires", math.nan, check_expires),
    ("expires", "12", check_expires),
]


@pytest.mark.parametrize(("field", "junk", "check"), FIELD_JUNK)
def test_a_field_the_record_format_refuses_makes_the_message_junk(
    field: str, junk: object, check: Any
) -> None:
    with pytest.raises(InvalidRecord):
        check(junk)
    item = {"key": "k", "ts": 5, "origin": "o", "expires": None}
    item[field] = junk
    write = [item["key"], item["ts"], item["origin"], item["expires"], False, None]
    with pytest.raises(InvalidMessage):
        decode_message(msgpack.packb([MSG_WRITES, "s", 0, [write]]))
    if field != "expires":  # a pattern message has no expiry
        pattern = {"key": "p*", "ts": 5, "origin": "o", **{field: junk}}
        message = [2, "s", 0, pattern["key"], pattern["ts"], pattern["origin"], 1]
        with pytest.raises(InvalidMessage):
            decode_message(msgpack.packb(message))


def test_shape_junk_is_refused() -> None:
    for junk in (
        [1, "s", 0, [["k", 5, "o", None, True, b"v"]]],  # a tombstone carrying a value
        [1, "s", 0, [["k", 5, "o", None, 1, None]]],  # deleted is not a bool
        [1, "s", "0", []],  # ack id not an int
        [1, "", 0, []],  # no sender
        [3, "s", 0],  # a join of the wrong length
        [9, "s"],  # unknown kind
    ):
        with pytest.raises(InvalidMessage):
            decode_message(msgpack.packb(junk))
    with pytest.raises(InvalidMessage):
        decode_acks(msgpack.packb(["s", [1, "2"]]))
    ext = msgpack.packb([3, msgpack.ExtType(1, b"x")])
    with pytest.raises(InvalidMessage):
        decode_message(ext)


@given(st.integers(0, MAX_TS), nodes)
def test_stamp_texts_round_trip(ts: int, origin: str) -> None:
    assert parse_stamp(stamp_text(ts, origin)) == (ts, origin)
    assert parse_stamp(stamp_text(ts, origin).encode()) == (ts, origin)


# ================================================================ fake Redis
class FakeRedis:
    """What the WRITE and PATTERN scripts decide, on dicts (see ``_scripts.py``).

    Stamps compare as bytes, like the scripts' ``lt``. ``step`` orders every change,
    so a property can ask what was recorded before what.
    """

    def __init__(self) -> None:
        self.records: dict[bytes, tuple[bytes, int, Any]] = {}
        self.patterns: dict[str, tuple[bytes, int]] = {}
        self.newest: bytes | None = None
        self.version = 0
        self.step = 0
        self.published: list[bytes] = []

    def run(self, call: tuple[Any, list[bytes], list[Any]]) -> Any:
        script, keys_, args = call
        if script is WRITE:
            return self._write(keys_, args)
        assert script is PATTERN
        return self._pattern(args)

    def _write(self, names: list[bytes], args: list[Any]) -> list[Any]:
        known, _, _, head = args[:4]
        unknown = self.newest is not None and str(self.version) != known
        out: list[Any] = []
        applied: list[bytes] = []
        rows = msgpack.unpackb(args[4], raw=True)  # pack_writes: bytes throughout
        for name, row in zip(names[1:], rows, strict=True):
            stamp, blob, tomb, x, _, part = row
            current = self.records.get(name)
            if current is not None and not current[0] < stamp:
                out.append([0, current[0]])
            elif unknown and self.newest is not None and not self.newest < stamp:
                out.append([-1, self.version])
            else:
                self.step += 1
                fields = (stamp, None if tomb == b"1" else blob, x if x else None)
                self.records[name] = (stamp, self.step, fields)
                applied.append(part)
                out.append([1, 0])
        if applied:
            self.published.append(assemble_writes(head, applied))
        return [*out, 1]

    def _pattern(self, args: list[Any]) -> list[Any]:
        glob, s, _, _, head, _ = args
        stamp = s.encode()
        current = self.patterns.get(glob)
        if current is not None and not current[0] < stamp:
            return [0, current[0]]
        self.step += 1
        self.patterns[glob] = (stamp, self.step)
        self.version += 1
        if self.newest is None or self.newest < stamp:
            self.newest = stamp
        self.published.append(assemble_pattern(head, self.version))
        return [1, 1, self.version]

    def hgetall(self) -> dict[bytes, bytes]:
        raw = {b"#": str(self.version).encode()}
        raw.update({b"p:" + g.encode(): s for g, (s, _) in self.patterns.items()})
        return raw

    def hmget(self, name: bytes) -> list[Any]:
        record = self.records.get(name)
        return list(record[2]) if record is not None else [None, None, None]


def flush(proto: RedisProtocol, fake: FakeRedis, now: float) -> WriteReport:
    """Write everything ``proto`` has queued to the fake."""
    proto.take()
    return write_all(proto, fake, *proto.outbox.take_all(), now)


def write_all(
    proto: RedisProtocol, fake: FakeRedis, entries: list[Any], patterns: list[Any], now: float
) -> WriteReport:
    """The batch writer's loop (``_writer.BatchWriter.write``) against the fake."""
    report = WriteReport()
    for _ in range(RECHECK_ATTEMPTS):
        batch = proto.writes.prepare(entries, patterns, 0, report, now)
        if batch is None:
            return report
        results = [fake.run(call) for call in batch.calls]
        proto.writes.sent(batch)
        recheck = proto.writes.answered(batch, results, report, now)
        if not recheck:
            return report
        proto.patterns_loaded(fake.hgetall(), now)
        entries, patterns = recheck, []
    proto.writes.unsure(entries, report, requeue=True)
    return report


# ============================================================ pattern recheck
GLOBS = ["a*", "b*", "*", "a1"]
KEYS = ["a1", "a2", "b1"]

recheck_steps = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.sampled_from(KEYS), st.floats(0, 0.01)),
        st.tuples(st.just("tomb"), st.sampled_from(GLOBS), st.floats(-0.01, 0.01)),
        st.tuples(st.just("deliver"), st.integers(0, 20), st.just(0.0)),
        st.tuples(st.just("flush"), st.just(""), st.just(0.0)),
    ),
    min_size=4,  # short lists rarely hold a write, a tombstone and a flush in some order
    max_size=25,
)


def run_recheck_scenario(
    steps: list[tuple[str, Any, float]],
) -> tuple[FakeRedis, dict[str, Entry]]:
    """Instance a writes; instance b records pattern tombstones; a hears some of them.

    Returns the fake Redis and the last write of each key by a.
    """
    fake = FakeRedis()
    a, b = instance("a"), instance("b")
    now_a = now_b = NOW
    heard = 0  # messages of fake.published a was handed (or that were lost on the way)
    last: dict[str, Entry] = {}
    for action, arg, dt in steps:
        if action == "write":
            now_a += dt
            last[arg] = a.engine.set(arg, encode_value(arg, 1), now_a)
        elif action == "tomb":
            now_b += 0.001 + dt  # b's clock may run behind or ahead of a's
            b.engine.invalidate_pattern(arg, now_b)
            flush(b, fake, now_b)
        elif action == "deliver" and heard < len(fake.published):
            skip = arg % 3 == 0  # every third one is lost: a must not rely on them
            if not skip:
                a.receive(a.layout.inv_channel, fake.published[heard], now_a)
            heard += 1
        elif action == "flush":
            flush(a, fake, now_a)
    for _ in range(3):  # nothing races any more: a recheck settles at the first reload
        flush(a, fake, now_a)
    assert not a.outbox
    return fake, last


def covered(fake: FakeRedis, key: str, stamp: bytes) -> bool:
    """Whether a tombstone recorded in the fake covers a write of ``key`` at ``stamp``."""
    return any(
        fnmatch.fnmatchcase(key, glob) and stamp <= tomb
        for glob, (tomb, _) in fake.patterns.items()
    )


def lost_writes(fake: FakeRedis, last: dict[str, Entry]) -> list[str]:
    """Keys whose last write no tombstone covers, yet Redis does not hold it."""
    lost = []
    for key, e in last.items():
        stamp = stamp_text(e.ts, e.origin).encode()
        record = fake.records.get(b"crdtcache:{c}:k:" + key.encode())
        if not covered(fake, key, stamp) and (record is None or record[0] != stamp):
            lost.append(key)
    return lost


def overtaken(fake: FakeRedis) -> list[tuple[str, str]]:
    """Records written after a tombstone that covers them (what must never happen)."""
    bad = []
    for name, (stamp, written, _) in fake.records.items():
        key = name.split(b":k:", 1)[1].decode()
        for glob, (tomb, recorded) in fake.patterns.items():
            if recorded < written and fnmatch.fnmatchcase(key, glob) and stamp <= tomb:
                bad.append((key, glob))
    return bad


@settings(max_examples=150)
@given(recheck_steps)
def test_no_write_overtakes_a_pattern_tombstone_its_writer_had_not_heard_of(
    steps: list[tuple[str, Any, float]],
) -> None:
    """Safety: nothing lands under a tombstone; liveness: nothing else is lost."""
    fake, last = run_recheck_scenario(steps)
    assert overtaken(fake) == []
    assert lost_writes(fake, last) == []


def test_the_recheck_property_catches_a_version_rule_that_skips_ahead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """a hears b's second tombstone but not its first: its version must stay behind."""
    steps: list[tuple[str, Any, float]] = [
        ("write", "a1", 0.0),  # queued, older than both tombstones
        ("tomb", "a*", 0.0),  # version 1, never reaches a
        ("tomb", "b*", 0.0),  # version 2, reaches a
        ("deliver", 3, 0.0),  # lost
        ("deliver", 1, 0.0),
    ]
    assert overtaken(run_recheck_scenario(steps)[0]) == []

    def skip_ahead(self: PatternBook, version: int) -> None:
        self.version = max(self.version, version)

    monkeypatch.setattr(PatternBook, "recorded", skip_ahead)
    assert overtaken(run_recheck_scenario(steps)[0]) == [("a1", "a*")]


# ================================================================ read race
class ReadRace(RuleBasedStateMachine):
    """A writer commits a key again and again; a reader reads it meanwhile.

    Announcements reach the reader in commit order, reads are served by Redis at
    any point between request and reply, and replies arrive whenever: the order of
    the race analysis in ``_hottier``, in every interleaving. The reader's link may
    also drop (the announcements in transit and those sent meanwhile are lost) and
    come back.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fake = FakeRedis()
        self.writers = {True: instance("w"), False: instance("v", inline=False)}
        self.reader = instance("r")
        self.now = NOW
        self.heard = 0
        # The newest stamp announced to the reader and processed, or lost to an outage.
        self.newest_heard: tuple[int, str] = (-1, "")
        self.down = False
        self.committed: dict[tuple[int, str], Any] = {}
        self.reads: list[dict[str, Any]] = []

    @rule(deleted=st.booleans(), inline=st.booleans())
    def commit(self, deleted: bool, inline: bool) -> None:
        self.now += 0.01  # a whole millisecond later: two writers' stamps never tie
        writer = self.writers[inline]  # values travel inline, or stamps only (on-demand)
        if deleted:
            writer.engine.delete("k", self.now)
        else:
            writer.engine.set("k", encode_value("k", self.now), self.now)
        writer.take()
        entries, patterns = writer.outbox.take_all()
        (_, e), *_ = entries
        write_all(writer, self.fake, entries, patterns, self.now)
        assert (
            self.fake.records[writer.layout.record("k")][0] == stamp_text(e.ts, e.origin).encode()
        )
        self.committed[(e.ts, e.origin)] = e.value
        if self.down:
            self.lose_pending()

    def pass_on(self, *, lost: bool) -> None:
        data = self.fake.published[self.heard]
        self.heard += 1
        if not lost:
            self.reader.receive(self.reader.layout.inv_channel, data, self.now)
        write = decode_message(data)
        assert isinstance(write, Writes)
        self.newest_heard = max(self.newest_heard, write.writes[-1][1:3])

    def lose_pending(self) -> None:
        while self.heard < len(self.fake.published):
            self.pass_on(lost=True)

    @precondition(lambda self: self.heard < len(self.fake.published) and not self.down)
    @rule()
    def deliver(self) -> None:
        self.pass_on(lost=False)

    @precondition(lambda self: not self.down)
    @rule()
    def lose_link(self) -> None:
        self.reader.link_lost("test", self.now)
        self.down = True
        self.lose_pending()

    @precondition(lambda self: self.down)
    @rule()
    def resubscribe(self) -> None:
        self.reader.link_up()
        self.reader.link_ready(self.now)
        self.down = False

    @precondition(lambda self: len(self.reads) < 2)
    @rule()
    def request(self) -> None:
        self.reader.reading(["k"])
        self.reads.append({"token": self.reader.read_token(), "row": None, "tries": 1})

    @precondition(lambda self: any(r["row"] is None for r in self.reads))
    @rule(i=st.integers(0, 1))
    def serve(self, i: int) -> None:
        waiting = [r for r in self.reads if r["row"] is None]
        waiting[i % len(waiting)]["row"] = self.fake.hmget(self.reader.layout.record("k"))

    @precondition(lambda self: any(r["row"] is not None for r in self.reads))
    @rule(i=st.integers(0, 1))
    def reply(self, i: int) -> None:
        served = [r for r in self.reads if r["row"] is not None]
        read = served[i % len(served)]
        record = self.reader.record_of_row("k", read["row"])
        outcome = self.reader.read_reply(["k"], [record], read["token"], self.now)
        for key, e in outcome.unkept:  # served to the caller, then dropped (the runtime)
            self.reader.hot.drop(key, e)
        if outcome.again and read["tries"] < FETCH_ATTEMPTS:
            read.update(token=self.reader.read_token(), row=None, tries=read["tries"] + 1)
        else:
            self.reads.remove(read)
            self.reader.read_done(["k"], self.now)

    @invariant()
    def no_older_copy_after_an_announcement(self) -> None:
        local = self.reader.replica.entries.get("k")
        if local is None or not local.held:
            return
        stamp = (local.ts, local.origin)
        assert not self.down  # nothing is kept while invalidations could be missed
        assert self.committed[stamp] == local.value  # never a mix of two writes
        assert stamp >= self.newest_heard

    def teardown(self) -> None:
        # Everything delivered, every read answered: then a fresh read converges.
        if self.down:
            self.resubscribe()
        while self.heard < len(self.fake.published):
            self.deliver()
        for read in list(self.reads):
            self.reads.remove(read)
            self.reader.read_done(["k"], self.now)
        self.no_older_copy_after_an_announcement()
        if not self.committed:
            return
        self.reader.reading(["k"])
        token = self.reader.read_token()
        record = self.reader.record_of_row("k", self.fake.hmget(self.reader.layout.record("k")))
        self.reader.read_reply(["k"], [record], token, self.now)
        self.reader.read_done(["k"], self.now)
        local = self.reader.replica.entries.get("k")
        newest = max(self.committed)
        if self.committed[newest] is TOMBSTONE:
            assert local is None
        else:
            assert local is not None and (local.ts, local.origin) == newest
            assert local.value == self.committed[newest]


ReadRace.TestCase.settings = settings(max_examples=200, stateful_step_count=40)
test_a_read_racing_with_writes_never_keeps_an_older_value = ReadRace.TestCase


def test_an_announcement_that_overtakes_the_reply_wins() -> None:
    """The module doc's race, one interleaving spelled out."""
    fake, w, r = FakeRedis(), instance("w"), instance("r", inline=False)
    w.engine.set("k", encode_value("k", "old"), NOW)
    flush(w, fake, NOW)
    r.reading(["k"])
    token = r.read_token()
    old_row = fake.hmget(r.layout.record("k"))  # HMGET before W
    w.engine.set("k", encode_value("k", "new"), NOW + 1)
    flush(w, fake, NOW + 1)
    r.receive(r.layout.inv_channel, fake.published[-1], NOW + 1)  # W's announcement first
    outcome = r.read_reply(["k"], [r.record_of_row("k", old_row)], token, NOW + 1)
    assert outcome.again == ["k"]  # the old reply lost to the stub: read again
    new_row = fake.hmget(r.layout.record("k"))
    outcome = r.read_reply(["k"], [r.record_of_row("k", new_row)], r.read_token(), NOW + 1)
    r.read_done(["k"], NOW + 1)
    assert outcome.again == [] and r.replica.entries["k"].value == "new"


def test_resubscribing_drops_what_reads_in_flight_left_in_the_tier() -> None:
    r = instance("r")
    r.link_lost("test", NOW)
    r.reading(["k"])
    record = Entry(encode_value("k", 1), 5 << 16, "w")
    outcome = r.read_reply(["k"], [record], r.read_token(), NOW)
    assert [k for k, _ in outcome.unkept] == ["k"]  # served once; the runtime drops it soon
    r.link_up()  # ...but the link came back first: the value may be stale
    assert not r.replica.entries["k"].held
    r.read_done(["k"], NOW)
    assert "k" not in r.replica.entries


# ============================================================== ack waiters
ack_steps = st.lists(
    st.tuples(
        st.sampled_from(["ack", "leave", "die", "stray", "other_id", "lose_link"]),
        st.integers(0, 9),
    ),
    max_size=15,
)


@given(peers=st.lists(st.sampled_from("pqrst"), unique=True, max_size=5), steps=ack_steps)
def test_an_ack_waiter_completes_exactly_when_every_live_instance_acked_or_stopped(
    peers: list[str], steps: list[tuple[str, int]]
) -> None:
    w = instance("w")
    for peer in peers:
        w.receive(w.layout.inv_channel, encode_join(peer), NOW)
    w.drain_events()
    ack_id = w.expect_acks()
    assert (ack_id == 0) == (not peers)
    if not peers:
        return
    alive, missing, done = set(peers), set(peers), False
    for action, n in steps:
        peer = peers[n % len(peers)]
        if action == "ack":
            w.receive(w.layout.ack_channel, encode_acks(peer, [ack_id]), NOW)
            missing.discard(peer)
        elif action == "stray":  # an instance nobody waits for
            w.receive(w.layout.ack_channel, encode_acks("zz", [ack_id]), NOW)
        elif action == "other_id":
            w.receive(w.layout.ack_channel, encode_acks(peer, [ack_id + 1]), NOW)
        elif action == "leave":
            w.receive(w.layout.inv_channel, encode_leave(peer), NOW)
            alive.discard(peer)
            missing.discard(peer)
        elif action == "die":  # a heartbeat no longer lists it
            alive.discard(peer)
            members = [p.encode() for p in sorted(alive)]
            w.heartbeat_answered((members, None, NOW * 1000), NOW)
            missing.discard(peer)
        else:
            w.link_lost("test", NOW)
        completions = [e for e in w.drain_events() if isinstance(e, AckDone)]
        should = not done and (not missing or action == "lose_link")
        assert completions == ([AckDone(ack_id)] if should else [])
        done = done or should
        assert w.acks.missing(ack_id) == missing


# ============================================================ instance table
table_steps = st.lists(
    st.tuples(
        st.sampled_from(["seen", "gone", "leave", "listed", "prune"]),
        st.sets(st.sampled_from(["p", "q", "r", "self"]), max_size=4),
        st.floats(0, 2 * DEAD_LISTED),
    ),
    max_size=20,
)


@given(table_steps)
def test_instance_table_transitions(steps: list[tuple[str, set[str], float]]) -> None:
    table = InstanceTable("self")
    now = NOW
    died: dict[str, float] = {}
    for action, peers, dt in steps:
        now += dt
        before = dict(table.states)
        events = []
        if action == "listed":
            events = table.listed(set(peers), now)
        elif action == "prune":
            table.prune(now)
        else:
            for peer in sorted(peers):
                if action == "seen":
                    event = table.seen(peer)
                else:
                    event = table.gone(peer, now, forget=action == "leave")
                events += [event] if event is not None else []
        after = table.states
        assert "self" not in after
        if action == "prune":  # only the dead listed longer than DEAD_LISTED go
            gone = {
                p for p, state in before.items() if state == DEAD and now - died[p] > DEAD_LISTED
            }
            assert events == [] and after == {p: s for p, s in before.items() if p not in gone}
            continue
        # One event per change of state, naming the state it left and the one it entered.
        changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
        assert sorted(e.peer for e in events) == sorted(changed)
        for e in events:
            assert e.previous == before.get(e.peer)
            assert e.state == (ALIVE if after.get(e.peer) == ALIVE else DEAD)
            if after.get(e.peer) == DEAD:
                died[e.peer] = now
        if action == "listed":
            assert table.live() == set(peers) - {"self"}


# ================================================================= outbox
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 50)), max_size=30))
def test_the_outbox_keeps_the_newest_write_per_key(writes: list[tuple[str, int]]) -> None:
    outbox = Outbox()
    newest: dict[str, int] = {}
    for key, ts in writes:
        e = Entry(1, ts, "n")
        if ts % 2:
            outbox.put([(key, e)], [])
            newest[key] = ts  # a new local write always replaces the queued one
        else:
            outbox.requeue([(key, e)], [])  # a failed batch never replaces newer
            newest[key] = max(newest.get(key, -1), ts)
    assert {k: e.ts for k, e in outbox.queued.items()} == newest


@given(st.integers(0, 3 * MAX_BATCH))
def test_batches_are_bounded_and_keep_the_order(count: int) -> None:
    entries = [(f"k{i}", Entry(b"x", i, "n")) for i in range(count)]
    cut = list(batches(entries))
    assert all(0 < len(b) <= MAX_BATCH for b in cut)
    assert [k for b in cut for k, _ in b] == [k for k, _ in entries]


def test_a_refused_batch_drops_the_writes_here_and_names_them() -> None:
    w = instance("w")
    w.engine.set("k", encode_value("k", 1), NOW)
    w.take()
    report = WriteReport()
    batch = w.writes.prepare(*w.outbox.take_all(), 0, report, NOW)
    assert batch is not None
    w.writes.sent(batch)
    assert w.writes.answered(batch, [PeerError("OOM")], report, NOW) == []
    assert "k" not in w.replica.entries and report.errors == ["'k': OOM"]


# ================================================================= purity
SANS_IO = ["_messages", "_tables", "_hottier", "_writes", "_protocol", "_scripts"]


@pytest.mark.parametrize("name", SANS_IO)
def test_the_protocol_modules_do_no_io(name: str) -> None:
    module = importlib.import_module(f"crdtcache.runtime.redis.{name}")
    roots = imported_roots(inspect.getsource(module))
    forbidden = FORBIDDEN | {"redis", "os", "contextvars"}
    assert not roots & forbidden, f"{name} imports {sorted(roots & forbidden)}"
    tree = ast.parse(inspect.getsource(module))
    assert not any(isinstance(n, (ast.Await, ast.AsyncFunctionDef)) for n in ast.walk(tree))


def test_a_read_sees_the_newest_own_write_queued_behind_one_in_flight() -> None:
    outbox = Outbox()
    outbox.put([("k", Entry(1, 1, "n"))], [])
    batch, _ = outbox.next_batch()
    outbox.sending(batch)  # the first write is on its way to Redis
    outbox.put([("k", Entry(2, 2, "n"))], [])  # a second one waits for the next batch
    own = outbox.own("k")
    assert own is not None and own.ts == 2


# One answer of the WRITE script per case: what this instance makes of it.
WRITE_ANSWERS = [
    # answer, applied, lost, rechecked, errors, drift, still held here
    ([1, 0], 1, 0, 0, 0, 0, True),
    ([0, "same"], 0, 0, 0, 0, 0, True),  # the same write, retried: it is in Redis
    ([0, "newer"], 0, 1, 0, 0, 0, False),  # a newer write won: our copy goes
    ([-1, 3], 0, 0, 1, 0, 0, True),  # recheck: nothing decided yet
    ([-2, 0], 0, 0, 0, 1, 1, False),  # ahead of the server's clock: refused
    (PeerError("WRONGTYPE"), 0, 0, 0, 1, 0, False),
]


@pytest.mark.parametrize(
    ("answer", "applied", "lost", "rechecked", "errors", "drift", "held"), WRITE_ANSWERS
)
def test_each_write_answer_is_applied_here(
    answer: Any, applied: int, lost: int, rechecked: int, errors: int, drift: int, held: bool
) -> None:
    w = instance("w")
    e = w.engine.set("k", encode_value("k", 1), NOW)
    if isinstance(answer, list) and answer[1] in ("same", "newer"):
        ts = e.ts + (1 << 20) if answer[1] == "newer" else e.ts
        answer = [0, stamp_text(ts, "w").encode()]
    w.take()
    report = WriteReport()
    batch = w.writes.prepare(*w.outbox.take_all(), 0, report, NOW)
    assert batch is not None
    w.writes.sent(batch)
    results = [[answer, 1]] if isinstance(answer, list) else [answer]
    recheck = w.writes.answered(batch, results, report, NOW)
    c = w.writes.counters
    assert (c.applied, c.lost, len(recheck), c.errors) == (applied, lost, rechecked, errors)
    assert report.count == applied and len(report.errors) == errors
    assert w.counters.refused_drift == drift
    assert (w.replica.entries.get("k") is e) == held
    if lost:  # the loser observed the winner: its next write wins
        assert w.replica.clock.last_ts >= e.ts + (1 << 20)


@pytest.mark.parametrize(
    ("answer", "recorded", "errors", "drift"),
    [
        ([1, 1, 1], True, 0, 0),  # recorded as version 1: its records are to be cleaned
        ([0, b"x"], False, 0, 0),  # an equal or newer tombstone of the glob is there
        ([-2, 0], False, 1, 1),  # ahead of the server's clock
        (PeerError("OOM"), False, 1, 0),
    ],
)
def test_each_pattern_answer_is_applied_here(
    answer: Any, recorded: bool, errors: int, drift: int
) -> None:
    w = instance("w")
    w.engine.invalidate_pattern("p*", NOW)
    w.take()
    w.drain_events()
    report = WriteReport()
    batch = w.writes.prepare(*w.outbox.take_all(), 0, report, NOW)
    assert batch is not None
    assert w.writes.answered(batch, [answer], report, NOW) == []
    assert (report.count, len(report.errors), w.writes.counters.errors) == (
        int(recorded),
        errors,
        errors,
    )
    assert w.counters.refused_drift == drift
    assert w.patterns.version == int(recorded)
    cleanup = w.next_cleanup()
    assert (cleanup is not None and cleanup.pattern == "p*") == recorded
