"""Real Redis Cluster and Sentinel topologies for tests: start, fail over, tear down.

Every server is a ``redis-server`` process of the test's own on free loopback ports, in
a directory of its own, without persistence (``--save "" --appendonly no``). Processes
are killed with SIGKILL on teardown, also when the test fails; on Linux each one also
gets ``PR_SET_PDEATHSIG`` so that it dies with the test process even if that is killed
outright, and an ``atexit`` hook kills whatever is left.

Topology URLs (the syntax proposed for ``Cache(backend="redis", redis_url=...)``)::

    redis+cluster://[user[:password]@]host[:port][,host[:port]...][/0][?option=value...]
    redis+sentinel://[user[:password]@]host[:port][,host[:port]...]/service[/db][?option=value...]

``rediss+cluster`` and ``rediss+sentinel`` use TLS. The sentinel form is the one the
``Redis-Sentinel-Url`` package introduced and Prefect and RedisVL accept (a port
defaults to 26379 there, and to 6379 in a cluster URL). The host list of a cluster
URL is a set of seed nodes (any node of the cluster will do; more than one survives a
seed being down); only database 0 exists in a cluster. The host list of a sentinel URL is
the sentinels (never the data nodes); ``service`` is the name the sentinels monitor
(``sentinel monitor <service> ...``) and ``db`` the database of the data nodes.
The userinfo authenticates against the data nodes; sentinels that need their own
credentials take them as ``?sentinel_username=...&sentinel_password=...``. Other
query options are connection options, as for a ``redis://`` URL. IPv6 hosts are
written in brackets (``[::1]:7000``). :func:`parse_topology_url` is a reference parser.

The fixtures (:func:`redis_cluster`, :func:`shared_redis_cluster`,
:func:`redis_sentinel`, :func:`shared_redis_sentinel`) skip when
``redis-server``/``redis-cli`` are missing, except in CI (``CI=true``), where that is
a failure.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote

import pytest
import redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.runtime.redis.redis_helpers import unavailable

HOST = "127.0.0.1"
REDIS_SERVER = os.environ.get("CRDTCACHE_REDIS_SERVER", "redis-server")
REDIS_CLI = os.environ.get("CRDTCACHE_REDIS_CLI", "redis-cli")
SERVICE_NAME = "mymaster"

T = TypeVar("T")


class TopologyError(RuntimeError):
    """A topology did not reach the expected state in time."""


@dataclass(frozen=True, order=True)
class Endpoint:
    """A host and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class FailoverReport:
    """What a failover did and how long it took (seconds from the SIGKILL)."""

    killed: Endpoint
    promoted: Endpoint
    #: Until the promoted replica (or the sentinels) said it is the primary.
    promoted_after: float
    #: Until every surviving node (or sentinel) agreed on the new topology.
    settled_after: float


# --- processes -------------------------------------------------------------------------

_LIVE: set[subprocess.Popen[bytes]] = set()
_LIVE_LOCK = threading.Lock()


def _kill_leftovers() -> None:
    with _LIVE_LOCK:
        leftovers = list(_LIVE)
        _LIVE.clear()
    for process in leftovers:
        with contextlib.suppress(OSError):
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)


atexit.register(_kill_leftovers)


