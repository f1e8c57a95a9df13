"""The simulator schedules flushes as the p2p node does: at the engine's flush deadline.

A lone write leaves at once (its delay is the network's, not ``sync_interval``); a
burst still travels in few pushes; and the cluster converges under loss,
duplication and reordering either way.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from crdtcache.core import GossipConfig
from crdtcache.testing import SimulatedNetwork
from tests.core.helpers import FAST, converge, describe

#: Long enough that a write waiting for a timer would show (seconds).
SLOW = replace(FAST, sync_interval=0.5)
#: The simulated network's delay for every message (seconds).
DELAY = 0.001


def pushes(sim: SimulatedNetwork, node: str) -> int:
    return sim.nodes[node].engine.stats.pushes_sent


@pytest.mark.parametrize("seed", range(3))
def test_a_lone_write_is_visible_after_the_network_delay_not_sync_interval(seed: int) -> None:
    sim = SimulatedNetwork(3, seed=seed, config=SLOW, delay=(DELAY, DELAY), tick=0.005)
    sim.run(2.0)  # idle: ticks, heartbeats and anti-entropy only
    for i in range(10):
        stamp = sim.set(f"n{i % 3}", f"k{i}", i)
        took = sim.run_until(lambda s=stamp, k=f"k{i}": sim.has(k, s), 1.0, DELAY / 4)  # type: ignore[misc]
        assert took is not None and took <= 2 * DELAY, f"write {i} took {took} s"
        sim.run(0.3)  # a lone write: the next comes well within sync_interval


def test_a_burst_at_one_instant_is_one_push_per_peer() -> None:
    sim = SimulatedNetwork(5, seed=1, config=SLOW, delay=(DELAY, DELAY))
    sim.run(1.0)
    before = pushes(sim, "n0")
    for i in range(500):
        sim.set("n0", f"k{i}", i)
    sim.run(0.01)
    assert pushes(sim, "n0") - before == 4
    assert all(len(sim.view(n)) == 500 for n in sim.nodes)


def test_a_spread_burst_is_batched_within_sync_interval() -> None:
    config = GossipConfig()  # the defaults: 5 ms, a budget of 4
    sim = SimulatedNetwork(3, seed=2, config=config, delay=(DELAY, DELAY))
    sim.run(1.0)
    before = pushes(sim, "n0")
    writes = 500
    for i in range(writes):  # one write every 0.1 ms for 50 ms
        stamp = sim.set("n0", f"k{i}", i)
        sim.run(0.0001)
    sim.run(config.sync_interval + DELAY)
    assert sim.has(f"k{writes - 1}", stamp)  # the last waited at most sync_interval
    flushes = (pushes(sim, "n0") - before) / 2
    # The budget's burst, then one flush per refill (ten intervals): not one per write.
    assert flushes <= config.flush_burst * (1 + 10) + 1


@pytest.mark.parametrize("seed", range(4))
def test_adaptive_batching_converges_under_loss_duplication_and_reordering(seed: int) -> None:
    sim = SimulatedNetwork(
        4,
        seed=seed,
        config=FAST,
        loss=0.2,
        duplicate=0.2,
        delay=(0.001, 0.04),  # wider than the flush pacing: pushes overtake each other
        tick=0.01,
    )
    rng = random.Random(seed)
    for _ in range(40):
        node = f"n{rng.randrange(4)}"
        roll = rng.random()
        if roll < 0.3:  # a burst in one instant
            for j in range(rng.randrange(2, 30)):
                sim.set(node, f"k{rng.randrange(40)}", j)
        elif roll < 0.5:  # writes closer together than the budget refills
            for j in range(rng.randrange(2, 20)):
                sim.set(node, f"k{rng.randrange(40)}", -j)
                sim.run(rng.random() * FAST.sync_interval / 8)
        elif roll < 0.6:
            sim.delete(node, f"k{rng.randrange(40)}")
        elif roll < 0.65:
            sim.invalidate_pattern(node, f"k{rng.randrange(4)}*")
        else:  # a lone write
            sim.set(node, f"k{rng.randrange(40)}", "lone")
        sim.run(rng.random() * 3 * FAST.sync_interval)
    assert converge(sim), describe(sim)


def test_the_durability_gate_holds_a_lone_write_until_it_is_stored() -> None:
    sim = SimulatedNetwork(
        2, seed=3, config=SLOW, delay=(DELAY, DELAY), persist_interval=10.0, commit_delay=0.002
    )
    sim.run(1.0)
    before = pushes(sim, "n0")
    stamp = sim.set("n0", "k", 1)
    sim.run(0.0015)
    assert pushes(sim, "n0") == before  # not stored yet: nothing may leave
    took = sim.run_until(lambda: sim.has("k", stamp), 1.0, DELAY / 4)
    # Stored after the commit delay, then flushed at once (not after sync_interval).
    assert took is not None and took <= 0.002 + 2 * DELAY
