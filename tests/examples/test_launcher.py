"""The examples' ``--instances`` launcher: signals reach every instance, a failed start
fails the launch, and each run has a database of its own.

The launcher is run as a user would run it (``app.py --instances N``) and judged from
outside: its exit status, the processes left on the machine, the ports left bound.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.examples.helpers import ROOT, eventually, http, need

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc to find leftover processes"
)

EXAMPLES = {
    "http_api": ROOT / "examples" / "http_api" / "app.py",
    "wsgi_app": ROOT / "examples" / "wsgi_app" / "app.py",
}
NEEDS = {"http_api": ("fastapi", "uvicorn", "aiohttp"), "wsgi_app": ("flask", "aiohttp")}
EXIT_TIMEOUT = 45.0  # a launcher must have exited by then
MARKER = "CRDTCACHE_TEST_LAUNCH"  # in the environment of a launch and its instances


def free_block(count: int, taken: set[int]) -> list[int]:
    """``count`` consecutive ports free right now, below Linux's ephemeral range."""
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(20000, 32000)
        block = list(range(base, base + count))
        if taken.intersection(block):
            continue
        try:
            for port in block:
                socket.create_server(("127.0.0.1", port)).close()
        except OSError:
            continue
        taken.update(block)
        return block
    raise AssertionError("no free block of ports")


def port_is_free(port: int) -> bool:
    """Nothing listens on ``port`` (closed connections in TIME_WAIT do not count)."""
    try:
        socket.create_server(("127.0.0.1", port)).close()  # SO_REUSEADDR, as servers do
    except OSError:
        return False
    return True


@dataclass
class Launch:
    """One ``app.py --instances N`` run."""

    script: Path
    count: int
    http_ports: list[int]
    peer_ports: list[int]
    dashboard_ports: list[int]
    process: subprocess.Popen[bytes]
    out: Path
    err: Path
    marker: str

    @property
    def ports(self) -> list[int]:
        return self.http_ports + self.peer_ports + self.dashboard_ports

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.http_ports[i]}"

    def wait_up(self) -> None:
        for i in range(self.count):
            try:
                eventually(lambda i=i: http("GET", self.url(i) + "/health"), ok, 60)
            except AssertionError:
                raise AssertionError(f"not up: {self.output()}") from None

    def exit_status(self) -> int:
        try:
            return self.process.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"launcher still running: {self.output()}") from None

    def output(self) -> str:
        return f"stdout:\n{self.out.read_text()}\nstderr:\n{self.err.read_text()}"

    def instances(self) -> list[int]:
        """Pids of this launch's instances still alive on the machine (orphans too).

        They are told apart by the marker in their environment, inherited from the
        launcher: a parent pid changes when a process is orphaned, ports are shared
        by two launches on the same ports.
        """
        marker = f"{MARKER}={self.marker}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.process.pid:
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                args = (entry / "cmdline").read_bytes().decode().split("\0")
            except OSError:
                continue  # gone meanwhile, or not ours to read
            if marker in environ and "--name" in args:
                found.append(int(entry.name))
        return found


def ok(response: tuple[int, object]) -> bool:
    return response[0] == 200


@contextmanager
def launch(
    name: str, tmp_path: Path, count: int, *, ports: tuple[list[int], ...] | None = None
) -> Iterator[Launch]:
    """Start the launcher of example ``name``; whatever happens, leave nothing running."""
    need(*NEEDS[name])
    script = EXAMPLES[name]
    if ports is None:
        taken: set[int] = set()
        ports = tuple(free_block(count, taken) for _ in range(3))
    http_ports, peer_ports, dashboard_ports = ports
    temp = tmp_path / "tmp"  # where a run's own database goes (TMPDIR)
    temp.mkdir(exist_ok=True)
    run_id = len(list(tmp_path.glob("launch-*.out")))
    out, err = tmp_path / f"launch-{run_id}.out", tmp_path / f"launch-{run_id}.err"
    command = [sys.executable, str(script), "--instances", str(count)]
    command += ["--port", str(http_ports[0]), "--peer-port", str(peer_ports[0])]
    command += ["--dashboard-port", str(dashboard_ports[0]), "--db-delay", "0.01"]
    marker = f"{os.getpid()}-{tmp_path.name}-{run_id}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(temp), MARKER: marker}
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=tmp_path)
    run = Launch(script, count, http_ports, peer_ports, dashboard_ports, process, out, err, marker)
    try:
        yield run
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in run.instances():  # orphans, if the launcher left any
            os.kill(pid, signal.SIGKILL)


