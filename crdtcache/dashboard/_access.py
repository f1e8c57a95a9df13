"""Who may reach a dashboard: the bind rule and the access token.

The dashboard shows key names, node ids and addresses, so it listens on loopback
unless told otherwise, and:

* when the cache has a cluster ``secret``, the dashboard requires its *access token*
  (:func:`access_token`, an HMAC of the secret, so it can be handed to a scraper or
  a browser without handing out the secret itself) on every data route, on loopback
  too (other users of the machine are not cluster members either); the page and
  ``/healthz`` stay open (the first holds no data, the second is what load balancers
  and orchestrators probe). During a secret rotation (a list of secrets) the token of
  each is accepted, as the cluster accepts each secret;
* when the operator opted in explicitly, with ``public=True`` or the environment
  variable ``CRDTCACHE_DASHBOARD_PUBLIC=1``, it is served to anyone who can reach the
  address, without a token;
* otherwise (no secret, not public) only a loopback address is accepted.

A token is given as ``Authorization: Bearer <token>`` or ``?token=<token>``.

On loopback the ``Host`` header must name a loopback host, so a web page elsewhere
cannot read the dashboard through DNS rebinding.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from crdtcache._errors import ConfigError

__all__ = ["PUBLIC_ENV", "BindPolicy", "access_token", "bind_policy", "is_loopback_host"]

#: Environment variable that allows a non-loopback dashboard without a token ("1").
PUBLIC_ENV: Final = "CRDTCACHE_DASHBOARD_PUBLIC"
_TOKEN_LABEL: Final = b"crdtcache dashboard access v1"
_TRUE: Final = frozenset(("1", "true", "yes", "on"))


def access_token(secret: bytes) -> str:
    """The dashboard access token of a cluster ``secret`` (32 hex characters).

    Give it as ``Authorization: Bearer <token>`` (scrapers) or ``?token=<token>``
    (the page passes it on to its own requests).

    Examples:
        >>> from crdtcache.dashboard import access_token
        >>> token = access_token(b"cluster-secret-0123456789abcdef")
        >>> len(token), token == access_token(b"cluster-secret-0123456789abcdef")
        (32, True)
    """
    if not isinstance(secret, bytes) or not secret:
        raise ConfigError("the access token is derived from a non-empty bytes secret")
    return hmac.new(secret, _TOKEN_LABEL, hashlib.sha256).hexdigest()[:32]


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (``127.0.0.0/8``, ``::1``)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class BindPolicy:
    """Where a dashboard listens and which access tokens it accepts (none: open)."""

    host: str
    port: int
    loopback: bool
    tokens: tuple[str, ...] = ()

    @property
    def token(self) -> str | None:
        """The token of the current secret (the first), None when no token is needed."""
        return self.tokens[0] if self.tokens else None


def _env_public() -> bool:
    return os.environ.get(PUBLIC_ENV, "").strip().lower() in _TRUE


def bind_policy(
    address: str, *, secret: bytes | Sequence[bytes] | None, public: bool | None = None
) -> BindPolicy:
    """Apply the bind rule (see module doc) to ``address`` (``host:port``).

    ``secret`` is the cache's: bytes or a list of them (rotation); with one, the policy
    carries the access tokens, on loopback too, unless ``public``. ``public`` None reads
    :data:`PUBLIC_ENV`. Raises :class:`ConfigError` for a malformed address, and for a
    non-loopback one with neither a secret nor an opt-in.
    """
    from crdtcache.transport import parse_address

    if not isinstance(address, str):
        raise ConfigError(f"dashboard must be a 'host:port' str, not {type(address).__name__}")
    try:
        host, port = parse_address(address)
    except ConfigError as exc:
        raise ConfigError(f"dashboard: {exc}") from None
    loopback = is_loopback_host(host)
    if public is None:
        public = _env_public()
    if public:
        return BindPolicy(host, port, loopback)
    if secret is not None:
        secrets = [secret] if isinstance(secret, bytes) else list(secret)
        return BindPolicy(host, port, loopback, tuple(access_token(s) for s in secrets))
    if loopback:
        return BindPolicy(host, port, True)
    raise ConfigError(
        f"dashboard {address!r} is not a loopback address: anyone who reaches it would read "
        "key names and statistics. Give the cache a secret= (the dashboard then requires "
        f"its access token), or set {PUBLIC_ENV}=1 to serve it without one"
    )
