"""Fixtures for real mDNS tests: throwaway network namespaces and discovering processes.

A namespace holding only ``lo`` keeps the tests' multicast off the machine's real
interfaces and away from other tests; zeroconf pins its multicast to 127.0.0.1 with
IP_MULTICAST_IF, so no multicast route or MULTICAST flag on ``lo`` is needed. Two
namespaces joined by a veth pair look like two hosts on one LAN. Creating namespaces
needs root (CAP_SYS_ADMIN) and iproute2; without them the single-namespace tests fall
back to the host's loopback (still off the real interfaces: a node bound to 127.0.0.1
runs mDNS on loopback only) with a warning, and the two-host test is skipped.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.discovery.helpers import (
    SCRIPT,
    START_TIMEOUT,
    Netns,
    NodeProcess,
    create_netns,
    delete_netns,
    ip,
    new_netns_name,
    thread_in_netns,
)


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A fresh namespace with only ``lo``; deleted afterwards. Falls back to the host."""
    name = new_netns_name()
    error = create_netns(name)
    if error is not None:
        warnings.warn(f"{error}: this mDNS test runs on the host's loopback instead", stacklevel=1)
        yield Netns(None)
        return
    try:
        yield Netns(name)
    finally:
        delete_netns(name)


@pytest.fixture
def two_hosts() -> Iterator[tuple[Netns, Netns]]:
    """Two namespaces joined by a veth pair (10.77.0.1/24 and 10.77.0.2/24)."""
    names = (new_netns_name(), new_netns_name())
    try:
        for name in names:
            error = create_netns(name)
            if error is not None:
                pytest.skip(f"{error}: the two-host test needs network namespaces")
        # Interface names are per namespace, so fixed ones cannot clash across tests.
        ip("-n", names[0], "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns",
            names[1])  # fmt: skip
        for name, dev, addr in ((names[0], "v0", "10.77.0.1/24"), (names[1], "v1", "10.77.0.2/24")):
            ip("-n", name, "addr", "add", addr, "dev", dev)
            ip("-n", name, "link", "set", dev, "up")
        yield Netns(names[0], "10.77.0.1"), Netns(names[1], "10.77.0.2")
    finally:
        for name in names:
            delete_netns(name)  # deleting a namespace also deletes its end of the veth


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Start discovering processes: ``spawn(ns, node=, cluster=, port=, host=None)``.

    Every process is killed at teardown, before the namespaces are deleted.
    """
    started: list[NodeProcess] = []

    def _spawn(
        ns: Netns, *, node: str, cluster: str, port: int, host: str | None = None, **opts: Any
    ) -> NodeProcess:
        cmd = [*ns.prefix(), sys.executable, str(SCRIPT)]
        cmd += ["--cluster", cluster, "--node", node, "--port", str(port)]
        cmd += ["--host", host or ns.address]
        for key, value in opts.items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        process = NodeProcess(cmd, tmp_path / f"{node}-{len(started)}.stderr")
        started.append(process)  # before waiting, so that a failed start is killed too
        process.started = process.wait_for(lambda e: e["event"] == "started", START_TIMEOUT)
        return process

    try:
        yield _spawn
    finally:
        for process in started:
            process.kill()


@pytest.fixture
def cluster() -> str:
    """A cluster name no other test (or engineer) uses at the same time."""
    return f"t-{secrets.token_hex(4)}"


@pytest.fixture
def isolated_network() -> Iterator[str | None]:
    """Run this test's own sockets in a fresh namespace holding only ``lo``.

    For in-process tests: what this thread opens (zeroconf's sockets) lives in the
    namespace, so no other test's mDNS traffic is heard. Yields the namespace name,
    or None (with a warning) when namespaces are unavailable and the host's loopback
    is used: other suites' mDNS nodes may then be heard, and are ignored by cluster.
    """
    name = new_netns_name()
    error = create_netns(name)
    if error is not None:
        warnings.warn(f"{error}: this mDNS test runs on the host's loopback", stacklevel=1)
        yield None
        return
    with contextlib.ExitStack() as stack:
        stack.callback(delete_netns, name)
        try:
            stack.enter_context(thread_in_netns(name))
        except OSError as exc:
            warnings.warn(f"cannot enter a namespace ({exc}): host loopback used", stacklevel=1)
            yield None
            return
        yield name
