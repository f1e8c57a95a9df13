"""Event loops crdtcache creates itself (CLI, ``SyncCache``): uvloop when installed.

Opt out with ``use_uvloop=False`` or the environment variable ``CRDTCACHE_UVLOOP=0``.
Code that runs its own loop keeps full control: nothing here changes a global policy.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["new_event_loop", "run", "uvloop_wanted"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def uvloop_wanted(use_uvloop: bool | None = None) -> bool:
    """Whether to use uvloop: the argument if given, else not opted out and installed."""
    if use_uvloop is not None:
        return use_uvloop
    if os.environ.get("CRDTCACHE_UVLOOP", "1").lower() in ("0", "false", "no", "off"):
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def new_event_loop(use_uvloop: bool | None = None) -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's when wanted and importable, else asyncio's default."""
    if uvloop_wanted(use_uvloop):
        try:
            import uvloop

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
        except ImportError:
            log.warning("uvloop was asked for but is not installed; using asyncio's loop")
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool | None = None) -> T:
    """Run ``main`` to completion in a new loop (see :func:`new_event_loop`)."""
    with asyncio.Runner(loop_factory=lambda: new_event_loop(use_uvloop)) as runner:
        return runner.run(main)
