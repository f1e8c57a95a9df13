"""The engine's side of counters, touches and add: what is queued, pushed and kept whole."""

from __future__ import annotations

from dataclasses import replace

from crdtcache.core import NOT_HELD, Message, Push, decode_value, encode_value
from crdtcache.core._counter import Counter
from tests.core.helpers import FAST, T0, linked
from tests.core.test_lineage import as_int


def value(link: object, node: str, key: str) -> object:
    e = link[node].replica.lookup(key, T0 + 10)  # type: ignore[index]
    return None if e is None else decode_value(e.value)


def test_a_minted_join_is_pushed_so_no_mark_claims_it_without_it() -> None:
    # e hears only from c, and a and b never hear from each other: c is the only
    # node that holds both increments, as one minted entry.
    def drop(src: str, dst: str, message: Message) -> bool:
        return {src, dst} == {"a", "b"} or (dst == "e" and src != "c")

    link = linked("a", "b", "c", "e", drop=drop)
    link["a"].incr("k", 1, T0, None, as_int)
    link["b"].incr("k", 1, T0, None, as_int)
    link.flush("a", T0)
    link.flush("b", T0)
    assert value(link, "c", "k") == 2
    link["c"].set("z", "after", T0 + 1)
    link.flush("c", T0 + 1)
    # e's mark for c now covers the mint's stamp: it must have received the mint.
    assert link["e"].replica.marks["c"] >= link["c"].replica.entries["k"].ts
    link.sync("e", "c", T0 + 2)
    assert value(link, "e", "k") == 2


def test_an_increment_and_a_touch_are_queued_and_reported_like_writes() -> None:
    link = linked("a", "b")
    a = link["a"]
    a.incr("k", 5, T0, None, as_int)
    a.touch("k", T0 + 0.1, T0 + 50)
    assert a.pending == 1
    changes = a.drain_changes()
    assert [(c.key, c.kind, c.remote) for c in changes] == [("k", "set", False)] * 2
    link.flush("a", T0 + 0.2)
    assert value(link, "b", "k") == 5
    assert link["b"].replica.entries["k"].expires == T0 + 50
    assert a.touch("missing", T0, None) is None and a.pending == 0


def test_on_demand_sends_stubs_of_values_but_counters_whole() -> None:
    link = linked("a", "b", config=replace(FAST, on_demand=True))
    a = link["a"]
    a.set("v", encode_value("v", [1, 2]), T0)
    a.incr("c", 3, T0, None, as_int)
    link.flush("a", T0)
    pushed = dict(next(m for _, _, m in link.sent(Push) if m.entries).entries)
    assert pushed["v"].value is NOT_HELD
    assert type(pushed["c"].value) is Counter and decode_value(pushed["c"].value) == 3
    link["b"].incr("c", 1, T0 + 1, None, as_int)  # b holds the counter: it can count
    link.flush("b", T0 + 1)
    assert value(link, "a", "c") == value(link, "b", "c") == 4


def test_add_writes_only_a_key_without_a_live_value() -> None:
    link = linked("a")
    a = link["a"]
    assert a.add("k", "first", T0) is not None
    assert a.add("k", "second", T0 + 1) is None
    assert value(link, "a", "k") == "first"
    a.set("t", "short", T0, T0 + 1)
    assert a.add("t", "after expiry", T0 + 2) is not None
    a.delete("k", T0 + 3)
    assert a.add("k", "after delete", T0 + 4) is not None


def test_a_write_through_batch_in_many_messages_is_acknowledged_once_when_all_arrived() -> None:
    link = linked("a", "b", config=replace(FAST, max_message_entries=2))
    a = link["a"]
    for i in range(5):
        a.set(f"k{i}", i, T0)
    out, ack_id = a.flush(T0, ack=True)
    pushes = [o.message for o in out if isinstance(o.message, Push)]
    assert len(pushes) == 3 and [p.ack for p in pushes] == [0, 0, ack_id]
    link.deliver("a", out[:2], T0)
    assert a.unacked(ack_id) == {"b"}  # two parts applied, the batch is not
    link.deliver("a", out[2:], T0)
    assert a.unacked(ack_id) == frozenset()
