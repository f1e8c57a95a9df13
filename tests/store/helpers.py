"""Builders shared by the persistence tests: replicas with every kind of state."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import strategies as st

from crdtcache.core import (
    MAX_DRIFT,
    NOT_HELD,
    TOMBSTONE,
    TOMBSTONE_GRACE,
    Entry,
    HybridClock,
    PatternTombstone,
    Replica,
    encode_value,
    pack_ts,
)
from crdtcache.store._snapshot import SNAPSHOT_MAGIC, SNAPSHOT_VERSION

#: A fixed wall-clock origin (seconds since the epoch) for every test.
T0 = 1_700_000_000.0


def ts(wall: float, logical: int = 0) -> int:
    """The packed HLC ``ts`` of a wall time in seconds."""
    return pack_ts(int(wall * 1000), logical)


def make_replica(node: str = "a", *, last_ts: int = 0, grace: float = TOMBSTONE_GRACE) -> Replica:
    """A fresh replica for ``node``."""
    return Replica(HybridClock(node, max_drift=MAX_DRIFT, last_ts=last_ts), tombstone_grace=grace)


def sample_replica(now: float = T0, node: str = "a") -> Replica:
    """A replica holding one of everything: each scalar type, containers, a tombstone,
    a stub, an expiring and an expired value, foreign writes, a pattern, marks and
    collected stamps."""
    r = make_replica(node, grace=60.0)
    # An old tombstone, collected below: gives ``collected`` an entry.
    r.merge_entry("gone", Entry(TOMBSTONE, ts(now - 600), "c"), now)
    r.collect(now)
    values: dict[str, object] = {
        "none": None,
        "true": True,
        "int": -(1 << 63),
        "uint": (1 << 64) - 1,
        "float": 1.5,
        "str": "héllo ✓",
        "bytes": b"\x00\xff",
        "list": [1, "two", [3.0]],
        "dict": {"name": "Alice", "tags": ["x"], "raw": b"\x01"},
    }
    for key, value in values.items():
        r.set(key, encode_value(key, value), now)
    r.set("ttl", encode_value("ttl", "soon"), now, expires=now + 30)
    r.set("expired", encode_value("expired", "old"), now - 10, expires=now - 5)
    r.delete("deleted", now)
    r.set("evicted", encode_value("evicted", {"big": "x" * 100}), now)
    r.evict("evicted")
    r.merge_entry("remote", Entry(encode_value("remote", [7]), ts(now - 1), "b"), now)
    r.merge_entry("stub", Entry(NOT_HELD, ts(now - 2), "b", now + 100), now)
    r.invalidate_pattern("session:*", now)
    r.advance_marks({"b": ts(now - 1)})
    return r


def state_of(r: Replica) -> tuple[Any, ...]:
    """Everything a replica holds, as plain data (to assert "nothing changed")."""
    entries = {k: (e.value, e.ts, e.origin, e.expires) for k, e in r.entries.items()}
    return (
        entries,
        dict(r.patterns),
        dict(r.marks),
        dict(r.collected),
        r.clock.last_ts,
    )


def forge(
    body: object, *, version: object = SNAPSHOT_VERSION, magic: object = SNAPSHOT_MAGIC
) -> bytes:
    """A snapshot of ``body`` with a correct checksum: checks past the checksum are hit.

    ``body`` may be raw msgpack bytes already (to spell out what msgpack will not make).
    """
    raw = body if isinstance(body, bytes) else msgpack.packb(body, use_bin_type=True)
    digest = hashlib.blake2b(raw, digest_size=32).digest()
    data: bytes = msgpack.packb([magic, version, digest, raw], use_bin_type=True)
    return data


def body_of(data: bytes) -> dict[str, Any]:
    """The body of a (valid) snapshot, as plain msgpack data, for mutating."""
    outer = msgpack.unpackb(data, raw=False)
    body: dict[str, Any] = msgpack.unpackb(outer[3], raw=False)
    return body


# ------------------------------------------------------------------ strategies
keys = st.text(min_size=0, max_size=12)
nodes = st.sampled_from(["a", "b", "c", "node-with-a-long-id"])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
containers = st.recursive(
    st.lists(scalars, max_size=4) | st.dictionaries(st.text(max_size=5), scalars, max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@st.composite
def entries(draw: st.DrawFn, now: float = T0) -> tuple[str, Entry]:
    """A random entry of any kind, stamped within the last minute."""
    key = draw(keys)
    kind = draw(st.sampled_from(["plain", "packed", "tomb", "stub"]))
    if kind == "plain":
        value: object = encode_value(key, draw(scalars))
    elif kind == "packed":
        value = encode_value(key, draw(containers))
    else:
        value = TOMBSTONE if kind == "tomb" else NOT_HELD
    stamp = ts(now - draw(st.integers(0, 60_000)) / 1000, draw(st.integers(0, 3)))
    expires = draw(st.none() | st.floats(now - 100, now + 100))
    return key, Entry(value, stamp, draw(nodes), expires)


patterns = st.builds(
    PatternTombstone,
    st.sampled_from(["*", "a*", "[ab]?", "user:*", "x"]),
    st.integers(0, 60_000).map(lambda ms: ts(T0 - ms / 1000)),
    nodes,
)


def replica_from(
    items: list[tuple[str, Entry]], tombs: list[PatternTombstone], node: str = "r", salt: int = 0
) -> Replica:
    """A replica built by merging ``tombs`` and ``items`` (as a peer's deltas would be).

    Each write gets its own logical counter (odd or even by ``salt``): one stamp is one
    write, so two generated writes must never share a stamp, within a list or across
    the lists of two replicas built with different salts.
    """
    r = make_replica(node)
    for i, tomb in enumerate(tombs):
        r.merge_pattern(
            PatternTombstone(tomb.pattern, _restamp(tomb.ts, 1000 + 2 * i + salt), tomb.origin), T0
        )
    for i, (key, e) in enumerate(items):
        r.merge_entry(
            key, Entry(e.value, _restamp(e.ts, 1 + 2 * i + salt), e.origin, e.expires), T0
        )
    return r


def _restamp(stamp: int, logical: int) -> int:
    return (stamp >> 16 << 16) | logical


# Opens the store (initializing a new one), says so, and holds it until stdin closes.
_HOLDER = """
import sys
from crdtcache.store._sqlite import ReplicaStore
store = ReplicaStore(sys.argv[1])
if store.open() is None:
    store.initialize("holder")
print("open", flush=True)
sys.stdin.read()
store.close()
"""


@contextmanager
def held_by_another_process(path: Path) -> Iterator[None]:
    """The store at ``path`` kept open by a child process for the ``with`` block."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "open"
        yield
    finally:
        child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