def _death_signal_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die with this thread (Linux only).

    The kernel sends the signal when the *thread* that forked exits, so it is only
    used from the main thread (whose end is the end of the test process).
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that are free right now (held open together)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((HOST, 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_until(
    probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.02
) -> T:
    """Poll ``probe`` until it returns something other than None (or raise after ``timeout``).

    Redis and socket errors of ``probe`` count as "not yet" (the last one is reported
    on timeout); other exceptions (a :class:`TopologyError` say) end the wait.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = probe()
        except (redis.RedisError, OSError) as exc:
            last, result = exc, None
        if result is not None:
            return result
        if time.monotonic() > deadline:
            detail = f" (last error: {last!r})" if last is not None else ""
            raise TopologyError(f"{what}: not within {timeout} s{detail}")
        time.sleep(interval)


class RedisProcess:
    """One ``redis-server`` (or sentinel) process on fixed ports: start, SIGKILL, restart."""

    def __init__(self, name: str, workdir: Path, port: int, argv: Sequence[str]) -> None:
        """``argv`` is everything after the executable (it must set the port)."""
        self.name = name
        self.workdir = workdir
        self.port = port
        self.argv = list(argv)
        self.log = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._admin: redis.Redis | None = None

    def __repr__(self) -> str:
        return f"<RedisProcess {self.name} {self.endpoint} alive={self.alive}>"

    @property
    def endpoint(self) -> Endpoint:
        """Where the process listens."""
        return Endpoint(HOST, self.port)

    @property
    def url(self) -> str:
        """A ``redis://`` URL of this one process."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def alive(self) -> bool:
        """Whether the process is running."""
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self.process.pid if self.alive and self.process is not None else None

    def start(self, extra_argv: Sequence[str] = ()) -> None:
        """Spawn the process (it is not ready to serve yet: see :meth:`wait_ready`).

        ``extra_argv`` is appended to the arguments for this start only.
        """
        if self.alive:
            raise TopologyError(f"{self.name} is already running")
        with self.log.open("ab") as log:
            process = subprocess.Popen(
                [REDIS_SERVER, *self.argv, *extra_argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                preexec_fn=_death_signal_hook(),
            )
        with _LIVE_LOCK:
            _LIVE.add(process)
        self.process = process

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the process answers PING; raise with its log if it died."""

        def probe() -> bool | None:
            if not self.alive:
                raise TopologyError(f"{self.name} exited:\n{self.log_tail()}")
            return True if self.raw("PING") == "PONG" else None

        wait_until(probe, timeout, f"{self.name} answering PING")

    def kill(self) -> None:
        """SIGKILL the process (no shutdown, no save) and reap it; idempotent."""
        process, self.process = self.process, None
        self.close_admin()
        if process is None:
            return
        with contextlib.suppress(OSError):
            process.kill()
        try:
            process.wait(timeout=10)
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(process)

    def restart(self, extra_argv: Sequence[str] = (), timeout: float = 10.0) -> None:
        """Start the process again on the same ports and wait until it answers."""
        self.kill()
        self.start(extra_argv)
        self.wait_ready(timeout)

    def admin(self) -> redis.Redis:
        """A blocking RESP2 client on this process: decoded but unparsed replies, fails
        fast (no retries)."""
        if self._admin is None:
            self._admin = redis.Redis(
                host=HOST,
                port=self.port,
                decode_responses=True,
                socket_timeout=2,
                socket_connect_timeout=1,
                retry=Retry(NoBackoff(), 0),
                protocol=2,  # raw() replies are RESP2 arrays, whatever the default
            )
            # No reply parsing (redis-py reshapes e.g. CLUSTER NODES and SENTINEL MASTER
            # differently between versions and protocols): raw() sees what Redis sent.
            self._admin.response_callbacks.clear()
        return self._admin

    def close_admin(self) -> None:
        """Close the admin client (it is created again on demand)."""
        admin, self._admin = self._admin, None
        if admin is not None:
            admin.close()

    def raw(self, *args: str) -> Any:
        """Run one command and return the reply as RESP2 gave it (no redis-py parsing)."""
        return self.admin().execute_command(*args)  # type: ignore[no-untyped-call]

    def info(self, section: str) -> dict[str, str]:
        """One INFO section as ``field -> value`` strings."""
        text: str = self.raw("INFO", section)
        pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {k: v.strip() for k, v in pairs}

    def role(self) -> str:
        """``master``, ``slave`` or ``sentinel`` (the first field of ROLE)."""
        reply: list[Any] = self.raw("ROLE")
        return str(reply[0])

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the process log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def wait_for_replicas(
    primary: RedisProcess, replicas: Sequence[RedisProcess], timeout: float = 10.0
) -> None:
    """Wait until each of ``replicas`` reached ``primary``'s replication offset as of now.

    (Unlike ``WAIT``, which only covers the writes of the connection that sends it,
    this covers every write the primary accepted before the call.)
    """
    target = int(primary.info("replication")["master_repl_offset"])
    for replica in replicas:
        what = f"{replica.name} caught up with {primary.name}"
        wait_until(partial(_caught_up, replica, target), timeout, what)


@contextlib.contextmanager
def replication_stalled(
    primary: RedisProcess, replica: RedisProcess, filler_key: str, filler_bytes: int = 32 << 20
) -> Iterator[None]:
    """Inside the block, writes that ``primary`` acknowledges do not reach ``replica``.

    The replica is SIGSTOPped (SIGCONT on exit) and ``filler_key`` (a key the primary
    owns) gets a value of ``filler_bytes``: it fills the socket buffers to the stopped
    replica, so what is written after it waits in the primary's output buffer for the
    replica. SIGKILL the primary inside the block and those writes are lost for good
    (stopping the replica alone is not enough: the kernel would still deliver what
    the primary had sent once the replica resumes).
    """
    if replica.pid is None:
        raise TopologyError(f"{replica.name} is not running")
    os.kill(replica.pid, signal.SIGSTOP)
    try:
        primary.raw("SET", filler_key, "x" * filler_bytes)

        def backlogged() -> bool | None:
            listing: str = primary.raw("CLIENT", "LIST", "TYPE", "replica")
            held = [int(f[5:]) for f in listing.split() if f.startswith("omem=")]
            return True if held and max(held) > 0 else None

        wait_until(backlogged, 10, f"{primary.name} holding data back from {replica.name}")
        yield
    finally:
        if replica.pid is not None:
            os.kill(replica.pid, signal.SIGCONT)


def _caught_up(replica: RedisProcess, offset: int) -> bool | None:
    done = int(replica.info("replication").get("slave_repl_offset", -1)) >= offset
    return True if done else None


def _linked_or_primary(node: RedisProcess) -> bool | None:
    """True unless ``node`` is a replica whose link to its primary is not up."""
    replication = node.info("replication")
    up = replication.get("role") != "slave" or replication.get("master_link_status") == "up"
    return True if up else None


def _address_in_use(processes: Sequence[RedisProcess]) -> bool:
    return any(not p.alive and "Address already in use" in p.log_tail(50) for p in processes)


def _require(*programs: str) -> None:
    for program in programs:
        if shutil.which(program) is None:
            unavailable(f"{program} is not installed")


# --- Redis Cluster ---------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterNodeInfo:
    """One line of ``CLUSTER NODES``."""

    node_id: str
    endpoint: Endpoint
    flags: frozenset[str]
    primary_id: str | None
    slots: tuple[tuple[int, int], ...]

    @property
    def is_primary(self) -> bool:
        """Whether the node says it is a primary."""
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        """Whether the node is marked as failing (or possibly failing)."""
        return bool(self.flags & {"fail", "fail?", "noaddr", "handshake"})


def parse_cluster_nodes(text: str) -> list[ClusterNodeInfo]:
    """Parse the text of ``CLUSTER NODES`` (import/migration markers are ignored)."""
    nodes = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        address = parts[1].split("@", 1)[0].split(",", 1)[0]
        host, _, port = address.rpartition(":")
        slots = []
        for item in parts[8:]:
            if item.startswith("["):
                continue
            first, _, last = item.partition("-")
            slots.append((int(first), int(last or first)))
        nodes.append(
            ClusterNodeInfo(
                node_id=parts[0],
                endpoint=Endpoint(host, int(port)),
                flags=frozenset(parts[2].split(",")),
                primary_id=None if parts[3] == "-" else parts[3],
                slots=tuple(sorted(slots)),
            )
        )
    return nodes


@dataclass
class RedisClusterTopology:
    """A Redis Cluster of ``primaries`` x (1 + ``replicas``) local processes.

    ``node_timeout_ms`` is ``cluster-node-timeout``: a killed primary is replaced about
    one to two node timeouts later.
    """

    workdir: Path
    primaries: int = 3
    replicas: int = 1
    node_timeout_ms: int = 1000
    nodes: list[RedisProcess] = field(default_factory=list)
    #: Seconds ``start()`` took (spawn, ``redis-cli --cluster create``, all healthy).
    setup_seconds: float = 0.0

    @property
    def url(self) -> str:
        """The ``redis+cluster://`` URL of the cluster (every node is a seed)."""
        return "redis+cluster://" + ",".join(str(n.endpoint) for n in self.nodes) + "/"

    @property
    def startup_nodes(self) -> list[Endpoint]:
        """Every node's endpoint (seeds for a cluster client)."""
        return [n.endpoint for n in self.nodes]

    def start(self, timeout: float = 30.0) -> None:
        """Spawn the nodes, create the cluster and wait until it is healthy."""
        began = time.monotonic()
        self._spawn()
        command = [
            REDIS_CLI,
            "--cluster",
            "create",
            *(str(n.endpoint) for n in self.nodes),
            "--cluster-replicas",
            str(self.replicas),
            "--cluster-yes",
        ]
        created = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
        if created.returncode != 0:
            output = f"{created.stdout}\n{created.stderr}".strip()
            raise TopologyError(f"redis-cli --cluster create failed:\n{output}")
        self.wait_healthy(timeout=max(1.0, timeout - (time.monotonic() - began)))
        self.setup_seconds = time.monotonic() - began

    def _spawn(self, attempts: int = 3) -> None:
        count = self.primaries * (1 + self.replicas)
        for attempt in range(attempts):
            ports = free_ports(2 * count)
            self.nodes = [
                RedisProcess(
                    f"node-{ports[2 * i]}",
                    self.workdir,
                    ports[2 * i],
                    [
                        *("--port", str(ports[2 * i]), "--bind", HOST),
                        *("--cluster-enabled", "yes", "--cluster-port", str(ports[2 * i + 1])),
                        *("--cluster-config-file", f"nodes-{ports[2 * i]}.conf"),
                        *("--cluster-node-timeout", str(self.node_timeout_ms)),
                        *("--save", "", "--appendonly", "no", "--dir", str(self.workdir)),
                        *("--repl-diskless-sync-delay", "0", "--enable-debug-command", "local"),
                    ],
                )
                for i in range(count)
            ]
            for node in self.nodes:
                node.start()
            try:
                for node in self.nodes:
                    node.wait_ready()
                return
            except TopologyError:
                retry = attempt + 1 < attempts and _address_in_use(self.nodes)
                self.stop()
                if not retry:
                    raise

    def stop(self) -> None:
        """SIGKILL every node (idempotent)."""
        for node in self.nodes:
            node.kill()

    def alive_nodes(self) -> list[RedisProcess]:
        """The nodes whose process runs."""
        return [n for n in self.nodes if n.alive]

    def node_at(self, endpoint: Endpoint) -> RedisProcess:
        """The process listening at ``endpoint``."""
        for node in self.nodes:
            if node.endpoint == endpoint:
                return node
        raise KeyError(endpoint)

    def view(self, node: RedisProcess | None = None) -> list[ClusterNodeInfo]:
        """``CLUSTER NODES`` as seen by ``node`` (default: the first live node)."""
        node = node or self.alive_nodes()[0]
        return parse_cluster_nodes(node.raw("CLUSTER", "NODES"))

    def primary_nodes(self) -> list[RedisProcess]:
        """The live nodes that own slots, by the first live node's view."""
        return [
            self.node_at(info.endpoint)
            for info in self.view()
            if info.is_primary and info.slots and not info.failed
        ]

    def replicas_of(self, primary: RedisProcess) -> list[RedisProcess]:
        """The nodes replicating ``primary``, by the first live node's view."""
        view = self.view()
        ids = {info.endpoint: info.node_id for info in view}
        primary_id = ids[primary.endpoint]
        return [self.node_at(i.endpoint) for i in view if i.primary_id == primary_id]

    def primary_for_slot(self, slot: int) -> RedisProcess:
        """The live node that owns ``slot``."""
        for info in self.view():
            owns = any(first <= slot <= last for first, last in info.slots)
            if owns and info.is_primary and not info.failed:
                return self.node_at(info.endpoint)
        raise TopologyError(f"no live primary owns slot {slot}")

    def key_slot(self, key: str) -> int:
        """The hash slot of ``key`` (``CLUSTER KEYSLOT`` on a live node)."""
        return int(self.alive_nodes()[0].raw("CLUSTER", "KEYSLOT", key))

    def primary_for_key(self, key: str) -> RedisProcess:
        """The live primary that owns the slot of ``key``."""
        return self.primary_for_slot(self.key_slot(key))

    def _health_problem(self) -> str | None:
        """Why the cluster is not healthy, or None when it is."""
        alive = self.alive_nodes()
        alive_endpoints = {n.endpoint for n in alive}
        owners: set[tuple[Endpoint, tuple[tuple[int, int], ...]]] | None = None
        for node in alive:
            if "cluster_state:ok" not in node.raw("CLUSTER", "INFO"):
                return f"{node.name}: cluster_state is not ok"
            view = [i for i in self.view(node) if i.endpoint in alive_endpoints]
            if any(i.failed for i in view):
                return f"{node.name} still sees a live node as failing"
            mine = {(i.endpoint, i.slots) for i in view if i.is_primary and i.slots}
            if owners is None:
                owners = mine
            elif mine != owners:
                return f"{node.name} disagrees about the slot owners"
            owner_ids = {i.node_id for i in view if i.is_primary and i.slots}
            if any(i.primary_id not in owner_ids for i in view if not i.slots):
                return f"{node.name} does not yet see every other live node as a replica"
            if not _linked_or_primary(node):
                return f"{node.name}: link to its primary is not up"
        if owners is None or len(owners) != self.primaries:
            return f"expected {self.primaries} slot owners, saw {owners}"
        if sum(last - first + 1 for _, ranges in owners for first, last in ranges) != 16384:
            return "not all 16384 slots are covered"
        if any(endpoint not in alive_endpoints for endpoint, _ in owners):
            return "a dead node still owns slots"
        return None

    def wait_healthy(self, timeout: float = 20.0) -> float:
        """Wait until every live node says ``cluster_state:ok``, all agree on who owns
        which slots (only live nodes, all 16384 covered), each sees every other live
        node as a slot owner or a replica of one, and every replica's link is up.

        Returns the seconds it took.
        """
        began = time.monotonic()
        problem: list[str | None] = [None]

        def probe() -> bool | None:
            problem[0] = self._health_problem()
            return True if problem[0] is None else None

        try:
            wait_until(probe, timeout, "cluster healthy", interval=0.05)
        except TopologyError as exc:
            raise TopologyError(f"{exc}: {problem[0]}") from exc
        return time.monotonic() - began

    def kill(self, node: RedisProcess) -> None:
        """SIGKILL one node (no failover wait)."""
        node.kill()

    def wait_replicated(self, primary: RedisProcess, timeout: float = 10.0) -> None:
        """Wait until every live replica of ``primary`` has processed its whole
        replication stream as of now (replication offsets caught up)."""
        wait_for_replicas(primary, [r for r in self.replicas_of(primary) if r.alive], timeout)

    def kill_primary(
        self, primary: RedisProcess | None = None, timeout: float = 20.0
    ) -> FailoverReport:
        """SIGKILL a primary (default: the first) and wait until a replica replaced it."""
        primary = primary or self.primary_nodes()[0]
        candidates = [r for r in self.replicas_of(primary) if r.alive]
        if not candidates:
            raise TopologyError(f"{primary.name} has no live replica to promote")
        began = time.monotonic()
        primary.kill()
        return self.wait_promoted(primary, candidates, began, timeout)

    def wait_promoted(
        self,
        killed: RedisProcess,
        candidates: Sequence[RedisProcess],
        since: float,
        timeout: float = 20.0,
    ) -> FailoverReport:
        """Wait until one of ``candidates`` (replicas of the ``killed`` primary) is a
        primary and the cluster is healthy; times are measured from ``since``
        (``time.monotonic()`` at the kill)."""

        def promoted() -> RedisProcess | None:
            for replica in candidates:
                if replica.alive and replica.role() == "master":
                    return replica
            return None

        replica = wait_until(promoted, timeout, f"a replica of {killed.name} promoted")
        promoted_after = time.monotonic() - since
        self.wait_healthy(timeout=max(1.0, timeout - promoted_after))
        return FailoverReport(
            killed=killed.endpoint,
            promoted=replica.endpoint,
            promoted_after=promoted_after,
            settled_after=time.monotonic() - since,
        )

    def restart(self, node: RedisProcess, timeout: float = 20.0) -> float:
        """Start a killed node again (same ports and ``nodes.conf``) and wait until the
        cluster is healthy with it (a killed primary comes back as a replica).

        Returns the seconds it took.
        """
        began = time.monotonic()
        node.restart()
        self.wait_healthy(timeout=timeout)
        return time.monotonic() - began


# --- Sentinel --------------------------------------------------------------------------


@dataclass
class RedisSentinelTopology:
    """One primary, one replica and ``sentinels`` sentinels monitoring ``service``."""

    workdir: Path
    sentinels: int = 3
    quorum: int = 2
    down_after_ms: int = 2000
    failover_timeout_ms: int = 3000
    service: str = SERVICE_NAME
    data_nodes: list[RedisProcess] = field(default_factory=list)
    sentinel_nodes: list[RedisProcess] = field(default_factory=list)
    #: Seconds ``start()`` took (spawn, replica in sync, sentinels agree).
    setup_seconds: float = 0.0

    @property
    def url(self) -> str:
        """The ``redis+sentinel://`` URL (sentinels, service name, database 0)."""
        hosts = ",".join(str(s.endpoint) for s in self.sentinel_nodes)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    @property
    def sentinel_endpoints(self) -> list[Endpoint]:
        """Where the sentinels listen."""
        return [s.endpoint for s in self.sentinel_nodes]

    def start(self, timeout: float = 30.0) -> None:
        """Start primary and replica, then the sentinels; wait until all agree."""
        began = time.monotonic()
        self._spawn()
        self.wait_settled(self.data_nodes[0], timeout=timeout)
        self.setup_seconds = time.monotonic() - began

    def _data_argv(self, port: int) -> list[str]:
        return [
            *("--port", str(port), "--bind", HOST, "--dir", str(self.workdir)),
            *("--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"),
            *("--enable-debug-command", "local"),
        ]

    def _sentinel_conf(self, port: int, primary_port: int) -> Path:
        path = self.workdir / f"sentinel-{port}.conf"
        name = self.service
        path.write_text(
            "\n".join(
                [
                    f"port {port}",
                    f"bind {HOST}",
                    f'dir "{self.workdir}"',
                    f"sentinel monitor {name} {HOST} {primary_port} {self.quorum}",
                    f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
                    f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
                    f"sentinel parallel-syncs {name} 1",
                    "",
                ]
            )
        )
        return path

    def _spawn(self, attempts: int = 3) -> None:
        for attempt in range(attempts):
            ports = free_ports(2 + self.sentinels)
            primary = RedisProcess(
                f"primary-{ports[0]}", self.workdir, ports[0], self._data_argv(ports[0])
            )
            replica = RedisProcess(
                f"replica-{ports[1]}",
                self.workdir,
                ports[1],
                [*self._data_argv(ports[1]), "--replicaof", HOST, str(ports[0])],
            )
            self.data_nodes = [primary, replica]
            self.sentinel_nodes = [
                RedisProcess(
                    f"sentinel-{port}",
                    self.workdir,
                    port,
                    [str(self._sentinel_conf(port, ports[0])), "--sentinel"],
                )
                for port in ports[2:]
            ]
            try:
                for node in self.data_nodes:
                    node.start()
                for node in self.data_nodes:
                    node.wait_ready()
                # Sentinels learn the replica from the primary's INFO: start them once
                # the replica is attached, so that their first look already sees it.
                wait_until(partial(_linked_or_primary, replica), 10, "replica in sync")
                for node in self.sentinel_nodes:
                    node.start()
                for node in self.sentinel_nodes:
                    node.wait_ready()
                return
            except TopologyError:
                retry = attempt + 1 < attempts and _address_in_use(self.all_nodes())
                self.stop()
                if not retry:
                    raise

    def all_nodes(self) -> list[RedisProcess]:
        """Data nodes and sentinels."""
        return [*self.data_nodes, *self.sentinel_nodes]

    def stop(self) -> None:
        """SIGKILL every process (idempotent)."""
        for node in self.all_nodes():
            node.kill()

    def node_at(self, endpoint: Endpoint) -> RedisProcess:
        """The data node listening at ``endpoint``."""
        for node in self.data_nodes:
            if node.endpoint == endpoint:
                return node
        raise KeyError(endpoint)

    def primary_by_sentinels(self) -> RedisProcess | None:
        """The data node every live sentinel names as the primary, if they agree."""
        answers = set()
        for sentinel in self.sentinel_nodes:
            if sentinel.alive:
                host, port = sentinel.raw("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                answers.add(Endpoint(str(host), int(port)))
        if len(answers) != 1:
            return None
        return self.node_at(answers.pop())

    def _settled_problem(self, primary: RedisProcess) -> str | None:
        live_sentinels = [s for s in self.sentinel_nodes if s.alive]
        live_replicas = [n for n in self.data_nodes if n.alive and n is not primary]
        for sentinel in live_sentinels:
            reply = sentinel.raw("SENTINEL", "MASTER", self.service)
            state = dict(zip(reply[::2], reply[1::2], strict=True))
            seen = Endpoint(state["ip"], int(state["port"]))
            if seen != primary.endpoint or state["flags"] != "master":
                return f"{sentinel.name} sees {seen} ({state['flags']})"
            if int(state["num-other-sentinels"]) < len(live_sentinels) - 1:
                return f"{sentinel.name} knows {state['num-other-sentinels']} other sentinels"
            replicas = sentinel.raw("SENTINEL", "REPLICAS", self.service)
            good = set()
            for entry in replicas:
                fields = dict(zip(entry[::2], entry[1::2], strict=True))
                if fields["flags"] == "slave":  # not s_down, not disconnected
                    good.add(Endpoint(fields["ip"], int(fields["port"])))
            if not {r.endpoint for r in live_replicas} <= good:
                return f"{sentinel.name} does not yet see every replica up"
        if primary.role() != "master":
            return f"{primary.name} is not a master"
        for replica in live_replicas:
            replication = replica.info("replication")
            if replication.get("master_port") != str(primary.port):
                return f"{replica.name} does not replicate {primary.name}"
            if replication.get("master_link_status") != "up":
                return f"{replica.name}: link to the primary is not up"
        return None

    def wait_settled(self, primary: RedisProcess, timeout: float = 20.0) -> float:
        """Wait until every live sentinel names ``primary`` (flags just ``master``),
        knows all other live sentinels and sees every live replica up, and every live
        replica replicates ``primary`` with its link up.

        (A sentinel's own ``master-link-status`` of a replica is not awaited: it is
        refreshed from the replica's INFO only every 10 s.)

        Returns the seconds it took.
        """
        began = time.monotonic()
        problem: list[str | None] = [None]

        def probe() -> bool | None:
            problem[0] = self._settled_problem(primary)
            return True if problem[0] is None else None

        try:
            wait_until(probe, timeout, "sentinels settled", interval=0.05)
        except TopologyError as exc:
            raise TopologyError(f"{exc}: {problem[0]}") from exc
        return time.monotonic() - began

    def wait_replicated(self, timeout: float = 10.0) -> None:
        """Wait until every live replica has processed the current primary's whole
        replication stream as of now."""
        primary = self.primary_by_sentinels()
        if primary is None:
            raise TopologyError("the sentinels do not agree on a primary")
        replicas = [n for n in self.data_nodes if n.alive and n is not primary]
        wait_for_replicas(primary, replicas, timeout)

    def kill_primary(self, timeout: float = 20.0) -> FailoverReport:
        """SIGKILL the current primary; wait until the sentinels promoted the replica."""
        primary = self.primary_by_sentinels()
        if primary is None:
            raise TopologyError("the sentinels do not agree on a primary")
        began = time.monotonic()
        primary.kill()

        def promoted() -> RedisProcess | None:
            candidate = self.primary_by_sentinels()
            if candidate is None or candidate is primary:
                return None
            return candidate if candidate.role() == "master" else None

        new = wait_until(promoted, timeout, "sentinels promoted a replica")
        promoted_after = time.monotonic() - began
        # The killed node is down: only the sentinels' agreement is awaited.
        wait_until(
            lambda: True if self.primary_by_sentinels() is new else None,
            max(1.0, timeout - promoted_after),
            "sentinels agree on the new primary",
        )
        return FailoverReport(
            killed=primary.endpoint,
            promoted=new.endpoint,
            promoted_after=promoted_after,
            settled_after=time.monotonic() - began,
        )

    def restart(self, node: RedisProcess, as_replica: bool = True, timeout: float = 30.0) -> float:
        """Start a killed data node again and wait until it replicates the current
        primary and the sentinels see it up. Returns the seconds it took.

        ``as_replica`` starts it with ``--replicaof <current primary>``, as a
        deployment whose config file the sentinels rewrote would. Without it the node
        comes back as an empty *primary* and stays one until a sentinel's next INFO
        refresh of it makes it a replica (seen: 1 to 10 s; the refresh period is 10 s
        unless the sentinel is watching a failover), during which clients that
        bypass the sentinels could write to it.
        """
        primary = self.primary_by_sentinels()
        if primary is None or primary is node:
            raise TopologyError(f"the sentinels name no other primary than {node.name}")
        began = time.monotonic()
        node.restart(["--replicaof", HOST, str(primary.port)] if as_replica else [])
        self.wait_settled(primary, timeout=timeout)
        return time.monotonic() - began


# --- URLs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopologyURL:
    """A parsed ``redis+cluster://`` or ``redis+sentinel://`` URL."""

    kind: str  # "cluster" or "sentinel"
    tls: bool
    hosts: tuple[Endpoint, ...]
    service: str | None
    db: int
    username: str | None
    password: str | None
    options: dict[str, str]


def _parse_endpoint(text: str, default_port: int) -> Endpoint:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad host[:port] {text!r}")
        port = rest[1:] if rest else str(default_port)
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = text, str(default_port)
        elif ":" in host:
            raise ValueError(f"bad host[:port] {text!r} (an IPv6 host goes in brackets)")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad host[:port] {text!r}")
    return Endpoint(unquote(host), int(port))


def parse_topology_url(url: str) -> TopologyURL:
    """Parse a topology URL (see the module docstring); raise ValueError if malformed."""
    scheme, sep, rest = url.partition("://")
    kinds = {
        "redis+cluster": ("cluster", False),
        "rediss+cluster": ("cluster", True),
        "redis+sentinel": ("sentinel", False),
        "rediss+sentinel": ("sentinel", True),
    }
    if not sep or scheme.lower() not in kinds:
        raise ValueError(f"not a redis+cluster or redis+sentinel URL: {url!r}")
    kind, tls = kinds[scheme.lower()]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    default_port = 26379 if kind == "sentinel" else 6379
    hosts = tuple(_parse_endpoint(h, default_port) for h in hostlist.split(",") if h)
    if not hosts:
        raise ValueError(f"no hosts in {url!r}")
    segments = [unquote(s) for s in path.split("/") if s]
    service = None
    if kind == "sentinel":
        if not segments:
            raise ValueError(f"a sentinel URL names the service: {url!r}")
        service, segments = segments[0], segments[1:]
    if len(segments) > 1 or (segments and not segments[0].isdigit()):
        raise ValueError(f"bad database in {url!r}")
    db = int(segments[0]) if segments else 0
    if kind == "cluster" and db != 0:
        raise ValueError("a cluster has only database 0")
    return TopologyURL(
        kind=kind,
        tls=tls,
        hosts=hosts,
        service=service,
        db=db,
        username=username,
        password=password,
        options=dict(parse_qsl(query, keep_blank_values=True)),
    )


def cluster_client(url: str, **options: Any) -> RedisCluster:
    """An asyncio redis-py cluster client for a ``redis+cluster://`` URL (``options``
    are passed on; the URL's query options are not interpreted here)."""
    parsed = parse_topology_url(url)
    if parsed.kind != "cluster":
        raise ValueError(f"not a cluster URL: {url!r}")
    return RedisCluster(
        startup_nodes=[ClusterNode(e.host, e.port) for e in parsed.hosts],
        username=parsed.username,
        password=parsed.password,
        ssl=parsed.tls,
        **options,
    )


def sentinel_client(url: str, **options: Any) -> tuple[Sentinel, str, int]:
    """An asyncio redis-py ``Sentinel`` for a ``redis+sentinel://`` URL, with the
    service name and database: ``sentinel.master_for(service, db=db)`` is the client.

    ``options`` are connection options for the data nodes (the socket timeouts also
    apply to the sentinels).
    """
    parsed = parse_topology_url(url)
    if parsed.kind != "sentinel" or parsed.service is None:
        raise ValueError(f"not a sentinel URL: {url!r}")
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    for name in ("sentinel_username", "sentinel_password"):
        if name in parsed.options:
            sentinel_options[name.removeprefix("sentinel_")] = parsed.options[name]
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        [(e.host, e.port) for e in parsed.hosts],
        sentinel_kwargs=sentinel_options,
        username=parsed.username,
        password=parsed.password,
        ssl=parsed.tls,
        **options,
    )
    return sentinel, parsed.service, parsed.db


# --- fixtures --------------------------------------------------------------------------


@contextlib.contextmanager
def running_cluster(workdir: Path, **options: Any) -> Iterator[RedisClusterTopology]:
    """A started :class:`RedisClusterTopology`, killed on exit whatever happens."""
    _require(REDIS_SERVER, REDIS_CLI)
    topology = RedisClusterTopology(workdir, **options)
    try:
        topology.start()
        yield topology
    finally:
        topology.stop()


@contextlib.contextmanager
def running_sentinel(workdir: Path, **options: Any) -> Iterator[RedisSentinelTopology]:
    """A started :class:`RedisSentinelTopology`, killed on exit whatever happens."""
    _require(REDIS_SERVER)
    topology = RedisSentinelTopology(workdir, **options)
    try:
        topology.start()
        yield topology
    finally:
        topology.stop()


@pytest.fixture
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterTopology]:
    """A fresh 3 x 2 Redis Cluster for this test alone (it may kill nodes)."""
    with running_cluster(tmp_path_factory.mktemp("redis-cluster")) as topology:
        yield topology


@pytest.fixture(scope="session")
def shared_redis_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RedisClusterTopology]:
    """One 3 x 2 Redis Cluster for the whole session (about 2 s to start): tests must
    not kill or flush it and should use keys of their own."""
    with running_cluster(tmp_path_factory.mktemp("redis-cluster-shared")) as topology:
        yield topology


@pytest.fixture(scope="session")
def shared_redis_sentinel(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RedisSentinelTopology]:
    """One primary + replica + 3 sentinels for the whole session: tests must not kill
    or flush it and should use keys of their own."""
    with running_sentinel(tmp_path_factory.mktemp("redis-sentinel-shared")) as topology:
        yield topology


@pytest.fixture
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinelTopology]:
    """A fresh primary + replica + 3 sentinels for this test alone."""
    with running_sentinel(tmp_path_factory.mktemp("redis-sentinel")) as topology:
        yield topology
