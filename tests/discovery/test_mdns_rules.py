"""The pure parts of mDNS discovery: names, what an announcement must say, what to announce."""

from __future__ import annotations

import ipaddress

import pytest
from zeroconf import InterfaceChoice, IPVersion
from zeroconf._utils.name import service_type_name

from crdtcache import ConfigError
from crdtcache.discovery import PeerAddress
from crdtcache.discovery._mdns import (
    MAX_ADDRESSES_PER_PEER,
    PROTOCOL_VERSION,
    SERVICE_TYPE,
    Announcement,
    MDNSDiscovery,
    _ip_version,
    instance_label,
    plan_announcement,
    read_announcement,
)


def ips(*texts: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return [ipaddress.ip_address(t) for t in texts]


def test_protocol_version_matches_the_transport() -> None:
    from crdtcache.core import PROTOCOL_VERSION as WIRE_VERSION

    assert PROTOCOL_VERSION == WIRE_VERSION


@pytest.mark.parametrize(
    "node_id",
    ["node-a", "a.b.c", "x" * 128, "ünïcødé ✓", "", "---", "has space/and:colon", "\x00\x1f"],
)
def test_instance_label_is_a_valid_dns_sd_label(node_id: str) -> None:
    label = instance_label("default", node_id)
    assert len(label.encode()) <= 63
    assert "." not in label
    assert service_type_name(f"{label}.{SERVICE_TYPE}") == SERVICE_TYPE
    assert instance_label("default", node_id) == label  # deterministic


def test_instance_label_keeps_nodes_and_clusters_apart() -> None:
    labels = {
        instance_label("prod", "node-1"),
        instance_label("staging", "node-1"),
        instance_label("prod", "node-2"),
        instance_label("prod", "node.1"),  # same readable prefix as "node-1"
        instance_label("prod-", "1node"),  # the hash input is length-prefixed
        instance_label("prod", "-1node"),
    }
    assert len(labels) == 6
    assert instance_label("prod", "node-1").startswith("node-1-")


GOOD = {"cluster": "c", "node": "n1", "proto": str(PROTOCOL_VERSION)}


def test_read_good_announcement() -> None:
    got = read_announcement(GOOD, 7946, ips("fd00::2", "10.0.0.2"), cluster="c")
    assert got == Announcement("n1", 7946, ("10.0.0.2", "fd00::2"))  # IPv4 first
    assert isinstance(got, Announcement)
    assert got.addresses() == [
        PeerAddress("10.0.0.2", 7946, "n1"),
        PeerAddress("fd00::2", 7946, "n1"),
    ]


@pytest.mark.parametrize(
    ("properties", "port", "addresses", "reason"),
    [
        ({**GOOD, "cluster": "other"}, 1, ["10.0.0.2"], "cluster 'other'"),
        ({"node": "n1", "proto": "1"}, 1, ["10.0.0.2"], "cluster None"),
        (
            {**GOOD, "proto": str(PROTOCOL_VERSION + 1)},
            1,
            ["10.0.0.2"],
            f"proto '{PROTOCOL_VERSION + 1}'",
        ),
        ({**GOOD, "proto": None}, 1, ["10.0.0.2"], "proto None"),
        ({**GOOD, "node": ""}, 1, ["10.0.0.2"], "node id missing"),
        ({**GOOD, "node": None}, 1, ["10.0.0.2"], "node id missing"),
        (GOOD, None, ["10.0.0.2"], "port None"),
        (GOOD, 0, ["10.0.0.2"], "port 0"),
        (GOOD, 1, [], "address"),
        (GOOD, 1, ["fe80::1", "0.0.0.0", "224.0.0.251", "::"], "address"),
    ],
)
def test_read_announcement_refuses(
    properties: dict[str, str | None], port: int | None, addresses: list[str], reason: str
) -> None:
    got = read_announcement(properties, port, ips(*addresses), cluster="c")
    assert isinstance(got, str)
    assert got.startswith(reason)


def test_read_announcement_bounds_addresses() -> None:
    many = [f"10.0.0.{i}" for i in range(1, 50)] + ["10.0.0.1"]
    got = read_announcement(GOOD, 1, ips(*many), cluster="c")
    assert isinstance(got, Announcement)
    assert got.hosts == tuple(f"10.0.0.{i}" for i in range(1, MAX_ADDRESSES_PER_PEER + 1))


LOCAL = ips("127.0.0.1", "192.0.2.2", "169.254.1.1", "::1", "fd00::2", "fe80::1")


@pytest.mark.parametrize(
    ("bound", "interfaces", "where", "announced"),
    [
        ("127.0.0.1", None, ["127.0.0.1"], ["127.0.0.1"]),
        ("127.0.0.5", None, ["127.0.0.1"], ["127.0.0.5"]),
        ("::1", None, ["127.0.0.1"], ["::1"]),  # zeroconf cannot run on ::1
        ("192.0.2.2", None, ["192.0.2.2"], ["192.0.2.2"]),
        ("192.0.2.2", ["127.0.0.1"], ["127.0.0.1"], ["192.0.2.2"]),
        # Wildcards: every external address of the family, link-local excluded.
        ("0.0.0.0", None, InterfaceChoice.All, ["192.0.2.2"]),
        ("::", None, InterfaceChoice.All, ["192.0.2.2", "fd00::2"]),
        ("0.0.0.0", ["192.0.2.2"], ["192.0.2.2"], ["192.0.2.2"]),
        ("0.0.0.0", ["127.0.0.1"], ["127.0.0.1"], ["127.0.0.1"]),
    ],
)
def test_plan_announcement(
    bound: str,
    interfaces: list[str] | None,
    where: list[str] | InterfaceChoice,
    announced: list[str],
) -> None:
    assert plan_announcement(ipaddress.ip_address(bound), interfaces, LOCAL) == (where, announced)


def test_plan_for_a_wildcard_with_only_loopback_announces_loopback() -> None:
    assert plan_announcement(ipaddress.ip_address("::"), None, ips("127.0.0.1", "::1")) == (
        InterfaceChoice.All,
        ["127.0.0.1"],
    )


def test_mdns_runs_over_ipv4_unless_given_only_ipv6_interfaces() -> None:
    assert _ip_version(InterfaceChoice.All) is IPVersion.V4Only
    assert _ip_version(["127.0.0.1"]) is IPVersion.V4Only
    assert _ip_version(["127.0.0.1", "fd00::2"]) is IPVersion.V4Only
    assert _ip_version(["fd00::2"]) is IPVersion.V6Only


@pytest.mark.parametrize(
    ("kwargs", "complaint"),
    [
        ({"cluster": ""}, "cluster name must be non-empty"),
        ({"cluster": "c" * 300}, "at most 247 bytes"),
        ({"cluster": 7}, "cluster must be a str"),
        ({"cluster": "c", "interfaces": "127.0.0.1"}, "list of IP addresses"),
        ({"cluster": "c", "interfaces": []}, "non-empty list"),
        ({"cluster": "c", "interfaces": ["eth0"]}, "non-empty list"),
        ({"cluster": "c", "report_interval": 0}, "must be positive"),
        ({"cluster": "c", "resolve_timeout": -1}, "must be positive"),
        ({"cluster": "c", "max_concurrent_resolutions": 0}, "at least 1"),
    ],
)
def test_bad_options(kwargs: dict[str, object], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        MDNSDiscovery(**kwargs)  # type: ignore[arg-type]  # wrong types are the point


def test_repr() -> None:
    assert repr(MDNSDiscovery("c")) == "MDNSDiscovery(cluster='c', state=new)"
