"""Fixtures for the dashboard tests (helpers are in ``helpers.py``)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

if os.environ.get("CI", "").lower() != "true":  # in CI a missing extra is a failure
    pytest.importorskip("aiohttp", reason="the dashboard extra: pip install 'crdtcache[dashboard]'")

import aiohttp

from crdtcache import Cache
from tests.dashboard.helpers import EventStream


@pytest.fixture
async def memory_dashboard() -> AsyncIterator[Cache]:
    async with Cache(backend="memory", node_id="solo", dashboard="127.0.0.1:0") as cache:
        yield cache


@pytest.fixture
async def events() -> AsyncIterator[Callable[[str], Any]]:
    """Open event streams by URL; all are closed at the end."""
    session = aiohttp.ClientSession()
    opened: list[aiohttp.ClientResponse] = []

    async def open_stream(url: str) -> EventStream:
        response = await session.get(url)
        opened.append(response)
        return EventStream(response)

    yield open_stream
    for response in opened:
        response.close()
    await session.close()
