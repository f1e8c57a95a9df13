"""The cache: options, the public ``Cache`` / ``SyncCache`` API, tier, events, statistics.

:class:`CacheOptions` is public here: every option of ``Cache(...)`` with its type,
default and check, in one place.
"""

from crdtcache.cache._options import CacheOptions

__all__ = ["CacheOptions"]
