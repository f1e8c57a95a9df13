"""crdtcache.contrib proven by the frameworks' own test suites (see ``suites.py``).

Django's ``BaseCacheTests``, cashews' backend-command tests and every cashews module
that goes through the backend, and aiocache's acceptance tests run unmodified against
crdtcache's backends on four setups: ``memory``, ``p2p`` (one node), ``p2p-pair`` (the
framework writes through one node and reads through another) and ``redis``; each with
crdtcache's msgpack value types and again with ``serializer="pickle"`` where crdtcache
allows it (everywhere but an unauthenticated Redis). Every test must pass but these,
each for the reason given:

* Django: ``test_cull``, ``test_zero_cull``, ``test_cull_delete_when_store_empty``
  skip themselves ("Culling isn't implemented.") because the ``cull`` aliases are
  excluded, exactly as for Django's own Redis and memcached backends (crdtcache evicts
  locally, it never culls); under msgpack, the five tests that cache arbitrary objects
  (a function and a class, a model instance, querysets, an HttpResponse).
* cashews: under msgpack, the five tests that cache exception instances; the two
  tests upstream marks as (non-strict) expected failures may fail or pass.
* aiocache: none (its tests bound to its own backends are not collected).

All runs start together (at most :data:`PARALLEL` at a time: they mostly sleep), once
per session; each test then checks one. Where the package index is unreachable the
tests skip (the suites come from the sdists); without Redis the redis runs skip, and
fail in CI.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Final

import pytest

from tests.contrib.suites import SuiteRun, fetch, finish, start
from tests.runtime.redis.redis_helpers import REDIS_URL, reachable, unavailable

FRAMEWORKS: Final = ("django", "cashews", "aiocache")
SETUPS: Final = ("memory", "p2p", "p2p-pair", "redis")
#: Suite runs at once (each is one process, mostly sleeping in the tests' own waits).
PARALLEL: Final = 4

DJANGO_CULL: Final = {
    "test_cull",
    "test_zero_cull",
    "test_cull_delete_when_store_empty",
}
DJANGO_PICKLED: Final = {
    "test_data_types",
    "test_cache_read_for_model_instance",
    "test_cache_write_for_model_instance_with_deferred",
    "test_cache_read_for_model_instance_with_deferred",
    "test_cache_write_unpicklable_object",
}
CASHEWS_PICKLED: Final = {
    "test_cache_with_exceptions",
    "test_cache_only_exceptions",
    "test_cache_early_exceptions",
    "test_cache_hit_exceptions",
    "test_iterator_error_with_cond",
}
CASHEWS_XFAIL: Final = {"test_set_expire_clean_2", "test_early_cache_parallel"}
#: Fewest tests each run must report (a run that collected nothing must not pass).
MINIMUM: Final = {"django": 54, "cashews": 200, "aiocache": 113}


class Runs:
    """Every suite run of the session, started on first use, each awaited on demand."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._pool = ThreadPoolExecutor(PARALLEL)
        self._runs: dict[tuple[str, str], Future[SuiteRun]] = {}
        self._lock = threading.Lock()
        self.started = time.monotonic()

    def _one(self, framework: str, setup: str) -> SuiteRun:
        return finish(framework, setup, start(framework, setup, self.workdir))

    def get(self, framework: str, setup: str) -> SuiteRun:
        with self._lock:
            if not self._runs:
                for f in FRAMEWORKS:
                    fetch(f)  # skips here, once, without an index
                for s in SETUPS:
                    if s == "redis" and reachable(REDIS_URL) is not None:
                        continue
                    for f in FRAMEWORKS:
                        self._runs[(f, s)] = self._pool.submit(self._one, f, s)
        if (framework, setup) not in self._runs:
            unavailable(f"no Redis at {REDIS_URL}: {reachable(REDIS_URL)}")
        return self._runs[(framework, setup)].result()

    def close(self) -> None:
        """Wait for the runs; with ``CRDTCACHE_SUITES_REPORT``, write their counts there."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        report = os.environ.get("CRDTCACHE_SUITES_REPORT")
        if report:
            lines = [
                f"{f:9} {s:9} {run.seconds:6.1f} s  {run.summary()}  | {run.last_line()}"
                for (f, s), future in sorted(self._runs.items())
                if future.done() and not future.cancelled() and future.exception() is None
                for run in [future.result()]
            ]
            total = time.monotonic() - self.started
            Path(report).write_text("\n".join([*lines, f"wall {total:.1f} s"]) + "\n")


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    all_runs = Runs(tmp_path_factory.mktemp("framework-suites"))
    yield all_runs
    all_runs.close()


def _name(test_id: str) -> str:
    """A test's function name from a unittest id or a pytest node id."""
    name = test_id.rpartition("::")[2] if "::" in test_id else test_id.rpartition(".")[2]
    return name.partition("[")[0]


def _check(run: SuiteRun, allowed_skips: dict[str, str]) -> None:
    assert run.outcomes, run.failures()
    assert not run.with_outcome("failed", "error"), run.failures()
    for o in run.with_outcome("skipped"):
        name = _name(o.id)
        assert name in allowed_skips, f"unexpected skip {o.id}: {o.detail}\n{run.summary()}"
        assert allowed_skips[name] in o.detail, f"{o.id} skipped for: {o.detail}"


@pytest.mark.parametrize("setup", SETUPS)
def test_django_s_own_cache_tests_pass(runs: Runs, setup: str) -> None:
    run = runs.get("django", setup)
    classes = 1 if setup == "redis" else 2
    assert len(run.outcomes) == 54 * classes, run.summary()
    allowed = {name: "Culling isn't implemented." for name in DJANGO_CULL}
    allowed |= {name: "pickle" for name in DJANGO_PICKLED}
    _check(run, allowed)
    skipped = run.with_outcome("skipped")
    assert {(_name(o.id), o.id.split(".")[-2]) for o in skipped} == {
        (name, "CrdtMsgpackTests") for name in DJANGO_CULL | DJANGO_PICKLED
    } | ({(name, "CrdtPickleTests") for name in DJANGO_CULL} if classes == 2 else set())
    assert run.returncode == 0, run.failures()


@pytest.mark.parametrize("setup", SETUPS)
def test_cashews_own_backend_tests_pass(runs: Runs, setup: str) -> None:
    run = runs.get("cashews", setup)
    assert len(run.outcomes) >= MINIMUM["cashews"] * (1 if setup == "redis" else 2), run.summary()
    _check(run, {name: "pickle" for name in CASHEWS_PICKLED})
    assert len(run.with_outcome("skipped")) == len(CASHEWS_PICKLED), run.summary()
    for o in run.with_outcome("xfailed", "xpassed"):
        assert _name(o.id) in CASHEWS_XFAIL, o.id


@pytest.mark.parametrize("setup", SETUPS)
def test_aiocache_s_own_acceptance_tests_pass(runs: Runs, setup: str) -> None:
    run = runs.get("aiocache", setup)
    assert len(run.outcomes) == MINIMUM["aiocache"] * (1 if setup == "redis" else 2), run.summary()
    _check(run, {})
    assert run.with_outcome("passed") == run.outcomes, run.summary()
