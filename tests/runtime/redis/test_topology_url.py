"""The ``redis_url`` forms: one server, a Redis Cluster, a Sentinel service (no server)."""

from __future__ import annotations

import pytest
from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    ReadOnlyError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)

from crdtcache import Cache, ConfigError, PeerError
from crdtcache.runtime.redis._commands import Commands
from crdtcache.runtime.redis._scripts import CLEAN, PATTERN, WRITE, sharded
from crdtcache.runtime.redis._topology import (
    CLUSTER,
    SENTINEL,
    SINGLE,
    Endpoint,
    parse_redis_url,
    redact_url,
)
from tests.runtime.redis.topologies import parse_topology_url


@pytest.mark.parametrize(
    ("url", "kind", "hosts", "service", "db"),
    [
        ("redis+cluster://127.0.0.1:7000/", CLUSTER, [("127.0.0.1", 7000)], None, 0),
        ("redis+cluster://a:7000,b/0", CLUSTER, [("a", 7000), ("b", 6379)], None, 0),
        ("rediss+cluster://a", CLUSTER, [("a", 6379)], None, 0),
        (
            "redis+sentinel://h:26380,[::1],s/mymaster/3",
            SENTINEL,
            [("h", 26380), ("::1", 26379), ("s", 26379)],
            "mymaster",
            3,
        ),
        ("redis+sentinel://h/svc", SENTINEL, [("h", 26379)], "svc", 0),
    ],
)
def test_topology_urls(
    url: str, kind: str, hosts: list[tuple[str, int]], service: str | None, db: int
) -> None:
    target = parse_redis_url(url)
    assert (target.kind, target.service, target.db) == (kind, service, db)
    assert target.hosts == tuple(Endpoint(h, p) for h, p in hosts)
    assert target.tls == url.startswith("rediss")
    # The fixtures' reference parser reads every form alike.
    reference = parse_topology_url(url)
    assert [(e.host, e.port) for e in reference.hosts] == hosts
    assert (reference.kind, reference.service, reference.db) == (kind, service, db)


def test_credentials_and_options_are_split_between_redis_py_and_crdtcache() -> None:
    target = parse_redis_url(
        "redis+sentinel://u:p%40ss@h1,h2/svc?sentinel_password=sp&wait_replicas=1"
        "&socket_keepalive=true"
    )
    assert (target.username, target.password) == ("u", "p@ss")
    assert (target.sentinel_username, target.sentinel_password) == (None, "sp")
    assert target.wait_replicas == 1
    assert target.options == {"socket_keepalive": "true"}  # redis-py's own
    assert target.authenticated
    assert target.node_url() == "redis://u:p%40ss@h1:26379/0?socket_keepalive=true"
    single = parse_redis_url("redis://h:6380/2?wait_replicas=2&socket_keepalive=true")
    assert (single.kind, single.wait_replicas) == (SINGLE, 2)
    assert single.url == "redis://h:6380/2?socket_keepalive=true"  # what redis-py reads


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://h:1", "must start with"),
        ("redis+cluster://", "at least one host"),
        ("redis+cluster://h:1/3", "only database 0"),
        ("redis+cluster://h:99999", "bad host"),
        ("redis+cluster://::1:7000", "brackets"),
        ("redis+sentinel://h:26379", "names the service"),
        ("redis+sentinel://h/svc/x", "database"),
        ("redis://h?wait_replicas=-1", "wait_replicas"),
        ("redis+cluster://h?wait_replicas=99", "wait_replicas"),
    ],
)
def test_malformed_urls_are_refused_with_the_reason(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_redis_url(url)
    with pytest.raises(ConfigError, match=f"redis_url .*{problem}"):
        Cache(backend="redis", redis_url=url)


def test_passwords_never_reach_messages() -> None:
    for url in (
        "redis+cluster://u:secret@a:1,b:2/",
        "rediss+sentinel://:secret@a,b/svc/0?sentinel_password=secret",
        "redis://:secret@h/0",
        "unix:///tmp/r.sock?password=secret",
    ):
        shown = redact_url(url)
        assert "secret" not in shown and "***" in shown
        commands = Commands(url, client_name="t", on_unreachable=print)
        assert "secret" not in commands.where
    assert redact_url("redis+cluster://a:1,b:2/") == "redis+cluster://a:1,b:2/"


def test_pickle_counts_a_cluster_or_sentinel_password_or_tls_as_authenticated() -> None:
    for url in ("redis+cluster://:pw@a:1", "rediss+sentinel://a/svc"):
        Cache(backend="redis", redis_url=url, serializer="pickle")  # accepted
    with pytest.raises(ConfigError, match="pickle"):
        Cache(backend="redis", redis_url="redis+cluster://a:1", serializer="pickle")


def test_sharded_scripts_publish_with_spublish_and_nothing_else_changes() -> None:
    for script in (WRITE, PATTERN):
        variant = sharded(script)
        assert "redis.call('SPUBLISH'," in variant.source
        assert "redis.call('PUBLISH'," not in variant.source
        assert variant.source.replace("SPUBLISH", "PUBLISH") == script.source
        assert variant.sha != script.sha and variant.name == script.name
    assert sharded(CLEAN) is CLEAN  # nothing to publish


@pytest.mark.parametrize(
    "exc",
    [
        ClusterDownError("CLUSTERDOWN The cluster is down"),
        MasterDownError("MASTERDOWN"),
        TryAgainError("TRYAGAIN"),
        ReadOnlyError("READONLY You can't write against a read only replica."),
        SlotNotCoveredError("slot 12 is not covered"),
        RedisClusterException("Redis Cluster cannot be connected"),
        MasterNotFoundError("No master found for 'svc'"),
    ],
)
async def test_a_cluster_or_sentinel_in_failover_reads_unreachable(exc: Exception) -> None:
    """A reshaping topology is transient like a lost connection: write-behind retries,
    the link is retried, nothing is counted as refused."""
    reasons: list[str] = []
    cmds = Commands("redis+cluster://a:1/", client_name="t", on_unreachable=reasons.append)
    with pytest.raises(PeerError, match="unreachable") as info, cmds.mapped("EVALSHA"):
        raise exc
    assert info.value.__cause__ is exc and reasons == [str(exc)]


def test_each_topology_builds_its_clients_without_io() -> None:
    for url, clustered in (
        ("redis+cluster://127.0.0.1:1,127.0.0.1:2/?wait_replicas=1", True),
        ("redis+sentinel://127.0.0.1:1/svc/2?sentinel_password=x", False),
        ("redis://127.0.0.1:1/0?wait_replicas=2", False),
    ):
        cmds = Commands(url, client_name="t", on_unreachable=print)
        cmds.connect()
        assert cmds.clustered == clustered
        assert cmds.wait_replicas == parse_redis_url(url).wait_replicas
        assert cmds.subscription() is not None
    with pytest.raises(PeerError, match="must start with"):
        Commands("http://x", client_name="t", on_unreachable=print).connect()
