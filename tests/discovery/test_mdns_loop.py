"""MDNSDiscovery objects in this test's event loop, talking real mDNS over loopback.

Every test runs its sockets in a fresh network namespace holding only ``lo`` (the
``isolated_network`` fixture moves this thread there), so it hears no other test's
mDNS; nodes bind 127.0.0.1, so even the host-loopback fallback keeps multicast off the
real interfaces. Foreign and malformed announcements come from a bare zeroconf.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from zeroconf import ServiceStateChange
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from crdtcache import CacheError, ConfigError
from crdtcache.discovery import PeerAddress
from crdtcache.discovery import _mdns as mdns
from crdtcache.discovery._mdns import PROTOCOL_VERSION, SERVICE_TYPE, MDNSDiscovery

pytestmark = pytest.mark.timeout(30)

#: Seconds to wait for an mDNS event on loopback (measured: 0.02-1.3 s).
WAIT = 5.0


class Peers:
    """Records what one discovery reports."""

    def __init__(self) -> None:
        self.found: list[PeerAddress] = []
        self.lost: list[str] = []

    def on_found(self, address: PeerAddress) -> None:
        self.found.append(address)

    def on_lost(self, node_id: str) -> None:
        self.lost.append(node_id)

    def nodes(self) -> set[str | None]:
        return {a.node_id for a in self.found}


async def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


@pytest.fixture
def cluster(isolated_network: str | None) -> str:
    """A fresh cluster name, with this test's sockets in their own namespace."""
    return f"t-{secrets.token_hex(4)}"


@pytest.fixture
async def raw_zeroconf(isolated_network: str | None) -> AsyncIterator[AsyncZeroconf]:
    """A bare zeroconf on loopback, to announce what a crdtcache node never would."""
    aiozc = AsyncZeroconf(interfaces=["127.0.0.1"])
    try:
        yield aiozc
    finally:
        await aiozc.async_close()


def raw_info(label: str, port: int, properties: dict[str, Any], **kwargs: Any) -> AsyncServiceInfo:
    kwargs.setdefault("parsed_addresses", ["127.0.0.1"])
    kwargs.setdefault("server", f"{label}.local.")  # zeroconf needs it to update a service
    return AsyncServiceInfo(
        SERVICE_TYPE, f"{label}.{SERVICE_TYPE}", port=port, properties=properties, **kwargs
    )


def txt(cluster: str, node: str, proto: object = PROTOCOL_VERSION) -> dict[str, Any]:
    return {"cluster": cluster, "node": node, "proto": str(proto)}


async def test_pair_finds_each_other_is_reported_again_and_lost(cluster: str) -> None:
    a, b = MDNSDiscovery(cluster, report_interval=0.2), MDNSDiscovery(cluster)
    seen_a, seen_b = Peers(), Peers()
    await a.start("node-a", PeerAddress("127.0.0.1", 7101), seen_a.on_found, seen_a.on_lost)
    try:
        await b.start("node-b", PeerAddress("127.0.0.1", 7102), seen_b.on_found, seen_b.on_lost)
        await wait_until(lambda: bool(seen_a.found) and bool(seen_b.found))
        assert seen_a.found[0] == PeerAddress("127.0.0.1", 7102, "node-b")
        assert seen_b.found[0] == PeerAddress("127.0.0.1", 7101, "node-a")
        assert a.announced == mdns.Announcement("node-a", 7101, ("127.0.0.1",))
        # Reported again every report_interval while it lives.
        await wait_until(lambda: len(seen_a.found) >= 3, timeout=2.0)
        assert set(seen_a.found) == {PeerAddress("127.0.0.1", 7102, "node-b")}

        await b.close()
        await wait_until(lambda: seen_a.lost == ["node-b"])
        stats = a.statistics()
        assert stats.peers == 0
        assert stats.lost_reports == 1
        assert stats.ignored_self == 0
        reports = len(seen_a.found)
        await asyncio.sleep(0.3)
        assert len(seen_a.found) == reports  # a lost peer is not reported again
    finally:
        await b.close()
        await a.close()
        await a.close()  # idempotent
    assert seen_b.lost == []


