"""How a node finds its peers: mDNS on a LAN, a static seed list, or nothing.

Every mechanism implements :class:`Discovery`: the transport starts it once it has
bound its listening socket and dials every :class:`PeerAddress` it reports. A report
is a hint, never trust: the peer still has to pass the transport's handshake.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from crdtcache._errors import ConfigError
from crdtcache.discovery._base import REPORT_INTERVAL, Discovery, PeerAddress
from crdtcache.discovery._mdns import (
    PROTOCOL_VERSION,
    SERVICE_TYPE,
    MDNSDiscovery,
    MDNSStatistics,  # noqa: F401  # typed statistics; __all__ is pinned by a test
)
from crdtcache.discovery._none import CombinedDiscovery, NoDiscovery
from crdtcache.discovery._static import (
    StaticSeeds,
    StaticSeedsStatistics,  # noqa: F401  # typed statistics; __all__ is pinned by a test
    parse_seed,
    parse_seeds,
)

__all__ = [
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

#: The values ``discovery=`` accepts.
DISCOVERY_KINDS: Final = ("mdns", "static", "none")


def make_discovery(kind: str, *, cluster: str, seeds: Sequence[str] = ()) -> Discovery:
    """Build the discovery for ``Cache(discovery=kind, cluster=..., seeds=...)``.

    ``"mdns"`` finds the nodes of ``cluster`` on the LAN, ``"static"`` reports
    ``seeds`` only, ``"none"`` finds nothing. Seeds are reported in every mode, so
    ``"mdns"`` with seeds also reaches nodes beyond the LAN and ``"none"`` with seeds
    is the same as ``"static"``. Raises :class:`ConfigError` for an unknown kind, a
    malformed seed or an invalid cluster name.
    """
    if kind not in DISCOVERY_KINDS:
        choices = ", ".join(repr(k) for k in DISCOVERY_KINDS)
        raise ConfigError(f"discovery must be one of {choices}, got {kind!r}")
    parsed = parse_seeds(seeds)  # validate early, whatever the kind
    static = StaticSeeds(seeds) if parsed else None
    if kind == "mdns":
        mdns = MDNSDiscovery(cluster)
        return mdns if static is None else CombinedDiscovery(mdns, static)
    if static is not None:
        return static
    if kind == "static":
        # Legitimate for the first node of a cluster, which the others list as their seed.
        return StaticSeeds(())
    return NoDiscovery()
