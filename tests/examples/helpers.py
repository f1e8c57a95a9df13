"""Run an example's instances as subprocesses on loopback, and talk to them over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def need(*modules: str) -> None:
    """Skip (fail in CI) unless every module can be imported."""
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            reason = f"{module} is not installed: pip install -e '.[examples]'"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(reason)
            pytest.skip(reason)


def free_ports(count: int) -> list[int]:
    """Ports free right now (held open together, so they differ)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def http(method: str, url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


def eventually(
    probe: Callable[[], Any], check: Callable[[Any], bool], timeout: float = 10.0
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = probe()
        except (OSError, urllib.error.URLError) as exc:
            got = exc
        if not isinstance(got, Exception) and check(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"still {got!r} after {timeout} s")
        time.sleep(0.05)


@dataclass
class Instance:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str) -> tuple[int, Any]:
        return http("GET", self.url + path)

    def put(self, path: str, body: Any) -> tuple[int, Any]:
        return http("PUT", self.url + path, body)


@contextmanager
def instances(script: Path, tmp_path: Path, count: int = 3) -> Iterator[list[Instance]]:
    """``count`` instances of an example, seeded with each other, sharing one database."""
    ports = free_ports(2 * count)
    http_ports, peer_ports = ports[:count], ports[count:]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started: list[Instance] = []
    try:
        for i in range(count):
            name = "abc"[i]
            seeds = ",".join(f"127.0.0.1:{p}" for j, p in enumerate(peer_ports) if j != i)
            log = tmp_path / f"{name}.log"
            command = [sys.executable, str(script), "--name", name]
            command += ["--port", str(http_ports[i]), "--peer-port", str(peer_ports[i])]
            command += ["--seeds", seeds, "--db", str(tmp_path / "db.sqlite3")]
            command += ["--db-delay", "0.05"]
            with log.open("wb") as out:
                process = subprocess.Popen(
                    command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path
                )
            started.append(Instance(name, f"http://127.0.0.1:{http_ports[i]}", process, log))
        for inst in started:
            try:
                eventually(
                    lambda inst=inst: inst.get("/health"), lambda r: r[1]["nodes"] == count, 30
                )
            except AssertionError:
                raise AssertionError(f"{inst.name} did not join: {inst.log.read_text()}") from None
        yield started
    finally:
        for inst in started:
            if inst.process.poll() is None:
                inst.process.send_signal(signal.SIGINT)
        for inst in started:
            try:
                inst.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                inst.process.kill()
                inst.process.wait()


def check_shared_cache_and_invalidation(nodes: list[Instance]) -> None:
    """The scenario both examples must pass."""
    a, b, c = nodes
    # A write through one instance (its get_or_set loads from the database) ...
    status, body = a.get("/products/7")
    assert status == 200 and body["source"] == "database" and body["instance"] == "a"
    assert body["product"] == {"id": 7, "name": "product 7", "price": 17.0}
    # ... reaches the others within moments ...
    for other in (b, c):
        eventually(lambda other=other: other.get("/health"), lambda r: r[1]["cached_keys"] == 1)
    # ... which serve it from their own memory: no database query there.
    for other in (b, c):
        status, got = other.get("/products/7")
        assert status == 200 and got["source"] == "cache" and got["instance"] == other.name
        assert got["product"] == body["product"]
        assert other.get("/health")[1]["database_loads"] == 0
    assert a.get("/products/7")[1]["source"] == "cache"
    assert a.get("/products/999")[0] == 404

    # An update through one instance invalidates the key on every instance.
    status, _ = b.put("/products/7", {"name": "renamed", "price": 99.5})
    assert status == 200
    for node in (a, b, c):
        got = eventually(
            lambda node=node: node.get("/products/7"),
            lambda r: r[1]["product"]["price"] == 99.5,
        )
        assert got[1]["product"]["name"] == "renamed"
    loads = sum(node.get("/health")[1]["database_loads"] for node in nodes)
    assert 2 <= loads <= 5  # the first load, then one reload per instance at most
