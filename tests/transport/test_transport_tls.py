"""Mutual TLS: a CA made at test time, node ids bound to certificates, refusals.

Every refused stream must cost one log line on the refusing node, leave its replica
untouched, and leave it serving its good peers.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any

import pytest
from conftest import TestPKI, make_engine, start_cluster, view, wait_for, write

from crdtcache import ConfigError
from crdtcache.discovery._base import PeerAddress
from crdtcache.transport import (
    Node,
    certificate_node_ids,
    make_node,
    node_id_uri,
    tls_contexts,
)
from crdtcache.transport._node import parse_address

SECRET = b"cluster-secret-0123456789abcdef!"
NODE_LOG = "crdtcache.transport._node"


def _tls_options(pki: TestPKI, **extra: Any) -> Any:
    def options(name: str) -> dict[str, Any]:
        server, client = pki.contexts(name)
        return {"ssl_server": server, "ssl_client": client, **extra}

    return options


@pytest.fixture
async def tls3(pki: TestPKI) -> Any:
    nodes = await start_cluster(3, prefix="tls", node_options=_tls_options(pki))
    yield nodes
    await asyncio.gather(*(n.close() for n in nodes))


def _refusals(caplog: pytest.LogCaptureFixture, node: Node | None = None) -> list[str]:
    """The "dropping connection" lines, of one node (by the record's ``node``) or all."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == NODE_LOG
        and "dropping connection" in r.getMessage()
        and (node is None or getattr(r, "node", None) == node.node_id)
    ]


async def _still_serves(cluster: list[Node], key: str) -> None:
    write(cluster[1], key, "ok")
    await wait_for(lambda: all(view(n).get(key) == "ok" for n in cluster))


async def test_a_tls_cluster_replicates(tls3: list[Node]) -> None:
    for i in range(20):
        write(tls3[i % 3], f"k{i}", i)
    await wait_for(lambda: all(len(view(n)) == 20 for n in tls3))
    for node in tls3:
        assert node.statistics().tls is True
        for peer, conn in node.connections().items():
            assert peer in certificate_node_ids(conn.peer_certificate())
            assert conn.stream.extra("ssl_object").version() == "TLSv1.3"


async def test_tls_and_a_secret_combine(pki: TestPKI) -> None:
    nodes = await start_cluster(2, prefix="both", node_options=_tls_options(pki, secret=SECRET))
    try:
        write(nodes[0], "k", "over TLS and sealed")
        await wait_for(lambda: "k" in view(nodes[1]))
        assert all(c.secured for c in nodes[1].connections().values())
    finally:
        await asyncio.gather(*(n.close() for n in nodes))


async def _refused_both_ways(
    cluster: list[Node], caplog: pytest.LogCaptureFixture, intruder: Node
) -> None:
    """``intruder`` dials cluster[0] and is dialled by it; neither link may form."""
    caplog.set_level(logging.WARNING, logger=NODE_LOG)
    target = cluster[0]
    before = dict(target.engine.replica.entries)
    await intruder.start()
    write(intruder, f"from-{intruder.node_id}", "must not arrive")
    assert target.address is not None and intruder.address is not None
    intruder.add_seed(target.address)
    host, port = parse_address(intruder.address)
    target.connect(PeerAddress(host, port))
    # Two refusals by the target: once as the dialled node, once as the dialler.
    await wait_for(lambda: target.auth_failures >= 2)
    assert intruder.node_id not in target.connected_peers()
    assert target.engine.replica.entries == before
    await _still_serves(cluster, f"after-{intruder.node_id}")
    # One line per refused stream on the target, and nothing else.
    await intruder.close()
    assert len(_refusals(caplog, target)) == target.handshake_failures


def _target_says(caplog: pytest.LogCaptureFixture, target: Node, *patterns: str) -> None:
    lines = _refusals(caplog, target)
    for pattern in patterns:
        assert any(pattern in line for line in lines), (pattern, lines)


