"""From a caller's value to what the replica stores, and back: schema, serializer, format.

A write takes up to three steps, in this order:

1. ``schema=``: a pydantic model class, a dataclass type or a ``pydantic.TypeAdapter``
   (all handled through a ``TypeAdapter``; pydantic is an optional extra, imported
   only for them) validates the value and dumps it in JSON mode (plain dicts and
   lists); any other callable validator rejects a value by raising or by returning
   ``False`` (anything else it returns is ignored and the value goes on as given).
2. ``serializer=``: with the default ``"msgpack"`` nothing happens here: the value
   format itself carries the types of :mod:`crdtcache.core._packing` (datetime,
   UUID, Decimal, tuple, set...). ``"pickle"`` or a ``(dumps, loads)`` pair turns the
   value (the schema's dump, if any) into bytes, which are stored and replicated as
   an opaque ``bytes`` value: peers, snapshots, the store and Redis never look
   inside. ``"pickle"`` is only accepted where no untrusted party can write (see
   :data:`~crdtcache.cache._options.PICKLE_RISK`).
3. :func:`~crdtcache.core.encode_value`: the stored form, checked against
   ``max_value_bytes``.

A read undoes them in reverse: a fresh copy of the stored value, ``loads``, then the
adapter's validation (so ``get`` returns a new model instance). A counter
(``incr``/``decr``) is an int whatever the serializer: it is never serialized, so
``loads`` is not applied to an int (a serializer's output is always bytes); the
schema is. For the same reason a plain int is stored as it is under any
serializer: ``incr`` counts from a value ``set`` wrote (in redis mode Redis reads
it itself), as Django's Redis backend does. A value written by
another node is checked when it arrives (:meth:`ValueCodec.check`): this node's
``max_key_chars`` and ``max_value_bytes`` (when lowered below the defaults, which
the record readers apply), bytes when a serializer is set, and the schema; a value
that fails is not held here (see :class:`~crdtcache.cache._tier.LocalTier`).
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable
from typing import Any, Final

from crdtcache._errors import ConfigError, SerializationError, ValidationError
from crdtcache.core import (
    DEFAULT_MAX_VALUE_BYTES,
    MAX_KEY_CHARS,
    decode_value,
    encode_value,
)
from crdtcache.core._counter import Counter
from crdtcache.core._values import value_bytes

__all__ = ["PICKLE_PROTOCOL", "ValueCodec"]

#: Pickle protocol of ``serializer="pickle"``: fixed, so that nodes on different Python
#: versions read each other's values.
PICKLE_PROTOCOL: Final = 5


def _pickle_dumps(value: object) -> bytes:
    return pickle.dumps(value, protocol=PICKLE_PROTOCOL)


_NAMED: Final[dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]]] = {
    "pickle": (_pickle_dumps, pickle.loads),
}


def _adapter(schema: object) -> Any | None:
    """A pydantic TypeAdapter for ``schema`` if it is a model, dataclass or adapter."""
    is_class = isinstance(schema, type)
    if not is_class and not type(schema).__module__.startswith("pydantic"):
        return None
    try:
        import pydantic
    except ImportError:
        if is_class and dataclasses.is_dataclass(schema):
            raise ConfigError(
                "schema=<dataclass> needs pydantic: pip install 'crdtcache[pydantic]'"
            ) from None
        return None
    if isinstance(schema, pydantic.TypeAdapter):
        return schema
    if is_class and (
        issubclass(schema, pydantic.BaseModel)  # type: ignore[arg-type]  # is_class checked
        or dataclasses.is_dataclass(schema)
    ):
        return pydantic.TypeAdapter(schema)  # type: ignore[arg-type]  # a model or dataclass type
    return None


class ValueCodec:
    """Validates, serializes and encodes values, and turns stored ones back (module doc).

    ``serializer`` is ``"msgpack"`` (the built-in format), ``"pickle"`` or a
    ``(dumps, loads)`` pair, as checked by the cache's options.
    """

    __slots__ = (
        "adapter",
        "dumps",
        "load",
        "loads",
        "max_key_chars",
        "max_value_bytes",
        "name",
        "serializer_name",
        "validator",
    )

    def __init__(
        self,
        schema: object | None = None,
        serializer: object = "msgpack",
        *,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        max_key_chars: int = MAX_KEY_CHARS,
    ) -> None:
        self.adapter = _adapter(schema) if schema is not None else None
        self.validator: Callable[[Any], Any] | None = None
        if schema is not None and self.adapter is None:
            if not callable(schema):
                raise ConfigError(
                    "schema must be a pydantic model, dataclass or TypeAdapter, or a "
                    f"callable validator; got {type(schema).__name__}"
                )
            self.validator = schema
        self.name = getattr(schema, "__name__", type(schema).__name__)
        self.max_value_bytes = max_value_bytes
        self.max_key_chars = max_key_chars
        self.dumps: Callable[[Any], Any] | None = None
        self.loads: Callable[[bytes], Any] | None = None
        self.serializer_name = "msgpack"
        if isinstance(serializer, str) and serializer in _NAMED:
            self.dumps, self.loads = _NAMED[serializer]
            self.serializer_name = serializer
        elif isinstance(serializer, tuple):
            self.dumps, self.loads = serializer
            self.serializer_name = getattr(self.dumps, "__qualname__", repr(self.dumps))
        #: Applied to each decoded value on read (None when values come back as stored).
        self.load: Callable[[Any], Any] | None = self._loader()

    def _loader(self) -> Callable[[Any], Any] | None:
        loads, adapter = self.loads, self.adapter
        if adapter is None:
            return loads
        if loads is None:
            return self._revalidate
        revalidate = self._revalidate
        return lambda stored: revalidate(loads(stored))

    def _revalidate(self, plain: Any) -> Any:
        # strict=False: the stored form is a JSON-mode dump (datetimes as strings).
        return self.adapter.validate_python(plain, strict=False)  # type: ignore[union-attr]  # called only with an adapter

    @property
    def checks_remote(self) -> bool:
        """Whether values from peers need :meth:`check` before this node holds them."""
        return (
            self.adapter is not None
            or self.validator is not None
            or self.loads is not None
            or self.max_value_bytes < DEFAULT_MAX_VALUE_BYTES
            or self.max_key_chars < MAX_KEY_CHARS
        )

    def dump(self, key: str, value: object) -> object:
        """The stored form of ``value``.

        Raises :class:`ValidationError` if the schema rejects it and
        :class:`SerializationError` if it cannot be carried (naming the ways out).
        """
        if self.adapter is not None:
            try:
                validated = self.adapter.validate_python(value)
            except Exception as exc:
                raise ValidationError(
                    f"value for {key!r} does not match {self.name}: {exc}"
                ) from exc
            try:
                value = self.adapter.dump_python(validated, mode="json")
            except Exception as exc:
                raise SerializationError(
                    f"value for {key!r} cannot be dumped by {self.name}: {exc}"
                ) from exc
        elif self.validator is not None:
            self._validate(key, value)
        if self.dumps is not None and type(value) is not int:
            # An int is never serialized, so that incr/decr can count from it (in
            # redis mode Redis itself reads it), as Django's Redis backend does.
            value = self._serialize(key, value)
        return encode_value(key, value, self.max_value_bytes)

    def _serialize(self, key: str, value: object) -> bytes:
        try:
            blob = self.dumps(value)  # type: ignore[misc]  # called only with a serializer
        except Exception as exc:  # the serializer's own errors, whatever their type
            raise SerializationError(
                f"value for {key!r} cannot be serialized by {self.serializer_name}: {exc}"
            ) from exc
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise SerializationError(
                f"serializer {self.serializer_name} returned {type(blob).__name__}, not bytes"
            )
        return bytes(blob)

    def _validate(self, key: str, value: object) -> None:
        try:
            verdict = self.validator(value)  # type: ignore[misc]  # only called with a validator
        except Exception as exc:
            raise ValidationError(f"value for {key!r} rejected by {self.name}: {exc}") from exc
        if verdict is False:
            raise ValidationError(f"value for {key!r} rejected by {self.name}")

    def read(self, stored: object) -> Any:
        """The value a caller gets for ``stored``: a fresh copy, loaded, revalidated."""
        value = decode_value(stored)
        if self.load is None:
            return value
        if self.loads is not None and type(value) is int:  # a counter: never serialized
            return value if self.adapter is None else self._revalidate(value)
        return self.load(value)

    def as_int(self, stored: object) -> int:
        """The int a counter starts from: the value of ``stored``, if it reads as an int.

        Raises :class:`ValidationError` for any other value (a bool too).
        """
        value = self.read(stored)
        if type(value) is not int:
            raise ValidationError(
                f"the value is {type(value).__name__}, not int: incr and decr need an int"
            )
        return value

    def check(self, key: str, stored: object) -> None:
        """Raise if a stored value from a peer must not be held here (see the module doc).

        :class:`SerializationError` for a key or value over this node's limits or a
        value that is not bytes under a serializer; :class:`ValidationError` for one
        the schema refuses.
        """
        if len(key) > self.max_key_chars:
            raise SerializationError(
                f"key of {len(key)} characters exceeds max_key_chars ({self.max_key_chars})"
            )
        size = value_bytes(stored)
        if size > self.max_value_bytes:
            raise SerializationError(
                f"value for {key!r} exceeds {self.max_value_bytes} bytes (max_value_bytes): "
                f"it takes {size}"
            )
        if self.loads is not None and type(stored) not in (bytes, int, Counter):
            raise SerializationError(
                f"value for {key!r} is {type(stored).__name__}, not the bytes of "
                f"serializer {self.serializer_name} (is every node configured alike?)"
            )
        # A serializer's loads alone is not run here: that would double its cost for
        # every value received, and a value it cannot load is dropped on first read.
        if self.adapter is not None:
            try:
                self.read(stored)
            except Exception as exc:
                raise ValidationError(
                    f"value for {key!r} does not match {self.name}: {exc}"
                ) from exc
        elif self.validator is not None:
            try:
                plain = self.read(stored)
            except Exception as exc:
                raise ValidationError(f"value for {key!r} cannot be read: {exc}") from exc
            self._validate(key, plain)
