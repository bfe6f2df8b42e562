"""The adjoint test for linear operators, for the test suite and for users writing their own."""

from __future__ import annotations

import torch

from operators.base import LinearOperator


def adjoint_gap(A: LinearOperator, n: int = 3, seed: int = 0) -> float:
    """Relative gap ``|<A x, y> - <x, A^T y>| / (||A x|| ||y||)`` on random float64 inputs.

    The denominator is the Cauchy-Schwarz bound of either inner product, so the gap is scale-free;
    a correct adjoint gives rounding error (~1e-15).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *A.in_shape, generator=g, dtype=torch.float64)
    y = torch.randn(n, *A.out_shape, generator=g, dtype=torch.float64)
    Ax, ATy = A(x), A.adjoint(y)
    if Ax.shape != (n, *A.out_shape) or ATy.shape != (n, *A.in_shape):
        raise AssertionError(
            f"A(x) has shape {tuple(Ax.shape)} and A^T(y) {tuple(ATy.shape)}; expected "
            f"{(n, *A.out_shape)} and {(n, *A.in_shape)}"
        )
    return float(((Ax * y).sum() - (x * ATy).sum()).abs() / (Ax.norm() * y.norm()))


def check_adjoint(A: LinearOperator, n: int = 3, seed: int = 0, rtol: float = 1e-8) -> None:
    """Raise ``AssertionError`` unless ``A.adjoint`` is the adjoint of ``A`` to ``rtol`` (see :func:`adjoint_gap`)."""
    gap = adjoint_gap(A, n, seed)
    if not gap <= rtol:
        raise AssertionError(f"{A!r}: adjoint test failed, relative gap {gap:.3g} > {rtol:g}")
