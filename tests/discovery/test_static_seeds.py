"""Static seeds: parsing, reporting, periodic re-reporting, and skipping our own address."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging

import pytest

from crdtcache import ConfigError
from crdtcache.discovery import PeerAddress, StaticSeeds, parse_seed
from crdtcache.discovery._addresses import local_addresses, names_same_socket
from crdtcache.discovery._static import MAX_SEEDS, parse_seeds


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("10.0.0.2:7946", "10.0.0.2", 7946),
        ("cache-1.internal:7946", "cache-1.internal", 7946),
        ("localhost:1", "localhost", 1),
        ("example.com.:65535", "example.com.", 65535),
        ("[::1]:7946", "::1", 7946),
        ("[fd00::2]:80", "fd00::2", 80),
        ("[fe80::1%eth0]:7946", "fe80::1%eth0", 7946),
        ("  10.0.0.2:7946\n", "10.0.0.2", 7946),
    ],
)
def test_parse_good_seeds(text: str, host: str, port: int) -> None:
    assert parse_seed(text) == PeerAddress(host, port)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "missing ':port'"),
        ("10.0.0.2", "missing ':port'"),
        (":7946", "missing host"),
        ("10.0.0.2:", "port must be"),
        ("10.0.0.2:0", "port must be"),
        ("10.0.0.2:65536", "port must be"),
        ("10.0.0.2:http", "port must be"),
        ("10.0.0.2:+80", "port must be"),
        ("10.0.0.2:\u0663", "port must be"),  # an Arabic-Indic digit is not a port
        ("::1:7946", "in brackets"),
        ("fd00::2", "in brackets"),
        ("[10.0.0.2]:7946", "only IPv6"),
        ("[not-an-ip]:7946", "only IPv6"),
        ("[::1]", "expected '[IPv6 address]:port'"),
        ("[::1]:", "port must be"),
        ("[::1]7946", "expected '[IPv6 address]:port'"),
        ("999.1.1.1:80", "not a valid IPv4"),
        ("10.0.2:80", "not a valid IPv4"),
        ("bad_host:80", "not a valid host name"),
        ("-bad:80", "not a valid host name"),
        ("a b:80", "not a valid host name"),
        ("a..b:80", "not a valid host name"),
        ("x" * 64 + ".com:80", "not a valid host name"),
    ],
)
def test_parse_bad_seeds(text: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match="seed") as info:
        parse_seed(text)
    assert complaint in str(info.value)
    assert repr(text) in str(info.value)  # the message names the entry


def test_parse_seed_refuses_non_strings() -> None:
    with pytest.raises(ConfigError, match="expected a 'host:port' string"):
        parse_seed(7946)  # type: ignore[arg-type]  # the mistake under test


def test_a_single_string_is_not_a_seed_list() -> None:
    with pytest.raises(ConfigError, match="list of 'host:port' strings"):
        StaticSeeds("10.0.0.2:7946")


def test_seed_list_drops_duplicates_and_is_bounded() -> None:
    seeds = parse_seeds(["a:1", "b:2", "a:1"])
    assert seeds == (PeerAddress("a", 1), PeerAddress("b", 2))
    with pytest.raises(ConfigError, match=f"at most {MAX_SEEDS}"):
        parse_seeds([f"h{i}:1" for i in range(MAX_SEEDS + 1)])


def test_bad_report_interval() -> None:
    with pytest.raises(ConfigError, match="report_interval"):
        StaticSeeds(["a:1"], report_interval=0)


class Reports:
    def __init__(self) -> None:
        self.found: list[PeerAddress] = []

    def on_found(self, address: PeerAddress) -> None:
        self.found.append(address)

    def on_lost(self, node_id: str) -> None:
        raise AssertionError("static seeds never report a loss")


async def test_seeds_are_reported_at_start_then_periodically() -> None:
    seeds = StaticSeeds(["10.0.0.2:7946", "[fd00::3]:7946"], report_interval=0.05)
    reports = Reports()
    await seeds.start("me", PeerAddress("10.0.0.1", 7946), reports.on_found, reports.on_lost)
    try:
        # Reported before start() returns: the transport dials at once.
        assert reports.found == [PeerAddress("10.0.0.2", 7946), PeerAddress("fd00::3", 7946)]
        await asyncio.sleep(0.23)
        assert 4 <= len(reports.found) // 2 <= 6  # once at start, then every 0.05 s
        assert set(reports.found) == set(seeds.seeds)
        assert dataclasses.asdict(seeds.statistics()) == {
            "seeds": 2,
            "targets": 2,
            "reports": len(reports.found) // 2,
        }
    finally:
        await seeds.close()
    count = len(reports.found)
    await asyncio.sleep(0.12)
    assert len(reports.found) == count  # nothing after close
    await seeds.close()  # idempotent


async def test_own_address_is_skipped() -> None:
    seeds = StaticSeeds(
        ["127.0.0.1:7946", "localhost:7946", "127.0.0.1:7947", "203.0.113.9:7946", "[::1]:7946"]
    )
    reports = Reports()
    await seeds.start("me", PeerAddress("127.0.0.1", 7946), reports.on_found, reports.on_lost)
    await seeds.close()
    assert reports.found == [
        PeerAddress("127.0.0.1", 7947),
        PeerAddress("203.0.113.9", 7946),
        PeerAddress("::1", 7946),  # a different socket than 127.0.0.1:7946
    ]


async def test_own_address_is_skipped_behind_a_wildcard_bind() -> None:
    local = [ip for ip in local_addresses() if ip.version == 4 and not ip.is_loopback]
    entries = ["127.0.0.1:7946", "203.0.113.9:7946", *(f"{ip}:7946" for ip in local)]
    seeds = StaticSeeds(entries)
    reports = Reports()
    await seeds.start("me", PeerAddress("0.0.0.0", 7946), reports.on_found, reports.on_lost)
    await seeds.close()
    assert reports.found == [PeerAddress("203.0.113.9", 7946)]


async def test_only_own_address_means_no_reports() -> None:
    seeds = StaticSeeds(["127.0.0.1:7946"], report_interval=0.01)
    reports = Reports()
    await seeds.start("me", PeerAddress("127.0.0.1", 7946), reports.on_found, reports.on_lost)
    await asyncio.sleep(0.05)
    await seeds.close()
    assert reports.found == []
    assert seeds.statistics().targets == 0


async def test_empty_seed_list_waits_for_peers() -> None:
    seeds = StaticSeeds([])
    reports = Reports()
    await seeds.start("me", PeerAddress("127.0.0.1", 7946), reports.on_found, reports.on_lost)
    await seeds.close()
    assert reports.found == []


async def test_failing_callback_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    seeds = StaticSeeds(["10.0.0.2:1", "10.0.0.3:1"])
    found: list[PeerAddress] = []

    def on_found(address: PeerAddress) -> None:
        found.append(address)
        raise RuntimeError("transport trouble")

    with caplog.at_level(logging.ERROR, logger="crdtcache.discovery._static"):
        await seeds.start("me", PeerAddress("10.0.0.1", 1), on_found, lambda node: None)
        await seeds.close()
    assert len(found) == 2
    assert "on_found(10.0.0.2:1) failed" in caplog.text


async def test_start_twice_or_after_close_is_refused() -> None:
    from crdtcache import CacheError

    seeds = StaticSeeds(["10.0.0.2:1"])
    await seeds.start("me", PeerAddress("10.0.0.1", 1), lambda a: None, lambda n: None)
    with pytest.raises(CacheError, match="running"):
        await seeds.start("me", PeerAddress("10.0.0.1", 1), lambda a: None, lambda n: None)
    await seeds.close()
    with pytest.raises(CacheError, match="closed"):
        await seeds.start("me", PeerAddress("10.0.0.1", 1), lambda a: None, lambda n: None)


def test_repr_lists_seeds() -> None:
    assert repr(StaticSeeds(["a:1", "[::1]:2"])) == "StaticSeeds(['a:1', '[::1]:2'])"


@pytest.mark.parametrize(
    ("candidate", "bound", "same"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("LOCALHOST", "127.0.0.1", True),
        ("localhost", "::1", True),
        ("::1", "127.0.0.1", False),
        ("10.0.0.1", "10.0.0.2", False),
        ("cache-1", "cache-1", True),
        ("cache-1", "10.0.0.2", False),
        ("127.0.0.2", "0.0.0.0", True),  # all of 127/8 reaches a wildcard bind
        ("10.99.0.1", "0.0.0.0", True),  # with 10.99.0.1 among the local addresses
        ("10.99.0.2", "0.0.0.0", False),
        ("::1", "0.0.0.0", False),  # an IPv4 wildcard does not take IPv6
        ("::1", "::", True),
        ("127.0.0.1", "::", True),  # "::" is dual-stack
        ("cache-1", "0.0.0.0", False),
    ],
)
def test_names_same_socket(candidate: str, bound: str, same: bool) -> None:
    local = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.99.0.1")]
    assert names_same_socket(candidate, bound, local) is same
