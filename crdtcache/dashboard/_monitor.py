"""What the dashboard shows: one cache sampled every second, in bounded history.

Theory of operation
-------------------
A :class:`Monitor` runs in the cache's own event loop. Every ``SAMPLE_INTERVAL`` it
takes the cache's statistics and health, works out per-peer lag from the replica's
per-origin stamps, and turns counters into per-interval figures (hit rate by tier,
evictions by reason, sync latency percentiles of the changes applied in that
interval). The result is one *frame*: a JSON-ready dict, encoded once, that every
connected page receives. The chart figures of each frame are also kept as a *point*
in a ring of ``HISTORY`` points, so a page opened later starts with five minutes of
charts.

Changes reach the feed through ``Cache.on`` (set, delete, invalidate, expire,
peer_up, peer_down): each costs one tuple appended to a ring of ``FEED_SIZE``; a frame
carries at most ``FEED_PER_FRAME`` of those that arrived since the previous frame and
says how many it left out. Nothing grows with traffic.

Statistics count live keys by walking the replica, so a sample costs time in
proportion to the key count. The sampler measures itself and waits long enough to
stay under ``MAX_LOOP_SHARE`` of the loop's time: a node with millions of keys gets
slower charts, never a slower cache.

*Lag.* For each peer ``o`` the replica keeps ``marks[o]`` (every write of ``o``
stamped at or before it is here) and ``high[o]`` (the newest stamp seen from
``o``). ``behind_ms`` is the span between them in ``o``'s clock: writes of ``o`` that
this node has seen later writes past but cannot yet vouch it holds all of (a lost
push, an anti-entropy exchange in progress). 0 means caught up with everything heard
from ``o``; None means writes were seen but no complete exchange has happened yet.
``last_write_ms`` is the age of the newest write known from ``o`` (clock offset
between the nodes included); ``last_heard_ms`` the time since any message from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from crdtcache._errors import CacheError
from crdtcache.cache._events import CacheEvent
from crdtcache.cache._statistics import CacheStatistics, Health
from crdtcache.cache._view import peer_rows
from crdtcache.core import PeerInfo

if TYPE_CHECKING:
    from crdtcache.cache._view import CacheView

__all__ = [
    "FEED_PER_FRAME",
    "FEED_SIZE",
    "HEALTHY_SCORE",
    "HISTORY",
    "MAX_FEED_KEY_CHARS",
    "MAX_LOOP_SHARE",
    "SAMPLE_INTERVAL",
    "Monitor",
    "peer_views",
    "render_metrics",
]

log = logging.getLogger(__name__)

#: ``/healthz`` answers 503 below this score (the threshold of ``Health.healthy``).
HEALTHY_SCORE: Final = 70
#: Seconds between frames.
SAMPLE_INTERVAL: Final = 1.0
#: Chart points kept (five minutes at one a second).
HISTORY: Final = 300
#: Recent changes kept for a page that connects.
FEED_SIZE: Final = 200
#: Changes carried by one frame at most (the rest are counted, not sent).
FEED_PER_FRAME: Final = 100
#: Characters of a key shown in the feed.
MAX_FEED_KEY_CHARS: Final = 200
#: Largest share of the loop's time the sampler may take.
MAX_LOOP_SHARE: Final = 0.05

_FEED_EVENTS: Final = ("set", "delete", "invalidate", "expire", "peer_up", "peer_down")
_REASONS: Final = ("ttl", "size", "memory", "explicit")

# (seq, time, operation, key, origin, remote, pattern)
_Change = tuple[int, float, str, str | None, str | None, bool, str | None]


def peer_views(
    peers: Iterable[PeerInfo],
    addresses: Mapping[str, str],
    marks: Mapping[str, int],
    high: Mapping[str, int],
    now: float,
) -> list[dict[str, Any]]:
    """One dict per peer: id, address, state, linked and the lag figures (module doc)."""
    return [dataclasses.asdict(row) for row in peer_rows(peers, addresses, marks, high, now)]


def _rate(hits: int, lookups: int) -> float | None:
    return round(hits / lookups, 4) if lookups > 0 else None


class Monitor:
    """Samples one started cache, through its read-only view, for the dashboard."""

    def __init__(self, cache: CacheView, *, clock: Callable[[], float] = time.time) -> None:
        self._cache = cache
        self._clock = clock
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._feed: deque[_Change] = deque(maxlen=FEED_SIZE)
        self._change_seq = 0
        self._sent_seq = 0
        self._previous: CacheStatistics | None = None
        self._latency_count = 0
        self._addresses: dict[str, str] = {}
        self._unsubscribe: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._tick = asyncio.Event()
        self.closed = False
        #: The newest frame and its server-sent-events encoding (None before the first).
        self.frame: dict[str, Any] | None = None
        self.frame_event: bytes = b""
        self.seq = 0

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Subscribe to the cache's changes, take the first frame, start sampling."""
        for name in _FEED_EVENTS:
            self._unsubscribe.append(self._cache.on(name, self._on_event))
        await self.sample()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="dashboard sampler")

    async def close(self) -> None:
        """Stop sampling and release every page waiting for a frame; idempotent."""
        self.closed = True
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._tick.set()

    async def _run(self) -> None:
        delay = SAMPLE_INTERVAL
        while True:
            await asyncio.sleep(delay)
            started = time.perf_counter()
            try:
                await self.sample()
            except CacheError:  # the cache closed: release the pages (they reconnect)
                self.closed = True
                self._tick.set()
                return
            except Exception:
                log.exception("dashboard sample failed; trying again")
            cost = time.perf_counter() - started
            delay = max(SAMPLE_INTERVAL, cost / MAX_LOOP_SHARE - cost)

    async def next_frame(self, seq: int) -> tuple[int, bytes] | None:
        """Wait for a frame newer than ``seq``; None once the monitor is closed."""
        while self.seq <= seq and not self.closed:
            await self._tick.wait()
        return None if self.closed else (self.seq, self.frame_event)

    # ------------------------------------------------------------------ feed
    def _on_event(self, event: CacheEvent) -> None:
        self._change_seq += 1
        key = event.key if event.key is None else event.key[:MAX_FEED_KEY_CHARS]
        origin = event.origin if event.origin is not None else event.peer
        self._feed.append(
            (self._change_seq, self._clock(), event.name, key, origin, event.remote, event.pattern)
        )

    @staticmethod
    def _change_dict(c: _Change) -> dict[str, Any]:
        seq, at, operation, key, origin, remote, pattern = c
        return {
            "seq": seq,
            "time": round(at, 3),
            "op": operation,
            "key": key,
            "origin": origin,
            "remote": remote,
            "pattern": pattern,
        }

    def recent_changes(self) -> list[dict[str, Any]]:
        """The changes kept in the feed ring, oldest first."""
        return [self._change_dict(c) for c in self._feed]

    # -------------------------------------------------------------- sampling
    async def sample(self) -> dict[str, Any]:
        """Take a frame now, keep its point in the history and wake waiting pages."""
        cache = self._cache
        stats = await cache.statistics()
        health = cache.health()
        now = self._clock()
        rows = cache.peers(now)
        # A peer's address is known while it is connected: keep the last one seen.
        known = self._addresses
        known.update({row.id: row.address for row in rows if row.address is not None})
        for gone in known.keys() - {row.id for row in rows}:
            del known[gone]
        previous = self._previous
        self._previous = stats

        def delta(get: Callable[[CacheStatistics], int]) -> int:
            return get(stats) - (get(previous) if previous is not None else 0)

        local_hits = delta(lambda s: s.local.hits)
        local_lookups = local_hits + delta(lambda s: s.local.misses)
        dist_hits = delta(lambda s: s.distributed.hits)
        dist_lookups = dist_hits + delta(lambda s: s.distributed.misses)
        latency = cache.sync_latency_since(self._latency_count)
        self._latency_count = cache.sync_samples
        evictions = {r: _eviction_delta(stats, previous, r) for r in _REASONS}
        memory = cache.memory_bytes
        point = {
            "time": round(now, 3),
            "hit_local": _rate(local_hits, local_lookups),
            "hit_distributed": _rate(dist_hits, dist_lookups),
            "hit_overall": _rate(local_hits + dist_hits, local_lookups),
            "lookups": local_lookups,
            "local_hits": local_hits,
            "distributed_hits": dist_hits,
            "distributed_lookups": dist_lookups,
            "keys": stats.distributed.size,
            "held": stats.local.size,
            "memory": memory,
            "sync_p50": latency.p50,
            "sync_p99": latency.p99,
            "sync_samples": latency.samples,
            **{f"evict_{r}": n for r, n in evictions.items()},
            "bytes_sent": delta(lambda s: s.traffic.bytes_sent),
            "bytes_received": delta(lambda s: s.traffic.bytes_received),
        }
        fresh = [c for c in self._feed if c[0] > self._sent_seq]
        skipped = max(0, self._change_seq - self._sent_seq - len(fresh))
        if len(fresh) > FEED_PER_FRAME:
            skipped += len(fresh) - FEED_PER_FRAME
            fresh = fresh[-FEED_PER_FRAME:]
        self._sent_seq = self._change_seq
        config = cache.options
        seq = self.seq + 1
        frame = {
            "seq": seq,
            "time": round(now, 3),
            "node": {
                "id": stats.node_id,
                "address": cache.address,
                "cluster": config.cluster,
                "backend": stats.backend,
                "strategy": stats.sync_strategy,
            },
            "health": _health_dict(health),
            "peers": [
                {**dataclasses.asdict(row), "address": row.address or known.get(row.id)}
                for row in rows
            ],
            "instances": stats.cluster.instances,
            "keys": stats.distributed.size,
            "held": stats.local.size,
            "max_size": config.max_size,
            "memory": memory,
            "max_memory": config.max_memory,
            "hit_rate_total": round(stats.overall.hit_rate, 4),
            "sync_ms": {
                "p50": stats.cluster.sync_latency_ms.p50,
                "p99": stats.cluster.sync_latency_ms.p99,
                "samples": stats.cluster.sync_latency_ms.samples,
            },
            "last_sync_time": stats.cluster.last_sync_time,
            "evictions_total": {r: getattr(stats.evictions, r) for r in _REASONS},
            "traffic": {
                "bytes_sent": stats.traffic.bytes_sent,
                "bytes_received": stats.traffic.bytes_received,
                "frames_sent": stats.traffic.frames_sent,
                "frames_received": stats.traffic.frames_received,
            },
            "point": point,
            "changes": [self._change_dict(c) for c in fresh],
            "changes_skipped": skipped,
        }
        self._history.append(point)
        self.frame = frame
        self.frame_event = sse_event("sample", frame, event_id=seq)
        self.seq = seq
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()
        return frame

    def hello(self) -> dict[str, Any]:
        """What a page gets first: the newest frame, the history and the feed ring."""
        return {"latest": self.frame, "history": list(self._history), "feed": self.recent_changes()}


