"""A client for a running node: what ``crdtcache get/set/stats`` use.

It connects through the same handshake as a peer (so ``secret=`` and ``ssl=`` protect
it too), then only asks for cache operations: it follows no gossip, is not dialled
back, and says goodbye so the node forgets it at once.
"""

from __future__ import annotations

import asyncio
import random
import ssl as _ssl
import time
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from crdtcache._errors import PeerError
from crdtcache.core import GossipEngine, HybridClock, Replica
from crdtcache.transport._node import Node, parse_address
from crdtcache.transport._tls import tls_option

__all__ = ["NodeClient"]


class NodeClient:
    """Ask one node at ``address`` (``host:port``) for cache operations.

    Use as ``async with NodeClient(address) as client``; raises :class:`PeerError` if
    the node cannot be reached or refuses the handshake within ``timeout`` seconds.
    """

    def __init__(
        self,
        address: str,
        *,
        cluster: str = "default",
        secret: bytes | Sequence[bytes] | None = None,
        ssl: _ssl.SSLContext | tuple[_ssl.SSLContext, _ssl.SSLContext] | None = None,
        timeout: float = 5.0,
    ) -> None:
        parse_address(address)
        self.address = address
        self.timeout = timeout
        engine = GossipEngine(
            Replica(HybridClock(f"client-{uuid.uuid4().hex[:8]}")), random.Random()
        )
        tls = tls_option(ssl)
        server_ctx, client_ctx = tls if tls is not None else (None, None)
        self._node = Node(
            engine,
            cluster=cluster,
            secret=secret,
            ssl_server=server_ctx,
            ssl_client=client_ctx,
            client_mode=True,
        )
        self._peer: str | None = None

    async def __aenter__(self) -> NodeClient:
        node = self._node
        await node.start()
        node.add_seed(self.address)
        deadline = time.monotonic() + self.timeout
        while not node.connected_peers():
            if time.monotonic() > deadline:
                await node.close()
                raise PeerError(f"could not connect to a node at {self.address}")
            await asyncio.sleep(0.005)
        self._peer = next(iter(node.connected_peers()))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._node.close()

    async def _ask(self, op: str, *args: Any) -> Any:
        if self._peer is None:
            raise PeerError("not connected (use 'async with NodeClient(...)')")
        return await self._node.request(self._peer, op, *args, timeout=self.timeout)

    @property
    def node_id(self) -> str | None:
        """The id of the node this client talks to."""
        return self._peer

    async def get(self, key: str) -> tuple[bool, Any]:
        """Return ``(found, value)`` for ``key`` as the node reads it."""
        result = await self._ask("get", key)
        return bool(result["found"]), result.get("value")

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Write ``key`` through the node (replicated as the node's own write)."""
        await self._ask("set", key, value, ttl)

    async def delete(self, key: str) -> bool:
        """Delete ``key`` through the node; True if it held a live value."""
        return bool(await self._ask("delete", key))

    async def stats(self) -> dict[str, Any]:
        """The node's statistics (``CacheStatistics.as_dict()``)."""
        result: dict[str, Any] = await self._ask("stats")
        return result
