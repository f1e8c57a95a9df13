"""``max_value_bytes`` above the default reaches every reader: peers, Redis, snapshots.

A value larger than the default frame (4 MiB) travels in a frame that grows with the
node's ``max_value_bytes`` (``wire._framing.frame_limit``); a value over a reader's
limit is refused by that reader, whatever the medium.
"""

from __future__ import annotations

import pytest

from crdtcache import Cache, ProtocolError
from crdtcache.core import Entry, FetchReply, Push
from crdtcache.wire._codec import decode, encode
from crdtcache.wire._framing import FRAME_OVERHEAD, MAX_FRAME_BYTES, frame_limit
from tests.backends import caches_on, wait_for

MIB = 1 << 20


def test_the_frame_limit_grows_with_the_value_limit() -> None:
    assert frame_limit(MIB) == MAX_FRAME_BYTES
    assert frame_limit(32 * MIB) == 32 * MIB + FRAME_OVERHEAD


def test_the_wire_reader_applies_the_node_s_value_limit() -> None:
    body = encode(Push((("big", Entry(b"x" * (2 * MIB), 1 << 40, "a")),)))
    with pytest.raises(ProtocolError, match="exceeds max_value_bytes"):
        decode(body, frame_limit(MIB))
    message = decode(body, frame_limit(4 * MIB), max_value_bytes=4 * MIB)
    assert isinstance(message, Push) and len(message.entries[0][1].value) == 2 * MIB  # type: ignore[arg-type]
    reply = encode(FetchReply(1, (("big", Entry(b"x" * (2 * MIB), 1 << 40, "a")),)))
    assert isinstance(decode(reply, frame_limit(4 * MIB), max_value_bytes=4 * MIB), FetchReply)


@pytest.mark.parametrize("backend", ["p2p-pair", "redis-pair"])
async def test_a_value_larger_than_the_default_frame_reaches_the_other_node(
    backend: str,
) -> None:
    big = bytes(range(256)) * (24 * MIB // 256)  # 24 MiB: six times the default frame
    async with caches_on(backend, max_value_bytes=32 * MIB) as (a, b):
        await a.set("big", big)
        await a.set("small", 1)
        assert await b.get("big") == big
        assert await b.get("small") == 1


def node(node_id: str, seeds: list[str] | None = None, **options: int) -> Cache:
    return Cache(
        backend="p2p",
        discovery="none",
        node_id=node_id,
        seeds=seeds or [],
        max_value_bytes=8 * MIB,
        sync_strategy="write-through",
        **options,  # type: ignore[arg-type]  # max_size only
    )


async def test_a_node_fetches_large_values_it_evicted_in_more_than_one_reply() -> None:
    async with node("a") as a, node("b", [a.address or ""], max_size=1) as b:
        await b.wait_for_peers(1)
        values = {f"k{i}": bytes([i]) * (5 * MIB) for i in range(3)}
        await a.set_many(values)
        await wait_for(lambda: b._tier.count <= 1)
        # b holds at most one of them: the others come back from a, more than one
        # message's worth, so the reply is cut and the rest asked for one by one.
        assert await b.get_many(list(values)) == values
