"""The ``cached`` decorator: cache-aside for a function, through ``get_or_set``.

Theory of operation
-------------------
The wrapper keeps the function's kind, so callers use it exactly as before:

* with a :class:`Cache` the function must be an ``async def``, and the wrapper is a
  coroutine function;
* with a :class:`SyncCache` it must be a plain ``def``, and the wrapper is a plain
  function.

The other two pairings are refused when decorating, with :class:`ConfigError`. A
plain ``def`` on a ``Cache`` would turn into a coroutine function that its callers do
not await, and its misses would block the event loop; an ``async def`` on a
``SyncCache`` would block the caller's event loop on every miss while the cache's own
thread ran the coroutine on another loop.

A key template is checked against the signature when decorating, so a name that is
not an argument is reported then, not as a ``KeyError`` on the first call. Every
wrapper has ``key(*args, **kwargs)`` (the key a call uses) and
``invalidate(*args, **kwargs)`` (drop that call's entry on every node; a coroutine
with a ``Cache``).
"""

from __future__ import annotations

import functools
import inspect
import string
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from crdtcache._errors import ConfigError
from crdtcache.cache._cache import Cache
from crdtcache.cache._options import check_ttl
from crdtcache.cache._sync import SyncCache

__all__ = ["AsyncCachedFunction", "CachedFunction", "cached"]

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

KeySpec = str | Callable[..., str] | None


class CachedFunction(Protocol[P, R_co]):
    """What ``cached(sync_cache)`` returns: the function, with its key and invalidation."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """The cached result of ``fn(*args, **kwargs)`` (``fn`` runs on a miss)."""
        ...

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The cache key this call uses, e.g. ``"user:7"``."""
        ...

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Invalidate this call's entry on every node; True if this node had it."""
        ...


class AsyncCachedFunction(Protocol[P, R_co]):
    """What ``cached(cache)`` returns: the coroutine function, with key and invalidation."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R_co]:
        """The cached result of ``await fn(*args, **kwargs)`` (``fn`` runs on a miss)."""
        ...

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The cache key this call uses, e.g. ``"user:7"``."""
        ...

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, bool]:
        """Invalidate this call's entry on every node; True if this node had it."""
        ...


@overload
def cached(
    cache: Cache, *, key: KeySpec = None, ttl: float | None = None
) -> Callable[[Callable[P, Awaitable[R]]], AsyncCachedFunction[P, R]]: ...


@overload
def cached(
    cache: SyncCache, *, key: KeySpec = None, ttl: float | None = None
) -> Callable[[Callable[P, R]], CachedFunction[P, R]]: ...


def cached(
    cache: Cache | SyncCache, *, key: KeySpec = None, ttl: float | None = None
) -> Callable[[Callable[..., Any]], Any]:
    """Decorate a function so that its result is cached under a key built from its arguments.

    ``key`` is a template formatted with the call's arguments by name
    (``"user:{user_id}"``, ``"user:{user.id}"``), a callable taking the same arguments
    and returning the key, or None for ``module.qualname:`` followed by the arguments'
    reprs. Concurrent calls for one key run the function once (``get_or_set``).

    With a :class:`Cache`, decorate an ``async def``; with a :class:`SyncCache`, a
    plain ``def`` (the wrapper keeps the kind; see the module doc for why the other
    pairings are refused). The wrapper has ``key(*args, **kwargs)`` and
    ``invalidate(*args, **kwargs)``.

    Raises :class:`ConfigError` for a bad ``cache``, ``key`` or ``ttl``, and when
    decorating: for a function of the wrong kind, or a template that names something
    that is not an argument. A call whose arguments the template cannot format
    raises :class:`ConfigError` naming the template.

    Examples:
        ```python
        import crdtcache

        async with crdtcache.Cache(backend="memory") as cache:

            @crdtcache.cached(cache, key="user:{user_id}", ttl=60)
            async def load_user(user_id: int) -> dict[str, object]:
                return {"id": user_id}  # the slow database

            assert await load_user(7) == {"id": 7}  # loaded once, then from the cache
            assert load_user.key(7) == "user:7"
            assert await load_user.invalidate(7) is True  # dropped on every node
        ```
    """
    if not isinstance(cache, (Cache, SyncCache)):
        raise ConfigError("cached() needs a Cache or a SyncCache")
    if key is not None and not isinstance(key, str) and not callable(key):
        raise ConfigError("key must be a template str, a callable, or None")
    check_ttl(ttl)

    def decorate(fn: Callable[..., Any]) -> Any:
        if not callable(fn):
            raise ConfigError(f"cached() decorates a function, not {type(fn).__name__}")
        name = getattr(fn, "__qualname__", repr(fn))
        _check_kind(fn, name, is_async=isinstance(cache, Cache))
        key_of = _key_builder(fn, name, key)
        if isinstance(cache, SyncCache):
            sync_cache = cache

            @functools.wraps(fn)
            def call(*args: Any, **kwargs: Any) -> Any:
                return sync_cache.get_or_set(key_of(args, kwargs), lambda: fn(*args, **kwargs), ttl)

            def invalidate(*args: Any, **kwargs: Any) -> bool:
                return sync_cache.invalidate(key_of(args, kwargs))

            return _with_helpers(call, key_of, invalidate)

        async_cache = cache

        @functools.wraps(fn)
        async def acall(*args: Any, **kwargs: Any) -> Any:
            return await async_cache.get_or_set(
                key_of(args, kwargs), lambda: fn(*args, **kwargs), ttl
            )

        async def ainvalidate(*args: Any, **kwargs: Any) -> bool:
            return await async_cache.invalidate(key_of(args, kwargs))

        return _with_helpers(acall, key_of, ainvalidate)

    return decorate