def _eviction_delta(stats: CacheStatistics, previous: CacheStatistics | None, reason: str) -> int:
    now: int = getattr(stats.evictions, reason)
    return now - (getattr(previous.evictions, reason) if previous is not None else 0)


def _health_dict(health: Health) -> dict[str, Any]:
    return {"score": health.score, "healthy": health.healthy, "reasons": list(health.reasons)}


def to_json(data: Any) -> str:
    """Compact JSON, ASCII only (so no key can break a server-sent-events line)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def sse_event(name: str, data: Any, *, event_id: int | None = None) -> bytes:
    """One server-sent event; ``data`` is JSON on one line (see :func:`to_json`)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {to_json(data)}\n\n".encode("ascii")


# ------------------------------------------------------------------ metrics
def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_metrics(
    stats: CacheStatistics,
    health: Health,
    *,
    memory: int,
    counters: bool,
    namespace: str = "crdtcache",
) -> str:
    """The statistics in the Prometheus text format (version 0.0.4).

    With ``counters`` the hit, miss and eviction counters and the live peer gauge are
    included under the names :class:`~crdtcache.metrics.PrometheusMetrics` uses;
    without, only what that exporter lacks (keys, memory, health, traffic, latency
    percentiles), to be appended to its own output.
    """
    ns = namespace
    node = _label(stats.node_id)
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]) -> None:
        full = f"{ns}_{name}_total" if kind == "counter" else f"{ns}_{name}"
        lines.append(f"# HELP {full} {help_text}")
        lines.append(f"# TYPE {full} {kind}")
        for labels, value in samples:
            lines.append(f"{full}{{{labels}}} {_number(value)}")

    if counters:
        metric(
            "cache_hits",
            "counter",
            "Lookups answered",
            [
                (f'node="{node}",source="local"', stats.local.hits),
                (f'node="{node}",source="distributed"', stats.distributed.hits),
            ],
        )
        misses = stats.local.misses - stats.distributed.hits
        metric("cache_misses", "counter", "Lookups not answered", [(f'node="{node}"', misses)])
        metric(
            "cache_evictions",
            "counter",
            "Values that left the local tier",
            [(f'node="{node}",reason="{r}"', getattr(stats.evictions, r)) for r in _REASONS],
        )
        live = sum(1 for p in stats.cluster.peers if p.state != "dead")
        metric("peers", "gauge", "Live peers", [(f'node="{node}"', live)])
    metric(
        "keys", "gauge", "Live keys in the replica", [(f'node="{node}"', stats.distributed.size)]
    )
    metric(
        "held_values",
        "gauge",
        "Values held by the local tier",
        [(f'node="{node}"', stats.local.size)],
    )
    metric(
        "memory_bytes", "gauge", "Bytes of keys and values held here", [(f'node="{node}"', memory)]
    )
    metric(
        "instances",
        "gauge",
        "This node and its live peers",
        [(f'node="{node}"', stats.cluster.instances)],
    )
    metric("health_score", "gauge", "Health score, 0-100", [(f'node="{node}"', health.score)])
    states: dict[str, int] = {"alive": 0, "suspect": 0, "dead": 0}
    for p in stats.cluster.peers:
        states[p.state] = states.get(p.state, 0) + 1
    metric(
        "peer_states",
        "gauge",
        "Peers by state",
        [(f'node="{node}",state="{_label(s)}"', n) for s, n in sorted(states.items())],
    )
    latency = stats.cluster.sync_latency_ms
    for q, value in (("p50", latency.p50), ("p99", latency.p99)):
        if value is not None:
            metric(
                f"sync_latency_{q}_seconds",
                "gauge",
                f"Sync latency {q} over the recent window",
                [(f'node="{node}"', value / 1000.0)],
            )
    traffic = stats.traffic
    for name, value in (
        ("peer_sent_bytes", traffic.bytes_sent),
        ("peer_received_bytes", traffic.bytes_received),
        ("peer_sent_frames", traffic.frames_sent),
        ("peer_received_frames", traffic.frames_received),
    ):
        metric(name, "counter", "Peer traffic since start", [(f'node="{node}"', value)])
    return "\n".join(lines) + "\n"
