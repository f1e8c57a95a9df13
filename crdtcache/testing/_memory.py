"""Real p2p caches on in-memory streams, in virtual time: test multi-node code deterministically.

Theory of operation
-------------------
A :class:`MemoryNetwork` runs your coroutine in its own event loop, a
:class:`VirtualTimeLoop`: asyncio's selector loop whose ``time()`` is virtual. When
nothing is ready to run, instead of sleeping until the next timer, the loop jumps
virtual time to it (trio's ``MockClock(autojump_threshold=0)``, the ``looptime``
library). So ``await asyncio.sleep(60)`` returns at once, timeouts fire in order, and
a minute of gossip takes milliseconds.

Each :meth:`MemoryNetwork.cache` is a real :class:`~crdtcache.Cache` with
``backend="p2p"``: the real engine, link sessions, node and codec, over the in-memory
streams of a :class:`~crdtcache.transport._memory.MemoryHub` instead of sockets. Its
wall clock (``_clock``) is the network's virtual clock, and every random choice (node
id suffixes, incarnations, dial jitter, gossip targets) comes from generators seeded by
``seed`` and the node's name. Nothing reads the real clock or unseeded randomness, so
the same seed and the same program give the same run, event for event.

Faults: :meth:`MemoryNetwork.partition` (streams between groups are reset, dials between
them refused, until :meth:`MemoryNetwork.heal`) and :meth:`MemoryNetwork.break_link`.

Limits: work handed to threads (``run_in_executor``, ``asyncio.to_thread``: a
``persist_path`` store, say) takes no virtual time, and the loop waits for it in real
time; real sockets still work but their latency counts as zero virtual time. Both make
a run depend on real timing. ``SyncCache`` runs its own loop in a thread and cannot
join a MemoryNetwork.

Example::

    import asyncio
    from crdtcache.testing import MemoryNetwork

    async def main(net: MemoryNetwork) -> None:
        async with net.cache(node_id="a") as a, net.cache(node_id="b", seeds=[a.address]) as b:
            await b.wait_for_peers(1)
            await a.set("k", 1)
            await asyncio.sleep(1)            # a second of virtual time: gossip arrives
            assert await b.get("k") == 1
            net.partition([a], [b])
            await a.set("k", 2)               # b cannot hear of it...
            await asyncio.sleep(5)
            assert await b.get("k") == 1
            net.heal()
            await asyncio.sleep(15)           # ...until the nodes redial (backoff)
            assert await b.get("k") == 2

    with MemoryNetwork(seed=1) as net:
        net.run(main(net))
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import selectors
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Final, TypeVar

from crdtcache.cache._cache import Cache
from crdtcache.transport._memory import MemoryHub

__all__ = ["EPOCH", "MemoryNetwork", "VirtualTimeLoop"]

#: The wall-clock time (seconds since the epoch) at which a network's virtual time starts.
EPOCH: Final = 1_700_000_000.0

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    """Polls without blocking; where the loop would sleep, it moves virtual time instead."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if events or timeout == 0:
            return events
        loop = self._loop
        if loop.threads or loop.real_time:
            # A thread will wake the loop (call_soon_threadsafe): wait for it for real,
            # with virtual time standing still.
            blocked: list[tuple[selectors.SelectorKey, int]] = super().select(timeout)
            return blocked
        if timeout is None:
            raise RuntimeError(
                "deadlock in virtual time: every task waits, no timer is set and no "
                "thread is working, so nothing can ever wake the event loop"
            )
        loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose ``time()`` is virtual and jumps to the next timer when idle.

    Examples:
        >>> import asyncio
        >>> from crdtcache.testing import VirtualTimeLoop
        >>> loop = VirtualTimeLoop()
        >>> loop.run_until_complete(asyncio.sleep(3600))  # returns at once
        >>> loop.time() >= 3600
        True
        >>> loop.close()
    """

    def __init__(self) -> None:
        self._now = 0.0
        #: Executor jobs in flight (the loop waits for them in real time).
        self.threads = 0
        #: Set to wait in real time (shutting down the default executor).
        self.real_time = False
        super().__init__(selector=_JumpingSelector(self))

    def time(self) -> float:
        """Virtual seconds since the loop was made."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move virtual time forward (the loop does this whenever it is idle)."""
        if seconds < 0:
            raise ValueError("virtual time never goes back")
        self._now += seconds

    def run_in_executor(  # type: ignore[override]  # same call, typed without TypeVarTuple
        self, executor: concurrent.futures.Executor | None, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        """Run ``func`` in a thread, as asyncio does; the loop waits for it for real."""
        future = super().run_in_executor(executor, func, *args)
        self.threads += 1

        def finished(_: object) -> None:
            self.threads -= 1

        future.add_done_callback(finished)
        return future


class MemoryNetwork:
    """Real p2p caches joined by in-memory streams, run in virtual time from one ``seed``.

    Use it as a context manager (it owns an event loop), create caches with
    :meth:`cache` and run your coroutine with :meth:`run`.

    Examples:
        ```python
        import asyncio
        from crdtcache.testing import MemoryNetwork

        async def main(net: MemoryNetwork) -> None:
            async with net.cache(node_id="a") as a, net.cache(seeds=[a.address]) as b:
                await b.wait_for_peers(1)
                net.partition([a], [b])
                await a.set("k", 1)
                await asyncio.sleep(60)  # a minute of virtual time, in milliseconds
                assert await b.get("k") is None
                net.heal()
                await asyncio.sleep(15)  # the nodes redial, then catch up
                assert await b.get("k") == 1

        with MemoryNetwork(seed=1) as net:
            net.run(main(net))
        ```
    """

    def __init__(self, seed: int = 0, *, start: float = EPOCH) -> None:
        self.seed = seed
        self.hub = MemoryHub(seed)
        self.loop = VirtualTimeLoop()
        self.start = start
        self._names: dict[int, str] = {}  # id(cache) -> its name on the hub

    def __enter__(self) -> MemoryNetwork:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- time
    def clock(self) -> float:
        """The wall clock of every node: ``start`` plus the virtual time elapsed."""
        return self.start + self.loop.time()

    @property
    def elapsed(self) -> float:
        """Virtual seconds since the network was made."""
        return self.loop.time()

    def run(self, main: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        """Run ``main`` in virtual time and return its result.

        ``timeout`` is in virtual seconds: past it, ``main`` is cancelled and
        ``TimeoutError`` raised. Raises what ``main`` raises.
        """
        if self.loop.is_closed():
            raise RuntimeError("this MemoryNetwork is closed")
        task = asyncio.wait_for(main, timeout) if timeout is not None else main
        context = contextvars.copy_context()
        return context.run(self.loop.run_until_complete, task)

    def close(self) -> None:
        """Cancel what is still running and close the loop. Idempotent."""
        loop = self.loop
        if loop.is_closed():
            return
        try:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                gathered = asyncio.gather(*pending, return_exceptions=True)
                loop.run_until_complete(gathered)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.real_time = True  # the default executor shuts down in a thread
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    # --------------------------------------------------------------- caches
    def cache(self, node_id: str | None = None, **options: Any) -> Cache:
        """A p2p :class:`~crdtcache.Cache` on this network (not started yet).

        ``options`` are the cache's; ``discovery`` defaults to ``"none"`` (peers are
        found through ``seeds``, and then through each other). The node listens on
        ``127.0.0.1`` at a port of the network. Create and use it inside :meth:`run`.
        """
        name = node_id or f"node{len(self._names)}"
        options.setdefault("discovery", "none")
        cache = Cache(
            backend="p2p",
            node_id=node_id,
            _network=self.hub.network(name),
            _clock=self.clock,
            **options,
        )
        self._names[id(cache)] = name
        return cache

    def _name(self, node: Cache | str) -> str:
        if isinstance(node, str):
            return node
        try:
            return self._names[id(node)]
        except KeyError:
            raise ValueError(f"{node!r} is not a cache of this network") from None

    # --------------------------------------------------------------- faults
    def partition(self, *groups: list[Cache | str] | tuple[Cache | str, ...]) -> None:
        """Split the network: caches (or node names) talk only within their group.

        Links between groups break at once and cannot be redialled until :meth:`heal`.
        """
        self.hub.partition(*({self._name(n) for n in group} for group in groups))

    def heal(self) -> None:
        """End the partition: the nodes redial each other (with their usual backoff)."""
        self.hub.heal()

    def break_link(self, a: Cache | str, b: Cache | str) -> None:
        """Reset the link between two caches once (they redial at once)."""
        self.hub.break_links(self._name(a), self._name(b))
