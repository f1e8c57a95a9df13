"""What peer security costs: replication throughput with no auth, a secret, TLS, both.

What is measured
----------------
Two real :class:`~crdtcache.transport.Node` on 127.0.0.1, in one process and one event
loop (so the figure includes both sides' CPU: the sender's encoding and sealing, the
receiver's opening, decoding and merging), default :class:`~crdtcache.core.GossipConfig`
(deltas flushed every 5 ms). Per round:

1. connect the pair (the handshake time is the wall time from dialling to both sides
   registered: TCP, then TLS and/or the authenticated handshake);
2. the sender makes ``--writes`` small writes (``--keys`` keys, a ~20-byte str value
   each), yielding to the loop every ``--batch`` writes so deltas flow while writing;
3. ``flush(ack=True)``, then wait until the receiver holds the last write (one
   in-order stream: all earlier writes are applied by then); the receiver's map is
   then checked to equal the sender's, outside the timing.

Throughput is writes / (first write to the receiver holding the last one). As both
nodes share the process, its CPU time over the same span, per write, is the cost of
replicating a write end to end; on a busy machine it varies far less than wall time.
Modes run interleaved (none, secret, tls, tls+secret, none, ...) for ``--repeat``
rounds, and the median is reported, so a noisy neighbour hurts every mode alike.
Bytes and frames are the sender's transport counters (frame headers included, TLS
records not: asyncio does not expose them).

TLS uses a throwaway CA and node certificates (EC P-256) made with the ``openssl``
command line tool; TLS 1.3, AES-GCM or ChaCha20 as OpenSSL negotiates.

A second scenario, "frame per write", flushes after every write (``--writes / 5``
writes), so that each write is a frame: the worst case for per-frame costs (an HMAC
each way, a TLS record). Finally the sealing itself is timed per frame.

Run ``python benchmarks/auth_overhead.py`` (about a minute) or ``--quick``.
Writes ``benchmarks/results/auth_overhead.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import random
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from crdtcache.cache import _loop
from crdtcache.core import GossipConfig, GossipEngine, HybridClock, Replica
from crdtcache.transport import FrameOpener, FrameSealer, Node, node_id_uri, tls_contexts

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("none", "secret", "tls", "tls+secret")
SECRET = b"benchmark-cluster-secret-32bytes"


# --------------------------------------------------------------------------- certificates
def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(
    directory: Path, names: Sequence[str]
) -> dict[str, tuple[ssl.SSLContext, ssl.SSLContext]]:
    """A CA and one certificate per node id (SAN URI crdtcache://node/<id>), as contexts."""
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(ca_key))
    _openssl(
        "req", "-x509", "-new", "-key", str(ca_key), "-out", str(ca_crt), "-days", "1",
        "-subj", "/CN=bench-ca",
    )  # fmt: skip
    contexts = {}
    for name in names:
        key, csr, crt = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        ext = directory / f"{name}.ext"
        ext.write_text(f"subjectAltName=URI:{node_id_uri(name)}\n")
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
        _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={name}")
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", str(crt), "-days", "1", "-extfile", str(ext),
        )  # fmt: skip
        contexts[name] = tls_contexts(ca=ca_crt, cert=crt, key=key)
    return contexts


# --------------------------------------------------------------------------- one round
def _engine(name: str) -> GossipEngine:
    return GossipEngine(Replica(HybridClock(name)), random.Random(name), GossipConfig())


def _options(
    mode: str, name: str, pki: dict[str, tuple[ssl.SSLContext, ssl.SSLContext]]
) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if "secret" in mode:
        options["secret"] = SECRET
    if "tls" in mode:
        server, client = pki[name]
        options["ssl_server"], options["ssl_client"] = server, client
    return options


