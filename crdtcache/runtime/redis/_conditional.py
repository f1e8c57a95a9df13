"""Redis mode's conditional writes: ``add``, ``incr`` and ``touch``, decided by Redis.

A conditional write cannot be applied here first and written later like a ``set``:
whether it happens depends on what Redis holds. So each is one script call
(:data:`~._scripts.ADD`, :data:`~._scripts.INCR`, :data:`~._scripts.TOUCH`) that
checks and writes one record atomically -- so of two instances adding one key at once,
exactly one succeeds -- under the same rules as ``WRITE``: the new stamp must beat the
record's, a stamp too far ahead of the server's clock is refused, and a caller that
has not loaded every pattern tombstone is told to reload them first. A record counts
as live if it holds a value, has not expired by the server's clock and is not
covered by the newest pattern tombstone this instance knows to match the key.

:class:`ConditionalCalls` builds the calls and reads the answers without IO;
:class:`ConditionalWriter` sends them, retries (a newer record stamp: this clock
observes it and stamps again; unknown patterns: reload) -- after writing this
instance's queued writes, which Redis must see first -- then hands the outcome to
the protocol (:meth:`~._protocol.RedisProtocol.conditional_done`), which updates the
hot tier and reports the change. With write-through, the write asks for
acknowledgements, which the cache's next flush waits for (:mod:`._writer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from crdtcache._errors import ClockDriftError, PeerError
from crdtcache.core import Entry
from crdtcache.core._entry import NO_STAMP
from crdtcache.core._format import InvalidRecord, blob_stored, stored_blob
from crdtcache.runtime.redis._commands import Commands
from crdtcache.runtime.redis._messages import (
    EXPIRED_GRACE,
    MAX_INLINE_VALUE_BYTES,
    Call,
    parse_expiry,
    parse_stamp,
    stamp_text,
    write_part,
    writes_head,
)
from crdtcache.runtime.redis._protocol import RedisProtocol
from crdtcache.runtime.redis._scripts import ADD, INCR, TOUCH
from crdtcache.runtime.redis._writer import BatchWriter
from crdtcache.runtime.redis._writes import RECHECK_ATTEMPTS

__all__ = ["ATTEMPTS", "ConditionalCalls", "ConditionalWriter", "NotAnInteger"]

#: Script calls one conditional write may take (stamps overtaken, patterns reloaded).
ATTEMPTS: Final = RECHECK_ATTEMPTS + 3
_INT64: Final = 1 << 63


class NotAnInteger(ValueError):
    """``incr`` met a value that is not a 64-bit int, or a result beyond 64 bits."""


@dataclass(frozen=True, slots=True)
class _Answer:
    """What one call's answer means: its code, and the answer itself."""

    code: int
    raw: list[Any]


