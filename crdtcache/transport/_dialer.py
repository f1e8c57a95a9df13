"""Keeping links to the addresses a node wants: dial, wait for the drop, back off, redial.

One task per wanted address. Seeds are wanted for as long as the node runs. Every
other address is a *hint* (from discovery, a peer's peer list, or a peer that dialled
this node) and hints come from anyone who can talk to the node, so they are bounded:

* at most :data:`MAX_HINTS_PER_SOURCE` wanted at once per peer that named them, and
  :data:`MAX_HINTED_DIALS` in all (discovery, configured by the operator, has only
  the latter); more are ignored and counted;
* a hint that never led to a link is given up after ``forget_silent_after`` seconds
  (:data:`FORGET_SILENT_AFTER`), one that did after :data:`FORGET_AFTER` seconds of
  failures (either may be reported again);
* dialled links do not count against the node's cap of accepted ones: hints cannot
  lock inbound peers out.

A refused secret or certificate does not fix itself in 50 ms, so an
:class:`~crdtcache.core._link.IdentityError` (or a hello the peer refused,
:class:`~crdtcache.core._link.LinkRefused`) backs off to the maximum at once, and a
link that drops within :data:`STABLE_AFTER` seconds counts as a failed dial (no redial
storm against a peer that drops every link). When both ends know each other the mesh
decides which one dials first (:meth:`~crdtcache.core._link.Mesh.defers_to`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from crdtcache._errors import PeerError
from crdtcache.core._link import IdentityError, LinkRefused, SelfDial
from crdtcache.discovery._base import PeerAddress

if TYPE_CHECKING:
    from crdtcache.transport._node import Node

__all__ = [
    "DISCOVERY",
    "FORGET_AFTER",
    "FORGET_SILENT_AFTER",
    "INITIAL_BACKOFF",
    "MAX_BACKOFF",
    "MAX_HINTED_DIALS",
    "MAX_HINTS_PER_SOURCE",
    "Dialer",
]

log = logging.getLogger(__name__)

#: Redial backoff bounds, seconds.
INITIAL_BACKOFF: Final = 0.05
MAX_BACKOFF: Final = 5.0
#: Seconds to keep redialling a hinted address that was linked before (not a seed).
FORGET_AFTER: Final = 120.0
#: Seconds to keep redialling a hinted address that never led to a link.
FORGET_SILENT_AFTER: Final = 10.0
#: Hinted addresses wanted at once, per peer that named them and in all (seeds are
#: not counted).
MAX_HINTS_PER_SOURCE: Final = 32
MAX_HINTED_DIALS: Final = 256
#: The source of the addresses discovery reports.
DISCOVERY: Final = "discovery"
#: Seconds (before jitter) a node waits for a peer that dials first.
DEFER_DELAY: Final = 0.1
#: A link that lived less than this many seconds counts as a failure for the backoff:
#: a peer that drops every link at once (refused gossip, a bug) is not redialled in a
#: tight loop.
STABLE_AFTER: Final = 1.0


@dataclass(slots=True)
class _Wanted:
    address: PeerAddress
    seed: bool
    #: Who named the address (a peer's id, or DISCOVERY); None for a seed.
    source: str | None = None
    #: Whether a dial of it ever opened a link.
    linked: bool = False
    task: asyncio.Task[None] | None = None


class Dialer:
    """The addresses a :class:`~crdtcache.transport._node.Node` keeps links to."""

    def __init__(self, node: Node, rng: random.Random) -> None:
        self.node = node
        self.rng = rng
        #: Set once the node listens: a hello sent before would announce port 0.
        self.bound = asyncio.Event()
        self.wanted: dict[str, _Wanted] = {}
        #: Seconds a hint that never led to a link is redialled (FORGET_SILENT_AFTER).
        self.forget_silent_after = FORGET_SILENT_AFTER
        #: Hints ignored because their source, or the node, had as many as it may.
        self.ignored_hints = 0

    def found(self, address: PeerAddress) -> None:
        """Discovery reported ``address`` (our own is ignored)."""
        if address.node_id != self.node.node_id:
            self.want(address, seed=False, source=DISCOVERY)

    def lost(self, node_id: str) -> None:
        """Discovery says ``node_id`` left: stop dialling it (seeds excepted)."""
        for key, wanted in list(self.wanted.items()):
            if wanted.address.node_id == node_id and not wanted.seed:
                self.wanted.pop(key, None)
                if wanted.task is not None:
                    wanted.task.cancel()

    def want(self, address: PeerAddress, *, seed: bool, source: str | None = None) -> None:
        """Keep a link to ``address`` (idempotent; learns its node id if now known).

        A hint (not a ``seed``) names its ``source``; beyond the caps it is ignored.
        """
        if self.node._closing:
            return
        key = str(address)
        if key == self.node.address:
            return
        current = self.wanted.get(key)
        if current is not None:
            if address.node_id and not current.address.node_id:
                current.address = address
            return
        if not seed and not self._room_for(source):
            self.ignored_hints += 1
            self.node.links._say(
                "ignored hints",
                logging.INFO,
                "not dialling %s (named by %s): as many hinted addresses wanted as allowed",
                key,
                source,
            )
            return
        wanted = _Wanted(address, seed, None if seed else source)
        self.wanted[key] = wanted
        wanted.task = self.node._spawn(self._maintain(key, wanted))

    def _room_for(self, source: str | None) -> bool:
        hints = [w for w in self.wanted.values() if not w.seed]
        if len(hints) >= MAX_HINTED_DIALS:
            return False
        if source == DISCOVERY:
            return True
        return sum(1 for w in hints if w.source == source) < MAX_HINTS_PER_SOURCE

    async def _maintain(self, key: str, wanted: _Wanted) -> None:
        node = self.node
        backoff = INITIAL_BACKOFF
        failing_since: float | None = None
        await self.bound.wait()
        while not node._closing:
            node_id = wanted.address.node_id
            existing = node.link_to(node_id) if node_id else None
            if existing is not None:
                backoff = await self._hold(existing.closed, backoff)
                continue
            if failing_since is None and node.mesh.defers_to(node_id):
                await asyncio.sleep(DEFER_DELAY * (1 + self.rng.random()))
                if node_id in node.mesh.links:
                    continue
            try:
                conn = await node.dial(wanted.address)
            except SelfDial:
                self.wanted.pop(key, None)
                return
            except PeerError as exc:
                now = node._clock()
                failing_since = failing_since or now
                patience = FORGET_AFTER if wanted.linked else self.forget_silent_after
                if not wanted.seed and now - failing_since > patience:
                    log.info("giving up on %s after %.0f s of failures", key, now - failing_since)
                    self.wanted.pop(key, None)
                    return
                if isinstance(exc, IdentityError | LinkRefused):
                    backoff = MAX_BACKOFF  # the operator may be rotating: retry slowly
                log.debug("dial %s failed: %s; retrying in %.2f s", key, exc, backoff)
                await asyncio.sleep(backoff * (0.5 + self.rng.random()))
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            failing_since = None
            if node._closing:
                return
            if conn is not None:
                wanted.linked = True
                if wanted.address.node_id is None and conn.peer is not None:
                    host, port = wanted.address.host, wanted.address.port
                    wanted.address = PeerAddress(host, port, conn.peer)
                backoff = await self._hold(conn.closed, backoff)

    async def _hold(self, closed: asyncio.Future[None], backoff: float) -> float:
        """Wait for a link to close; return the backoff for the next dial."""
        opened = self.node._clock()
        await asyncio.shield(closed)
        if self.node._clock() - opened >= STABLE_AFTER:
            return INITIAL_BACKOFF
        await asyncio.sleep(backoff * (0.5 + self.rng.random()))
        return min(backoff * 2, MAX_BACKOFF)
