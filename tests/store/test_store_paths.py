"""Where a store lives: directories created, private modes, and errors that say which case.

SQLite reports a missing directory, a read-only filesystem and a lock held in this
process alike; these tests reproduce each case for real (a read-only filesystem is a
tmpfs mounted read-only in a private mount namespace; a read-only directory is tested
from a process without root's DAC override) and check the message names it.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from crdtcache._errors import PersistenceError
from crdtcache.core import HybridClock, Replica
from crdtcache.store._sqlite import ReplicaStore, StoreBatch

from .helpers import T0, held_by_another_process

ROOT = Path(__file__).resolve().parents[2]
# The promised modes, stated here rather than imported: the store holds every value.
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes and mounts")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _write_one(store: ReplicaStore) -> None:
    replica = Replica(HybridClock("a"))
    replica.set("k", 1, T0)
    store.write(StoreBatch.capture(replica))


# -------------------------------------------------------- directories, modes
@posix_only
def test_missing_parent_directories_are_created_private(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "shop" / "cache.db"
    existing = _mode(tmp_path)
    with _umask(0o022):
        store = ReplicaStore(path)
        assert store.open() is None
        store.initialize("a")
        _write_one(store)
        for level in (tmp_path / "var", tmp_path / "var" / "lib", path.parent):
            assert _mode(level) == DIRECTORY_MODE, level
        store.close()
    assert _mode(tmp_path) == existing  # an existing directory is left as it was
    state = ReplicaStore(path)
    assert state.open() is not None
    state.close()


@posix_only
@pytest.mark.parametrize("mask", [0o022, 0o000], ids=["umask-022", "umask-000"])
def test_store_files_are_private_from_creation(tmp_path: Path, mask: int) -> None:
    path = tmp_path / "node.db"
    with _umask(mask):
        store = ReplicaStore(path)
        store.open()
        store.initialize("a")
        _write_one(store)  # the -wal file exists while the store is open
        side_files = [p for p in tmp_path.iterdir() if p.name != "node.db"]
        assert any(p.name == "node.db-wal" for p in side_files)
        for p in [path, *side_files]:
            assert _mode(p) == FILE_MODE, p
        store.close()


@posix_only
def test_an_existing_store_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    store = ReplicaStore(path)
    store.open()
    store.initialize("a")
    store.close()
    path.chmod(0o640)  # its owner's choice (group-readable backups, say)
    store = ReplicaStore(path)
    store.open()
    store.close()
    assert _mode(path) == 0o640


def test_a_directory_that_cannot_be_created_is_named(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("in the way")
    path = tmp_path / "plain-file" / "data" / "node.db"
    with pytest.raises(PersistenceError) as info:
        ReplicaStore(path).open()
    message = str(info.value)
    assert "could not be created" in message
    assert "plain-file" in message and "not a directory" in message
    assert (tmp_path / "plain-file").read_text() == "in the way"


# ----------------------------------------------------------------- in use
def test_a_second_open_in_this_process_says_so(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    first = ReplicaStore(path)
    first.open()
    first.initialize("a")
    with pytest.raises(PersistenceError, match="already open in this process"):
        ReplicaStore(path).open()
    # Another name for the same file is the same file.
    alias = tmp_path / "alias.db"
    alias.symlink_to(path)
    with pytest.raises(PersistenceError, match="already open in this process"):
        ReplicaStore(alias).open()
    first.close()
    second = ReplicaStore(alias)
    assert second.open() is not None  # released at close
    second.close()


def test_a_failed_open_does_not_keep_the_file_claimed(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    first = ReplicaStore(path)
    first.open()
    first.initialize("a")
    first.close()
    with (
        held_by_another_process(path),
        pytest.raises(PersistenceError, match="in use by another process"),
    ):
        ReplicaStore(path).open()
    store = ReplicaStore(path)
    assert store.open() is not None
    store.close()


def test_a_store_locked_by_another_process_says_so(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    with held_by_another_process(path), pytest.raises(PersistenceError) as info:
        ReplicaStore(path).open()
    assert "in use by another process" in str(info.value)
    assert "in this process" not in str(info.value)


# -------------------------------------------------------------- read-only
# Run inside a private mount namespace: a tmpfs mounted read-only at $1 (no file in
# it), then a store created on a writable tmpfs and the tmpfs remounted read-only.
_READ_ONLY_FS = r"""
set -e
mount -t tmpfs -o ro,size=1m tmpfs "$1" || exit 77
"$2" -c "$3" "$1/new.db"
"$2" -c "$3" "$1/sub/new.db"
umount "$1"
mount -t tmpfs -o size=1m tmpfs "$1"
"$2" -c "$3" "$1/existing.db"
mount -o remount,ro "$1"
"$2" -c "$3" "$1/existing.db"
"""

# Open (initializing a new store) and print the outcome on one line.
_OPEN = """
import sys
from crdtcache._errors import PersistenceError
from crdtcache.store._sqlite import ReplicaStore
store = ReplicaStore(sys.argv[1])
try:
    if store.open() is None:
        store.initialize("a")
    store.close()
    print("opened")
