"""The path of this instance's writes to Redis: batches and what Redis answered. No IO.

:class:`WritePath` turns queued writes into script calls (:meth:`WritePath.prepare`)
and applies each answer here (:meth:`WritePath.answered`): committed, lost to a newer
write, refused, or to be rechecked against pattern tombstones this instance may not
know. The runtime sends the calls and, on "recheck", reloads the patterns and asks
again (at most :data:`RECHECK_ATTEMPTS` times).

Theory of operation
-------------------
*Writes: last-writer-wins enforced in Redis.* Writes go to Redis in batches (one per
``sync_interval`` with write-behind and on-demand, one per ``set`` with
write-through), each batch one ``WRITE`` script (:mod:`._scripts`). For each write it
replaces the record only if the write's stamp is greater than the stored one (an
equal stamp is the same write, retried), and refuses a stamp further ahead of the
server's clock than ``max_drift``; then it publishes one invalidation listing the
writes it applied, in the same atomic step. So an older stamp never overwrites a newer
one whichever instance writes last, nothing is half-written, and no committed write
goes unannounced. A writer whose write lost drops its local copy and observes the
winning stamp (its next write wins). Write-behind writes wait in the bounded outbox
(:data:`~._tables.MAX_OUTBOX`) and are retried while Redis is unreachable; a
write-through or restored write that may not have reached Redis is dropped from this
instance instead (a later read fetches whatever Redis holds), so nothing stays
applied here that Redis does not hold.

*Pattern tombstones.* ``invalidate_pattern(glob)`` records "every key matching the
glob stamped at or before S is gone" in the patterns hash (``PATTERN`` script,
announced like a write); the records it covers are then deleted by SCAN, each page
through ``CLEAN``, which deletes only records stamped at or before S. Every instance
holds all pattern tombstones (loaded at (re)subscription, kept current by their
announcements) and drops covered writes itself. Each recorded tombstone raises the
version ``#``; an instance knows the version it holds every tombstone of (set by a
full load, raised by announcements that arrive in sequence), and ``WRITE`` is given
it: when Redis's version differs and its newest tombstone is not older than the
write, the script answers "recheck" instead of writing (the writer reloads the
patterns and decides again, at most :data:`RECHECK_ATTEMPTS` times, then gives up
rather than guess), so a tombstone the writer has not heard of cannot be overtaken.
Guaranteed: once the tombstone is recorded, no write stamped at or before S that
matches it is stored or served (readers refuse covered records, and records present
when the SCAN starts are deleted); records written later with greater stamps survive.
Not guaranteed: glob matching is evaluated in Python (``fnmatch``) by each instance; a
cleanup abandoned by a crashed instance is resumed by another after ``cleanup_stall``
seconds; a tombstone is collected only once its cleanup completed, and a write
stamped before it that arrives after that is accepted (Cassandra's gc_grace rule).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from crdtcache._errors import ClockDriftError, PeerError, SerializationError
from crdtcache.core import Entry, PatternTombstone, Replica
from crdtcache.core._format import InvalidRecord
from crdtcache.runtime.redis._hottier import HotTier
from crdtcache.runtime.redis._messages import (
    MAX_INLINE_BATCH_BYTES,
    Call,
    ScriptCalls,
    parse_stamp,
)
from crdtcache.runtime.redis._tables import Outbox, PatternBook

__all__ = ["RECHECK_ATTEMPTS", "WriteBatch", "WriteCounters", "WritePath", "WriteReport"]

log = logging.getLogger(__name__)

#: Times a write is retried after reloading the pattern tombstones (module doc).
RECHECK_ATTEMPTS: Final = 3

Write: TypeAlias = tuple[str, Entry]


@dataclass(frozen=True, slots=True)
class WriteBatch:
    """One batch ready to go: its writes, pattern tombstones and script calls."""

    entries: list[Write]
    patterns: list[PatternTombstone]
    calls: list[Call]


@dataclass(slots=True)
class WriteReport:
    """What the batches of one write operation did: applied count, errors, writes."""

    count: int = 0
    errors: list[str] = field(default_factory=list)
    applied: list[Write] = field(default_factory=list)


@dataclass(slots=True)
class WriteCounters:
    """What the write path counted since start."""

    applied: int = 0
    lost: int = 0
    rechecked: int = 0
    dropped: int = 0
    errors: int = 0
    #: Write-through writes fewer replicas confirmed than ``wait_replicas`` asked for.
    unconfirmed: int = 0


def _all_encodable(entries: list[Write]) -> bool:
    """Whether every key encodes as UTF-8 (one C call for the whole batch)."""
    try:
        "".join([k for k, _ in entries]).encode()
    except UnicodeEncodeError:
        return False
    return True


class WritePath:
    """Batches of this instance's writes and Redis's answers to them (see module doc).

    ``on_drift`` is told of every stamp Redis refused as too far ahead of its clock,
    ``on_recorded`` of every pattern tombstone Redis recorded (its records are then
    to be cleaned up).
    """

    def __init__(
        self,
        replica: Replica,
        *,
        outbox: Outbox,
        patterns: PatternBook,
        calls: ScriptCalls,
        hot: HotTier,
        inline: bool,
        on_drift: Callable[[], None],
        on_recorded: Callable[[PatternTombstone], None],
    ) -> None:
        self._replica = replica
        self._outbox = outbox
        self._patterns = patterns
        self._calls = calls
        self._hot = hot
        self._inline = inline
        self._on_drift = on_drift
        self._on_recorded = on_recorded
        self.counters = WriteCounters()

    def prepare(
        self,
        entries: list[Write],
        patterns: list[PatternTombstone],
        ack_id: int,
        report: WriteReport,
        now: float,
    ) -> WriteBatch | None:
        """The script calls of one batch, its writes marked in flight (None: nothing to send)."""
        # Covered writes are gone here already; writing them would only lose. (Both
        # filters are per write; most batches skip them: no tombstone is known, and
        # keys that encode together encode one by one.)
        if self._replica.patterns:
            covered = self._patterns.covered
            entries = [(k, e) for k, e in entries if not covered(k, e.ts, e.origin)]
        if not _all_encodable(entries):
            entries = [(k, e) for k, e in entries if self._encodable(k, e, report)]
        patterns = [t for t in patterns if self._encodable(t.pattern, None, report)]
        calls = [self._calls.pattern(tomb, ack_id, now) for tomb in patterns]
        if entries:
            budget = MAX_INLINE_BATCH_BYTES if self._inline else 0
            try:
                known = self._patterns.version
                calls.append(self._calls.write(entries, ack_id, known=known, inline_budget=budget))
            except (TypeError, ValueError, OverflowError) as exc:  # pragma: no cover
                raise SerializationError(f"a queued write cannot be encoded: {exc}") from exc
        if not calls:
            return None
        self._outbox.sending(entries)
        return WriteBatch(entries, patterns, calls)

    def answered(
        self, batch: WriteBatch, results: list[Any], report: WriteReport, now: float
    ) -> list[Write]:
        """Apply Redis's answers to a batch here; returns the writes to recheck.

        ``results`` has one answer per call; a call Redis refused is a
        :class:`PeerError` (not raised).
        """
        for tomb, result in zip(batch.patterns, results, strict=False):
            report.count += self._pattern_result(tomb, result, report)
        answers: list[Any] = []
        if batch.entries:
            answer = results[len(batch.patterns)]
            # A refused script (OOM, a key of another type) refuses the whole batch.
            refused = isinstance(answer, PeerError)
            answers = [answer] * len(batch.entries) if refused else answer[:-1]
        recheck: list[Write] = []
        for (key, e), result in zip(batch.entries, answers, strict=True):
            outcome = self._entry_result(key, e, result, report, now)
            if outcome == 1:
                report.count += 1
                report.applied.append((key, e))
            elif outcome == -1:
                recheck.append((key, e))
        # A pattern tombstone this node has not heard of may cover these writes.
        self.counters.rechecked += len(recheck)
        return recheck

    def _encodable(self, key: str, e: Entry | None, report: WriteReport) -> bool:
        """False (the write is dropped) for a key no message can carry (lone surrogates)."""
        try:
            key.encode()
        except UnicodeEncodeError:
            self.counters.errors += 1
            report.errors.append(f"{key!r}: not encodable as UTF-8")
            log.error("dropping the write of %r: the key is not encodable as UTF-8", key)
            if e is not None:
                self._hot.drop(key, e)
            return False
        return True

    def _entry_result(
        self, key: str, e: Entry, result: Any, report: WriteReport, now: float
    ) -> int:
        """Apply one WRITE answer here; 1 applied, 0 not, -1 recheck the patterns."""
        if isinstance(result, PeerError):
            return self._write_failed(key, e, report, str(result))
        code = int(result[0])
        if code == 1:
            self.counters.applied += 1
            self._hot.committed(key, e, now)
            return 1
        if code == 0:
            self._lost_to(key, e, result[1], now)
            return 0
        if code == -1:
            return -1
        self._on_drift()
        why = "stamp ahead of the Redis server's clock by more than max_drift"
        return self._write_failed(key, e, report, why)

    def _write_failed(self, key: str, e: Entry, report: WriteReport, why: str) -> int:
        self.counters.errors += 1
        report.errors.append(f"{key!r}: {why}")
        log.error("Redis refused the write of %r: %s", key, why)
        self._hot.drop(key, e)
        return 0

    def _lost_to(self, key: str, e: Entry, current: object, now: float) -> None:
        """Redis holds an equal or newer write of ``key`` than ``e``."""
        try:
            winner = parse_stamp(current)
        except InvalidRecord:
            winner = (e.ts, e.origin)
        if winner == (e.ts, e.origin):  # the same write, retried: it is in Redis
            self._hot.committed(key, e, now)
            return
        self.counters.lost += 1
        with contextlib.suppress(ClockDriftError):
            self._replica.clock.observe(winner[0], now)
        local = self._replica.entries.get(key)
        if local is not None and (local.ts, local.origin) < winner:
            self._hot.drop(key, local)

    def _pattern_result(self, tomb: PatternTombstone, result: Any, report: WriteReport) -> int:
        if isinstance(result, PeerError):
            self.counters.errors += 1
            report.errors.append(f"pattern {tomb.pattern!r}: {result}")
            log.error("Redis refused the pattern tombstone %r: %s", tomb.pattern, result)
            return 0
        code = int(result[0])
        if code == 1:
            self._patterns.recorded(int(result[2]))
            self._on_recorded(tomb)
            return 1
        if code == -2:
            self._on_drift()
            self.counters.errors += 1
            why = "stamp ahead of the Redis server's clock"
            report.errors.append(f"pattern {tomb.pattern!r}: {why}")
        return 0

    def sent(self, batch: WriteBatch) -> None:
        """The batch was answered (or failed): its writes are no longer in flight."""
        self._outbox.sent(batch.entries)

    def put_back(
        self, entries: list[Write], patterns: list[PatternTombstone], *, requeue: bool
    ) -> None:
        """Writes that may not be in Redis: queued again, or dropped from this instance."""
        if requeue:
            self._outbox.requeue(entries, patterns)
        else:
            self.drop_writes(entries)  # a later read fetches whatever Redis holds
            self._outbox.requeue([], patterns)  # an invalidation is safe to retry later

    def unsure(self, entries: list[Write], report: WriteReport, *, requeue: bool) -> None:
        """Still rechecked after every attempt (tombstones keep arriving): never guess."""
        self.put_back(entries, [], requeue=requeue)
        if not requeue:
            report.errors.append(f"{len(entries)} writes raced with pattern invalidations")

    def drop_writes(self, entries: Iterable[Write]) -> None:
        """Drop these writes from the hot tier (Redis may not hold them)."""
        for key, e in entries:
            self._hot.drop(key, e)

    def outbox_lost(self) -> int:
        """Closing without reaching Redis: count what the outbox still holds as dropped."""
        lost = len(self._outbox.queued) + len(self._outbox.patterns)
        self.counters.dropped += lost
        return lost
