"""The settings and counters of a gossip engine, and where its randomness comes from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from crdtcache.core._membership import MAX_MEMBERS
from crdtcache.core._patterns import MAX_MESSAGE_PATTERNS
from crdtcache.core._values import DEFAULT_MAX_VALUE_BYTES, MAX_VALUE_BYTES

__all__ = ["EngineStatistics", "GossipConfig", "RandomSource"]


class RandomSource(Protocol):
    """Where the engine's randomness comes from (e.g. a seeded ``random.Random``)."""

    def random(self) -> float:
        """A float in [0, 1)."""
        ...


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Timings and limits of a :class:`~crdtcache.core.GossipEngine` (seconds, counts, bytes)."""

    #: The longest a queued write waits for its flush. Not a fixed wait: an idle
    #: engine flushes a write at once; only a busy one (see ``flush_burst``) batches.
    sync_interval: float = 0.005
    #: Flushes that may go out at once, back to back, before writes wait to be batched
    #: (a budget refilled at ``flush_burst`` per ``sync_interval``): under load at most
    #: that many flushes per ``sync_interval``, each carrying every write queued since.
    flush_burst: int = 4
    fanout: int | None = None
    max_hops: int = 16
    anti_entropy_interval: float = 1.0
    heartbeat_interval: float = 0.5
    suspect_after: float = 2.0
    dead_after: float = 6.0
    #: Seconds after which a dead peer is forgotten (it is added again if it returns).
    forget_dead_after: float = 3600.0
    #: Peers tracked at most: a newcomer replaces the peer dead the longest.
    max_peers: int = MAX_MEMBERS
    gc_interval: float = 5.0
    exchange_timeout: float = 10.0
    #: Seconds between anti-entropy answers to one peer, past a small burst.
    answer_interval: float = 0.25
    max_message_entries: int = 4096
    max_message_bytes: int = 1 << 20
    #: Pattern tombstones per message (each costs the receiver a scan of its map); at
    #: most :data:`~crdtcache.core._patterns.MAX_MESSAGE_PATTERNS`, what receivers accept.
    max_message_patterns: int = MAX_MESSAGE_PATTERNS
    on_demand: bool = False
    #: Epidemic mode: how many flushes relay each new item; None = ceil(log2(N + 1) / 2).
    retransmits: int | None = None
    #: This node's ``max_value_bytes``: the limit every reader of records applies here
    #: (wire, snapshot, store, Redis), so a runtime finds it on the engine it drives.
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES

    def __post_init__(self) -> None:
        for name in (
            "sync_interval",
            "anti_entropy_interval",
            "heartbeat_interval",
            "gc_interval",
            "answer_interval",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0 < self.suspect_after <= self.dead_after:
            raise ValueError("need 0 < suspect_after <= dead_after")
        if self.forget_dead_after < self.dead_after:
            raise ValueError("need forget_dead_after >= dead_after")
        if self.max_peers < 1:
            raise ValueError("max_peers must be at least 1")
        if self.flush_burst < 1:
            raise ValueError("flush_burst must be at least 1")
        if self.fanout is not None and self.fanout < 1:
            raise ValueError("fanout must be None (every peer) or at least 1")
        if self.max_message_entries < 1 or self.max_message_bytes < 1024:
            raise ValueError("message limits too small")
        if not 1 <= self.max_message_patterns <= MAX_MESSAGE_PATTERNS:
            raise ValueError(f"max_message_patterns must be in [1, {MAX_MESSAGE_PATTERNS}]")
        if not 1 <= self.max_value_bytes <= MAX_VALUE_BYTES:
            raise ValueError(f"max_value_bytes must be in [1, {MAX_VALUE_BYTES}]")


@dataclass(slots=True)
class EngineStatistics:
    """Counters of a :class:`~crdtcache.core.GossipEngine` (monotonic since start)."""

    pushes_sent: int = 0
    entries_pushed: int = 0
    relays_sent: int = 0
    entries_received: int = 0
    entries_applied: int = 0
    sync_requests_sent: int = 0
    sync_entries_sent: int = 0
    #: Anti-entropy requests replaced by a newer one from the same peer before answered.
    sync_requests_replaced: int = 0
    full_syncs_sent: int = 0
    syncs_completed: int = 0
    refused_drift: int = 0
    #: Remote pattern tombstones refused because the replica holds as many as it may.
    refused_patterns: int = 0
    #: Messages from a peer not taken into the full peer table (ignored).
    ignored_messages: int = 0
    #: Sync answers to no pull of this node's in flight (merged, their marks ignored).
    unsolicited_responses: int = 0
    events_dropped: int = 0
    collected: int = 0
