"""Peers over a real network: framing, the wire codec, connections and the p2p node."""

from __future__ import annotations

import ssl as _ssl
from collections.abc import Sequence

from crdtcache._errors import ConfigError
from crdtcache.core import GossipEngine
from crdtcache.transport._codec import PROTOCOL_VERSION, Bye, Hello, decode, encode
from crdtcache.transport._connection import MAX_SEND_BUFFER, Connection
from crdtcache.transport._framing import MAX_FRAME_BYTES, FrameDecoder, FrameTooLarge, encode_frame
from crdtcache.transport._node import HANDSHAKE_TIMEOUT, MAX_CONNECTIONS, Node, parse_address

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "MAX_CONNECTIONS",
    "MAX_FRAME_BYTES",
    "MAX_SEND_BUFFER",
    "PROTOCOL_VERSION",
    "Bye",
    "Connection",
    "FrameDecoder",
    "FrameTooLarge",
    "Hello",
    "Node",
    "decode",
    "encode",
    "encode_frame",
    "make_node",
    "parse_address",
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
) -> Node:
    """Build the p2p runtime for ``engine`` from the cache's options.

    ``discovery`` is ``"mdns"``, ``"static"`` or ``"none"``; ``seeds`` are dialled
    in every mode. ``ssl`` is one context used both ways or a (server, client) pair.
    Raises :class:`ConfigError` for invalid options.
    """
    from crdtcache.discovery import make_discovery

    if secret is not None:
        raise ConfigError("secret= (cluster authentication) is not available yet")
    server_ctx = client_ctx = None
    if isinstance(ssl, tuple):
        server_ctx, client_ctx = ssl
    elif ssl is not None:
        server_ctx = client_ctx = ssl
    found = make_discovery(discovery, cluster=cluster, seeds=seeds)
    node = Node(
        engine,
        listen=listen,
        cluster=cluster,
        discovery=found,
        ssl_server=server_ctx,
        ssl_client=client_ctx,
    )
    for seed in seeds:
        node.add_seed(seed)
    return node
