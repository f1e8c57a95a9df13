"""kill -9 a node just after its write reached a peer, restart it from persist_path, write
at once: every node must end up with the same data (real OS processes on loopback).

Before own writes waited to be stored, the killed node came back without the write
(its last batch predated it) and its first write after the restart raised its own
mark over it, so nobody ever sent it back: the cluster stayed split for good.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

# One cache node in its own process, driven by lines on stdin; one JSON line answers each.
NODE = """
import asyncio, json, sys
from crdtcache import Cache

async def main():
    node_id, listen, path, *seeds = sys.argv[1:]
    cache = Cache(backend="p2p", node_id=node_id, listen=listen, persist_path=path,
                  discovery="none", seeds=seeds)
    async with cache:
        print(json.dumps({"ready": cache.node_id}), flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := (await reader.readline()).decode():
            cmd, _, rest = line.strip().partition(" ")
            if cmd == "set":
                key, _, value = rest.partition(" ")
                await cache.set(key, value)
                print(json.dumps({"ok": True}), flush=True)
            elif cmd == "has":
                print(json.dumps({"has": await cache.get(rest) is not None}), flush=True)
            elif cmd == "dump":
                keys = await cache.keys()
                print(json.dumps({k: await cache.get(k) for k in keys}), flush=True)
            elif cmd == "peers":
                print(json.dumps({"peers": len((await cache.get_statistics()).cluster.peers)}),
                      flush=True)

asyncio.run(main())
"""


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class NodeProcess:
    def __init__(self, node_id: str, port: int, path: Path, seeds: list[str]) -> None:
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", NODE, node_id, f"127.0.0.1:{port}", str(path), *seeds],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert "ready" in self.read()

    def read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the node process ended"
        return json.loads(line)

    def ask(self, line: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.read()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def _eventually(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_kill_nine_right_after_a_write_spread_loses_nothing(tmp_path: Path) -> None:
    ports = _free_ports(3)
    seeds = [f"127.0.0.1:{p}" for p in ports]
    paths = [tmp_path / f"n{i}.db" for i in range(3)]
    nodes = [NodeProcess(f"n{i}", ports[i], paths[i], seeds[:i]) for i in range(3)]
    try:
        assert _eventually(lambda: all(n.ask("peers")["peers"] == 2 for n in nodes), 15)
        for i in range(6):  # bounded: each round is a kill, a restart and a catch-up
            a, b = nodes[0], nodes[1]
            a.ask(f"set w{i} round-{i}")
            # Kill within milliseconds of the write reaching a peer.
            assert _eventually(lambda i=i, b=b: b.ask(f"has w{i}")["has"], 5)
            a.kill()
            nodes[0] = a = NodeProcess("n0", ports[0], paths[0], seeds[1:])
            a.ask(f"set after{i} x")  # at once, before any catch-up
            assert _eventually(
                lambda: len({json.dumps(n.ask("dump"), sort_keys=True) for n in nodes}) == 1, 20
            ), [n.ask("dump") for n in nodes]
            assert nodes[0].ask("dump").get(f"w{i}") == f"round-{i}"
    finally:
        for n in nodes:
            n.stop()
