"""Helpers for tests that run real nodes on 127.0.0.1, and a throwaway test PKI."""

from __future__ import annotations

import asyncio
import datetime
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from crdtcache.core import GossipConfig, GossipEngine, HybridClock, Replica, encode_value
from crdtcache.transport import Node, node_id_uri, tls_contexts

FAST = {
    "anti_entropy_interval": 0.2,
    "heartbeat_interval": 0.1,
    "suspect_after": 0.5,
    "dead_after": 1.0,
}


def make_engine(name: str, **config: Any) -> GossipEngine:
    settings = {**FAST, **config}
    return GossipEngine(Replica(HybridClock(name)), random.Random(name), GossipConfig(**settings))


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.005)


def write(node: Node, key: str, value: Any) -> None:
    node.engine.set(key, encode_value(key, value), time.time())
    node.wake()


def view(node: Node) -> dict[str, Any]:
    return {k: v for k, (v, _, _) in node.engine.replica.visible(time.time()).items()}


def meshed(nodes: list[Node]) -> bool:
    return all(len(n.connected_peers()) == len(nodes) - 1 for n in nodes)


async def start_cluster(
    count: int,
    prefix: str = "n",
    node_options: Callable[[str], dict[str, Any]] | None = None,
    **config: Any,
) -> list[Node]:
    """Start ``count`` meshed nodes; ``node_options(node_id)`` gives extra Node kwargs."""
    names = [f"{prefix}{i}" for i in range(count)]
    nodes = [
        Node(make_engine(name, **config), **(node_options(name) if node_options else {}))
        for name in names
    ]
    for node in nodes:
        await node.start()
    for node in nodes[1:]:
        assert nodes[0].address is not None
        node.add_seed(nodes[0].address)
    await wait_for(lambda: meshed(nodes), 10)
    return nodes


@pytest.fixture
async def cluster3() -> AsyncIterator[list[Node]]:
    nodes = await start_cluster(3)
    yield nodes
    await asyncio.gather(*(n.close() for n in nodes))


class TestPKI:
    """A CA made at test time, issuing node certificates with ``crdtcache://node/<id>``."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, directory: Path, name: str = "test-ca") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._x509, self._hashes, self._ser, self._ec = x509, hashes, serialization, ec
        self._oid = NameOID
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            self._builder(subject, subject, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.ca_path = directory / f"{name}.pem"
        self.ca_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def _builder(self, subject: Any, issuer: Any, public_key: Any) -> Any:
        now = datetime.datetime.now(datetime.UTC)
        return (
            self._x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(self._x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def issue(self, name: str, node_ids: Sequence[str] | None = None) -> tuple[Path, Path]:
        """Write a certificate for ``node_ids`` (default ``[name]``) and its key."""
        x509, ser = self._x509, self._ser
        key = self._ec.generate_private_key(self._ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(self._oid.COMMON_NAME, name)])
        ids = [name] if node_ids is None else list(node_ids)
        cert = (
            self._builder(subject, self.cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(node_id_uri(i)) for i in ids]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [
                        x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                        x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH,
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, self._hashes.SHA256())
        )
        cert_path = self.directory / f"{name}.crt"
        key_path = self.directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(ser.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
        )
        return cert_path, key_path

    def contexts(
        self, name: str, node_ids: Sequence[str] | None = None, *, trust: TestPKI | None = None
    ) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        """Contexts for a node certified by this CA, trusting ``trust`` (default: this)."""
        cert, key = self.issue(name, node_ids)
        return tls_contexts(ca=(trust or self).ca_path, cert=cert, key=key)


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    pytest.importorskip("cryptography")
    return TestPKI(tmp_path)
