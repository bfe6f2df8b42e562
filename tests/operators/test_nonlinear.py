import math

import pytest
import torch

from operators.nonlinear import PhaseRetrieval


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize(("shape", "oversampling"), [((1, 4, 4), 2.0), ((2, 3, 5), 1.5), ((1, 4, 3), 1.0)])
def test_gradcheck(shape, oversampling):
    A = PhaseRetrieval(shape, oversampling)
    x = randn(2, *shape).requires_grad_()
    assert torch.autograd.gradcheck(A, (x,))


@pytest.mark.parametrize(("shape", "oversampling"), [((1, 4, 4), 2.0), ((3, 5, 7), 1.5), ((2, 6, 3), 1.01)])
def test_shape_and_value(shape, oversampling):
    A = PhaseRetrieval(shape, oversampling)
    C, H, W = shape
    assert A.out_shape == (C, math.ceil(H * oversampling), math.ceil(W * oversampling))
    x = randn(2, *shape)
    y = A(x)
    assert y.shape == (2, *A.out_shape) and (y >= 0).all()
    padded = torch.zeros(2, *A.out_shape, dtype=torch.float64)
    padded[..., :H, :W] = x
    torch.testing.assert_close(y, torch.fft.fft2(padded, norm="ortho").abs(), rtol=0, atol=1e-11)
    torch.testing.assert_close(y.square().sum((1, 2, 3)), x.square().sum((1, 2, 3)))  # Parseval


def test_magnitude_ignores_sign_and_shift():
    A = PhaseRetrieval((1, 4, 4), 2.0)
    x = randn(1, 1, 4, 4)
    torch.testing.assert_close(A(-x), A(x))
    shifted = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    shifted[..., 1:, 1:] = x[..., :3, :3]
    small = torch.zeros_like(x)
    small[..., :3, :3] = x[..., :3, :3]
    torch.testing.assert_close(A(shifted), A(small))  # translation inside the zero padding


def test_gradient_finite_at_zero():
    A = PhaseRetrieval((1, 4, 4))
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    y = A(x)
    assert (y == 0).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    x32 = torch.zeros(1, 1, 4, 4, requires_grad=True)
    A(x32).sum().backward()
    assert torch.isfinite(x32.grad).all()


def test_float32_in_float32_out():
    y = PhaseRetrieval((2, 5, 5), 2.0)(randn(3, 2, 5, 5, dtype=torch.float32))
    assert y.dtype == torch.float32 and y.shape == (3, 2, 10, 10)


def test_errors():
    with pytest.raises(ValueError, match="oversampling"):
        PhaseRetrieval((1, 4, 4), 0.5)
    with pytest.raises(ValueError, match="shape"):
        PhaseRetrieval((4, 4))
    with pytest.raises(ValueError, match="x has shape"):
        PhaseRetrieval((1, 4, 4))(torch.zeros(1, 4, 4))
