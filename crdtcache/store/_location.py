"""Where a ``persist_path`` store lives: its directory, its mode, who has it open.

Theory of operation
-------------------
These checks run before SQLite is asked to open anything, because SQLite reports
every problem with a path alike ("unable to open database file", "disk I/O error",
"database is locked") and a user needs to know which one it is:

* A missing parent directory is created, each missing level with mode
  :data:`DIRECTORY_MODE`; one that cannot be created is named, with the reason.
* A read-only filesystem, and a directory or file this process may not write, are
  named as such: SQLite writes the file and creates its ``-wal`` file beside it, so a
  store cannot even be opened read-only.
* The file is created with mode :data:`FILE_MODE` before SQLite opens it. SQLite
  creates the ``-wal`` and ``-shm`` files with the mode of the database file (and
  corrects them if the umask took bits away), so they are private from their first
  byte too. An existing file keeps the mode its owner gave it.
* A file that a store of this process already has open is refused as such. SQLite
  would call it "locked", which reads as if another process held it.
"""

from __future__ import annotations

import errno
import os
import threading
from typing import Final

from crdtcache._errors import PersistenceError

__all__ = [
    "DIRECTORY_MODE",
    "FILE_MODE",
    "OPEN_HERE",
    "FileId",
    "OpenHere",
    "create_private",
    "prepare",
]

#: Mode of each directory created for a store: the store holds every cached value.
DIRECTORY_MODE: Final = 0o700
#: Mode of a new store file (and, through SQLite, of its -wal and -shm files).
FILE_MODE: Final = 0o600

#: A file's identity: (device, inode). Two paths (a symlink, a hard link, ``a/../b``)
#: that name one file have one identity.
FileId = tuple[int, int]


def prepare(path: str) -> None:
    """Make sure a store at ``path`` can be created or written, before SQLite is asked.

    Creates missing parent directories. Raises :class:`PersistenceError` naming the
    case: a directory that could not be created, a read-only filesystem, or a
    directory or file that this process may not write.
    """
    directory = os.path.dirname(os.path.abspath(path))
    _make_directories(directory, path)
    if _read_only_filesystem(directory):
        raise PersistenceError(
            f"store {path!r} is on a read-only filesystem: persist_path needs a writable "
            "directory (SQLite writes the file and creates its -wal file beside it)"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PersistenceError(
            f"directory {directory!r} of store {path!r} is read-only for this process: "
            "SQLite needs to create the store's -wal file there"
        )
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        raise PersistenceError(f"store {path!r} is read-only for this process")


def create_private(path: str) -> FileId:
    """Open ``path``, creating it with :data:`FILE_MODE` if absent; return its identity.

    Nothing is written: an existing file is left as it was. Raises
    :class:`PersistenceError` if the file cannot be opened for writing.
    """
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags, FILE_MODE)
    except OSError as exc:
        raise _open_error(path, exc) from exc
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return st.st_dev, st.st_ino


class OpenHere:
    """The store files open in this process, so that a second open names the real cause.

    One per process (:data:`OPEN_HERE`); every method is thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: dict[FileId, str] = {}

    def claim(self, file: FileId, path: str) -> None:
        """Note ``file`` as open; raise :class:`PersistenceError` if it already is."""
        with self._lock:
            holder = self._paths.get(file)
            if holder is not None:
                same = "" if holder == path else f" (as {holder!r})"
                raise PersistenceError(
                    f"store {path!r} is already open in this process{same}: each cache "
                    "needs its own persist_path; close the other cache first"
                )
            self._paths[file] = path

    def release(self, file: FileId) -> None:
        """Forget ``file`` (idempotent)."""
        with self._lock:
            self._paths.pop(file, None)


#: The process-wide registry used by :class:`~crdtcache.store.ReplicaStore`.
OPEN_HERE: Final = OpenHere()


def _make_directories(directory: str, path: str) -> None:
    """Create ``directory`` and its missing parents, each with :data:`DIRECTORY_MODE`.

    ``os.makedirs`` applies its mode to the last level only; a store's directories
    are all private, so each level is made here.
    """
    missing: list[str] = []
    current = directory
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for level in reversed(missing):
        try:
            os.mkdir(level, DIRECTORY_MODE)
        except FileExistsError:
            if os.path.isdir(level):
                continue  # created meanwhile by someone else: fine
            raise PersistenceError(
                f"directory {directory!r} for store {path!r} does not exist and could not "
                f"be created: {level!r} exists and is not a directory"
            ) from None
        except OSError as exc:
            raise PersistenceError(
                f"directory {directory!r} for store {path!r} does not exist and could not "
                f"be created: {level!r}: {_reason(exc)}"
            ) from exc


def _read_only_filesystem(directory: str) -> bool:
    if not hasattr(os, "statvfs"):  # Windows: the open below reports it
        return False
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False  # unknown: the open reports what goes wrong


def _open_error(path: str, exc: OSError) -> PersistenceError:
    if exc.errno == errno.EROFS:
        return PersistenceError(f"store {path!r} is on a read-only filesystem")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PersistenceError(f"store {path!r} is read-only for this process: {_reason(exc)}")
    return PersistenceError(f"cannot open store {path!r}: {_reason(exc)}")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
