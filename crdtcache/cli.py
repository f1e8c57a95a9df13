"""The ``crdtcache`` command line: ``demo``, ``node``, ``get``, ``set``, ``stats``, ``simulate``.

Output goes to stdout, every error to stderr as one line (``crdtcache <command>:
<what went wrong>``) with an exit status of its own (:data:`EXIT_STATUSES`, printed in
``crdtcache --help``). Input is checked before anything is sent: a key too long, a
``--json`` value that is not JSON, or a value the node could not be sent fail at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, Final, NoReturn

from crdtcache import (
    CacheError,
    ConfigError,
    PersistenceError,
    SerializationError,
    ValidationError,
    __version__,
)
from crdtcache._demo import run_demo, until_interrupted
from crdtcache.cache import _loop
from crdtcache.core import PROTOCOL_VERSION
from crdtcache.transport import (
    HandshakeRefused,
    NodeTimeout,
    NodeUnreachable,
    RequestRefused,
    check_request,
    parse_address,
)

__all__ = ["EXIT_STATUSES", "main"]

EXIT_OK: Final = 0
EXIT_NEGATIVE: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_REFUSED: Final = 4
EXIT_TIMEOUT: Final = 5
EXIT_REMOTE: Final = 6
EXIT_INPUT: Final = 7
EXIT_FAILED: Final = 8
EXIT_INTERRUPTED: Final = 130

#: Every exit status and what it means (``crdtcache --help`` and docs/cli.md list them).
EXIT_STATUSES: Final = {
    EXIT_OK: "success",
    EXIT_NEGATIVE: "a negative answer: get found no value; demo or simulate did not converge",
    EXIT_USAGE: "usage error: unknown command or option, missing or malformed argument",
    EXIT_UNREACHABLE: "no node answers at the address (connection refused, no route, link lost)",
    EXIT_REFUSED: "the node refused the handshake: another cluster, another or no secret, "
    "a refused certificate",
    EXIT_TIMEOUT: "the node did not answer within --timeout",
    EXIT_REMOTE: "the node ran the operation and refused it (its error is shown)",
    EXIT_INPUT: "bad input, found before anything was sent or started: a key too long, "
    "--json that is not JSON, a value that cannot be sent, an invalid option value",
    EXIT_FAILED: "the node could not start or stopped on an error "
    "(address in use, persist_path unusable or corrupt)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}

#: Where ``crdtcache node`` listens unless told (the library's default is port 0).
DEFAULT_NODE_LISTEN: Final = "127.0.0.1:7946"
#: Seconds ``get``/``set``/``stats`` wait for the connection, then for the answer.
DEFAULT_TIMEOUT: Final = 5.0
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")


class Failure(Exception):
    """A command failed in a way the user can act on: one line on stderr, ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _input_error(message: str) -> NoReturn:
    raise Failure(EXIT_INPUT, message)


# ------------------------------------------------------------------ node
async def _node(args: argparse.Namespace) -> int:
    from crdtcache import Cache

    secret = _secret(args)
    cache = Cache(
        backend="p2p",
        node_id=args.node_id,
        cluster=args.cluster,
        listen=args.listen,
        discovery=args.discovery,
        seeds=tuple(args.seed),
        persist_path=args.persist,
        dashboard=args.dashboard,
        secret=secret,
    )
    await cache.start()
    started = {"node": cache.node_id, "address": cache.address, "cluster": args.cluster}
    if cache.dashboard_url is not None:
        started["dashboard"] = _dashboard_link(cache.dashboard_url, secret)
    _out(json.dumps(started))
    try:
        await until_interrupted()
    finally:
        await cache.close()
    return EXIT_OK


def _dashboard_link(url: str, secret: bytes | None) -> str:
    """The dashboard's URL as an operator opens it: with its access token when the
    node has a secret (the page and its data routes need it, on loopback too)."""
    if secret is None:
        return url
    from crdtcache.dashboard import access_token

    return f"{url}?token={access_token(secret)}"


def _secret(args: argparse.Namespace) -> bytes | None:
    """The cluster secret from ``--secret-file`` (surrounding whitespace stripped)."""
    if args.secret_file is None:
        return None
    try:
        with open(args.secret_file, "rb") as f:
            return f.read().strip()
    except OSError as exc:
        _input_error(f"cannot read the secret file: {exc}")


# ------------------------------------------------------- talking to a node
def _value(args: argparse.Namespace) -> Any:
    """The VALUE of ``set``: the string, or parsed with ``--json``."""
    if not args.json:
        return args.value
    try:
        return json.loads(args.value)
    except json.JSONDecodeError as exc:
        _input_error(f"VALUE is not valid JSON ({exc})")