class ConditionalCalls:
    """Builds the conditional scripts' calls and reads their answers (no IO)."""

    def __init__(self, protocol: RedisProtocol) -> None:
        self._proto = protocol

    def cover(self, key: str) -> str:
        """The stamp text of the newest known pattern tombstone matching ``key`` ("")."""
        proto = self._proto
        newest = NO_STAMP
        for tomb in proto.replica.patterns.values():
            if (tomb.ts, tomb.origin) > newest and proto.patterns.matcher(tomb.pattern)(key):
                newest = (tomb.ts, tomb.origin)
        return "" if newest == NO_STAMP else stamp_text(*newest)

    def _head(self, ack: int) -> list[Any]:
        proto = self._proto
        layout = proto.layout
        return [
            str(proto.patterns.version),
            proto.replica.clock.max_drift_ms,
            layout.inv_channel,
            writes_head(proto.node, ack),
        ]

    def add(self, key: str, e: Entry, ack: int) -> Call:
        """The ADD call writing ``e`` (this node's new entry of ``key``) if nothing is live."""
        layout = self._proto.layout
        blob = stored_blob(e.value)
        inline = blob if len(blob) <= MAX_INLINE_VALUE_BYTES else None
        args = [
            *self._head(ack),
            stamp_text(e.ts, e.origin),
            blob,
            "" if e.expires is None else repr(e.expires),
            _expire_at(e.expires),
            write_part(key, e, inline),
            self.cover(key),
        ]
        return ADD, [layout.patterns, layout.record(key)], args

    def incr(self, key: str, ts: int, delta: int, expires: float | None, ack: int) -> Call:
        """The INCR call adding ``delta`` at stamp ``ts`` (``expires`` for a new record)."""
        proto = self._proto
        layout = proto.layout
        prefix = b"\x96" + b"".join(msgpack.packb(x) for x in (key, ts, proto.node))
        args = [
            *self._head(ack),
            stamp_text(ts, proto.node),
            str(delta >> 32),
            str(delta & 0xFFFFFFFF),
            "" if expires is None else repr(expires),
            _expire_at(expires),
            prefix,
            self.cover(key),
        ]
        return INCR, [layout.patterns, layout.record(key)], args

    def touch(self, key: str, ts: int, expires: float | None, ack: int) -> Call:
        """The TOUCH call giving ``key``'s live value the expiry ``expires`` at stamp ``ts``."""
        proto = self._proto
        layout = proto.layout
        part = write_part(key, Entry(None, ts, proto.node, expires), None)
        args = [
            *self._head(ack),
            stamp_text(ts, proto.node),
            "" if expires is None else repr(expires),
            _expire_at(expires),
            part[:-1],  # without its last item (nil): the script appends the value
            self.cover(key),
            MAX_INLINE_VALUE_BYTES,
        ]
        return TOUCH, [layout.patterns, layout.record(key)], args

    @staticmethod
    def answer(raw: Any) -> _Answer:
        """The code of a script's answer (see :mod:`._scripts`)."""
        return _Answer(int(raw[0]), list(raw))


def _expire_at(expires: float | None) -> int | str:
    """A value record's PEXPIREAT (see :mod:`._messages`): "" for none."""
    return "" if expires is None else math.ceil((expires + EXPIRED_GRACE) * 1000)


