"""Events: what a cache reports, an in-process event bus, and invalidation rules.

An :class:`InvalidationRule` turns an application event into an invalidation: a cache
given ``event_bus=`` and ``invalidation_rules=`` subscribes to the bus, and each event
matching a rule invalidates the key (or glob) rendered from the rule's template. The
invalidation is an ordinary replicated write, so an event emitted on one node removes
the keys on every node.
"""

from __future__ import annotations

import fnmatch
import inspect
import logging
import string
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from crdtcache._errors import ConfigError

__all__ = [
    "CHANGE_OPERATIONS",
    "EVENTS",
    "BusHandler",
    "CacheEvent",
    "ChangeEvent",
    "EventBus",
    "InvalidationRule",
]

log = logging.getLogger(__name__)

#: Names accepted by ``Cache.on``.
EVENTS: Final = (
    "hit",
    "miss",
    "set",
    "delete",
    "invalidate",
    "expire",
    "eviction",
    "peer_up",
    "peer_down",
)
CHANGE_OPERATIONS: Final = ("set", "delete", "invalidate", "expire")

BusHandler = Callable[[str, Any], Awaitable[None] | None]
_GLOB_CHARS: Final = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class CacheEvent:
    """What a ``Cache.on`` callback receives.

    ``name`` is the event; ``source`` ("local" or "distributed") is set for hits,
    ``reason`` ("ttl", "size", "memory", "explicit") for evictions, ``origin`` and
    ``remote`` for changes, ``pattern`` when a pattern invalidation caused one,
    ``peer`` and ``address`` for peer events.

    Examples:
        ```python
        import crdtcache

        async with crdtcache.Cache(backend="memory") as cache:
            seen = []
            cache.on("set", lambda event: seen.append((event.name, event.key, event.remote)))
            cache.on("miss", lambda event: seen.append((event.name, event.key)))
            await cache.set("k", 1)
            await cache.get("absent")
            assert seen == [("set", "k", False), ("miss", "absent")]
        ```
    """

    name: str
    key: str | None = None
    source: str | None = None
    reason: str | None = None
    origin: str | None = None
    remote: bool = False
    pattern: str | None = None
    peer: str | None = None
    address: str | None = None


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """What ``on_change`` receives: a key changed here or on a peer.

    ``operation`` is "set", "delete", "invalidate" or "expire"; ``origin`` is the node
    that made the write; ``remote`` is True when that is not this node; ``ts`` is the
    write's packed HLC stamp; ``pattern`` is set for a pattern invalidation.

    Examples:
        ```python
        import crdtcache

        changes = []
        async with crdtcache.Cache(backend="memory", on_change=changes.append) as cache:
            await cache.set("k", 1)
            await cache.invalidate_pattern("k*")
        assert [(c.key, c.operation, c.pattern) for c in changes] == [
            ("k", "set", None),
            ("k", "invalidate", "k*"),
        ]
        ```
    """

    key: str
    operation: str
    origin: str
    remote: bool
    ts: int
    pattern: str | None = None


class EventBus:
    """An in-process publish/subscribe bus; subscriptions may be globs (``"product:*"``).

    Handlers are called as ``handler(event, data)`` in subscription order and may be
    coroutine functions (awaited). A handler that raises is logged; the others still run.

    Examples:
        ```python
        import crdtcache

        bus = crdtcache.EventBus()
        received = []
        unsubscribe = bus.on("product:*", lambda event, data: received.append((event, data)))
        assert await bus.emit("product:updated", {"id": 3}) == 1
        unsubscribe()
        assert await bus.emit("product:updated", {"id": 4}) == 0
        assert received == [("product:updated", {"id": 3})]
        ```
    """

    def __init__(self) -> None:
        self._handlers: list[tuple[str, BusHandler]] = []

    def on(self, event: str, handler: BusHandler) -> Callable[[], None]:
        """Subscribe ``handler`` to ``event`` (a name or glob); returns an unsubscribe function."""
        if not isinstance(event, str) or not event:
            raise ConfigError("event must be a non-empty str (a name or a glob)")
        if not callable(handler):
            raise ConfigError("handler must be callable(event, data)")
        entry = (event, handler)
        self._handlers.append(entry)

        def unsubscribe() -> None:
            if entry in self._handlers:
                self._handlers.remove(entry)

        return unsubscribe

    async def emit(self, event: str, data: Any = None) -> int:
        """Call every handler subscribed to ``event``; returns how many were called."""
        called = 0
        for pattern, handler in list(self._handlers):
            if pattern != event and not fnmatch.fnmatchcase(event, pattern):
                continue
            called += 1
            try:
                result = handler(event, data)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("event handler %r for %r failed", handler, event)
        return called


