"""Mutual TLS for peers (``ssl=``): context checks, and a node id bound to its certificate.

Peers are found by mDNS or by address, never by a stable host name, so host name
checking is off and identity is the node id instead: a node's certificate carries a
subjectAltName URI ``crdtcache://node/<node id>`` (the id percent-encoded, see
:func:`node_id_uri`), and a peer whose hello names a node id its certificate does not
is refused. Both sides present a certificate signed by the cluster's CA, with TLS 1.3
at least.
"""

from __future__ import annotations

import os
import ssl
from typing import Any, Final
from urllib.parse import quote, unquote

from crdtcache._errors import ConfigError

__all__ = [
    "NODE_URI_PREFIX",
    "certificate_node_ids",
    "check_tls_contexts",
    "node_id_uri",
    "tls_contexts",
    "tls_option",
]

#: The subjectAltName URI prefix naming a node: ``crdtcache://node/<id>``.
NODE_URI_PREFIX: Final = "crdtcache://node/"

StrPath = str | os.PathLike[str]


def node_id_uri(node_id: str) -> str:
    """The SAN URI to put in ``node_id``'s certificate, e.g. ``crdtcache://node/a%20b``.

    With ``ssl=``, a node's certificate must name its node id this way.

    Examples:
        >>> from crdtcache.transport import node_id_uri
        >>> node_id_uri("web 1")
        'crdtcache://node/web%201'
    """
    return NODE_URI_PREFIX + quote(node_id, safe="")


def certificate_node_ids(cert: dict[str, Any] | None) -> frozenset[str]:
    """The node ids a peer certificate (as from ``SSLSocket.getpeercert()``) names."""
    ids = set()
    for kind, value in (cert or {}).get("subjectAltName", ()):
        if kind == "URI" and value.startswith(NODE_URI_PREFIX):
            ids.add(unquote(value[len(NODE_URI_PREFIX) :]))
    return frozenset(ids)


def tls_contexts(
    *, ca: StrPath, cert: StrPath, key: StrPath, password: str | bytes | None = None
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Build the (server, client) contexts for mutual TLS from PEM files.

    ``ca`` is the cluster's CA certificate (peers must be signed by it); ``cert`` and
    ``key`` are this node's certificate (with its ``crdtcache://node/<id>`` SAN URI)
    and private key. Both contexts require TLS 1.3 and a peer certificate; host names
    are not checked (node ids are). Raises :class:`ConfigError` if a file is missing
    or unusable.
    """
    try:
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False  # peers have no stable names; node ids are checked
        for ctx in (server, client):
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=os.fspath(ca))
            ctx.load_cert_chain(os.fspath(cert), os.fspath(key), password)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load the TLS certificates: {exc}") from exc
    return server, client


def tls_option(
    option: object,
) -> tuple[ssl.SSLContext, ssl.SSLContext] | None:
    """Check an ``ssl=`` option (one context, a (server, client) pair, or None).

    Returns the checked (server, client) pair, or None without TLS. Raises
    :class:`ConfigError` as :func:`check_tls_contexts` does, and for anything else.
    """
    if option is None:
        return None
    pair = option if isinstance(option, tuple) else (option, option)
    if len(pair) != 2 or not all(isinstance(c, ssl.SSLContext) for c in pair):
        raise ConfigError(
            "ssl must be an ssl.SSLContext, a (server, client) pair of them, or None "
            "(crdtcache.transport.tls_contexts builds the pair from a CA, cert and key)"
        )
    return check_tls_contexts(pair[0], pair[1])


def check_tls_contexts(
    server: ssl.SSLContext | None, client: ssl.SSLContext | None
) -> tuple[ssl.SSLContext, ssl.SSLContext] | None:
    """Check user-made contexts are fit for mutual TLS; return the pair, or None.

    Raises :class:`ConfigError` if only one is given, if one is made for the other side,
    if either does not require the peer's certificate, or if either allows a TLS version
    below 1.3.
    """
    if server is None and client is None:
        return None
    if server is None or client is None:
        raise ConfigError("TLS needs both a server and a client context, or neither")
    wrong_side = {"server": ssl.PROTOCOL_TLS_CLIENT, "client": ssl.PROTOCOL_TLS_SERVER}
    for side, ctx in (("server", server), ("client", client)):
        if not isinstance(ctx, ssl.SSLContext):
            raise ConfigError(f"the {side} TLS context must be an ssl.SSLContext")
        if ctx.protocol == wrong_side[side]:
            raise ConfigError(
                f"the {side} TLS context is made for the other side ({ctx.protocol.name}); "
                "pass a (server, client) pair, e.g. from crdtcache.transport.tls_contexts()"
            )
        if ctx.verify_mode != ssl.CERT_REQUIRED:
            raise ConfigError(
                f"mutual TLS: the {side} context must require the peer's certificate "
                "(verify_mode = ssl.CERT_REQUIRED); crdtcache.transport.tls_contexts() "
                "builds such contexts"
            )
        version = ctx.minimum_version
        if version != ssl.TLSVersion.MAXIMUM_SUPPORTED and version < ssl.TLSVersion.TLSv1_3:
            raise ConfigError(
                f"the {side} TLS context allows {version.name}; set "
                "minimum_version = ssl.TLSVersion.TLSv1_3"
            )
    return server, client
