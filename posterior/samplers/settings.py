"""A sampler's settings, checked when it is built: types from the dataclass annotations, ranges and choices
from a table.

Each sampler class declares ``limits``, a dict from a field name to a :class:`Range` or a tuple of the
allowed strings; the tables of the base classes apply too. :func:`check_settings` then refuses, with one
line naming the sampler, the field, its value and what was expected, an int field given a float or a bool,
a float that is not finite, a value outside its range or a string outside its choices. Numpy numbers are
turned into Python ones and ints given to float fields into floats, so that equal settings compare equal
(and a checkpoint's fingerprint does not depend on how a number was written).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing

import numpy


@dataclasses.dataclass(frozen=True)
class Range:
    """The interval a number must lie in; ``open_low`` / ``open_high`` exclude the ends."""

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"


POSITIVE = Range(0.0, open_low=True)
NON_NEGATIVE = Range(0.0)
FRACTION = Range(0.0, 1.0)
RHO = Range(0.1, 100.0)  # the EDM grid's exponent: sigma_max ** (1 / rho) stays finite in float32


def at_least(n: int) -> Range:
    return Range(n)


def check_settings(sampler) -> None:
    """Check (and normalise in place) every field of the dataclass ``sampler`` against its annotation and
    its class's ``limits``; raise ``TypeError`` or ``ValueError`` naming the first field that fails."""
    owner = type(sampler).__name__
    hints = typing.get_type_hints(type(sampler))
    limits = {}
    for cls in reversed(type(sampler).__mro__):
        limits.update(cls.__dict__.get("limits", {}))
    for field in dataclasses.fields(sampler):
        name, value = field.name, getattr(sampler, field.name)
        value = _typed(value, hints[field.name], f"{owner}: {name}")
        setattr(sampler, name, value)
        rule = limits.get(name)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if v is None or rule is None:
                continue
            if isinstance(rule, Range) and v not in rule:
                raise ValueError(f"{owner}: {name} must be {rule}, got {value!r}")
            if isinstance(rule, tuple) and v not in rule:
                raise ValueError(f"{owner}: {name} must be one of {', '.join(map(repr, rule))}, got {value!r}")


def _typed(value, hint, where: str):
    """``value`` as the annotation ``hint`` asks (int, float, bool, str, None, ``tuple[float, ...]`` and
    unions of them; other annotations accept anything), or ``TypeError``."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    members = typing.get_args(hint) if union else (hint,)
    checked = [m for m in members if m in (int, float, bool, str, type(None)) or typing.get_origin(m) is tuple]
    if len(checked) < len(members):
        return value
    for member in members:
        converted = _as(value, member)
        if converted is not _REFUSED:
            if isinstance(converted, float) and not math.isfinite(converted):
                raise ValueError(f"{where} must be finite, got {value!r}")
            if isinstance(converted, tuple) and not all(math.isfinite(v) for v in converted):
                raise ValueError(f"{where} must be finite, got {value!r}")
            return converted
    expected = " or ".join(_NAMES.get(m, "a tuple of floats") for m in members)
    raise TypeError(f"{where} must be {expected}, got {value!r} ({type(value).__name__})")


_REFUSED = object()
_NAMES = {int: "an int", float: "a float", bool: "a bool", str: "a string", type(None): "None"}


def _as(value, member):
    """``value`` converted to the annotation ``member``, or ``_REFUSED``."""
    if member is type(None):
        return None if value is None else _REFUSED
    if member is bool:
        return bool(value) if isinstance(value, bool | numpy.bool_) else _REFUSED
    if isinstance(value, bool | numpy.bool_):
        return _REFUSED  # a bool is not a number here
    if member is int:
        return int(value) if isinstance(value, numbers.Integral) else _REFUSED
    if member is float:
        return float(value) if isinstance(value, numbers.Real) else _REFUSED
    if member is str:
        return value if isinstance(value, str) else _REFUSED
    if isinstance(value, tuple | list) and value:  # tuple[float, ...]
        items = [_as(v, typing.get_args(member)[0]) for v in value]
        return _REFUSED if any(v is _REFUSED for v in items) else tuple(items)
    return _REFUSED
