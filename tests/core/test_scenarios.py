"""Directed cluster scenarios on the simulated network: deletes that must stay deleted,
expiry against newer writes, drifting clocks, and what anti-entropy costs.
"""

from __future__ import annotations

from dataclasses import replace

from crdtcache.core import pack_ts
from crdtcache.testing import SimulatedNetwork
from tests.core.helpers import FAST, converge, describe

#: Short grace and collection period for the "kept out longer than the grace" cases.
GRACE = 5.0


def cluster(nodes: int = 3, seed: int = 7, **kwargs: object) -> SimulatedNetwork:
    options: dict[str, object] = {"config": FAST, "tick": 0.01, "loss": 0.05, "duplicate": 0.05}
    options.update(kwargs)
    return SimulatedNetwork(nodes, seed=seed, **options)  # type: ignore[arg-type]  # test options


def has_value(sim: SimulatedNetwork, node: str, key: str) -> bool:
    return key in sim.view(node)


def run_watching(sim: SimulatedNetwork, seconds: float, key: str, nodes: list[str]) -> None:
    """Run ``seconds``, failing if ``key`` is ever visible on one of ``nodes``."""
    end = sim.now + seconds
    while sim.now < end:
        sim.run(0.01)
        shown = [n for n in nodes if sim.nodes[n].up and has_value(sim, n, key)]
        assert not shown, f"{key!r} came back on {shown} at t={sim.now - 1.7e9:.2f}"


def settle(sim: SimulatedNetwork) -> None:
    assert converge(sim), describe(sim)


def set_changes(sim: SimulatedNetwork, node: str, key: str, after: int) -> list[object]:
    return [c for c in sim.nodes[node].changes[after:] if c.key == key and c.kind == "set"]


# ----------------------------------------------------- deletes stay deleted
def test_a_partitioned_node_holding_the_old_value_does_not_resurrect_it() -> None:
    sim = cluster()
    sim.set("n0", "k", "old")
    sim.set("n0", "other", 1)
    settle(sim)
    sim.isolate("n2")
    sim.delete("n0", "k")
    marks = [len(sim.nodes[n].changes) for n in ("n0", "n1")]
    run_watching(sim, 10.0, "k", ["n0", "n1"])
    assert has_value(sim, "n2", "k")
    sim.heal()
    run_watching(sim, 10.0, "k", ["n0", "n1"])
    settle(sim)
    run_watching(sim, 3.0, "k", ["n0", "n1", "n2"])
    assert set(sim.view("n0")) == {"other"}
    for node, mark in zip(("n0", "n1"), marks, strict=True):
        assert set_changes(sim, node, "k", mark) == []


def test_a_node_restarted_with_its_old_state_does_not_resurrect_a_delete() -> None:
    sim = cluster()
    sim.set("n1", "k", "old")
    settle(sim)
    sim.crash("n2")
    sim.delete("n0", "k")
    run_watching(sim, 3.0, "k", ["n0", "n1"])
    sim.restart("n2", keep_state=True)
    assert has_value(sim, "n2", "k")  # it serves what it persisted ...
    run_watching(sim, 0.5, "k", ["n0", "n1"])
    settle(sim)  # ... until it catches up
    run_watching(sim, 5.0, "k", ["n0", "n1", "n2"])


def test_a_node_kept_out_longer_than_the_grace_resyncs_and_does_not_resurrect() -> None:
    sim = cluster(tombstone_grace=GRACE)
    sim.set("n0", "k", "old")
    sim.set("n0", "kept", "v")
    settle(sim)
    sim.isolate("n2")
    sim.delete("n0", "k")
    sim.set("n2", "fresh", "written while away")
    run_watching(sim, 4 * GRACE, "k", ["n0", "n1"])
    for node in ("n0", "n1"):  # the tombstone is collected ...
        assert "k" not in sim.nodes[node].replica.entries
        assert sim.nodes[node].replica.collected
    assert has_value(sim, "n2", "k")  # ... while n2 still holds the old value
    full_before = sum(n.engine.stats.full_syncs_sent for n in sim.nodes.values())
    sim.heal()
    run_watching(sim, 10.0, "k", ["n0", "n1"])
    settle(sim)
    assert set(sim.view("n2")) == {"kept", "fresh"}
    assert sum(n.engine.stats.full_syncs_sent for n in sim.nodes.values()) > full_before
    assert all("k" not in n.replica.entries for n in sim.nodes.values())


def test_a_pattern_tombstone_covers_keys_a_node_had_not_received() -> None:
    sim = cluster(loss=0.0, duplicate=0.0)
    sim.partition(["n0"], ["n1", "n2"])
    sim.set("n0", "user:1", "a")
    sim.set("n0", "user:2", "b")
    sim.set("n0", "item:1", "c")
    sim.run(0.5)
    sim.invalidate_pattern("n1", "user:*")  # stamped after n0's writes
    sim.run(0.5)
    sim.set("n1", "user:3", "after")
    sim.run(0.5)
    marks = {n: len(sim.nodes[n].changes) for n in ("n1", "n2")}
    sim.heal()
    run_watching(sim, 3.0, "user:1", ["n1", "n2"])
    settle(sim)
    assert set(sim.view("n2")) == {"item:1", "user:3"}
    for node, mark in marks.items():  # never applied, not even for a moment
        assert set_changes(sim, node, "user:1", mark) == []
        assert set_changes(sim, node, "user:2", mark) == []
    assert len(sim.nodes["n2"].replica.patterns) == 1


