"""Loading a stored replica while the node already serves it.

Theory of operation
-------------------
Opening a large ``persist_path`` file used to read, validate and merge every row before
``start()`` returned (about 1 s per 100 000 entries). Now the store is opened and
checked (header, version, ``PRAGMA quick_check``, meta, patterns, marks: all small) and
the replica starts with the file's pattern tombstones, marks and clock but no entries;
a :class:`StoreLoad` then merges the rows in chunks (:meth:`ReplicaStore.load_chunk
<crdtcache.store._sqlite.ReplicaStore.load_chunk>`), the first :data:`START_ROWS`
before ``start()`` returns, the rest between turns of the event loop. Invariants:

* **Every row goes through** :meth:`Replica.merge_entry`, like a peer's write. A write,
  delete or touch made before a row is loaded carries a newer stamp (the clock starts
  above every stored stamp) and beats it; a pattern tombstone covers it; so loading
  late never undoes anything. Only a key removed outright meanwhile (a hot tier's
  ``drop``, a shed stub) is not merged again: :meth:`removed` notes it.
* **A key is settled before it is used.** Until the load ends, the cache calls
  :meth:`settle` before a read that misses, a conditional write (``add``, ``incr``,
  ``touch``, ``delete`` that reports what it removed) or anything else that reads the
  key's entry: one indexed SQLite lookup, validated like any row, merged. So does the
  replica before it merges a peer's entry of a key it lacks
  (:attr:`Replica.before_merge <crdtcache.core.Replica.before_merge>`): an older
  remote write then loses to the stored row at once. A key once settled is not merged
  again by the chunks.
* **A row that fails validation is never served.** It is logged (with the
  :class:`~crdtcache.CorruptStateError` text an eager open would have raised), counted
  in ``refused``, left in the file as it is, and the replica forgets every mark but its
  own: the file's marks promised that write, so the next anti-entropy round asks peers
  for everything again and repairs the key from whoever has it.
* **Peers are told nothing mid-load.** The replica's marks claim every write the file
  holds, which the map does not yet have; so the engine answers no anti-entropy
  request and starts none until :meth:`run` ends (``GossipEngine.hold_exchanges``).
  Whole-map operations (``keys``, ``snapshot``, ``clear``, ``invalidate_pattern``)
  wait for the load (:meth:`wait`).
* **Loading writes nothing back.** A merged row is what the file holds: persistence is
  told not to mark it dirty (:attr:`merging`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from crdtcache._errors import CorruptStateError, PersistenceError
from crdtcache.core import Entry, Replica
from crdtcache.store._sqlite import ReplicaStore

__all__ = ["LOAD_CHUNK", "START_ROWS", "StoreLoad"]

log = logging.getLogger(__name__)

#: Rows read, validated and merged per turn of the event loop (about 10 ms each).
LOAD_CHUNK: Final = 2000
#: Rows loaded before ``start()`` returns: a small store is whole at once.
START_ROWS: Final = 4000


class StoreLoad:
    """The rows of one store still to merge into its replica (see the module doc).

    ``clock`` gives the ``now`` merges are made at.
    """

    def __init__(self, store: ReplicaStore, replica: Replica, clock: Callable[[], float]) -> None:
        self.store = store
        self.replica = replica
        self.clock = clock
        #: Rows merged so far (chunks and settled keys).
        self.loaded = 0
        #: Rows that failed validation (never served; see the module doc).
        self.refused = 0
        #: The entry being merged from the file, so that its observers can tell.
        self.merging: Entry | None = None
        #: Called once, when the last row is merged (the engine's exchanges resume).
        self.on_done: Callable[[], None] | None = None
        self._after = 0  # row id to continue after
        self._settled: set[str] = set()
        self._done = asyncio.Event()
        replica.before_merge = self._before_merge

    @property
    def done(self) -> bool:
        """Whether every row was merged."""
        return self._done.is_set()

    async def wait(self) -> None:
        """Return once every row was merged."""
        await self._done.wait()

    def settle(self, key: str) -> None:
        """Merge the stored row of ``key`` now, unless it was already (see module doc).

        Never raises: a row that fails validation or a failing read is logged.
        """
        if key in self._settled or self._done.is_set():
            return
        self._settled.add(key)
        try:
            entry = self.store.get(key)
        except CorruptStateError as exc:
            self._refuse(str(exc))
            return
        except PersistenceError as exc:
            # Not the row's fault: the chunk will try it again.
            self._settled.discard(key)
            log.error("reading %r from the store failed: %s", key, exc)
            return
        if entry is not None:
            self._merge(key, entry, self.clock())

    def _before_merge(self, key: str) -> None:
        # A peer's entry for a key not loaded yet: its stored row goes in first (not
        # for the rows this load merges itself).
        if self.merging is None and key not in self.replica.entries:
            self.settle(key)

    def removed(self, key: str) -> None:
        """``key`` left the replica outright: its older row must not bring it back."""
        self._settled.add(key)

    def step(self, limit: int | None = None) -> int:
        """Merge the next ``limit`` rows; returns how many were read (then see ``done``)."""
        if self._done.is_set():
            return 0
        if limit is None:
            limit = LOAD_CHUNK
        chunk = self.store.load_chunk(self._after, limit)
        self._after = chunk.last
        now = self.clock()
        settled = self._settled
        for key, entry in chunk.entries:
            if key not in settled:
                self._merge(key, entry, now)
        for bad, problem in chunk.refused:
            if bad not in settled:  # (one looked up already was reported then)
                self._refuse(problem)
        read = len(chunk.entries) + len(chunk.refused)
        if read < limit:
            # The end of the table: a row added since was written from the replica.
            self._finish()
        return read

    async def run(self) -> None:
        """Merge every row left, a chunk per turn of the loop; then resume exchanges.

        A store that cannot be read any more ends the load (logged): the rows left
        are not served, and the node goes on with what it has and its peers have.
        """
        try:
            while not self._done.is_set():
                self.step()
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            self._finish()  # the cache closes: nobody may wait for the rest
            raise
        except PersistenceError as exc:
            log.error("loading the store stopped, its remaining rows are not served: %s", exc)
            self._forget_marks()
            self._finish()

    def _merge(self, key: str, entry: Entry, now: float) -> None:
        self.merging = entry
        try:
            # observed: the clock starts above every stored stamp (no drift check).
            self.replica.merge_entry(key, entry, now, observed=True)
        finally:
            self.merging = None
        self.loaded += 1

    def _refuse(self, problem: str) -> None:
        self.refused += 1
        log.error("%s; the row is not served and left in the file as it is", problem)
        self._forget_marks()

    def _forget_marks(self) -> None:
        # The file's marks promised the write this row held: claim nothing from them
        # and the next anti-entropy round fetches it again from a peer that has it.
        replica = self.replica
        own = replica.marks.get(replica.node)
        replica.marks.clear()
        if own is not None:
            replica.marks[replica.node] = own

    def _finish(self) -> None:
        if self._done.is_set():
            return
        self._done.set()
        self._settled = set()
        if self.replica.before_merge == self._before_merge:
            self.replica.before_merge = None
        if self.on_done is not None:
            self.on_done()
