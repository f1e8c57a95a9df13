"""Redis mode's batch writer: this instance's writes on their way to Redis (asyncio).

What a batch holds and what each answer means is :mod:`._writes`' job; this module
only sends: write-behind and on-demand writes once per ``sync_interval`` while any
are queued (a failed batch goes back to the outbox and is retried after
:data:`~._commands.RECONNECT_MIN`, doubling up to :data:`~._commands.RECONNECT_MAX`),
write-through writes at once, with a wait for every live instance's acknowledgement
that ends when the protocol says so (:meth:`BatchWriter.acked`), never by polling.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from crdtcache._errors import PeerError
from crdtcache.core import Entry, PatternTombstone
from crdtcache.runtime.redis._commands import (
    RECONNECT_MAX,
    RECONNECT_MIN,
    Commands,
    reraise_cancellation,
)
from crdtcache.runtime.redis._protocol import RedisProtocol
from crdtcache.runtime.redis._tables import batches
from crdtcache.runtime.redis._writes import RECHECK_ATTEMPTS, WriteBatch, WriteReport

__all__ = ["PIPELINE_DEPTH", "BatchWriter"]

log = logging.getLogger(__name__)

#: Write-behind batches sent before the first one's answer is awaited.
PIPELINE_DEPTH: Final = 2

Write = tuple[str, Entry]


@dataclass(frozen=True, slots=True)
class _Flight:
    """One batch on its way to Redis: what was sent, and the task sending it."""

    batch: WriteBatch
    report: WriteReport
    send: asyncio.Task[tuple[list[Any], int]]


def _retrieved(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class BatchWriter:
    """Sends the protocol's batches with ``commands`` (see module doc).

    ``load_patterns`` reloads the pattern tombstones (a "recheck" answer needs them),
    ``dispatch`` acts on the protocol's events after each answer.
    """

    def __init__(
        self,
        protocol: RedisProtocol,
        commands: Commands,
        *,
        sync_interval: float,
        clock: Callable[[], float],
        load_patterns: Callable[[], Awaitable[Any]],
        dispatch: Callable[[], None],
    ) -> None:
        self.protocol = protocol
        self.commands = commands
        #: Seconds between write-behind batches (tests shorten it).
        self.sync_interval = sync_interval
        self._clock = clock
        self._load_patterns = load_patterns
        self._dispatch = dispatch
        self._wanted = asyncio.Event()
        self._reachable = asyncio.Event()
        self._ack_done: dict[int, asyncio.Future[None]] = {}
        # Acks asked for by conditional writes (._conditional), awaited by the next flush.
        self._awaited: list[int] = []
        # Set (and replaced) each time a batch is answered or goes back to the outbox:
        # what waits for another caller's batch (see write_landed) waits on it.
        self._answered = asyncio.Event()

    def wake(self) -> None:
        """Writes are queued: write them within ``sync_interval``."""
        self._wanted.set()

    def reachable(self) -> None:
        """Redis answers again (resubscribed): a failed batch is retried now, not after
        the rest of its back-off (after a failover, the writes queued meanwhile go to
        the promoted primary as soon as the instances find it)."""
        self._reachable.set()
        self._wanted.set()

    def acked(self, ack_id: int) -> None:
        """The waiter ``ack_id`` completed: its writer stops waiting."""
        done = self._ack_done.get(ack_id)
        if done is not None and not done.done():
            done.set_result(None)

    def await_on_flush(self, ack_id: int) -> None:
        """A conditional write asked for ``ack_id``: the next flush waits for it."""
        self._awaited.append(ack_id)
        if ack_id not in self._ack_done:
            self._ack_done[ack_id] = asyncio.get_running_loop().create_future()
        if not self.protocol.acks.missing(ack_id):
            self.acked(ack_id)

    async def flush(self, *, ack: bool, timeout: float) -> frozenset[str]:
        """Write-through: write the pending writes now and wait for every live instance.

        Also waits for the acknowledgements conditional writes asked for since the
        last flush. Returns the instances that did not acknowledge within ``timeout``.
        Raises :class:`PeerError` if Redis did not take the writes: they are then
        dropped from this instance too (nothing is left applied that Redis does not
        hold).
        """
        awaited, self._awaited = self._awaited, []
        if not awaited:
            return await self._flush_writes(ack=ack, timeout=timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        missing: set[str] = set()
        try:
            for ack_id in awaited:
                done = self._ack_done[ack_id]
                with contextlib.suppress(TimeoutError):
                    left = max(0.0, deadline - loop.time())
                    await asyncio.wait_for(asyncio.shield(done), left)
                missing |= self.protocol.acks.missing(ack_id)
        finally:
            for ack_id in awaited:
                self.protocol.acks.release(ack_id)
                self._ack_done.pop(ack_id, None)
        left = max(0.0, deadline - loop.time())
        return frozenset(missing) | await self._flush_writes(ack=ack, timeout=left)

    async def _flush_writes(self, *, ack: bool, timeout: float) -> frozenset[str]:
        """:meth:`flush` for the writes of the outbox."""
        proto = self.protocol
        proto.take()
        entries, patterns = proto.outbox.take_all()
        if not entries and not patterns:
            return frozenset()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        ack_id = proto.expect_acks() if ack else 0
        done: asyncio.Future[None] = loop.create_future()
        if ack_id:
            self._ack_done[ack_id] = done
        try:
            applied = await self._write_through(entries, patterns, ack_id, timeout)
            if not ack_id or not applied or not proto.acks.missing(ack_id):
                return frozenset()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(done), max(0.0, deadline - loop.time()))
            return proto.acks.missing(ack_id)
        finally:
            proto.acks.release(ack_id)
            self._ack_done.pop(ack_id, None)

    async def _write_through(
        self, entries: list[Write], patterns: list[PatternTombstone], ack_id: int, timeout: float
    ) -> int:
        """Write now, in batches; on any failure the writes are dropped here."""
        try:
            applied = 0
            # With wait_replicas, WAIT may take half the timeout: a healthy replica
            # confirms in about a round trip, and the other half leaves the answer
            # time to arrive (and be reported as such) before asyncio.timeout fires.
            confirm_ms = max(1, int(timeout * 500))
            async with asyncio.timeout(timeout):
                for batch in batches(entries) if entries else iter([[]]):
                    applied += await self.write(
                        batch, patterns, ack_id, requeue=False, confirm_ms=confirm_ms
                    )
                    patterns = []
            return applied
        except PeerError:
            self.protocol.writes.drop_writes(entries)  # also batches before the failed one
            raise
        except TimeoutError:
            self.protocol.writes.drop_writes(entries)
            raise PeerError(
                f"{self.commands.where} did not answer within {timeout:g} s; "
                "the write is dropped from this instance and may or may not be in Redis"
            ) from None

    async def run(self) -> None:
        """Write-behind: one pipeline per ``sync_interval`` while writes are queued."""
        wanted = self._wanted
        delay = RECONNECT_MIN
        while True:
            reraise_cancellation()
            await wanted.wait()
            await asyncio.sleep(self.sync_interval)
            wanted.clear()
            self._reachable.clear()  # set from here on: the back-off below is cut short
            try:
                await self.write_outbox()
                delay = RECONNECT_MIN
            except Exception as exc:  # the flusher must outlive any one failure
                reraise_cancellation()
                if isinstance(exc, PeerError):
                    log.warning("write-behind batch not written, retry in %.2f s: %s", delay, exc)
                else:
                    log.exception("write-behind batch failed, retry in %.2f s", delay)
                wanted.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._reachable.wait(), delay)
                delay = min(delay * 2, RECONNECT_MAX)

    def _batch_done(self) -> None:
        """A batch left the air (answered, failed or abandoned): wake its waiters."""
        self._answered.set()
        self._answered = asyncio.Event()

    async def write_landed(self, key: str) -> None:
        """Write what is queued, then wait until no write of ``key`` is still on its
        way to Redis.

        :meth:`write_outbox` alone is not enough: the write-behind task may have taken
        a batch out of the outbox and not have its answer yet. A conditional write
        decided by Redis before that batch lands would judge the key by an older
        record (an ``add`` after a ``delete`` refused, an ``incr`` after a ``set``
        counting from 0).
        Raises :class:`PeerError` like :meth:`write_outbox`.
        """
        outbox = self.protocol.outbox
        while True:
            await self.write_outbox()
            if key not in outbox.inflight and key not in outbox.queued:
                return
            await self._answered.wait()

    async def write_outbox(self) -> None:
        """Write everything queued, :data:`PIPELINE_DEPTH` batches in flight at once;
        what fails goes back to the outbox.

        While Redis runs one batch's script, the next is prepared and sent and the
        previous one's answer applied: with two cores the client's and the server's
        work overlap instead of taking turns. Batches may then be applied in any
        order, which last-writer-wins makes harmless (an older write of a key that
        lands after a newer one loses to it).
        """
        outbox = self.protocol.outbox
        self.protocol.take()
        flights: collections.deque[_Flight] = collections.deque()
        try:
            while outbox or flights:
                while outbox and len(flights) < PIPELINE_DEPTH:
                    entries, patterns = outbox.next_batch()
                    flight = self._begin(entries, patterns, 0, WriteReport(), 0, 0)
                    if flight is not None:
                        flights.append(flight)
                if not flights:
                    continue
                flight = flights.popleft()
                recheck, _ = await self._finish(flight, requeue=True)
                if recheck:  # rare: pattern tombstones were recorded meanwhile
                    await self._reload_for(recheck, requeue=True)
                    await self.write(recheck, [], 0, requeue=True)
        finally:
            while flights:  # cancelled or failed: the others go back too
                self._abandon(flights.popleft())

    def _begin(
        self,
        entries: list[Write],
        patterns: list[PatternTombstone],
        ack_id: int,
        report: WriteReport,
        replicas: int,
        confirm_ms: int,
    ) -> _Flight | None:
        """Prepare one batch (its writes are in flight from here) and start sending it."""
        batch = self.protocol.writes.prepare(entries, patterns, ack_id, report, self._clock())
        if batch is None:
            return None
        send = asyncio.get_running_loop().create_task(
            self.commands.pipeline_replicated(batch.calls, replicas, confirm_ms)
        )
        send.add_done_callback(_retrieved)  # an abandoned one's failure is of no interest
        return _Flight(batch, report, send)

    async def _finish(self, flight: _Flight, *, requeue: bool) -> tuple[list[Write], int]:
        """Apply a batch's answers here; returns the writes to recheck and how many
        replicas confirmed the batch. On a failure the batch goes back (``requeue``)
        or is dropped here, and :class:`PeerError` is raised."""
        writes = self.protocol.writes
        batch = flight.batch
        try:
            results, confirmed = await flight.send
        except (PeerError, asyncio.CancelledError):
            writes.put_back(batch.entries, batch.patterns, requeue=requeue)
            raise
        finally:
            writes.sent(batch)
            self._batch_done()
        recheck = writes.answered(batch, results, flight.report, self._clock())
        self._dispatch()
        return recheck, confirmed

    def _abandon(self, flight: _Flight) -> None:
        """A batch whose answer nobody will wait for: queued again (sending it twice
        is harmless: an equal stamp is the same write)."""
        flight.send.cancel()
        writes = self.protocol.writes
        writes.put_back(flight.batch.entries, flight.batch.patterns, requeue=True)
        writes.sent(flight.batch)
        self._batch_done()

    async def _reload_for(self, recheck: list[Write], *, requeue: bool) -> None:
        """Reload the pattern tombstones before ``recheck`` is written again.

        Meanwhile the writes are still this node's, not in Redis: in flight, where
        reads (``keys``, ``delete``) and "is everything written" look for them.
        """
        outbox = self.protocol.outbox
        outbox.sending(recheck)
        try:
            await self._load_patterns()
        except (PeerError, asyncio.CancelledError):
            self.protocol.writes.put_back(recheck, [], requeue=requeue)
            raise
        finally:
            outbox.sent(recheck)
            self._batch_done()

    async def write(
        self,
        entries: list[Write],
        patterns: list[PatternTombstone],
        ack_id: int,
        *,
        requeue: bool,
        applied: list[Write] | None = None,
        confirm_ms: int = 0,
    ) -> int:
        """Write one batch; returns how many writes Redis applied (and announced).

        On a connection failure the batch goes back to the outbox (``requeue``) or is
        dropped from this instance; either way :class:`PeerError` is raised. With
        ``confirm_ms`` and the URL's ``wait_replicas`` set, :class:`PeerError` is also
        raised when fewer replicas confirmed having the batch within ``confirm_ms``
        (Redis ``WAIT``): it is applied on the primary and announced, but a failover
        could lose it (:mod:`._runtime`, "what a failover loses").
        """
        writes = self.protocol.writes
        report = WriteReport()
        replicas = self.commands.wait_replicas if confirm_ms else 0
        unconfirmed = 0
        for _ in range(RECHECK_ATTEMPTS):
            flight = self._begin(entries, patterns, ack_id, report, replicas, confirm_ms)
            if flight is None:
                break
            recheck, confirmed = await self._finish(flight, requeue=requeue)
            unconfirmed = max(unconfirmed, replicas - confirmed)
            if not recheck:
                break
            await self._reload_for(recheck, requeue=requeue)
            entries, patterns = recheck, []
        else:
            writes.unsure(entries, report, requeue=requeue)
        if applied is not None:
            applied += report.applied
        if report.errors and not requeue:
            raise PeerError("Redis refused writes: " + "; ".join(report.errors[:3]))
        if unconfirmed and report.count:
            self.protocol.writes.counters.unconfirmed += report.count
            raise PeerError(
                f"{self.commands.where}: the write is applied on the primary, but "
                f"{unconfirmed} of the {replicas} replicas asked for (wait_replicas) did "
                f"not confirm it within {confirm_ms} ms; a failover now could lose it"
            )
        return report.count
