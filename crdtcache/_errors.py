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
    """Root of every exception raised by crdtcache."""


class ConfigError(CacheError, ValueError):
    """An option passed to crdtcache is invalid or needs a missing extra."""


class ValidationError(CacheError, ValueError):
    """A value failed the cache's schema; raised before anything is written."""


class SerializationError(CacheError, TypeError, pickle.PicklingError):
    """A key or value cannot be carried (wrong type, too large, not serializable).

    Also a ``pickle.PicklingError``: code written for pickle-based caches (Django's
    cache framework expects ``pickle.PickleError`` for a value it cannot store)
    handles it unchanged, while ``except CacheError`` still catches it.
    """


class PeerError(CacheError):
    """A peer or the shared tier could not be reached or answered wrongly."""


class ProtocolError(PeerError):
    """A remote party sent something that breaks the protocol (junk, bad shape, bad version)."""


class ClockDriftError(CacheError):
    """A remote stamp is further ahead of local physical time than ``max_drift`` allows.

    The stamp is refused and the local clock is left unchanged.
    """


class PersistenceError(CacheError):
    """The durable copy of a replica (``persist_path`` or a snapshot file) could not be
    read or written: an I/O or SQLite failure, a full disk, or a file in use by another
    process. The message names the path.
    """


class CorruptStateError(PersistenceError, ValueError):
    """Persisted bytes (a snapshot, a ``persist_path`` file) are damaged, foreign or of an
    unknown format version.

    Raised before anything is applied: the replica is unchanged and the file is left
    exactly as it was, so it can be inspected or repaired.
    """