except PersistenceError as exc:
    print("error:", exc)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux mount namespaces")
def test_a_read_only_filesystem_is_named(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed: no way to mount a read-only filesystem")
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    run = subprocess.run(
        [
            *("unshare", "--mount", "--propagation", "private"),
            *("sh", "-c", _READ_ONLY_FS, "sh", str(mount_point), sys.executable, _OPEN),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    if run.returncode == 77 or (run.returncode != 0 and "unshare:" in run.stderr):
        pytest.skip(f"cannot mount a filesystem here (needs CAP_SYS_ADMIN): {run.stderr.strip()}")
    assert run.returncode == 0, run.stderr
    new, new_in_sub, existing, existing_now_ro = run.stdout.splitlines()
    assert new.startswith("error:") and "read-only filesystem" in new
    assert new_in_sub.startswith("error:") and "could not be created" in new_in_sub
    assert "Read-only file system" in new_in_sub
    assert existing == "opened"
    assert existing_now_ro.startswith("error:") and "read-only filesystem" in existing_now_ro
    assert list(mount_point.iterdir()) == []  # the mounts were private to the child


@posix_only
def test_a_read_only_directory_and_file_are_named(tmp_path: Path) -> None:
    read_only_dir = tmp_path / "ro"
    read_only_dir.mkdir(mode=0o500)
    read_only_file = tmp_path / "node.db"
    read_only_file.write_bytes(b"")
    read_only_file.chmod(0o400)
    paths = [read_only_dir / "node.db", read_only_dir / "sub" / "node.db", read_only_file]
    try:
        if os.geteuid() != 0:
            outcomes = [_open_outcome(p) for p in paths]
        else:
            # Root writes through mode bits by its DAC capabilities; a child without
            # them (still uid 0) meets the modes as any service account would.
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("running as root and setpriv(1) is missing: cannot drop DAC override")
            run = subprocess.run(
                [
                    *(setpriv, "--bounding-set=-dac_override,-dac_read_search"),
                    *(sys.executable, "-c", _OPEN_EACH, *map(str, paths)),
                ],
                capture_output=True,
                text=True,
                timeout=60,
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
            )
            if run.returncode != 0 and "setpriv:" in run.stderr:
                pytest.skip(f"cannot drop root's DAC override here: {run.stderr.strip()}")
            assert run.returncode == 0, run.stderr
            outcomes = run.stdout.splitlines()
    finally:
        read_only_dir.chmod(0o700)
    in_dir, in_sub, file = outcomes
    assert f"directory {str(read_only_dir)!r}" in in_dir
    assert "read-only for this process" in in_dir
    assert "could not be created" in in_sub and "Permission denied" in in_sub
    assert f"store {str(read_only_file)!r} is read-only for this process" in file


_OPEN_EACH = """
import sys
from crdtcache._errors import PersistenceError
from crdtcache.store._sqlite import ReplicaStore
for path in sys.argv[1:]:
    try:
        ReplicaStore(path).open()
        print("opened")
    except PersistenceError as exc:
        print("error:", exc)
"""


def _open_outcome(path: Path) -> str:
    try:
        ReplicaStore(path).open()
    except PersistenceError as exc:
        return f"error: {exc}"
    return "opened"


@posix_only
@pytest.mark.parametrize("mask", [0o022, 0o000], ids=["umask-022", "umask-000"])
def test_a_replicating_node_keeps_its_store_wal_and_shm_private(tmp_path: Path, mask: int) -> None:
    """Issue 12, item 12: data from a peer over loopback lands in files only the owner reads."""
    import asyncio

    from crdtcache import Cache

    path = tmp_path / "node.db"

    async def scenario() -> dict[str, int]:
        writer = Cache(backend="p2p", discovery="none")
        await writer.start()
        assert writer.address is not None
        stored = Cache(backend="p2p", discovery="none", seeds=[writer.address], persist_path=path)
        await stored.start()
        try:
            await stored.wait_for_peers(1)
            await writer.set("secret-key", "secret value")
            for _ in range(200):
                if await stored.get("secret-key") == "secret value":
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # a persistence batch
            return {p.name: _mode(p) for p in tmp_path.iterdir()}  # while open
        finally:
            await stored.close()
            await writer.close()

    with _umask(mask):
        modes = asyncio.run(scenario())
    # (No -shm file: the store locks exclusively, so SQLite keeps the WAL index in
    # memory; any file beside the store that does appear is checked all the same.)
    assert {"node.db", "node.db-wal"} <= set(modes), modes
    assert all(mode == FILE_MODE for mode in modes.values()), modes
