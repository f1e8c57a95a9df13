"""Admin requests and the dashboard's token (issue 12, item 13). Real sockets on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import make_engine, wait_for

from crdtcache import Cache, PeerError
from crdtcache.transport import Node

SECRET = b"admin-secret-0123456789abcdefghij"


async def test_a_request_that_times_out_leaves_the_next_one_answered() -> None:
    server = Node(make_engine("server"))
    release = asyncio.Event()

    async def admin(op: str, args: tuple[Any, ...]) -> Any:
        await release.wait()  # both answers come after the first asker gave up
        return {"found": True, "value": args[0]}

    server.admin = admin
    client = Node(make_engine("client"), client_mode=True)
    await server.start()
    await client.start()
    try:
        assert server.address is not None
        client.add_seed(server.address)
        await wait_for(lambda: "server" in client.connected_peers())
        slow = asyncio.create_task(client.request("server", "get", "slow", timeout=0.3))
        await asyncio.sleep(0.05)
        fast = asyncio.create_task(client.request("server", "get", "fast", timeout=3.0))
        with pytest.raises(PeerError, match="did not answer"):
            await slow
        # The slow request gave up first: its cleanup must forget its own id, not the
        # newest one (which would drop the fast reply as unasked for).
        release.set()
        assert (await fast)["value"] == "fast"
    finally:
        release.set()
        await asyncio.gather(client.close(), server.close())


async def test_a_loopback_dashboard_of_a_cache_with_a_secret_needs_its_token() -> None:
    aiohttp = pytest.importorskip("aiohttp")
    from crdtcache.dashboard import access_token

    async with Cache(backend="memory", secret=SECRET, dashboard="127.0.0.1:0") as cache:
        url = cache.dashboard_url
        assert url is not None
        token = access_token(SECRET)
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "api/stats") as response:
                assert response.status == 401
            bearer = {"Authorization": f"Bearer {token}"}
            async with http.get(url + "api/stats", headers=bearer) as response:
                assert response.status == 200
            async with http.get(url + f"metrics?token={token}") as response:
                assert response.status == 200
            async with http.get(url + "api/stats", headers={"Authorization": "Bearer x"}) as r:
                assert r.status == 401
            async with http.get(url + "healthz") as response:
                assert response.status == 200  # what probes ask: open
