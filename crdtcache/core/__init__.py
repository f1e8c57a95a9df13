"""The replication core: pure, deterministic and sans-IO.

Nothing here reads a clock, draws randomness, or touches a socket or an event loop:
time and randomness are passed in. The transport and the simulator both drive the
same :class:`GossipEngine`.
"""

from crdtcache.core._engine import (
    EngineStatistics,
    GossipConfig,
    GossipEngine,
    Outgoing,
    RandomSource,
)
from crdtcache.core._entry import NOT_HELD, TOMBSTONE, Change, Entry, PatternTombstone
from crdtcache.core._hlc import MAX_DRIFT, MAX_NODE_ID_CHARS, HybridClock, Stamp, pack_ts
from crdtcache.core._membership import ALIVE, DEAD, SUSPECT, PeerEvent, PeerInfo
from crdtcache.core._messages import (
    PROTOCOL_VERSION,
    Ack,
    Fetch,
    FetchReply,
    Message,
    Ping,
    Push,
    SyncRequest,
    SyncResponse,
)
from crdtcache.core._replica import TOMBSTONE_GRACE, Replica
from crdtcache.core._resolver import (
    Resolver,
    ResolverViolation,
    Version,
    check_resolver,
    last_writer_wins,
)
from crdtcache.core._values import (
    DEFAULT_MAX_VALUE_BYTES,
    MAX_KEY_CHARS,
    MAX_VALUE_BYTES,
    Packed,
    check_key,
    decode_value,
    encode_value,
    unpack_stored,
)

__all__ = [
    "ALIVE",
    "DEAD",
    "DEFAULT_MAX_VALUE_BYTES",
    "MAX_DRIFT",
    "MAX_KEY_CHARS",
    "MAX_NODE_ID_CHARS",
    "MAX_VALUE_BYTES",
    "NOT_HELD",
    "PROTOCOL_VERSION",
    "SUSPECT",
    "TOMBSTONE",
    "TOMBSTONE_GRACE",
    "Ack",
    "Change",
    "EngineStatistics",
    "Entry",
    "Fetch",
    "FetchReply",
    "GossipConfig",
    "GossipEngine",
    "HybridClock",
    "Message",
    "Outgoing",
    "Packed",
    "PatternTombstone",
    "PeerEvent",
    "PeerInfo",
    "Ping",
    "Push",
    "RandomSource",
    "Replica",
    "Resolver",
    "ResolverViolation",
    "Stamp",
    "SyncRequest",
    "SyncResponse",
    "Version",
    "check_key",
    "check_resolver",
    "decode_value",
    "encode_value",
    "last_writer_wins",
    "pack_ts",
    "unpack_stored",
]
