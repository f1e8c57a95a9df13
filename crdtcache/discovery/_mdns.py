"""Peer discovery over multicast DNS (DNS-SD), for nodes sharing a LAN.

Theory of operation
-------------------
* Each node registers one instance of :data:`SERVICE_TYPE` whose TXT record carries
  ``cluster``, ``node`` (node id) and ``proto`` (:data:`PROTOCOL_VERSION`), and browses
  the same type. The instance label is derived from (cluster, node id) by
  :func:`instance_label`, so two nodes never claim one name; that is what makes skipping
  the ~1.2 s probing phase (``cooperating_responders=True``) safe.
* The browser callback never blocks or awaits: it records the instance and queues its
  name (bounded, de-duplicated). :data:`MAX_CONCURRENT_RESOLUTIONS` workers resolve
  queued names (SRV, TXT, A/AAAA; usually straight from the cache, since an
  announcement carries them all) within ``resolve_timeout``.
* An announcement is untrusted input. It is reported only when its TXT names our
  cluster and protocol, a node id other than ours, a port and at least one usable
  address. Everything else is counted in :meth:`MDNSDiscovery.statistics` and logged.
* A reported instance is remembered by name. Its goodbye (or TTL expiry,
  :data:`RECORD_TTL` after a crash) is reported via ``on_lost``; while it lives it
  is reported again every ``report_interval`` seconds, and failed resolutions are retried
  on the same beat. Every table is bounded (:data:`MAX_TRACKED_SERVICES`).
* Questions are multicast (QM). Several processes on one host share UDP port 5353
  (SO_REUSEPORT) and the kernel hands a unicast reply to just one of them, often
  the wrong one; multicast replies reach every process. Measured on one host's
  loopback: a newcomer found a running node in 1.1-1.4 s with zeroconf's default
  unicast-response first question, 0.15-0.25 s with QM. The cost: a node whose own
  announcement is under a second old multicasts its answer only once that second is
  over (RFC 6762 section 6), so a newcomer may wait ~1 s for it; that node has heard
  the newcomer's announcement by then, so the transport connects from its side at once.
* Where to announce follows the address the transport bound (:func:`plan_announcement`):
  a loopback bind announces on loopback only (nobody else could dial it), a specific
  address on that interface, a wildcard bind on every interface with every
  non-loopback address.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from zeroconf import DNSQuestionType, InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf import Error as ZeroconfError
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from crdtcache._errors import CacheError, ConfigError

# Announced in TXT ``proto``: nodes speaking another version are not reported (they
# could not talk). One definition, the core's, serves the wire and the announcement.
from crdtcache.core import PROTOCOL_VERSION
from crdtcache.discovery._addresses import IPAddress, host_ip, is_wildcard, local_addresses
from crdtcache.discovery._base import REPORT_INTERVAL, PeerAddress

__all__ = [
    "MAX_ADDRESSES_PER_PEER",
    "MAX_CONCURRENT_RESOLUTIONS",
    "MAX_PENDING_RESOLUTIONS",
    "MAX_TRACKED_SERVICES",
    "MAX_TXT_ENTRY_BYTES",
    "PROTOCOL_VERSION",
    "RECORD_TTL",
    "RESOLVE_TIMEOUT",
    "SERVICE_TYPE",
    "Announcement",
    "MDNSDiscovery",
    "MDNSStatistics",
    "instance_label",
    "plan_announcement",
    "read_announcement",
]

log = logging.getLogger(__name__)

#: The DNS-SD service type every crdtcache node registers and browses.
SERVICE_TYPE: Final = "_crdtcache._tcp.local."
#: Seconds one resolution of a service instance may take.
RESOLVE_TIMEOUT: Final = 3.0
#: Resolutions running at once; more queue up.
MAX_CONCURRENT_RESOLUTIONS: Final = 4
#: Names waiting for resolution; beyond it a name waits for the next report tick.
MAX_PENDING_RESOLUTIONS: Final = 256
#: Service instances tracked (of any cluster); beyond it new instances are ignored.
MAX_TRACKED_SERVICES: Final = 4096
#: Addresses kept per peer from one announcement.
MAX_ADDRESSES_PER_PEER: Final = 8
#: TTL (seconds) of our records. zeroconf's defaults keep a crashed node's records
#: for 75 minutes; 2 minutes bounds how long a node that vanished without a goodbye is
#: still reported. Browsers refresh live records before they expire.
RECORD_TTL: Final = 120
#: Longest TXT entry (``key=value``) DNS can carry.
MAX_TXT_ENTRY_BYTES: Final = 255

# Readable part of an instance label, kept well under the 63-byte DNS label limit.
_LABEL_PREFIX_CHARS: Final = 40
_UNSAFE_LABEL_CHARS: Final = re.compile(r"[^A-Za-z0-9_-]+")

# Life of one service instance seen by the browser.
_QUEUED, _RESOLVING, _FOUND, _IGNORED, _FAILED = "queued", "resolving", "found", "ignored", "failed"
# Life of the discovery object.
_NEW, _STARTING, _RUNNING, _CLOSED = "new", "starting", "running", "closed"


@dataclass(frozen=True, slots=True)
class Announcement:
    """What a peer's service instance says, once checked: who it is and where."""

    node_id: str
    port: int
    hosts: tuple[str, ...]

    def addresses(self) -> list[PeerAddress]:
        """One :class:`PeerAddress` per announced host, in order of preference."""
        return [PeerAddress(host, self.port, self.node_id) for host in self.hosts]


