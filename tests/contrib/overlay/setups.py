"""The crdtcache setups a framework's suite runs against (shared by the overlays).

A run is told its setup by the environment: ``CRDT_SETUP`` (``memory``, ``p2p``,
``p2p-pair`` or ``redis``), ``CRDT_REDIS_URL`` and ``CRDT_CLUSTER`` (a cluster name of
this run's own). :func:`options` gives the crdtcache options of one serializer;
``p2p-pair`` means two nodes, write-through: the framework writes through the first
and reads through the second, so every assertion also checks replication.
"""

from __future__ import annotations

import os
from typing import Any

SETUP = os.environ.get("CRDT_SETUP", "memory")
REDIS_URL = os.environ.get("CRDT_REDIS_URL", "redis://127.0.0.1:6379/0")
CLUSTER = os.environ.get("CRDT_CLUSTER", "framework-suites")
#: A cluster secret: pickle is accepted on p2p only with one.
SECRET = b"framework-suites-cluster-secret"
PAIRED = SETUP == "p2p-pair"


def serializers() -> list[str]:
    """The serializers this setup runs: pickle only where crdtcache allows it."""
    # Pickle needs a password or TLS in redis_url; the test server has neither.
    return ["msgpack"] if SETUP == "redis" else ["msgpack", "pickle"]


def location() -> str:
    """The backend name, or the Redis URL."""
    if SETUP == "redis":
        return REDIS_URL
    return "p2p" if SETUP.startswith("p2p") else SETUP


def options(serializer: str) -> dict[str, Any]:
    """crdtcache options of this setup (node-specific ones excluded)."""
    out: dict[str, Any] = {"serializer": serializer}
    if SETUP.startswith("p2p"):
        out.update(discovery="none", secret=SECRET)
    if SETUP == "redis":
        out["cluster"] = f"{CLUSTER}-{serializer}"
    if PAIRED:
        out["sync_strategy"] = "write-through"
    return out


#: Why the tests that store arbitrary objects are skipped on this setup (msgpack).
NEEDS_PICKLE = (
    "pickle is refused on a Redis without a password or TLS (PICKLE_RISK); the test "
    "server has neither"
    if SETUP == "redis"
    else "needs serializer='pickle' (run in the pickle class)"
)