def _escape(text: str) -> str:
    """Make ``text`` match itself literally inside a glob."""
    return "".join(f"[{c}]" if c in _GLOB_CHARS else c for c in text)


def _resolve(data: Any, path: str) -> Any:
    """Follow a dotted ``path`` through mappings (by key) and objects (by attribute)."""
    value = data
    for part in path.split("."):
        if isinstance(value, Mapping):
            if part not in value:
                raise LookupError(path)
            value = value[part]
        elif hasattr(value, part) and not part.startswith("_"):
            value = getattr(value, part)
        else:
            raise LookupError(path)
    return value


def _lookup(data: Any, name: str) -> Any:
    """``name`` in the payload, else under its ``data``; raises ``LookupError``."""
    try:
        return _resolve(data, name)
    except LookupError:
        pass
    try:
        return _resolve(_resolve(data, "data"), name)
    except LookupError:
        raise LookupError(f"event payload has no field {name!r}") from None


@dataclass(frozen=True, slots=True)
class InvalidationRule:
    """On ``event`` (a name or glob), invalidate ``pattern`` rendered from the payload.

    ``{field}`` and ``{data.id}`` in ``pattern`` are looked up in the event payload
    (mapping keys or attributes, dotted paths); a field not found at the top is also
    looked up under the payload's ``data``. Without glob characters in the template
    the result is one key (``invalidate``); with them (``"user:*"``, ``"user:{id}:*"``)
    it is a glob (``invalidate_pattern``), and field values are escaped so that an
    ``id`` of ``"*"`` matches only a literal ``*``.

    Give rules to a cache with ``event_bus=`` and ``invalidation_rules=``.

    Examples:
        >>> import crdtcache
        >>> rule = crdtcache.InvalidationRule(event="user:updated", pattern="user:{id}")
        >>> rule.render({"id": 7})
        'user:7'
        >>> crdtcache.InvalidationRule(event="team:*", pattern="team:{data.team}:*").render(
        ...     {"data": {"team": "blue"}}
        ... )
        'team:blue:*'
    """

    event: str
    pattern: str
    _parts: tuple[tuple[str, str | None, str, str | None], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for option in ("event", "pattern"):
            value = getattr(self, option)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"InvalidationRule.{option} must be a non-empty str")
        try:
            parts = tuple(string.Formatter().parse(self.pattern))
        except ValueError as exc:
            raise ConfigError(f"InvalidationRule pattern {self.pattern!r}: {exc}") from None
        for _, field_name, _, _ in parts:
            if field_name is not None and (not field_name or not all(field_name.split("."))):
                raise ConfigError(f"InvalidationRule pattern {self.pattern!r}: empty field")
        object.__setattr__(self, "_parts", parts)

    @property
    def is_glob(self) -> bool:
        """True when the template renders a glob rather than one key."""
        return any(_GLOB_CHARS.intersection(literal) for literal, *_ in self._parts)

    def matches(self, event: str) -> bool:
        """True if this rule applies to ``event``."""
        return event == self.event or fnmatch.fnmatchcase(event, self.event)

    def render(self, data: Any) -> str:
        """The key or glob to invalidate for payload ``data``.

        Raises ``LookupError`` naming a field the payload lacks.
        """
        glob = self.is_glob
        out: list[str] = []
        for literal, name, spec, conversion in self._parts:
            out.append(literal)
            if name is None:
                continue
            value = _lookup(data, name)
            if conversion == "r":
                value = repr(value)
            elif conversion == "a":
                value = ascii(value)
            text = format(value, spec or "")
            out.append(_escape(text) if glob else text)
        return "".join(out)
