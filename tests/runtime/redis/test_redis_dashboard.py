"""Redis mode on the dashboard: the other instances, what they are, and their health."""

from __future__ import annotations

import asyncio
import os
import socket

from crdtcache.dashboard._monitor import Monitor
from crdtcache.runtime.redis._messages import describe_instance, instance_info
from tests.runtime.redis.redis_helpers import redis_caches, runtime, wait_for


def test_an_instance_describes_itself_and_junk_describes_nothing() -> None:
    assert describe_instance(instance_info("web-1", 42, 1.0)) == "web-1 pid 42"
    assert describe_instance(instance_info("h" * 1000, 7, 1.0)) == f"{'h' * 255} pid 7"
    for junk in (None, b"", b"\xc1", b"\x91\x01", b"\x81\xa4host\x01", "text"):
        assert describe_instance(junk) is None


async def test_the_dashboard_lists_instances_with_host_heartbeat_and_state(
    redis_url: str, cluster: str
) -> None:
    a, b = await redis_caches(2, url=redis_url, cluster=cluster)
    monitor = Monitor(a.view())
    await monitor.start()
    try:
        label = f"{socket.gethostname()} pid {os.getpid()}"

        def row() -> dict[str, object]:
            assert monitor.frame is not None
            (only,) = monitor.frame["peers"]
            return dict(only)

        await wait_for(lambda: runtime(a).protocol.instances.described.get(b.node_id) == label)
        await monitor.sample()
        first = row()
        assert (first["id"], first["state"], first["address"]) == (b.node_id, "alive", label)
        heard = first["last_heard_ms"]
        assert isinstance(heard, int) and heard <= 1000  # heartbeats every 50 ms here
        assert monitor.frame is not None and monitor.frame["instances"] == 2
        stats = await a.get_statistics()
        assert [(p.id, p.address, p.state) for p in stats.cluster.peers] == [
            (b.node_id, None, "alive")  # instances listen nowhere: no address
        ]

        await runtime(b)._shutdown()  # crashed: its heartbeat stops, no goodbye
        await asyncio.sleep(0.2)
        await monitor.sample()
        late = row()
        assert late["state"] == "alive" and isinstance(late["last_heard_ms"], int)
        assert late["last_heard_ms"] >= 150  # the heartbeat's age grows
        await wait_for(lambda: runtime(a).protocol.instances.states[b.node_id] == "dead")
        await monitor.sample()
        assert row()["state"] == "dead"
        assert monitor.frame is not None and monitor.frame["instances"] == 1
        assert any(f"down: {b.node_id}" in r for r in a.health().reasons)
    finally:
        await monitor.close()
        await a.close()
        b._state = "closed"  # its runtime is already down
