"""Counters and touches on real gossip engines under random schedules and faults.

Like :mod:`tests.core.test_convergence`, on the simulator: loss, duplication,
reordering (random delays), partitions, crashes and restarts (with their state, as
``persist_path`` keeps it), clock offsets, and the three engine configurations. Two
properties:

* every increment made anywhere is counted once the cluster has converged: each
  counter reads ``start + sum of its deltas`` on every node;
* a touch never decides which value a key holds: after convergence every node holds
  the value of the newest ``set``, as if no touch had been made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtcache.testing import SimulatedNetwork
from tests.core.helpers import FAST, MAX_OFFSET, budget, views
from tests.core.test_convergence import CONFIGS

COUNTERS = ("hits", "rate:1")
VALUES = ("page", "user:1")


@dataclass(frozen=True)
class Schedule:
    """One drawn scenario, printed on failure."""

    seed: int
    nodes: int
    config: str
    loss: float
    duplicate: float
    max_delay: float
    offsets: tuple[float, ...]
    start: int | None
    steps: tuple[tuple[Any, ...], ...]


def _step(n: int) -> st.SearchStrategy[tuple[Any, ...]]:
    node = st.integers(0, n - 1)
    return st.one_of(
        st.tuples(st.just("incr"), node, st.sampled_from(COUNTERS), st.integers(-5, 9)),
        st.tuples(st.just("burst"), st.lists(node, min_size=1, max_size=10)),
        st.tuples(st.just("set"), node, st.sampled_from(VALUES), st.integers(0, 99)),
        st.tuples(st.just("touch"), node, st.sampled_from(VALUES + COUNTERS)),
        st.tuples(st.just("run"), st.sampled_from([0.0, 0.005, 0.02, 0.1, 0.4, 1.5])),
        st.tuples(st.just("partition"), st.lists(st.integers(0, 2), min_size=n, max_size=n)),
        st.tuples(st.just("heal")),
        st.tuples(st.just("crash"), node),
        st.tuples(st.just("restart"), node),
    )


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    n = draw(st.integers(2, 5))
    offset = st.floats(-MAX_OFFSET, MAX_OFFSET, allow_nan=False)
    return Schedule(
        seed=draw(st.integers(0, 2**32 - 1)),
        nodes=n,
        config=draw(st.sampled_from(sorted(CONFIGS))),
        loss=draw(st.sampled_from([0.0, 0.05, 0.2])),
        duplicate=draw(st.sampled_from([0.0, 0.05, 0.2])),
        max_delay=draw(st.sampled_from([0.001, 0.01, 0.05])),
        offsets=tuple(draw(st.lists(offset, min_size=n, max_size=n))),
        start=draw(st.none() | st.integers(-100, 100)),
        steps=tuple(draw(st.lists(_step(n), min_size=8, max_size=60))),
    )


class Run:
    """A schedule played on the simulator, with the deltas each counter received."""

    def __init__(self, s: Schedule) -> None:
        self.s = s
        self.ids = [f"n{i}" for i in range(s.nodes)]
        self.sim = SimulatedNetwork(
            self.ids,
            seed=s.seed,
            config=CONFIGS[s.config],
            loss=s.loss,
            duplicate=s.duplicate,
            delay=(0.001, s.max_delay),
            tick=0.01,
            clock_offsets=dict(zip(self.ids, s.offsets, strict=True)),
        )
        self.sums: dict[str, int] = {}
        if s.start is not None:
            # Every counter starts from a value every node has seen.
            for key in COUNTERS:
                self.sim.set(self.ids[0], key, s.start)
                self.sums[key] = s.start
            assert self.settled(30.0), self.explain()

    def up(self, i: int) -> bool:
        return self.sim.nodes[self.ids[i]].up

    def play(self) -> None:
        sim = self.sim
        for step in self.s.steps:
            kind = step[0]
            if kind in ("incr", "set", "touch") and not self.up(step[1]):
                continue
            if kind == "incr":
                self.incr(self.ids[step[1]], step[2], step[3])
            elif kind == "burst":
                for i, node in enumerate(step[1]):
                    if self.up(node):
                        self.incr(self.ids[node], COUNTERS[i % 2], 1)
            elif kind == "set":
                sim.set(self.ids[step[1]], step[2], step[3])
            elif kind == "touch":
                sim.touch(self.ids[step[1]], step[2], 3600.0)  # never expires in the run
            elif kind == "run":
                sim.run(step[1])
            elif kind == "partition":
                groups: dict[int, list[str]] = {}
                for node, group in zip(self.ids, step[1], strict=True):
                    groups.setdefault(group, []).append(node)
                sim.partition(*groups.values())
            elif kind == "heal":
                sim.heal()
            elif kind == "crash":
                sim.crash(self.ids[step[1]])
            elif kind == "restart" and not self.up(step[1]):
                sim.restart(self.ids[step[1]], keep_state=True)

    def incr(self, node: str, key: str, delta: int) -> None:
        self.sim.incr(node, key, delta)
        self.sums[key] = self.sums.get(key, 0) + delta

    def agree(self) -> bool:
        seen = list(views(self.sim, self.sim.now + MAX_OFFSET).values())
        if not all(view == seen[0] for view in seen):
            return False
        counted = {k: v for k, (v, _) in seen[0].items() if k in COUNTERS}
        if counted != self.sums:
            return False
        # Values are those of the newest set: touches decided nothing.
        expected = {k: v for k, (v, _) in self.sim.expected().items() if k in VALUES}
        return {k: v for k, (v, _) in seen[0].items() if k in VALUES} == expected

    def settled(self, timeout: float) -> bool:
        for node in self.sim.nodes.values():
            if not node.up:
                self.sim.restart(node.id, keep_state=True)
        self.sim.heal()
        return self.sim.run_until(self.agree, timeout, 0.05) is not None

    def explain(self) -> str:
        lines = [f"schedule: {self.s}", f"sums: {self.sums}"]
        at = self.sim.now + MAX_OFFSET
        lines += [f"{n}: {view}" for n, view in views(self.sim, at).items()]
        return "\n".join(lines)


@settings(max_examples=budget(4))
@given(schedules())
def test_every_increment_is_counted_and_touches_decide_no_value(s: Schedule) -> None:
    run = Run(s)
    run.play()
    assert run.settled(30.0), run.explain()


def test_a_partitioned_cluster_counts_every_side_s_increments() -> None:
    sim = SimulatedNetwork(3, seed=7, config=FAST, loss=0.1, duplicate=0.1, tick=0.01)
    sim.partition(["n0"], ["n1", "n2"])
    for i in range(30):
        sim.incr(f"n{i % 3}", "hits", 1)
        sim.run(0.01)
    sim.crash("n2")
    sim.run(0.5)
    sim.restart("n2")
    sim.heal()
    done = sim.run_until(
        lambda: all(sim.view(n).get("hits", (None,))[0] == 30 for n in sim.nodes), 30.0
    )
    assert done is not None, {n: sim.view(n) for n in sim.nodes}
