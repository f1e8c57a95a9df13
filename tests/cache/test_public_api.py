"""The public surface: names exported, and nothing else."""

from __future__ import annotations

import crdtcache

EXPECTED = {
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
}


def test_public_names_are_pinned() -> None:
    assert set(crdtcache.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(crdtcache, name)


def test_every_error_is_a_cache_error() -> None:
    for name in crdtcache.__all__:
        obj = getattr(crdtcache, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, crdtcache.CacheError)


def test_public_objects_have_docstrings() -> None:
    for name in crdtcache.__all__:
        obj = getattr(crdtcache, name)
        if callable(obj):
            assert obj.__doc__, name
    for cls in (crdtcache.Cache, crdtcache.SyncCache, crdtcache.EventBus):
        for attr, member in vars(cls).items():
            if not attr.startswith("_") and callable(member):
                assert member.__doc__, f"{cls.__name__}.{attr}"
