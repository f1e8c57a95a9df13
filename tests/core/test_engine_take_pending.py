"""GossipEngine.take_pending: local deltas handed to a driver instead of to peers."""

from __future__ import annotations

import random

from crdtcache.core import TOMBSTONE, GossipEngine, HybridClock, Replica


def test_take_pending_hands_over_the_newest_delta_per_key_in_stamp_order() -> None:
    engine = GossipEngine(Replica(HybridClock("n")), random.Random(0))
    engine.set("a", 1, 1.0)
    engine.set("b", 2, 1.0)
    engine.set("a", 3, 1.0)
    engine.delete("b", 1.0)
    engine.invalidate_pattern("c*", 1.0)
    assert engine.pending == 3
    entries, patterns = engine.take_pending()
    assert [(k, e.value) for k, e in entries] == [("a", 3), ("b", TOMBSTONE)]
    assert entries[0][1].ts < entries[1][1].ts
    assert [p.pattern for p in patterns] == ["c*"]
    assert engine.pending == 0
    assert engine.take_pending() == ([], [])
    assert engine.flush(2.0) == ([], 0)  # nothing left to push
