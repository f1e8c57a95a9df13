"""A Django cache backend on a crdtcache node (``SyncCache`` underneath).

Settings::

    CACHES = {
        "default": {
            "BACKEND": "crdtcache.contrib.django.CrdtCache",
            "LOCATION": "p2p",  # "memory", "p2p", or a redis:// URL (redis mode)
            "TIMEOUT": 300,
            "OPTIONS": {  # any crdtcache.Cache option, by its name
                "seeds": ["10.0.0.2:7946"],
                "secret": b"a cluster secret of 16 bytes or more",
                "serializer": "pickle",  # Django caches pickle; here only with a secret
            },
        }
    }

Every alias with the same ``LOCATION`` and ``OPTIONS`` uses one node, which starts on
first use and stops when the process exits (``close()``, which Django calls after each
request, keeps it: it is the node's link to its peers). ``KEY_PREFIX``, ``VERSION``
and ``KEY_FUNCTION`` work as for any backend (``make_and_validate_key``); ``clear()``
empties the whole cluster, like Redis's ``FLUSHDB``.

Timeouts are Django's: ``None`` never expires, ``0`` or less expires at once (``set``
deletes, ``add`` stores nothing, ``touch`` deletes), the default is ``TIMEOUT``.
Values go through crdtcache's value types unless ``OPTIONS["serializer"]`` says
``"pickle"``, which the node refuses without a ``secret`` or ``ssl`` (p2p), or a
password or TLS (redis): pickled values from any peer that can write run code here.

Atomicity: ``add`` is atomic among every thread and process using the same node, and
in redis mode across every instance; **in p2p mode not across nodes**: two nodes
adding the same key at once are both told True, and last-writer-wins keeps one value
everywhere (use a lock service if you need mutual exclusion across nodes). ``incr``
and ``decr`` are convergent counters in p2p mode (no increment is lost) and keep the
key's expiry; a missing key raises ``ValueError``, as Django requires.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.exceptions import ImproperlyConfigured

from crdtcache._errors import ConfigError, ValidationError
from crdtcache.cache._sync import SyncCache
from crdtcache.contrib._options import cache_options

__all__ = ["CrdtCache", "node_for"]

# Options Django's settings say otherwise: culling (crdtcache evicts instead), and
# the default timeout (TIMEOUT).
_REFUSED = {
    "MAX_ENTRIES": "it bounds the values a node holds with OPTIONS max_size and max_memory "
    "(local eviction), and never culls",
    "CULL_FREQUENCY": "it never culls (see max_size)",
    "default_ttl": "Django's TIMEOUT setting says how long values live",
}

_NODES: dict[str, SyncCache] = {}
_NODES_LOCK = threading.Lock()


def node_for(location: str, options: Mapping[str, Any]) -> SyncCache:
    """The started node of ``location`` and ``options``: one per process and settings.

    Raises :class:`~django.core.exceptions.ImproperlyConfigured` for bad settings.
    """
    key = f"{location}|{sorted(options.items(), key=lambda item: item[0])!r}"
    with _NODES_LOCK:
        node = _NODES.get(key)
        if node is None:
            try:
                node = SyncCache(**cache_options(location, options))
                node.start()
            except ConfigError as exc:
                raise ImproperlyConfigured(f"crdtcache cache {location!r}: {exc}") from exc
            _NODES[key] = node
        return node


@atexit.register
def _close_nodes() -> None:
    with _NODES_LOCK:
        nodes = list(_NODES.values())
        _NODES.clear()
    for node in nodes:
        node.close()


class CrdtCache(BaseCache):  # type: ignore[misc]  # Django ships no type hints
    """Django's cache API on a crdtcache node (see the module doc for the settings)."""

    def __init__(self, location: str, params: dict[str, Any]) -> None:
        options = dict(params.get("OPTIONS") or {})
        for name, why in _REFUSED.items():
            if name in options:
                raise ImproperlyConfigured(f"OPTIONS {name} does not apply to crdtcache: {why}")
        super().__init__({**params, "OPTIONS": {}})
        self._location = location or "memory"
        self._options = options
        self._node: SyncCache | None = None

    @property
    def node(self) -> SyncCache:
        """The crdtcache node this backend uses (started on first use)."""
        if self._node is None:
            self._node = node_for(self._location, self._options)
        return self._node

    def reader(self) -> SyncCache:
        """The node reads go to (the same node; a test harness may read elsewhere)."""
        return self.node

    # ------------------------------------------------------------- timeouts
    def get_backend_timeout(self, timeout: Any = DEFAULT_TIMEOUT) -> float | None:
        """Seconds to live: None for never, 0 for "expire now" (Django's semantics)."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return None
        return max(0.0, float(timeout))

    # ---------------------------------------------------------------- reads
    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        """The value of ``key``, or ``default``."""
        return self.reader().get(self.make_and_validate_key(key, version=version), default)

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        """The live values of ``keys`` (missing ones left out), by the caller's keys."""
        made = {self.make_and_validate_key(k, version=version): k for k in keys}
        found = self.reader().get_many(list(made))
        return {made[k]: v for k, v in found.items()}

    def has_key(self, key: Any, version: int | None = None) -> bool:
        """Whether ``key`` has a live value."""
        return self.reader().exists(self.make_and_validate_key(key, version=version))

    # --------------------------------------------------------------- writes
    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        """Store ``value``; a timeout of 0 or less deletes the key."""
        made = self.make_and_validate_key(key, version=version)
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0:
            self.node.delete(made)
            return
        self.node.set(made, value, ttl=ttl)

    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        """Store ``value`` only if ``key`` has no live value; whether it did.

        Atomic on this node (in redis mode across instances, not across p2p nodes: see
        the module doc). With a timeout of 0 or less nothing is stored, and the answer
        says whether it would have been.
        """
        made = self.make_and_validate_key(key, version=version)
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0:
            return not self.node.exists(made)
        return self.node.add(made, value, ttl=ttl)

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        """A new timeout for ``key`` (0 or less deletes it); False if it has no live value."""
        made = self.make_and_validate_key(key, version=version)
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0:
            return self.node.delete(made)
        return self.node.touch(made, ttl)

    def delete(self, key: Any, version: int | None = None) -> bool:
        """Delete ``key`` everywhere; whether it had a live value."""
        return self.node.delete(self.make_and_validate_key(key, version=version))

    def set_many(
        self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        """Store every value as one batch; returns the keys that failed (none)."""
        made = {self.make_and_validate_key(k, version=version): v for k, v in data.items()}
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0:
            self.node.delete_many(list(made))
        else:
            self.node.set_many(made, ttl=ttl)
        return []

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        """Delete ``keys`` everywhere, as one batch."""
        self.node.delete_many([self.make_and_validate_key(k, version=version) for k in keys])

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        """Add ``delta`` to the int at ``key`` (its expiry kept); the new value.

        Raises ``ValueError`` for a missing key and ``TypeError`` for a value that is
        not an int, as Django requires.
        """
        made = self.make_and_validate_key(key, version=version)
        if not self.node.exists(made):
            raise ValueError(f"Key '{key}' not found.")
        try:
            return self.node.incr(made, delta)
        except ValidationError as exc:
            raise TypeError(str(exc)) from exc

    def clear(self) -> None:
        """Remove every key of the cluster (not only this alias's prefix)."""
        self.node.clear()

    def close(self, **kwargs: Any) -> None:
        """Nothing to release per request: the node stays up for the process."""
