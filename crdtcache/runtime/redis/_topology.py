"""Which Redis a ``redis_url`` names: one server, a Redis Cluster or a Sentinel service. No IO.

Three forms (``rediss`` instead of ``redis`` for TLS)::

    redis://[user[:password]@]host[:port][/db][?option=value...]     (and unix://)
    redis+cluster://[user[:password]@]host[:port][,host[:port]...][/0][?option=value...]
    redis+sentinel://[user[:password]@]host[:port][,host[:port]...]/service[/db][?option=value...]

A cluster URL lists *seed* nodes: any node of the cluster will do (the client learns
the others and who owns which slot from it; more than one seed survives a seed being
down); a cluster has only database 0, and a port defaults to 6379. A sentinel URL
lists the *sentinels*, never the data nodes (a port defaults to 26379); ``service``
is the name they monitor (``sentinel monitor <service> ...``) and ``db`` the
database of the data nodes. The user and password are the data nodes'; sentinels
that need credentials of their own take ``?sentinel_username=&sentinel_password=``.
The sentinel form is the one the Redis-Sentinel-Url package introduced and that
Prefect and RedisVL parse too, so such URLs carry over. IPv6 hosts go in brackets
(``[::1]:7000``).

Query options are redis-py's URL options (``ssl_cert_reqs``, ``socket_keepalive``...),
interpreted by redis-py, plus the one crdtcache reads itself:

``wait_replicas=N``
    write-through also waits until ``N`` replicas of the primary have the write
    (Redis ``WAIT``) before ``set`` returns, and raises :class:`PeerError` when fewer
    confirm in time. What that buys is :mod:`._runtime`'s "what a failover loses".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, quote, unquote, urlencode

__all__ = [
    "CLUSTER",
    "CLUSTER_PORT",
    "SENTINEL",
    "SENTINEL_PORT",
    "SINGLE",
    "Endpoint",
    "RedisTarget",
    "parse_redis_url",
    "redact_url",
]

#: The three kinds of target.
SINGLE: Final = "single"
CLUSTER: Final = "cluster"
SENTINEL: Final = "sentinel"
#: Default ports of a cluster seed and of a sentinel.
CLUSTER_PORT: Final = 6379
SENTINEL_PORT: Final = 26379
#: Largest ``wait_replicas`` (Redis has no use for more replicas per primary).
MAX_WAIT_REPLICAS: Final = 16

_SCHEMES: Final = {
    "redis": (SINGLE, False),
    "rediss": (SINGLE, True),
    "unix": (SINGLE, False),
    "redis+cluster": (CLUSTER, False),
    "rediss+cluster": (CLUSTER, True),
    "redis+sentinel": (SENTINEL, False),
    "rediss+sentinel": (SENTINEL, True),
}
#: Options crdtcache reads itself (never handed to redis-py).
_OWN_OPTIONS: Final = ("wait_replicas", "sentinel_username", "sentinel_password")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A host and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed ``redis_url`` (see the module doc).

    For a ``SINGLE`` target only ``url`` (with crdtcache's own options removed),
    ``tls`` and ``wait_replicas`` matter: redis-py parses the rest itself.
    """

    kind: str
    url: str
    tls: bool = False
    hosts: tuple[Endpoint, ...] = ()
    service: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    #: redis-py URL options (crdtcache's own removed).
    options: dict[str, str] = field(default_factory=dict)
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    wait_replicas: int = 0

    @property
    def authenticated(self) -> bool:
        """Whether the data nodes are reached with a password or over TLS."""
        return self.tls or bool(self.password)

    def node_url(self, endpoint: Endpoint | None = None) -> str:
        """A plain ``redis://`` URL of one data node (default: the first host) carrying
        the credentials, database and redis-py options: what redis-py's own URL parser
        turns into connection options."""
        host = endpoint or self.hosts[0]
        userinfo = ""
        if self.username or self.password:
            userinfo = quote(self.username or "", safe="")
            if self.password is not None:
                userinfo += ":" + quote(self.password, safe="")
            userinfo += "@"
        query = f"?{urlencode(self.options)}" if self.options else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{userinfo}{host}/{self.db}{query}"


