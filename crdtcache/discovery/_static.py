"""Discovery from a fixed list of ``host:port`` seeds, for networks without multicast.

Every seed is reported when discovery starts and again every ``report_interval``
seconds for as long as it runs: a seed that was down, or one the transport gave up on,
is dialled again later. The node's own address is never reported, so one seed list
can be shared by every node of a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from crdtcache._errors import CacheError, ConfigError
from crdtcache.discovery._addresses import host_ip, local_addresses, names_same_socket
from crdtcache.discovery._base import REPORT_INTERVAL, PeerAddress

__all__ = ["MAX_SEEDS", "StaticSeeds", "StaticSeedsStatistics", "parse_seed", "parse_seeds"]

log = logging.getLogger(__name__)

#: Most seeds one node accepts: a seed list names a few stable nodes, not the cluster.
MAX_SEEDS: Final = 1024

# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOSTNAME: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_BRACKETED: Final = re.compile(r"\[([^\[\]]+)\]:([^:]*)")

_NEW, _RUNNING, _CLOSED = "new", "running", "closed"


def parse_seed(text: str) -> PeerAddress:
    """Parse one ``host:port`` seed: IPv4, a host name, or a bracketed IPv6 address.

    ``"10.0.0.2:7946"``, ``"cache-1.internal:7946"`` and ``"[fd00::2]:7946"`` are
    accepted. Returns a :class:`PeerAddress` without a node id (the IPv6 host without
    its brackets). Raises :class:`ConfigError` naming the entry and what is wrong.
    """
    if not isinstance(text, str):
        raise ConfigError(f"seed {text!r}: expected a 'host:port' string")
    entry = text.strip()
    if entry.startswith("["):
        bracketed = _BRACKETED.fullmatch(entry)
        if bracketed is None:
            raise ConfigError(f"seed {text!r}: expected '[IPv6 address]:port'")
        host, port_text = bracketed.groups()
        ip = host_ip(host)
        if ip is None or ip.version != 6:
            raise ConfigError(f"seed {text!r}: only IPv6 addresses go inside brackets")
    else:
        host, sep, port_text = entry.rpartition(":")
        if not sep:
            raise ConfigError(f"seed {text!r}: missing ':port' (expected 'host:port')")
        if ":" in host:
            raise ConfigError(f"seed {text!r}: write an IPv6 address in brackets, '[{host}]:port'")
        if not host:
            raise ConfigError(f"seed {text!r}: missing host (expected 'host:port')")
        if host_ip(host) is None:
            if re.fullmatch(r"[0-9.]+", host):
                # Digits and dots only would pass as a host name, but it is a mistyped IPv4.
                raise ConfigError(f"seed {text!r}: {host!r} is not a valid IPv4 address")
            if len(host) > 253 or not _HOSTNAME.fullmatch(host):
                raise ConfigError(f"seed {text!r}: {host!r} is not a valid host name")
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"seed {text!r}: port must be a number from 1 to 65535")
    return PeerAddress(host, int(port_text))


def parse_seeds(seeds: Sequence[str]) -> tuple[PeerAddress, ...]:
    """Parse a seed list with :func:`parse_seed`, dropping duplicates (order kept).

    Raises :class:`ConfigError` for a malformed entry, for a single string passed
    where a list is expected, and for more than :data:`MAX_SEEDS` entries.
    """
    if isinstance(seeds, (str, bytes)):
        # A lone "host:port" would otherwise be read as a list of one-character seeds.
        raise ConfigError(f"seeds must be a list of 'host:port' strings, not {seeds!r}")
    parsed = tuple(dict.fromkeys(parse_seed(seed) for seed in seeds))
    if len(parsed) > MAX_SEEDS:
        raise ConfigError(f"at most {MAX_SEEDS} seeds are accepted, got {len(parsed)}")
    return parsed


@dataclass(frozen=True, slots=True)
class StaticSeedsStatistics:
    """Counters of a :class:`StaticSeeds`."""

    #: Seeds configured, and those reported (this node's own address left out).
    seeds: int
    targets: int
    #: Rounds of reports made (one at start, then one every ``report_interval``).
    reports: int


class StaticSeeds:
    """Reports a fixed list of seeds; implements :class:`~crdtcache.discovery.Discovery`.

    ``seeds`` are ``host:port`` strings (see :func:`parse_seed`), parsed at once:
    a malformed entry raises :class:`ConfigError` here, not when the node starts.
    Seeds carry no node id and never report a loss; whether a seed is up is for
    the transport to find out.
    """

    def __init__(self, seeds: Sequence[str], *, report_interval: float = REPORT_INTERVAL) -> None:
        if not report_interval > 0:
            raise ConfigError(f"report_interval must be positive, got {report_interval!r}")
        self.seeds: tuple[PeerAddress, ...] = parse_seeds(seeds)
        self.report_interval = report_interval
        self._state = _NEW
        self._targets: tuple[PeerAddress, ...] = ()
        self._on_found: Callable[[PeerAddress], None] | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._reports = 0

    def __repr__(self) -> str:
        return f"StaticSeeds([{', '.join(repr(str(s)) for s in self.seeds)}])"

    async def start(
        self,
        node_id: str,
        address: PeerAddress,
        on_found: Callable[[PeerAddress], None],
        on_lost: Callable[[str], None],
    ) -> None:
        """Report every seed but ``address`` now, then every ``report_interval`` seconds.

        Raises :class:`CacheError` if called twice or after :meth:`close`.
        """
        if self._state != _NEW:
            raise CacheError(f"StaticSeeds.start() called when {self._state}")
        self._state = _RUNNING
        local = local_addresses()
        self._targets = tuple(
            seed
            for seed in self.seeds
            if not (seed.port == address.port and names_same_socket(seed.host, address.host, local))
        )
        if len(self._targets) < len(self.seeds):
            log.debug("node %s skips its own address among its seeds", node_id)
        if not self._targets:
            log.info("node %s has no seeds to dial: it waits for peers to dial in", node_id)
            return
        self._on_found = on_found
        self._report()
        self._reporter = asyncio.get_running_loop().create_task(
            self._report_forever(), name="crdtcache-static-seeds"
        )

    async def close(self) -> None:
        """Stop reporting; idempotent."""
        self._state = _CLOSED
        if self._reporter is not None:
            self._reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reporter
            self._reporter = None

    def statistics(self) -> StaticSeedsStatistics:
        """Seeds configured, targets reported (own address excluded), reports made."""
        return StaticSeedsStatistics(len(self.seeds), len(self._targets), self._reports)

    async def _report_forever(self) -> None:
        while True:
            await asyncio.sleep(self.report_interval)
            self._report()

    def _report(self) -> None:
        assert self._on_found is not None
        self._reports += 1
        for seed in self._targets:
            try:
                self._on_found(seed)
            except Exception:  # one failing callback must not stop the other seeds
                log.exception("on_found(%s) failed", seed)
