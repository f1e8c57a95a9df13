"""CLI errors: one line on stderr, a status of their own, known at once, input checked first.

The nodes run in the test's loop (so that a test can give them options the ``node``
command has not, and count what reached them); the CLI runs as a subprocess. Every
client call gives ``--timeout 30``: an error that came from waiting for a timeout would
be status 5 and take 30 s, so the statuses below also show nothing waited.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from crdtcache import Cache

CLI = [sys.executable, "-m", "crdtcache.cli"]
SECRET = b"a-cluster-secret-of-32-bytes-ok!"
OTHER_SECRET = b"another-secret-of-32-bytes-ok!!!"
pytestmark = pytest.mark.timeout(120)


async def cli(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run the CLI; returns (status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def one_error_line(status: int, out: str, err: str, expected: int, text: str) -> None:
    """The error is one line on stderr, naming the command, and nothing on stdout."""
    assert status == expected, (status, out, err)
    lines = [line for line in err.splitlines() if " WARNING " not in line]
    assert len(lines) == 1 and lines[0].startswith("crdtcache "), err
    assert text in lines[0], lines[0]
    assert "Traceback" not in err and out == ""


@pytest.fixture
async def node() -> AsyncIterator[Cache]:
    async with Cache(backend="p2p", discovery="none", cluster="shop") as cache:
        yield cache


@pytest.fixture
async def secret_node() -> AsyncIterator[Cache]:
    async with Cache(backend="p2p", discovery="none", cluster="shop", secret=SECRET) as cache:
        yield cache


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# ------------------------------------------------------------ connection and handshake
async def test_connection_refused_is_status_3_at_once() -> None:
    status, out, err = await cli("get", f"127.0.0.1:{free_port()}", "k", "--timeout", "30")
    one_error_line(status, out, err, 3, "connection refused: nothing listens at 127.0.0.1:")


async def test_another_cluster_is_refused_by_the_handshake(node: Cache) -> None:
    assert node.address is not None
    status, out, err = await cli("get", node.address, "k", "--cluster", "other", "--timeout", "30")
    one_error_line(status, out, err, 4, "is not in cluster 'other'")


async def test_a_missing_secret_is_refused_by_the_handshake(secret_node: Cache) -> None:
    assert secret_node.address is not None
    status, out, err = await cli("get", secret_node.address, "k", "--cluster", "shop")
    one_error_line(status, out, err, 4, "requires a cluster secret and this client gave none")


async def test_a_wrong_secret_is_refused_by_the_handshake(
    secret_node: Cache, tmp_path: Path
) -> None:
    assert secret_node.address is not None
    wrong = tmp_path / "wrong"
    wrong.write_bytes(OTHER_SECRET)
    status, out, err = await cli(
        "get", secret_node.address, "k", "--cluster", "shop", "--secret-file", str(wrong)
    )
    one_error_line(status, out, err, 4, "does not hold this client's cluster secret")


async def test_a_secret_the_node_lacks_is_refused_by_the_handshake(
    node: Cache, secret_file: Path
) -> None:
    assert node.address is not None
    status, out, err = await cli(
        "get", node.address, "k", "--cluster", "shop", "--secret-file", str(secret_file)
    )
    one_error_line(status, out, err, 4, "has no cluster secret")


async def test_with_the_secret_another_cluster_is_named_as_the_reason(
    secret_node: Cache, secret_file: Path
) -> None:
    assert secret_node.address is not None
    status, out, err = await cli(
        "get", secret_node.address, "k", "--cluster", "other", "--secret-file", str(secret_file)
    )
    one_error_line(status, out, err, 4, "is not in cluster 'other'")


async def test_a_node_that_does_not_answer_is_a_timeout() -> None:
    # A listener that never accepts: the kernel completes the TCP handshake, then silence.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        status, out, err = await cli("stats", f"127.0.0.1:{port}", "--timeout", "0.5")
    one_error_line(status, out, err, 5, "did not answer within 0.5 s")


async def test_an_operation_the_node_refuses_is_status_6() -> None:
    async with Cache(backend="p2p", discovery="none", max_value_bytes=64) as small:
        assert small.address is not None
        status, out, err = await cli("set", small.address, "k", "x" * 100, "--timeout", "30")
    one_error_line(status, out, err, 6, "refused set")
    assert "max_value_bytes" in err or "64" in err


# ------------------------------------------------------------ input, before anything is sent
class CountingListener:
    """A TCP listener that counts the connections made to it (and answers nothing)."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self.server = await asyncio.start_server(accepted, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["set", "{address}", "k", "{bad", "--json"], "VALUE is not valid JSON"),
        (
            ["set", "{address}", "k", "123456789012345678901234567890", "--json"],
            "the integer 123456789012345678901234567890, beyond the 64 bits",
        ),
        (["set", "{address}", "k", "[" * 100 + "]" * 100, "--json"], "nest"),
        (["get", "{address}", "k" * 2000], "the key has 2000 characters; a key has at most 1024"),
        (["set", "{address}", "k" * 1025, "v"], "the key has 1025 characters"),
        (["get", "nonsense", "k"], "HOST:PORT 'nonsense' is not host:port"),
        (["get", "{address}", "k", "--secret-file", "/nonexistent/secret"], "secret file"),
    ],
    ids=[
        "bad json",
        "30-digit int",
        "too deep",
        "long key get",
        "long key set",
        "address",
        "secret",
    ],
)
async def test_bad_input_is_status_7_and_nothing_is_sent(args: list[str], text: str) -> None:
    listener = CountingListener()
    async with listener as address:
        status, out, err = await cli(*(address if a == "{address}" else a for a in args))
    one_error_line(status, out, err, 7, text)
    assert listener.connections == 0


async def test_node_start_failures_have_their_own_status(node: Cache, tmp_path: Path) -> None:
    assert node.address is not None
    status, out, err = await cli("node", "--listen", node.address, "--discovery", "none")
    one_error_line(status, out, err, 8, "address already in use")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    status, out, err = await cli(
        "node", "--listen", "127.0.0.1:0", "--discovery", "none", "--persist", f"{blocker}/x.db"
    )
    one_error_line(status, out, err, 8, str(blocker))
    status, out, err = await cli("node", "--listen", "nowhere", "--discovery", "none")
    one_error_line(status, out, err, 7, "listen")


async def test_usage_errors_are_status_2_on_stderr() -> None:
    for args in (
        ["frobnicate"],
        ["demo", "--nodes", "1"],
        ["get"],
        ["set", "h:1", "k", "v", "--ttl", "-1"],
    ):
        status, out, err = await cli(*args)
        assert status == 2 and out == "" and "usage: crdtcache" in err, (args, status, err)


async def test_a_negative_result_is_status_1_with_its_reason_on_stderr() -> None:
    status, out, err = await cli("simulate", "--nodes", "30", "--loss", "0.99")
    assert status == 1 and "simulated cluster of 30 nodes" in out
    assert err == "crdtcache simulate: did not converge within 10 s of simulated time\n"


def test_every_status_is_documented() -> None:
    """`crdtcache --help` and docs/cli.md list every exit status the CLI uses."""
    import subprocess

    from crdtcache.cli import EXIT_STATUSES

    shown = subprocess.run([*CLI, "--help"], capture_output=True, text=True, check=True).stdout
    docs = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    for code, meaning in EXIT_STATUSES.items():
        assert f"  {code:>3}  {meaning.split()[0]}" in shown
        assert f"| {code} |" in docs, code
    assert len(set(EXIT_STATUSES)) == len(EXIT_STATUSES) >= 9