def _endpoint(text: str, default_port: int) -> Endpoint:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"has a bad host[:port]: {text!r}")
        port = rest[1:] if rest else str(default_port)
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = text, str(default_port)
        elif ":" in host:
            raise ValueError(f"has a bad host[:port]: {text!r} (an IPv6 host goes in brackets)")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"has a bad host[:port]: {text!r}")
    return Endpoint(unquote(host), int(port))


def _wait_replicas(options: dict[str, str]) -> int:
    raw = options.get("wait_replicas", "0")
    if not raw.isdigit() or int(raw) > MAX_WAIT_REPLICAS:
        raise ValueError(f"option wait_replicas must be an integer in [0, {MAX_WAIT_REPLICAS}]")
    return int(raw)


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    """The user name and password of a URL's ``user:password`` part."""
    user, colon, secret = userinfo.partition(":")
    return unquote(user) or None, unquote(secret) if colon else None


def _service_and_db(kind: str, path: str) -> tuple[str | None, int]:
    """The sentinel service name (None for a cluster) and database number of a path."""
    segments = [unquote(s) for s in path.split("/") if s]
    service = None
    if kind == SENTINEL:
        if not segments:
            raise ValueError("names the service the sentinels monitor: .../<service>[/<db>]")
        service, segments = segments[0], segments[1:]
    if len(segments) > 1 or (segments and not segments[0].isdigit()):
        raise ValueError("names a database by its number")
    db = int(segments[0]) if segments else 0
    if kind == CLUSTER and db != 0:
        raise ValueError("names a Redis Cluster, which has only database 0")
    return service, db


def parse_redis_url(url: str) -> RedisTarget:
    """The target ``url`` names; ValueError if it is malformed.

    The message reads after "redis_url " (``must start with redis://, ...``).
    """
    if not isinstance(url, str):
        raise ValueError("must be a str")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise ValueError(
            "must start with redis://, rediss://, unix://, redis+cluster:// or "
            "redis+sentinel:// (rediss+cluster://, rediss+sentinel:// for TLS)"
        )
    kind, tls = _SCHEMES[scheme.lower()]
    rest, _, query = rest.partition("#")[0].partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    options = dict(pairs)
    wait = _wait_replicas(options)
    if kind == SINGLE:
        kept = urlencode([(k, v) for k, v in pairs if k not in _OWN_OPTIONS])
        base = url.partition("?")[0]
        return RedisTarget(SINGLE, base + (f"?{kept}" if kept else ""), tls, wait_replicas=wait)
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username, password = _credentials(userinfo) if at else (None, None)
    default_port = SENTINEL_PORT if kind == SENTINEL else CLUSTER_PORT
    hosts = tuple(_endpoint(h, default_port) for h in hostlist.split(",") if h)
    if not hosts:
        raise ValueError("must list at least one host")
    service, db = _service_and_db(kind, path)
    return RedisTarget(
        kind,
        url,
        tls,
        hosts=hosts,
        service=service,
        db=db,
        username=username,
        password=password,
        options={k: v for k, v in options.items() if k not in _OWN_OPTIONS},
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
        wait_replicas=wait,
    )


def redact_url(url: str) -> str:
    """``url`` without its passwords (for messages and logs); any of the forms above."""
    if not isinstance(url, str):
        return "<invalid url>"
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    rest, qmark, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":***"
    if qmark:
        query = "&".join(
            f"{k}=***" if k.endswith("password") else part
            for part in query.split("&")
            for k in [part.partition("=")[0]]
        )
    return f"{scheme}://{userinfo}{at}{hosts}{slash}{path}{qmark}{query}"
