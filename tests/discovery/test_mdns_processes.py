"""mDNS discovery for real: separate processes in a throwaway network namespace.

Each process is ``mdns_node.py`` (one MDNSDiscovery) printing what it finds as JSON
lines; see conftest.py for the namespaces and why no multicast route is needed.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.discovery.helpers import Netns, NodeProcess

pytestmark = pytest.mark.timeout(60)

Spawn = Callable[..., NodeProcess]


def test_two_nodes_find_each_other_and_not_themselves(
    netns: Netns, spawn: Spawn, cluster: str
) -> None:
    a = spawn(netns, node="node-a", cluster=cluster, port=7001)
    b = spawn(netns, node="node-b", cluster=cluster, port=7002)

    seen_by_a = a.wait_found("node-b")
    seen_by_b = b.wait_found("node-a")

    assert (seen_by_a["host"], seen_by_a["port"]) == (netns.address, 7002)
    assert (seen_by_b["host"], seen_by_b["port"]) == (netns.address, 7001)
    assert a.found_nodes() == {"node-b"}
    assert b.found_nodes() == {"node-a"}
    for process in (a, b):
        stats = process.stats()
        assert stats["peers"] == 1
        assert stats["ignored_self"] == 0  # own announcement skipped by name, not resolved
        assert stats["lost_reports"] == 0


def test_node_of_another_cluster_is_ignored(netns: Netns, spawn: Spawn, cluster: str) -> None:
    stranger = spawn(netns, node="node-x", cluster=f"{cluster}-other", port=7009)
    a = spawn(netns, node="node-a", cluster=cluster, port=7001)
    b = spawn(netns, node="node-b", cluster=cluster, port=7002)
    c = spawn(netns, node="node-c", cluster=cluster, port=7003)

    for process, others in ((a, "bc"), (b, "ac"), (c, "ab")):
        for other in others:
            process.wait_found(f"node-{other}")
    # Each member has resolved the stranger (its TXT names another cluster) and ignored it.
    for process in (a, b, c):
        process.wait_stats(lambda stats: stats["ignored_cluster"] >= 1)
        assert process.found_nodes() == {"node-a", "node-b", "node-c"} - {process.started["node"]}
    assert stranger.wait_stats(lambda stats: stats["ignored_cluster"] == 3)
    assert stranger.found_nodes() == set()


def test_closed_node_is_reported_lost(netns: Netns, spawn: Spawn, cluster: str) -> None:
    a = spawn(netns, node="node-a", cluster=cluster, port=7001)
    b = spawn(netns, node="node-b", cluster=cluster, port=7002)
    a.wait_found("node-b")
    b.wait_found("node-a")

    closed = b.close()  # unregisters: goodbye packets (TTL 0)

    assert closed["took"] < 2.0
    lost = a.wait_for(lambda e: e["event"] == "lost")
    assert lost["node"] == "node-b"
    # Back with the same node id on another port: reported again, with the new port.
    b2 = spawn(netns, node="node-b", cluster=cluster, port=7012)
    seen = a.wait_for(
        lambda e: e["event"] == "found" and e["node"] == "node-b" and e["port"] == 7012
    )
    assert seen["host"] == netns.address
    b2.wait_found("node-a")


def test_two_hosts_over_a_veth_pair(
    two_hosts: tuple[Netns, Netns], spawn: Spawn, cluster: str
) -> None:
    one, two = two_hosts
    # Bound to the wildcard: each announces its non-loopback address only.
    a = spawn(one, node="node-a", cluster=cluster, port=7001, host="0.0.0.0")
    b = spawn(two, node="node-b", cluster=cluster, port=7002, host="0.0.0.0")
    assert a.started["hosts"] == [one.address]
    assert b.started["hosts"] == [two.address]

    seen_by_a = a.wait_found("node-b")
    seen_by_b = b.wait_found("node-a")

    assert (seen_by_a["host"], seen_by_a["port"]) == (two.address, 7002)
    assert (seen_by_b["host"], seen_by_b["port"]) == (one.address, 7001)
    b.close()
    assert a.wait_for(lambda e: e["event"] == "lost")["node"] == "node-b"
