"""A sampler's settings, checked when it is built: types from the dataclass annotations, ranges and choices
from a table.

Each sampler class declares ``limits``, a dict from a field name to a :class:`Range` or a tuple of the
allowed strings; the tables of the base classes apply too. :func:`check_settings` then refuses, with one
line naming the sampler, the field, its value and what was expected, an int field given a float or a bool,
a float that is not finite, a value outside its range or a string outside its choices (the rules of
:mod:`operators.checks`). Numpy numbers are turned into Python ones and ints given to float fields into
floats, so that equal settings compare equal (and a checkpoint's fingerprint does not depend on how a
number was written); :meth:`Sampler.sample` checks again, after any change to a field.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing

from operators.checks import as_bool, as_float, as_int, short


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
    unions of them, with the rules of :mod:`operators.checks`; other annotations accept anything):
    ``TypeError`` when it is none of them, ``ValueError`` for a float that is not finite."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    members = typing.get_args(hint) if union else (hint,)
    if not all(m in _NAMES or typing.get_origin(m) is tuple for m in members):
        return value
    for member in members:
        converted = _as(value, member, where)
        if converted is not _REFUSED:
            return converted
    expected = " or ".join(_NAMES.get(m, "a tuple of floats") for m in members)
    raise TypeError(f"{where} must be {expected}, got {short(value)} ({type(value).__name__})")


_REFUSED = object()
_NAMES = {int: "an int", float: "a float", bool: "a bool", str: "a string", type(None): "None"}
_CONVERT = {int: as_int, float: as_float, bool: as_bool}


def _as(value, member, where: str):
    """``value`` converted to the annotation ``member``, or ``_REFUSED`` if it is of another type."""
    if member is type(None) or member is str:
        return value if isinstance(value, member) else _REFUSED
    try:
        if member in _CONVERT:
            return _CONVERT[member](value, where)
    except TypeError:
        return _REFUSED
    if not isinstance(value, tuple | list) or not value:  # tuple[float, ...]
        return _REFUSED
    items = [_as(v, typing.get_args(member)[0], where) for v in value]
    return _REFUSED if any(v is _REFUSED for v in items) else tuple(items)