@dataclass(slots=True)
class _Service:
    """One service instance the browser reported, and where we are with it."""

    name: str
    state: str = _QUEUED
    peer: Announcement | None = None
    stale: bool = False  # changed while being resolved: resolve again afterwards


def instance_label(cluster: str, node_id: str) -> str:
    """The DNS-SD instance label under which ``node_id`` of ``cluster`` is announced.

    A readable prefix of the node id plus 12 hex digits of a hash of both names.
    Node ids may be longer than a DNS label (63 bytes) and hold dots or any
    character, and two clusters on one LAN may reuse a node id; since probing is
    skipped, the label itself must keep nodes apart.
    """
    digest = hashlib.blake2b(
        f"{len(cluster)}:{cluster}:{node_id}".encode(), digest_size=6
    ).hexdigest()
    prefix = _UNSAFE_LABEL_CHARS.sub("-", node_id)[:_LABEL_PREFIX_CHARS].strip("-") or "node"
    return f"{prefix}-{digest}"


def read_announcement(
    properties: Mapping[str, str | None],
    port: int | None,
    addresses: Sequence[IPAddress],
    *,
    cluster: str,
) -> Announcement | str:
    """Check a resolved instance; return the :class:`Announcement` or why it is ignored.

    Reasons start with a keyword (``cluster``, ``proto``, ``node``, ``port``,
    ``address``) that :class:`MDNSDiscovery` counts. IPv6 link-local, multicast and
    unspecified addresses are dropped (they cannot be dialled as given); at most
    :data:`MAX_ADDRESSES_PER_PEER` remain, IPv4 first.
    """
    if properties.get("cluster") != cluster:
        return f"cluster {properties.get('cluster')!r}"
    proto = properties.get("proto")
    if proto != str(PROTOCOL_VERSION):
        return f"proto {proto!r} (we speak {PROTOCOL_VERSION})"
    node_id = properties.get("node")
    if not node_id:
        return "node id missing"
    if port is None or not 1 <= port <= 65535:
        return f"port {port!r}"
    usable = [
        ip
        for ip in addresses
        if not (ip.is_multicast or ip.is_unspecified or (ip.version == 6 and ip.is_link_local))
    ]
    usable.sort(key=lambda ip: ip.version)  # stable: the announcer's order within a family
    hosts = tuple(dict.fromkeys(str(ip) for ip in usable))[:MAX_ADDRESSES_PER_PEER]
    if not hosts:
        return "address: none usable"
    return Announcement(node_id, port, hosts)


