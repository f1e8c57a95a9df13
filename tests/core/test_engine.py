"""The gossip engine, driven message by message over a perfect or lossy link."""

from __future__ import annotations

from dataclasses import replace

import pytest

from crdtcache.core import (
    ALIVE,
    DEAD,
    NOT_HELD,
    SUSPECT,
    Ack,
    Fetch,
    FetchReply,
    GossipConfig,
    Outgoing,
    PatternTombstone,
    PeerEvent,
    Ping,
    Push,
    SyncRequest,
    SyncResponse,
    encode_value,
)
from crdtcache.core import _engine as engine_module
from crdtcache.testing import SimulatedNetwork
from tests.core.helpers import (
    FAST,
    T0,
    Link,
    linked,
    make_engine,
    make_entry,
    max_value_wins,
    ts,
)


def values(link: Link, node: str, now: float = T0) -> dict[str, object]:
    return {k: v[0] for k, v in link[node].replica.visible(now).items()}


# ------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sync_interval": 0}, "sync_interval must be positive"),
        ({"gc_interval": -1}, "gc_interval must be positive"),
        ({"suspect_after": 3, "dead_after": 2}, "suspect_after <= dead_after"),
        ({"suspect_after": 0}, "suspect_after <= dead_after"),
        ({"fanout": 0}, "fanout"),
        ({"flush_burst": 0}, "flush_burst must be at least 1"),
        ({"max_message_entries": 0}, "message limits"),
        ({"max_message_bytes": 1000}, "message limits"),
    ],
)
def test_config_rejects_bad_values(change: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GossipConfig(**change)  # type: ignore[arg-type]  # values are the test's input


def test_a_node_is_not_its_own_peer() -> None:
    with pytest.raises(ValueError, match="own peer"):
        make_engine("a").add_peer("a", T0)


def test_add_peer_is_idempotent_and_pulls_once() -> None:
    a = make_engine("a")
    out = a.add_peer("b", T0)
    assert [type(o.message) for o in out] == [SyncRequest]
    assert a.add_peer("b", T0) == []
    assert [(e.peer, e.state, e.previous) for e in a.drain_peer_events()] == [("b", ALIVE, None)]


def test_sync_with_an_unknown_peer_raises() -> None:
    with pytest.raises(KeyError):
        make_engine("a").sync_with("b", T0)


def test_unknown_message_type_raises_type_error() -> None:
    link = linked("a", "b")
    with pytest.raises(TypeError, match="not a gossip message: str"):
        link["a"].handle("b", "hello", T0)  # type: ignore[arg-type]  # deliberately wrong


def test_sync_response_part_out_of_range_raises() -> None:
    link = linked("a", "b")
    bad = SyncResponse(1, 2, 2, (), (), {})
    with pytest.raises(ValueError, match="out of range"):
        link["a"].handle("b", bad, T0)


# -------------------------------------------------------------- delta push
def test_writes_reach_peers_on_flush() -> None:
    link = linked("a", "b", "c")
    a = link["a"]
    a.set("k", "v", T0)
    assert a.delete("gone", T0) is False
    assert a.pending == 2
    link.flush("a", T0)
    assert a.pending == 0
    assert values(link, "b") == values(link, "c") == {"k": "v"}
    assert link["b"].replica.entries["gone"].deleted
    assert a.stats.pushes_sent == 2 and a.stats.entries_pushed == 4


def test_flush_with_nothing_queued_sends_nothing() -> None:
    link = linked("a", "b")
    assert link["a"].flush(T0) == ([], 0)


def test_delete_reports_whether_a_live_value_was_there() -> None:
    a = make_engine("a")
    a.set("k", "v", T0)
    assert a.delete("k", T0) is True
    assert a.delete("k", T0) is False


def test_local_and_remote_changes_are_reported() -> None:
    link = linked("a", "b")
    link["a"].set("user:1", "v", T0)
    link["a"].invalidate_pattern("user:*", T0 + 0.001)
    local = link["a"].drain_changes()
    assert [(c.key, c.kind, c.remote) for c in local] == [
        ("user:1", "set", False),
        ("user:1", "invalidate", False),
    ]
    link["b"].set("user:2", "w", T0)
    link.flush("b", T0)
    link.flush("a", T0 + 0.002)
    remote = link["b"].drain_changes()
    assert [(c.key, c.kind, c.remote) for c in remote] == [
        ("user:2", "set", False),
        ("user:2", "invalidate", True),
    ]
    assert link["b"].drain_changes() == []


def test_stream_claims_raise_marks_without_anti_entropy_when_nothing_is_lost() -> None:
    link = linked("a", "b")
    a, b = link["a"], link["b"]
    for i in range(5):
        a.set(f"k{i}", i, T0 + i)
        link.flush("a", T0 + i)
        assert b.replica.marks["a"] == a.replica.marks["a"]
    assert link.sent(SyncRequest) == []
    # b is caught up: an exchange would send nothing.
    assert a.replica.changes_since(b.replica.marks) == ([], [])


def test_a_lost_push_leaves_a_gap_that_later_pushes_do_not_cover() -> None:
    lost: list[object] = []
    blocking = [False]

    def drop(sender: str, receiver: str, message: object) -> bool:
        if blocking[0] and (not lost or isinstance(message, SyncRequest)):
            lost.append(message)
            return True
        return False

    link = linked("a", "b", drop=drop)
    blocking[0] = True
    a, b = link["a"], link["b"]
    a.set("k1", 1, T0)
    before = b.replica.marks.get("a", -1)
    link.flush("a", T0)  # lost
    a.set("k2", 2, T0 + 1)
    link.flush("a", T0 + 1)  # arrives, but claims only (k1, k2]
    assert values(link, "b", T0 + 1) == {"k2": 2}
    assert b.replica.marks.get("a", -1) == before
    # b noticed the gap and asked at once (that request was lost too).
    assert [type(m) for m in lost] == [Push, SyncRequest]
    # The gap shows in b's marks, so anti-entropy repairs it.
    blocking[0] = False
    link.sync("b", "a", T0 + 2)
    assert values(link, "b", T0 + 2) == {"k1": 1, "k2": 2}
    assert b.replica.marks["a"] == a.replica.marks["a"]
    ((_, _, response),) = link.sent(SyncResponse)
    assert [k for k, _ in response.entries] == ["k1", "k2"]


def test_a_gap_in_the_stream_starts_a_catch_up_at_once() -> None:
    lose_first = [False]

    def drop(sender: str, receiver: str, message: object) -> bool:
        first, lose_first[0] = lose_first[0], False
        return first

    link = linked("a", "b", drop=drop)
    lose_first[0] = True
    link["a"].set("k1", 1, T0)
    link.flush("a", T0)  # lost
    link["a"].set("k2", 2, T0 + 1)
    link.flush("a", T0 + 1)
    assert values(link, "b", T0 + 1) == {"k1": 1, "k2": 2}
    assert link["b"].replica.marks["a"] == link["a"].replica.marks["a"]


def test_reordered_pushes_do_not_advance_past_the_gap() -> None:
    a = make_engine("a")
    b = make_engine("b")
    a.add_peer("b", T0)
    b.add_peer("a", T0)
    a.set("k1", 1, T0)
    first = a.flush(T0)[0][0].message
    a.set("k2", 2, T0 + 1)
    second = a.flush(T0 + 1)[0][0].message
    b.handle("a", second, T0 + 1)
    assert "a" not in b.replica.marks
    b.handle("a", first, T0 + 1)
    assert b.replica.marks["a"] == first.upto
    b.handle("a", second, T0 + 1)  # a duplicate now chains
    assert b.replica.marks["a"] == second.upto == a.replica.marks["a"]


def test_a_relayed_push_does_not_raise_the_origins_mark() -> None:
    b = make_engine("b")
    b.add_peer("c", T0)
    relay = Push((("k", make_entry("v", T0, "a")),), (), None, -1, -1, 1)
    b.handle("c", relay, T0)
    assert "a" not in b.replica.marks
    forged = Push((("k2", make_entry("v", T0, "a")),), (), "a", -1, ts(T0))
    b.handle("c", forged, T0)  # a claim for "a" sent by "c" is not a stream claim
    assert "a" not in b.replica.marks


def test_a_resolver_keeping_our_older_write_queues_nothing() -> None:
    """Regression: the kept version was re-queued, out of stamp order, so a chunked
    push claimed a range that did not hold it and a receiver's mark skipped it."""
    a = make_engine("a", replace(FAST, max_message_entries=1), resolver=max_value_wins)
    a.add_peer("b", T0)
    a.set("k", 9, T0)
    a.set("j", 1, T0 + 0.001)
    a.drain_changes()
    kept = a.set("k", 1, T0 + 0.002)  # max value wins: 9 stays
    assert kept.value == 9
    assert a.drain_changes() == []
    assert a.pending == 2
    pushes = [o.message for o in a.flush(T0 + 0.003)[0]]
    assert [[k for k, _ in p.entries] for p in pushes] == [["k"], ["j"]]
    for p in pushes:
        assert p.since < p.upto
        assert all(p.since < e.ts <= p.upto for _, e in p.entries)


# ----------------------------------------------------------- write-through
def test_write_through_acks_are_awaited_per_peer() -> None:
    link = linked("a", "b", "c")
    a = link["a"]
    a.set("k", "v", T0)
    out, ack_id = a.flush(T0, ack=True)
    assert ack_id and a.unacked(ack_id) == {"b", "c"}
    for o in out:
        if o.peer == "b":
            link.deliver("a", [o], T0)
    assert a.unacked(ack_id) == {"c"}
    assert link.sent(Ack) == [("b", "a", Ack(ack_id))]
    a.peer_unreachable("c", T0)
    assert a.unacked(ack_id) == frozenset()
    a.forget_ack(ack_id)
    assert a.unacked(ack_id) == frozenset()


def test_write_through_stops_waiting_for_a_peer_that_dies() -> None:
    link = linked("a", "b")
    a = link["a"]
    a.set("k", "v", T0)
    _, ack_id = a.flush(T0, ack=True)  # never delivered
    assert a.unacked(ack_id) == {"b"}
    a.tick(T0 + FAST.dead_after + 0.1)
    assert a.peers["b"].state == DEAD
    assert a.unacked(ack_id) == frozenset()


def test_write_through_flush_after_the_timer_sent_the_writes_is_an_ack_barrier() -> None:
    link = linked("a", "b")
    a = link["a"]
    a.set("k", "v", T0)
    link.flush("a", T0)  # the timer took the write, without asking for an ack
    out, ack_id = a.flush(T0, ack=True)
    assert ack_id and [o.message for o in out] == [Push((), (), None, -1, -1, 0, ack_id)]
    assert a.unacked(ack_id) == {"b"}
    link.deliver("a", out, T0)
    assert a.unacked(ack_id) == frozenset()


def test_write_through_with_no_peer_needs_no_ack() -> None:
    a = make_engine("a")
    a.set("k", "v", T0)
    out, ack_id = a.flush(T0, ack=True)
    assert (out, ack_id) == ([], 0)


def test_removed_peer_is_no_longer_awaited() -> None:
    link = linked("a", "b", "c")
    a = link["a"]
    a.set("k", "v", T0)
    _, ack_id = a.flush(T0, ack=True)
    a.remove_peer("c")
    a.remove_peer("c")
    assert a.unacked(ack_id) == {"b"}
    assert "c" not in a.peers and "c" not in a.live_peers()
    assert a.drain_peer_events()[-1] == PeerEvent("c", DEAD, ALIVE)


# ----------------------------------------------------- on-demand and fetch
def test_on_demand_pushes_stubs_and_fetch_fills_them() -> None:
    link = linked("a", "b", config=replace(FAST, on_demand=True))
    a, b = link["a"], link["b"]
    a.set("k", encode_value("k", {"big": [1, 2, 3]}), T0)
    a.delete("gone", T0)
    link.flush("a", T0)
    assert values(link, "b") == {"k": NOT_HELD}
    assert b.replica.entries["gone"].deleted  # deletes carry no value to hold back
    link.deliver("b", b.fetch(["k", "missing"], T0), T0)
    assert values(link, "b") == {"k": {"big": [1, 2, 3]}}
    ((_, _, reply),) = link.sent(FetchReply)
    assert [k for k, _ in reply.entries] == ["k"]


def test_fetch_after_local_eviction() -> None:
    link = linked("a", "b")
    link["a"].set("k", "v", T0)
    link.flush("a", T0)
    assert link["b"].replica.evict("k")
    assert values(link, "b") == {"k": NOT_HELD}
    link.deliver("b", link["b"].fetch(["k"], T0), T0)
    assert values(link, "b") == {"k": "v"}


def test_fetch_is_not_answered_with_stubs_or_expired_values() -> None:
    link = linked("a", "b")
    a = link["a"]
    a.set("stub", "v", T0)
    a.replica.evict("stub")
    a.set("old", "v", T0, expires=T0 + 1)
    reply = a.handle("b", Fetch(1, ("stub", "old", "none")), T0 + 2)
    assert reply == [Outgoing("b", FetchReply(1, ()))]


# -------------------------------------------------------------- membership
def test_membership_alive_suspect_dead_and_back_with_a_catch_up_pull() -> None:
    link = linked("a", "b")
    a = link["a"]
    a.drain_peer_events()
    a.tick(T0)  # draws the first anti-entropy time
    a.tick(T0 + FAST.suspect_after + 0.01)
    assert a.peers["b"].state == SUSPECT
    assert a.live_peers() == ["b"]
    a.tick(T0 + FAST.dead_after + 0.01)
    assert a.peers["b"].state == DEAD
    assert a.live_peers() == []
    assert [(e.state, e.previous) for e in a.drain_peer_events()] == [
        (SUSPECT, ALIVE),
        (DEAD, SUSPECT),
    ]
    # Anything heard from b brings it back and starts a catch-up exchange at once.
    out = a.handle("b", Ping(0), T0 + 3)
    assert a.peers["b"].state == ALIVE
    assert [type(o.message) for o in out] == [SyncRequest]
    assert [(e.state, e.previous) for e in a.drain_peer_events()] == [(ALIVE, DEAD)]


def pings_over(engine_state: str, seconds: float) -> int:
    a = make_engine("a")
    a.add_peer("b", T0)
    a.peers["b"].state = engine_state
    a.peers["b"].last_heard = T0 + 100  # not silent: no state change
    ticks = [T0 + i * 0.01 for i in range(1, int(seconds * 100) + 1)]
    return sum(isinstance(o.message, Ping) for t in ticks for o in a.tick(t))


def test_quiet_links_carry_pings_and_dead_peers_are_pinged_less() -> None:
    alive, dead = pings_over(ALIVE, 4.0), pings_over(DEAD, 4.0)
    assert 30 <= alive <= 40  # every heartbeat_interval (0.1 s)
    assert 7 <= dead <= 10  # every 4 heartbeat intervals


def test_a_message_from_an_unknown_node_adds_it_as_a_peer() -> None:
    a = make_engine("a")
    out = a.handle("z", Ping(0), T0)
    assert "z" in a.peers
    assert [type(o.message) for o in out] == [SyncRequest]


def test_unreachable_peer_gets_no_pushes_until_reachable_again() -> None:
    link = linked("a", "b")
    a = link["a"]
    a.peer_unreachable("b", T0)
    a.peer_unreachable("nobody", T0)
    assert a.peers["b"].state == SUSPECT and a.live_peers() == []
    a.set("k", "v", T0)
    assert a.flush(T0) == ([], 0)
    out = a.peer_reachable("b", T0 + 1)
    assert a.peers["b"].state == ALIVE and a.live_peers() == ["b"]
    link.deliver("a", out, T0 + 1)
    assert values(link, "b", T0 + 1) == {"k": "v"}
    assert [type(o.message) for o in a.peer_reachable("new", T0 + 1)] == [SyncRequest]


# ------------------------------------------------------------ anti-entropy
def test_anti_entropy_is_push_pull() -> None:
    link = linked("a", "b", drop=lambda s, r, m: isinstance(m, Push))
    link["a"].set("ka", 1, T0)
    link["b"].set("kb", 2, T0)
    link.flush("a", T0)
    link.flush("b", T0)
    link.sync("a", "b", T0 + 1)
    assert values(link, "a", T0 + 1) == values(link, "b", T0 + 1) == {"ka": 1, "kb": 2}
    assert len(link.sent(SyncRequest)) == 2  # b asked back in the same round
    assert link["a"].replica.marks == link["b"].replica.marks


def test_tick_runs_anti_entropy_and_collection() -> None:
    link = linked("a", "b", drop=lambda s, r, m: isinstance(m, Push), grace=1.0)
    a = link["a"]
    a.set("k", "v", T0)
    a.set("t", "v", T0, expires=T0 + 0.1)
    now = T0
    while now < T0 + 2 * FAST.anti_entropy_interval:
        link.tick_all(now)
        now += 0.01
    assert values(link, "b", now) == {"k": "v"}
    assert link.sent(SyncRequest)
    a.drain_changes()
    link.tick_all(now + 2 * FAST.gc_interval)
    expired = [c for c in a.drain_changes() if c.kind == "expire"]
    assert [c.key for c in expired] == ["t"]
    assert a.stats.collected == 1 and "t" not in a.replica.entries


def test_next_deadline_tracks_pending_work() -> None:
    a = make_engine("a")
    a.add_peer("b", T0)
    a.tick(T0)
    idle = a.next_deadline()
    a.set("k", "v", T0)
    assert a.next_deadline() <= T0 + FAST.sync_interval <= idle


def test_only_one_timed_pull_is_in_flight_and_a_lost_one_is_given_up() -> None:
    a = make_engine("a")
    a.add_peer("b", T0)  # request lost: no answer ever comes
    a.add_peer("c", T0)
    assert a.stats.sync_requests_sent == 1
    a.tick(T0)
    now, requests = T0, []
    while now < T0 + 4 * FAST.anti_entropy_interval:
        now += 0.01
        requests += [o for o in a.tick(now) if isinstance(o.message, SyncRequest)]
    assert requests, "a lost pull must not block anti-entropy for good"
    assert a.stats.sync_requests_sent >= 2


def test_chunked_sync_response_adopts_marks_only_when_every_part_merged() -> None:
    config = replace(FAST, max_message_entries=3)
    a, b = make_engine("a", config), make_engine("b", config)
    a.add_peer("b", T0)
    b.add_peer("a", T0)
    for i in range(10):
        a.set(f"k{i}", i, T0 + i / 1000)
    request = b.sync_with("a", T0)[0].message
    parts = [o.message for o in a.handle("b", request, T0) if isinstance(o.message, SyncResponse)]
    assert [p.parts for p in parts] == [4] * 4
    for part in reversed(parts[1:]):
        b.handle("a", part, T0)
        received = b.stats.entries_received
        b.handle("a", part, T0)  # a duplicate part is skipped
        assert b.stats.entries_received == received
    assert len(b.replica.entries) == 7
    assert "a" not in b.replica.marks
    b.handle("a", parts[0], T0)
    assert len(b.replica.entries) == 10
    assert b.replica.marks["a"] == a.replica.marks["a"]
    assert b.stats.syncs_completed == 1
    assert b.peers["a"].pulling is None


def test_an_incomplete_exchange_times_out() -> None:
    # Shorter than the two quiet anti-entropy intervals after which a pull is given up.
    config = replace(FAST, max_message_entries=1, exchange_timeout=0.1)
    a, b = make_engine("a", config), make_engine("b", config)
    a.add_peer("b", T0)
    b.add_peer("a", T0)
    a.set("k1", 1, T0)
    a.set("k2", 2, T0)
    request = b.sync_with("a", T0)[0].message
    first, second = (o.message for o in a.handle("b", request, T0))
    b.handle("a", first, T0)
    assert b.peers["a"].pulling is not None
    late = T0 + config.exchange_timeout + 0.05
    b.tick(late)
    assert b.peers["a"].pulling is None
    b.handle("a", second, late)  # too late: the first part was given up with the exchange
    assert "a" not in b.replica.marks


def test_a_drifting_entry_blocks_mark_adoption_and_is_counted() -> None:
    link = linked("a", "b")
    b = link["b"]
    future = make_entry("x", T0 + 3600, "a")
    response = SyncResponse(
        99, 0, 1, (("k", future), ("ok", make_entry(1, T0, "a"))), (), {"a": ts(T0 + 3600)}
    )
    b.handle("a", response, T0)
    assert b.stats.refused_drift == 1 and b.replica.refused_drift == 1
    assert "k" not in b.replica.entries and "ok" in b.replica.entries
    assert b.replica.marks.get("a", -1) < ts(T0 + 3600)
    push = Push((("k", future),), (), "a", -1, future.ts)
    b.handle("a", push, T0)
    assert b.replica.marks.get("a", -1) < future.ts
    assert b.stats.refused_drift == 2


def test_a_drifting_pattern_tombstone_is_refused() -> None:
    link = linked("a", "b")
    link["b"].set("user:1", "v", T0)
    tomb = PatternTombstone("user:*", ts(T0 + 3600), "a")
    link["b"].handle("a", Push((), (tomb,), "a", -1, tomb.ts), T0)
    assert values(link, "b") == {"user:1": "v"}
    assert link["b"].stats.refused_drift == 1


# ----------------------------------------------------------------- chunking
def test_big_pushes_are_chunked_and_their_claims_chain() -> None:
    config = replace(FAST, max_message_entries=4)
    link = linked("a", "b", config=config)
    a, b = link["a"], link["b"]
    for i in range(10):
        a.set(f"k{i}", i, T0 + i / 1000)
    a.invalidate_pattern("zz*", T0 + 0.011)
    out, _ = a.flush(T0 + 0.02)
    pushes = [o.message for o in out]
    assert [len(p.entries) + len(p.patterns) for p in pushes] == [4, 4, 3]
    assert [p.since for p in pushes[1:]] == [p.upto for p in pushes[:-1]]
    assert pushes[-1].upto == a.replica.marks["a"]
    link.deliver("a", out, T0 + 0.02)
    assert b.replica.marks["a"] == a.replica.marks["a"]
    assert len(values(link, "b", T0 + 0.02)) == 10 and "zz*" in b.replica.patterns


def test_pushes_are_chunked_by_bytes_too() -> None:
    config = replace(FAST, max_message_bytes=4096)
    a = make_engine("a", config)
    a.add_peer("b", T0)
    for i in range(4):
        a.set(f"k{i}", "x" * 1500, T0)
    out, _ = a.flush(T0)
    assert [len(o.message.entries) for o in out] == [2, 2]


# ----------------------------------------------------------------- epidemic
def test_epidemic_mode_relays_to_fanout_peers_with_a_hop_limit() -> None:
    config = replace(FAST, fanout=1, max_hops=2, retransmits=1)
    nodes = [f"n{i}" for i in range(6)]
    link = linked(*nodes, config=config)
    link["n0"].set("k", "v", T0)
    link.flush("n0", T0)
    pushes = link.sent(Push)
    assert max(m.hops for _, _, m in pushes) <= 2
    assert all(
        len([p for p in pushes if p[0] == n and p[2].hops == h]) <= 1
        for n in nodes
        for h in range(3)
    )


def test_epidemic_mode_retransmits_on_later_flushes() -> None:
    config = replace(FAST, fanout=1, retransmits=3)
    link = linked("a", "b", "c", "d", config=config, drop=lambda s, r, m: isinstance(m, Push))
    a = link["a"]
    a.set("k", "v", T0)
    sends = [len(a.flush(T0 + i)[0]) for i in range(5)]
    assert sends == [2, 1, 0, 0, 0]  # the push + a relay, then one more relay
    assert a.stats.relays_sent == 2


def test_a_pattern_tombstone_already_held_is_not_relayed_again() -> None:
    """Regression: freshness was judged by identity, so a receiver holding the very
    object (as in the simulator, where messages are not copied) relayed it again and
    again: an exponential storm up to max_hops."""
    config = replace(FAST, fanout=2, retransmits=1)
    b = make_engine("b", config)
    for peer in ("a", "c", "d"):
        b.add_peer(peer, T0)
    tomb = PatternTombstone("user:*", ts(T0), "a")
    push = Push((), (tomb,), None, -1, -1, 1)
    assert [o.message.patterns for o in b.handle("a", push, T0)] == [(tomb,), (tomb,)]
    assert b.handle("c", push, T0) == []  # the same object again
    assert b.handle("d", replace(push, hops=2), T0) == []
    assert b.handle("d", Push((), (PatternTombstone("user:*", ts(T0), "a"),)), T0) == []


def test_epidemic_invalidation_does_not_storm_in_the_simulator() -> None:
    sim = SimulatedNetwork(8, seed=1, config=replace(FAST, fanout=2), tick=0.01)
    sim.run(0.5)
    sent = sim.stats.sent
    sim.invalidate_pattern("n0", "user:*")
    sim.run(0.5)
    assert all("user:*" in n.replica.patterns for n in sim.nodes.values())
    assert sim.stats.sent - sent < 2000


def test_epidemic_mode_converges_on_a_lossless_network() -> None:
    config = replace(FAST, fanout=2)
    nodes = [f"n{i}" for i in range(12)]
    link = linked(*nodes, config=config)
    link["n0"].set("k", "v", T0)
    for i in range(6):
        for n in nodes:
            link.flush(n, T0 + i)
    assert all(values(link, n, T0 + 6) == {"k": "v"} for n in nodes)


# ------------------------------------------------------------------ events
def test_undrained_events_are_bounded_and_drops_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "MAX_PENDING_EVENTS", 3)
    a = make_engine("a")
    for peer in ("b", "c", "d", "e"):
        a.add_peer(peer, T0)
    for i in range(5):
        a.set(f"k{i}", i, T0)
    assert len(a.drain_changes()) == 3
    assert len(a.drain_peer_events()) == 3
    assert a.stats.events_dropped == 3


