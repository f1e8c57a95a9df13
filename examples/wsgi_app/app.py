"""A threaded WSGI app (Flask) with a replicated ``SyncCache`` in front of a slow database.

Run three instances on this machine, sharing one cache over p2p (static seeds)::

    python examples/wsgi_app/app.py --instances 3

Without ``--db`` a run gets a new database in a temporary directory, removed when it
exits. ``--instances`` stops every instance on Ctrl-C or SIGTERM and exits with status
1 if one fails to start (see ``examples/launcher.py``).

``SyncCache`` runs the cache node in a background thread and offers the same API,
blocking, so request threads call it like any library: local hits are answered in
the calling thread without touching the event loop.

* ``GET /products/<id>``: ``get_or_set`` in front of the database (single flight
  across request threads; the value replicates to the other instances).
* ``PUT /products/<id>``: writes the database, then emits ``product:updated``;
  the ``InvalidationRule`` invalidates ``product:<id>`` on every instance.
* ``GET /health``: this instance (and its process id) and the number of cache nodes
  it sees.

In production, run it under a WSGI server with one process per cache node and
several threads (``gunicorn -w 1 --threads 8``); each process needs its own peer port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from flask import Flask, abort, jsonify, request

import crdtcache


class SlowDatabase:
    """A products table in SQLite, shared by every instance; each query waits ``delay``."""

    def __init__(self, path: str, delay: float) -> None:
        self.path = path
        self.delay = delay
        self.loads = 0  # queries answered by this instance
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS products"
                " (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL NOT NULL)"
            )
            db.executemany(
                "INSERT OR IGNORE INTO products (id, name, price) VALUES (?, ?, ?)",
                [(i, f"product {i}", 10.0 + i) for i in range(1, 101)],
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    def load(self, product_id: int) -> dict[str, Any] | None:
        """The product, or None."""
        time.sleep(self.delay)  # the slow part a cache is for
        with self._lock:
            self.loads += 1
        with self._connect() as db:
            row = db.execute(
                "SELECT name, price FROM products WHERE id = ?", (product_id,)
            ).fetchone()
        return None if row is None else {"id": product_id, "name": row[0], "price": row[1]}

    def save(self, product_id: int, name: str, price: float) -> None:
        """Insert or replace a product."""
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO products (id, name, price) VALUES (?, ?, ?)",
                (product_id, name, price),
            )


class NotFound(Exception):
    """The database has no such product (raised by the loader: nothing is cached)."""


def create_app(
    *,
    name: str,
    peer_port: int,
    seeds: list[str],
    db_path: str,
    db_delay: float,
    dashboard: str | None = None,
) -> tuple[Flask, crdtcache.SyncCache]:
    """The app of one instance and its cache (start the cache before serving)."""
    db = SlowDatabase(db_path, db_delay)
    bus = crdtcache.EventBus()
    cache = crdtcache.SyncCache(
        backend="p2p",
        node_id=name,
        listen=f"127.0.0.1:{peer_port}",
        discovery="static",  # on a LAN with multicast, "mdns" finds peers by itself
        seeds=seeds,
        default_ttl=300,
        event_bus=bus,
        invalidation_rules=[crdtcache.InvalidationRule("product:updated", "product:{id}")],
        dashboard=dashboard,
    )
    app = Flask(__name__)

    def emit(event: str, data: Any) -> None:
        # EventBus.emit is a coroutine: a request thread runs it in a loop of its own;
        # the rule hands the invalidation to the cache's thread.
        asyncio.run(bus.emit(event, data))

    @app.get("/products/<int:product_id>")
    def get_product(product_id: int) -> Any:
        loaded = False

        def load() -> dict[str, Any]:
            nonlocal loaded
            loaded = True
            product = db.load(product_id)
            if product is None:
                raise NotFound(product_id)
            return product

        try:
            product = cache.get_or_set(f"product:{product_id}", load)
        except NotFound:
            abort(404)
        return jsonify(product=product, source="database" if loaded else "cache", instance=name)

    @app.put("/products/<int:product_id>")
    def put_product(product_id: int) -> Any:
        body = request.get_json(force=True, silent=True) or {}
        if not isinstance(body.get("name"), str) or not isinstance(body.get("price"), (int, float)):
            abort(400)
        db.save(product_id, body["name"], float(body["price"]))
        emit("product:updated", {"id": product_id})
        return jsonify(updated=product_id, instance=name)

    @app.get("/health")
    def health() -> Any:
        stats = cache.get_statistics()
        return jsonify(
            instance=name,
            pid=os.getpid(),  # the launcher tells its own instances from others
            nodes=stats.cluster.instances,
            cached_keys=stats.distributed.size,
            database_loads=db.loads,
            hit_rate=stats.overall.hit_rate,
            dashboard=cache.dashboard_url,
        )

    return app, cache


def run_instances(args: argparse.Namespace) -> int:
    """Run ``args.instances`` instances of this script until a signal; the exit status."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import launcher  # examples/launcher.py, shared by the examples

    count = args.instances
    peer_ports = [args.peer_port + i for i in range(count)]
    with _database(args.db) as db:
        instances = []
        for i in range(count):
            name = chr(ord("a") + i)
            seeds = ",".join(f"127.0.0.1:{p}" for j, p in enumerate(peer_ports) if j != i)
            command = [sys.executable, __file__, "--name", name, "--port", str(args.port + i)]
            command += ["--peer-port", str(peer_ports[i]), "--seeds", seeds, "--db", db]
            command += ["--db-delay", str(args.db_delay)]
            command += ["--dashboard", f"127.0.0.1:{args.dashboard_port + i}"]
            url = f"http://127.0.0.1:{args.port + i}"
            banner = (
                f"instance {name}: {url}/products/1  "
                f"dashboard http://127.0.0.1:{args.dashboard_port + i}/"
            )
            instances.append(launcher.Instance(name, command, f"{url}/health", banner))
        print(f"database: {db}", flush=True)
        return launcher.run(instances)


