"""Anti-entropy answers built a slice at a time: the same answer, in bounded steps."""

from __future__ import annotations

from dataclasses import replace

from crdtcache.core import GossipEngine, Outgoing, SyncRequest, SyncResponse
from crdtcache.core import _answers as answers
from tests.core.helpers import FAST, T0, make_engine


def _answer(parts: list[SyncResponse]) -> tuple[dict[str, object], set[str]]:
    entries = {k: e for p in parts for k, e in p.entries}
    patterns = {t.pattern for p in parts for t in p.patterns}
    return entries, patterns


def _responses(out: list[Outgoing]) -> list[SyncResponse]:
    return [o.message for o in out if isinstance(o.message, SyncResponse)]


def _run(engine: GossipEngine, first: list[Outgoing], now: float) -> tuple[list[SyncResponse], int]:
    """Tick ``engine`` until its answers are done; the parts and the number of ticks."""
    parts = _responses(first)
    steps = 0
    while engine._answers.pending():
        parts += _responses(engine.tick(now))
        steps += 1
    return parts, steps


def test_a_large_answer_is_the_whole_answer_in_bounded_steps() -> None:
    config = replace(FAST, max_message_patterns=5)
    a = make_engine("a", config)
    a.add_peer("b", T0)
    count = 3 * answers.SCAN_SLICE + 17
    for i in range(count):
        a.set(f"k{i}", i, T0)
    for i in range(12):
        a.invalidate_pattern(f"gone{i}:*", T0)
    now = T0 + 1
    first = a.handle("b", SyncRequest(1, {}), now)
    parts, steps = _run(a, first, now)
    entries, patterns = _answer(parts)
    assert entries == a.replica.entries and patterns == set(a.replica.patterns)
    assert {p.part for p in parts} == set(range(parts[0].parts))
    assert all(len(p.patterns) <= 5 for p in parts)
    # The scan took several steps, and no step emitted more than its budget.
    assert steps >= count // answers.SCAN_SLICE
    assert all(p.marks == a.replica.marks for p in parts)


def test_an_answer_is_the_map_as_it_was_when_it_started() -> None:
    a = make_engine("a")
    a.add_peer("b", T0)
    for i in range(2 * answers.SCAN_SLICE):
        a.set(f"k{i}", i, T0)
    before = dict(a.replica.entries)
    marks = dict(a.replica.marks)
    first = a.handle("b", SyncRequest(1, {}), T0)
    a.delete("k0", T0 + 0.5)  # written after the start: not in this answer
    parts, _ = _run(a, first, T0 + 0.5)
    entries, _ = _answer(parts)
    assert entries == before and all(p.marks == marks for p in parts)


def test_requests_from_one_peer_wait_and_replace_each_other() -> None:
    a = make_engine("a", replace(FAST, answer_interval=1.0))
    a.add_peer("b", T0)
    for i in range(2 * answers.SCAN_SLICE):
        a.set(f"k{i}", i, T0)
    now = T0 + 1
    for exchange in range(1, 101):
        a.handle("b", SyncRequest(exchange, {}), now)
    assert a.stats.sync_requests_replaced == 98  # one started, one waits: the newest
    parts, _ = _run(a, [], now)
    answered = {p.exchange for p in parts}
    assert answered == {1, 100}


def test_the_rate_of_answers_to_one_peer_is_bounded() -> None:
    a = make_engine("a", replace(FAST, answer_interval=1.0))
    a.add_peer("b", T0)
    a.set("k", 1, T0)
    now = T0 + 1
    answered = []
    for exchange in range(1, 11):
        answered += [m.exchange for m in _responses(a.handle("b", SyncRequest(exchange, {}), now))]
    assert answered == list(range(1, answers.ANSWER_BURST + 1))  # the burst, then wait
    assert a.next_deadline() <= now + 1.0
    assert [m.exchange for m in _responses(a.tick(now + 1.0))] == [10]  # the newest waiting request


def test_no_answer_is_built_for_a_congested_peer() -> None:
    a = make_engine("a")
    a.add_peer("b", T0)
    a.set("k", 1, T0)
    a.handle("b", SyncRequest(1, {}), T0)  # a first answer, so that b is known
    a.set_congested("b", True)
    assert a.handle("b", SyncRequest(2, {}), T0 + 1) == []
    assert _responses(a.tick(T0 + 1)) == []
    a.set_congested("b", False)
    assert [m.exchange for m in _responses(a.tick(T0 + 1))] == [2]


def test_a_lost_peer_leaves_no_answer_behind() -> None:
    a = make_engine("a")
    a.add_peer("b", T0)
    for i in range(2 * answers.SCAN_SLICE):
        a.set(f"k{i}", i, T0)
    a.handle("b", SyncRequest(1, {}), T0)
    assert a._answers.pending()
    a.peer_unreachable("b", T0)
    assert not a._answers.pending()


def test_a_fast_answer_when_nothing_is_newer() -> None:
    a = make_engine("a")
    a.add_peer("b", T0)
    a.set("k", 1, T0)
    a.invalidate_pattern("p:*", T0)
    (message,) = _responses(a.handle("b", SyncRequest(1, dict(a.replica.marks)), T0))
    assert (message.parts, message.entries, message.patterns) == (1, (), ())


def test_a_peer_that_lacks_little_is_answered_at_once_from_the_change_log() -> None:
    """A scan of a map this size takes several steps; the change log finds the few
    entries the peer lacks at once, and the answer is whole in the first step."""
    a = make_engine("a")
    a.add_peer("b", T0)
    for i in range(3 * answers.SCAN_SLICE):
        a.set(f"k{i}", i, T0)
    behind = dict(a.replica.marks)
    for i in range(5):
        a.set(f"k{i * 1000}", -i, T0 + 1)
    parts = _responses(a.handle("b", SyncRequest(1, behind), T0 + 1))
    assert not a._answers.pending()
    entries, _ = _answer(parts)
    assert sorted(entries) == sorted(f"k{i * 1000}" for i in range(5))
    assert all(p.marks == a.replica.marks for p in parts)
