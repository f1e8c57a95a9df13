"""Refused hellos say why, to whom it is safe to say; peers that leave are not warnings.

A node that refuses a hello (another cluster, version or certificate) sends a
:class:`Refuse` with a code before closing, so that the refused side knows at once.
With a cluster secret the hello is checked only after its sender proved the secret:
a party without it gets the secret's handshake, never a reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from conftest import make_engine, wait_for

from crdtcache.core._link import REFUSE_CLUSTER, LinkRefused
from crdtcache.core._messages import Refuse
from crdtcache.discovery._base import PeerAddress
from crdtcache.transport import (
    PROTOCOL_VERSION,
    AuthError,
    Handshake,
    HandshakeRefused,
    Hello,
    Node,
    NodeClient,
    decode,
    encode,
    encode_frame,
    keyring,
)
from crdtcache.transport._node import parse_address
from crdtcache.wire._codec import AuthHello

SECRET = b"cluster-secret-0123456789abcdef!"
OTHER = b"another-secret-0123456789abcdef!"
NODE_LOG = "crdtcache.transport._node"


async def _node(name: str, **options: Any) -> Node:
    node = Node(make_engine(name), **options)
    await node.start()
    return node


async def _connect(node: Node) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert node.address is not None
    return await asyncio.open_connection(*parse_address(node.address))


async def _read_body(reader: asyncio.StreamReader) -> bytes:
    header = await asyncio.wait_for(reader.readexactly(4), 3)
    return await asyncio.wait_for(reader.readexactly(int.from_bytes(header, "big")), 3)


def _hello(cluster: str, node: str = "mallory") -> Hello:
    return Hello(PROTOCOL_VERSION, cluster, node, 0, 1)


async def test_a_plain_hello_of_another_cluster_is_answered_with_the_reason() -> None:
    node = await _node("n", cluster="shop")
    try:
        reader, writer = await _connect(node)
        writer.write(encode_frame(encode(_hello("other"))))
        assert decode(await _read_body(reader)) == Refuse(REFUSE_CLUSTER)
        assert await asyncio.wait_for(reader.read(), 3) == b""  # then the stream closes
        writer.close()
    finally:
        await node.close()


async def test_without_the_secret_a_party_gets_no_reason() -> None:
    node = await _node("n", cluster="shop", secret=SECRET)
    try:
        # A plain hello naming another cluster: the answer is the secret's handshake,
        # which says nothing about the cluster.
        reader, writer = await _connect(node)
        writer.write(encode_frame(encode(_hello("other"))))
        assert isinstance(decode(await _read_body(reader)), AuthHello)
        assert await asyncio.wait_for(reader.read(), 3) == b""
        writer.close()
        # A wrong secret with another cluster: refused at the challenge, before any hello.
        reader, writer = await _connect(node)
        shake = Handshake(keyring(OTHER), _hello("other"), initiator=True)
        writer.write(encode_frame(shake.start()))
        with pytest.raises(AuthError, match="challenge matches no secret"):
            shake.receive(await _read_body(reader))
        writer.close()
    finally:
        await node.close()


async def test_with_the_secret_another_cluster_is_named() -> None:
    node = await _node("n", cluster="shop", secret=SECRET)
    try:
        reader, writer = await _connect(node)
        shake = Handshake(keyring(SECRET), _hello("other"), initiator=True)
        writer.write(encode_frame(shake.start()))
        proof = shake.receive(await _read_body(reader))
        assert proof is not None
        writer.write(encode_frame(proof))
        with pytest.raises(LinkRefused, match="another cluster") as refused:
            shake.receive(await _read_body(reader))
        assert refused.value.reason == REFUSE_CLUSTER
        writer.close()
    finally:
        await node.close()


@pytest.mark.parametrize("secret", [None, SECRET], ids=["plain", "secret"])
async def test_a_dialer_refused_for_its_cluster_knows_why_and_backs_off(
    secret: bytes | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=NODE_LOG)
    acceptor = await _node("acc", cluster="shop", secret=secret)
    dialer = await _node("dia", cluster="other", secret=secret)
    try:
        assert acceptor.address is not None
        with pytest.raises(LinkRefused, match="another cluster"):
            await dialer.dial(PeerAddress(*parse_address(acceptor.address)))
        lines = [r.getMessage() for r in caplog.records if getattr(r, "node", "") == "dia"]
        assert lines == [
            f"dropping connection to unidentified peer at {acceptor.address}: "
            "the peer refused this node's hello: it is in another cluster"
        ]
        # A refused hello will not pass in 50 ms: the dialer waits the longest backoff.
        dialer.add_seed(acceptor.address)
        await wait_for(lambda: acceptor.handshake_failures == 2)
        await asyncio.sleep(0.5)
        assert acceptor.handshake_failures == 2  # the next dial is >= MAX_BACKOFF / 2 away
    finally:
        await asyncio.gather(dialer.close(), acceptor.close())


async def test_a_client_reports_its_failures_to_its_caller_not_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    node = await _node("n", cluster="shop")
    try:
        assert node.address is not None
        started = time.monotonic()
        with pytest.raises(HandshakeRefused, match="is not in cluster 'other'"):
            async with NodeClient(node.address, cluster="other", timeout=30):
                pass
        assert time.monotonic() - started < 10  # the refusal, not the 30 s timeout
        client_lines = [
            r
            for r in caplog.records
            if r.levelno >= logging.INFO and str(getattr(r, "node", "")).startswith("client-")
        ]
        assert client_lines == []
    finally:
        await node.close()
