import pytest
import torch

import operators as ops
from operators.base import LinearOperator
from operators.testing import adjoint_gap


def random_matrix(m, d, seed=0):
    return torch.randn(m, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ops.Identity((2, 3)),
        lambda: ops.Matrix(random_matrix(3, 5)),
        lambda: ops.Matrix(random_matrix(6, 16), in_shape=(1, 4, 4), out_shape=(2, 3)),
        lambda: ops.Matrix(random_matrix(4, 5)) @ ops.Matrix(random_matrix(5, 7, 1)),
        lambda: ops.Matrix(random_matrix(4, 5)) + 2.5 * ops.Matrix(random_matrix(4, 5, 1)),
        lambda: ops.Matrix(random_matrix(4, 5)) - ops.Matrix(random_matrix(4, 5, 1)) * 0.5,
        lambda: -ops.Matrix(random_matrix(4, 5)),
        lambda: ops.Matrix(random_matrix(4, 5)).T,
        lambda: (ops.Matrix(random_matrix(4, 5)) @ ops.Matrix(random_matrix(5, 3, 1))).T,
    ],
)
def test_adjoint(make):
    A = make()
    assert adjoint_gap(A) < 1e-8
    assert adjoint_gap(A.T) < 1e-8


def test_transpose_of_transpose_is_operator():
    A = ops.Matrix(random_matrix(3, 4))
    assert A.T.T is A


def test_to_matrix_and_gram():
    M = random_matrix(3, 5)
    A = ops.Matrix(M) @ ops.Identity(5)
    torch.testing.assert_close(A.to_matrix(), M)
    x = torch.randn(2, 5, dtype=torch.float64)
    torch.testing.assert_close(A.gram(x), x @ M.T @ M)


@pytest.mark.parametrize("shape", [(3, 5), (5, 3), (4, 4)])
def test_svd_reconstructs(shape):
    A = ops.Matrix(random_matrix(*shape))
    svd = A.svd()
    x = torch.randn(4, shape[1], dtype=torch.float64)
    torch.testing.assert_close(svd.u(svd.s * svd.vt(x)), A(x))
    # generic (dense) SVD of a composed operator
    B = A @ ops.Identity(shape[1])
    svd_b = B.svd()
    torch.testing.assert_close(svd_b.u(svd_b.s * svd_b.vt(x)), A(x))
    # orthonormal columns
    z = torch.eye(len(svd.s), dtype=torch.float64)
    torch.testing.assert_close(svd.vt(svd.v(z)), z)
    torch.testing.assert_close(svd.ut(svd.u(z)), z)


def test_pinv_closed_form_and_cg_agree_with_lstsq():
    M = random_matrix(3, 6)
    y = torch.randn(2, 3, dtype=torch.float64)
    ref = (torch.linalg.pinv(M) @ y.T).T
    torch.testing.assert_close(ops.Matrix(M).pinv(y), ref)
    composed = ops.Matrix(M) @ ops.Identity(6)  # falls back to conjugate gradients
    torch.testing.assert_close(composed.pinv(y), ref, atol=1e-8, rtol=1e-6)


def test_function_operator_gradcheck_and_shapes():
    W = random_matrix(4, 3)
    f = ops.Operator.from_function(lambda x: torch.tanh(x @ W.T) ** 2, in_shape=(3,))
    assert f.out_shape == (4,)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x,))


def test_function_wrong_output_shape():
    f = ops.Function(lambda x: x.sum(1, keepdim=True), in_shape=(3,), out_shape=(2,))
    with pytest.raises(ValueError, match="fn returned shape"):
        f(torch.zeros(1, 3))


def test_nonlinear_composition():
    A = ops.Matrix(random_matrix(2, 3))
    f = ops.Function(torch.exp, in_shape=(2,))
    comp = f @ A
    assert not isinstance(comp, LinearOperator)
    x = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(comp(x), torch.exp(A(x)))


def test_shape_errors():
    A = ops.Matrix(random_matrix(3, 4))
    with pytest.raises(ValueError, match=r"x has shape \(2, 5\)"):
        A(torch.zeros(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="cannot compose"):
        A @ ops.Identity(3)
    with pytest.raises(ValueError, match="cannot add"):
        A + ops.Identity(4)
    with pytest.raises(ValueError, match="matrix"):
        ops.Matrix(torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        ops.Matrix(torch.tensor([[float("nan")]]))


def test_float32_in_float32_out():
    A = ops.Matrix(random_matrix(3, 4))  # float64 buffer, cast to the input's dtype
    assert A(torch.zeros(2, 4)).dtype == torch.float32


def test_check_adjoint_catches_a_wrong_adjoint():
    class WrongAdjoint(ops.Matrix):
        def adjoint(self, y):
            return 1.01 * super().adjoint(y)

    A = WrongAdjoint(random_matrix(3, 4))
    with pytest.raises(AssertionError, match="adjoint test failed"):
        ops.check_adjoint(A)
    ops.check_adjoint(ops.Matrix(random_matrix(3, 4)))
