"""``persist_path=``: a replica kept in SQLite so a restarted node serves its data at once.

Theory of operation
-------------------
The store is the durable copy of one node's :class:`~crdtcache.core.Replica`: its node
id, its clock's highest stamp, and every entry, pattern tombstone, mark and collected
stamp. It is synchronous and holds no replica: the cache captures what changed on its
event loop (:meth:`StoreBatch.capture`, which reads the replica) and hands the batch
to :meth:`ReplicaStore.write`, inline or through ``asyncio.to_thread`` (the store
serializes its own calls with a lock, so any thread may call it).

Invariants kept:

* **Every batch is one transaction.** Entries, patterns, marks, collected and the
  clock's highest stamp of one capture commit together or not at all. If every key
  changed since the previous batch is captured, the file after a commit is the
  replica as it was at capture time, so its marks never claim a write the file lacks
  (a missed key would break that for good: see :meth:`StoreBatch.capture`). A
  process killed at any point leaves every committed batch, whole.
* **Stamps never go back.** The clock's highest stamp is written with every batch
  (and only ever raised). A restarted node's clock starts at that stamp plus
  ``stamp_headroom`` (:data:`STAMP_HEADROOM`): stamps issued after the last commit and
  before a kill are either below the restart's wall time (the usual case: restarting
  takes longer than a batch interval) or within the headroom (a clock that had
  observed a peer slightly ahead). Only a clock pushed by a peer further ahead than the
  headroom, then killed before the next batch, could reissue a stamp; call
  :meth:`ReplicaStore.write` at once when ``clock.last_ts`` jumps to close that too.
* **Marks and collected only rise** in the file (``MAX`` on upsert), so a batch built
  before a :meth:`ReplicaStore.collect` can never lower what the file has dropped.
* **The store keeps values the memory tier evicted.** Eviction is local and not a
  deletion: writing a stub (``NOT_HELD``) for a key whose row holds the same write's
  value keeps the value, so the file stays the node's full copy and
  :meth:`ReplicaStore.get` can serve an evicted key without asking a peer. A stub
  with a newer stamp does replace an older value (that value is superseded).
* **Rows go only when the replica let go of the key**: a key absent from the replica
  at capture time (collected tombstone, removed by a pattern tombstone, dropped by a
  full resync) is deleted in that batch; :meth:`ReplicaStore.collect` drops the same
  tombstones and expired values the replica's own collection drops, with the same
  rule, and raises ``collected`` like it. Rows the replica changed without reporting
  a change (a tombstone removed by a pattern, a tombstone collected in memory) linger
  until then; they are harmless, because rebuilding merges patterns first.
* **A file that is not ours is never touched.** Before SQLite opens anything, the
  first 100 bytes are read: a file that is not SQLite, or an SQLite database without
  this format's ``application_id``, is refused with :class:`CorruptStateError` and
  left byte for byte as it was (SQLite never opens it, so it cannot checkpoint or
  create side files). Then the format version and every row are validated before the
  state is returned; any problem is reported, nothing is repaired or overwritten.
* **One process at a time.** The connection uses ``locking_mode=EXCLUSIVE`` and takes
  the write lock at open, so a second node started on the same path fails at once
  with :class:`PersistenceError` instead of interleaving writes under the same node
  id. (Side effect: other processes cannot read the file while the node runs.) A
  second store on the same file in this process is refused before SQLite is asked,
  with a message that says so.
* **Paths are checked before SQLite sees them** (:mod:`crdtcache.store._location`):
  missing parent directories are created (0700), a read-only filesystem or directory
  is named as such, and a new file is created 0600 (its -wal and -shm follow).

Durability: WAL with ``synchronous=NORMAL``. A commit is a write to the WAL without
fsync; it survives the process being killed (the OS has it), and the database stays
consistent after a power cut or OS crash, but the last commits before such a crash
may be lost (fsync happens at checkpoints). That is the right trade for a cache that
catches up by anti-entropy; a node that lost its last batches to a power cut repairs
them from its peers, and the stamp headroom covers the clock.

Cost, measured on a shared 2-core machine with 100 000 stored keys: capturing costs
about 0.4 us per key on the loop; a commit costs what the pages it touches cost,
about 1 ms for 100 scattered keys, 25-40 ms for 1 000 and 100-200 ms for 10 000 (a
B-tree write touches one page per key until keys share pages). Opening and
validating 100 000 entries takes about 1 s, rebuilding the replica 0.5 s (so the
cache opens with ``entries=False`` and loads them in chunks after start:
:mod:`crdtcache.store._loading`). So: batch
every 50-100 ms (repeated writes to a key coalesce), and run :meth:`ReplicaStore.write`
in ``asyncio.to_thread`` unless batches are known to be small; sqlite3 releases the
GIL while SQLite works, so the loop keeps serving. The batch must be captured on the
loop first: :class:`StoreBatch` is immutable and shares only immutable entries.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from crdtcache._errors import ConfigError, PersistenceError, SerializationError
from crdtcache.core import (
    DEFAULT_MAX_VALUE_BYTES,
    MAX_DRIFT,
    TOMBSTONE_GRACE,
    Entry,
    HybridClock,
    PatternTombstone,
    Replica,
    Resolver,
)
from crdtcache.core._format import (
    InvalidRecord,
    check_expires,
    check_marks,
    check_node,
    check_ts,
    entry_blob,
    entry_from_blob,
    pattern_from_record,
)
from crdtcache.core._hlc import ts_seconds, ts_span
from crdtcache.core._replica import collection_horizon
from crdtcache.store._location import OPEN_HERE, FileId, create_private, prepare
from crdtcache.store._snapshot import fail

__all__ = [
    "APPLICATION_ID",
    "LoadedChunk",
    "STAMP_HEADROOM",
    "STORE_FORMAT",
    "STORE_VERSION",
    "ReplicaStore",
    "StoreBatch",
    "StoreStatistics",
    "StoredState",
]

#: SQLite ``application_id`` of a crdtcache store ("CRDT"): identifies the file from
#: its header, before SQLite is asked to open it.
APPLICATION_ID: Final = 0x43524454
#: Format marker kept in the ``meta`` table.
STORE_FORMAT: Final = "crdtcache-replica"
#: Version of the schema (SQLite ``user_version`` and ``meta``); bumped on any change.
STORE_VERSION: Final = 1
#: Seconds added to the persisted highest stamp when a node restarts (see module doc).
STAMP_HEADROOM: Final = 1.0
#: Seconds to wait for SQLite's lock before reporting the file in use.
LOCK_TIMEOUT: Final = 1.0

_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
_TABLES: Final = frozenset(("meta", "entries", "patterns", "marks", "collected"))
_SCHEMA: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    "CREATE TABLE entries (key TEXT PRIMARY KEY, kind INTEGER NOT NULL, value BLOB,"
    " ts INTEGER NOT NULL, origin TEXT NOT NULL, expires REAL)",
    # Only rows collection may drop: keeps collect() from scanning live values.
    "CREATE INDEX entries_gone ON entries (ts) WHERE kind = 2 OR expires IS NOT NULL",
    "CREATE TABLE patterns (pattern TEXT PRIMARY KEY, ts INTEGER NOT NULL,"
    " origin TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE marks (origin TEXT PRIMARY KEY, ts INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE collected (origin TEXT PRIMARY KEY, ts INTEGER NOT NULL) WITHOUT ROWID",
)
# A stub never replaces the value of the same write: the file keeps what was evicted.
# (Kinds: 0 plain, 1 packed, 3 stub, 4 amended; an amended stub is kind 3 as well:
# see core._format.entry_blob.)
_UPSERT_ENTRY: Final = (
    "INSERT INTO entries (key, kind, value, ts, origin, expires) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET kind = excluded.kind, value = excluded.value,"
    " ts = excluded.ts, origin = excluded.origin, expires = excluded.expires"
    " WHERE NOT (excluded.kind = 3 AND entries.ts = excluded.ts"
    " AND entries.origin = excluded.origin AND entries.kind IN (0, 1, 4))"
)
_UPSERT_PATTERN: Final = (
    "INSERT INTO patterns (pattern, ts, origin) VALUES (?, ?, ?)"
    " ON CONFLICT (pattern) DO UPDATE SET ts = excluded.ts, origin = excluded.origin"
)


def _upsert_max(table: str) -> str:
    return (
        f"INSERT INTO {table} (origin, ts) VALUES (?, ?)"
        f" ON CONFLICT (origin) DO UPDATE SET ts = MAX(ts, excluded.ts)"
    )


@dataclass(frozen=True, slots=True)
class StoredState:
    """What :meth:`ReplicaStore.open` loaded and validated from an existing file."""

    path: str
    node_id: str
    clock_ts: int
    entries: tuple[tuple[str, Entry], ...]
    patterns: tuple[PatternTombstone, ...]
    marks: Mapping[str, int]
    collected: Mapping[str, int]

    def build_replica(
        self,
        now: float,
        *,
        resolver: Resolver | None = None,
        tombstone_grace: float = TOMBSTONE_GRACE,
        max_drift: float = MAX_DRIFT,
        max_held: int | None = None,
        stamp_headroom: float = STAMP_HEADROOM,
        change_log: bool = True,
    ) -> Replica:
        """Rebuild the node's replica, with a clock that never goes below the file's.

        The clock starts at the persisted highest stamp plus ``stamp_headroom``
        seconds. Stamps are not checked for drift: they are this node's own, and the
        clock already covers them (a wall clock stepped back is what HLCs absorb).
        With ``max_held``, only the newest ``max_held`` values are held in memory;
        older ones become stubs (``NOT_HELD``) whose values :meth:`ReplicaStore.get`
        returns. Marks and collected are adopted: they describe this very state.
        """
        if stamp_headroom < 0:
            raise ValueError("stamp_headroom must not be negative")
        newest = max(
            [self.clock_ts] + [e.ts for _, e in self.entries] + [p.ts for p in self.patterns]
        )
        start = newest + ts_span(stamp_headroom)
        replica = Replica(
            HybridClock(self.node_id, max_drift=max_drift, last_ts=start),
            resolver=resolver,
            tombstone_grace=tombstone_grace,
            change_log=change_log,
        )
        # Merging through the replica's own methods keeps its indexes (patterns, keys
        # to collect, per-origin highs) right. The clock already starts above every
        # stamp: entries skip the drift check (``observed``), and patterns get a
        # ``now`` at the newest stamp's wall time, which makes theirs a no-op.
        merge_now = max(now, ts_seconds(newest) + 1.0)
        for tomb in self.patterns:
            replica.merge_pattern(tomb, merge_now)
        for key, entry in self.entries:
            replica.merge_entry(key, entry, merge_now, observed=True)
        replica.marks.update(self.marks)
        replica.collected.update(self.collected)
        if max_held is not None:
            hold_newest(replica, max_held)
        return replica


def hold_newest(replica: Replica, max_held: int) -> None:
    """Evict all but the newest ``max_held`` values of ``replica`` (they become stubs)."""
    held = sorted((e.ts, k) for k, e in replica.entries.items() if e.held)
    for _, key in held[: max(0, len(held) - max_held)]:
        replica.evict(key)


@dataclass(frozen=True, slots=True)
class LoadedChunk:
    """A slice of the entry rows (:meth:`ReplicaStore.load_chunk`): ``last`` is the row
    id to continue after, ``refused`` the rows that failed validation."""

    last: int
    entries: list[tuple[str, Entry]]
    refused: list[tuple[str | None, str]]


@dataclass(frozen=True, slots=True)
class StoreBatch:
    """One transaction's worth of replica state, captured on the event loop.

    ``entries`` maps keys to their current entry, or None for a key the replica no
    longer has (its row is deleted). ``patterns``, ``marks`` and ``collected`` are
    the replica's complete current sets (the store writes only what differs from the
    file). ``clock_ts`` is the clock's highest stamp.
    """

    entries: tuple[tuple[str, Entry | None], ...]
    patterns: tuple[PatternTombstone, ...]
    marks: Mapping[str, int]
    collected: Mapping[str, int]
    clock_ts: int

    @classmethod
    def capture(cls, replica: Replica, keys: Iterable[str] | None = None) -> StoreBatch:
        """Capture ``keys`` (those changed since the last batch) from ``replica``.

        ``keys=None`` captures every entry: use it for the first batch, and whenever
        changes may have been missed (the engine's ``events_dropped`` rose). A key
        whose change was missed keeps its old row; marks would then claim more than
        the file holds, which a restart would never repair. Call on the thread that
        owns the replica; the result can go to any thread.
        """
        entries = replica.entries
        if keys is None:
            captured: tuple[tuple[str, Entry | None], ...] = tuple(entries.items())
        else:
            captured = tuple((k, entries.get(k)) for k in dict.fromkeys(keys))
        return cls(
            captured,
            tuple(replica.patterns.values()),
            dict(replica.marks),
            dict(replica.collected),
            replica.clock.last_ts,
        )


@dataclass(slots=True)
class StoreStatistics:
    """Counters of a :class:`ReplicaStore` since it was opened."""

    batches: int = 0
    entries_written: int = 0
    entries_deleted: int = 0
    rows_collected: int = 0
    errors: int = 0
    last_batch_seconds: float = 0.0
    total_batch_seconds: float = 0.0
    max_batch_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain dict."""
        return asdict(self)


@dataclass(slots=True)
class _Written:
    """What the file holds for the small tables, so a batch writes only differences."""

    patterns: dict[str, tuple[int, str]] = field(default_factory=dict)
    marks: dict[str, int] = field(default_factory=dict)
    collected: dict[str, int] = field(default_factory=dict)


class ReplicaStore:
    """A node's replica in one SQLite file (see the module doc).

    Use: ``state = store.open()``; if None, the file is new: ``store.initialize(id)``
    and start an empty replica, else ``state.build_replica(now)``. Then
    ``store.write(StoreBatch.capture(replica, changed_keys))`` every batch interval,
    ``store.collect(now, grace)`` now and then, and ``store.close()``.
    Every method raises :class:`PersistenceError` (or its subclass
    :class:`CorruptStateError`) naming the path; sqlite3 errors never escape.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    ) -> None:
        self.path = os.fspath(path)
        #: Rows with a larger value are refused as corrupt, like any invalid record.
        self.max_value_bytes = max_value_bytes
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._written = _Written()
        self._node: str | None = None
        self._stats = StoreStatistics()
        self._file: FileId | None = None  # claimed in OPEN_HERE while open

    def __enter__(self) -> ReplicaStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def node_id(self) -> str | None:
        """The node id the file belongs to (None until opened and initialized)."""
        return self._node

    # ------------------------------------------------------------------- open
    def open(self, *, entries: bool = True) -> StoredState | None:
        """Open (creating if needed) and load the file; None when it holds no replica yet.

        Missing parent directories are created (mode 0700) and a new file is created
        with mode 0600. Raises :class:`CorruptStateError` if the file is not a
        crdtcache store, has an unsupported version or holds invalid rows (the file is
        left untouched), and :class:`PersistenceError` saying which case it is: a
        directory that could not be created, a read-only filesystem, directory or file,
        a file already open in this process, or one locked by another process.

        ``entries=False`` loads everything but the entries (``StoredState.entries`` is
        empty; ``clock_ts`` covers their stamps all the same): they are then read with
        :meth:`load_chunk` and :meth:`get`, each row validated as it is read. The file's
        integrity (``PRAGMA quick_check``) is verified here either way.
        """
        with self._lock:
            if self._conn is not None:
                raise PersistenceError(f"store {self.path!r} is already open")
            prepare(self.path)
            fresh = self._inspect_header()  # before anything opens it for writing
            file = create_private(self.path)
            OPEN_HERE.claim(file, self.path)
            try:
                conn = sqlite3.connect(
                    self.path,
                    timeout=LOCK_TIMEOUT,
                    isolation_level=None,  # transactions are explicit: BEGIN ... COMMIT
                    check_same_thread=False,  # calls are serialized by self._lock
                )
            except sqlite3.Error as exc:
                OPEN_HERE.release(file)
                raise PersistenceError(f"cannot open store {self.path!r}: {exc}") from exc
            try:
                state = self._open(conn, fresh, entries)
            except BaseException:
                conn.close()
                OPEN_HERE.release(file)
                raise
            self._conn, self._file = conn, file
            return state

    def _inspect_header(self) -> bool:
        """Check the file is ours from its header alone; True if it is new (absent/empty)."""
        try:
            with open(self.path, "rb") as f:
                header = f.read(100)
        except FileNotFoundError:
            return True
        except OSError as exc:
            raise PersistenceError(f"cannot read store {self.path!r}: {exc}") from exc
        if not header:
            return True  # an empty file (mktemp, touch): nothing to lose
        where = f"store {self.path!r}"
        if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
            fail(where, "not an SQLite database (garbage or another kind of file); left untouched")
        app_id = int.from_bytes(header[68:72], "big")
        if app_id != APPLICATION_ID:
            fail(
                where,
                f"an SQLite database of another application (application_id {app_id}), "
                "not a crdtcache store; left untouched",
            )
        return False

    def _open(self, conn: sqlite3.Connection, fresh: bool, entries: bool) -> StoredState | None:
        where = f"store {self.path!r}"
        try:
            # Before the first access, so no shared-memory index is used and the
            # write lock, once taken below, is held until close.
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            if fresh:
                self._create(conn)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version != STORE_VERSION:
                fail(
                    where,
                    f"format version {version} is not supported "
                    f"(this crdtcache reads version {STORE_VERSION}); left untouched",
                )
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if tables != _TABLES:
                fail(where, f"unexpected tables {sorted(tables)}; left untouched")
            # Take (and, in exclusive mode, keep) the write lock now: a second node on
            # this path fails here, not at its first batch.
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Loading reads every table but not the indexes; damage there would
                # surface later as a failing batch. quick_check sees it now (about
                # 50 ms per 100 000 entries).
                problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
                if problems != ["ok"]:
                    fail(where, f"damaged ({'; '.join(problems)}); left untouched")
                state = self._load(conn, where, entries)
            finally:
                conn.execute("COMMIT")  # nothing was written: this only ends the read
            # Only now, with the file validated: switching the journal mode writes to it.
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            return state
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                # Not this process: OPEN_HERE refused a second open here already.
                raise PersistenceError(
                    f"store {self.path!r} is in use by another process ({exc}): "
                    "another node with this persist_path?"
                ) from exc
            raise PersistenceError(f"cannot open store {self.path!r}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            fail(where, f"damaged ({exc}); left untouched")

    def _create(self, conn: sqlite3.Connection) -> None:
        # Created in rollback-journal mode and switched to WAL after: the header's
        # application_id then reaches the main file at once (in WAL mode it would sit
        # in the log until a checkpoint, and a node killed before that would find
        # its own file unrecognisable).
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {STORE_VERSION}")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("format", STORE_FORMAT), ("version", STORE_VERSION), ("clock_ts", 0)],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _load(self, conn: sqlite3.Connection, where: str, load: bool) -> StoredState | None:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != STORE_FORMAT or meta.get("version") != STORE_VERSION:
            fail(where, "meta table does not describe a crdtcache store of this version")
        try:
            clock_ts = check_ts(meta.get("clock_ts"))
            node = check_node(meta["node"]) if "node" in meta else None
        except InvalidRecord as exc:
            fail(f"{where} meta", str(exc))
        if node is None:
            return None  # created, never initialized: still a new store
        # Cursors are closed explicitly: one left open by an exception (its traceback
        # keeps it alive) would keep the connection, its lock and its WAL file alive
        # after close().
        entries: tuple[tuple[str, Entry], ...] = ()
        if load:
            with contextlib.closing(
                conn.execute("SELECT key, kind, value, ts, origin, expires FROM entries")
            ) as rows:
                entries = tuple(_row_entry(row, where, self.max_value_bytes) for row in rows)
        else:
            # The rows come later (load_chunk), but the clock must start above their
            # stamps now: the greatest is one index-less scan of one column (~5 ms per
            # 100 000 rows). Normally meta's clock_ts covers it already.
            # (A row whose ts is not an integer is refused when it is read, like any.)
            newest = conn.execute(
                "SELECT MAX(ts) FROM entries WHERE typeof(ts) = 'integer'"
            ).fetchone()[0]
            if newest is not None:
                try:
                    clock_ts = max(clock_ts, check_ts(newest))
                except InvalidRecord as exc:
                    fail(f"{where} entries", str(exc))
        patterns: list[PatternTombstone] = []
        with contextlib.closing(conn.execute("SELECT pattern, ts, origin FROM patterns")) as rows:
            for row in rows:
                try:
                    patterns.append(pattern_from_record(*row))
                except InvalidRecord as exc:
                    fail(f"{where} patterns", str(exc))
        marks = _stamp_rows(conn, "marks", where)
        collected = _stamp_rows(conn, "collected", where)
        self._node = node
        self._written = _Written(
            {p.pattern: (p.ts, p.origin) for p in patterns}, dict(marks), dict(collected)
        )
        return StoredState(self.path, node, clock_ts, entries, tuple(patterns), marks, collected)

    def initialize(self, node_id: str, clock_ts: int = 0) -> None:
        """Record the node id of a new store (after :meth:`open` returned None).

        Raises :class:`ConfigError` for an invalid id or a store that already has one.
        """
        try:
            check_node(node_id)
        except InvalidRecord as exc:
            raise ConfigError(str(exc)) from None
        with self._lock:
            if self._node is not None:
                raise ConfigError(f"store {self.path!r} already belongs to node {self._node!r}")
            with self._transaction("initialize") as conn:
                conn.execute("INSERT INTO meta (key, value) VALUES ('node', ?)", (node_id,))
                _raise_clock(conn, clock_ts)
            self._node = node_id

    # ----------------------------------------------------------------- writes
    def write(self, batch: StoreBatch) -> None:
        """Commit one captured batch in one transaction (see :class:`StoreBatch`)."""
        self.apply(
            batch.entries,
            patterns=batch.patterns,
            marks=batch.marks,
            collected=batch.collected,
            clock_ts=batch.clock_ts,
        )

    def apply(
        self,
        entries: Iterable[tuple[str, Entry | None]],
        *,
        patterns: Iterable[PatternTombstone],
        marks: Mapping[str, int],
        collected: Mapping[str, int],
        clock_ts: int,
    ) -> None:
        """Commit changes in one transaction: all of them, or none on error.

        ``entries``: key -> entry to store, or None to delete the key's row.
        ``patterns``, ``marks``, ``collected``: the replica's complete current sets.
        ``clock_ts``: the clock's highest stamp (the file keeps the greatest seen).
        Raises :class:`SerializationError` for a value a replica cannot hold and
        :class:`PersistenceError` if SQLite fails (nothing of the batch is kept).
        """
        upserts: list[tuple[str, int, bytes | None, int, str, float | None]] = []
        deletes: list[tuple[str]] = []
        for key, entry in entries:
            if entry is None:
                deletes.append((key,))
            else:
                upserts.append(_entry_row(key, entry))
        current = {p.pattern: (p.ts, p.origin) for p in patterns}
        with self._lock:
            if self._conn is not None and self._node is None:
                # Rows in a file without a node id would be taken for a new store at
                # the next open and silently mixed into another replica.
                raise PersistenceError(f"store {self.path!r}: initialize() before writing")
            started = time.perf_counter()
            written = self._written
            raised_marks = _raised(written.marks, marks)
            raised_collected = _raised(written.collected, collected)
            with self._transaction("write") as conn:
                if deletes:
                    conn.executemany("DELETE FROM entries WHERE key = ?", deletes)
                if upserts:
                    conn.executemany(_UPSERT_ENTRY, upserts)
                gone = [(p,) for p in written.patterns if p not in current]
                new = [
                    (p, ts, o)
                    for p, (ts, o) in current.items()
                    if written.patterns.get(p) != (ts, o)
                ]
                if gone:
                    conn.executemany("DELETE FROM patterns WHERE pattern = ?", gone)
                if new:
                    conn.executemany(_UPSERT_PATTERN, new)
                if raised_marks:
                    conn.executemany(_upsert_max("marks"), raised_marks)
                if raised_collected:
                    conn.executemany(_upsert_max("collected"), raised_collected)
                _raise_clock(conn, clock_ts)
            # Only after the commit: a failed batch must leave these matching the file.
            written.patterns = current
            written.marks.update(raised_marks)
            written.collected.update(raised_collected)
            elapsed = time.perf_counter() - started
            stats = self._stats
            stats.batches += 1
            stats.entries_written += len(upserts)
            stats.entries_deleted += len(deletes)
            stats.last_batch_seconds = elapsed
            stats.total_batch_seconds += elapsed
            stats.max_batch_seconds = max(stats.max_batch_seconds, elapsed)

    def collect(self, now: float, tombstone_grace: float = TOMBSTONE_GRACE) -> int:
        """Drop what :meth:`Replica.collect` drops at ``now``; return how many rows went.

        Tombstones and expired values stamped more than ``tombstone_grace`` seconds
        before ``now``, and pattern tombstones as old, are deleted, and ``collected``
        is raised for their origins in the same transaction.
        """
        horizon = collection_horizon(now, tombstone_grace)
        # The first term is the partial index's condition, which lets SQLite use it.
        gone = "(kind = 2 OR expires IS NOT NULL) AND (kind = 2 OR expires <= ?) AND ts <= ?"
        with self._lock:
            with self._transaction("collect") as conn:
                per_origin: dict[str, int] = {}
                for origin, ts in conn.execute(
                    f"SELECT origin, MAX(ts) FROM entries WHERE {gone} GROUP BY origin",
                    (now, horizon),
                ):
                    per_origin[origin] = ts
                for origin, ts in conn.execute(
                    "SELECT origin, MAX(ts) FROM patterns WHERE ts <= ? GROUP BY origin",
                    (horizon,),
                ):
                    per_origin[origin] = max(ts, per_origin.get(origin, -1))
                count = conn.execute(f"DELETE FROM entries WHERE {gone}", (now, horizon)).rowcount
                count += conn.execute("DELETE FROM patterns WHERE ts <= ?", (horizon,)).rowcount
                raised = _raised(self._written.collected, per_origin)
                if raised:
                    conn.executemany(_upsert_max("collected"), raised)
            written = self._written
            written.patterns = {p: v for p, v in written.patterns.items() if v[0] > horizon}
            written.collected.update(raised)
            self._stats.rows_collected += count
            return count

    # ------------------------------------------------------------------ reads
    def get(self, key: str) -> Entry | None:
        """The stored entry for ``key`` (with its value even if evicted from memory)."""
        with self._lock, self._transaction("get", write=False) as conn:
            row = conn.execute(
                "SELECT key, kind, value, ts, origin, expires FROM entries WHERE key = ?",
                (key,),
            ).fetchone()
        if row is None:
            return None
        return _row_entry(row, f"store {self.path!r}", self.max_value_bytes)[1]

    def load_chunk(self, after: int, limit: int) -> LoadedChunk:
        """Up to ``limit`` entry rows past row id ``after``, each validated on its own.

        For a store opened with ``open(entries=False)``: call with ``after=0``, then
        with the chunk's ``last`` until a chunk comes back with ``last == after``. A
        row that fails validation is returned in ``refused`` (key, or None if the key
        itself is invalid, and the problem), never as an entry; the file is not changed.
        Rows written after the load began may be returned too (they hold what the
        replica held when they were written, so merging them changes nothing).
        """
        where = f"store {self.path!r} entries"
        with self._lock, self._transaction("load", write=False) as conn:
            rows = conn.execute(
                "SELECT rowid, key, kind, value, ts, origin, expires FROM entries"
                " WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (after, limit),
            ).fetchall()
        entries: list[tuple[str, Entry]] = []
        refused: list[tuple[str | None, str]] = []
        max_bytes = self.max_value_bytes
        for row in rows:
            try:
                entries.append(entry_from_blob(*row[1:], max_value_bytes=max_bytes))
            except InvalidRecord as exc:
                key = row[1] if type(row[1]) is str else None
                refused.append((key, f"{where}: row {row[1]!r}: {exc.problem}"))
        last = rows[-1][0] if rows else after
        return LoadedChunk(last, entries, refused)

    def statistics(self) -> StoreStatistics:
        """A copy of the store's counters."""
        with self._lock:
            return StoreStatistics(**self._stats.as_dict())

    def close(self) -> None:
        """Close the file (idempotent). Write the last batch first to keep it."""
        with self._lock:
            conn, self._conn = self._conn, None
            file, self._file = self._file, None
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    raise PersistenceError(f"cannot close store {self.path!r}: {exc}") from exc
                finally:
                    if file is not None:
                        OPEN_HERE.release(file)

    # --------------------------------------------------------------- plumbing
    def _transaction(self, what: str, *, write: bool = True) -> _Transaction:
        # The caller holds self._lock: the transaction and the bookkeeping after it
        # must not interleave with another thread's.
        conn = self._conn
        if conn is None:
            raise PersistenceError(f"store {self.path!r} is not open")
        return _Transaction(self, conn, what, write)


class _Transaction:
    """BEGIN, then COMMIT or ROLLBACK; sqlite3 errors become :class:`PersistenceError`."""

    __slots__ = ("_conn", "_store", "_what", "_write")

    def __init__(
        self, store: ReplicaStore, conn: sqlite3.Connection, what: str, write: bool
    ) -> None:
        self._store = store
        self._conn = conn
        self._what = what
        self._write = write

    def _failed(self, exc: sqlite3.Error) -> PersistenceError:
        self._store._stats.errors += 1
        return PersistenceError(f"store {self._store.path!r}: {self._what} failed: {exc}")

    def __enter__(self) -> sqlite3.Connection:
        try:
            self._conn.execute("BEGIN IMMEDIATE" if self._write else "BEGIN")
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc
        return self._conn

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        conn = self._conn
        if exc is None:
            try:
                conn.execute("COMMIT")
                return
            except sqlite3.Error as commit_exc:
                exc = commit_exc
        if conn.in_transaction:
            # The original error says more; SQLite rolls back on close anyway.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise self._failed(exc) from exc
        self._store._stats.errors += 1


# --------------------------------------------------------------------- rows
def _entry_row(key: str, e: Entry) -> tuple[str, int, bytes | None, int, str, float | None]:
    try:
        check_ts(e.ts)  # sqlite3 would raise a bare OverflowError for a larger int
        check_node(e.origin, "origin")
        expires = None if e.expires is None else _finite_expiry(e.expires)
    except InvalidRecord as exc:
        raise SerializationError(f"entry of {key!r} cannot be stored: {exc}") from None
    try:
        kind, blob = entry_blob(e)  # tombstones and stubs carry no value
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"value for {key!r} cannot be stored: {exc}") from exc
    return key, kind, blob, e.ts, e.origin, expires


