"""The pattern tombstones a replica holds, indexed so that checking a key is cheap.

Every merge asks "does a pattern tombstone cover this key?". Checking every glob would
make that cost grow with the number of tombstones, which any writer can raise. So each
glob is filed under its *literal prefix* (the text before its first ``*``, ``?`` or
``[``): a key can only match globs whose literal prefix starts it, and those are found
with one dict lookup per distinct prefix length, whatever the number of globs. Globs
with no literal prefix (``*x``) are filed under ``""``: they are looked at only when
one regex, the union of them all, matches the key (one call into the regex engine
instead of one per glob), and their number has a cap of its own
(:data:`MAX_UNANCHORED_PATTERNS`) under the cap on all tombstones
(:data:`MAX_PATTERN_TOMBSTONES`).

*Room before work.* :meth:`PatternIndex.admits` answers whether a tombstone could be
held, without changing anything, so that a replica refuses one (raising
:class:`PatternLimitError`) before it scans or removes a single key.

One message carries at most :data:`MAX_MESSAGE_PATTERNS` tombstones (the wire codec
refuses more, the engine cuts its messages to fit): each new one costs a scan of the
map when it arrives.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Final

from crdtcache._errors import CacheError
from crdtcache.core._entry import PatternTombstone, compile_pattern

__all__ = [
    "MAX_MESSAGE_PATTERNS",
    "MAX_PATTERN_TOMBSTONES",
    "MAX_UNANCHORED_PATTERNS",
    "PatternIndex",
    "PatternLimitError",
    "literal_prefix",
    "union_of",
]

#: Pattern tombstones a replica holds at most (until collection frees room).
MAX_PATTERN_TOMBSTONES: Final = 10_000
#: Of those, globs with no literal prefix (``*:session``), which any key may match.
MAX_UNANCHORED_PATTERNS: Final = 256
#: Pattern tombstones one message may carry (the wire codec refuses more).
MAX_MESSAGE_PATTERNS: Final = 64


class PatternLimitError(CacheError):
    """A replica already holds as many pattern tombstones as it may.

    A new one is refused (nothing changes); collection frees room after
    ``tombstone_grace``. A peer's is refused like a stamp beyond ``max_drift``: the
    receiver's marks do not advance, so it is asked for again later.
    """


def literal_prefix(pattern: str) -> str:
    """The part of an fnmatch glob before its first wildcard."""
    for i, c in enumerate(pattern):
        if c in "*?[":
            return pattern[:i]
    return pattern


class PatternIndex:
    """Pattern tombstones by glob (``by_glob``, the newest of each) and by literal prefix.

    ``limit`` caps how many are held, ``unanchored_limit`` how many of those have no
    literal prefix.
    """

    __slots__ = (
        "_buckets",
        "_lengths",
        "_union",
        "by_glob",
        "limit",
        "max_ts",
        "unanchored_limit",
    )

    def __init__(
        self,
        by_glob: dict[str, PatternTombstone],
        limit: int,
        unanchored_limit: int = MAX_UNANCHORED_PATTERNS,
    ) -> None:
        if limit < 1 or unanchored_limit < 1:
            raise ValueError("the pattern tombstone limits must be at least 1")
        self.by_glob = by_glob
        self.limit = limit
        self.unanchored_limit = unanchored_limit
        # The union of the unanchored globs, compiled when first needed after a change.
        self._union: re.Pattern[str] | None = None
        #: The greatest stamp of any tombstone held (-1: none): a stamp above it is
        #: covered by none, which spares most merges the lookup.
        self.max_ts = -1
        self._buckets: dict[str, dict[str, tuple[re.Pattern[str], PatternTombstone]]] = {}
        # Distinct literal-prefix lengths, with how many globs have each.
        self._lengths: dict[int, int] = {}
        for tomb in by_glob.values():
            self._file(tomb)

    def __len__(self) -> int:
        return len(self.by_glob)

    def admits(self, pattern: str, extra: int = 0, extra_unanchored: int = 0) -> bool:
        """Whether a tombstone of ``pattern`` may be held (changes nothing).

        A glob held already always may (its newer tombstone replaces the older); a new
        one needs room under both limits, after ``extra`` (of them ``extra_unanchored``
        unanchored) new globs about to be held as well.
        """
        if pattern in self.by_glob:
            return True
        if len(self.by_glob) + extra >= self.limit:
            return False
        if literal_prefix(pattern):
            return True
        return self._unanchored() + extra_unanchored < self.unanchored_limit

    def refusal(self, pattern: str, extra: int = 0, extra_unanchored: int = 0) -> PatternLimitError:
        """The error for a tombstone of ``pattern`` that :meth:`admits` refused."""
        held = len(self.by_glob) + extra
        if held < self.limit and not literal_prefix(pattern):
            return PatternLimitError(
                f"{self._unanchored() + extra_unanchored} pattern tombstones without a "
                f"literal prefix held already (the limit): {pattern[:80]!r} refused until "
                "collection frees room"
            )
        return PatternLimitError(
            f"{held} pattern tombstones held already (the limit): "
            f"{pattern[:80]!r} refused until collection frees room"
        )

    def _unanchored(self) -> int:
        return len(self._buckets.get("", ()))

    def put(
        self, tomb: PatternTombstone, matcher: re.Pattern[str] | None = None
    ) -> re.Pattern[str]:
        """Hold ``tomb`` (replacing its glob's older one); returns the glob's matcher
        (``matcher``, if the caller compiled it already).

        Raises :class:`PatternLimitError` for a new glob when a limit is reached.
        """
        if not self.admits(tomb.pattern):
            raise self.refusal(tomb.pattern)
        self.by_glob[tomb.pattern] = tomb
        self.max_ts = max(self.max_ts, tomb.ts)
        return self._file(tomb, matcher)

    def _file(
        self, tomb: PatternTombstone, compiled: re.Pattern[str] | None = None
    ) -> re.Pattern[str]:
        prefix = literal_prefix(tomb.pattern)
        bucket = self._buckets.get(prefix)
        if bucket is None:
            bucket = self._buckets[prefix] = {}
            self._lengths[len(prefix)] = self._lengths.get(len(prefix), 0) + 1
        held = bucket.get(tomb.pattern)
        if held is not None:
            matcher = held[0]
        else:
            matcher = compiled if compiled is not None else compile_pattern(tomb.pattern)
        bucket[tomb.pattern] = (matcher, tomb)
        if not prefix and held is None:
            self._union = None
        return matcher

    def remove(self, pattern: str) -> None:
        """Stop holding the tombstone of ``pattern`` (collected)."""
        del self.by_glob[pattern]
        prefix = literal_prefix(pattern)
        bucket = self._buckets[prefix]
        del bucket[pattern]
        if not prefix:
            self._union = None
        if not bucket:
            del self._buckets[prefix]
            count = self._lengths[len(prefix)] - 1
            if count:
                self._lengths[len(prefix)] = count
            else:
                del self._lengths[len(prefix)]
        self.max_ts = max((t.ts for t in self.by_glob.values()), default=-1)

    def candidates(self, key: str) -> Iterator[tuple[re.Pattern[str], PatternTombstone]]:
        """The tombstones whose glob may match ``key`` (each still to be matched)."""
        buckets = self._buckets
        for length in self._lengths:
            if length <= len(key):
                bucket = buckets.get(key[:length])
                if not bucket:
                    continue
                if not length and not self._unanchored_match(key):
                    continue  # no unanchored glob matches: skip them all at once
                yield from bucket.values()

    def _unanchored_match(self, key: str) -> bool:
        union = self._union
        if union is None:
            union = self._union = union_of(m for m, _ in self._buckets.get("", {}).values())
        return union.match(key) is not None


def union_of(matchers: Iterable[re.Pattern[str]]) -> re.Pattern[str]:
    """One regex matching what any of ``matchers`` (compiled globs) matches."""
    return re.compile("|".join(f"(?:{m.pattern})" for m in matchers) or "(?!)")
