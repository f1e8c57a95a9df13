"""Every option is validated at construction with a ConfigError that names it."""

from __future__ import annotations

import inspect
import ssl
from typing import Any

import pytest

from crdtcache import Cache, ConfigError

SPEC_DEFAULTS = {
    "backend": "p2p",
    "node_id": None,
    "cluster": "default",
    "listen": "127.0.0.1:0",
    "discovery": "mdns",
    "seeds": (),
    "redis_url": None,
    "persist_path": None,
    "max_size": 10_000,
    "max_memory": None,
    "default_ttl": None,
    "local_max_size": None,
    "local_ttl": None,
    "sync_strategy": "write-behind",
    "sync_interval": 0.005,
    "conflict_resolver": None,
    "schema": None,
    "serializer": "msgpack",
    "max_value_bytes": 1 << 20,
    "max_key_chars": 1024,
    "event_bus": None,
    "invalidation_rules": (),
    "on_change": None,
    "warm_up": None,
    "refresh_interval": None,
    "refresh": None,
    "metrics": None,
    "secret": None,
    "ssl": None,
    "dashboard": None,
}


def test_constructor_matches_the_spec() -> None:
    params = inspect.signature(Cache).parameters
    public = {name: p.default for name, p in params.items() if not name.startswith("_")}
    assert public == SPEC_DEFAULTS


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backend": "dynamo"}, "backend"),
        ({"backend": "redis", "redis_url": "http://x"}, "redis_url"),
        ({"node_id": ""}, "node_id"),
        ({"node_id": "has space"}, "node_id"),
        ({"node_id": "x" * 129}, "node_id"),
        ({"node_id": 5}, "node_id"),
        ({"cluster": ""}, "cluster"),
        ({"listen": "nohost"}, "listen"),
        ({"listen": "127.0.0.1:99999"}, "listen"),
        ({"listen": 8080}, "listen"),
        ({"discovery": "dns"}, "discovery"),
        ({"seeds": "10.0.0.1:1"}, "seeds"),
        ({"seeds": ["bad"]}, "seeds"),
        ({"seeds": 5}, "seeds"),
        ({"redis_url": "redis://x"}, "redis_url"),
        ({"local_max_size": 10}, "local_max_size"),
        ({"local_ttl": 1.0}, "local_ttl"),
        ({"persist_path": 5}, "persist_path"),
        ({"persist_path": ""}, "persist_path"),
        ({"max_size": 0}, "max_size"),
        ({"max_size": -1}, "max_size"),
        ({"max_size": 1.5}, "max_size"),
        ({"max_size": True}, "max_size"),
        ({"max_memory": 0}, "max_memory"),
        ({"default_ttl": -1}, "default_ttl"),
        ({"default_ttl": 0}, "default_ttl"),
        ({"sync_strategy": "eventual"}, "sync_strategy"),
        ({"sync_interval": 0}, "sync_interval"),
        ({"sync_interval": None}, "sync_interval"),
        ({"conflict_resolver": "lww"}, "conflict_resolver"),
        ({"on_change": 1}, "on_change"),
        ({"warm_up": 1}, "warm_up"),
        ({"refresh_interval": 5}, "refresh_interval and refresh"),
        ({"refresh": print}, "refresh_interval and refresh"),
        ({"refresh_interval": -1, "refresh": print}, "refresh_interval"),
        ({"secret": "text"}, "secret"),
        ({"secret": b""}, "secret"),
        ({"ssl": "context"}, "ssl"),
        ({"secret": b"short"}, "secret"),
        ({"ssl": ssl.create_default_context()}, "TLS"),
        ({"dashboard": "nope"}, "dashboard"),
        ({"dashboard": "0.0.0.0:8080"}, "not a loopback address"),
        ({"metrics": object()}, "metrics"),
        ({"max_value_bytes": 0}, "max_value_bytes"),
        ({"max_value_bytes": 1.5}, "max_value_bytes"),
        ({"max_value_bytes": True}, "max_value_bytes"),
        ({"max_value_bytes": (32 << 20) + 1}, "max_value_bytes must be an int from 1 to 33554432"),
        ({"max_value_bytes": (32 << 20) + 1, "backend": "p2p"}, "from 1 to 33554432, not"),
        ({"max_value_bytes": (32 << 20) + 1, "backend": "redis"}, "from 1 to 33554432, not"),
        ({"max_key_chars": 0}, "max_key_chars"),
        ({"max_key_chars": 1025}, "max_key_chars must be an int from 1 to 1024"),
        ({"serializer": "json"}, "serializer must be 'msgpack', 'pickle' or a"),
        ({"serializer": (print,)}, "serializer"),
        ({"serializer": (1, 2)}, "serializer"),
        ({"serializer": "pickle", "backend": "p2p"}, "needs secret= or ssl=.*run code"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str) -> None:
    options.setdefault("backend", "memory")
    with pytest.raises(ConfigError, match=message):
        Cache(**options)


