"""Reads from Redis: fetches into the hot tier, the cluster's key space, pattern cleanup.

A fetch reads records (HMGET) and hands them to the protocol, which merges them
under the rules of :mod:`._hottier` and may ask for a key again (an invalidation
overtook the reply). In redis mode the hot tier holds only what this instance read
or wrote, so the questions about the whole cluster's data go to Redis, by SCAN
(never KEYS) and the STAT script, with this instance's own unwritten writes laid over
the answer where they are newer (:meth:`~._protocol.RedisProtocol.key_view`,
:meth:`~._protocol.RedisProtocol.live_record`). ``size`` is counted at
most every :data:`SIZE_CACHE` seconds and shared through Redis, so N instances asking
cost one SCAN. The p2p and memory runtimes answer the same questions from their
replica (:mod:`crdtcache.runtime._keyspace`). A pattern tombstone's records are
deleted here too, page by page (:meth:`RedisKeySpace.clean`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final

from crdtcache._errors import PeerError
from crdtcache.core import NOT_HELD, Change, Entry, PatternTombstone, decode_value
from crdtcache.core._counter import Counter
from crdtcache.core._entry import Amended
from crdtcache.runtime.redis._commands import Commands
from crdtcache.runtime.redis._hottier import FETCH_ATTEMPTS
from crdtcache.runtime.redis._messages import stamp_text
from crdtcache.runtime.redis._protocol import RedisProtocol, literal_prefix
from crdtcache.runtime.redis._scripts import CLEAN, CLEANED, STAT
from crdtcache.runtime.redis._tables import batches
from crdtcache.runtime.redis._writer import BatchWriter
from crdtcache.store._snapshot import decode_snapshot, encode_snapshot

__all__ = ["SIZE_CACHE", "RedisKeySpace"]

log = logging.getLogger(__name__)

#: Seconds ``distributed.size`` is cached (in Redis, for every instance).
SIZE_CACHE: Final = 5.0

Write = tuple[str, Entry]


class RedisKeySpace:
    """Answers the runtime's key-space questions from Redis (see module doc)."""

    def __init__(
        self,
        protocol: RedisProtocol,
        commands: Commands,
        writer: BatchWriter,
        *,
        clock: Callable[[], float],
        load_patterns: Callable[[], Awaitable[Any]],
        dispatch: Callable[[], None],
    ) -> None:
        self.protocol = protocol
        self.commands = commands
        self.writer = writer
        self._clock = clock
        self._load_patterns = load_patterns
        self._dispatch = dispatch
        self._size: tuple[float, int] | None = None
        #: Pattern cleanups run, and the records they deleted.
        self.cleanups = 0
        self.records_cleaned = 0

    async def fetch(self, keys: Sequence[str], timeout: float) -> None:
        """Read ``keys`` from Redis into the hot tier (see :mod:`._hottier`'s race).

        Raises :class:`PeerError` if Redis cannot be reached within ``timeout``.
        """
        if not keys:
            return
        self.protocol.reading(keys)
        try:
            async with asyncio.timeout(timeout):
                await self._fetch(list(keys))
        except TimeoutError:
            self.protocol.note_down("read timed out")
            raise PeerError(f"{self.commands.where} did not answer within {timeout:g} s") from None
        finally:
            self.protocol.read_done(keys, self._clock())
            self._dispatch()

    async def _fetch(self, keys: list[str]) -> None:
        proto = self.protocol
        loop = asyncio.get_running_loop()
        for _ in range(FETCH_ATTEMPTS):
            token = proto.read_token()
            records = await self.read_records(keys)
            outcome = proto.read_reply(keys, records, token, self._clock())
            for key, e in outcome.unkept:
                # Served to this caller, who reads it right after this returns.
                loop.call_soon(proto.hot.drop, key, e)
            self._dispatch()
            if not outcome.again:
                return
            keys = outcome.again

    async def read_records(self, keys: Sequence[str]) -> list[Entry | None]:
        """The records of ``keys`` in Redis (None: absent or unreadable)."""
        layout = self.protocol.layout
        rows = await self.commands.read_rows([layout.record(key) for key in keys])
        record = self.protocol.record_of_row
        return [record(key, row) for key, row in zip(keys, rows, strict=True)]

    async def live(self, key: str) -> bool:
        """Whether ``key`` is live in Redis or in this node's unwritten writes (``delete``)."""
        record = (await self.read_records([key]))[0]
        return self.protocol.live_record(key, record, self._clock())

    async def keys(self, pattern: str) -> list[str]:
        """Live keys matching the glob, in Redis and in this node's unwritten writes."""
        proto = self.protocol
        proto.take()
        view: dict[str, tuple[int, str, bool]] = {}
        now = self._clock()
        async for page in self.scan(literal_prefix(pattern)):
            chosen = proto.matching(pattern, page)
            if chosen:
                rows = await self.commands.eval(STAT, [n for n, _ in chosen], [])
                for (_, key), row in zip(chosen, rows, strict=True):
                    seen = proto.stat_view(key, row, now)
                    if seen is not None:
                        view[key] = seen
        return proto.key_view(view, pattern, now)

    async def size(self) -> int:
        """Live records in Redis, counted by SCAN at most every :data:`SIZE_CACHE` s.

        The count is shared through Redis, so N instances asking cost one SCAN. On a
        Redis failure the last known count is returned.
        """
        now = time.monotonic()
        if self._size is not None and now - self._size[0] < SIZE_CACHE:
            return self._size[1]
        size_key = self.protocol.layout.size
        try:
            cached = await self.commands.command("GET", size_key)
            if cached is not None:
                count = int(cached)
            else:
                count = await self._count_live()
                await self.commands.command("SET", size_key, count, "PX", int(SIZE_CACHE * 1000))
        except (PeerError, ValueError) as exc:
            log.debug("distributed size not refreshed: %s", exc)
            return self._size[1] if self._size is not None else 0
        self._size = (now, count)
        return count

    async def _count_live(self) -> int:
        count = 0
        now = self._clock()
        async for page in self.scan(""):
            rows = await self.commands.eval(STAT, [n for n, _ in page], [])
            for (_, key), row in zip(page, rows, strict=True):
                seen = self.protocol.stat_view(key, row, now, count=False)
                count += seen is not None and seen[2]
        return count

    async def snapshot(self) -> bytes:
        """The cluster's data in Redis (plus this node's unwritten writes) as a snapshot."""
        await self._load_patterns()
        records: list[Write] = []
        async for page in self.scan(""):
            found = await self.read_records([k for _, k in page])
            records += [(k, r) for (_, k), r in zip(page, found, strict=True) if r is not None]
        now = self._clock()
        return encode_snapshot(self.protocol.snapshot_replica(records, now), now)

    async def restore(self, data: bytes) -> list[Change]:
        """Merge a snapshot into Redis (LWW per key: nothing newer is overwritten).

        Returns one change per key the snapshot changed in Redis, and per key of this
        hot tier a restored pattern removed. Raises like :func:`restore_snapshot`, or
        :class:`PeerError` if Redis fails part-way (what was written stays: each
        write is a CRDT merge, so restoring again completes it).
        """
        snap = decode_snapshot(data, max_value_bytes=self.protocol.engine.config.max_value_bytes)
        now = self._clock()
        newest = max([e.ts for _, e in snap.entries] + [p.ts for p in snap.patterns], default=0)
        self.protocol.replica.clock.check(newest, now)
        await self._load_patterns()
        changes = self.protocol.merge_patterns(snap.patterns, now)
        # Redis decides last-writer-wins by stamp alone: a touched value or a counter
        # from a p2p snapshot goes in as a plain value stamped like its last change.
        entries = [(k, plain(e)) for k, e in snap.entries if e.value is not NOT_HELD]
        applied: list[Write] = []
        patterns = list(snap.patterns)
        for batch in batches(entries) if entries else iter([[]]):
            await self.writer.write(batch, patterns, 0, requeue=False, applied=applied)
            patterns = []
        return changes + self.protocol.restored(applied, now)

    async def scan(self, literal: str) -> AsyncIterator[list[tuple[bytes, str]]]:
        """Pages of ``(record name, cache key)`` whose key starts with ``literal``."""
        layout = self.protocol.layout
        prefix = layout.records + literal.encode("utf-8", "surrogatepass")
        async for names in self.commands.scan(prefix):
            page = [(name, key) for name in names if (key := layout.key_of(name)) is not None]
            if page:
                yield page

    async def clean(self, tomb: PatternTombstone) -> None:
        """Delete the records ``tomb`` covers (SCAN under the prefix, never KEYS).

        ``CLEAN`` deletes only records stamped at or before the tombstone, so a write
        that landed after it survives; ``CLEANED`` then marks the tombstone clean.
        """
        stamp = stamp_text(tomb.ts, tomb.origin)
        self.cleanups += 1
        async for page in self.scan(literal_prefix(tomb.pattern)):
            chosen = [name for name, _ in self.protocol.matching(tomb.pattern, page)]
            if chosen:
                self.records_cleaned += int(await self.commands.eval(CLEAN, chosen, [stamp]))
        await self.commands.eval(CLEANED, [self.protocol.layout.patterns], [tomb.pattern, stamp])


def plain(e: Entry) -> Entry:
    """``e`` without its lineage (see :mod:`crdtcache.core._entry`): a counter as its int."""
    if type(e) is not Amended:
        return e
    value = decode_value(e.value) if type(e.value) is Counter else e.value
    return Entry(value, e.ts, e.origin, e.expires)
