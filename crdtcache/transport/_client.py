"""A client for a running node: what ``crdtcache get/set/stats`` use.

It connects through the same handshake as a peer (so ``secret=`` and ``ssl=`` protect
it too), then only asks for cache operations: it follows no gossip, is not dialled
back, and says goodbye so the node forgets it at once.

It dials once, never in the background, so every failure is known at once and says
which it is (the CLI turns each into its own exit status): nothing listens at the
address (:class:`NodeUnreachable`), the node refused the handshake
(:class:`HandshakeRefused`: another cluster, another or no secret, a refused
certificate; the node tells a client that proved the secret why), no answer in time
(:class:`NodeTimeout`), or the node ran the operation and refused it
(:class:`~crdtcache.transport._links.RequestRefused`).
"""

from __future__ import annotations

import asyncio
import random
import ssl as _ssl
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Final

from crdtcache._errors import PeerError, SerializationError
from crdtcache.core import (
    MAX_KEY_CHARS,
    GossipEngine,
    HybridClock,
    Replica,
    check_key,
    encode_value,
)
from crdtcache.core._link import (
    REFUSE_CLUSTER,
    REFUSE_IDENTITY,
    REFUSE_VERSION,
    IdentityError,
    LinkRefused,
)
from crdtcache.core._messages import AdminRequest
from crdtcache.transport._links import RequestRefused
from crdtcache.transport._network import TcpNetwork
from crdtcache.transport._node import Node, parse_address
from crdtcache.transport._stream import StreamClosed, StreamError, TLSFailed
from crdtcache.transport._tls import tls_option
from crdtcache.wire._codec import encode

__all__ = ["HandshakeRefused", "NodeClient", "NodeTimeout", "NodeUnreachable", "check_request"]

#: The ints plain msgpack carries, hence an admin request (no extension types there).
_INT_RANGE: Final = range(-(1 << 63), 1 << 64)


class NodeUnreachable(PeerError):
    """Nothing answers at the address (connection refused, no route), or the link was lost."""


class HandshakeRefused(PeerError):
    """The node refused this client's handshake: another cluster, secret or certificate."""


class NodeTimeout(PeerError):
    """The node did not finish the handshake, or answer a request, within the timeout."""


def check_request(op: str, *args: Any) -> None:
    """Raise :class:`SerializationError` if the request ``op(*args)`` cannot be sent.

    The key is checked as a cache checks it, a ``set`` value as a cache stores it (its
    types, size and nesting), then as an admin request carries it: plain msgpack, so
    no int beyond 64 bits. Nothing is sent; the error says what to change.

    Examples:
        >>> import crdtcache
        >>> from crdtcache.transport import check_request
        >>> check_request("set", "k", {"n": 1}, None)  # fine: returns None
        >>> try:
        ...     check_request("set", "k", 10**30, None)
        ... except crdtcache.SerializationError as exc:
        ...     print(exc)
        the value holds the integer 1000000000000000000000000000000, beyond the 64 bits
        a client request carries (store it as a string)
    """
    if op in ("get", "set", "delete"):
        key = args[0]
        if isinstance(key, str) and len(key) > MAX_KEY_CHARS:
            raise SerializationError(
                f"the key has {len(key)} characters; a key has at most {MAX_KEY_CHARS}"
            )
        check_key(key)
    if op == "set":
        big = _oversized_int(args[1])
        if big is not None:
            raise SerializationError(
                f"the value holds the integer {big}, beyond the 64 bits a client request "
                "carries (store it as a string)"
            )
        encode_value(args[0], args[1])
    try:
        encode(AdminRequest(0, op, tuple(args)))
    except (TypeError, ValueError, OverflowError) as exc:  # msgpack's refusals
        raise SerializationError(f"the request cannot be sent: {exc}") from exc


