"""Django's, cashews' and aiocache's own test suites, fetched and run against crdtcache.

Each framework ships its tests in its sdist. :func:`fetch` downloads the pinned sdist
with pip (``pip download --no-binary :all: --no-deps``) into a cache directory
(``CRDTCACHE_SUITES_CACHE``, default ``~/.cache/crdtcache/framework-suites``) and
extracts the tests once; without a package index the tests are skipped, saying so.
:func:`run` runs one suite in a subprocess with the overlay of ``overlay/`` (our
fixtures, settings and ini; the framework's test files are not modified) against one
crdtcache setup, and returns every test's outcome. The frameworks themselves are
installed in the environment at the same versions (the ``dev`` extra pins them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest

OVERLAY: Final = Path(__file__).parent / "overlay"
#: The sdists whose tests are run, and the members extracted from each.
PINS: Final = {
    "django": ("5.2.19", ("tests/cache/",)),
    "cashews": ("7.6.0", ("tests/",)),
    "aiocache": ("0.12.3", ("tests/",)),
}
#: Seconds one suite run may take (a hung run fails instead of stalling CI).
RUN_TIMEOUT: Final = 300


def cache_dir() -> Path:
    """Where sdists are downloaded and extracted (kept between runs)."""
    default = Path.home() / ".cache" / "crdtcache" / "framework-suites"
    return Path(os.environ.get("CRDTCACHE_SUITES_CACHE", default))


def fetch(name: str) -> Path:
    """The extracted sdist root of the pinned ``name`` (downloading it if needed).

    Skips the calling test when pip cannot download it (no package index here).
    """
    version, members = PINS[name]
    root = cache_dir() / "src" / f"{name}-{version}"
    if (root / ".complete").exists():
        return root
    sdists = cache_dir() / "sdists"
    sdists.mkdir(parents=True, exist_ok=True)
    archive = next(sdists.glob(f"{name}-{version}.tar.gz"), None)
    if archive is None:
        done = subprocess.run(
            [
                sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                "--no-binary", ":all:", "--dest", str(sdists),
                f"{name}=={version}",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )  # fmt: skip
        archive = next(sdists.glob(f"{name}-{version}.tar.gz"), None)
        if done.returncode != 0 or archive is None:
            pytest.skip(
                f"could not download the {name} {version} sdist from the package index "
                f"(its test suite comes from there): {done.stderr.strip()[-300:]}"
            )
    partial = Path(tempfile.mkdtemp(dir=cache_dir()))
    with tarfile.open(archive) as tar:
        prefix = f"{name}-{version}/"
        chosen = [
            m for m in tar.getmembers() if any(m.name.startswith(prefix + p) for p in members)
        ]
        tar.extractall(partial, members=chosen, filter="data")
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    (partial / f"{name}-{version}").rename(root)
    shutil.rmtree(partial, ignore_errors=True)
    (root / ".complete").touch()
    return root


@dataclass
class Outcome:
    """One test of a suite run: its id, outcome and the message of a skip or failure."""

    id: str
    outcome: str  # passed, failed, error, skipped, xfailed, xpassed
    detail: str = ""


@dataclass
class SuiteRun:
    """Every outcome of one run, and how it ended."""

    framework: str
    setup: str
    outcomes: list[Outcome] = field(default_factory=list)
    returncode: int = 0
    log: str = ""
    seconds: float = 0.0

    def with_outcome(self, *outcomes: str) -> list[Outcome]:
        """The tests that ended so."""
        return [o for o in self.outcomes if o.outcome in outcomes]

    def summary(self) -> str:
        """Counts per outcome, e.g. ``92 passed, 16 skipped``."""
        counts: dict[str, int] = {}
        for o in self.outcomes:
            counts[o.outcome] = counts.get(o.outcome, 0) + 1
        return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))

    def last_line(self) -> str:
        """The run's own closing line (pytest's counts, reruns included; Django's OK)."""
        lines = [line for line in self.log.splitlines() if line.strip()]
        return lines[-1].strip("= ") if lines else ""

    def failures(self) -> str:
        """The failed tests with their messages, for an assertion's text."""
        bad = self.with_outcome("failed", "error")
        shown = "\n\n".join(f"{o.id}\n{o.detail[-1500:]}" for o in bad[:8])
        return f"{self.framework} on {self.setup}: {self.summary()}\n{shown}\n{self.log[-3000:]}"