async def test_an_untrusted_certificate_is_refused(
    tls3: list[Node], pki: TestPKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The rogue trusts the cluster's CA (it is public) but its own certificate is signed
    # by another CA: the cluster refuses it whichever side dials.
    (tmp_path / "rogue").mkdir()
    rogue_ca = TestPKI(tmp_path / "rogue", "rogue-ca")
    server, client = rogue_ca.contexts("rogue", trust=pki)
    rogue = Node(make_engine("rogue"), ssl_server=server, ssl_client=client)
    try:
        await _refused_both_ways(tls3, caplog, rogue)
        # As the server it checks the rogue's certificate, as the client too.
        lines = _refusals(caplog, tls3[0])
        verify = "TLS handshake failed: certificate verify failed: unable to get local issuer"
        assert all(verify in line for line in lines), lines
    finally:
        await rogue.close()


async def test_a_certificate_for_another_node_id_is_refused(
    tls3: list[Node], pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    # A genuine certificate from the cluster's CA, but for node "someone-else".
    server, client = pki.contexts("impostor-cert", ["someone-else"])
    impostor = Node(make_engine("impostor"), ssl_server=server, ssl_client=client)
    try:
        await _refused_both_ways(tls3, caplog, impostor)
        lines = _refusals(caplog, tls3[0])
        expected = "the hello says node 'impostor' but the peer's certificate names someone-else"
        assert all(expected in line for line in lines), lines
    finally:
        await impostor.close()


async def test_tls_and_plain_refuse_each_other(
    tls3: list[Node], caplog: pytest.LogCaptureFixture
) -> None:
    plain = Node(make_engine("plain"))
    try:
        await _refused_both_ways(tls3, caplog, plain)
        _target_says(caplog, tls3[0], "TLS handshake failed: the peer does not speak TLS 1.3")
        assert any(
            "the peer opened with TLS (ssl=) and this node has no ssl" in line
            for line in _refusals(caplog, plain)
        )
    finally:
        await plain.close()


async def test_a_silent_tls_client_hits_the_handshake_timeout(
    pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=NODE_LOG)
    server, client = pki.contexts("patient")
    node = Node(make_engine("patient"), ssl_server=server, ssl_client=client, handshake_timeout=0.3)
    await node.start()
    try:
        assert node.address is not None
        reader, writer = await asyncio.open_connection(*parse_address(node.address))
        await asyncio.wait_for(reader.read(), 3.0)  # closed by the node, no TLS started
        writer.close()
        assert any("handshake timeout" in x for x in _refusals(caplog))
    finally:
        await node.close()


# ------------------------------------------------------------ configuration
def test_node_id_uris_round_trip() -> None:
    for node_id in ("a", "node-7", "ünï/cödé?#%", "host.example:8080"):
        uri = node_id_uri(node_id)
        assert uri.startswith("crdtcache://node/")
        cert = {"subjectAltName": (("DNS", "x"), ("URI", uri), ("URI", "https://other"))}
        assert certificate_node_ids(cert) == {node_id}
    assert certificate_node_ids(None) == frozenset()


def test_tls_contexts_are_mutual_and_tls13(pki: TestPKI) -> None:
    server, client = pki.contexts("ctx")
    for ctx in (server, client):
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert client.check_hostname is False


def test_tls_contexts_translate_missing_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match="cannot load the TLS certificates"):
        tls_contexts(ca=missing, cert=missing, key=missing)


def test_unfit_contexts_are_config_errors(pki: TestPKI) -> None:
    server, client = pki.contexts("cfg")
    lax = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # asks no client certificate
    with pytest.raises(ConfigError, match="must require the peer's certificate"):
        make_node(make_engine("cfg"), discovery="none", ssl=(lax, client))
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.minimum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ConfigError, match="allows TLSv1_2"):
        make_node(make_engine("cfg"), discovery="none", ssl=(server, old))
    with pytest.raises(ConfigError, match="made for the other side"):
        make_node(make_engine("cfg"), discovery="none", ssl=ssl.create_default_context())
    with pytest.raises(ConfigError, match="both a server and a client"):
        Node(make_engine("cfg"), ssl_server=server)
    with pytest.raises(ConfigError, match="ssl must be"):
        make_node(make_engine("cfg"), discovery="none", ssl="yes")  # type: ignore[arg-type]
    node = make_node(make_engine("cfg"), discovery="none", ssl=(server, client))
    assert node.statistics().tls is True
