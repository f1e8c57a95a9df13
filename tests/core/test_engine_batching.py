"""Adaptive batching: an idle engine's write is due at once, a busy one's coalesce.

The engine only says when a flush is due (``flush_deadline``, ``flush_due``); these
tests drive it as a transport would: flush when due, never on a fixed timer.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtcache.core import GossipEngine, Push
from tests.core.helpers import FAST, T0, budget, linked, make_engine

INTERVAL = FAST.sync_interval
BURST = FAST.flush_burst


def engine(**config: object) -> GossipEngine:
    """An engine for "a" with one linked peer "b" (its pushes are returned, not sent)."""
    e = make_engine("a", replace(FAST, **config))  # type: ignore[arg-type]  # test overrides
    e.add_peer("b", T0)
    return e


def pushed(out: object) -> list[str]:
    """The keys carried by the pushes in ``out`` (a flush's messages)."""
    return [k for _, m in out if isinstance(m, Push) for k, _ in m.entries]  # type: ignore[attr-defined]


def test_an_idle_engine_has_no_flush_deadline() -> None:
    e = engine()
    for i in range(10):
        e.tick(T0 + i * INTERVAL / 3)
    assert e.flush_deadline() is None
    assert not e.flush_due(T0 + 1)


def test_a_write_on_an_idle_engine_is_due_at_once() -> None:
    e = engine()
    e.tick(T0)
    e.set("k", "v", T0 + 0.001)  # within sync_interval of an idle tick
    assert e.next_deadline() <= T0 + 0.001
    due = e.flush_deadline()
    assert due is not None and due <= T0 + 0.001
    assert e.flush_due(T0 + 0.001)
    assert pushed(e.tick(T0 + 0.001)) == ["k"]


def test_lone_writes_closer_than_sync_interval_each_leave_at_once() -> None:
    e = engine()
    now = T0
    for i in range(3 * BURST):
        now += INTERVAL / 2  # slower than the budget refills: never spent
        e.set(f"k{i}", i, now)
        assert e.flush_due(now)
        assert pushed(e.flush(now)[0]) == [f"k{i}"]


def test_once_the_budget_is_spent_writes_coalesce_and_are_due_within_sync_interval() -> None:
    e = engine()
    for i in range(BURST):
        e.set(f"eager{i}", i, T0)
        assert e.flush_due(T0)
        e.flush(T0)
    e.set("a", 1, T0)
    due = e.flush_deadline()
    assert due is not None and T0 < due <= T0 + INTERVAL
    assert not e.flush_due(T0)
    e.set("b", 2, (T0 + due) / 2)
    e.set("c", 3, (T0 + due) / 2)
    assert e.flush_deadline() == due  # later writes join the flush already due
    assert not e.tick((T0 + due) / 2)
    assert pushed(e.tick(due)) == ["a", "b", "c"]


def test_with_a_burst_of_one_each_flush_waits_for_the_interval() -> None:
    e = engine(flush_burst=1)
    e.set("a", 1, T0)
    e.flush(T0)
    e.set("b", 2, T0 + INTERVAL / 4)
    assert e.flush_deadline() == T0 + INTERVAL


def test_a_burst_of_writes_produces_few_flushes() -> None:
    link = linked("a", "b", config=FAST)
    a = link["a"]
    now, flushes, writes = T0, 0, 1000
    for i in range(writes):
        now = T0 + i * INTERVAL / 100  # 1000 writes in 10 sync intervals
        a.set(f"k{i}", i, now)
        if a.flush_due(now):
            link.flush("a", now)
            flushes += 1
    while (due := a.flush_deadline()) is not None:
        link.flush("a", due)
        flushes += 1
    # The budget's burst, then one flush per refill: not one per write.
    assert flushes <= BURST + 10 * BURST + 1
    assert a.stats.pushes_sent == flushes
    assert len(link["b"].replica.entries) == writes


def test_a_burst_within_one_step_is_one_flush() -> None:
    e = engine()
    for i in range(500):
        e.set(f"k{i}", i, T0)
    assert e.flush_due(T0)
    assert len(pushed(e.flush(T0)[0])) == 500
    assert e.flush_deadline() is None


def test_the_durability_gate_holds_writes_without_a_deadline() -> None:
    e = engine()
    e.durable = -1  # nothing stored yet
    e.set("k", "v", T0)
    assert e.flush_deadline() is None  # no timer for what may not leave
    assert not pushed(e.tick(T0 + 1))
    e.made_durable(e.replica.marks["a"])
    assert e.flush_due(T0 + 1)
    e.set("later", 1, T0 + 1)  # not stored: it waits, the stored one leaves
    assert pushed(e.tick(T0 + 1)) == ["k"]
    assert e.flush_deadline() is None and e.pending == 1


def test_a_wall_clock_stepping_back_does_not_hold_writes() -> None:
    e = engine(flush_burst=1)
    e.set("a", 1, T0 + 10)
    e.flush(T0 + 10)
    e.set("b", 2, T0)  # the clock stepped back 10 s
    assert e.flush_due(T0)
    assert pushed(e.flush(T0)[0]) == ["b"]
    e.set("c", 3, T0 + INTERVAL / 2)
    assert e.flush_deadline() == T0 + INTERVAL  # paced from the new reading


def test_epidemic_relays_alone_are_retransmitted_once_per_interval() -> None:
    link = linked("a", "b", "c", config=replace(FAST, fanout=1, retransmits=3))
    for e in link.engines.values():
        e.flush(T0)  # an (empty) flush: relays alone are paced from the last one
    link["a"].set("k", 1, T0)
    link.flush("a", T0)  # a pushes to one peer, which relays it; all queue retransmits
    deadlines = [e.flush_deadline() for e in link.engines.values()]
    assert any(d is not None for d in deadlines)
    # Relays alone never make a flush due at once: they wait a whole interval.
    assert all(d is None or d == T0 + INTERVAL for d in deadlines)


@settings(max_examples=budget(1))
@given(
    gaps=st.lists(st.floats(0, 3 * INTERVAL), min_size=1, max_size=60),
    burst=st.integers(1, 5),
)
def test_every_write_leaves_within_sync_interval_and_flushes_are_bounded(
    gaps: list[float], burst: int
) -> None:
    """Driven as a transport would (flush when due), for any schedule of writes:

    * every write is flushed at most ``sync_interval`` after it was queued;
    * a write made when no flush happened for ``sync_interval`` leaves at once;
    * no window of ``sync_interval`` holds more than twice ``flush_burst`` flushes
      (the budget's burst plus its refill).
    """
    e = engine(flush_burst=burst)
    queued: dict[str, float] = {}
    sent: dict[str, float] = {}
    flushes: list[float] = []
    now = T0

    def run_until(t: float) -> None:
        nonlocal now
        while (due := e.flush_deadline()) is not None and due <= t:
            now = max(now, due)
            for key in pushed(e.flush(now)[0]):
                sent[key] = now
            flushes.append(now)
        now = t

    for i, gap in enumerate(gaps):
        run_until(now + gap)
        idle = not flushes or flushes[-1] + INTERVAL <= now
        e.set(f"k{i}", i, now)
        queued[f"k{i}"] = now
        if idle:
            assert e.flush_due(now)
    run_until(now + 2 * INTERVAL)
    assert sent.keys() == queued.keys()
    for key, at in queued.items():
        assert sent[key] - at <= INTERVAL + 1e-9
    for i, start in enumerate(flushes):
        within = [t for t in flushes[i:] if t < start + INTERVAL]
        assert len(within) <= 2 * burst
