"""The bind rule and the access token."""

from __future__ import annotations

import importlib.util

import pytest

from crdtcache import Cache, ConfigError
from crdtcache.dashboard import PUBLIC_ENV, access_token, policy
from crdtcache.dashboard._access import bind_policy, is_loopback_host

SECRET = b"s" * 32


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.8.7", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost", True),
        ("app.localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.2", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_loopback_without_a_secret_needs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PUBLIC_ENV, raising=False)
    chosen = bind_policy("127.0.0.1:8080", secret=None)
    assert (chosen.host, chosen.port, chosen.loopback, chosen.token) == (
        "127.0.0.1",
        8080,
        True,
        None,
    )
    assert bind_policy("[::1]:0", secret=None).host == "::1"


def test_loopback_with_a_secret_needs_the_token_unless_public(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Issue 12: other users of the machine are no cluster members either. (Before,
    # a loopback dashboard was open whatever the secret.)
    monkeypatch.delenv(PUBLIC_ENV, raising=False)
    chosen = bind_policy("127.0.0.1:8080", secret=SECRET)
    assert (chosen.loopback, chosen.token) == (True, access_token(SECRET))
    assert bind_policy("127.0.0.1:8080", secret=SECRET, public=True).token is None
    monkeypatch.setenv(PUBLIC_ENV, "1")
    assert bind_policy("localhost:8080", secret=SECRET).token is None


def test_non_loopback_is_refused_without_secret_or_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PUBLIC_ENV, raising=False)
    with pytest.raises(ConfigError, match="not a loopback address"):
        bind_policy("0.0.0.0:8080", secret=None)
    with pytest.raises(ConfigError, match=PUBLIC_ENV):
        Cache(backend="memory", dashboard="0.0.0.0:8080")


def test_secret_makes_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PUBLIC_ENV, raising=False)
    chosen = bind_policy("0.0.0.0:8080", secret=SECRET)
    assert not chosen.loopback
    assert chosen.token == access_token(SECRET)
    assert len(chosen.token) == 32 and chosen.token != access_token(b"t" * 32)
    assert SECRET.hex() not in chosen.token


def test_every_secret_of_a_rotation_has_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PUBLIC_ENV, raising=False)
    new, old = b"n" * 32, b"o" * 32
    chosen = bind_policy("0.0.0.0:8080", secret=[new, old])
    assert chosen.tokens == (access_token(new), access_token(old))
    assert chosen.token == access_token(new)


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_explicit_opt_in(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(PUBLIC_ENV, value)
    assert bind_policy("0.0.0.0:8080", secret=None).token is None
    assert bind_policy("0.0.0.0:8080", secret=SECRET).token is None  # said so: open
    monkeypatch.setenv(PUBLIC_ENV, "0")
    with pytest.raises(ConfigError):
        bind_policy("0.0.0.0:8080", secret=None)
    assert bind_policy("0.0.0.0:8080", secret=None, public=True).token is None


@pytest.mark.parametrize("address", ["nope", "127.0.0.1", "127.0.0.1:99999", 8080])
def test_malformed_address(address: object) -> None:
    with pytest.raises(ConfigError, match="dashboard"):
        bind_policy(address, secret=None)  # type: ignore[arg-type]


def test_access_token_needs_a_secret() -> None:
    with pytest.raises(ConfigError):
        access_token(b"")


def test_missing_aiohttp_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "aiohttp" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"crdtcache\[dashboard\]"):
        policy("127.0.0.1:8080", secret=None)
    with pytest.raises(ConfigError, match=r"crdtcache\[dashboard\]"):
        Cache(backend="memory", dashboard="127.0.0.1:8080")
