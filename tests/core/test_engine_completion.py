"""Completion events: a write-through ack and a fetch end with an event, never by polling."""

from __future__ import annotations

from crdtcache.core import Ack, FetchReply
from crdtcache.core._completion import AckDone, FetchDone, Waits
from tests.core.helpers import FAST, T0, Link, linked, make_engine


# ----------------------------------------------------------------- acks
def test_ack_done_when_the_last_awaited_peer_acks() -> None:
    link = linked("a", "b", "c")
    a = link["a"]
    a.drain_completions()
    a.set("k", "v", T0)
    out, ack_id = a.flush(T0, ack=True)
    link.deliver("a", [o for o in out if o.peer == "b"], T0)
    assert a.drain_completions() == []  # c has not acked yet
    link.deliver("a", [o for o in out if o.peer == "c"], T0)
    assert a.drain_completions() == [AckDone(ack_id)]
    assert a.drain_completions() == []  # drained once


def test_ack_done_when_the_last_awaited_peer_is_lost() -> None:
    link = linked("a", "b", "c")
    a = link["a"]
    a.set("k", "v", T0)
    out, ack_id = a.flush(T0, ack=True)
    link.deliver("a", [o for o in out if o.peer == "b"], T0)
    a.peer_unreachable("c", T0)
    assert a.drain_completions() == [AckDone(ack_id)]
    assert a.unacked(ack_id) == frozenset()


def test_ack_done_when_the_awaited_peer_dies_or_leaves() -> None:
    for lose in ("dies", "leaves"):
        link = linked("a", "b")
        a = link["a"]
        a.set("k", "v", T0)
        _, ack_id = a.flush(T0, ack=True)  # never delivered
        if lose == "dies":
            a.tick(T0 + FAST.dead_after + 0.1)
        else:
            a.remove_peer("b")
        assert a.drain_completions() == [AckDone(ack_id)], lose


def test_a_barrier_completes_too_and_stray_acks_complete_nothing() -> None:
    link = linked("a", "b")
    a = link["a"]
    a.set("k", "v", T0)
    link.flush("a", T0)
    out, ack_id = a.flush(T0, ack=True)  # an empty push that asks for an ack
    a.handle("b", Ack(ack_id + 100), T0)
    assert a.drain_completions() == []
    link.deliver("a", out, T0)
    assert a.drain_completions() == [AckDone(ack_id)]
    a.handle("b", Ack(ack_id), T0)  # a repeated ack
    assert a.drain_completions() == []


def test_a_forgotten_ack_never_completes() -> None:
    link = linked("a", "b")
    a = link["a"]
    a.set("k", "v", T0)
    out, ack_id = a.flush(T0, ack=True)
    a.forget_ack(ack_id)
    link.deliver("a", out, T0)
    assert a.drain_completions() == []


# --------------------------------------------------------------- fetches
def _evicted_everywhere_but(link: Link, holders: set[str], nodes: list[str]) -> None:
    for node in nodes:
        if node not in holders:
            assert link[node].replica.evict("k")


def test_fetch_done_when_a_reply_brings_every_key() -> None:
    link = linked("a", "b", "c")
    link["a"].set("k", "v", T0)
    link.flush("a", T0)
    _evicted_everywhere_but(link, {"a", "c"}, ["b"])
    b = link["b"]
    b.drain_completions()
    request, out = b.start_fetch(["k"], T0)
    assert request and {o.peer for o in out} == {"a", "c"}
    link.deliver("b", [o for o in out if o.peer == "a"], T0)
    assert b.drain_completions() == [FetchDone(request)]
    link.deliver("b", [o for o in out if o.peer == "c"], T0)  # a late answer
    assert b.drain_completions() == []


def test_fetch_waits_for_the_other_peers_when_one_does_not_hold_the_key() -> None:
    link = linked("a", "b", "c")
    link["a"].set("k", "v", T0)
    link.flush("a", T0)
    _evicted_everywhere_but(link, {"a"}, ["b", "c"])
    b = link["b"]
    b.drain_completions()
    request, out = b.start_fetch(["k"], T0)
    link.deliver("b", [o for o in out if o.peer == "c"], T0)  # c holds only a stub
    assert link.sent(FetchReply)[-1][2] == FetchReply(request, ())
    assert b.drain_completions() == []
    link.deliver("b", [o for o in out if o.peer == "a"], T0)
    assert b.drain_completions() == [FetchDone(request)]
    held = b.replica.lookup("k", T0)
    assert held is not None and held.held


def test_fetch_done_when_every_asked_peer_answered_or_was_lost() -> None:
    link = linked("a", "b", "c")
    link["a"].set("k", "v", T0)
    link.flush("a", T0)
    _evicted_everywhere_but(link, set(), ["a", "b", "c"])  # nobody holds the value
    b = link["b"]
    b.drain_completions()
    request, out = b.start_fetch(["k"], T0)
    link.deliver("b", [o for o in out if o.peer == "a"], T0)
    assert b.drain_completions() == []
    b.peer_unreachable("c", T0)
    assert b.drain_completions() == [FetchDone(request)]


def test_fetch_without_peers_asks_nobody_and_tracks_nothing() -> None:
    a = make_engine("a")
    assert a.start_fetch(["k"], T0) == (0, [])
    assert a.fetch(["k"], T0) == []


def test_a_forgotten_fetch_never_completes() -> None:
    link = linked("a", "b")
    link["a"].set("k", "v", T0)
    link.flush("a", T0)
    link["b"].replica.evict("k")
    b = link["b"]
    b.drain_completions()
    request, out = b.start_fetch(["k"], T0)
    b.forget_fetch(request)
    link.deliver("b", out, T0)
    assert b.drain_completions() == []


# ------------------------------------------------------------ the waits alone
def test_waits_end_once_and_only_for_the_peers_they_wait_for() -> None:
    waits = Waits()
    ack = waits.expect_acks(["b", "c"])
    fetch = waits.expect_fetch(["b"], ["k"])
    assert ack != fetch
    assert waits.peer_lost("z") == []
    assert waits.acked(ack, "b") is None
    assert waits.peer_lost("c") == [AckDone(ack)]
    assert waits.answered(fetch, "b", ["k"]) == FetchDone(fetch)  # nobody left to ask
    assert waits.answered(fetch, "b", []) is None
    assert waits.unacked(ack) == frozenset() and waits.fetch_keys(fetch) == frozenset()
