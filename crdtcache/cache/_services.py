"""Services a cache runs beside itself (the dashboard), plugged in from above.

The dashboard sits above the cache layer: it reads a cache through its read-only
:class:`~crdtcache.cache._view.CacheView`. So that ``Cache(dashboard="host:port")``
still works without the cache importing it, the dashboard package registers itself
here (:func:`register_service`) when it is imported, which the package root does.
The option is checked when the cache is built (a bad address or a missing extra
fails at construction) and the service started with the cache.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from crdtcache._errors import ConfigError

if TYPE_CHECKING:
    from crdtcache.cache._options import CacheOptions
    from crdtcache.cache._view import CacheView

__all__ = ["Service", "ServiceStarter", "prepare_services", "register_service"]


class Service(Protocol):
    """Something that runs with a cache and stops before it."""

    async def close(self) -> None:
        """Stop serving; idempotent."""
        ...


#: Starts a prepared service for a started cache.
ServiceStarter = Callable[["CacheView"], Awaitable[Service]]
#: Checks an option's value (raising ConfigError) and returns how to start the service.
ServicePreparer = Callable[[str, "bytes | Sequence[bytes] | None"], ServiceStarter]

_PREPARERS: dict[str, ServicePreparer] = {}


def register_service(option: str, prepare: ServicePreparer) -> None:
    """Make the cache option ``option`` (a ``host:port``) start a service."""
    _PREPARERS[option] = prepare


def prepare_services(options: CacheOptions) -> list[ServiceStarter]:
    """The services ``options`` ask for, checked; raises :class:`ConfigError`."""
    starters: list[ServiceStarter] = []
    if options.dashboard is not None:
        prepare = _PREPARERS.get("dashboard")
        if prepare is None:  # pragma: no cover - the package root imports the dashboard
            raise ConfigError("dashboard= needs crdtcache.dashboard (import it first)")
        starters.append(prepare(options.dashboard, options.secret))
    return starters
