"""Discovery that finds nothing, and discovery that runs several mechanisms at once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from crdtcache.discovery._base import Discovery, PeerAddress

__all__ = ["CombinedDiscovery", "NoDiscovery"]

log = logging.getLogger(__name__)


class NoDiscovery:
    """Finds no peer (``discovery="none"``): peers are wired by hand, or dial in.

    Implements :class:`~crdtcache.discovery.Discovery`; ``start`` and ``close`` do
    nothing and never raise.
    """

    def __repr__(self) -> str:
        return "NoDiscovery()"

    async def start(
        self,
        node_id: str,
        address: PeerAddress,
        on_found: Callable[[PeerAddress], None],
        on_lost: Callable[[str], None],
    ) -> None:
        """Report nothing, ever."""

    async def close(self) -> None:
        """Nothing to stop; idempotent."""


class CombinedDiscovery:
    """Runs several mechanisms side by side (e.g. mDNS plus a few seeds).

    Every part reports to the same callbacks. If a part fails to start, the parts
    already started are closed again and the error propagates.
    """

    def __init__(self, *parts: Discovery) -> None:
        self.parts: tuple[Discovery, ...] = parts

    def __repr__(self) -> str:
        return f"CombinedDiscovery({', '.join(map(repr, self.parts))})"

    async def start(
        self,
        node_id: str,
        address: PeerAddress,
        on_found: Callable[[PeerAddress], None],
        on_lost: Callable[[str], None],
    ) -> None:
        """Start every part in order; raises what the first failing part raises."""
        started: list[Discovery] = []
        try:
            for part in self.parts:
                await part.start(node_id, address, on_found, on_lost)
                started.append(part)
        except BaseException:
            await _close_all(started)
            raise

    async def close(self) -> None:
        """Close every part, even when one of them fails; idempotent."""
        await _close_all(list(self.parts))


async def _close_all(parts: list[Discovery]) -> None:
    results = await asyncio.gather(*(part.close() for part in parts), return_exceptions=True)
    for part, result in zip(parts, results, strict=True):
        if isinstance(result, Exception):  # close() must not raise: log what went wrong
            log.warning("closing %r failed: %s", part, result)
        elif isinstance(result, BaseException):
            raise result
