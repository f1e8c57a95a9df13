"""Shedding stubs and tombstones for room, and the floor that keeps a node correct.

A node short of room forgets stubs and tombstones other nodes wrote (the tier does it
under ``max_size``/``max_memory``; here the simulation does it at random). The floor
then refuses older writes for keys it no longer holds. What must hold, under random
schedules and faults (the convergence suite's), once the network heals:

* nothing is resurrected: a node that shed serves, for every key it holds, exactly the
  model's value and stamp (it may miss a key: at worst a miss);
* every node that never shed converges to the model exactly, even when every other
  node shed (their answers vouch for less, never for what they dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtcache.core import NOT_HELD, Entry, HybridClock, Replica
from crdtcache.testing import SimulatedNetwork
from tests.core.helpers import MAX_OFFSET, T0, budget, describe, ts, views
from tests.core.test_convergence import Schedule, play, schedules


@dataclass(frozen=True)
class Shedding:
    """Which nodes shed, and after which steps (a share of what they may shed)."""

    floored: frozenset[int]
    sheds: tuple[tuple[int, int, float], ...]  # (after step, node, share)


@st.composite
def sheddings(draw: st.DrawFn) -> tuple[Schedule, Shedding]:
    s = draw(schedules())
    floored = draw(st.sets(st.integers(0, s.nodes - 1), min_size=1, max_size=s.nodes - 1))
    step = st.integers(0, len(s.steps) - 1)
    share = st.sampled_from([0.3, 0.7, 1.0])
    sheds = draw(st.lists(st.tuples(step, st.sampled_from(sorted(floored)), share), max_size=12))
    return s, Shedding(frozenset(floored), tuple(sheds))


def shed_some(sim: SimulatedNetwork, node: str, share: float) -> int:
    """Evict, then shed, a share of the entries ``node`` may shed (others' writes)."""
    n = sim.nodes[node]
    if not n.up:
        return 0
    replica = n.replica
    theirs = sorted(k for k, e in replica.entries.items() if e.origin != replica.node)
    chosen = theirs[: int(len(theirs) * share)]
    for key in chosen:
        replica.evict(key)
        replica.shed(key)
    return len(chosen)


def floored_agreement(sim: SimulatedNetwork, floored: set[str]) -> bool:
    at = sim.now + MAX_OFFSET
    expected = sim.expected(at)
    for node, view in views(sim, at).items():
        if node not in floored:
            if view != expected:
                return False
            continue
        for key, (value, stamp) in view.items():
            want = expected.get(key)
            if want is None or want[1] != stamp or (value is not NOT_HELD and value != want[0]):
                return False
    return True


@settings(max_examples=budget(10))
@given(sheddings())
def test_shedding_loses_at_worst_a_miss_and_resurrects_nothing(
    drawn: tuple[Schedule, Shedding],
) -> None:
    s, shedding = drawn
    ids = [f"n{i}" for i in range(s.nodes)]

    def after(sim: SimulatedNetwork, index: int) -> None:
        for at, node, share in shedding.sheds:
            if at == index:
                shed_some(sim, ids[node], share)

    sim = play(s, after)
    for node in sim.nodes.values():
        if not node.up:
            sim.restart(node.id, keep_state=True)
    sim.heal()
    floored = {ids[i] for i in shedding.floored}
    done = sim.run_until(lambda: floored_agreement(sim, floored), 30.0, 0.05)
    assert done is not None, f"{describe(sim)}\nschedule: {s}\nshedding: {shedding}"


# ---------------------------------------------------------------- the replica
def test_shed_raises_the_floor_and_an_older_write_of_a_shed_key_is_refused() -> None:
    replica = Replica(HybridClock("n"))
    replica.merge_entry("j", Entry("v", ts(T0 + 1), "peer"), T0)
    replica.merge_entry("k", Entry("new", ts(T0 + 2), "peer"), T0)
    replica.evict("k")
    assert replica.shed("k") and replica.floor == ts(T0 + 2)
    assert replica.merge_entry("k", Entry("old", ts(T0 + 1), "other"), T0) is None
    assert "k" not in replica.entries and replica.refused_floor == 1
    # Any absent key: its stamp may have been shed too.
    assert replica.merge_entry("new-key", Entry("v", ts(T0 + 1.5), "peer"), T0) is None
    assert replica.merge_entry("k", Entry("newer", ts(T0 + 3), "peer"), T0) is not None
    # A key still held takes writes below the floor as usual (last writer wins).
    assert replica.merge_entry("j", Entry("w", ts(T0 + 1.5), "peer"), T0) is not None


def test_only_stubs_and_tombstones_of_others_are_shed() -> None:
    replica = Replica(HybridClock("n"))
    replica.set("mine", "v", T0)
    replica.delete("mine", T0 + 1)
    replica.merge_entry("theirs", Entry("v", ts(T0), "peer"), T0)
    assert not replica.shed("mine")  # this node's own tombstone: kept
    assert not replica.shed("theirs")  # a held value: evict it first
    assert not replica.shed("absent") and replica.floor == -1


def test_a_node_with_a_floor_vouches_only_above_it_and_never_sends_a_full_state() -> None:
    replica = Replica(HybridClock("n"), tombstone_grace=1.0)
    replica.merge_entry("a", Entry("v", ts(T0), "p"), T0)
    replica.merge_entry("b", Entry("v", ts(T0 + 5), "q"), T0)
    replica.advance_marks({"p": ts(T0 + 10), "q": ts(T0 + 10)})
    replica.collected["p"] = ts(T0 - 10)
    assert replica.answer_terms({}) == ({"p": ts(T0 + 10), "q": ts(T0 + 10)}, True)
    replica.evict("a")
    replica.shed("a")
    marks, full = replica.answer_terms({"p": ts(T0 + 1), "q": ts(T0 - 1)})
    assert (marks, full) == ({"p": ts(T0 + 10)}, False)