def _oversized_int(value: Any) -> int | None:
    """The first int in ``value`` that plain msgpack cannot carry, if any."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is int and item not in _INT_RANGE:
            return item
        if isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return None


class NodeClient:
    """Ask one node at ``address`` (``host:port``) for cache operations.

    Use as ``async with NodeClient(address) as client``. Entering raises
    :class:`NodeUnreachable`, :class:`HandshakeRefused` or :class:`NodeTimeout`
    (all :class:`PeerError`) as soon as it knows; ``timeout`` (seconds) bounds the
    connection and handshake, and then each request.

    Examples:
        ```python
        import crdtcache
        from crdtcache.transport import NodeClient

        async with crdtcache.Cache(backend="p2p", discovery="none", cluster="shop") as node:
            async with NodeClient(node.address, cluster="shop") as client:
                await client.set("greeting", "hello", ttl=60)
                assert await client.get("greeting") == (True, "hello")
            assert await node.get("greeting") == "hello"
        ```
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
        self._host, self._port = parse_address(address)
        self.address = address
        self.cluster = cluster
        self.timeout = timeout
        engine = GossipEngine(
            Replica(HybridClock(f"client-{uuid.uuid4().hex[:8]}")), random.Random()
        )
        tls = tls_option(ssl)
        server_ctx, client_ctx = tls if tls is not None else (None, None)
        self._network = TcpNetwork()
        self._node = Node(
            engine,
            cluster=cluster,
            secret=secret,
            ssl_server=server_ctx,
            ssl_client=client_ctx,
            client_mode=True,
            network=self._network,
            # Our own deadline (``timeout``) fires first and says it was a timeout.
            handshake_timeout=timeout + 1.0,
        )
        self._secret = secret is not None
        self._peer: str | None = None

    async def __aenter__(self) -> NodeClient:
        node = self._node
        await node.start()
        try:
            async with asyncio.timeout(self.timeout):
                conn = await self._connect()
        except TimeoutError:
            await node.close()
            raise NodeTimeout(
                f"the node at {self.address} did not answer within {self.timeout:g} s"
            ) from None
        except BaseException:
            await node.close()
            raise
        self._peer = conn
        return self

    async def _connect(self) -> str:
        """Dial once and run the handshake; return the node's id or raise (module doc)."""
        node = self._node
        try:
            stream = await self._network.connect(self._host, self._port, self.timeout + 1.0)
        except StreamError as exc:
            if isinstance(exc.__cause__, ConnectionRefusedError):
                why = f"connection refused: nothing listens at {self.address}"
            else:
                why = f"cannot connect to {self.address}: {exc}"
            raise NodeUnreachable(why) from exc
        try:
            conn = await node.links.open(node.links.connection(stream, dialed=True))
        except LinkRefused as exc:
            raise HandshakeRefused(self._refused_because(exc.reason)) from exc
        except IdentityError as exc:  # the secret's handshake, or TLS
            raise HandshakeRefused(self._identity_failed(exc)) from exc
        except StreamClosed as exc:
            raise HandshakeRefused(
                f"the node at {self.address} closed the connection during the handshake "
                "(it refused this client, or it is not a crdtcache node)"
            ) from exc
        except PeerError as exc:
            raise HandshakeRefused(f"handshake with {self.address} failed: {exc}") from exc
        if conn is None or conn.peer is None:  # a client never races a duplicate link
            raise HandshakeRefused(f"the node at {self.address} dropped the new link")
        return conn.peer

    def _refused_because(self, reason: str) -> str:
        at = f"the node at {self.address}"
        if reason == REFUSE_CLUSTER:
            return f"{at} is not in cluster {self.cluster!r} (it refused the handshake)"
        if reason == REFUSE_VERSION:
            return f"{at} speaks another protocol version (it refused the handshake)"
        if reason == REFUSE_IDENTITY:
            return f"{at} refused this client's certificate (it names another node id)"
        return f"{at} refused the handshake (reason {reason!r})"

    def _identity_failed(self, exc: IdentityError) -> str:
        at = f"the node at {self.address}"
        if isinstance(exc.__cause__, TLSFailed):
            return f"{at} refused the TLS handshake: {exc.__cause__}"
        if not self._secret:
            return f"{at} requires a cluster secret and this client gave none"
        return f"{at} does not hold this client's cluster secret: {exc}"

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._node.close()

    async def _ask(self, op: str, *args: Any) -> Any:
        check_request(op, *args)
        if self._peer is None:
            raise PeerError("not connected (use 'async with NodeClient(...)')")
        try:
            async with asyncio.timeout(self.timeout):
                # The node's own deadline is later: ours fires first and says timeout.
                return await self._node.request(self._peer, op, *args, timeout=self.timeout + 1)
        except TimeoutError:
            raise NodeTimeout(
                f"the node at {self.address} did not answer {op} within {self.timeout:g} s"
            ) from None
        except RequestRefused:
            raise
        except PeerError as exc:  # the link dropped while the request was pending
            raise NodeUnreachable(f"lost the connection to {self.address}: {exc}") from exc

    @property
    def node_id(self) -> str | None:
        """The id of the node this client talks to."""
        return self._peer

    async def get(self, key: str) -> tuple[bool, Any]:
        """Return ``(found, value)`` for ``key`` as the node reads it.

        Raises :class:`SerializationError` (before sending) for a key too long.
        """
        result = await self._ask("get", key)
        return bool(result["found"]), result.get("value")

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Write ``key`` through the node (replicated as the node's own write).

        Raises :class:`SerializationError` before sending anything if the key or the
        value cannot be sent (see :func:`check_request`).
        """
        await self._ask("set", key, value, ttl)

    async def delete(self, key: str) -> bool:
        """Delete ``key`` through the node; True if it held a live value."""
        return bool(await self._ask("delete", key))

    async def stats(self) -> dict[str, Any]:
        """The node's statistics (``CacheStatistics.as_dict()``)."""
        result: dict[str, Any] = await self._ask("stats")
        return result
