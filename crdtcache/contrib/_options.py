"""Cache options from a framework's settings: a location, and options as text or values.

The frameworks name a cache by a location (Django's ``LOCATION``, a ``crdtcache://``
URL's host) and pass options as a mapping, from settings (values) or from a URL's
query (text). :func:`cache_options` turns both into keyword arguments of
:class:`~crdtcache.Cache`: the location is a backend name (``memory``, ``p2p``,
``redis``) or a Redis URL, and text is converted to the type each option is declared
with in :class:`~crdtcache.cache._options.CacheOptions` (numbers, booleans, lists as
comma-separated text, bytes as UTF-8). Unknown options raise :class:`ConfigError`
naming the known ones; the cache's own checks do the rest.
"""

from __future__ import annotations

import dataclasses
import typing
from collections import abc
from collections.abc import Mapping
from typing import Any, Final

from crdtcache._errors import ConfigError
from crdtcache.cache._options import BACKENDS, CacheOptions

__all__ = ["OPTION_NAMES", "cache_options"]

#: Options a framework may pass (the private testing hooks are not among them).
OPTION_NAMES: Final = frozenset(
    f.name for f in dataclasses.fields(CacheOptions) if not f.name.startswith("_")
)
_REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")
_TRUE: Final = ("1", "true", "yes", "on")
_FALSE: Final = ("0", "false", "no", "off")


def cache_options(location: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :class:`~crdtcache.Cache` for ``location`` and ``options``.

    Raises :class:`ConfigError` for an unknown location or option, or text that does
    not convert to the option's type.
    """
    out: dict[str, Any] = {}
    if location.startswith(_REDIS_SCHEMES):
        out["backend"], out["redis_url"] = "redis", location
    elif location in BACKENDS:
        out["backend"] = location
    else:
        raise ConfigError(
            f"the location must be one of {', '.join(BACKENDS)} or a redis:// URL, not {location!r}"
        )
    hints = typing.get_type_hints(CacheOptions)
    for name, value in options.items():
        if name not in OPTION_NAMES:
            known = ", ".join(sorted(OPTION_NAMES))
            raise ConfigError(f"unknown crdtcache option {name!r}; the options are {known}")
        out[name] = _converted(name, value, hints[name]) if isinstance(value, str) else value
    return out


def _converted(name: str, text: str, hint: Any) -> Any:
    """``text`` as the type ``hint`` declares (see the module doc)."""
    if typing.get_origin(hint) is abc.Sequence:  # seeds: "host:port,host:port"
        return tuple(item.strip() for item in text.split(",") if item.strip())
    types = set(typing.get_args(hint)) or {hint}
    if type(None) in types and text.lower() in ("", "none", "null"):
        return None
    if bool in types and text.lower() in _TRUE + _FALSE:
        return text.lower() in _TRUE
    if bytes in types:  # secret
        return text.encode()
    try:
        if int in types and float not in types:
            return int(text)
        if float in types:
            return float(text)
    except ValueError:
        raise ConfigError(f"option {name}: {text!r} is not a number") from None
    return text
