"""The pattern tombstones a replica holds, indexed so that checking a key is cheap.

Every merge asks "does a pattern tombstone cover this key?". Checking every glob would
make that cost grow with the number of tombstones, which any writer can raise. So each
glob is filed under its *literal prefix* (the text before its first ``*``, ``?`` or
``[``): a key can only match globs whose literal prefix starts it, and those are found
with one dict lookup per distinct prefix length, whatever the number of globs. Globs
with no literal prefix (``*x``) are filed under ``""`` and checked for every key; a cap
on the number of tombstones (:data:`MAX_PATTERN_TOMBSTONES`) bounds them too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

from crdtcache._errors import CacheError
from crdtcache.core._entry import PatternTombstone, compile_pattern

__all__ = ["MAX_PATTERN_TOMBSTONES", "PatternIndex", "PatternLimitError", "literal_prefix"]

#: Pattern tombstones a replica holds at most (until collection frees room).
MAX_PATTERN_TOMBSTONES: Final = 10_000


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
    """Pattern tombstones by glob (``by_glob``, the newest of each) and by literal prefix."""

    __slots__ = ("_buckets", "_lengths", "by_glob", "limit", "max_ts")

    def __init__(self, by_glob: dict[str, PatternTombstone], limit: int) -> None:
        if limit < 1:
            raise ValueError("the pattern tombstone limit must be at least 1")
        self.by_glob = by_glob
        self.limit = limit
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

    def put(self, tomb: PatternTombstone) -> re.Pattern[str]:
        """Hold ``tomb`` (replacing its glob's older one); returns the glob's matcher.

        Raises :class:`PatternLimitError` for a new glob when the limit is reached.
        """
        if tomb.pattern not in self.by_glob and len(self.by_glob) >= self.limit:
            raise PatternLimitError(
                f"{len(self.by_glob)} pattern tombstones held already (the limit): "
                f"{tomb.pattern!r} refused until collection frees room"
            )
        self.by_glob[tomb.pattern] = tomb
        self.max_ts = max(self.max_ts, tomb.ts)
        return self._file(tomb)

    def _file(self, tomb: PatternTombstone) -> re.Pattern[str]:
        prefix = literal_prefix(tomb.pattern)
        bucket = self._buckets.get(prefix)
        if bucket is None:
            bucket = self._buckets[prefix] = {}
            self._lengths[len(prefix)] = self._lengths.get(len(prefix), 0) + 1
        held = bucket.get(tomb.pattern)
        matcher = held[0] if held is not None else compile_pattern(tomb.pattern)
        bucket[tomb.pattern] = (matcher, tomb)
        return matcher

    def remove(self, pattern: str) -> None:
        """Stop holding the tombstone of ``pattern`` (collected)."""
        del self.by_glob[pattern]
        prefix = literal_prefix(pattern)
        bucket = self._buckets[prefix]
        del bucket[pattern]
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
                if bucket:
                    yield from bucket.values()
