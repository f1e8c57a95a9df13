"""The runtime of ``backend="p2p"``: the node, and the key space from the replica."""

from __future__ import annotations

import ssl as _ssl
from collections.abc import Callable, Sequence

from crdtcache.core import GossipEngine
from crdtcache.runtime._keyspace import ReplicaKeySpace
from crdtcache.runtime._protocol import (
    AdminHandler,
    ChangeListener,
    EvictionListener,
    PeerListener,
    RuntimeStatistics,
    engine_peers,
)
from crdtcache.store._persistence import Persistence
from crdtcache.transport import Network, Node, make_node

__all__ = ["P2PRuntime"]


class P2PRuntime(ReplicaKeySpace):
    """A :class:`~crdtcache.transport.Node` seen through the cache's ``Runtime`` protocol.

    Every node's replica holds every key's stamp, so the key-space questions are
    answered locally; an evicted value is fetched again from a peer.
    """

    keeps_stubs = True

    def __init__(self, node: Node, clock: Callable[[], float]) -> None:
        super().__init__(node.engine.replica, clock, node.engine.config.max_value_bytes)
        self.node = node
        self.engine: GossipEngine = node.engine
        self._persistence: Persistence | None = None

    @classmethod
    def build(
        cls,
        engine: GossipEngine,
        *,
        clock: Callable[[], float],
        listen: str,
        cluster: str,
        discovery: str,
        seeds: Sequence[str],
        secret: bytes | Sequence[bytes] | None,
        ssl: _ssl.SSLContext | tuple[_ssl.SSLContext, _ssl.SSLContext] | None,
        network: Network | None = None,
    ) -> P2PRuntime:
        """A node for ``engine`` from the cache's p2p options (see ``transport.make_node``).

        ``network`` replaces TCP (a :class:`crdtcache.testing.MemoryNetwork` passes its own).
        """
        node = make_node(
            engine,
            listen=listen,
            cluster=cluster,
            discovery=discovery,
            seeds=seeds,
            secret=secret,
            ssl=ssl,
            clock=clock,
            network=network,
        )
        return cls(node, clock)

    @property
    def address(self) -> str | None:
        """``host:port`` the node listens on (after :meth:`start`)."""
        return self.node.address

    async def start(self) -> None:
        """Bind, start ticking and discovering."""
        await self.node.start()

    async def close(self) -> None:
        """Store own writes (with ``persist_path``), flush to peers, say goodbye, stop."""
        if self._persistence is not None and self.engine.awaiting_durability:
            await self._persistence.flush(self.engine.replica)
        await self.node.close()

    def keep_durable(self, persistence: Persistence) -> None:
        """Let this node's own writes leave only once ``persistence`` stored them.

        A node killed after sending a write it had not stored would restart without
        it while its peers hold it; its marks would then claim it, and nobody would
        ever send it back (see ``GossipEngine.durable``). So a write waits for the next
        batch, which it asks for at once: a group commit, one transaction per burst.
        """
        self._persistence = persistence
        self.engine.durable = persistence.durable_own
        persistence.on_durable = self._stored

    def _stored(self, ts: int) -> None:
        self.engine.made_durable(ts)
        self.node.wake()

    def listen(
        self,
        on_changes: ChangeListener,
        on_peer: PeerListener,
        on_evict: EvictionListener | None = None,
    ) -> None:
        """Register the change and peer callbacks (a p2p node evicts nothing by itself)."""
        self.node.listen(on_changes, on_peer)

    def serve_admin(self, handler: AdminHandler) -> None:
        """Serve ``crdtcache get/set/stats`` from clients connected to the node."""
        self.node.admin = handler

    def wake(self) -> None:
        """Flush a queued local write soon (once stored, with ``persist_path``)."""
        if self._persistence is not None and self.engine.awaiting_durability:
            self._persistence.request()
        self.node.wake()

    async def flush(self, *, ack: bool, timeout: float) -> frozenset[str]:
        """Push queued deltas; with ``ack``, wait for every live linked peer.

        With ``persist_path`` the write is stored first: an acknowledged write-through
        write survives this node's crash.
        """
        if self._persistence is not None and self.engine.awaiting_durability:
            await self._persistence.flush(self.engine.replica)
        return await self.node.flush(ack=ack, timeout=timeout)

    async def fetch(self, keys: Sequence[str], timeout: float) -> None:
        """Ask live peers for values this node holds only as stubs."""
        await self.node.fetch(keys, timeout)

    def statistics(self) -> RuntimeStatistics:
        """The node's traffic, and its peers as the engine sees them."""
        transport = self.node.statistics()
        instances, peers = engine_peers(self.engine, transport.peer_addresses)
        return RuntimeStatistics(
            bytes_sent=transport.bytes_sent,
            bytes_received=transport.bytes_received,
            frames_sent=transport.frames_sent,
            frames_received=transport.frames_received,
            frames_dropped=transport.frames_dropped,
            connections=transport.connections,
            instances=instances,
            peers=peers,
            protocol_errors=transport.protocol_errors,
            refused_connections=transport.refused_connections,
        )
