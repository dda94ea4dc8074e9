"""One way to register: models, datasets, tasks and estimators each have a ``Registry``, filled by
the module that defines the thing (``register(name, item)`` at import), with the thing's
metadata on the registered item itself (a model's ``ModelInfo``, a dataset's or task's config
dataclass, an estimator's ``Spec``).

A config section is declared once, as a frozen dataclass whose field defaults are the section's
defaults and whose ``__post_init__`` checks the values, naming the field: ``section_dict(cls)``
gives the ml-collections section a config starts from, ``from_section(cls, section, where)``
turns a config's section back into the dataclass (unknown fields and bad values are one-line
errors naming ``where.field``), as big_vision passes ``**config.evals[name]`` to a constructor.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import ml_collections

T = TypeVar("T")


class Registry(Generic[T]):
    """Names of one kind (``'model'``, ``'dataset'``, ...) -> registered items."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        """Registers ``item`` as ``name`` (a second, different item of the same name is an error)."""
        if name in self._items and self._items[name] is not item and self._items[name] != item:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def __call__(self, name: str) -> Callable[[T], T]:
        """``@registry('name')``: the decorator form of ``register``."""
        return lambda item: self.register(name, item)

    def get(self, name: str) -> T:
        """The item ``name``; ValueError naming the valid names if there is none."""
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}")
        return self._items[name]

    __getitem__ = get

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


class SectionError(ValueError):
    """A config section's field has a bad value; the message names ``section.field``."""


def section_dict(cls: type, **overrides: Any) -> ml_collections.ConfigDict:
    """The config section of the dataclass ``cls``: its fields at their defaults (``overrides``
    replace some), as an ml-collections ConfigDict that the command line can override."""
    values = {f.name: _default(f) for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}")
    values.update(overrides)
    return ml_collections.ConfigDict(values)


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise ValueError(f"field {field.name!r} has no default")


def from_section(cls: type[T], section: Mapping[str, Any] | None, where: str, ignore: tuple[str, ...] = ()) -> T:
    """``cls(**section)``, with ints where the field is a float, lists as tuples, and every error
    (an unknown field, a wrong type, the dataclass's own checks, whose messages start with the
    field they name: ``'augment: ...'``) as one ``SectionError`` naming ``config.where.field``.
    Keys in ``ignore`` (e.g. the section's ``name``) are skipped."""
    values = dict(section.items()) if section is not None else {}
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields) - set(ignore))
    if unknown:
        raise SectionError(f"config.{where}.{unknown[0]}: not a field of this section; valid: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name in fields:
        if name not in values:
            continue
        value = values[name]
        value = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
        kwargs[name] = _coerce(value, hints.get(name, Any), f"{where}.{name}")
    try:
        return cls(**kwargs)
    except SectionError:
        raise
    except (TypeError, ValueError) as e:  # a check's message starts with the field it names ("field: ...")
        message = str(e)
        if message.startswith("config."):
            raise SectionError(message) from None
        field = message.split(":", 1)[0]
        raise SectionError(f"config.{where}.{message}" if field in fields else f"config.{where}: {message}") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the annotation ``hint`` (bool, int, float, str, tuples, optionals);
    an int where a float is wanted becomes a float, a list a tuple."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return _coerce(value, option, where)
            except SectionError as e:
                errors.append(e)
        raise errors[0]
    if hint is type(None):
        if value is None:
            return None
        raise SectionError(f"config.{where}: expected None, got {value!r}")
    if origin is tuple or hint is tuple:
        if not isinstance(value, list | tuple):
            raise SectionError(f"config.{where}: expected a tuple, got {value!r}")
        if args and args[-1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if args and len(args) != len(value):
            raise SectionError(f"config.{where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args or [Any] * len(value), strict=True))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise SectionError(f"config.{where}: expected {hint.__name__}, got {value!r}")