def plan_announcement(
    bound: IPAddress,
    interfaces: Sequence[str] | None,
    local: Sequence[IPAddress],
) -> tuple[list[str] | InterfaceChoice, list[str]]:
    """Where to run mDNS and which addresses to announce, for a socket bound to ``bound``.

    ``bound`` is ``0.0.0.0`` or ``::`` for a wildcard bind (``::`` is dual-stack).
    Returns (zeroconf ``interfaces``, announced addresses). ``interfaces``, when given,
    overrides where mDNS runs; ``local`` are this host's addresses
    (:func:`~crdtcache.discovery._addresses.local_addresses`).
    """
    if not bound.is_unspecified:
        if interfaces is not None:
            where: list[str] | InterfaceChoice = list(interfaces)
        elif bound.is_loopback:
            # zeroconf cannot run on ::1; IPv4 loopback carries AAAA records just as well.
            where = ["127.0.0.1"]
        else:
            where = [str(bound)]
        return where, [str(bound)]
    # A wildcard bind is reachable through every address of its family (both for a
    # dual-stack "::"); loopback ones only from this host, so they are announced only
    # when there is nothing else; link-local ones need a scope or are accidental.
    families = {4} if bound.version == 4 else {4, 6}
    if interfaces is not None:
        candidates = [ip for ip in (host_ip(i) for i in interfaces) if ip is not None]
    else:
        candidates = list(local)
    external = [
        str(ip)
        for ip in candidates
        if ip.version in families and not ip.is_loopback and not ip.is_link_local
    ]
    announced = external or ["127.0.0.1"]
    return (list(interfaces) if interfaces is not None else InterfaceChoice.All), announced


def _check_txt(key: str, value: str, what: str) -> None:
    if not value or len(f"{key}={value}".encode()) > MAX_TXT_ENTRY_BYTES:
        raise ConfigError(
            f"{what} must be non-empty and at most {MAX_TXT_ENTRY_BYTES - len(key) - 1} bytes "
            f"of UTF-8 to be announced over mDNS, got {value!r}"
        )


@dataclass(slots=True)
class _Counts:
    resolved: int = 0
    resolve_failures: int = 0
    found_reports: int = 0
    lost_reports: int = 0
    ignored_cluster: int = 0
    ignored_proto: int = 0
    ignored_self: int = 0
    ignored_invalid: int = 0
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class MDNSStatistics:
    """Counters of an :class:`MDNSDiscovery` (monotonic, except the first two).

    ``ignored_*`` count resolutions that were not reported (another cluster or protocol
    version, our own node id, a malformed announcement); ``dropped`` counts instances
    refused because a bound was reached.
    """

    #: Peers reported now, and announced instances tracked now.
    peers: int
    tracked: int
    resolved: int
    resolve_failures: int
    found_reports: int
    lost_reports: int
    ignored_cluster: int
    ignored_proto: int
    ignored_self: int
    ignored_invalid: int
    dropped: int