# -------------------------------------------------------------- odds & ends
def test_take_pending_hands_over_queued_deltas_in_stamp_order() -> None:
    a = make_engine("a")
    a.set("k2", 2, T0)
    a.set("k1", 1, T0)
    a.set("k2", 3, T0)
    a.invalidate_pattern("x*", T0)
    entries, patterns = a.take_pending()
    assert [(k, e.value) for k, e in entries] == [("k1", 1), ("k2", 3)]
    assert [p.pattern for p in patterns] == ["x*"]
    assert a.pending == 0 and a.take_pending() == ([], [])


def test_an_ack_barrier_needs_a_peer() -> None:
    a = make_engine("a")
    assert a.flush(T0, ack=True) == ([], 0)


def test_stray_acks_and_repeated_link_events_are_harmless() -> None:
    link = linked("a", "b")
    a = link["a"]
    assert a.handle("b", Ack(12345), T0) == []
    a.peer_unreachable("b", T0)
    a.peer_unreachable("b", T0)  # already suspect
    assert a.peers["b"].state == SUSPECT
    link.deliver("a", a.peer_reachable("b", T0), T0)
    link.deliver("a", a.peer_reachable("b", T0), T0)  # already alive: just catch up
    assert a.peers["b"].state == ALIVE


def test_next_deadline_before_the_first_tick() -> None:
    a = make_engine("a")
    assert a.next_deadline() == 0.0


