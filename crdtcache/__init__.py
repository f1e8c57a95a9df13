"""crdtcache: a peer-to-peer replicated cache with no central server.

Every node keeps a last-writer-wins register map stamped with hybrid logical clocks,
gossips deltas to its peers over TCP and repairs divergence by anti-entropy.
"""

from crdtcache._errors import (
    CacheError,
    ClockDriftError,
    ConfigError,
    PeerError,
    ProtocolError,
    SerializationError,
    ValidationError,
)

__version__ = "0.1.0"

__all__ = [
    "CacheError",
    "ClockDriftError",
    "ConfigError",
    "PeerError",
    "ProtocolError",
    "SerializationError",
    "ValidationError",
    "__version__",
]