async def _until(predicate: Any, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise RuntimeError("timed out")
        await asyncio.sleep(0.0005)


async def one_round(
    mode: str,
    pki: dict[str, tuple[ssl.SSLContext, ssl.SSLContext]],
    *,
    writes: int,
    keys: int,
    batch: int,
    per_frame: bool = False,
) -> dict[str, Any]:
    """Connect a sender and a receiver in ``mode``, replicate ``writes`` writes, measure.

    ``per_frame`` flushes after every write, so that each write is a frame of its own.
    """
    sender = Node(_engine("sender"), **_options(mode, "sender", pki))
    receiver = Node(_engine("receiver"), **_options(mode, "receiver", pki))
    await receiver.start()
    await sender.start()
    try:
        assert receiver.address is not None
        started = time.perf_counter()
        sender.add_seed(receiver.address)
        await _until(lambda: sender.connected_peers() and receiver.connected_peers(), 10)
        handshake = time.perf_counter() - started
        engine = sender.engine
        before = sender.statistics()
        started = time.perf_counter()
        cpu_started = time.process_time()
        last = None
        for i in range(writes):
            last = engine.set(f"key:{i % keys}", f"value-{i:>12}", time.time())
            if per_frame:
                await sender.flush(ack=False, timeout=0)
            if i % batch == batch - 1:
                sender.wake()
                await asyncio.sleep(0)
        assert last is not None
        last_key = f"key:{(writes - 1) % keys}"
        await sender.flush(ack=True, timeout=60)
        # flush(ack=True) only covers what was still queued, not pushes the 5 ms timer
        # already sent; one in-order stream, so the last write arriving means all did.
        held = receiver.engine.replica.entries
        await _until(lambda: (e := held.get(last_key)) is not None and e.ts == last.ts, 60)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        now = time.time()
        if receiver.engine.replica.visible(now) != engine.replica.visible(now):
            raise RuntimeError(f"{mode}: the receiver's map differs from the sender's")
        after = sender.statistics()
        return {
            "scenario": "frame per write" if per_frame else "batched",
            "mode": mode,
            "writes": writes,
            "seconds": elapsed,
            "writes_per_second": writes / elapsed,
            "cpu_us_per_write": cpu / writes * 1e6,
            "handshake_ms": handshake * 1000,
            "bytes_sent": after.bytes_sent - before.bytes_sent,
            "frames_sent": after.frames_sent - before.frames_sent,
        }
    finally:
        await asyncio.gather(sender.close(), receiver.close())


async def run(
    args: argparse.Namespace, pki: dict[str, tuple[ssl.SSLContext, ssl.SSLContext]]
) -> Any:
    rounds: list[dict[str, Any]] = []
    await one_round("none", pki, writes=min(args.writes, 5000), keys=args.keys, batch=args.batch)
    for r in range(args.repeat):
        for mode in MODES:
            rounds.append(
                await one_round(mode, pki, writes=args.writes, keys=args.keys, batch=args.batch)
            )
            rounds.append(
                await one_round(
                    mode,
                    pki,
                    writes=args.writes // 5,
                    keys=args.keys,
                    batch=args.batch,
                    per_frame=True,
                )
            )
        print(f"  round {r + 1}/{args.repeat} done", file=sys.stderr)
    return rounds, type(asyncio.get_running_loop()).__module__.split(".")[0]


def seal_timings(repeat: int = 2000) -> list[dict[str, Any]]:
    """Microseconds to seal and to open one frame (the secret's per-frame CPU cost)."""
    out = []
    for size in (64, 1024, 64 << 10):
        payload = bytes(size)
        sealer, opener = FrameSealer(SECRET), FrameOpener(SECRET)
        started = time.perf_counter()
        sealed = [sealer.seal(payload) for _ in range(repeat)]
        seal_us = (time.perf_counter() - started) / repeat * 1e6
        started = time.perf_counter()
        for body in sealed:
            opener.open(body)
        open_us = (time.perf_counter() - started) / repeat * 1e6
        out.append({"payload_bytes": size, "seal_us": seal_us, "open_us": open_us})
    return out


# --------------------------------------------------------------------------- output
def summarise(rounds: list[dict[str, Any]], scenario: str) -> list[dict[str, Any]]:
    out = []
    for mode in MODES:
        mine = [r for r in rounds if r["mode"] == mode and r["scenario"] == scenario]
        rates = [r["writes_per_second"] for r in mine]
        out.append(
            {
                "scenario": scenario,
                "mode": mode,
                "rounds": len(mine),
                "median_writes_per_second": statistics.median(rates),
                "min_writes_per_second": min(rates),
                "max_writes_per_second": max(rates),
                "median_cpu_us_per_write": statistics.median(r["cpu_us_per_write"] for r in mine),
                "median_handshake_ms": statistics.median(r["handshake_ms"] for r in mine),
                "bytes_per_write": statistics.median(r["bytes_sent"] / r["writes"] for r in mine),
                "writes_per_frame": statistics.median(
                    r["writes"] / max(1, r["frames_sent"]) for r in mine
                ),
            }
        )
    base, base_cpu = out[0]["median_writes_per_second"], out[0]["median_cpu_us_per_write"]
    for row in out:
        row["relative_to_none"] = row["median_writes_per_second"] / base
        row["cpu_relative_to_none"] = row["median_cpu_us_per_write"] / base_cpu
    return out


def print_table(summary: list[dict[str, Any]]) -> None:
    head = (
        f"{'scenario':<15} {'mode':<11} | {'CPU us/write':>12} {'vs none':>7} | "
        f"{'writes/s (median)':>17} {'min':>8} {'max':>8} {'vs none':>7} | "
        f"{'handshake ms':>12} | {'bytes/write':>11} {'writes/frame':>12}"
    )
    print(head)
    print("-" * len(head))
    for s in summary:
        print(
            f"{s['scenario']:<15} {s['mode']:<11} | {s['median_cpu_us_per_write']:>12.1f} "
            f"{s['cpu_relative_to_none']:>7.0%} | {s['median_writes_per_second']:>17,.0f} "
            f"{s['min_writes_per_second']:>8,.0f} {s['max_writes_per_second']:>8,.0f} "
            f"{s['relative_to_none']:>7.0%} | {s['median_handshake_ms']:>12.1f} | "
            f"{s['bytes_per_write']:>11.1f} {s['writes_per_frame']:>12.1f}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer writes and rounds")
    parser.add_argument("--writes", type=int, help="writes per round (default 100000)")
    parser.add_argument("--keys", type=int, default=10_000, help="distinct keys written")
    parser.add_argument("--batch", type=int, default=100, help="writes between loop yields")
    parser.add_argument("--repeat", type=int, help="rounds per mode (default 7)")
    parser.add_argument("--no-uvloop", action="store_true", help="asyncio's own event loop")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the json")
    args = parser.parse_args(argv)
    args.writes = args.writes or (20_000 if args.quick else 100_000)
    args.repeat = args.repeat or (2 if args.quick else 7)
    logging.basicConfig(level=logging.ERROR)

    print("crdtcache replication throughput by peer security mode")
    print(
        f"2 nodes on 127.0.0.1 in one process, {args.writes} writes per round over "
        f"{args.keys} keys, loop yield every {args.batch} writes, {args.repeat} rounds per mode"
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_pki(Path(tmp), ["sender", "receiver"])
        rounds, loop_name = _loop.run(run(args, pki), use_uvloop=not args.no_uvloop)
    summary = summarise(rounds, "batched") + summarise(rounds, "frame per write")
    sealing = seal_timings()
    print(f"event loop: {loop_name}; {ssl.OPENSSL_VERSION}")
    print()
    print_table(summary)
    print()
    print(
        "secret=, per frame:  "
        + "; ".join(
            f"{t['payload_bytes']} B: seal {t['seal_us']:.1f} us, open {t['open_us']:.1f} us"
            for t in sealing
        )
    )
    print()
    print("batched: deltas flushed every 5 ms (the default); frame per write: a flush after")
    print("  each write, so every write is its own frame (the worst case for per-frame costs).")
    print("CPU us/write: process CPU time (sender and receiver together) per write, median;")
    print("  the robust figure on a shared machine, where wall-clock rates swing widely.")
    print("writes/s: writes / (first write to the receiver having applied them all).")
    print("handshake ms: dial to both sides connected (TCP + TLS and/or authentication).")
    print("bytes/write: frame bytes the sender wrote (TLS record overhead not included).")
    elapsed = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "auth_overhead.json"
    path.write_text(
        json.dumps(
            {
                "benchmark": "auth_overhead",
                "writes": args.writes,
                "keys": args.keys,
                "batch": args.batch,
                "repeat": args.repeat,
                "event_loop": loop_name,
                "python": platform.python_version(),
                "openssl": ssl.OPENSSL_VERSION,
                "machine": platform.machine(),
                "wall_seconds": round(elapsed, 1),
                "summary": summary,
                "sealing": sealing,
                "rounds": rounds,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
