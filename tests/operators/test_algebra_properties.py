"""Property-based tests of the operator algebra: every expression built from linear operators by
composition, sum, difference, scaling and transposition passes the adjoint test and equals the same
expression of dense matrices."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import operators as ops

SIZES = st.integers(1, 5)


@st.composite
def expressions(draw, depth=3):
    """``(operator, its dense matrix)`` for a random expression with input size ``d``."""
    seed = draw(st.integers(0, 2**31))
    g = torch.Generator().manual_seed(seed)

    def leaf(rows, cols):
        M = torch.randn(rows, cols, generator=g, dtype=torch.float64)
        return ops.Matrix(M), M

    def build(rows, cols, level):
        kind = draw(st.sampled_from(["leaf", "compose", "sum", "difference", "scale", "transpose"]))
        if level == 0 or kind == "leaf":
            return leaf(rows, cols)
        if kind == "compose":
            middle = draw(SIZES)
            (A, a), (B, b) = build(rows, middle, level - 1), build(middle, cols, level - 1)
            return A @ B, a @ b
        if kind in ("sum", "difference"):
            (A, a), (B, b) = build(rows, cols, level - 1), build(rows, cols, level - 1)
            return (A + B, a + b) if kind == "sum" else (A - B, a - b)
        if kind == "scale":
            c = draw(st.floats(-3, 3))
            A, a = build(rows, cols, level - 1)
            return c * A, c * a
        A, a = build(cols, rows, level - 1)
        return A.T, a.T

    return build(draw(SIZES), draw(SIZES), depth)


@settings(max_examples=60, deadline=None)
@given(expressions(), st.integers(0, 2**31))
def test_expressions_pass_the_adjoint_test_and_match_their_matrices(expression, seed):
    A, M = expression
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, M.shape[1], generator=g, dtype=torch.float64)
    y = torch.randn(3, M.shape[0], generator=g, dtype=torch.float64)
    assert torch.allclose(A(x), x @ M.T)
    assert torch.allclose((A(x) * y).sum(1), (x * A.adjoint(y)).sum(1))
    assert torch.allclose(A.to_matrix(), M)


def test_the_adjoint_test_rejects_a_wrong_adjoint():
    """The check above can fail: a composition with one factor's adjoint off by a factor 2 breaks it."""

    class Doubled(ops.Matrix):
        def adjoint(self, y):
            return 2 * super().adjoint(y)

    g = torch.Generator().manual_seed(0)
    A = ops.Matrix(torch.randn(3, 4, generator=g, dtype=torch.float64)) @ Doubled(
        torch.randn(4, 2, generator=g, dtype=torch.float64)
    )
    x, y = (
        torch.randn(1, 2, generator=g, dtype=torch.float64),
        torch.randn(1, 3, generator=g, dtype=torch.float64),
    )
    assert not torch.allclose((A(x) * y).sum(1), (x * A.adjoint(y)).sum(1))
