"""Conflict resolution: last-writer-wins by default, or a user-supplied resolver.

A resolver is called as ``resolver(local, remote)`` with two :class:`Version` views
of the same key and must return one of them. Replicas converge only if the choice
is *deterministic* (depends on nothing but the two versions), *commutative* (the
same winner whichever is local), *associative* (the winner of three does not depend
on the order of merging) and *idempotent* (``resolver(a, a)`` is ``a``).
:func:`check_resolver` tests a resolver for those laws on sample versions.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from crdtcache.core._hlc import Stamp

__all__ = ["Resolver", "ResolverViolation", "Version", "check_resolver", "last_writer_wins"]


@dataclass(frozen=True, slots=True)
class Version:
    """One version of a key as a resolver sees it (``value`` is None for a delete).

    Examples:
        >>> from crdtcache.core import Stamp, Version, last_writer_wins
        >>> old = Version("k", "first", Stamp(1, "a"))
        >>> new = Version("k", None, Stamp(2, "b"), deleted=True)
        >>> last_writer_wins(old, new).deleted
        True
    """

    key: str
    value: Any
    stamp: Stamp
    expires: float | None = None
    deleted: bool = False


Resolver = Callable[[Version, Version], Version]


def last_writer_wins(local: Version, remote: Version) -> Version:
    """The default: the version with the greater HLC stamp wins.

    Stamps compare by time, then counter, then node id, so there is always one winner.

    Examples:
        >>> from crdtcache.core import Stamp, Version, last_writer_wins
        >>> a = Version("k", "from a", Stamp(5, "a"))
        >>> b = Version("k", "from b", Stamp(5, "b"))  # same time: the node id decides
        >>> last_writer_wins(a, b).value, last_writer_wins(b, a).value
        ('from b', 'from b')
    """
    return remote if remote.stamp > local.stamp else local


@dataclass(frozen=True, slots=True)
class ResolverViolation:
    """A law a resolver broke, with the versions that show it."""

    law: str
    versions: tuple[Version, ...]

    def __str__(self) -> str:
        shown = ", ".join(f"{v.value!r}@{v.stamp!r}" for v in self.versions)
        return f"{self.law} fails for {shown}"


def _same(a: Version, b: Version) -> bool:
    return a.stamp == b.stamp and a.value == b.value and a.deleted == b.deleted


def check_resolver(resolver: Resolver, samples: Iterable[Version]) -> list[ResolverViolation]:
    """Check ``resolver`` for the laws convergence needs, on every pair and triple of samples.

    Returns the violations found (an empty list means none on these samples). A
    resolver that raises, or returns something that is neither argument, is reported too.

    Examples:
        >>> from crdtcache.core import Stamp, Version, check_resolver
        >>> samples = [Version("k", v, Stamp(i, "n")) for i, v in enumerate([3, 1, 2])]
        >>> check_resolver(lambda a, b: a if a.value >= b.value else b, samples)
        []
        >>> broken = check_resolver(lambda local, remote: local, samples)  # not commutative
        >>> broken[0].law
        'commutativity'
    """
    versions = list(samples)
    found: list[ResolverViolation] = []

    def call(a: Version, b: Version) -> Version | None:
        try:
            winner = resolver(a, b)
        except Exception as exc:  # a resolver's own bug is a finding, not a crash
            found.append(ResolverViolation(f"raises {type(exc).__name__}: {exc}", (a, b)))
            return None
        if winner is not a and winner is not b and not (_same(winner, a) or _same(winner, b)):
            found.append(ResolverViolation("returns neither argument", (a, b)))
            return None
        return winner

    for a in versions:
        w = call(a, a)
        if w is not None and not _same(w, a):
            found.append(ResolverViolation("idempotence", (a,)))
    for a, b in itertools.combinations(versions, 2):
        ab, ba = call(a, b), call(b, a)
        if ab is not None and ba is not None and not _same(ab, ba):
            found.append(ResolverViolation("commutativity", (a, b)))
    for a, b, c in itertools.permutations(versions, 3):
        ab = call(a, b)
        bc = call(b, c)
        left = call(ab, c) if ab is not None else None
        right = call(a, bc) if bc is not None else None
        if left is not None and right is not None and not _same(left, right):
            found.append(ResolverViolation("associativity", (a, b, c)))
    return found
