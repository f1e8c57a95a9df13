"""Schemas: checking values before they are written, and turning them back into models.

A schema is a pydantic model class, a dataclass type or a ``pydantic.TypeAdapter``
(all handled through a ``TypeAdapter``; pydantic is an optional extra, imported only
for them), or any other callable validator. With an adapter, a value is validated,
stored as its JSON-mode dump (plain dicts and lists msgpack can carry) and validated
again on every read, so ``get`` returns a fresh model instance. A callable validator
rejects a value by raising or by returning ``False``; anything else it returns is
ignored and the value is stored as given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from crdtcache._errors import ConfigError, SerializationError, ValidationError
from crdtcache.core import decode_value, encode_value

__all__ = ["ValueCodec"]


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
    """Validates values against a schema and converts them to and from stored form."""

    __slots__ = ("adapter", "load", "name", "validator")

    def __init__(self, schema: object | None) -> None:
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
        #: Applied to each decoded value on read (None when values come back as stored).
        self.load: Callable[[Any], Any] | None = (
            self._revalidate if self.adapter is not None else None
        )

    def _revalidate(self, plain: Any) -> Any:
        # strict=False: the stored form is a JSON-mode dump (datetimes as strings).
        return self.adapter.validate_python(plain, strict=False)  # type: ignore[union-attr]  # load is set only with an adapter

    def dump(self, key: str, value: object) -> object:
        """The stored form of ``value``.

        Raises :class:`ValidationError` if the schema rejects it and
        :class:`SerializationError` if it cannot be carried.
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
        return encode_value(key, value)

    def _validate(self, key: str, value: object) -> None:
        try:
            verdict = self.validator(value)  # type: ignore[misc]  # only called with a validator
        except Exception as exc:
            raise ValidationError(f"value for {key!r} rejected by {self.name}: {exc}") from exc
        if verdict is False:
            raise ValidationError(f"value for {key!r} rejected by {self.name}")

    def read(self, stored: object) -> Any:
        """The value a caller gets for ``stored``: a fresh copy, a model with an adapter."""
        value = decode_value(stored)
        return value if self.load is None else self.load(value)

    def check(self, key: str, stored: object) -> None:
        """Raise :class:`ValidationError` if a stored value (from a peer) fails the schema."""
        if self.adapter is not None:
            try:
                self.read(stored)
            except Exception as exc:
                raise ValidationError(
                    f"value for {key!r} does not match {self.name}: {exc}"
                ) from exc
        elif self.validator is not None:
            self._validate(key, decode_value(stored))
