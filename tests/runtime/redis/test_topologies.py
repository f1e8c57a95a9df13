"""The cluster and sentinel fixtures, exercised with redis-py directly (not crdtcache).

They check what Redis mode will rely on in those topologies: slot routing, Lua on keys
of one hash tag with the NOSCRIPT fallback, classic and sharded pub/sub, clients and
subscribers finding the new primary after a failover, and the one loss a failover
can cause (an acknowledged write not yet replicated, which WAIT reports).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterPubSub, RedisCluster
from redis.exceptions import (
    ConnectionError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)

from tests.runtime.redis.topologies import (
    RedisClusterTopology,
    RedisSentinelTopology,
    cluster_client,
    parse_topology_url,
    replication_stalled,
    sentinel_client,
)

T = TypeVar("T")

# An LWW register in Lua: write (value, stamp) only if the stamp is newer.
LWW_SET = """
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old and tonumber(old) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""


async def retrying(call: Callable[[], Awaitable[T]], timeout: float = 15.0) -> tuple[T, int]:
    """``call()`` retried on connection-level errors until ``timeout``; the result and
    how many attempts failed first."""
    deadline = time.monotonic() + timeout
    failures = 0
    while True:
        try:
            return await call(), failures
        except (RedisError, OSError):
            failures += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def next_message(
    get: Callable[[], Awaitable[dict[str, Any] | None]], timeout: float = 5.0
) -> dict[str, Any] | None:
    """The next data message from ``get`` (subscribe confirmations skipped), or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = await get()
        if message is not None and message["type"] in ("message", "smessage"):
            return message
    return None


@pytest.fixture
async def shared_client(
    shared_redis_cluster: RedisClusterTopology,
) -> AsyncIterator[RedisCluster]:
    client = cluster_client(shared_redis_cluster.url)
    await client.initialize()
    yield client
    await client.aclose()


async def close(*closables: Any) -> None:
    """``aclose()`` each (clients, pub/subs, sentinels), whatever the others do."""
    for closable in closables:
        with contextlib.suppress(RedisError, OSError):
            await closable.aclose()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- URLs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind", "hosts", "service", "db"),
    [
        ("redis+cluster://127.0.0.1:7000/", "cluster", [("127.0.0.1", 7000)], None, 0),
        (
            "redis+cluster://a:7000,b:7001/0",
            "cluster",
            [("a", 7000), ("b", 7001)],
            None,
            0,
        ),
        (
            "redis+sentinel://h:26379,[::1]:26380/mymaster/3",
            "sentinel",
            [("h", 26379), ("::1", 26380)],
            "mymaster",
            3,
        ),
        ("rediss+sentinel://h:1/svc", "sentinel", [("h", 1)], "svc", 0),
        ("redis+sentinel://a,[::1]/svc", "sentinel", [("a", 26379), ("::1", 26379)], "svc", 0),
        ("redis+cluster://a,b:7001", "cluster", [("a", 6379), ("b", 7001)], None, 0),
    ],
)
def test_topology_url_syntax(
    url: str, kind: str, hosts: list[tuple[str, int]], service: str | None, db: int
) -> None:
    parsed = parse_topology_url(url)
    assert parsed.kind == kind
    assert [(e.host, e.port) for e in parsed.hosts] == hosts
    assert (parsed.service, parsed.db) == (service, db)
    assert parsed.tls == url.startswith("rediss")


def test_topology_url_credentials_and_options() -> None:
    parsed = parse_topology_url(
        "redis+sentinel://u:p%40ss@h:1,h:2/svc/0?sentinel_password=s&socket_timeout=2"
    )
    assert (parsed.username, parsed.password) == ("u", "p@ss")
    assert parsed.options == {"sentinel_password": "s", "socket_timeout": "2"}


@pytest.mark.parametrize(
    "url",
    [
        "redis://h:1/0",  # not a topology URL
        "redis+cluster://h:1/1",  # a cluster has only db 0
        "redis+cluster://h:x/",  # a bad port
        "redis+cluster://::1:7000/",  # an IPv6 host without brackets
        "redis+cluster:///",  # no hosts
        "redis+sentinel://h:1/",  # no service name
        "redis+sentinel://h:1/svc/x",  # bad db
    ],
)
def test_topology_url_rejects(url: str) -> None:
    with pytest.raises(ValueError):
        parse_topology_url(url)


# --- Redis Cluster ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_cluster_formation(shared_redis_cluster: RedisClusterTopology) -> None:
    topology = shared_redis_cluster
    view = topology.view()
    primaries = [i for i in view if i.is_primary]
    assert len(primaries) == 3 and len(view) == 6
    assert sum(last - first + 1 for p in primaries for first, last in p.slots) == 16384
    for primary in topology.primary_nodes():
        assert len(topology.replicas_of(primary)) == 1
    assert [e for e in parse_topology_url(topology.url).hosts] == topology.startup_nodes
    assert topology.setup_seconds < 20, topology.setup_seconds


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_cluster_write_read_across_slots(
    shared_redis_cluster: RedisClusterTopology, shared_client: RedisCluster
) -> None:
    prefix = unique("rw")
    keys = [f"{prefix}:{i}" for i in range(120)]
    for key in keys:
        await shared_client.set(key, key.encode())
    assert await shared_client.mget_nonatomic(keys) == [k.encode() for k in keys]

    # The keys really landed on every primary (each primary holds the ones it owns).
    owners: dict[int, list[str]] = {}
    for key in keys:
        owners.setdefault(shared_redis_cluster.primary_for_key(key).port, []).append(key)
    assert len(owners) == 3
    for port, owned in owners.items():
        node = shared_redis_cluster.node_at(
            next(e for e in shared_redis_cluster.startup_nodes if e.port == port)
        )
        assert node.raw("GET", owned[0]) == owned[0]
        with pytest.raises(MovedError):
            node.raw("GET", next(k for k in keys if k not in owned))

    # SCAN runs per primary: scan_iter asks each primary with its own cursor.
    found = {k.decode() async for k in shared_client.scan_iter(match=f"{prefix}:*", count=50)}
    assert found == set(keys)


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_cluster_lua_on_one_hash_tag_with_noscript_fallback(
    shared_redis_cluster: RedisClusterTopology, shared_client: RedisCluster
) -> None:
    tag = unique("C")
    values, stamps = f"{{{tag}}}:v", f"{{{tag}}}:s"
    script = shared_client.register_script(LWW_SET)

    # A script never loaded: EVALSHA fails with NOSCRIPT; the Script object loads it.
    with pytest.raises(NoScriptError):
        await shared_client.evalsha(script.sha, 2, values, stamps, "k", "1", "a")
    assert await script(keys=[values, stamps], args=["k", "5", "a"]) == 1
    assert await script(keys=[values, stamps], args=["k", "4", "old"]) == 0
    assert await shared_client.hget(values, "k") == b"a"

    # The owner of {tag} forgets its scripts (as a restarted or promoted node has):
    # the next call takes the NOSCRIPT fallback transparently.
    owner = shared_redis_cluster.primary_for_key(values)
    owner.raw("SCRIPT", "FLUSH")
    assert owner.raw("SCRIPT", "EXISTS", script.sha) == [0]
    assert await script(keys=[values, stamps], args=["k", "6", "b"]) == 1
    assert owner.raw("SCRIPT", "EXISTS", script.sha) == [1]

    # Keys in different slots cannot go to one script call.
    with pytest.raises((RedisClusterException, ResponseError)):
        await script(keys=[values, f"{{{tag}x}}:s"], args=["k", "7", "c"])


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_cluster_classic_pubsub_reaches_every_node(
    shared_redis_cluster: RedisClusterTopology, shared_client: RedisCluster
) -> None:
    channel = f"crdtcache:{{{unique('C')}}}:inv"
    nodes = shared_redis_cluster.nodes
    clients = [aioredis.Redis(host=n.endpoint.host, port=n.port) for n in nodes]
    pubsubs = [c.pubsub() for c in clients]
    try:
        for pubsub in pubsubs:
            await pubsub.subscribe(channel)
        # Published on one node (through the cluster client), heard on all six,
        # replicas included: classic PUBLISH is broadcast over the cluster bus.
        await shared_client.publish(channel, b"hello")
        for pubsub in pubsubs:
            message = await next_message(partial(pubsub.get_message, timeout=0.2))
            assert message is not None and message["data"] == b"hello"
    finally:
        await close(*pubsubs, *clients)


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_cluster_sharded_pubsub_stays_in_the_slot(
    shared_redis_cluster: RedisClusterTopology, shared_client: RedisCluster
) -> None:
    channel = f"crdtcache:{{{unique('C')}}}:inv"
    owner = shared_redis_cluster.primary_for_key(channel)
    elsewhere = next(p for p in shared_redis_cluster.primary_nodes() if p is not owner)

    sharded: ClusterPubSub = shared_client.pubsub()
    classic = aioredis.Redis(host=owner.endpoint.host, port=owner.port)
    classic_pubsub = classic.pubsub()
    other = aioredis.Redis(host=elsewhere.endpoint.host, port=elsewhere.port)
    try:
        await sharded.ssubscribe(channel)
        await classic_pubsub.subscribe(channel)
        assert await next_message(lambda: classic_pubsub.get_message(timeout=0.05), 0.3) is None

        # SPUBLISH goes to the slot's shard; only SSUBSCRIBErs of that shard hear it.
        assert await shared_client.spublish(channel, b"inv") == 1
        message = await next_message(lambda: sharded.get_sharded_message(timeout=0.2))
        assert message is not None and message["data"] == b"inv"
        assert await next_message(lambda: classic_pubsub.get_message(timeout=0.1), 0.5) is None

        # A node of another shard redirects SPUBLISH (and SSUBSCRIBE) to the owner.
        with pytest.raises(MovedError):
            await other.spublish(channel, "x")
    finally:
        await close(sharded, classic_pubsub, classic, other)


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_cluster_primary_failover_client_reconnects(
    redis_cluster: RedisClusterTopology,
) -> None:
    client = cluster_client(redis_cluster.url, socket_timeout=1, socket_connect_timeout=1)
    try:
        key = "crdtcache:{C}:v"
        script = client.register_script(LWW_SET)
        assert await script(keys=[key, "crdtcache:{C}:s"], args=["k", "1", "before"]) == 1
        primary = redis_cluster.primary_for_key(key)
        redis_cluster.wait_replicated(primary)
        (replica,) = redis_cluster.replicas_of(primary)
        # Scripts are not replicated: the replica that will be promoted lacks it.
        assert replica.raw("SCRIPT", "EXISTS", script.sha) == [0]

        report = await asyncio.to_thread(redis_cluster.kill_primary, primary)
        assert report.promoted == replica.endpoint
        assert report.settled_after < 15, report

        # The client learns the new slot owner (after a few failed attempts at most)
        # and the Script object reloads the script on it (NOSCRIPT fallback).
        value, _failures = await retrying(lambda: client.hget(key, "k"))
        assert value == b"before"
        written, _ = await retrying(
            lambda: script(keys=[key, "crdtcache:{C}:s"], args=["k", "2", "after"])
        )
        assert written == 1
        assert replica.raw("HGET", key, "k") == "after"
    finally:
        await client.aclose()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_cluster_subscribers_after_failover(redis_cluster: RedisClusterTopology) -> None:
    client = cluster_client(redis_cluster.url, socket_timeout=1, socket_connect_timeout=1)
    channel = "crdtcache:{C}:inv"
    sharded = client.pubsub()
    classic = client.pubsub()
    try:
        await client.initialize()  # a ClusterPubSub needs the slot map before its first use
        await sharded.ssubscribe(channel)
        await classic.subscribe(channel)  # connects to the node owning the channel's slot
        owner = redis_cluster.primary_for_key(channel)
        redis_cluster.wait_replicated(owner)
        await asyncio.to_thread(redis_cluster.kill_primary, owner)

        # Sharded: redis-py moves the subscription to the new owner when the client's
        # slot map is refreshed, which a command through the same client (here the
        # SPUBLISH) does.
        async def sharded_heard() -> dict[str, Any]:
            await client.spublish(channel, b"after")
            got = await next_message(lambda: sharded.get_sharded_message(timeout=0.1), 0.5)
            if got is None:
                raise ConnectionError("not yet")
            return got

        message, _ = await retrying(sharded_heard)
        assert message["data"] == b"after"

        # Classic: the ClusterPubSub stays bound to the dead node. Refresh the slot
        # map and subscribe on a new one (any node would do: PUBLISH is broadcast).
        await close(classic)
        await client.nodes_manager.initialize()
        classic = client.pubsub()
        await classic.subscribe(channel)
        await client.publish(channel, b"again")
        got = await next_message(lambda: classic.get_message(timeout=0.2))
        assert got is not None and got["data"] == b"again"
    finally:
        await close(sharded, classic, client)


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_cluster_failover_loses_an_unreplicated_write_that_wait_reported(
    redis_cluster: RedisClusterTopology,
) -> None:
    client = cluster_client(redis_cluster.url, socket_timeout=2, socket_connect_timeout=1)
    try:
        await client.initialize()
        primary = redis_cluster.primary_for_key("{L}")
        replicas = redis_cluster.replicas_of(primary)
        node = client.get_node_from_key("{L}")

        async def set_and_wait(key: str, timeout_ms: int) -> list[Any]:
            # WAIT cannot run inside a script and has no key: it goes after the write,
            # on the same connection (a pipeline to the slot's node).
            pipe = client.pipeline(transaction=False)
            pipe.set(key, "1")
            pipe.execute_command("WAIT", 1, timeout_ms, target_nodes=node)
            return list(await pipe.execute())

        assert await set_and_wait("{L}:safe", 2000) == [True, 1]
        with replication_stalled(primary, replicas[0], "{L}:filler"):
            # Acknowledged by the primary, but WAIT says no replica has it.
            assert await set_and_wait("{L}:lost", 100) == [True, 0]
            began = time.monotonic()
            primary.kill()
        await asyncio.to_thread(redis_cluster.wait_promoted, primary, replicas, began)

        assert (await retrying(lambda: client.exists("{L}:safe")))[0] == 1
        assert (await retrying(lambda: client.exists("{L}:lost")))[0] == 0
    finally:
        await client.aclose()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_cluster_killed_primary_rejoins_as_replica(
    redis_cluster: RedisClusterTopology,
) -> None:
    primary = redis_cluster.primary_nodes()[0]
    report = await asyncio.to_thread(redis_cluster.kill_primary, primary)
    seconds = await asyncio.to_thread(redis_cluster.restart, primary)
    assert primary.role() == "slave"
    assert primary.info("replication")["master_port"] == str(report.promoted.port)
    assert primary not in redis_cluster.primary_nodes()
    assert seconds < 15


# --- Sentinel --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_sentinel_formation(redis_sentinel: RedisSentinelTopology) -> None:
    primary, replica = redis_sentinel.data_nodes
    assert redis_sentinel.primary_by_sentinels() is primary
    assert redis_sentinel.setup_seconds < 20, redis_sentinel.setup_seconds
    sentinel, service, db = sentinel_client(redis_sentinel.url, socket_timeout=1)
    assert (service, db) == ("mymaster", 0)
    try:
        assert await sentinel.discover_master(service) == (primary.endpoint.host, primary.port)
        assert await sentinel.discover_slaves(service) == [(replica.endpoint.host, replica.port)]
    finally:
        await sentinel.aclose()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_sentinel_failover_client_and_subscriber_follow(
    redis_sentinel: RedisSentinelTopology,
) -> None:
    sentinel, service, db = sentinel_client(
        redis_sentinel.url, socket_timeout=1, socket_connect_timeout=1
    )
    master = sentinel.master_for(service, db=db)
    subscriber_client = sentinel.master_for(service, db=db)
    pubsub = subscriber_client.pubsub()
    try:
        await master.set("k", "before")
        await pubsub.subscribe("crdtcache:{C}:inv")
        await master.publish("crdtcache:{C}:inv", "one")
        message = await next_message(lambda: pubsub.get_message(timeout=0.2))
        assert message is not None and message["data"] == b"one"
        await asyncio.to_thread(redis_sentinel.wait_replicated)

        old, new = redis_sentinel.data_nodes
        report = await asyncio.to_thread(redis_sentinel.kill_primary)
        assert (report.killed, report.promoted) == (old.endpoint, new.endpoint)
        assert report.settled_after < 20, report

        # Commands: the pool asks the sentinels again and reaches the new primary.
        value, _ = await retrying(lambda: master.get("k"))
        assert value == b"before"
        await retrying(lambda: master.set("k", "after"))
        assert new.raw("GET", "k") == "after"

        # The subscriber: its connection to the dead primary fails; the next read
        # reconnects through the sentinels and subscribes again.
        async def resubscribed() -> bool:
            with contextlib.suppress(ConnectionError, OSError):
                await pubsub.get_message(timeout=0.1)
            return True

        await retrying(resubscribed)
        received: dict[str, Any] | None = None
        deadline = time.monotonic() + 10
        while received is None and time.monotonic() < deadline:
            await master.publish("crdtcache:{C}:inv", "two")
            try:
                received = await next_message(lambda: pubsub.get_message(timeout=0.1), 0.5)
            except (ConnectionError, OSError):
                await asyncio.sleep(0.1)
        assert received is not None and received["data"] == b"two"
    finally:
        await close(pubsub, subscriber_client, master, sentinel)
