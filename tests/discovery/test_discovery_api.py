"""The public surface of crdtcache.discovery and the factory the cache uses."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

import pytest

import crdtcache.discovery as discovery
from crdtcache import CacheError, ConfigError
from crdtcache.discovery import (
    CombinedDiscovery,
    Discovery,
    MDNSDiscovery,
    NoDiscovery,
    PeerAddress,
    StaticSeeds,
    make_discovery,
)


def test_public_names_are_pinned() -> None:
    assert sorted(discovery.__all__) == sorted(
        [
            "DISCOVERY_KINDS",
            "PROTOCOL_VERSION",
            "REPORT_INTERVAL",
            "SERVICE_TYPE",
            "CombinedDiscovery",
            "Discovery",
            "MDNSDiscovery",
            "NoDiscovery",
            "PeerAddress",
            "StaticSeeds",
            "make_discovery",
            "parse_seed",
        ]
    )
    for name in discovery.__all__:
        assert getattr(discovery, name) is not None


@pytest.mark.parametrize("cls", [MDNSDiscovery, StaticSeeds, NoDiscovery, CombinedDiscovery])
def test_every_mechanism_has_the_discovery_methods(cls: type) -> None:
    for method in ("start", "close"):
        ours = inspect.signature(getattr(cls, method))
        protocol = inspect.signature(getattr(Discovery, method))
        assert list(ours.parameters) == list(protocol.parameters)
        assert inspect.iscoroutinefunction(getattr(cls, method))


def test_peer_address_text_brackets_ipv6() -> None:
    assert str(PeerAddress("10.0.0.2", 7946)) == "10.0.0.2:7946"
    assert str(PeerAddress("::1", 7946, "n")) == "[::1]:7946"
    assert discovery.parse_seed(str(PeerAddress("fd00::2", 1))) == PeerAddress("fd00::2", 1)


def test_make_discovery_kinds() -> None:
    assert isinstance(make_discovery("mdns", cluster="c"), MDNSDiscovery)
    assert isinstance(make_discovery("none", cluster="c"), NoDiscovery)
    static = make_discovery("static", cluster="c", seeds=["10.0.0.2:7946"])
    assert isinstance(static, StaticSeeds)
    assert static.seeds == (PeerAddress("10.0.0.2", 7946),)
    # The first node of a static cluster has no seeds: the others dial it.
    empty = make_discovery("static", cluster="c")
    assert isinstance(empty, StaticSeeds) and empty.seeds == ()


def test_seeds_are_reported_in_every_mode() -> None:
    both = make_discovery("mdns", cluster="c", seeds=["10.0.0.2:7946"])
    assert isinstance(both, CombinedDiscovery)
    assert [type(p) for p in both.parts] == [MDNSDiscovery, StaticSeeds]
    assert isinstance(make_discovery("none", cluster="c", seeds=["10.0.0.2:7946"]), StaticSeeds)


@pytest.mark.parametrize(
    ("kind", "seeds", "cluster", "complaint"),
    [
        ("MDNS", (), "c", "discovery must be one of 'mdns', 'static', 'none'"),
        ("consul", (), "c", "got 'consul'"),
        ("none", ("nope",), "c", "missing ':port'"),
        ("static", "10.0.0.2:7946", "c", "list of 'host:port' strings"),
        ("mdns", (), "", "cluster name must be non-empty"),
    ],
)
def test_make_discovery_refuses(
    kind: str, seeds: tuple[str, ...], cluster: str, complaint: str
) -> None:
    with pytest.raises(ConfigError, match=complaint):
        make_discovery(kind, cluster=cluster, seeds=seeds)


def record() -> tuple[list[PeerAddress], Callable[[PeerAddress], None]]:
    found: list[PeerAddress] = []
    return found, found.append


async def test_no_discovery_finds_nothing() -> None:
    none = NoDiscovery()
    found, on_found = record()
    await none.start("me", PeerAddress("127.0.0.1", 1), on_found, lambda n: None)
    await none.close()
    await none.close()
    assert found == []
    assert repr(none) == "NoDiscovery()"


class Broken:
    def __init__(self, fail_start: bool) -> None:
        self.fail_start = fail_start
        self.closed = 0

    async def start(
        self,
        node_id: str,
        address: PeerAddress,
        on_found: Callable[[PeerAddress], None],
        on_lost: Callable[[str], None],
    ) -> None:
        if self.fail_start:
            raise ConfigError("cannot start")

    async def close(self) -> None:
        self.closed += 1
        raise CacheError("cannot close")


async def test_combined_discovery_reports_from_every_part() -> None:
    combined = CombinedDiscovery(StaticSeeds(["10.0.0.2:1"]), StaticSeeds(["10.0.0.3:1"]))
    found, on_found = record()
    await combined.start("me", PeerAddress("10.0.0.1", 1), on_found, lambda n: None)
    await combined.close()
    assert found == [PeerAddress("10.0.0.2", 1), PeerAddress("10.0.0.3", 1)]
    assert repr(combined).startswith("CombinedDiscovery(StaticSeeds(")


async def test_combined_discovery_undoes_a_failed_start(caplog: pytest.LogCaptureFixture) -> None:
    first, second = Broken(fail_start=False), Broken(fail_start=True)
    combined = CombinedDiscovery(first, second)
    with (
        caplog.at_level(logging.WARNING, logger="crdtcache.discovery._none"),
        pytest.raises(ConfigError, match="cannot start"),
    ):
        await combined.start("me", PeerAddress("10.0.0.1", 1), lambda a: None, lambda n: None)
    assert (first.closed, second.closed) == (1, 0)
    assert "cannot close" in caplog.text  # close trouble is logged, never raised
    await combined.close()
    assert (first.closed, second.closed) == (2, 1)