def test_good_options_are_accepted() -> None:
    Cache(
        backend="p2p",
        node_id="n1",
        cluster="c",
        listen="[::1]:7946",
        discovery="static",
        seeds=["10.0.0.2:7946", "[fe80::1]:1"],
        max_size=None,
        max_memory=1 << 20,
        default_ttl=30,
        sync_strategy="on-demand",
        sync_interval=0.1,
        secret=[b"new-cluster-secret-0001", b"old-cluster-secret-0001"],
        refresh_interval=60,
        refresh=lambda k: None,
    )


def test_value_options_are_accepted() -> None:
    Cache(backend="memory", max_value_bytes=32 << 20, max_key_chars=250)
    # Every reader is given the node's limit: p2p and redis carry 32 MiB values too.
    Cache(backend="p2p", max_value_bytes=32 << 20)
    Cache(backend="redis", max_value_bytes=32 << 20)
    Cache(backend="memory", serializer="pickle")  # no peer: no one else writes
    Cache(backend="p2p", serializer="pickle", secret=b"cluster-secret-of-16+")
    pair = (bytes, bytes)
    assert Cache(backend="p2p", serializer=list(pair))._config.serializer == pair


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("redis://127.0.0.1:6379/0", False),
        ("redis://user@127.0.0.1:6379/0", False),
        ("redis://:pw@127.0.0.1:6379/0", True),
        ("redis://127.0.0.1:6379/0?password=pw", True),
        ("rediss://127.0.0.1:6379/0", True),
    ],
)
def test_pickle_in_redis_mode_needs_a_password_or_tls(url: str, accepted: bool) -> None:
    if accepted:
        Cache(backend="redis", redis_url=url, serializer="pickle")
    else:
        with pytest.raises(ConfigError, match=r"needs a password in redis_url.*run code"):
            Cache(backend="redis", redis_url=url, serializer="pickle")


def test_config_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        Cache(backend="nope")


# Issue 14: memory accepted ``discovery=`` (and, before, ``seeds=``) silently where Redis
# mode refused; every option that concerns only p2p peers is refused alike on both.
PEER_OPTIONS: dict[str, Any] = {
    "seeds": ["10.0.0.2:7946"],
    "listen": "0.0.0.0:7946",
    "discovery": "static",
    "ssl": ssl.create_default_context(),
}


@pytest.mark.parametrize("backend", ["memory", "redis"])
@pytest.mark.parametrize("option", sorted(PEER_OPTIONS))
def test_peer_options_are_refused_alike_where_there_are_no_peers(backend: str, option: str) -> None:
    with pytest.raises(ConfigError, match=f"^{option} does not apply to backend='{backend}': "):
        Cache(backend=backend, **{option: PEER_OPTIONS[option]})
    Cache(backend=backend, **{option: SPEC_DEFAULTS[option]})  # the default is no choice
    if option != "ssl":  # p2p takes a (server, client) pair: tests/transport/test_transport_tls
        Cache(backend="p2p", **{option: PEER_OPTIONS[option]})
