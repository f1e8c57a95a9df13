"""The Django backend writing through one crdtcache node and reading through another."""

from __future__ import annotations

from typing import Any

from crdtcache.cache._sync import SyncCache
from crdtcache.contrib.django import CrdtCache, node_for


class PairCache(CrdtCache):
    """Reads go to a second node, seeded with the first: write-through makes every
    write visible there when it returns, so each of Django's assertions checks it."""

    def reader(self) -> SyncCache:
        writer = self.node
        options: dict[str, Any] = {**self._options, "seeds": [writer.address], "node_id": "reader"}
        reader = node_for(self._location, options)
        if not reader.wait_for_peers(1, timeout=10) or not writer.wait_for_peers(1, timeout=10):
            raise RuntimeError("the pair did not connect")
        return reader
