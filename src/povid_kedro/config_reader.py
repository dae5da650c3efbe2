"""The one strict reader behind every parameter dataclass's ``from_dict``.

A typo in a parameters file must fail at start-up with the group and the key named, not be
ignored; the field types are checked before a run by :mod:`povid_kedro.params`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

_C = TypeVar("_C")

#: ``check(value, key) -> value``: validates (and normalises) a given value, raising
#: ``ValueError`` that starts with ``key``.
Check = Callable[[Any, str], Any]


def checked(check: Check, **field_kwargs: Any) -> Any:
    """A dataclass field whose given value :func:`read_dataclass` passes through ``check``
    (a default is used as it is). ``field_kwargs`` go to :func:`dataclasses.field`."""
    return dataclasses.field(metadata={"check": check}, **field_kwargs)


def check_keys(
    values: Any, known: Collection[str], required: Collection[str], where: str
) -> Mapping[str, Any]:
    """``values``, if it is a mapping with only ``known`` keys and every ``required`` one.

    Raises:
        ValueError: Otherwise, naming ``where`` and the unknown or missing keys.
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys are {sorted(known)}")
    missing = [key for key in required if key not in values]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")
    return values


def read_dataclass(
    cls: type[_C],
    values: Mapping[str, Any] | None,
    where: str,
    nested: Mapping[str, Callable[[Any, str], Any]] | None = None,
) -> _C:
    """``cls(**values)``, refusing keys that are not fields of ``cls``, each given value passed
    through its field's :func:`checked` check.

    Args:
        cls: A dataclass.
        values: Its parameters (``None``: all defaults).
        where: The parameter group's dotted path, named in every error.
        nested: Field -> ``builder(value, "<where>.<field>")`` for a nested group given as a
            mapping (an already built dataclass is kept).

    Raises:
        ValueError: On an unknown key, a missing required one or a value its check refuses;
            the message starts with ``where``.
    """
    fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    required = [
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    values = dict(
        check_keys({} if values is None else values, [f.name for f in fields], required, where)
    )
    for f in fields:
        if "check" in f.metadata and f.name in values:
            values[f.name] = f.metadata["check"](values[f.name], f"{where}.{f.name}")
    for key, builder in (nested or {}).items():
        if key in values and not dataclasses.is_dataclass(values[key]):
            values[key] = builder(values[key], f"{where}.{key}")
    try:
        return cls(**values)
    except TypeError as err:  # a value of the wrong type met a comparison in __post_init__
        raise ValueError(f"{where}: {err}") from err
