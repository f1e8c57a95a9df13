"""With a durability gate, no own write leaves the engine before the driver stored it."""

from __future__ import annotations

import random

from crdtcache.core import (
    Fetch,
    FetchReply,
    GossipEngine,
    HybridClock,
    Push,
    Replica,
    SyncRequest,
    SyncResponse,
)

T = 1_700_000_000.0


def engine(node: str = "a") -> GossipEngine:
    e = GossipEngine(Replica(HybridClock(node)), random.Random(1))
    e.add_peer("b", T)
    e.durable = -1  # nothing stored yet
    return e


def test_a_push_waits_for_the_write_to_be_stored() -> None:
    e = engine()
    e.set("k", "v", T)
    assert e.awaiting_durability
    out, _ = e.flush(T)
    assert not [m for _, m in out if isinstance(m, Push) and m.entries]
    e.made_durable(e.replica.marks["a"])
    assert not e.awaiting_durability
    out, _ = e.flush(T + 0.01)
    pushes = [m for _, m in out if isinstance(m, Push)]
    assert pushes and pushes[0].entries[0][0] == "k" and pushes[0].upto <= e.durable


def test_stored_writes_leave_and_later_ones_wait() -> None:
    e = engine()
    e.set("old", 1, T)
    e.made_durable(e.replica.marks["a"])
    e.set("new", 2, T + 0.001)
    out, _ = e.flush(T + 0.002)
    sent = {k for _, m in out if isinstance(m, Push) for k, _ in m.entries}
    assert sent == {"old"}
    assert e.pending == 1


def test_anti_entropy_and_fetch_never_carry_or_claim_unstored_writes() -> None:
    e = engine()
    e.set("old", 1, T)
    stored = e.replica.marks["a"]
    e.made_durable(stored)
    e.set("new", 2, T + 0.001)
    out = e.handle("b", SyncRequest(1, {}), T + 0.002)
    responses = [m for _, m in out if isinstance(m, SyncResponse)]
    assert {k for r in responses for k, _ in r.entries} == {"old"}
    assert all(r.marks["a"] == stored for r in responses)
    replies = [m for _, m in e.handle("b", Fetch(7, ("old", "new")), T + 0.003)]
    reply = replies[-1]
    assert isinstance(reply, FetchReply)
    assert [k for k, _ in reply.entries] == ["old"]


def test_without_a_gate_everything_leaves_at_once() -> None:
    e = engine()
    e.durable = None
    e.set("k", "v", T)
    assert not e.awaiting_durability
    out, _ = e.flush(T)
    assert [k for _, m in out if isinstance(m, Push) for k, _ in m.entries] == ["k"]


def test_held_exchanges_answer_nothing_until_released() -> None:
    e = GossipEngine(Replica(HybridClock("a")), random.Random(1))
    e.hold_exchanges()  # before any peer, as a cache whose store still loads
    assert e.exchanges_held
    assert e.add_peer("b", T) == []  # no catch-up pull yet
    out = e.handle("b", SyncRequest(1, {}), T)
    assert not [m for _, m in out if isinstance(m, SyncResponse | SyncRequest)]
    assert not [m for _, m in e.tick(T + 0.5) if isinstance(m, SyncResponse | SyncRequest)]
    e.release_exchanges(T + 0.5)
    out = e.tick(T + 0.51)
    assert [m for _, m in out if isinstance(m, SyncResponse)]  # the request that waited
    assert [m for _, m in out if isinstance(m, SyncRequest)]  # and a catch-up pull
