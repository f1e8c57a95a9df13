"""An HTTP API (FastAPI + uvicorn) with a replicated crdtcache in front of a slow database.

Run three instances on this machine, each with its own HTTP port and peer port, all
sharing one cache over p2p (static seeds, loopback)::

    python examples/http_api/app.py --instances 3

or one instance at a time (this is what ``--instances`` does for you, with a
database of its own in a temporary directory)::

    python examples/http_api/app.py --name a --port 8001 --peer-port 7001 \\
        --seeds 127.0.0.1:7002,127.0.0.1:7003 --db /tmp/products.sqlite3

Without ``--db`` an instance gets a new database in a temporary directory, removed
when it exits. ``--instances`` stops every instance on Ctrl-C or SIGTERM and exits
with status 1 if one fails to start (see ``examples/launcher.py``).

* ``GET /products/{id}``: ``get_or_set`` in front of the database. The first instance
  to miss loads the product (slowly) and the value replicates, so the other
  instances answer from their own memory. ``source`` says which happened.
* ``PUT /products/{id}``: writes the database, then emits ``product:updated`` on the
  ``EventBus``; an ``InvalidationRule`` turns it into an invalidation of
  ``product:{id}`` replicated to every instance, so none serves the old value.
* ``GET /health``: this instance (and its process id) and the number of cache nodes
  it sees.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

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
        """The product, or None (blocking: call it in a worker thread)."""
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


class Product(BaseModel):
    """The body of ``PUT /products/{id}``."""

    name: str
    price: float


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
    on_start_failure: Callable[[crdtcache.CacheError], None] | None = None,
) -> FastAPI:
    """The API of one instance; its cache starts and stops with the app.

    If the cache cannot start (its peer port is taken, say), the error propagates to
    the ASGI server, unless ``on_start_failure`` takes it (``main`` reports it in one
    line and stops uvicorn before it serves).
    """
    db = SlowDatabase(db_path, db_delay)
    bus = crdtcache.EventBus()
    cache = crdtcache.Cache(
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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await cache.start()
        except crdtcache.CacheError as exc:
            if on_start_failure is None:
                raise
            on_start_failure(exc)
            yield
            return
        try:
            yield
        finally:
            await cache.close()

    app = FastAPI(title=f"products ({name})", lifespan=lifespan)

    @app.get("/products/{product_id}")
    async def get_product(product_id: int) -> dict[str, Any]:
        loaded = False

        async def load() -> dict[str, Any]:
            nonlocal loaded
            loaded = True
            product = await asyncio.to_thread(db.load, product_id)
            if product is None:
                raise NotFound(product_id)
            return product

        try:
            product = await cache.get_or_set(f"product:{product_id}", load)
        except NotFound:
            raise HTTPException(404, f"no product {product_id}") from None
        return {"product": product, "source": "database" if loaded else "cache", "instance": name}

    @app.put("/products/{product_id}")
    async def put_product(product_id: int, product: Product) -> dict[str, Any]:
        await asyncio.to_thread(db.save, product_id, product.name, product.price)
        # Every instance drops product:{id}: the rule makes it a replicated invalidation.
        await bus.emit("product:updated", {"id": product_id})
        return {"updated": product_id, "instance": name}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        stats = await cache.get_statistics()
        return {
            "instance": name,
            "pid": os.getpid(),  # the launcher tells its own instances from others
            "nodes": stats.cluster.instances,
            "cached_keys": stats.distributed.size,
            "database_loads": db.loads,
            "hit_rate": stats.overall.hit_rate,
            "dashboard": cache.dashboard_url,
        }

    return app


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
    with tempfile.TemporaryDirectory(prefix="crdtcache-http_api-") as folder:
        yield os.path.join(folder, "products.sqlite3")


def serve(args: argparse.Namespace) -> int:
    """Run one instance until SIGINT or SIGTERM; 1 if it could not start."""
    failures: list[crdtcache.CacheError] = []

    def failed(exc: crdtcache.CacheError) -> None:
        failures.append(exc)
        print(f"instance {args.name}: the cache did not start: {exc}", file=sys.stderr)
        server.should_exit = True  # uvicorn stops before serving

    with _database(args.db) as db:
        app = create_app(
            name=args.name,
            peer_port=args.peer_port,
            seeds=[s for s in args.seeds.split(",") if s],
            db_path=db,
            db_delay=args.db_delay,
            dashboard=args.dashboard,
            on_start_failure=failed,
        )
        # The HTTP port is bound first: taken, it is reported in one line, and uvicorn
        # never starts the cache only to fail after it.
        try:
            sock = socket.create_server(("127.0.0.1", args.port))
        except OSError as exc:
            print(f"instance {args.name}: HTTP port {args.port}: {exc.strerror}", file=sys.stderr)
            return 1
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        # uvicorn shuts down on SIGINT/SIGTERM (closing the cache), then re-raises it.
        with sock, contextlib.suppress(KeyboardInterrupt):
            server.run(sockets=[sock])
    return 1 if failures else 0


def main() -> None:
    """Parse the command line; run one instance, or ``--instances N`` of them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, help="run this many instances (ports follow)")
    parser.add_argument("--name", default="a", help="instance name, used as the node id")
    parser.add_argument("--port", type=int, default=8001, help="HTTP port")
    parser.add_argument("--peer-port", type=int, default=7001, help="cache peer port")
    parser.add_argument("--seeds", default="", help="peers' host:port, comma-separated")
    parser.add_argument(
        "--db", help="SQLite file (default: a new one in a temporary directory, removed at exit)"
    )
    parser.add_argument("--db-delay", type=float, default=0.2, help="seconds per query")
    parser.add_argument("--dashboard", help="host:port of this node's dashboard")
    parser.add_argument("--dashboard-port", type=int, default=9001, help="with --instances")
    args = parser.parse_args()
    sys.exit(run_instances(args) if args.instances else serve(args))


if __name__ == "__main__":
    main()