def _env(setup: str, results: Path, pythonpath: list[Path]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CRDT_SETUP=setup,
        CRDT_CLUSTER=f"suites-{uuid.uuid4().hex[:10]}",
        CRDT_RESULTS=str(results),
        PYTHONPATH=os.pathsep.join(str(p) for p in pythonpath),
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.pop("PYTEST_ADDOPTS", None)
    return env


def command(framework: str, setup: str, results: Path) -> tuple[list[str], Path, dict[str, str]]:
    """``(argv, working directory, environment)`` of one suite run."""
    src = fetch(framework)
    common = OVERLAY
    if framework == "django":
        here = OVERLAY / "django"
        argv = [
            sys.executable, "-m", "django", "test", "contract_django",
            "--settings=crdt_django_settings", "--noinput", "-v", "1",
        ]  # fmt: skip
        return argv, here, _env(setup, results, [here, common, src / "tests"])
    here = OVERLAY / framework
    pytest_args = [
        sys.executable, "-m", "pytest", "-c", str(here / "pytest.ini"), "--noconftest",
        "-p", f"crdt_{framework}_plugin", f"--junitxml={results}", "-q",
        f"--rootdir={src}",
    ]  # fmt: skip
    if framework == "cashews":
        tests = src / "tests"
        return [*pytest_args, *CASHEWS_MODULES], tests, _env(setup, results, [here, common])
    return [*pytest_args, "tests/acceptance"], src, _env(setup, results, [here, common])


#: cashews' modules whose tests go through the backend (the ``cache`` fixture).
CASHEWS_MODULES: Final = (
    "test_backend_commands.py",
    "test_add_prefix.py",
    "test_blooms.py",
    "test_cache.py",
    "test_cache_exception.py",
    "test_callback.py",
    "test_circuit_breaker.py",
    "test_disable_control.py",
    "test_invalidate.py",
    "test_iterators_cache.py",
    "test_lock_decorator.py",
    "test_middleware.py",
    "test_rate_limit.py",
    "test_tags_feature.py",
    "test_transaction.py",
    "test_wrapper.py",
)


@dataclass
class Started:
    """A suite run under way: its process, its log and where its results will be."""

    process: subprocess.Popen[str]
    log: Path
    results: Path
    began: float


def start(framework: str, setup: str, workdir: Path) -> Started:
    """Start one suite run in ``workdir``."""
    results = workdir / f"{framework}-{setup}.{'json' if framework == 'django' else 'xml'}"
    argv, cwd, env = command(framework, setup, results)
    log = workdir / f"{framework}-{setup}.log"
    with open(log, "w") as out:  # the child holds its own copy of the descriptor
        process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
        )
    return Started(process, log, results, time.monotonic())


def finish(framework: str, setup: str, started: Started) -> SuiteRun:
    """Wait for a run (at most :data:`RUN_TIMEOUT`) and read its outcomes."""
    process = started.process
    try:
        process.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    run = SuiteRun(
        framework,
        setup,
        returncode=process.returncode,
        seconds=time.monotonic() - started.began,
        log=started.log.read_text(errors="replace"),
    )
    if started.results.exists():
        if framework == "django":
            run.outcomes = [Outcome(**r) for r in json.loads(started.results.read_text())]
        else:
            run.outcomes = _junit(started.results)
    return run


def _junit(path: Path) -> list[Outcome]:
    outcomes = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome, detail = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, detail = (
                    ("failed" if child.tag == "failure" else "error"),
                    (child.get("message", "") + "\n" + (child.text or "")),
                )
            elif child.tag == "skipped":
                kind = child.get("type", "")
                outcome = "xfailed" if kind == "pytest.xfail" else "skipped"
                detail = child.get("message", "")
        outcomes.append(Outcome(name, outcome, detail))
    return outcomes
