"""What the discovery mechanisms need to know about this host's own addresses.

Both mechanisms must recognise the node's own address (a seed list shared by every
node names it; an mDNS node hears its own announcement), and mDNS must know what to
announce when the transport listens on a wildcard address.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Final

import ifaddr

__all__ = [
    "IPAddress",
    "host_ip",
    "is_wildcard",
    "local_addresses",
    "names_same_socket",
]

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Hosts meaning "every interface" when a socket is bound to them.
_WILDCARDS: Final = frozenset({"", "0.0.0.0", "::"})
#: The one host name treated as an address without asking a resolver.
_LOCALHOST: Final = "localhost"


def host_ip(host: str) -> IPAddress | None:
    """The IP address ``host`` spells (an IPv6 zone is dropped), or None for a name."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def is_wildcard(host: str) -> bool:
    """Whether a socket bound to ``host`` listens on every interface."""
    return host in _WILDCARDS


def local_addresses() -> list[IPAddress]:
    """Every IP address configured on this host's interfaces (loopback included).

    IPv4 first, then IPv6, each in interface order. An unreadable interface table is
    logged and reads as empty: callers fall back to what they were given.
    """
    try:
        adapters = ifaddr.get_adapters()
    except OSError as exc:  # the interface table is unreadable (seccomp, odd platforms)
        log.warning("cannot list network interfaces: %s", exc)
        return []
    v4: list[IPAddress] = []
    v6: list[IPAddress] = []
    for adapter in adapters:
        for entry in adapter.ips:
            # ifaddr gives IPv4 as a str and IPv6 as (address, flowinfo, scope_id).
            raw = entry.ip if isinstance(entry.ip, str) else entry.ip[0]
            ip = host_ip(raw)
            if ip is None:
                continue
            (v4 if ip.version == 4 else v6).append(ip)
    return list(dict.fromkeys(v4 + v6))


def names_same_socket(candidate: str, bound: str, local: list[IPAddress] | None = None) -> bool:
    """Whether dialling host ``candidate`` reaches a socket bound to host ``bound`` here.

    Only answers what can be known without a resolver: ``localhost`` reaches a loopback
    bind, and a wildcard bind is reached through any local address (``local``, by
    default :func:`local_addresses`). The ports are the caller's business. A hostname
    other than ``localhost`` only matches the same spelling: the transport's handshake
    still catches a node that dials itself under another name.
    """
    if candidate.lower() == bound.lower():
        return True
    bound_ip = host_ip(bound)
    if candidate.lower() == _LOCALHOST:
        wanted: list[IPAddress] = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    else:
        ip = host_ip(candidate)
        if ip is None:
            return False
        wanted = [ip]
    if is_wildcard(bound):
        # "::" is dual-stack on Linux by default, so it is reached over IPv4 as well.
        families = {4} if bound == "0.0.0.0" else {4, 6}
        mine = set(local_addresses() if local is None else local)
        return any(ip.version in families and (ip.is_loopback or ip in mine) for ip in wanted)
    return bound_ip is not None and bound_ip in wanted