KeyOf = Callable[[tuple[Any, ...], dict[str, Any]], str]


def _with_helpers(
    wrapper: Callable[..., Any], key_of: KeyOf, invalidate: Callable[..., Any]
) -> Callable[..., Any]:
    def key(*args: Any, **kwargs: Any) -> str:
        return key_of(args, kwargs)

    # Attributes on the function itself (not a callable object): the wrapper stays a
    # real function or coroutine function, which frameworks inspect.
    wrapper.key = key  # type: ignore[attr-defined]  # documented by the Protocols above
    wrapper.invalidate = invalidate  # type: ignore[attr-defined]  # likewise
    return wrapper


def _check_kind(fn: Callable[..., Any], name: str, *, is_async: bool) -> None:
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise ConfigError(f"cached() cannot cache {name}: a generator's result is an iterator")
    # An object with ``async def __call__`` is async too.
    fn_is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)
    if is_async and not fn_is_async:
        raise ConfigError(
            f"cached(Cache) decorates an async def, and {name} is a plain function: its "
            "wrapper would be a coroutine function its callers must await, and a miss "
            "would run it on the event loop. Make it async (blocking work can go "
            "through asyncio.to_thread), or use a SyncCache for threaded code."
        )
    if not is_async and fn_is_async:
        raise ConfigError(
            f"cached(SyncCache) decorates a plain def, and {name} is async: a SyncCache "
            "blocks the calling thread, so awaiting through it would stall your event "
            "loop. Use the async Cache in async code."
        )


def _key_builder(fn: Callable[..., Any], name: str, key: KeySpec) -> KeyOf:
    """How a call's arguments become its key (a template is checked now)."""
    if callable(key):
        key_fn = key

        def from_callable(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            built = key_fn(*args, **kwargs)
            if not isinstance(built, str):
                raise ConfigError(
                    f"the key callable of {name} returned {type(built).__name__}, not str"
                )
            return built

        return from_callable

    signature = inspect.signature(fn)
    var_keyword = next(
        (p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None
    )

    def arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        # A call that does not fit the signature raises the TypeError the function would.
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    if key is None:
        prefix = f"{getattr(fn, '__module__', None)}.{name}:"

        def from_reprs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            return prefix + ",".join(f"{k}={v!r}" for k, v in arguments(args, kwargs).items())

        return from_reprs

    template = key
    names = _template_names(template)
    unknown = [n for n in names if n not in signature.parameters]
    if unknown and var_keyword is None:
        raise ConfigError(
            f"key template {template!r} names {unknown[0]!r}, which is not an argument of "
            f"{name}{signature}"
        )

    def from_template(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        values = arguments(args, kwargs)
        if var_keyword is not None:
            values.update(values.pop(var_keyword, {}))
        missing = [n for n in names if n not in values]
        if missing:
            raise ConfigError(
                f"key template {template!r} needs argument {missing[0]!r}, which this call "
                f"of {name} did not pass"
            )
        try:
            return template.format_map(values)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"key template {template!r} cannot be formatted with the arguments of this "
                f"call of {name}: {type(exc).__name__}: {exc}"
            ) from exc

    return from_template


def _template_names(template: str) -> list[str]:
    """The argument names a template uses (``"{user.id}"`` uses ``user``)."""
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"key template {template!r} is not a format string: {exc}") from None
    names: list[str] = []
    for _, field, spec, _ in fields:
        if field is None:
            continue
        head = field.split(".", 1)[0].split("[", 1)[0]
        if not head.isidentifier():
            raise ConfigError(
                f"key template {template!r}: fields must name an argument "
                f"({{user_id}}, {{user.id}}), not {{{field}}}"
            )
        names.append(head)
        if spec and "{" in spec:
            names += _template_names(spec)  # a nested field: "{price:{width}}"
    return list(dict.fromkeys(names))
