"""What a shell client (``crdtcache get``) is sent for a value: JSON-like, wire-safe."""

from __future__ import annotations

import datetime
import decimal
import uuid

from crdtcache.cache._admin import serve_admin
from crdtcache.wire._codec import AdminReply, decode, encode

from .conftest import FakeClock, memory_cache


async def test_get_sends_every_value_type_in_a_form_the_wire_carries(clock: FakeClock) -> None:
    value = {
        1: (1, 2),
        "when": datetime.datetime(2024, 1, 2, 3, 4, tzinfo=datetime.UTC),
        "day": datetime.date(2024, 1, 2),
        "span": datetime.timedelta(seconds=90),
        "id": uuid.UUID(int=1),
        "price": decimal.Decimal("1.50"),
        "big": 1 << 70,
        "tags": {"b", "a"},
        "raw": bytearray(b"x"),
    }
    async with memory_cache(clock) as cache:
        await cache.set("k", value)
        reply = await serve_admin(cache)("get", ("k",))
    decoded = decode(encode(AdminReply(1, True, reply)))
    assert isinstance(decoded, AdminReply)
    assert decoded.result == {
        "found": True,
        "value": {
            "1": [1, 2],
            "when": "2024-01-02T03:04:00+00:00",
            "day": "2024-01-02",
            "span": 90.0,
            "id": "00000000-0000-0000-0000-000000000001",
            "price": "1.50",
            "big": str(1 << 70),
            "tags": ["a", "b"],
            "raw": b"x",
        },
    }