async def _client(args: argparse.Namespace) -> int:
    from crdtcache.transport import NodeClient

    try:
        parse_address(args.address)
    except ConfigError:
        _input_error(f"HOST:PORT {args.address!r} is not host:port")
    request: tuple[Any, ...] = ()
    if args.command == "get":
        request = (args.key,)
    elif args.command == "set":
        request = (args.key, _value(args), args.ttl)
    try:
        check_request(args.command, *request)  # before connecting: nothing is sent
    except SerializationError as exc:
        _input_error(str(exc))
    secret = _secret(args)
    async with NodeClient(
        args.address, cluster=args.cluster, secret=secret, timeout=args.timeout
    ) as client:
        if args.command == "get":
            found, got = await client.get(*request)
            if not found:
                _out("(absent)")
                return EXIT_NEGATIVE
            _out(json.dumps(got, default=repr))
        elif args.command == "set":
            await client.set(*request)
            _out("OK")
        else:
            _out(json.dumps(await client.stats(), indent=2, default=repr))
    return EXIT_OK


# ------------------------------------------------------------- simulate
def _simulate(args: argparse.Namespace) -> int:
    from crdtcache.core import GossipConfig
    from crdtcache.testing import SimulatedNetwork

    config = GossipConfig(fanout=args.fanout, sync_interval=0.005)
    net = SimulatedNetwork(
        args.nodes, seed=args.seed, config=config, loss=args.loss, delay=(0.001, 0.010)
    )
    net.run(0.1)
    stamp = net.set("n0", "greeting", "hello")
    _out(f"simulated cluster of {args.nodes} nodes, fanout {args.fanout}, loss {args.loss:.0%}")
    holders_before = 0
    start = net.now
    while net.now - start < 10.0:
        holders = sum(1 for n in net.nodes.values() if "greeting" in net.view(n.id))
        if holders != holders_before:
            bar = "#" * holders + "." * (args.nodes - holders)
            _out(f"  t={1000 * (net.now - start):7.1f} ms  [{bar}] {holders}/{args.nodes}")
            holders_before = holders
        if net.has("greeting", stamp):
            _out(f"converged in {1000 * (net.now - start):.1f} ms of simulated time")
            return EXIT_OK
        net.run(0.001)
    return _error("simulate", "did not converge within 10 s of simulated time", EXIT_NEGATIVE)