class ConditionalWriter:
    """Sends conditional writes (see module doc); every Redis failure is a :class:`PeerError`.

    ``acks``: ask every live instance to acknowledge (write-through); the cache's next
    flush waits for them.
    """

    def __init__(
        self,
        protocol: RedisProtocol,
        commands: Commands,
        writer: BatchWriter,
        *,
        clock: Callable[[], float],
        load_patterns: Callable[[], Awaitable[Any]],
        dispatch: Callable[[], None],
        acks: bool,
    ) -> None:
        self.protocol = protocol
        self.calls = ConditionalCalls(protocol)
        self.commands = commands
        self.writer = writer
        self._clock = clock
        self._load_patterns = load_patterns
        self._dispatch = dispatch
        self._acks = acks
        # One conditional write per key at a time from this instance: their stamps then
        # reach Redis in the order they were issued, and none loses to a sibling's.
        self._busy: dict[str, list[Any]] = {}  # key -> [lock, callers]

    async def add(self, key: str, stored: object, expires: float | None) -> bool:
        """Write ``key`` if Redis holds no live value for it; whether it wrote."""
        node = self.protocol.node

        def call(ts: int, ack: int) -> Call:
            return self.calls.add(key, Entry(stored, ts, node, expires), ack)

        done = await self._run(key, call)
        if done is None:
            return False
        ts, _ = done
        self.protocol.conditional_done(key, Entry(stored, ts, node, expires), self._clock())
        self._dispatch()
        return True

    async def incr(self, key: str, delta: int, expires: float | None) -> int:
        """Add ``delta`` to the int Redis holds at ``key``; the new value.

        Raises :class:`NotAnInteger` for a value that is not a 64-bit int, or a result
        that would not be one (nothing changes then).
        """
        if not -_INT64 <= delta < _INT64:
            raise NotAnInteger("incr and decr in redis mode take a delta of 64 bits")
        done = await self._run(key, lambda ts, ack: self.calls.incr(key, ts, delta, expires, ack))
        assert done is not None  # INCR writes whatever the record holds, or refuses
        ts, answer = done
        try:
            stored = blob_stored(bytes(answer.raw[1]))
            expiry = parse_expiry(answer.raw[2] or None)
        except InvalidRecord as exc:  # pragma: no cover - the script packs an int64
            raise PeerError(f"{self.commands.where} answered incr with junk: {exc}") from None
        assert type(stored) is int
        entry = Entry(stored, ts, self.protocol.node, expiry)
        self.protocol.conditional_done(key, entry, self._clock())
        self._dispatch()
        return stored

    async def touch(self, key: str, expires: float | None) -> bool:
        """Give ``key``'s live value in Redis a new expiry; False if it has none."""
        done = await self._run(key, lambda ts, ack: self.calls.touch(key, ts, expires, ack))
        if done is None:
            return False
        ts, answer = done
        replaced: tuple[int, str] | None = None
        with contextlib.suppress(InvalidRecord):
            replaced = parse_stamp(answer.raw[2])
        entry = Entry(None, ts, self.protocol.node, expires)
        self.protocol.conditional_done(key, entry, self._clock(), replaced=replaced)
        self._dispatch()
        return True

    async def _run(self, key: str, build: Callable[[int, int], Call]) -> tuple[int, _Answer] | None:
        """:meth:`_decide`, one call per key at a time."""
        held = self._busy.get(key)
        if held is None:
            held = self._busy[key] = [asyncio.Lock(), 0]
        held[1] += 1  # callers holding or waiting: the lock goes with the last
        try:
            async with held[0]:
                return await self._decide(key, build)
        finally:
            held[1] -= 1
            if not held[1]:
                del self._busy[key]

    async def _decide(
        self, key: str, build: Callable[[int, int], Call]
    ) -> tuple[int, _Answer] | None:
        """Call until Redis decides; ``(stamp, answer)`` if it wrote, None if it declined.

        Raises :class:`NotAnInteger` (incr on a value that is not an int) and
        :class:`PeerError` (Redis unreachable or refusing, a stamp too far ahead of its
        clock, or no decision within :data:`ATTEMPTS` calls).
        """
        proto = self.protocol
        clock = proto.replica.clock
        # This instance's own writes of the key not in Redis yet come first -- queued or
        # in a batch the write-behind task is sending: Redis must decide on them too
        # (a write-behind set or delete, then an add of the same key).
        await self.writer.write_landed(key)
        for _ in range(ATTEMPTS):
            ts = clock.tick(self._clock())
            ack = proto.expect_acks() if self._acks else 0
            try:
                raw = await self.commands.eval(*build(ts, ack))
                answer = ConditionalCalls.answer(raw)
            except BaseException:
                proto.acks.release(ack)
                raise
            if answer.code == 1:
                if ack:
                    self.writer.await_on_flush(ack)
                return ts, answer
            proto.acks.release(ack)
            if answer.code in (2, 3):
                return None
            if answer.code == 0:  # a newer stamp is there (a lagging clock): stamp above it
                with contextlib.suppress(InvalidRecord, ClockDriftError):
                    clock.observe(parse_stamp(answer.raw[1])[0], self._clock())
            elif answer.code == -1:  # a pattern tombstone this instance has not loaded
                await self._load_patterns()
            elif answer.code == -2:
                proto.counters.refused_drift += 1
                raise PeerError(
                    f"{self.commands.where} refused the write: its stamp is ahead of the "
                    "server's clock by more than max_drift"
                )
            elif answer.code in (-3, -4):
                raise NotAnInteger(
                    "the value is not an int of 64 bits"
                    if answer.code == -3
                    else "the result would not fit in 64 bits"
                )
            else:  # pragma: no cover - the scripts answer nothing else
                raise PeerError(f"{self.commands.where}: unexpected answer {answer.raw!r}")
        raise PeerError(
            f"{self.commands.where}: no decision after {ATTEMPTS} attempts "
            "(stamps or pattern tombstones kept changing); nothing was written"
        )
