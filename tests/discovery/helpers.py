"""Helpers for the real mDNS tests: network namespaces and discovering processes."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import queue
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).with_name("mdns_node.py")
REPO = Path(__file__).resolve().parents[2]
#: Seconds a test waits for an mDNS event. Discovery takes 0.02-1.3 s here (the ~1 s
#: cases: a newcomer asking while the other node's announcement is under a second old,
#: which RFC 6762 forbids multicasting again); the margin absorbs loaded CI machines.
EVENT_TIMEOUT = 5.0
#: Seconds a discovering process may take to start (interpreter + zeroconf import).
START_TIMEOUT = 15.0

Event = dict[str, Any]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def delete_netns(name: str) -> None:
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        ip("netns", "delete", name)


def new_netns_name() -> str:
    # Unique per test, so parallel runs (and other engineers' tests) never share one.
    return f"crdtc-{os.getpid()}-{secrets.token_hex(3)}"


def create_netns(name: str) -> str | None:
    """Create namespace ``name`` with ``lo`` up; return why that failed, or None."""
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    try:
        ip("netns", "add", name)
        ip("-n", name, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as exc:
        delete_netns(name)
        return f"cannot create a network namespace: {exc.stderr.strip() or exc}"
    except (OSError, subprocess.SubprocessError) as exc:
        delete_netns(name)
        return f"cannot create a network namespace: {exc}"
    return None


_CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def thread_in_netns(name: str) -> Iterator[None]:
    """Move the calling thread into namespace ``name`` for the block, then back.

    Network namespaces are per thread: sockets this thread creates inside the block
    live in ``name``, the rest of the process is unaffected. Raises OSError if the
    kernel refuses (no CAP_SYS_ADMIN).
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    with (
        open("/proc/thread-self/ns/net", "rb") as home,
        open(f"/var/run/netns/{name}", "rb") as target,
    ):
        if libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
        try:
            yield
        finally:
            if libc.setns(home.fileno(), _CLONE_NEWNET) != 0:  # pragma: no cover
                err = ctypes.get_errno()
                raise OSError(err, f"cannot return to the original namespace: {os.strerror(err)}")


@dataclass
class Netns:
    """Where discovering processes run: a network namespace, or the host (``name`` None)."""

    name: str | None
    address: str = "127.0.0.1"  # the address nodes in it bind by default

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name] if self.name else []


class NodeProcess:
    """One ``mdns_node.py`` process; its JSON events are collected by a reader thread."""

    def __init__(self, cmd: list[str], stderr_path: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self._stderr_path = stderr_path
        self._stderr = stderr_path.open("w")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
            env=env,
        )
        self.events: list[Event] = []
        self._lines: queue.Queue[Event | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.started: Event = {}

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                self._lines.put(json.loads(line))
        self._lines.put(None)

    def wait_for(
        self, predicate: Callable[[Event], bool], timeout: float = EVENT_TIMEOUT, since: int = 0
    ) -> Event:
        """The first event (already seen or arriving within ``timeout``) matching ``predicate``.

        ``since`` skips the events already seen before that index.
        """
        for event in self.events[since:]:
            if predicate(event):
                return event
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                arrived = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if arrived is None:
                self._lines.put(None)  # keep reporting the end to later calls
                break
            self.events.append(arrived)
            if predicate(arrived):
                return arrived
        raise AssertionError(
            f"no matching event within {timeout} s; events: {self.events}; "
            f"exit code: {self.proc.poll()}; stderr: {self._stderr_path.read_text()[-2000:]}"
        )

    def wait_found(self, node: str, timeout: float = EVENT_TIMEOUT) -> Event:
        return self.wait_for(lambda e: e["event"] == "found" and e["node"] == node, timeout)

    def found_nodes(self) -> set[str]:
        return {e["node"] for e in self.events if e["event"] == "found"}

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def stats(self) -> dict[str, int]:
        """Ask for the discovery's statistics now."""
        seen = len(self.events)
        self.send("stats")
        event = self.wait_for(lambda e: e["event"] == "stats", since=seen)
        stats: dict[str, int] = event["stats"]
        return stats

    def wait_stats(
        self, predicate: Callable[[dict[str, int]], bool], timeout: float = EVENT_TIMEOUT
    ) -> dict[str, int]:
        """Ask for statistics every 0.1 s until ``predicate`` holds; return them."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"statistics never matched within {timeout} s: {stats}")
            time.sleep(0.1)

    def close(self) -> Event:
        """Close the discovery (goodbye packets) and wait for the process to exit."""
        self.send("close")
        closed = self.wait_for(lambda e: e["event"] == "closed")
        self.proc.wait(timeout=EVENT_TIMEOUT)
        return closed

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self._stderr.close()
