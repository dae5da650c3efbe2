"""The one strict reader behind every parameter dataclass's ``from_dict``.

A typo in a parameters file must fail at start-up with the group and the key named, not be
ignored; the field types are checked before a run by :mod:`povid_kedro.params`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

_C = TypeVar("_C")


def read_dataclass(
    cls: type[_C],
    values: Mapping[str, Any] | None,
    where: str,
    nested: Mapping[str, Callable[[Any, str], Any]] | None = None,
) -> _C:
    """``cls(**values)``, refusing keys that are not fields of ``cls``.

    Args:
        cls: A dataclass.
        values: Its parameters (``None``: all defaults).
        where: The parameter group's dotted path, named in every error.
        nested: Field -> ``builder(value, "<where>.<field>")`` for a nested group given as a
            mapping (an already built dataclass is kept).

    Raises:
        ValueError: On an unknown key, or a missing required one; the message starts with
            ``where``.
    """
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys are {sorted(known)}")
    for key, builder in (nested or {}).items():
        if key in values and not dataclasses.is_dataclass(values[key]):
            values[key] = builder(values[key], f"{where}.{key}")
    try:
        return cls(**values)
    except TypeError as err:  # a required field is missing
        raise ValueError(f"{where}: {err}") from err