def test_a_flush_cuts_pattern_tombstones_to_the_per_message_cap_and_claims_still_chain() -> None:
    config = replace(FAST, max_message_patterns=7)
    link = linked("a", "b", config=config)
    a, b = link["a"], link["b"]
    for i in range(30):
        a.set(f"k{i}", i, T0 + i / 1000)
        a.invalidate_pattern(f"p{i}:*", T0 + i / 1000)
    link.flush("a", T0 + 0.1)
    pushes = [m for _, _, m in link.log if isinstance(m, Push)]
    assert len(pushes) >= 30 // 7 + 1
    assert all(len(p.patterns) <= 7 for p in pushes)
    assert set(b.replica.patterns) == {f"p{i}:*" for i in range(30)}
    assert len(b.replica.entries) == 30
    assert b.replica.marks["a"] == a.replica.marks["a"]  # every claim chained


def test_a_pattern_tombstone_beyond_the_cap_is_refused_and_marks_stay() -> None:
    link = linked("a", "b")
    b = link["b"]
    b.replica._pattern_index.limit = 2
    tombs = tuple(PatternTombstone(f"p{i}:*", ts(T0 + i), "a") for i in range(3))
    out = b.handle("a", Push((), tombs, "a", -1, ts(T0 + 2)), T0 + 3)
    assert set(b.replica.patterns) == {"p0:*", "p1:*"}
    assert b.stats.refused_patterns == 1
    assert b.replica.marks.get("a", -1) < ts(T0 + 2)
    assert out == []  # and no exception: a refusal, not junk
