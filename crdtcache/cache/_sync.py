"""A blocking cache for threaded code: the node runs in a background event-loop thread.

Theory of operation
-------------------
:class:`SyncCache` owns a :class:`Cache` whose loop runs in a daemon thread. Every
write, every miss and everything that iterates the replica (``keys``, statistics,
health) is a coroutine submitted with ``asyncio.run_coroutine_threadsafe`` and awaited
from the calling thread. A *local hit* is not: a round trip through the loop costs tens
of microseconds, so :meth:`SyncCache.get` calls :meth:`Cache._read` in the caller's
thread. That is safe under the GIL because:

1. the entry map is read with one ``dict.get``, a single C call (str keys compare in
   C, so it never runs Python code mid-lookup); the loop thread mutates the map only
   by single-item assignments and removals, each atomic;
2. entries are immutable -- the loop replaces an :class:`Entry`, never changes one --
   so the value and expiry read belong to one version, and stored values are
   immutable (scalars and packed bytes), decoded into a fresh object per call (a flat
   list or dict: copied from a decoded original that no caller ever holds, see
   ``core.FlatReads``, whose every step is one dict operation);
3. the caller thread's only writes are one byte of the reference-bit array (a lost
   bit costs an eviction second chance, nothing more) and hit counters (``+=`` on an
   attribute has no switch point on CPython with the GIL, so counts are exact in
   practice; by contract they are statistics);
4. a read that races with a write sees the old or the new entry, either of which
   was the cache's value at some instant during the call; one that misses falls back
   to the loop, which decides with the replica to itself.

Callbacks registered with :meth:`on` run in the loop thread; ``hit`` events of local
hits are handed to it with ``call_soon_threadsafe`` (only when someone listens).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, TypeVar

from crdtcache._errors import CacheError, ConfigError
from crdtcache.cache._cache import ABSENT, Cache, _key_list
from crdtcache.cache._events import CacheEvent
from crdtcache.cache._loop import new_event_loop
from crdtcache.cache._options import CacheOptions, check_ttl, takes_options
from crdtcache.cache._statistics import CacheStatistics, Health
from crdtcache.core import check_key

__all__ = ["SyncCache"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class SyncCache:
    """The :class:`Cache` API, blocking, for WSGI and threaded applications.

    Takes the same keyword options as :class:`Cache`. ``warm_up(sync_cache)`` runs in
    the thread that calls :meth:`start`; a sync ``refresh(key)`` and sync loaders run
    in worker or calling threads, never in the loop thread. Use as a context manager
    or call :meth:`start` and :meth:`close`.

    Examples:
        >>> import crdtcache
        >>> with crdtcache.SyncCache(backend="memory") as cache:
        ...     cache.set("greeting", "hello", ttl=60)
        ...     print(cache.get("greeting"))  # a local hit never leaves this thread
        ...     print(cache.get_or_set("answer", lambda: 42))
        hello
        42
    """

    @takes_options(CacheOptions)
    def __init__(self, **options: Any) -> None:
        warm_up = options.pop("warm_up", None)
        if warm_up is not None and not callable(warm_up):
            raise ConfigError("warm_up must be callable or None")
        refresh = options.get("refresh")
        if refresh is not None and callable(refresh) and not inspect.iscoroutinefunction(refresh):
            options["refresh"] = _in_worker_thread(refresh)
        self._cache = Cache(**options)
        self._warm_up: Callable[[SyncCache], Any] | None = warm_up
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._flights: dict[str, concurrent.futures.Future[object]] = {}
        self._lock = threading.Lock()
        self._closed = False  # close() is final, as for Cache

    # ------------------------------------------------------------ lifecycle
    @property
    def node_id(self) -> str:
        """This node's id."""
        return self._cache.node_id

    @property
    def address(self) -> str | None:
        """``host:port`` bound for peer traffic once started (None for ``"memory"``)."""
        return self._cache.address

    @property
    def dashboard_url(self) -> str | None:
        """``http://host:port/`` of the running dashboard (None without ``dashboard=``)."""
        return self._cache.dashboard_url

    def start(self) -> None:
        """Start the loop thread and the node, then run ``warm_up``; idempotent.

        Raises :class:`CacheError` if the cache was closed (create a new one), and
        :class:`PeerError` if the network runtime cannot start.
        """
        if self._thread is not None:
            return
        if self._closed:
            raise CacheError("a closed cache cannot be restarted; create a new one")
        loop = new_event_loop()
        thread = threading.Thread(
            target=_run_loop, args=(loop,), name=f"crdtcache-{self.node_id}", daemon=True
        )
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self._call(self._cache.start())
        except BaseException:
            self._stop_thread()
            raise
        if self._warm_up is not None:
            try:
                self._warm_up(self)
            except Exception:
                log.exception("warm_up failed; the cache starts without it")

    def close(self) -> None:
        """Close the node and stop its thread; idempotent and final."""
        self._closed = True
        if self._thread is None:
            return
        try:
            self._call(self._cache.close())
        finally:
            self._stop_thread()

    def _stop_thread(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
        self._thread = None

    def __enter__(self) -> SyncCache:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` in the loop thread and wait for its result."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            coro.close()
            if self._closed:
                raise CacheError("the cache is closed")
            raise CacheError("the cache is not started: use `with cache:` or `cache.start()`")
        if threading.get_ident() == thread.ident:
            coro.close()
            raise CacheError(
                "SyncCache called from its own event-loop thread (an event callback?); "
                "use the async Cache API there"
            )
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    # ----------------------------------------------------------------- API
    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` or ``default`` (see :meth:`Cache.get`).

        A local hit is answered in the calling thread (see the module doc).
        """
        cache = self._cache
        value = cache._read(key)
        if value is ABSENT:
            return self._call(cache.get(key, default))
        if cache._hit_cbs and self._loop is not None:
            self._loop.call_soon_threadsafe(
                cache._reporter.emit, CacheEvent("hit", key, source="local")
            )
        return value

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` (see :meth:`Cache.set`).

        The value is checked and serialized in the calling thread, as every write's.
        """
        cache = self._cache
        check_key(key, cache._codec.max_key_chars)
        self._call(cache._set_stored(key, cache._codec.dump(key, value), ttl))

    def delete(self, key: str) -> bool:
        """Delete ``key`` on every node (see :meth:`Cache.delete`)."""
        return self._call(self._cache.delete(key))

    def invalidate(self, key: str) -> bool:
        """Invalidate ``key`` on every node (see :meth:`Cache.invalidate`)."""
        return self._call(self._cache.invalidate(key))

    def invalidate_pattern(self, pattern: str) -> int:
        """Invalidate a glob on every node (see :meth:`Cache.invalidate_pattern`)."""
        return self._call(self._cache.invalidate_pattern(pattern))

    def clear(self) -> int:
        """Remove every key on every node (see :meth:`Cache.clear`)."""
        return self._call(self._cache.clear())

    def keys(self, pattern: str = "*") -> list[str]:
        """Live keys matching a glob (see :meth:`Cache.keys`)."""
        return self._call(self._cache.keys(pattern))

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The live values of ``keys`` by key (see :meth:`Cache.get_many`).

        Local hits are answered in the calling thread; the rest in one loop call.
        """
        cache = self._cache

        def emit_hit(event: CacheEvent) -> None:
            if self._loop is not None:  # the reporter runs in the cache's loop
                self._loop.call_soon_threadsafe(cache._reporter.emit, event)

        found, slow = cache._get_many_local(keys, emit_hit)
        if slow:
            found.update(self._call(cache._get_many_slow(slow)))
        return found

    def set_many(self, mapping: Mapping[str, Any], ttl: float | None = None) -> None:
        """Store every value of ``mapping`` as one batch (see :meth:`Cache.set_many`)."""
        self._call(self._cache._set_many_stored(self._cache._dump_many(mapping), ttl))

    def delete_many(self, keys: Iterable[str]) -> int:
        """Delete ``keys``; how many were live (see :meth:`Cache.delete_many`)."""
        return self._call(self._cache.delete_many(list(_key_list(keys, "delete_many"))))

    def exists(self, key: str) -> bool:
        """Whether ``key`` has a live value (see :meth:`Cache.exists`)."""
        return self._call(self._cache.exists(key))

    def ttl(self, key: str) -> float | None:
        """Seconds left, None for no expiry, -1.0 for no live value (see :meth:`Cache.ttl`)."""
        return self._call(self._cache.ttl(key))

    def touch(self, key: str, ttl: float | None) -> bool:
        """A new expiry for ``key``'s value, not rewriting it (see :meth:`Cache.touch`)."""
        return self._call(self._cache.touch(key, ttl))

    def expire(self, key: str, ttl: float | None) -> bool:
        """The same as :meth:`touch`."""
        return self._call(self._cache.touch(key, ttl))

    def add(self, key: str, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` has no live value (see :meth:`Cache.add`).

        Atomic among every thread using this cache; in p2p mode not across nodes.
        """
        cache = self._cache
        check_key(key, cache._codec.max_key_chars)
        return self._call(cache._add_stored(key, cache._codec.dump(key, value), ttl))

    def incr(self, key: str, delta: int = 1, ttl: float | None = None) -> int:
        """Add ``delta`` to the integer at ``key``; the new value (see :meth:`Cache.incr`)."""
        return self._call(self._cache.incr(key, delta, ttl))

    def decr(self, key: str, delta: int = 1, ttl: float | None = None) -> int:
        """Subtract ``delta`` from the integer at ``key`` (see :meth:`Cache.decr`)."""
        return self._call(self._cache.decr(key, delta, ttl))

    def get_or_set(self, key: str, loader: Callable[[], Any], ttl: float | None = None) -> Any:
        """The value of ``key``; on a miss ``loader()`` runs in this thread and fills it.

        Single flight across threads: concurrent callers for one key wait for the one
        loader call (each gets its own copy). A coroutine returned by the loader runs
        in the loop thread. The loader's exceptions reach every waiting caller.
        """
        value = self.get(key, ABSENT)
        if value is not ABSENT:
            return value
        check_ttl(ttl)
        codec = self._cache._codec
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = concurrent.futures.Future()
        if not leader:
            return codec.read(flight.result())
        try:
            result = loader()
            if inspect.iscoroutine(result):
                result = self._call(result)
            stored = codec.dump(key, result)
            self._call(self._cache._fill(key, stored, ttl))
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        else:
            flight.set_result(stored)
        finally:
            with self._lock:
                del self._flights[key]
        return codec.read(stored)

    def wait_for_peers(self, count: int = 1, timeout: float = 5.0) -> int:
        """Block until at least ``count`` peers are connected; return how many are.

        Raises :class:`PeerError` if ``timeout`` seconds pass first (see
        :meth:`Cache.wait_for_peers`).
        """
        return self._call(self._cache.wait_for_peers(count, timeout))

    def get_statistics(self) -> CacheStatistics:
        """Counters of this node (see :meth:`Cache.get_statistics`).

        Raises :class:`CacheError` unless the cache is running.
        """
        return self._call(self._cache.get_statistics())

    def health(self) -> Health:
        """A 0-100 score with reasons (see :meth:`Cache.health`).

        Like :meth:`Cache.health` it never raises: before :meth:`start` and after
        :meth:`close` the score is 0, "not running". While running it is computed in
        the loop thread, which owns the state it reads; it may also be called there
        (from an event callback).
        """
        thread = self._thread
        if thread is None or not thread.is_alive() or thread.ident == threading.get_ident():
            # Not running (it reads nothing then), or already in the loop thread.
            return self._cache.health()
        try:
            return self._call(_returning(self._cache.health))
        except CacheError:  # closed by another thread meanwhile
            return self._cache.health()

    def on(self, event: str, callback: Callable[[Any], Any]) -> Callable[[], None]:
        """Subscribe to cache events; callbacks run in the loop thread (see :meth:`Cache.on`)."""
        return self._cache.on(event, callback)

    def __repr__(self) -> str:
        return f"<SyncCache {self._cache!r}>"


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        try:
            _finish_tasks(loop)
        finally:
            loop.close()


def _finish_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is still pending and let it unwind, as ``asyncio.run`` does.

    A task left behind (one a failed start did not stop, say) would otherwise be
    destroyed with the loop, and asyncio logs "Task was destroyed but it is pending".
    """
    pending = list(asyncio.all_tasks(loop))
    for task in pending:
        task.cancel()
    if pending:
        results = loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        for task, result in zip(pending, results, strict=True):
            if isinstance(result, Exception) and not isinstance(result, asyncio.CancelledError):
                log.warning("task %s failed while the cache's loop stopped: %r", task, result)
    loop.run_until_complete(loop.shutdown_asyncgens())


async def _returning(fn: Callable[[], T]) -> T:
    """Call ``fn`` in the loop thread (it reads state only the loop may iterate)."""
    return fn()


def _in_worker_thread(fn: Callable[[str], Any]) -> Callable[[str], Coroutine[Any, Any, Any]]:
    async def run(key: str) -> Any:
        return await asyncio.to_thread(fn, key)

    return run