def _finite_expiry(expires: float) -> float:
    # SQLite keeps NaN as NULL ("no expiry"): a value must never gain a longer life on
    # disk than it had in memory, so a non-finite expiry is refused before writing.
    checked = check_expires(expires)
    assert checked is not None
    return checked


def _row_entry(row: tuple[Any, ...], where: str, max_value_bytes: int) -> tuple[str, Entry]:
    try:
        return entry_from_blob(*row, max_value_bytes=max_value_bytes)
    except InvalidRecord as exc:
        fail(
            f"{where} entries",
            exc.problem if exc.key is None else f"row {exc.key!r}: {exc.problem}",
        )


def _stamp_rows(conn: sqlite3.Connection, table: str, where: str) -> dict[str, int]:
    with contextlib.closing(conn.execute(f"SELECT origin, ts FROM {table}")) as rows:
        try:
            return check_marks(dict(rows.fetchall()))
        except InvalidRecord as exc:
            fail(f"{where} {table}", str(exc))


def _raised(written: Mapping[str, int], current: Mapping[str, int]) -> list[tuple[str, int]]:
    return [(o, ts) for o, ts in current.items() if ts > written.get(o, -1)]


def _raise_clock(conn: sqlite3.Connection, clock_ts: int) -> None:
    conn.execute("UPDATE meta SET value = MAX(value, ?) WHERE key = 'clock_ts'", (clock_ts,))
