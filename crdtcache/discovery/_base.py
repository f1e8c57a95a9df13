"""The interface every peer-discovery mechanism offers the transport."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = ["REPORT_INTERVAL", "Discovery", "PeerAddress"]

#: Seconds between two reports of the same peer. Reports repeat so that an address the
#: transport gave up on (a seed that was down, a peer it forgot after failures) is dialled
#: again; the transport de-duplicates addresses it is already dialling.
REPORT_INTERVAL: Final = 5.0


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """Where a peer may be reached. ``node_id`` is None when not known (static seeds).

    A discovered address is a hint, never trust: the peer still has to pass the
    transport's handshake.
    """

    host: str
    port: int
    node_id: str | None = None

    def __str__(self) -> str:
        # Bracket IPv6 hosts so the text parses back unambiguously and matches the
        # transport's own ``address`` spelling ("[::1]:7946", not "::1:7946").
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


class Discovery(Protocol):
    """Finds peers and reports them; one instance per node."""

    async def start(
        self,
        node_id: str,
        address: PeerAddress,
        on_found: Callable[[PeerAddress], None],
        on_lost: Callable[[str], None],
    ) -> None:
        """Announce ``node_id`` at ``address`` and begin reporting peers.

        ``on_found`` is called (in the event loop) for every peer seen, possibly more
        than once; ``on_lost`` with a node id when a peer announces it left.
        """
        ...

    async def close(self) -> None:
        """Stop announcing and looking; idempotent."""
        ...
