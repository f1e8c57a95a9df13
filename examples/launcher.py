"""Run several instances of an example on this machine: what ``app.py --instances N`` does.

Theory of operation
-------------------
One child process per instance, each in a process group of its own, so a Ctrl-C in
the terminal reaches the launcher only and every instance is told to stop exactly once,
by the launcher. Then:

* **Start**: the launcher waits until every instance answers its ``/health`` URL with
  its own process id. An instance of an earlier run still bound to the same port
  answers with another id, so it is never mistaken for this run's.
* **Stop**: SIGINT and SIGTERM are forwarded to every instance (the same signal), and
  the launcher waits for all of them: none is left running with its ports bound. One
  that has not exited after :data:`STOP_TIMEOUT` seconds is killed.
* **Failure**: an instance that exits before it answers (a port in use, a bad
  option), that does not answer within :data:`START_TIMEOUT` seconds, or that dies
  later, stops the others, and the launcher exits with status 1.

Signal handlers only record the signal; the supervising loop polls every
:data:`POLL` seconds and acts on it, so a signal never interrupts a half-done step
(a child started but not yet recorded, say).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

#: Seconds every instance has to answer ``/health`` after it was started.
START_TIMEOUT = 60.0
#: Seconds an instance has to exit once told to stop, before it is killed.
STOP_TIMEOUT = 15.0
#: Seconds between two looks at the children.
POLL = 0.1

# Loopback only: an HTTP(S)_PROXY in the environment must not see these requests.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Instance:
    """One process to run: its name, its command line, and where it reports health."""

    name: str
    command: list[str]
    health_url: str  # answers JSON with "pid" once the instance serves
    banner: str  # printed once every instance is up


def run(instances: Sequence[Instance], *, start_timeout: float = START_TIMEOUT) -> int:
    """Start ``instances``, supervise them until a signal or a failure; the exit status.

    0 after a requested stop in which every instance exited by itself, 1 if an
    instance failed to start, died, or had to be killed.
    """
    received: list[int] = []

    def record(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, record) for signum in handled}
    children: dict[str, subprocess.Popen[bytes]] = {}
    ok = False
    try:
        for instance in instances:
            if received:
                break
            # process_group=0: the terminal's Ctrl-C reaches the launcher, not them.
            children[instance.name] = subprocess.Popen(instance.command, process_group=0)
        ok = _wait_until_up(instances, children, received, start_timeout)
        if ok and not received:
            for instance in instances:
                print(instance.banner, flush=True)
            print("Ctrl-C (or SIGTERM) stops every instance", flush=True)
            ok = _supervise(children, received)
    finally:
        all_exited = _stop(children, received[0] if received else signal.SIGTERM)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0 if ok and all_exited else 1


def _wait_until_up(
    instances: Sequence[Instance],
    children: dict[str, subprocess.Popen[bytes]],
    received: list[int],
    timeout: float,
) -> bool:
    """True once every instance answers (or a stop was asked for); False on a failure."""
    deadline = time.monotonic() + timeout
    waiting = {i.name: i for i in instances if i.name in children}
    while waiting and not received:
        for name, instance in list(waiting.items()):
            child = children[name]
            if child.poll() is not None:
                _error(f"instance {name} did not start (exit status {child.returncode}); stopping")
                return False
            if _answers(instance.health_url, child.pid):
                del waiting[name]
        if waiting and time.monotonic() > deadline:
            names = ", ".join(sorted(waiting))
            _error(f"instance(s) {names} did not answer within {timeout:.0f} s; stopping")
            return False
        time.sleep(POLL)
    return True


def _answers(url: str, pid: int) -> bool:
    try:
        with _NO_PROXY.open(url, timeout=1.0) as response:
            return bool(json.loads(response.read()).get("pid") == pid)
    except (OSError, ValueError, AttributeError):
        return False  # not up yet, or someone else on that port


def _supervise(children: dict[str, subprocess.Popen[bytes]], received: list[int]) -> bool:
    """Wait for a signal (True) or for an instance to exit by itself (False)."""
    while not received:
        for name, child in children.items():
            if child.poll() is not None:
                _error(f"instance {name} exited (status {child.returncode}); stopping the others")
                return False
        time.sleep(POLL)
    return True


def _stop(children: dict[str, subprocess.Popen[bytes]], signum: int) -> bool:
    """Send ``signum`` to every running instance and wait; False if one had to be killed."""
    if any(child.poll() is None for child in children.values()):
        print(f"stopping {len(children)} instance(s) ({signal.Signals(signum).name})", flush=True)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signum)
    deadline = time.monotonic() + STOP_TIMEOUT
    all_exited = True
    for name, child in children.items():
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _error(f"instance {name} did not stop within {STOP_TIMEOUT:.0f} s: killed")
            child.kill()
            child.wait()
            all_exited = False
    return all_exited


def _error(message: str) -> None:
    print(f"launcher: {message}", file=sys.stderr, flush=True)
