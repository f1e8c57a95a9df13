"""The simulated network: determinism, faults as documented, and the reference model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from crdtcache.core import Message, Push, Stamp
from crdtcache.testing import SimulatedNetwork, Write
from crdtcache.testing._network import EPOCH
from tests.core.helpers import FAST


def net(nodes: int = 3, seed: int = 0, **kwargs: Any) -> SimulatedNetwork:
    kwargs.setdefault("config", FAST)
    kwargs.setdefault("tick", 0.01)
    return SimulatedNetwork(nodes, seed=seed, **kwargs)


def scripted_run(seed: int) -> SimulatedNetwork:
    """Writes, loss, duplication, delay, a partition, a crash and restarts."""
    sim = net(4, seed, loss=0.1, duplicate=0.1, delay=(0.001, 0.05), clock_offsets={"n3": 0.1})
    for i in range(20):
        sim.set(f"n{i % 4}", f"k{i % 6}", i, ttl=5.0 if i % 5 == 0 else None)
        sim.run(0.02)
    sim.partition(["n0", "n1"], ["n2", "n3"])
    sim.delete("n2", "k1")
    sim.invalidate_pattern("n0", "k2*")
    sim.run(1.0)
    sim.crash("n1")
    sim.set("n0", "k3", "during crash")
    sim.run(1.0)
    sim.restart("n1", keep_state=False)
    sim.heal()
    sim.crash("n3")
    sim.run(0.5)
    sim.restart("n3")
    sim.run(3.0)
    return sim


def fingerprint(sim: SimulatedNetwork) -> tuple[object, ...]:
    return (
        sim.stats,
        sim.now,
        {n: sim.view(n) for n in sim.nodes},
        {n.id: n.changes for n in sim.nodes.values()},
        {n.id: n.engine.stats for n in sim.nodes.values()},
        sim.writes,
    )


def in_step_with_the_model(sim: SimulatedNetwork) -> Callable[[], bool]:
    return lambda: all(sim.view(n) == sim.expected() for n in sim.nodes)


# -------------------------------------------------------------- determinism
def test_the_same_seed_gives_the_same_run() -> None:
    first, second = scripted_run(11), scripted_run(11)
    assert fingerprint(first) == fingerprint(second)
    assert first.stats.lost and first.stats.duplicated and first.stats.blocked


def test_different_seeds_give_different_runs() -> None:
    runs = [scripted_run(seed) for seed in (1, 2, 3)]
    stats = [r.stats for r in runs]
    assert stats[0] != stats[1] and stats[1] != stats[2] and stats[0] != stats[2]
    assert fingerprint(runs[0]) != fingerprint(runs[1])


def test_scripted_run_converges_to_the_model() -> None:
    sim = scripted_run(5)
    assert sim.run_until(in_step_with_the_model(sim), 10.0) is not None
    assert sim.converged()


# ------------------------------------------------------------------- setup
def test_bad_fault_rates_are_refused() -> None:
    with pytest.raises(ValueError, match="probabilities"):
        SimulatedNetwork(2, loss=1.0)
    with pytest.raises(ValueError, match="probabilities"):
        SimulatedNetwork(2, duplicate=-0.1)
    with pytest.raises(ValueError, match="delay"):
        SimulatedNetwork(2, delay=(0.01, 0.001))


def test_nodes_by_name_and_clock_offsets() -> None:
    sim = SimulatedNetwork(["a", "b"], clock_offsets={"b": -0.5})
    assert list(sim.nodes) == ["a", "b"]
    assert sim.now == EPOCH
    assert sim.local_time("a") == EPOCH
    assert sim.local_time("b") == EPOCH - 0.5


def test_an_empty_network_has_nothing_to_step() -> None:
    sim = SimulatedNetwork(0)
    assert sim.step() is False
    sim.run(1.0)
    assert sim.now == EPOCH + 1.0


def test_run_until_returns_the_time_taken_or_none() -> None:
    sim = net(2)
    sim.set("n0", "k", 1)
    took = sim.run_until(lambda: sim.has("k", sim.writes[0].stamp), 5.0)
    assert took is not None and 0 < took < 0.1
    assert sim.run_until(lambda: False, 0.2) is None


def test_codec_sees_every_delivered_message() -> None:
    seen: list[Message] = []

    def codec(message: Message) -> Message:
        seen.append(message)
        return message

    sim = net(2, codec=codec)
    sim.set("n0", "k", 1)
    sim.run(0.5)
    assert len(seen) == sim.stats.delivered > 0
    assert any(isinstance(m, Push) for m in seen)


# ------------------------------------------------------------------ writes
def test_writes_are_recorded_for_the_model() -> None:
    sim = net(2)
    s1 = sim.set("n0", "k", {"v": 1}, ttl=2.0)
    s2 = sim.delete("n1", "k")
    s3 = sim.invalidate_pattern("n0", "k*")
    assert sim.writes == [
        Write("n0", "k", {"v": 1}, s1, EPOCH + 2.0, "set"),
        Write("n1", "k", None, s2, None, "delete"),
        Write("n0", "k*", None, s3, None, "pattern"),
    ]
    assert s1 < s3 and s1.node == "n0"


def test_expected_applies_deletes_patterns_and_expiry() -> None:
    sim = net(2)
    sim.set("n0", "a", 1)
    sim.set("n0", "b", 2, ttl=1.0)
    sim.set("n0", "user:1", 3)
    sim.set("n1", "c", 4)
    sim.delete("n1", "c")
    sim.invalidate_pattern("n1", "user:*")
    sim.set("n0", "user:2", 5)
    assert set(sim.expected()) == {"a", "b", "user:2"}
    assert set(sim.expected(EPOCH + 1.0)) == {"a", "user:2"}
    sim.run(2.0)
    assert sim.converged()
    assert all(sim.view(n) == sim.expected() for n in sim.nodes)


def test_has_checks_every_live_node() -> None:
    sim = net(3, loss=0.0)
    stamp = sim.set("n0", "k", 1)
    assert not sim.has("k", stamp)
    sim.run(0.5)
    assert sim.has("k", stamp)
    newer = Stamp(stamp.ts + 1, "n0")
    assert not sim.has("k", newer)


# ------------------------------------------------------------------ faults
def test_partition_groups_and_unlisted_nodes() -> None:
    sim = net(4)
    assert sim.reachable("n0", "n3")
    sim.partition(["n0", "n1"], ["n2"])
    assert sim.reachable("n0", "n1")
    assert not sim.reachable("n0", "n2")
    assert not sim.reachable("n3", "n0")  # unlisted: alone
    sim.isolate("n2")
    assert not sim.reachable("n2", "n1") and sim.reachable("n0", "n3")
    sim.heal()
    assert sim.reachable("n2", "n1")


def test_a_partition_blocks_messages_until_healed() -> None:
    sim = net(3)
    sim.run(0.1)
    sim.partition(["n0"], ["n1", "n2"])
    blocked = sim.stats.blocked
    sim.set("n0", "k", "v")
    sim.set("n1", "j", "w")
    sim.run(1.0)
    assert "k" not in sim.view("n1") and "j" in sim.view("n2")
    assert sim.stats.blocked > blocked
    assert not sim.converged()
    sim.heal()
    assert sim.run_until(sim.converged, 5.0) is not None
    assert set(sim.view("n0")) == {"k", "j"}


def test_messages_in_flight_are_blocked_when_a_partition_starts() -> None:
    sim = net(2, delay=(0.05, 0.05))
    sim.run(0.2)
    sim.set("n0", "k", "v")
    sim.run(0.011)  # flushed, in flight
    sim.partition(["n0"], ["n1"])
    sim.run(0.1)
    assert "k" not in sim.view("n1")


def test_loss_and_duplication_are_counted() -> None:
    sim = net(3, loss=0.3, duplicate=0.3)
    for i in range(20):
        sim.set("n0", f"k{i}", i)
        sim.run(0.02)
    assert sim.stats.lost > 0 and sim.stats.duplicated > 0
    assert sim.stats.sent >= sim.stats.lost


def test_a_crashed_node_does_nothing_and_refuses_writes() -> None:
    sim = net(3)
    sim.run(0.2)
    sim.crash("n2")
    assert [n.id for n in sim.live_nodes()] == ["n0", "n1"]
    with pytest.raises(RuntimeError, match="n2 is down"):
        sim.set("n2", "k", 1)
    with pytest.raises(RuntimeError):
        sim.delete("n2", "k")
    with pytest.raises(RuntimeError):
        sim.invalidate_pattern("n2", "*")
    sent = sim.nodes["n2"].engine.stats.pushes_sent
    sim.set("n0", "k", 1)
    sim.run(1.0)
    assert "k" not in sim.nodes["n2"].replica.entries
    assert sim.nodes["n2"].engine.stats.pushes_sent == sent
    assert sim.converged()  # among live nodes


def test_restart_with_state_keeps_data_and_catches_up() -> None:
    sim = net(3)
    sim.set("n2", "mine", 1)
    sim.run(0.5)
    sim.crash("n2")
    sim.set("n0", "missed", 2)
    sim.run(0.5)
    sim.restart("n2", keep_state=True)
    assert "mine" in sim.view("n2") and "missed" not in sim.view("n2")
    assert sim.nodes["n2"].engine.node == "n2"
    assert sim.run_until(lambda: "missed" in sim.view("n2"), 5.0) is not None


def test_restart_without_state_starts_empty_under_a_new_id_and_catches_up() -> None:
    sim = net(3)
    first = sim.set("n2", "mine", 1)
    sim.run(0.5)
    last_ts = sim.nodes["n2"].replica.clock.last_ts
    sim.crash("n2")
    sim.restart("n2", keep_state=False)
    node = sim.nodes["n2"]
    assert sim.view("n2") == {}
    assert node.engine.node == "n2~1" and node.generation == 1
    assert node.replica.clock.last_ts == last_ts  # stamps never go backwards
    again = sim.set("n2", "new", 2)
    assert again > Stamp(first.ts, again.node) and again.node == "n2~1"
    assert sim.run_until(lambda: "mine" in sim.view("n2"), 5.0) is not None
    assert sim.run_until(sim.converged, 5.0) is not None
    assert sim.view("n0")["new"] == (2, again)


def test_an_answer_to_a_node_that_lost_its_state_does_not_reach_its_successor() -> None:
    """Regression: a stale answer adopted by the new engine made it claim data it lacked."""
    sim = net(2, delay=(0.05, 0.05))
    for i in range(3):
        sim.set("n0", f"k{i}", i)
    sim.run(1.0)
    n1 = sim.nodes["n1"]
    sim._send("n1", n1.engine.sync_with("n0", sim.local_time("n1")))
    sim.run(0.06)  # the request arrived; the answer is in flight
    sim.crash("n1")
    sim.loss = 0.999999  # the successor's own first requests are lost
    sim.restart("n1", keep_state=False)
    blocked = sim.stats.blocked
    sim.run(0.05)
    sim.loss = 0.0
    assert sim.stats.blocked > blocked
    assert sim.nodes["n1"].replica.marks == {}
    assert sim.run_until(lambda: len(sim.view("n1")) == 3, 10.0) is not None


# ---------------------------------------------------------- lost writes
def test_writes_lost_with_a_nodes_state_leave_the_model() -> None:
    sim = net(2)
    sim.run(0.2)
    sim.set("n1", "kept", 1)
    sim.run(0.5)  # replicated
    sim.set("n1", "unflushed", 2)
    sim.delete("n1", "kept")
    sim.invalidate_pattern("n1", "x*")
    sim.crash("n1")
    assert set(sim.expected()) == {"unflushed"}  # a down node's writes still count
    sim.restart("n1", keep_state=False)
    assert sim.expected() == {"kept": (1, sim.writes[0].stamp)}
    assert sim.run_until(in_step_with_the_model(sim), 5.0) is not None


def test_a_restart_with_state_loses_nothing() -> None:
    sim = net(2)
    sim.set("n1", "unflushed", 2)
    sim.crash("n1")
    sim.restart("n1", keep_state=True)
    assert set(sim.expected()) == {"unflushed"}
    assert sim.run_until(lambda: "unflushed" in sim.view("n0"), 5.0) is not None


@pytest.mark.parametrize("partitioned", [False, True])
def test_a_write_only_in_flight_is_lost_only_if_that_message_is(partitioned: bool) -> None:
    sim = net(2, delay=(0.05, 0.05))
    sim.run(0.2)
    sim.set("n1", "k", 1)
    sim.run(0.015)  # flushed: the push is in flight, n0 does not hold it yet
    assert "k" not in sim.nodes["n0"].replica.entries
    sim.crash("n1")
    sim.restart("n1", keep_state=False)
    assert "k" in sim.expected()  # still carried by the message
    if partitioned:
        sim.partition(["n0"], ["n1"])
    sim.run(0.1)
    assert ("k" in sim.expected()) is not partitioned
    sim.heal()
    assert sim.run_until(in_step_with_the_model(sim), 5.0) is not None
