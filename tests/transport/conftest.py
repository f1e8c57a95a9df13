"""Helpers for tests that run real nodes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from crdtcache.core import GossipConfig, GossipEngine, HybridClock, Replica, encode_value
from crdtcache.transport import Node

FAST = {
    "anti_entropy_interval": 0.2,
    "heartbeat_interval": 0.1,
    "suspect_after": 0.5,
    "dead_after": 1.0,
}


def make_engine(name: str, **config: Any) -> GossipEngine:
    settings = {**FAST, **config}
    return GossipEngine(Replica(HybridClock(name)), random.Random(name), GossipConfig(**settings))


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.005)


def write(node: Node, key: str, value: Any) -> None:
    node.engine.set(key, encode_value(key, value), time.time())
    node.wake()


def view(node: Node) -> dict[str, Any]:
    return {k: v for k, (v, _, _) in node.engine.replica.visible(time.time()).items()}


def meshed(nodes: list[Node]) -> bool:
    return all(len(n.connected_peers()) == len(nodes) - 1 for n in nodes)


async def start_cluster(count: int, prefix: str = "n", **config: Any) -> list[Node]:
    nodes = [Node(make_engine(f"{prefix}{i}", **config)) for i in range(count)]
    for node in nodes:
        await node.start()
    for node in nodes[1:]:
        assert nodes[0].address is not None
        node.add_seed(nodes[0].address)
    await wait_for(lambda: meshed(nodes), 10)
    return nodes


@pytest.fixture
async def cluster3() -> AsyncIterator[list[Node]]:
    nodes = await start_cluster(3)
    yield nodes
    await asyncio.gather(*(n.close() for n in nodes))