class MDNSDiscovery:
    """Finds the nodes of ``cluster`` on the local network over mDNS / DNS-SD.

    Implements :class:`~crdtcache.discovery.Discovery`. ``interfaces`` (IP addresses)
    overrides where mDNS runs; by default it follows the address the transport bound
    (see the module doc). ``report_interval`` is how often live peers are reported
    again, ``resolve_timeout`` the seconds one resolution may take.

    Raises :class:`ConfigError` for an invalid cluster name or option; :meth:`start`
    raises it too when mDNS cannot run here (no usable interface, port 5353 taken).
    """

    def __init__(
        self,
        cluster: str,
        *,
        interfaces: Sequence[str] | None = None,
        report_interval: float = REPORT_INTERVAL,
        resolve_timeout: float = RESOLVE_TIMEOUT,
        max_concurrent_resolutions: int = MAX_CONCURRENT_RESOLUTIONS,
    ) -> None:
        if not isinstance(cluster, str):
            raise ConfigError(f"cluster must be a str, got {cluster!r}")
        _check_txt("cluster", cluster, "the cluster name")
        if interfaces is not None:
            if isinstance(interfaces, str):
                raise ConfigError(f"interfaces must be a list of IP addresses, not {interfaces!r}")
            bad = [i for i in interfaces if not isinstance(i, str) or host_ip(i) is None]
            if bad or not interfaces:
                raise ConfigError(f"interfaces must be a non-empty list of IP addresses: {bad!r}")
        if not report_interval > 0 or not resolve_timeout > 0:
            raise ConfigError("report_interval and resolve_timeout must be positive")
        if max_concurrent_resolutions < 1:
            raise ConfigError("max_concurrent_resolutions must be at least 1")
        self.cluster = cluster
        self.interfaces: tuple[str, ...] | None = (
            tuple(interfaces) if interfaces is not None else None
        )
        self.report_interval = report_interval
        self.resolve_timeout = resolve_timeout
        self.max_concurrent_resolutions = max_concurrent_resolutions
        self._state = _NEW
        self._node_id = ""
        self._own_name = ""
        self._on_found: Callable[[PeerAddress], None] | None = None
        self._on_lost: Callable[[str], None] | None = None
        self._aiozc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._tasks: list[asyncio.Future[Any]] = []
        self._queue: asyncio.Queue[str] = asyncio.Queue(MAX_PENDING_RESOLUTIONS)
        self._services: dict[str, _Service] = {}
        self._counts = _Counts()
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"MDNSDiscovery(cluster={self.cluster!r}, state={self._state})"

    @property
    def announced(self) -> Announcement | None:
        """What this node announces (node id, port, addresses) once started."""
        info = self._info
        if info is None or info.port is None:
            return None
        return Announcement(self._node_id, info.port, tuple(info.parsed_addresses()))

    async def start(
        self,
        node_id: str,
        address: PeerAddress,
        on_found: Callable[[PeerAddress], None],
        on_lost: Callable[[str], None],
    ) -> None:
        """Announce ``node_id`` at ``address`` and report the cluster's other nodes.

        Returns once the service is registered (the first announcement is on its
        way); peers are reported from then on. Raises :class:`ConfigError` when
        the node id cannot be announced or mDNS cannot run on this host, and
        :class:`CacheError` when called twice or after :meth:`close`.
        """
        if self._state != _NEW:
            raise CacheError(f"MDNSDiscovery.start() called when {self._state}")
        _check_txt("node", node_id, "the node id")
        if not 1 <= address.port <= 65535:
            raise ConfigError(f"cannot announce port {address.port}: bind the listener first")
        self._state = _STARTING
        self._node_id = node_id
        self._on_found, self._on_lost = on_found, on_lost
        try:
            where, announced = plan_announcement(
                await self._bound_ip(address.host), self.interfaces, local_addresses()
            )
            self._own_name = f"{instance_label(self.cluster, node_id)}.{SERVICE_TYPE}"
            self._info = AsyncServiceInfo(
                SERVICE_TYPE,
                self._own_name,
                port=address.port,
                properties={
                    "cluster": self.cluster,
                    "node": node_id,
                    "proto": str(PROTOCOL_VERSION),
                },
                host_ttl=RECORD_TTL,
                other_ttl=RECORD_TTL,
                parsed_addresses=announced,
            )
            await self._open(where)
        except BaseException:
            await self.close()
            raise
        if self._state == _CLOSED:
            # close() ran while we were awaiting: it may have missed what was opened since.
            await self._release()
            return
        self._state = _RUNNING
        log.info(
            "mDNS: node %s announced at %s port %d in cluster %r",
            node_id,
            ", ".join(announced),
            address.port,
            self.cluster,
        )

    async def close(self) -> None:
        """Say goodbye (peers see this node lost), stop browsing and close; idempotent.

        Never raises for network trouble (it is logged): a node must be able to stop.
        """
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        await self._release()

    async def _release(self) -> None:
        """Cancel our tasks, then unregister and close zeroconf; safe to call again."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        browser, self._browser = self._browser, None
        aiozc, self._aiozc = self._aiozc, None
        try:
            if browser is not None:
                await browser.async_cancel()
            if aiozc is not None:
                # Unregisters every service first, which sends the goodbye packets.
                await aiozc.async_close()
        except (ZeroconfError, OSError, RuntimeError) as exc:
            log.warning("mDNS: error while closing: %s", exc)
        self._services.clear()

    def statistics(self) -> MDNSStatistics:
        """Counters: peers reported now, instances tracked, resolutions and skips."""
        peers = sum(1 for s in self._services.values() if s.peer is not None)
        return MDNSStatistics(peers, len(self._services), **dataclasses.asdict(self._counts))

    # ------------------------------------------------------------------ startup
    async def _bound_ip(self, host: str) -> IPAddress:
        """The IP the transport bound (``0.0.0.0`` or ``::`` for a wildcard); resolves names."""
        if is_wildcard(host):
            return ipaddress.ip_address("0.0.0.0" if host == "0.0.0.0" else "::")
        ip = host_ip(host)
        if ip is not None:
            return ip
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise ConfigError(f"cannot announce {host!r}: it does not resolve ({exc})") from exc
        resolved = host_ip(str(infos[0][4][0])) if infos else None
        if resolved is None:
            raise ConfigError(f"cannot announce {host!r}: it does not resolve to an address")
        return resolved

    async def _open(self, where: list[str] | InterfaceChoice) -> None:
        assert self._info is not None
        if self._state == _CLOSED:
            return  # closed while the bound address was being resolved
        try:
            self._aiozc = AsyncZeroconf(interfaces=where, ip_version=_ip_version(where))
        except (ZeroconfError, OSError, RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"mDNS cannot run on interfaces {where}: {exc} (where multicast is not "
                "available, use discovery='static' with seeds)"
            ) from exc
        try:
            # Probing is skipped: the label is unique per (cluster, node id). The call
            # returns once registered; the announcements go out in the background.
            announcing = await self._aiozc.async_register_service(
                self._info, cooperating_responders=True
            )
        except (ZeroconfError, OSError) as exc:
            if self._state == _CLOSED:
                return  # close() pulled zeroconf from under the registration
            raise ConfigError(f"mDNS cannot announce {self._info.name}: {exc!r}") from exc
        self._tasks.append(asyncio.ensure_future(announcing))
        if self._state == _CLOSED:
            return  # start() releases what we opened
        loop = asyncio.get_running_loop()
        for i in range(self.max_concurrent_resolutions):
            self._tasks.append(loop.create_task(self._resolve_forever(), name=f"mdns-resolve-{i}"))
        self._tasks.append(loop.create_task(self._report_forever(), name="mdns-report"))
        self._browser = AsyncServiceBrowser(
            self._aiozc.zeroconf,
            SERVICE_TYPE,
            handlers=[self._on_service_state_change],
            question_type=DNSQuestionType.QM,  # see module doc: unicast replies get lost
        )

    # ----------------------------------------------------------------- browsing
    def _on_service_state_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        """Browser callback, in the loop: record the change, never block."""
        key = name.lower()
        if key == self._own_name.lower() or self._state == _CLOSED:
            return
        if state_change is ServiceStateChange.Removed:
            service = self._services.pop(key, None)
            if service is not None and service.peer is not None:
                self._report_lost(service.peer.node_id)
            return
        service = self._services.get(key)
        if service is None:
            if len(self._services) >= MAX_TRACKED_SERVICES:
                self._counts.dropped += 1
                self._warn_once(
                    "tracked", "mDNS: %d instances tracked, ignoring more", MAX_TRACKED_SERVICES
                )
                return
            service = self._services[key] = _Service(name, state=_FAILED)
        if service.state == _RESOLVING:
            service.stale = True
        elif service.state != _QUEUED:
            self._enqueue(key, service)

    def _enqueue(self, key: str, service: _Service) -> None:
        try:
            self._queue.put_nowait(key)
        except asyncio.QueueFull:
            # Left as failed: the report tick queues it again once there is room.
            service.state = _FAILED
            self._counts.dropped += 1
            self._warn_once("queue", "mDNS: resolution queue full, %s waits", key)
            return
        service.state = _QUEUED

    async def _resolve_forever(self) -> None:
        while True:
            key = await self._queue.get()
            service = self._services.get(key)
            if service is None or service.state != _QUEUED:
                continue  # removed while queued
            service.state = _RESOLVING
            service.stale = False
            try:
                found = await self._resolve(service.name)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad instance must not stop the worker
                log.exception("mDNS: resolving %s failed", service.name)
                found = None
            if self._services.get(key) is not service:
                continue  # removed (goodbye) while we were resolving: report nothing
            self._settle(service, found)
            if service.stale:
                self._enqueue(key, service)

    async def _resolve(self, name: str) -> Announcement | str | None:
        """Resolve ``name``: its announcement, why it is ignored, or None on timeout."""
        assert self._aiozc is not None
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        try:
            ok = await info.async_request(
                self._aiozc.zeroconf,
                self.resolve_timeout * 1000,
                question_type=DNSQuestionType.QM,
            )
        except (ZeroconfError, OSError) as exc:
            log.debug("mDNS: resolving %s: %r", name, exc)
            ok = False
        if not ok:
            return None
        addresses: list[IPAddress] = []
        for text in info.parsed_addresses(IPVersion.All):
            ip = host_ip(text)
            if ip is not None:
                addresses.append(ip)
        properties = info.decoded_properties
        return read_announcement(properties, info.port, addresses, cluster=self.cluster)

    def _settle(self, service: _Service, found: Announcement | str | None) -> None:
        """Apply the outcome of one resolution to ``service`` and report what changed."""
        if found is None:
            self._counts.resolve_failures += 1
            # A known peer that did not answer this time is kept until its goodbye or
            # TTL expiry says otherwise; an unknown one is retried on the report tick.
            service.state = _FOUND if service.peer is not None else _FAILED
            log.debug("mDNS: %s did not resolve within %.1f s", service.name, self.resolve_timeout)
            return
        self._counts.resolved += 1
        if isinstance(found, Announcement) and found.node_id == self._node_id:
            self._counts.ignored_self += 1
            self._warn_once(
                f"self:{service.name}",
                "mDNS: another node announces our node id %r (ignored); node ids must be unique",
                found.node_id,
            )
            found = "self"
        previous = service.peer
        if isinstance(found, str):
            reason = found.split(" ", 1)[0]
            counts = self._counts
            if reason == "cluster":
                counts.ignored_cluster += 1
            elif reason == "proto":
                counts.ignored_proto += 1
            elif reason != "self":
                counts.ignored_invalid += 1
            if reason == "proto":
                name = service.name
                self._warn_once(f"proto:{name}", "mDNS: ignoring %s: %s", name, found)
            else:
                log.debug("mDNS: ignoring %s: %s", service.name, found)
            service.state, service.peer = _IGNORED, None
            if previous is not None:
                self._report_lost(previous.node_id)
            return
        service.state, service.peer = _FOUND, found
        if previous is not None and previous.node_id != found.node_id:
            self._report_lost(previous.node_id)
        if previous != found:
            log.info("mDNS: found node %s at %s", found.node_id, ", ".join(found.hosts))
        self._report_found(found)

    async def _report_forever(self) -> None:
        while True:
            await asyncio.sleep(self.report_interval)
            for key, service in list(self._services.items()):
                if service.state == _FOUND and service.peer is not None:
                    self._report_found(service.peer)
                elif service.state == _FAILED:
                    self._enqueue(key, service)

    # ---------------------------------------------------------------- reporting
    def _report_found(self, peer: Announcement) -> None:
        assert self._on_found is not None
        self._counts.found_reports += 1
        for address in peer.addresses():
            try:
                self._on_found(address)
            except Exception:  # a failing callback must not stop discovery
                log.exception("on_found(%s) failed", address)

    def _report_lost(self, node_id: str) -> None:
        assert self._on_lost is not None
        self._counts.lost_reports += 1
        log.info("mDNS: node %s left", node_id)
        try:
            self._on_lost(node_id)
        except Exception:  # a failing callback must not stop discovery
            log.exception("on_lost(%s) failed", node_id)

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned and len(self._warned) < MAX_TRACKED_SERVICES:
            self._warned.add(key)
            log.warning(message, *args)


def _ip_version(where: list[str] | InterfaceChoice) -> IPVersion:
    """mDNS runs over IPv4 unless the interfaces given are all IPv6."""
    ips = [host_ip(i) for i in where] if isinstance(where, list) else []
    if ips and all(isinstance(ip, ipaddress.IPv6Address) for ip in ips):
        return IPVersion.V6Only
    return IPVersion.V4Only
