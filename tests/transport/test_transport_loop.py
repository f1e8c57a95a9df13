"""The transport runs on uvloop when installed, and the opt-out works."""

from __future__ import annotations

import asyncio

import pytest
from conftest import start_cluster, view, wait_for, write

from crdtcache.cache import _loop


def test_opt_out_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRDTCACHE_UVLOOP", "0")
    assert _loop.uvloop_wanted() is False
    assert _loop.uvloop_wanted(True) is True
    loop = _loop.new_event_loop()
    try:
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()


def test_two_nodes_on_uvloop() -> None:
    pytest.importorskip("uvloop")

    async def scenario() -> str:
        nodes = await start_cluster(2, prefix="uv")
        try:
            write(nodes[0], "k", "on uvloop")
            await wait_for(lambda: "k" in view(nodes[1]))
            return type(asyncio.get_running_loop()).__module__
        finally:
            await asyncio.gather(*(n.close() for n in nodes))

    assert _loop.run(scenario(), use_uvloop=True).startswith("uvloop")
