"""Peers over a network: streams (TCP or in memory), connections and the p2p node.

The node drives the sans-IO gossip engine and link sessions of :mod:`crdtcache.core`
over the stream seam of :mod:`~crdtcache.transport._stream`; a
:class:`~crdtcache.transport._network.Network` gives it streams (:class:`TcpNetwork`,
or a :class:`~crdtcache.transport._memory.MemoryHub` in tests).

Security: ``secret=`` authenticates peers and frames with a shared cluster secret (see
:mod:`crdtcache.wire._auth` for what it does and does not guarantee); ``ssl=``
runs mutual TLS 1.3 with each node's id in its certificate (:func:`tls_contexts`,
:func:`node_id_uri`). Both may be combined.
"""

from __future__ import annotations

import ssl as _ssl
import time
from collections.abc import Callable, Sequence

from crdtcache.core import GossipEngine
from crdtcache.transport._client import (
    HandshakeRefused,
    NodeClient,
    NodeTimeout,
    NodeUnreachable,
    check_request,
)
from crdtcache.transport._connection import MAX_SEND_BUFFER, Connection
from crdtcache.transport._links import RequestRefused
from crdtcache.transport._network import Network, TcpNetwork
from crdtcache.transport._node import (
    HANDSHAKE_TIMEOUT,
    MAX_CONNECTIONS,
    Node,
    TransportStatistics,
    parse_address,
)
from crdtcache.transport._tls import (
    NODE_URI_PREFIX,
    certificate_node_ids,
    node_id_uri,
    tls_contexts,
    tls_option,
)
from crdtcache.wire._auth import (
    MIN_SECRET_BYTES,
    AuthError,
    FrameOpener,
    FrameSealer,
    Handshake,
    SessionKeys,
    keyring,
)
from crdtcache.wire._codec import (
    AUTH_VERSION,
    MAX_SECRETS,
    PROTOCOL_VERSION,
    Bye,
    Hello,
    decode,
    encode,
)
from crdtcache.wire._framing import MAX_FRAME_BYTES, FrameDecoder, FrameTooLarge, encode_frame

__all__ = [
    "AUTH_VERSION",
    "HANDSHAKE_TIMEOUT",
    "MAX_CONNECTIONS",
    "MAX_FRAME_BYTES",
    "MAX_SECRETS",
    "MAX_SEND_BUFFER",
    "MIN_SECRET_BYTES",
    "NODE_URI_PREFIX",
    "PROTOCOL_VERSION",
    "AuthError",
    "Bye",
    "Connection",
    "FrameDecoder",
    "FrameOpener",
    "FrameSealer",
    "FrameTooLarge",
    "Handshake",
    "HandshakeRefused",
    "Hello",
    "Network",
    "Node",
    "NodeClient",
    "NodeTimeout",
    "NodeUnreachable",
    "RequestRefused",
    "SessionKeys",
    "TcpNetwork",
    "TransportStatistics",
    "certificate_node_ids",
    "check_request",
    "decode",
    "encode",
    "encode_frame",
    "keyring",
    "make_node",
    "node_id_uri",
    "parse_address",
    "tls_contexts",
    "tls_option",
]


def make_node(
    engine: GossipEngine,
    *,
    listen: str = "127.0.0.1:0",
    cluster: str = "default",
    discovery: str = "mdns",
    seeds: Sequence[str] = (),
    secret: bytes | Sequence[bytes] | None = None,
    ssl: _ssl.SSLContext | tuple[_ssl.SSLContext, _ssl.SSLContext] | None = None,
    clock: Callable[[], float] = time.time,
    network: Network | None = None,
) -> Node:
    """Build the p2p runtime for ``engine`` from the cache's options.

    ``discovery`` is ``"mdns"``, ``"static"`` or ``"none"``; ``seeds`` are dialled
    in every mode. ``secret`` is the cluster secret (at least ``MIN_SECRET_BYTES``
    bytes), or a list of up to ``MAX_SECRETS`` during a rotation: the first signs,
    all are accepted. ``ssl`` is a (server, client) pair such as :func:`tls_contexts`
    returns, or one context used both ways; it must require the peer's certificate
    and TLS 1.3. ``clock`` is the wall clock the engine runs on and ``network`` where
    streams come from (TCP unless given). Raises :class:`ConfigError` for invalid
    options.
    """
    from crdtcache.discovery import make_discovery

    ring = keyring(secret) if secret is not None else None
    tls = tls_option(ssl)  # checked before discovery is set up
    server_ctx, client_ctx = tls if tls is not None else (None, None)
    found = make_discovery(discovery, cluster=cluster, seeds=seeds)
    node = Node(
        engine,
        listen=listen,
        cluster=cluster,
        discovery=found,
        ssl_server=server_ctx,
        ssl_client=client_ctx,
        secret=ring,
        clock=clock,
        network=network,
    )
    for seed in seeds:
        node.add_seed(seed)
    return node
