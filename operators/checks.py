"""Argument checks shared by the public constructors of ``operators`` and ``posterior``.

Each helper returns the argument in canonical form or raises naming the argument, its value and
what was expected: ``TypeError`` for a wrong type, ``ValueError`` for a wrong value. Integers are
anything ``operator.index`` accepts (Python and NumPy ints, integer 0-d tensors) except bools;
floats are finite real numbers (bools and complex numbers refused).
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

Shape = tuple[int, ...]

_COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def short(value: object) -> str:
    """A short description of ``value`` for error messages (small tensors by value, others by shape)."""
    if isinstance(value, Tensor):
        if 0 < value.numel() <= 6 and value.device.type != "meta":
            return f"tensor({value.tolist()})"
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_bool(value: object) -> bool:
    return type(value).__name__ in ("bool", "bool_") or (
        isinstance(value, Tensor) and value.dtype == torch.bool
    )


def as_int(value: object, name: str, *, minimum: int | None = None, maximum: int = 2**63 - 1) -> int:
    """``value`` as an ``int`` (not a bool), at least ``minimum`` when given and at most ``maximum``
    (default: what a 64-bit signed integer holds, as torch needs)."""
    try:
        if _is_bool(value):
            raise TypeError
        result = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {short(value)} ({type(value).__name__})") from None
    if minimum is not None and result < minimum:
        wanted = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {wanted}, got {result}")
    if result > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {result}")
    return result


def as_seed(value: object, name: str = "seed") -> int:
    """``value`` as a seed of ``torch.Generator.manual_seed``: an int in ``[0, 2**64)``."""
    return as_int(value, name, minimum=0, maximum=2**64 - 1)


def as_float(
    value: object,
    name: str,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> float:
    """``value`` as a finite ``float`` within the given bounds (``gt``: >, ``ge``: >=, ``lt``: <, ``le``: <=)."""
    real_tensor = isinstance(value, Tensor) and value.numel() == 1 and not value.is_complex()
    if _is_bool(value) or not (isinstance(value, numbers.Real) or real_tensor):
        raise TypeError(f"{name} must be a real number, got {short(value)} ({type(value).__name__})")
    result = float(value)
    bounds = [
        (op, bound) for op, bound in ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if bound is not None
    ]
    if not math.isfinite(result) or not all(_COMPARE[op](result, bound) for op, bound in bounds):
        wanted = "".join(f" {'and ' if i else ''}{op} {bound:g}" for i, (op, bound) in enumerate(bounds))
        raise ValueError(f"{name} must be a finite number{wanted}, got {short(value)}")
    return result


def check_less(low: float, high: float, low_name: str, high_name: str) -> None:
    """Raise a ``ValueError`` unless ``low < high``."""
    if not low < high:
        raise ValueError(f"need {low_name} < {high_name}, got {low_name}={low:g}, {high_name}={high:g}")


def as_bool(value: object, name: str) -> bool:
    """``value`` as a ``bool`` (Python or NumPy bool only)."""
    if not _is_bool(value) or isinstance(value, Tensor):
        raise TypeError(f"{name} must be True or False, got {short(value)} ({type(value).__name__})")
    return bool(value)


def as_shape(shape: int | Sequence[int], name: str) -> Shape:
    """``shape`` as a non-empty tuple of positive ints (an int ``d`` means ``(d,)``)."""
    expected = f"{name} must be a non-empty tuple of positive ints, got {short(shape)}"
    items = shape if isinstance(shape, Iterable) and not isinstance(shape, str | bytes) else (shape,)
    try:
        if any(_is_bool(s) for s in items):
            raise TypeError
        result = tuple(operator.index(s) for s in items)
    except TypeError:
        raise TypeError(expected) from None
    if not result or any(s <= 0 for s in result):
        raise ValueError(expected)
    return result


def positive_tensor(value: float | Tensor, name: str) -> Tensor:
    """``value`` as a non-empty real tensor with every entry finite and > 0.

    Python numbers become float64 scalars; integer tensors the default floating dtype.
    """
    if _is_bool(value) or isinstance(value, str | complex):
        raise TypeError(
            f"{name} must be a real number or tensor, got {short(value)} ({type(value).__name__})"
        )
    if isinstance(value, int | float):
        t = torch.tensor(float(value), dtype=torch.float64)
    else:
        try:
            t = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a real number or tensor, got {short(value)}") from None
    if t.is_complex() or not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must be a real number or tensor, got dtype {t.dtype}")
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if t.numel() == 0:
        raise ValueError(f"{name} must be finite and > 0, got an empty tensor of shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite and > 0, got {short(value)}, which contains NaN or inf")
    if bool((t <= 0).any()):
        raise ValueError(f"{name} must be finite and > 0, got {short(value)} with min {float(t.min()):g}")
    return t


def check_broadcast(param: Tensor, shape: Shape, name: str, target: str = "operator.out_shape") -> None:
    """Raise a ``ValueError`` unless ``param`` broadcasts to ``shape`` without enlarging it."""
    try:
        ok = torch.broadcast_shapes(tuple(param.shape), tuple(shape)) == tuple(shape)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name} has shape {tuple(param.shape)}, which does not broadcast to {target} {tuple(shape)}"
        )