@contextlib.contextmanager
def _database(path: str | None) -> Iterator[str]:
    """``path``, or a new file in a temporary directory that is removed afterwards."""
    if path is not None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="crdtcache-wsgi_app-") as folder:
        yield os.path.join(folder, "products.sqlite3")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the server the way Ctrl-C does


def serve(args: argparse.Namespace) -> int:
    """Run one instance until SIGINT or SIGTERM; 1 if it could not start."""
    # Without this, SIGTERM would end the process without closing the cache.
    signal.signal(signal.SIGTERM, _interrupt)
    with _database(args.db) as db:
        app, cache = create_app(
            name=args.name,
            peer_port=args.peer_port,
            seeds=[s for s in args.seeds.split(",") if s],
            db_path=db,
            db_delay=args.db_delay,
            dashboard=args.dashboard,
        )
        try:
            cache.start()
        except crdtcache.CacheError as exc:
            print(f"instance {args.name}: the cache did not start: {exc}", file=sys.stderr)
            return 1
        try:
            # The development server answers a taken port with one line and exit 1.
            with contextlib.suppress(KeyboardInterrupt):
                app.run(host="127.0.0.1", port=args.port, threaded=True)
        finally:
            cache.close()
    return 0


def main() -> None:
    """Parse the command line; run one instance, or ``--instances N`` of them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, help="run this many instances (ports follow)")
    parser.add_argument("--name", default="a", help="instance name, used as the node id")
    parser.add_argument("--port", type=int, default=8101, help="HTTP port")
    parser.add_argument("--peer-port", type=int, default=7101, help="cache peer port")
    parser.add_argument("--seeds", default="", help="peers' host:port, comma-separated")
    parser.add_argument(
        "--db", help="SQLite file (default: a new one in a temporary directory, removed at exit)"
    )
    parser.add_argument("--db-delay", type=float, default=0.2, help="seconds per query")
    parser.add_argument("--dashboard", help="host:port of this node's dashboard")
    parser.add_argument("--dashboard-port", type=int, default=9101, help="with --instances")
    args = parser.parse_args()
    sys.exit(run_instances(args) if args.instances else serve(args))


if __name__ == "__main__":
    main()
