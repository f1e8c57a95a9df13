"""``Cache.health()``: a 0-100 score with the reason for every point taken off."""

from __future__ import annotations

from typing import Final

from crdtcache.cache._statistics import Counters, Health
from crdtcache.core import DEAD, SUSPECT, EngineStatistics
from crdtcache.runtime._protocol import RuntimeStatistics

__all__ = ["NAMED_PEERS", "assess"]

#: Peers a reason names at most; the count says how many there are.
NAMED_PEERS: Final = 5


def assess(
    counters: Counters,
    runtime: RuntimeStatistics,
    engine: EngineStatistics,
    *,
    refused_values: int,
) -> Health:
    """Score a node from what it counted and what its runtime reports.

    Looks at the runtime's own findings, peers (suspect or down), sync latency, hit
    rate, eviction pressure, refused stamps and values, write-through timeouts and
    dropped events.
    """
    reasons: list[str] = []
    score = 100

    def take(points: int, reason: str) -> None:
        nonlocal score
        score -= points
        reasons.append(f"-{points}: {reason}")

    for problem in runtime.problems:
        take(problem.points, problem.reason)
    for state, each, label in ((SUSPECT, 10, "suspect"), (DEAD, 15, "down")):
        ids = sorted(p.id for p in runtime.peers if p.state == state)
        if ids:
            take(min(30, each * len(ids)), f"{len(ids)} peer(s) {label}: {_some(ids)}")
    p99 = counters.sync_window.summary().p99
    if p99 is not None and p99 > 1000:
        take(20, f"sync latency p99 {p99:.0f} ms")
    elif p99 is not None and p99 > 100:
        take(10, f"sync latency p99 {p99:.0f} ms")
    lookups = counters.local_hits + counters.local_misses
    hit_rate = counters.hit_rate()
    if lookups >= 100 and hit_rate < 0.5:
        take(10, f"hit rate {hit_rate:.0%} over {lookups} lookups")
    pressure = counters.evictions["size"] + counters.evictions["memory"]
    if counters.writes >= 100 and pressure > counters.writes // 4:
        take(10, f"{pressure} evictions for {counters.writes} writes: the local tier is small")
    refused_drift = engine.refused_drift + runtime.refused_drift
    if refused_drift:
        take(15, f"{refused_drift} stamps refused for clock drift")
    if refused_values:
        take(10, f"{refused_values} values from peers refused (schema or size limits)")
    if counters.ack_failures:
        take(20, f"{counters.ack_failures} write-through writes not acknowledged in time")
    if engine.events_dropped:
        take(5, f"{engine.events_dropped} change events dropped")
    return Health(max(0, score), tuple(reasons))


def _some(ids: list[str]) -> str:
    """The first :data:`NAMED_PEERS` ids, and how many more (a reason stays short)."""
    shown = ", ".join(ids[:NAMED_PEERS])
    more = len(ids) - NAMED_PEERS
    return f"{shown} and {more} more" if more > 0 else shown
