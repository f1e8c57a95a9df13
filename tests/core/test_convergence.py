"""Convergence of real gossip engines under random schedules and faults (simulated).

Each example draws a seed, a cluster size, fault rates, clock offsets and a schedule of
writes and faults; after the schedule every node is restarted, the network healed and
the cluster run: every live replica must then equal every other and the reference
model (:meth:`SimulatedNetwork.expected`). A failure prints the seed and schedule.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtcache.testing import SimulatedNetwork
from tests.core.helpers import FAST, MAX_OFFSET, RESOLVERS, budget, converge, describe

KEYS = ("a:1", "a:2", "b:1", "b:2", "c")
PATTERNS = ("a:*", "b:*", "*", "?:2")
#: Seeds of the long scenario: a few by default, many in the long profile.
SCENARIO_SEEDS = max(2, budget(0.1))


#: Engine configurations drawn: broadcast, epidemic (fanout 2), tiny messages.
CONFIGS = {
    "broadcast": FAST,
    "epidemic": replace(FAST, fanout=2),
    "chunked": replace(FAST, max_message_entries=2),
}


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
    steps: tuple[tuple[Any, ...], ...]
    final_keep: tuple[bool, ...]
    resolver: str | None = None


def _step(n: int) -> st.SearchStrategy[tuple[Any, ...]]:
    node = st.integers(0, n - 1)
    ttl = st.none() | st.sampled_from([0.05, 0.3, 1.0, 5.0])
    return st.one_of(
        st.tuples(st.just("set"), node, st.sampled_from(KEYS), st.integers(0, 9), ttl),
        st.tuples(st.just("burst"), st.lists(node, min_size=1, max_size=8)),
        st.tuples(st.just("delete"), node, st.sampled_from(KEYS)),
        st.tuples(st.just("pattern"), node, st.sampled_from(PATTERNS)),
        st.tuples(st.just("run"), st.sampled_from([0.0, 0.005, 0.02, 0.1, 0.4, 1.5])),
        st.tuples(st.just("partition"), st.lists(st.integers(0, 2), min_size=n, max_size=n)),
        st.tuples(st.just("heal")),
        st.tuples(st.just("crash"), node),
        st.tuples(st.just("restart"), node, st.booleans()),
    )


@st.composite
def schedules(draw: st.DrawFn, resolvers: tuple[str, ...] = ()) -> Schedule:
    n = draw(st.integers(2, 7))
    offset = st.floats(-MAX_OFFSET, MAX_OFFSET, allow_nan=False)
    return Schedule(
        seed=draw(st.integers(0, 2**32 - 1)),
        nodes=n,
        config=draw(st.sampled_from(sorted(CONFIGS))),
        loss=draw(st.sampled_from([0.0, 0.05, 0.2])),
        duplicate=draw(st.sampled_from([0.0, 0.05, 0.2])),
        max_delay=draw(st.sampled_from([0.001, 0.01, 0.05])),
        offsets=tuple(draw(st.lists(offset, min_size=n, max_size=n))),
        steps=tuple(draw(st.lists(_step(n), min_size=8, max_size=60))),
        final_keep=tuple(draw(st.lists(st.booleans(), min_size=n, max_size=n))),
        resolver=draw(st.sampled_from(resolvers)) if resolvers else None,
    )


def play(
    s: Schedule, after_step: Callable[[SimulatedNetwork, int], None] | None = None
) -> SimulatedNetwork:
    """Run ``s`` up to its last step (faults still in place); ``after_step(sim, i)``
    runs after step ``i``."""
    ids = [f"n{i}" for i in range(s.nodes)]
    sim = SimulatedNetwork(
        ids,
        seed=s.seed,
        config=CONFIGS[s.config],
        loss=s.loss,
        duplicate=s.duplicate,
        delay=(0.001, s.max_delay),
        tick=0.01,
        clock_offsets=dict(zip(ids, s.offsets, strict=True)),
        resolver=RESOLVERS[s.resolver] if s.resolver else None,
    )
    for index, step in enumerate(s.steps):
        if after_step is not None and index:
            after_step(sim, index - 1)
        kind = step[0]
        if kind in ("set", "delete", "pattern") and not sim.nodes[ids[step[1]]].up:
            continue
        if kind == "set":
            sim.set(ids[step[1]], step[2], step[3], ttl=step[4])
        elif kind == "burst":
            for i, writer in enumerate(step[1]):
                if sim.nodes[ids[writer]].up:
                    sim.set(ids[writer], KEYS[i % len(KEYS)], i)
        elif kind == "delete":
            sim.delete(ids[step[1]], step[2])
        elif kind == "pattern":
            sim.invalidate_pattern(ids[step[1]], step[2])
        elif kind == "run":
            sim.run(step[1])
        elif kind == "partition":
            groups: dict[int, list[str]] = {}
            for node, group in zip(ids, step[1], strict=True):
                groups.setdefault(group, []).append(node)
            sim.partition(*groups.values())
        elif kind == "heal":
            sim.heal()
        elif kind == "crash":
            sim.crash(ids[step[1]])
        elif kind == "restart" and not sim.nodes[ids[step[1]]].up:
            sim.restart(ids[step[1]], keep_state=step[2])
    return sim


def settle(
    sim: SimulatedNetwork, keep: tuple[bool, ...], timeout: float = 20.0, *, model: bool = True
) -> bool:
    """Restart every node, heal, and run until every view equals the model.

    With ``model=False`` (a custom resolver, which the LWW model does not describe)
    the views need only equal each other.
    """
    for node, kept in zip(sim.nodes.values(), keep, strict=True):
        if not node.up:
            sim.restart(node.id, keep_state=kept)
    sim.heal()
    return converge(sim, timeout, model=model)


def explain(s: Schedule, sim: SimulatedNetwork) -> str:
    return f"{describe(sim)}\nschedule: {s}"


@settings(max_examples=budget(10))
@given(schedules())
def test_random_schedules_converge_to_the_model(s: Schedule) -> None:
    sim = play(s)
    assert settle(sim, s.final_keep), explain(s, sim)


@settings(max_examples=budget(3))
@given(schedules(resolvers=("max value", "deletes win")))
def test_random_schedules_converge_with_a_lawful_resolver(s: Schedule) -> None:
    sim = play(s)
    assert settle(sim, s.final_keep, model=False), explain(s, sim)


# ------------------------------------------------- Jepsen-style long scenario
def jepsen(seed: int, duration: float = 30.0) -> tuple[SimulatedNetwork, bool]:
    """SPEC 5: 5 nodes, 50 keys, 100 writes/s, 10% loss, 5% duplication, 1-50 ms delay,
    faults 5 s on / 5 s off (random halves, a bridge, one node isolated, a crash), then heal.
    """
    rnd = random.Random(seed)
    ids = [f"n{i}" for i in range(5)]
    sim = SimulatedNetwork(
        ids,
        seed=seed,
        config=FAST,
        loss=0.1,
        duplicate=0.05,
        delay=(0.001, 0.05),
        tick=0.01,
        clock_offsets={n: rnd.uniform(-MAX_OFFSET, MAX_OFFSET) for n in ids},
    )
    end = sim.now + duration
    faulty = True
    while sim.now < end:
        if faulty:
            fault(sim, rnd)
        else:
            sim.heal()
            for n in sim.nodes.values():
                if not n.up:
                    sim.restart(n.id, keep_state=rnd.random() < 0.5)
        phase_end = sim.now + 5.0
        while sim.now < phase_end:
            write(sim, rnd)
            sim.run(0.01)
        faulty = not faulty
    return sim, settle(sim, (True,) * len(ids), timeout=30.0)


def fault(sim: SimulatedNetwork, rnd: random.Random) -> None:
    ids = list(sim.nodes)
    rnd.shuffle(ids)
    kind = rnd.choice(["halves", "bridge", "isolate", "crash"])
    if kind == "halves":
        sim.partition(ids[:2], ids[2:])
    elif kind == "bridge":
        sim.partition(ids[:3], [ids[0], *ids[3:]])
    elif kind == "isolate":
        sim.isolate(ids[0])
    else:
        sim.crash(ids[0])


def write(sim: SimulatedNetwork, rnd: random.Random) -> None:
    node = rnd.choice([n.id for n in sim.live_nodes()])
    key = f"k{rnd.randrange(50)}"
    roll = rnd.random()
    if roll < 0.8:
        sim.set(node, key, rnd.randrange(1000), ttl=rnd.choice([None, None, None, 0.5, 3.0]))
    elif roll < 0.97:
        sim.delete(node, key)
    else:
        sim.invalidate_pattern(node, f"k{rnd.randrange(10)}*")


@pytest.mark.parametrize("seed", range(SCENARIO_SEEDS))
def test_jepsen_style_scenario_converges_to_the_model(seed: int) -> None:
    sim, agreed = jepsen(seed)
    assert agreed, f"failing seed {seed}: replicas differ from the model after healing"
    assert sim.stats.lost and sim.stats.duplicated and sim.stats.blocked
