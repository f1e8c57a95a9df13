"""crdtcache: a peer-to-peer replicated cache with no central server.

Every node keeps a last-writer-wins register map stamped with hybrid logical clocks,
gossips deltas to its peers over TCP and repairs divergence by anti-entropy.

Logging: every module logs to a ``logging.getLogger(__name__)`` logger under
``"crdtcache"``, which has a ``NullHandler``: nothing is printed unless the
application configures logging (``logging.basicConfig(level=logging.INFO)``, or a
handler on ``logging.getLogger("crdtcache")``).
"""

import logging as _logging

# The dashboard plugs into ``Cache(dashboard=...)`` (see crdtcache.cache._services).
from crdtcache import dashboard as _dashboard  # noqa: F401
from crdtcache._errors import (
    CacheError,
    ClockDriftError,
    ConfigError,
    CorruptStateError,
    PeerError,
    PersistenceError,
    ProtocolError,
    SerializationError,
    ValidationError,
)
from crdtcache.cache._cache import Cache
from crdtcache.cache._cached import cached
from crdtcache.cache._events import CacheEvent, ChangeEvent, EventBus, InvalidationRule
from crdtcache.cache._statistics import (
    CacheStatistics,
    ClusterStatistics,
    EvictionStatistics,
    Health,
    LatencyStatistics,
    OverallStatistics,
    PeerStatistics,
    TierStatistics,
    TrafficStatistics,
)
from crdtcache.cache._sync import SyncCache

__version__ = "0.1.0"
"""The installed version of crdtcache (``crdtcache --version`` prints it)."""

# A library does not decide where its log lines go: without this, Python's last-resort
# handler would print crdtcache's warnings to stderr in an application that configured
# no logging at all.
_logging.getLogger(__name__).addHandler(_logging.NullHandler())

__all__ = [
    "Cache",
    "CacheError",
    "CacheEvent",
    "CacheStatistics",
    "ChangeEvent",
    "ClockDriftError",
    "ClusterStatistics",
    "ConfigError",
    "CorruptStateError",
    "EventBus",
    "EvictionStatistics",
    "Health",
    "InvalidationRule",
    "LatencyStatistics",
    "OverallStatistics",
    "PeerError",
    "PeerStatistics",
    "PersistenceError",
    "ProtocolError",
    "SerializationError",
    "SyncCache",
    "TierStatistics",
    "TrafficStatistics",
    "ValidationError",
    "__version__",
    "cached",
]