def test_clear_is_one_replicated_operation() -> None:
    sim = cluster(loss=0.0, duplicate=0.0)
    for i in range(200):
        sim.set(f"n{i % 3}", f"k{i}", i)
    settle(sim)
    before = sim.stats.entries_delivered
    sim.invalidate_pattern("n0", "*")
    settle(sim)
    assert all(sim.view(n) == {} for n in sim.nodes)
    assert sim.stats.entries_delivered == before  # a pattern, not 200 tombstones


# ----------------------------------------------------------------- expiry
def test_an_older_short_ttl_write_expiring_does_not_undo_a_newer_write() -> None:
    sim = cluster()
    sim.partition(["n0", "n2"], ["n1"])
    sim.set("n0", "k", "old", ttl=1.0)
    sim.run(0.2)
    sim.set("n1", "k", "new")
    sim.run(0.2)
    sim.heal()
    sim.run(3.0)  # the old write has expired everywhere and been collected
    settle(sim)
    assert all(sim.view(n)["k"][0] == "new" for n in sim.nodes)


def test_an_expired_write_does_not_let_an_older_value_reappear() -> None:
    sim = cluster()
    sim.set("n0", "k", "older")
    settle(sim)
    sim.isolate("n2")  # n2 keeps "older"
    sim.set("n1", "k", "newer, short-lived", ttl=0.5)
    sim.run(0.6)
    run_watching(sim, 1.0, "k", ["n0", "n1"])
    assert sim.view("n2")["k"][0] == "older"
    sim.heal()
    run_watching(sim, 5.0, "k", ["n0", "n1"])
    settle(sim)
    assert all("k" not in sim.view(n) for n in sim.nodes)


# ------------------------------------------------------------- clock drift
def test_a_peer_ahead_by_more_than_max_drift_is_refused_and_counted() -> None:
    sim = cluster(2, loss=0.0, duplicate=0.0, clock_offsets={"n1": 120.0})
    sim.set("n1", "future", "x")
    sim.set("n0", "present", "y")
    sim.run(3.0)
    n0 = sim.nodes["n0"]
    assert "future" not in n0.replica.entries
    assert n0.engine.stats.refused_drift >= 1
    assert n0.replica.refused_drift == n0.engine.stats.refused_drift
    assert n0.replica.clock.last_ts < pack_ts(int((sim.local_time("n0") + 60) * 1000))
    assert "present" in sim.view("n1")  # the slow clock's writes are fine


def test_clock_offsets_within_the_bound_still_converge() -> None:
    offsets = {"n0": -0.2, "n1": 0.0, "n2": 0.2}
    sim = cluster(clock_offsets=offsets)
    for i in range(30):
        sim.set(f"n{i % 3}", f"k{i % 7}", i)
        sim.run(0.003)
    settle(sim)


# ------------------------------------------------------- anti-entropy cost
def test_anti_entropy_after_a_partition_costs_what_differs() -> None:
    """100k common keys, 1% written on one side during a partition: <= 5x that is sent."""
    common, divergent = 100_000, 1_000
    sim = SimulatedNetwork(
        ["n0", "n1"], seed=3, config=replace(FAST, anti_entropy_interval=1.0), tick=0.01
    )
    sim.run(0.1)  # the initial (empty) exchanges
    n0, n1 = sim.nodes["n0"].replica, sim.nodes["n1"].replica
    now = sim.local_time("n0")
    for i in range(common):
        n0.set(f"key:{i:06d}", i, now)
    for key, entry in n0.entries.items():
        n1.merge_entry(key, entry, now)
    n1.advance_marks(n0.marks)
    sim.partition(["n0"], ["n1"])
    for i in range(divergent):
        sim.set("n1", f"key:{i * 100:06d}", "changed")
    sim.run(0.5)
    delivered = sim.stats.entries_delivered
    sent = [sim.nodes[n].engine.stats.sync_entries_sent for n in ("n0", "n1")]
    sim.heal()
    sim.run(3.0)
    assert n0.entries == n1.entries, "not converged"
    assert sum(n1.entries[f"key:{i * 100:06d}"].value == "changed" for i in range(divergent)) == (
        divergent
    )
    sync_sent = sum(sim.nodes[n].engine.stats.sync_entries_sent for n in ("n0", "n1")) - sum(sent)
    assert sync_sent <= 5 * divergent
    assert sim.stats.entries_delivered - delivered <= 5 * divergent


def test_peers_in_step_need_no_full_state_after_collection() -> None:
    sim = cluster(2, loss=0.0, duplicate=0.0, tombstone_grace=GRACE)
    sim.set("n0", "k", 1)
    sim.run(0.5)
    sim.delete("n1", "k")
    sim.run(3 * GRACE)
    assert all(n.replica.collected and "k" not in n.replica.entries for n in sim.nodes.values())
    assert all(n.engine.stats.full_syncs_sent == 0 for n in sim.nodes.values())
    assert all(n.engine.stats.syncs_completed > 0 for n in sim.nodes.values())


# ------------------------------------------------------------ write-through
def test_an_acknowledged_write_survives_the_loss_of_its_origins_state() -> None:
    sim = cluster(3, loss=0.0, duplicate=0.0)
    sim.run(0.2)
    n0 = sim.nodes["n0"]
    stamp = sim.set("n0", "k", "acked")
    out, ack_id = n0.engine.flush(sim.local_time("n0"), ack=True)
    sim._send("n0", out)
    assert sim.run_until(lambda: not n0.engine.unacked(ack_id), 1.0) is not None
    assert all(n.replica.entries["k"].stamp == stamp for n in sim.nodes.values())
    sim.crash("n0")
    sim.restart("n0", keep_state=False)
    settle(sim)
    assert all(sim.view(n)["k"] == ("acked", stamp) for n in sim.nodes)
