import math

import pytest
import torch

from operators.radon import Radon
from operators.testing import check_adjoint as assert_adjoint


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def ellipses(size, dtype=torch.float64):
    """A small phantom: a disk with two ellipses inside, shape (1, 1, size, size)."""
    t = torch.linspace(-1, 1, size, dtype=dtype)
    y, x = torch.meshgrid(-t, t, indexing="ij")
    img = 1.0 * (x**2 + y**2 < 0.8**2)
    img = img - 0.5 * ((x - 0.2) ** 2 / 0.3**2 + y**2 / 0.5**2 < 1)
    img = img + 0.7 * ((x + 0.3) ** 2 / 0.15**2 + (y - 0.3) ** 2 / 0.2**2 < 1)
    return img[None, None]


OPERATORS = {
    "8-three-angles": lambda: Radon([0.0, 30.0, 125.0], 8),
    "9-odd": lambda: Radon(torch.linspace(0, 180, 7)[:-1], 9),
    "6-wide-detector": lambda: Radon(
        torch.tensor([10.0, 45.0, 90.0, 170.0]), 6, n_detectors=math.ceil(6 * 2**0.5)
    ),
    "5-few-detectors": lambda: Radon([0.0, 60.0, 200.0], 5, n_detectors=3),
}


@pytest.mark.parametrize("name", OPERATORS)
def test_adjoint(name):
    A = OPERATORS[name]()
    assert_adjoint(A)
    assert_adjoint(A.T, seed=5)


def test_adjoint_matrix_is_transpose():
    A = OPERATORS["9-odd"]()
    assert A.out_shape == (1, 6, 9)
    torch.testing.assert_close(A.T.to_matrix(), A.to_matrix().T, rtol=0, atol=1e-12)


def test_axis_aligned_projections_are_row_and_column_sums():
    x = randn(2, 1, 8, 8)
    y = Radon([0.0, 90.0], 8)(x)
    torch.testing.assert_close(y[:, 0, 0], x[:, 0].sum(-2))  # theta = 0: detector d sees column d
    torch.testing.assert_close(y[:, 0, 1], x[:, 0].sum(-1).flip(-1))  # theta = 90: row size - 1 - d


def test_centered_disk_is_angle_independent():
    size = 32
    A = Radon(torch.linspace(0, 180, 13)[:-1], size)
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) < 10**2).double()[None, None]
    y = A(disk)[0, 0]  # (angles, detectors)
    mean = y.mean(0)
    assert (y - mean).abs().max() < 0.05 * mean.max()
    torch.testing.assert_close(y.sum(1), disk.sum().expand(12), rtol=0.01, atol=0)  # mass at every angle


def test_fbp_reconstructs_phantom():
    size = 32
    A = Radon(torch.arange(0, 180, 3.0), size)
    x = ellipses(size)
    x_fbp = A.fbp(A(x))
    assert x_fbp.shape == x.shape
    err = (x_fbp - x).norm() / x.norm()
    assert err < 0.25
    assert abs(float(x_fbp.mean() / x.mean()) - 1) < 0.1


def test_float32_in_float32_out_and_differentiable():
    A = OPERATORS["8-three-angles"]()
    x = randn(2, 1, 8, 8, dtype=torch.float32).requires_grad_()
    y = A(x)
    assert (
        y.dtype == torch.float32 and A.adjoint(y).dtype == torch.float32 and A.fbp(y).dtype == torch.float32
    )
    (y**2).sum().backward()
    torch.testing.assert_close(x.grad, 2 * A.gram(x.detach()))


def test_errors():
    with pytest.raises(ValueError, match="angles"):
        Radon([], 8)
    with pytest.raises(ValueError, match="angles"):
        Radon([[0.0, 1.0]], 8)
    with pytest.raises(ValueError, match="size"):
        Radon([0.0], 0)
    with pytest.raises(ValueError, match="n_detectors"):
        Radon([0.0], 4, n_detectors=0)
    with pytest.raises(ValueError, match="x has shape"):
        Radon([0.0], 4)(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="y has shape"):
        Radon([0.0], 4).fbp(torch.zeros(1, 1, 2, 4))
