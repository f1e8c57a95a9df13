"""Pluggable conflict resolution: the default, the law checker, and misbehaving resolvers."""

from __future__ import annotations

import pytest

from crdtcache.core import (
    TOMBSTONE,
    Replica,
    ResolverViolation,
    Stamp,
    Version,
    check_resolver,
    last_writer_wins,
)
from tests.core.helpers import T0, make_entry, make_replica, max_value_wins, ts


def version(value: object, wall_ms: int, node: str = "a", *, deleted: bool = False) -> Version:
    return Version("k", None if deleted else value, Stamp(wall_ms, node), deleted=deleted)


SAMPLES = [
    version(1, 10),
    version(5, 20),
    version(5, 20, "b"),
    version(3, 30),
    version(None, 40, deleted=True),
]


def test_last_writer_wins_picks_the_greater_stamp() -> None:
    old, new = version(1, 10), version(2, 20)
    assert last_writer_wins(old, new) is new
    assert last_writer_wins(new, old) is new
    tie_a, tie_b = version(1, 10, "a"), version(2, 10, "b")
    assert last_writer_wins(tie_a, tie_b) is tie_b
    assert last_writer_wins(tie_b, tie_a) is tie_b


def test_last_writer_wins_keeps_the_laws() -> None:
    assert check_resolver(last_writer_wins, SAMPLES) == []


def test_max_value_with_stamp_tie_break_keeps_the_laws() -> None:
    assert check_resolver(max_value_wins, SAMPLES) == []


def test_local_always_wins_breaks_commutativity() -> None:
    found = check_resolver(lambda local, remote: local, SAMPLES)
    # "Left wins" is associative, but the winner depends on which node merges.
    assert {v.law for v in found} == {"commutativity"}


def test_a_non_transitive_resolver_breaks_associativity() -> None:
    """Rock-paper-scissors: commutative and idempotent, but the winner of three depends on order."""
    beats = {("rock", "scissors"), ("scissors", "paper"), ("paper", "rock")}

    def rps(local: Version, remote: Version) -> Version:
        return remote if (remote.value, local.value) in beats else local

    hands = [version("rock", 1), version("paper", 2), version("scissors", 3)]
    found = check_resolver(rps, hands)
    assert found
    assert {v.law for v in found} == {"associativity"}


def test_a_resolver_that_raises_is_reported() -> None:
    def broken(local: Version, remote: Version) -> Version:
        raise RuntimeError("boom")

    found = check_resolver(broken, SAMPLES[:2])
    assert found
    assert all(v.law == "raises RuntimeError: boom" for v in found)


def test_a_resolver_returning_a_new_version_is_reported() -> None:
    def merger(local: Version, remote: Version) -> Version:
        return Version(
            "k", (local.value or 0) + (remote.value or 0), max(local.stamp, remote.stamp)
        )

    found = check_resolver(merger, SAMPLES[:2])
    assert any(v.law == "returns neither argument" for v in found)


def test_a_resolver_returning_an_equal_copy_is_accepted() -> None:
    def copying(local: Version, remote: Version) -> Version:
        w = last_writer_wins(local, remote)
        return Version(w.key, w.value, w.stamp, w.expires, w.deleted)

    assert check_resolver(copying, SAMPLES) == []


def test_violation_reads_as_the_law_and_the_versions() -> None:
    v = ResolverViolation("commutativity", (version(1, 10), version(2, 20, "b")))
    assert str(v) == "commutativity fails for 1@Stamp(0.10@a), 2@Stamp(0.20@b)"


# ---------------------------------------------------------- inside a replica
def _max_value_replica(node: str = "a") -> Replica:
    return make_replica(node, resolver=max_value_wins)


def test_replica_uses_the_resolver_on_merge() -> None:
    r = _max_value_replica()
    r.set("k", 9, T0)
    assert r.merge_entry("k", make_entry(1, T0 + 1, "b"), T0 + 1) is None
    assert r.visible(T0 + 1)["k"][0] == 9
    change = r.merge_entry("k", make_entry(10, T0 + 0.5, "b"), T0 + 1)
    assert change is not None and change.kind == "set"
    assert r.visible(T0 + 1)["k"][0] == 10


def test_replica_resolver_can_keep_the_older_value_on_a_local_write() -> None:
    r = _max_value_replica()
    r.merge_entry("k", make_entry(9, T0, "b"), T0)
    kept = r.set("k", 1, T0 + 1)
    assert (kept.value, kept.origin) == (9, "b")
    assert r.marks["a"] == r.clock.last_ts


def test_resolver_sees_deletes_as_versions() -> None:
    seen: list[tuple[Version, Version]] = []

    def spy(local: Version, remote: Version) -> Version:
        seen.append((local, remote))
        return last_writer_wins(local, remote)

    r = make_replica("a", resolver=spy)
    r.set("k", "v", T0)
    r.merge_entry("k", make_entry(TOMBSTONE, T0 + 1, "b"), T0)
    local, remote = seen[-1]
    assert (local.value, local.deleted) == ("v", False)
    assert (remote.value, remote.deleted) == (None, True)
    assert r.lookup("k", T0 + 1) is None


def test_resolver_returning_a_foreign_object_raises_type_error() -> None:
    def foreign(local: Version, remote: Version) -> Version:
        return Version(local.key, "other", local.stamp)

    r = make_replica("a", resolver=foreign)
    r.set("k", "v", T0)
    with pytest.raises(TypeError, match="one of its two arguments"):
        r.merge_entry("k", make_entry("w", T0 + 1, "b"), T0)
    with pytest.raises(TypeError, match="one of its two arguments"):
        r.set("k", "x", T0 + 2)
    assert r.visible(T0 + 2)["k"][0] == "v"


def test_stamps_in_versions_are_the_entries_stamps() -> None:
    seen: list[Version] = []

    def spy(local: Version, remote: Version) -> Version:
        seen.extend((local, remote))
        return remote

    r = make_replica("a", resolver=spy)
    r.set("k", "v", T0, expires=T0 + 5)
    r.merge_entry("k", make_entry("w", T0 + 1, "b"), T0)
    assert seen[0].stamp == Stamp(ts(T0), "a")
    assert seen[0].expires == T0 + 5
    assert seen[1].stamp == Stamp(ts(T0 + 1), "b")
