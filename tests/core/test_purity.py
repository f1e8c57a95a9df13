"""The core is sans-IO: no event loop, socket, clock, randomness or threads in it."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import crdtcache.core

FORBIDDEN = frozenset({"asyncio", "socket", "time", "random", "threading", "select"})


def core_modules() -> list[ModuleType]:
    names = [m.name for m in pkgutil.walk_packages(crdtcache.core.__path__, "crdtcache.core.")]
    return [crdtcache.core, *(importlib.import_module(n) for n in sorted(names))]


def imported_roots(source: str) -> set[str]:
    """Top-level names of every module ``source`` imports, wherever the import stands."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
        ):
            roots.add("__import__")
    return roots


def test_every_core_module_is_found() -> None:
    names = {m.__name__ for m in core_modules()}
    assert {"crdtcache.core._engine", "crdtcache.core._hlc", "crdtcache.core._replica"} <= names


@pytest.mark.parametrize("module", core_modules(), ids=lambda m: m.__name__)
def test_core_module_imports_nothing_that_does_io_or_reads_time(module: ModuleType) -> None:
    roots = imported_roots(inspect.getsource(module))
    assert not roots & FORBIDDEN, f"{module.__name__} imports {sorted(roots & FORBIDDEN)}"
    assert "__import__" not in roots and "importlib" not in roots


def test_the_checker_sees_nested_dotted_and_dynamic_imports() -> None:
    source = (
        "import os.path\n"
        "def f():\n"
        "    import time\n"
        "    from socket import socket\n"
        "    from . import sibling\n"
        "    __import__('random')\n"
    )
    assert imported_roots(source) == {"os", "time", "socket", "__import__"}


def test_public_names_of_the_core_are_pinned() -> None:
    assert sorted(crdtcache.core.__all__) == [
        "ALIVE",
        "Ack",
        "Change",
        "DEAD",
        "DEFAULT_MAX_VALUE_BYTES",
        "EngineStatistics",
        "Entry",
        "Fetch",
        "FetchReply",
        "GossipConfig",
        "GossipEngine",
        "HybridClock",
        "MAX_DRIFT",
        "MAX_KEY_CHARS",
        "MAX_NODE_ID_CHARS",
        "MAX_VALUE_BYTES",
        "Message",
        "NOT_HELD",
        "Outgoing",
        "PROTOCOL_VERSION",
        "Packed",
        "PatternTombstone",
        "PeerEvent",
        "PeerInfo",
        "Ping",
        "Push",
        "RandomSource",
        "Replica",
        "Resolver",
        "ResolverViolation",
        "SUSPECT",
        "Stamp",
        "SyncRequest",
        "SyncResponse",
        "TOMBSTONE",
        "TOMBSTONE_GRACE",
        "Version",
        "check_key",
        "check_resolver",
        "decode_value",
        "encode_value",
        "last_writer_wins",
        "pack_ts",
        "unpack_stored",
    ]
    for name in crdtcache.core.__all__:
        assert hasattr(crdtcache.core, name)
