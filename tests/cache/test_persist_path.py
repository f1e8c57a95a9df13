"""persist_path through the cache: missing directories, and a second cache on one file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from crdtcache import Cache, PersistenceError


async def test_persist_path_in_a_missing_directory(tmp_path: Path) -> None:
    # The README's ``--persist /var/lib/shop/cache.db`` on a machine without /var/lib/shop.
    path = tmp_path / "var" / "lib" / "shop" / "cache.db"
    async with Cache(backend="memory", persist_path=path, node_id="a") as cache:
        await cache.set("k", "v")
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    async with Cache(backend="memory", persist_path=path) as again:
        assert again.node_id == "a"
        assert await again.get("k") == "v"


async def test_two_caches_on_one_file_in_one_process(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    async with Cache(backend="memory", persist_path=path):
        with pytest.raises(PersistenceError, match="already open in this process"):
            async with Cache(backend="memory", persist_path=path):
                pass
    # Neither the refused cache nor the closed one keeps the file.
    async with Cache(backend="memory", persist_path=path) as cache:
        await cache.set("k", 1)
