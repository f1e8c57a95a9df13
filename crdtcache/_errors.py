"""The exception tree: every error crdtcache raises is a :class:`CacheError`."""

from __future__ import annotations

import pickle

__all__ = [
    "CacheError",
    "ClockDriftError",
    "ConfigError",
    "CorruptStateError",
    "PeerError",
    "PersistenceError",
    "ProtocolError",
    "SerializationError",
    "ValidationError",
]


class CacheError(Exception):
    """Root of every exception raised by crdtcache.

    Examples:
        ```python
        import crdtcache

        async with crdtcache.Cache(backend="memory") as cache:
            try:
                await cache.set("k" * 5000, "v")  # a key too long
            except crdtcache.CacheError as exc:  # every crdtcache error
                print(type(exc).__name__)
                # SerializationError
        ```
    """


class ConfigError(CacheError, ValueError):
    """An option passed to crdtcache is invalid or needs a missing extra.

    Raised when the cache is built, before anything starts.

    Examples:
        >>> import crdtcache
        >>> try:
        ...     crdtcache.Cache(backend="nope")
        ... except crdtcache.ConfigError as exc:
        ...     print(exc)
        backend must be one of memory, p2p, redis; got 'nope'
    """


class ValidationError(CacheError, ValueError):
    """A value failed the cache's schema; raised before anything is written.

    Examples:
        ```python
        import crdtcache

        def positive(value: object) -> bool:
            return isinstance(value, int) and value > 0

        async with crdtcache.Cache(backend="memory", schema=positive) as cache:
            try:
                await cache.set("stock", -1)
            except crdtcache.ValidationError:
                assert await cache.get("stock") is None  # nothing was written
        ```
    """


class SerializationError(CacheError, TypeError, pickle.PicklingError):
    """A key or value cannot be carried (wrong type, too large, not serializable).

    Also a ``pickle.PicklingError``: code written for pickle-based caches (Django's
    cache framework expects ``pickle.PickleError`` for a value it cannot store)
    handles it unchanged, while ``except CacheError`` still catches it.

    Examples:
        ```python
        import crdtcache

        async with crdtcache.Cache(backend="memory") as cache:
            try:
                await cache.set("lock", object())
            except crdtcache.SerializationError as exc:
                assert "serializer=" in str(exc)  # it names the ways out
        ```
    """


class PeerError(CacheError):
    """A peer or the shared tier could not be reached or answered wrongly.

    Examples:
        ```python
        import crdtcache

        async with crdtcache.Cache(backend="p2p", discovery="none") as lonely:
            try:
                await lonely.wait_for_peers(1, timeout=0.1)
            except crdtcache.PeerError as exc:
                print(exc)
                # 0 of 1 peers connected after 0.1 s
        ```
    """


class ProtocolError(PeerError):
    """A remote party sent something that breaks the protocol (junk, bad shape, bad version).

    A node drops the link with one log line; the exception reaches callers only of
    lower-level APIs such as the wire codec.

    Examples:
        >>> import crdtcache
        >>> from crdtcache.transport import decode
        >>> try:
        ...     decode(b"junk")
        ... except crdtcache.ProtocolError as exc:
        ...     print(exc)
        undecodable frame: ExtraData: unpack(b) received extra data.
    """


class ClockDriftError(CacheError):
    """A remote stamp is further ahead of local physical time than ``max_drift`` allows.

    The stamp is refused and the local clock is left unchanged.

    Examples:
        >>> import crdtcache
        >>> from crdtcache.core import HybridClock, pack_ts
        >>> clock = HybridClock("a")
        >>> try:  # a stamp from a clock ~300 years ahead
        ...     clock.receive(pack_ts(10**13), now=1000.0)
        ... except crdtcache.ClockDriftError as exc:
        ...     print(exc)
        remote stamp is 9999999000000 ms ahead of local time (max_drift is 60000 ms); refused
    """


class PersistenceError(CacheError):
    """The durable copy of a replica (``persist_path`` or a snapshot file) could not be
    read or written: an I/O or SQLite failure, a full disk, or a file in use by another
    process. The message names the path.

    Examples:
        ```python
        import pathlib
        import tempfile
        import crdtcache

        with tempfile.TemporaryDirectory() as directory:
            blocker = pathlib.Path(directory, "a-file")
            blocker.write_text("not a directory")
            try:
                async with crdtcache.Cache(backend="memory", persist_path=blocker / "c.db"):
                    pass
            except crdtcache.PersistenceError as exc:
                assert str(blocker) in str(exc)
        ```
    """


class CorruptStateError(PersistenceError, ValueError):
    """Persisted bytes (a snapshot, a ``persist_path`` file) are damaged, foreign or of an
    unknown format version.

    Raised before anything is applied: the replica is unchanged and the file is left
    exactly as it was, so it can be inspected or repaired.

    Examples:
        ```python
        import crdtcache

        async with crdtcache.Cache(backend="memory") as cache:
            await cache.set("k", "v")
            backup = await cache.snapshot()
            try:
                await cache.restore(backup[:-1])  # one byte short
            except crdtcache.CorruptStateError:
                assert await cache.get("k") == "v"  # nothing changed
        ```
    """
