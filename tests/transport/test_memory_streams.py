"""In-memory streams and networks: the stream seam without sockets."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from crdtcache.transport._memory import FIRST_PORT, MemoryHub, MemoryStream
from crdtcache.transport._stream import Stream, StreamClosed, StreamError, TLSFailed


async def _pair(hub: MemoryHub | None = None) -> tuple[MemoryHub, Stream, Stream]:
    """A stream from node "a" to a listener of node "b", and the accepted end."""
    hub = hub or MemoryHub()
    accepted: asyncio.Queue[Stream] = asyncio.Queue()

    async def accept(stream: Stream) -> None:
        await accepted.put(stream)

    listener = await hub.network("b").listen("127.0.0.1", 0, accept, tls=False)
    assert listener.address == ("127.0.0.1", FIRST_PORT) and listener.loopback_only()
    client = await hub.network("a").connect(*listener.address)
    return hub, client, await accepted.get()


async def test_bytes_arrive_in_order_and_unread_bytes_count_as_buffered() -> None:
    _, client, server = await _pair()
    client.write(b"hello ")
    client.write(b"world")
    assert client.buffered() == 11
    assert await server.read_exactly(6) == b"hello "
    assert client.buffered() == 5
    reader = asyncio.ensure_future(server.read_exactly(7))
    await asyncio.sleep(0)
    assert not reader.done()  # waits for the rest
    client.write(b"!!")
    assert await reader == b"world!!"
    assert server.extra("peername")[0] == "127.0.0.1" and server.extra("peercert") is None


async def test_close_ends_reads_after_what_was_written_and_reports_a_cut_read() -> None:
    _, client, server = await _pair()
    client.write(b"abc")
    await client.close(1.0)
    with pytest.raises(StreamClosed) as cut:
        await server.read_exactly(5)
    assert cut.value.partial == b"abc" and cut.value.truncated
    with pytest.raises(StreamClosed) as ended:
        await server.read_exactly(1)
    assert not ended.value.truncated
    server.write(b"ignored")  # the other side is gone: dropped, no error
    assert client.is_closing()


async def test_abort_resets_the_peer_and_discards_unread_bytes() -> None:
    _, client, server = await _pair()
    client.write(b"lost")
    client.abort()
    with pytest.raises(StreamError, match="reset"):
        await server.read_exactly(1)
    with pytest.raises(StreamClosed, match="closed by this node"):
        await client.read_exactly(1)
    assert server.is_closing() and server.buffered() == 0


async def test_dials_to_nothing_and_across_a_partition_are_refused() -> None:
    hub, _, server = await _pair()
    with pytest.raises(StreamError, match="refused"):
        await hub.network("a").connect("127.0.0.1", 1)
    hub.partition(["a"], ["b"])
    with pytest.raises(StreamError, match="reset"):
        await server.read_exactly(1)  # the link between the groups broke
    with pytest.raises(StreamError, match="partition"):
        await hub.network("a").connect("127.0.0.1", FIRST_PORT)
    hub.heal()
    again = await hub.network("a").connect("127.0.0.1", FIRST_PORT)
    assert isinstance(again, MemoryStream) and (again.owner, again.peer) == ("a", "b")


async def test_break_links_resets_one_pair_only() -> None:
    hub, _, server = await _pair()
    accepted: list[Stream] = []

    async def accept(stream: Stream) -> None:
        accepted.append(stream)

    listener = await hub.network("c").listen("127.0.0.1", 0, accept, tls=False)
    other = await hub.network("a").connect(*listener.address)
    hub.break_links("a", "b")
    with pytest.raises(StreamError, match="reset"):
        await server.read_exactly(1)
    other.write(b"x")
    await asyncio.sleep(0)
    assert await accepted[0].read_exactly(1) == b"x"


async def test_no_tls_in_memory_and_a_port_is_bound_once() -> None:
    hub, client, _ = await _pair()
    with pytest.raises(TLSFailed, match="do not run TLS"):
        await client.start_tls(
            ssl.create_default_context(), server_side=False, server_hostname=None
        )

    async def accept(stream: Stream) -> None:
        return None

    with pytest.raises(StreamError, match="in use"):
        await hub.network("c").listen("127.0.0.1", FIRST_PORT, accept, tls=False)


def test_each_node_draws_from_its_own_seeded_generator() -> None:
    one, two = MemoryHub(seed=5), MemoryHub(seed=5)
    assert one.network("a").random().random() == two.network("a").random().random()
    assert one.network("b") is one.network("b")
    six, five = MemoryHub(seed=6).network("a"), MemoryHub(seed=5).network("a")
    assert six.random().random() != five.random().random()