# --------------------------------------------------------------- parsing
def _in_range(low: float, high: float, kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{text} is not in [{low:g}, {high:g}]")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its message
    return parse


def _epilog() -> str:
    codes = "\n".join(
        textwrap.fill(text, 78, initial_indent=f"  {code:>3}  ", subsequent_indent=" " * 7)
        for code, text in EXIT_STATUSES.items()
    )
    notes = textwrap.fill(
        f"Defaults: 'crdtcache node' listens on {DEFAULT_NODE_LISTEN}; the library "
        "(Cache(listen=...)) binds 127.0.0.1:0, a free port, unless told. -v/--verbose "
        "and --log-level go before or after the command. Documentation: docs/ in the "
        "source tree (mkdocs serve).",
        78,
    )
    return f"exit statuses (every error goes to stderr):\n{codes}\n\n{notes}"


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout; help texts say their defaults themselves."""


def _logging_options(parser: argparse.ArgumentParser, dest: str) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        dest=f"{dest}verbose",
        help="more logging: -v for INFO, -vv for DEBUG (default: warnings and errors only)",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        type=str.upper,
        dest=f"{dest}log_level",
        help="log level, overrides -v (default: WARNING)",
    )


def _connection_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("address", metavar="HOST:PORT", help="the node's peer address")
    cmd.add_argument(
        "--cluster", default="default", help="the node's cluster name (default: %(default)s)"
    )
    cmd.add_argument(
        "--secret-file",
        metavar="PATH",
        help="file holding the cluster secret, when the node has one (default: none)",
    )
    cmd.add_argument(
        "--timeout",
        type=_in_range(0.001, 3600, float),
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="wait this long to connect, then for the answer (default: %(default)g)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crdtcache",
        description="A peer-to-peer replicated cache: run nodes, talk to them, watch a demo.",
        epilog=_epilog(),
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        help="print the version and exit",
        version=f"crdtcache {__version__} (protocol {PROTOCOL_VERSION})",
    )
    _logging_options(parser, "")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(
            name,
            help=summary,
            description=description,
            epilog=_epilog(),
            formatter_class=_Formatter,
        )
        _logging_options(cmd, "sub_")
        return cmd

    demo = command(
        "demo",
        "N nodes on loopback: watch a write spread",
        "Start N nodes on 127.0.0.1, then show a write spreading, a burst converging, a "
        "pattern invalidation, and the sync latency. No external server needed.",
    )
    demo.add_argument(
        "--nodes",
        type=_in_range(2, 50, int),
        default=5,
        help="how many nodes, 2 to 50 (default: %(default)s)",
    )
    demo.add_argument(
        "--burst",
        type=_in_range(1, 1_000_000, int),
        default=2000,
        help="writes in the burst step (default: %(default)s)",
    )
    demo.add_argument(
        "--no-mdns",
        action="store_true",
        help="find peers by the first node's address only (default: mDNS as well)",
    )
    demo.add_argument(
        "--processes",
        action="store_true",
        help="run each node in its own OS process (default: all in this process)",
    )
    demo.add_argument(
        "--dashboard",
        metavar="HOST:PORT",
        help="serve the first node's dashboard there until Ctrl-C (default: no dashboard)",
    )
    demo.set_defaults(run=run_demo)

    node = command(
        "node",
        "run one node until interrupted",
        "Run one cache node until SIGINT or SIGTERM. It prints one JSON line: its node "
        "id, the address it listens on, its cluster, and its dashboard URL if any.",
    )
    node.add_argument(
        "--node-id",
        help="this node's id (default: random; with --persist the stored one is kept)",
    )
    node.add_argument(
        "--cluster", default="default", help="the cluster to join (default: %(default)s)"
    )
    node.add_argument(
        "--listen",
        default=DEFAULT_NODE_LISTEN,
        metavar="HOST:PORT",
        help="where to listen for peers; port 0 picks a free one (default: %(default)s; "
        "the library's default is 127.0.0.1:0)",
    )
    node.add_argument(
        "--discovery",
        choices=("mdns", "static", "none"),
        default="mdns",
        help="how to find peers: mdns, static (the --seed list only) or none "
        "(default: %(default)s; seeds are dialled in every mode)",
    )
    node.add_argument(
        "--seed",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a node to dial; repeat for more (default: none)",
    )
    node.add_argument(
        "--persist",
        metavar="PATH",
        help="SQLite file holding the replica (default: memory only)",
    )
    node.add_argument(
        "--dashboard",
        metavar="HOST:PORT",
        help="serve the live dashboard there, e.g. 127.0.0.1:8080 (default: none)",
    )
    node.add_argument(
        "--secret-file",
        metavar="PATH",
        help="file holding the cluster secret (default: no secret)",
    )
    node.set_defaults(run=_node)

    get = command("get", "read a key from a running node", "Print KEY's value as JSON.")
    _connection_options(get)
    get.add_argument("key", metavar="KEY", help="the key to read")
    get.set_defaults(run=_client)

    put = command(
        "set",
        "write a key through a running node",
        "Write KEY through the node: replicated as the node's own write. Prints OK.",
    )
    _connection_options(put)
    put.add_argument("key", metavar="KEY", help="the key to write")
    put.add_argument("value", metavar="VALUE", help="the value (a string unless --json)")
    put.add_argument(
        "--json", action="store_true", help="parse VALUE as JSON (default: a plain string)"
    )
    put.add_argument(
        "--ttl",
        type=_in_range(0.001, 10 * 365 * 86400, float),
        metavar="SECONDS",
        help="expire the value after this many seconds (default: the node's default_ttl)",
    )
    put.set_defaults(run=_client)

    stats = command("stats", "statistics of a running node", "Print the node's statistics.")
    _connection_options(stats)
    stats.set_defaults(run=_client)

    sim = command(
        "simulate",
        "a simulated cluster (no sockets)",
        "Run the gossip protocol on a simulated network with loss and delay; "
        "the same seed gives the same run.",
    )
    sim.add_argument(
        "--nodes", type=_in_range(2, 10_000, int), default=50, help="(default: %(default)s)"
    )
    sim.add_argument(
        "--fanout",
        type=_in_range(0, 100, int),
        default=3,
        help="peers each push goes to; 0 for all (default: %(default)s)",
    )
    sim.add_argument(
        "--loss",
        type=_in_range(0.0, 0.99, float),
        default=0.05,
        help="share of messages lost (default: %(default)s)",
    )
    sim.add_argument(
        "--seed", type=int, default=1, help="random seed of the run (default: %(default)s)"
    )
    sim.set_defaults(run=_simulate, sync=True)
    return parser


def _log_level(args: argparse.Namespace) -> int:
    named = args.sub_log_level or args.log_level
    if named is not None:
        level: int = getattr(logging, named)
        return level
    verbose: int = args.verbose + args.sub_verbose
    return max(logging.DEBUG, logging.WARNING - 10 * verbose)


#: Exceptions a command may end with, and the status each gives.
_STATUS_OF: Final[tuple[tuple[type[BaseException], int], ...]] = (
    (NodeUnreachable, EXIT_UNREACHABLE),
    (HandshakeRefused, EXIT_REFUSED),
    (NodeTimeout, EXIT_TIMEOUT),
    (RequestRefused, EXIT_REMOTE),
    (ConfigError, EXIT_INPUT),
    (ValidationError, EXIT_INPUT),
    (SerializationError, EXIT_INPUT),
    (PersistenceError, EXIT_FAILED),
    (CacheError, EXIT_FAILED),
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see :data:`EXIT_STATUSES`)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=_log_level(args), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        run: Callable[[argparse.Namespace], Any] = args.run
        result: int = run(args) if getattr(args, "sync", False) else _loop.run(run(args))
    except Failure as exc:
        return _error(args.command, str(exc), exc.status)
    except CacheError as exc:
        status = next(code for kind, code in _STATUS_OF if isinstance(exc, kind))
        return _error(args.command, str(exc), status)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return result


def _error(command: str, message: str, status: int) -> int:
    sys.stderr.write(f"crdtcache {command}: {message}\n")
    sys.stderr.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
