"""Helpers for the dashboard tests: clusters with a dashboard, HTTP and event-stream reads."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import time
from asyncio.subprocess import Process
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from crdtcache import Cache

ROOT = Path(__file__).resolve().parents[2]


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


def fast(cache: Cache) -> None:
    """Shorter failure detection than the defaults, for tests."""
    engine = cache._engine
    assert engine is not None
    engine.config = dataclasses.replace(
        engine.config, heartbeat_interval=0.05, suspect_after=0.3, dead_after=1.0
    )


async def p2p_cluster(
    count: int, *, dashboard_on: int = 0, quick: bool = True, **options: Any
) -> list[Cache]:
    """``count`` p2p caches on loopback, the one at ``dashboard_on`` with a dashboard.

    ``quick`` shortens failure detection; without it the defaults hold (a lost link
    still makes its peer suspect at once).
    """
    caches: list[Cache] = []
    for i in range(count):
        cache = Cache(
            backend="p2p",
            discovery="none",
            node_id=f"n{i}",
            seeds=[caches[0].address] if caches else [],
            dashboard="127.0.0.1:0" if i == dashboard_on else None,
            **options,
        )
        await cache.start()
        if quick:
            fast(cache)
        caches.append(cache)
    await wait_for(lambda: all(len(c._engine.live_peers()) == count - 1 for c in caches))  # type: ignore[union-attr]
    return caches


async def fetch(
    url: str, *, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers=headers) as response,
    ):
        return response.status, dict(response.headers), await response.read()


async def fetch_json(url: str, **kwargs: Any) -> tuple[int, Any]:
    status, _, body = await fetch(url, **kwargs)
    return status, json.loads(body)


class EventStream:
    """Reads server-sent events from a dashboard's ``/events``."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, timeout: float = 5.0) -> tuple[str, Any]:
        name, data = "message", ""
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    raise EOFError("stream ended")
                line = raw.decode().rstrip("\n")
                if not line:
                    if data:
                        return name, json.loads(data)
                    continue
                field, _, value = line.partition(": ")
                if field == "event":
                    name = value
                elif field == "data":
                    data += value


_NODE_SCRIPT = """
import asyncio, sys
from crdtcache import Cache

async def main():
    cache = Cache(backend="p2p", discovery="none", node_id=sys.argv[1], seeds=[sys.argv[2]])
    async with cache:
        print(cache.node_id, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@contextlib.asynccontextmanager
async def node_process(name: str, seed: str) -> AsyncIterator[tuple[str, Process]]:
    """A cache node in a process of its own (so that it can be killed); yields its id."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _NODE_SCRIPT,
        name,
        seed,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            node_id = (await process.stdout.readline()).decode().strip()
        assert node_id.startswith(name), node_id
        yield node_id, process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