async def test_foreign_and_malformed_announcements_are_ignored(
    cluster: str, raw_zeroconf: AsyncZeroconf
) -> None:
    a = MDNSDiscovery(cluster)
    seen = Peers()
    await a.start("node-a", PeerAddress("127.0.0.1", 7101), seen.on_found, seen.on_lost)
    try:
        infos = [
            raw_info("other-cluster", 7201, txt(f"{cluster}-x", "node-x")),
            raw_info("other-proto", 7202, txt(cluster, "node-p", PROTOCOL_VERSION + 1)),
            raw_info("no-node", 7203, {"cluster": cluster, "proto": str(PROTOCOL_VERSION)}),
            raw_info("impostor", 7204, txt(cluster, "node-a")),  # claims our node id
            raw_info("link-local-only", 7205, txt(cluster, "node-l"), parsed_addresses=["fe80::1"]),
            raw_info(
                "good", 7206, txt(cluster, "node-g"), parsed_addresses=["127.0.0.1", "fe80::9"]
            ),
        ]
        for info in infos:
            await raw_zeroconf.async_register_service(info, cooperating_responders=True)

        await wait_until(lambda: a.statistics().resolved >= len(infos))
        stats = a.statistics()
        assert stats.ignored_cluster == 1
        assert stats.ignored_proto == 1
        assert stats.ignored_self == 1
        assert stats.ignored_invalid == 2  # no node id; no usable address
        assert stats.peers == 1
        assert set(seen.found) == {PeerAddress("127.0.0.1", 7206, "node-g")}

        # Their goodbyes: only the peer that was reported is reported lost.
        for info in infos:
            await raw_zeroconf.async_unregister_service(info)
        await wait_until(lambda: a.statistics().tracked == 0)
        assert seen.lost == ["node-g"]
    finally:
        await a.close()


async def test_changed_announcement_is_reported(cluster: str, raw_zeroconf: AsyncZeroconf) -> None:
    a = MDNSDiscovery(cluster)
    seen = Peers()
    await a.start("node-a", PeerAddress("127.0.0.1", 7101), seen.on_found, seen.on_lost)
    try:
        info = raw_info("mover", 7301, txt(cluster, "node-m"))
        await raw_zeroconf.async_register_service(info, cooperating_responders=True)
        await wait_until(lambda: PeerAddress("127.0.0.1", 7301, "node-m") in seen.found)

        moved = raw_info("mover", 7302, txt(cluster, "node-m"))
        await raw_zeroconf.async_update_service(moved)
        await wait_until(lambda: PeerAddress("127.0.0.1", 7302, "node-m") in seen.found)

        renamed = raw_info("mover", 7302, txt(cluster, "node-n"))  # same name, new node id
        await raw_zeroconf.async_update_service(renamed)
        await wait_until(lambda: PeerAddress("127.0.0.1", 7302, "node-n") in seen.found)
        assert seen.lost == ["node-m"]

        left = raw_info("mover", 7302, txt(f"{cluster}-x", "node-n"))  # moved to another cluster
        await raw_zeroconf.async_update_service(left)
        await wait_until(lambda: seen.lost == ["node-m", "node-n"])
    finally:
        await a.close()


async def test_unresolvable_instance_is_retried_then_forgotten(cluster: str) -> None:
    a = MDNSDiscovery(cluster, resolve_timeout=0.05, report_interval=0.1)
    seen = Peers()
    await a.start("node-a", PeerAddress("127.0.0.1", 7101), seen.on_found, seen.on_lost)
    try:
        assert a._aiozc is not None
        ghost = f"ghost-{secrets.token_hex(3)}.{SERVICE_TYPE}"
        zc = a._aiozc.zeroconf
        # As the browser would call it for a PTR record whose owner never answers.
        a._on_service_state_change(zc, SERVICE_TYPE, ghost, ServiceStateChange.Added)
        a._on_service_state_change(zc, SERVICE_TYPE, ghost, ServiceStateChange.Added)  # dedup
        await wait_until(lambda: a.statistics().resolve_failures >= 3)
        assert a.statistics().tracked == 1
        a._on_service_state_change(zc, SERVICE_TYPE, ghost, ServiceStateChange.Removed)
        assert a.statistics().tracked == 0
        assert seen.found == [] and seen.lost == []
    finally:
        await a.close()