def assert_nothing_left(run: Launch) -> None:
    assert run.instances() == [], f"instances left running: {run.output()}"
    deadline = time.monotonic() + 5  # the kernel frees a port as the process exits
    while not all(port_is_free(p) for p in run.ports) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in run.ports if not port_is_free(p)] == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_a_signal_to_the_launcher_stops_every_instance(
    name: str, sig: signal.Signals, tmp_path: Path
) -> None:
    with launch(name, tmp_path, count=2) as run:
        run.wait_up()
        assert len(run.instances()) == 2
        run.process.send_signal(sig)  # `kill -TERM <launcher>`, or Ctrl-C
        assert run.exit_status() == 0, run.output()
        assert_nothing_left(run)


@pytest.mark.parametrize(
    ("name", "held"),
    [("http_api", "http"), ("wsgi_app", "peer")],
    ids=["http_api-http-port", "wsgi_app-peer-port"],
)
def test_an_instance_that_cannot_start_fails_the_launch(
    name: str, held: str, tmp_path: Path
) -> None:
    taken: set[int] = set()
    ports = tuple(free_block(2, taken) for _ in range(3))
    port = ports[0][1] if held == "http" else ports[1][1]  # instance b's
    with socket.create_server(("127.0.0.1", port)), launch(name, tmp_path, 2, ports=ports) as run:
        assert run.exit_status() != 0, run.output()
        assert "instance b did not start" in run.err.read_text()
        assert run.instances() == []  # instance a, which started, was stopped too
    assert_nothing_left(run)


def test_a_second_start_on_the_same_ports_fails_and_spares_the_first(tmp_path: Path) -> None:
    with launch("http_api", tmp_path, count=2) as first:
        first.wait_up()
        pids = sorted(first.instances())
        ports = (first.http_ports, first.peer_ports, first.dashboard_ports)
        with launch("http_api", tmp_path, count=2, ports=ports) as second:
            assert second.exit_status() != 0, second.output()
            assert "did not start" in second.err.read_text()
            assert "Traceback" not in second.err.read_text()
        assert sorted(first.instances()) == pids
        for i in range(2):
            status, body = http("GET", first.url(i) + "/health")
            assert status == 200 and body["pid"] in pids
        first.process.send_signal(signal.SIGTERM)
        assert first.exit_status() == 0, first.output()
        assert_nothing_left(first)


def test_each_run_has_a_database_of_its_own(tmp_path: Path) -> None:
    def product_7(name: str) -> tuple[str, dict[str, object]]:
        with launch(name, tmp_path, count=1) as run:
            run.wait_up()
            status, body = http("GET", run.url(0) + "/products/7")
            assert status == 200, run.output()
            before = body["product"]
            status, _ = http("PUT", run.url(0) + "/products/7", {"name": "renamed", "price": 1})
            assert status == 200
            renamed = eventually(
                lambda: http("GET", run.url(0) + "/products/7"),
                lambda r: r[1]["product"]["name"] == "renamed",
            )
            assert renamed[1]["product"]["price"] == 1
            run.process.send_signal(signal.SIGINT)  # SIGTERM is tested above
            assert run.exit_status() == 0, run.output()
            return run.out.read_text(), before

    # Each run renames product 7; none sees what an earlier run (of either example) did.
    for name in ("http_api", "wsgi_app", "http_api"):
        out, before = product_7(name)
        assert before == {"id": 7, "name": "product 7", "price": 17.0}, out
    # Every run's database was in a temporary directory of its own, removed at exit.
    assert list((tmp_path / "tmp").iterdir()) == []
