"""``persist_path=`` for the cache: open the SQLite store at start, write changes in batches.

Theory of operation
-------------------
The store (:mod:`crdtcache.store._sqlite`) is the durable copy of the replica. At start it
gives back the node id and the replica as it was (so a restarted node serves its data
at once, then catches up by anti-entropy); a new file is given this node's id.

Which keys changed is known exactly: :class:`Persistence` observes the replica
(:class:`~crdtcache.core.ReplicaObserver`) and records every key replaced in
``dirty``, whatever replaced it (local write, merge, eviction to a stub, pattern
tombstone, collection). Every ``PERSIST_INTERVAL`` seconds, and at close, those keys
are captured on the event loop and written in one transaction; batches are
serialized, so an older capture never commits after a newer one. A large batch
(after a resync) is written in a worker thread. A failed write is logged and its keys
kept for the next batch. Evicted values stay in the file, so a read of a stub is
served from disk before any peer is asked (:meth:`Persistence.read`); a value evicted
before its first batch was written is kept aside (``evicted``) and written in place
of its stub.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Final

from crdtcache._errors import ConfigError, PersistenceError
from crdtcache.core import (
    DEFAULT_MAX_VALUE_BYTES,
    NOT_HELD,
    Entry,
    HybridClock,
    Replica,
    Resolver,
)
from crdtcache.store._loading import START_ROWS, StoreLoad
from crdtcache.store._sqlite import ReplicaStore, StoreBatch, hold_newest

__all__ = ["PERSIST_INTERVAL", "THREAD_BATCH", "Persistence"]

log = logging.getLogger(__name__)

#: Seconds between two batches written to the store.
PERSIST_INTERVAL: Final = 0.1
#: Keys in one batch above which it is written off the event loop.
THREAD_BATCH: Final = 2000


class Persistence:
    """One cache's store: opened at start, fed batches, closed at close.

    It observes the replica it opened (:meth:`open`) to learn which keys to write.
    """

    def __init__(self, path: str, *, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> None:
        self.store = ReplicaStore(path, max_value_bytes=max_value_bytes)
        self.path = path
        #: Batches that failed (their keys were kept for the next one).
        self.errors = 0
        self._lock = asyncio.Lock()
        self._clock_ts = -1
        self._marks: dict[str, int] = {}
        #: Keys replaced in any way since the last batch: what the next one writes.
        self.dirty: set[str] = set()
        #: Held entries evicted before a batch wrote them, so that the batch writes
        #: the value and not the stub.
        self.evicted: dict[str, Entry] = {}
        #: This node's own writes are in the file up to this stamp (its own mark there).
        self.durable_own = -1
        #: Called with ``durable_own`` whenever a batch raised it.
        self.on_durable: Callable[[int], None] | None = None
        self._wanted: asyncio.Event | None = None
        #: The rows still being loaded after start (None: none; see ``_loading``).
        self.load: StoreLoad | None = None

    # ----------------------------------------------------- replica observer
    def replacing(self, key: str, old: Entry | None, new: Entry) -> Entry:
        """Note ``key`` for the next batch (keeping a value evicted before it)."""
        load = self.load
        if load is not None and new is load.merging:
            return new  # read from the file: nothing to write back
        if (
            new.value is NOT_HELD
            and old is not None
            and old.held
            and key in self.dirty
            and (old.ts, old.origin) == (new.ts, new.origin)
        ):
            self.evicted[key] = old
        self.dirty.add(key)
        return new

    def removed(self, key: str, old: Entry) -> None:
        """Note ``key`` for the next batch (its row goes)."""
        self.dirty.add(key)
        if self.load is not None:
            self.load.removed(key)

    def open(
        self,
        *,
        node_id: str | None,
        new_id: str,
        now: float,
        resolver: Resolver | None,
        max_held: int | None,
        clock: Callable[[], float] | None = None,
        change_log: bool = True,
    ) -> Replica:
        """The replica the file holds (or a new one named ``node_id`` or ``new_id``).

        ``change_log``: see :class:`~crdtcache.core.Replica`.

        With ``clock``, the replica comes back with the file's patterns, marks and
        clock, and its first ``START_ROWS`` entries; :attr:`load` merges the rest
        (call :meth:`StoreLoad.run`; see :mod:`crdtcache.store._loading`), at ``now``
        from ``clock``. Without it, every entry is loaded first (and with
        ``max_held``, only the newest that many hold their values).
        Raises :class:`ConfigError` if the file belongs to another ``node_id``, and
        :class:`PersistenceError` if it cannot be opened or is not a crdtcache store.
        """
        state = self.store.open(entries=clock is None)
        if state is None:
            node = node_id or new_id
            self.store.initialize(node)
            replica = Replica(HybridClock(node), resolver=resolver, change_log=change_log)
            replica.observe(self)
            return replica
        if node_id is not None and node_id != state.node_id:
            self.store.close()
            raise ConfigError(
                f"persist_path {self.path!r} belongs to node {state.node_id!r}, "
                f"not node_id={node_id!r}"
            )
        replica = state.build_replica(
            now, resolver=resolver, max_held=max_held, change_log=change_log
        )
        replica.observe(self)
        self.durable_own = state.marks.get(state.node_id, -1)
        if clock is not None:
            load = self.load = StoreLoad(self.store, replica, clock)
            try:
                load.step(START_ROWS)
            except BaseException:
                self.store.close()
                raise
            if max_held is not None:
                # Past this, the tier's own bound evicts as rows arrive.
                hold_newest(replica, max_held)
            if load.done:
                self.load = None
        return replica

    def settle(self, key: str) -> None:
        """Merge ``key``'s stored row if the load has not yet (see ``StoreLoad.settle``)."""
        if self.load is not None:
            self.load.settle(key)

    async def loaded(self) -> None:
        """Return once every stored row is in the replica."""
        if self.load is not None:
            await self.load.wait()

    def read(self, key: str) -> Entry | None:
        """The stored entry of ``key``, with its value even if evicted from memory."""
        try:
            return self.store.get(key)
        except PersistenceError as exc:
            log.error("reading %r from the store failed: %s", key, exc)
            return None

    async def flush(self, replica: Replica) -> None:
        """Write what changed since the last batch, if anything did."""
        async with self._lock:
            if (
                not self.dirty
                and replica.clock.last_ts == self._clock_ts
                and replica.marks == self._marks
            ):
                return
            keys, self.dirty = self.dirty, set()
            evicted, self.evicted = self.evicted, {}
            batch = StoreBatch.capture(replica, keys)
            if evicted:
                batch = dataclasses.replace(batch, entries=_with_values(batch.entries, evicted))
            try:
                if len(keys) > THREAD_BATCH:
                    await asyncio.to_thread(self.store.write, batch)
                else:
                    self.store.write(batch)
            except PersistenceError as exc:
                self.errors += 1
                self.dirty |= keys
                self.evicted = {**evicted, **self.evicted}
                log.error(
                    "writing %d keys to the store failed (kept for retry): %s", len(keys), exc
                )
                return
            self._clock_ts = batch.clock_ts
            self._marks = dict(batch.marks)
            own = batch.marks.get(replica.node, -1)
            if own > self.durable_own:
                self.durable_own = own
                if self.on_durable is not None:
                    self.on_durable(own)

    def request(self) -> None:
        """Write a batch as soon as possible (own writes wait for it to leave the node).

        Requests made while a batch is being written are served by the next one: a
        group commit, so a burst of writes costs one transaction, not one each.
        """
        if self._wanted is not None:
            self._wanted.set()

    async def run(self, replica: Replica) -> None:
        """Write a batch every ``PERSIST_INTERVAL`` seconds, or at once when requested."""
        self._wanted = wanted = asyncio.Event()
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
            # cancellation that stops this task when its wait ends at the same time.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PERSIST_INTERVAL):
                    await wanted.wait()
            wanted.clear()
            await self.flush(replica)

    async def close(self, replica: Replica) -> None:
        """Write the last batch and close the file."""
        try:
            await self.flush(replica)
        finally:
            self.store.close()


def _with_values(
    entries: tuple[tuple[str, Entry | None], ...], evicted: Mapping[str, Entry]
) -> tuple[tuple[str, Entry | None], ...]:
    """Put back the value of each stub whose write was evicted before being stored."""
    out: list[tuple[str, Entry | None]] = []
    for key, e in entries:
        held = evicted.get(key)
        if (
            e is not None
            and held is not None
            and e.value is NOT_HELD
            and (e.ts, e.origin) == (held.ts, held.origin)
        ):
            e = held
        out.append((key, e))
    return tuple(out)