async def test_tables_and_queue_are_bounded(
    cluster: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(mdns, "MAX_PENDING_RESOLUTIONS", 2)
    monkeypatch.setattr(mdns, "MAX_TRACKED_SERVICES", 6)
    a = MDNSDiscovery(cluster, resolve_timeout=5.0, max_concurrent_resolutions=1)
    seen = Peers()
    await a.start("node-a", PeerAddress("127.0.0.1", 7101), seen.on_found, seen.on_lost)
    try:
        assert a._aiozc is not None
        zc = a._aiozc.zeroconf
        with caplog.at_level(logging.WARNING, logger="crdtcache.discovery._mdns"):
            for i in range(8):
                name = f"ghost-{i}-{secrets.token_hex(3)}.{SERVICE_TYPE}"
                a._on_service_state_change(zc, SERVICE_TYPE, name, ServiceStateChange.Added)
                await asyncio.sleep(0)  # let the single worker take the first one
        stats = a.statistics()
        # 6 tracked: 1 resolving + 2 queued + 3 refused by the full queue; 2 refused outright.
        assert stats.tracked == 6
        assert stats.dropped == 3 + 2
        assert "resolution queue full" in caplog.text
        assert "instances tracked" in caplog.text
    finally:
        await a.close()  # cancels the resolution still waiting


async def test_failing_callbacks_are_logged(
    cluster: str, raw_zeroconf: AsyncZeroconf, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(arg: object) -> None:
        raise RuntimeError("transport trouble")

    a = MDNSDiscovery(cluster)
    await a.start("node-a", PeerAddress("127.0.0.1", 7101), boom, boom)
    try:
        info = raw_info("peer", 7401, txt(cluster, "node-p"))
        with caplog.at_level(logging.ERROR, logger="crdtcache.discovery._mdns"):
            await raw_zeroconf.async_register_service(info, cooperating_responders=True)
            await wait_until(lambda: "on_found(127.0.0.1:7401) failed" in caplog.text)
            await raw_zeroconf.async_unregister_service(info)
            await wait_until(lambda: "on_lost(node-p) failed" in caplog.text)
    finally:
        await a.close()


async def test_start_is_refused_when_it_cannot_work(cluster: str) -> None:
    def nothing(arg: object) -> None:
        pass

    loopback = PeerAddress("127.0.0.1", 7101)
    with pytest.raises(ConfigError, match="node id must be non-empty"):
        await MDNSDiscovery(cluster).start("", loopback, nothing, nothing)
    with pytest.raises(ConfigError, match="node id must be non-empty and at most 250 bytes"):
        await MDNSDiscovery(cluster).start("n" * 251, loopback, nothing, nothing)
    with pytest.raises(ConfigError, match="cannot announce port 0"):
        await MDNSDiscovery(cluster).start("n", PeerAddress("127.0.0.1", 0), nothing, nothing)
    # An interface that is not on this host: zeroconf's OSError becomes a ConfigError.
    absent = MDNSDiscovery(cluster, interfaces=["203.0.113.7"])
    with pytest.raises(ConfigError, match="mDNS cannot run on interfaces"):
        await absent.start("n", loopback, nothing, nothing)

    a = MDNSDiscovery(cluster)
    await a.start("node-a", loopback, nothing, nothing)
    try:
        with pytest.raises(CacheError, match="called when running"):
            await a.start("node-a", loopback, nothing, nothing)
    finally:
        await a.close()
    with pytest.raises(CacheError, match="called when closed"):
        await a.start("node-a", loopback, nothing, nothing)

    never = MDNSDiscovery(cluster)
    await never.close()  # closing what never started is fine
    assert never.announced is None


@pytest.mark.parametrize("steps", [1, 2, 5, 20])
async def test_close_while_starting_leaves_nothing_open(cluster: str, steps: int) -> None:
    a = MDNSDiscovery(cluster)
    starting = asyncio.create_task(a.start("node-a", PeerAddress("localhost", 7101), print, print))
    for _ in range(steps):
        await asyncio.sleep(0)
    await a.close()
    await starting  # returns quietly: the node is shutting down anyway
    assert a._aiozc is None
    assert a._tasks == []
    assert repr(a).endswith("state=closed)")


async def test_host_name_bind_is_resolved(cluster: str) -> None:
    a = MDNSDiscovery(cluster)
    await a.start("node-a", PeerAddress("localhost", 7101), print, print)
    try:
        assert a.announced is not None
        assert a.announced.hosts in (("127.0.0.1",), ("::1",))
    finally:
        await a.close()


def test_sockets_of_this_test_live_in_their_own_namespace(isolated_network: str | None) -> None:
    from crdtcache.discovery._addresses import local_addresses

    if isolated_network is None:
        pytest.skip("network namespaces unavailable: host loopback used")
    assert local_addresses() == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
