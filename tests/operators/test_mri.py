import pytest
import torch

from operators.mri import MRI, birdcage_maps
from operators.testing import check_adjoint as assert_adjoint


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def random_mask(H, W, p=0.4, seed=0):
    return torch.rand(H, W, generator=torch.Generator().manual_seed(seed)) < p


OPERATORS = {
    "single-8x8": lambda: MRI(MRI.cartesian_mask((8, 8), acceleration=2, center_fraction=0.25, seed=0)),
    "single-random-6x9": lambda: MRI(random_mask(6, 9)),
    "single-full-5x4": lambda: MRI(torch.ones(5, 4, dtype=torch.bool)),
    "multi-4-8x8": lambda: MRI(random_mask(8, 8, seed=1), coils=birdcage_maps(4, 8, 8)),
    "multi-3-7x6-raw": lambda: MRI(random_mask(7, 6, seed=2), coils=birdcage_maps(3, 7, 6, normalize=False)),
    "multi-random-maps": lambda: MRI(
        random_mask(6, 6, seed=3), coils=torch.complex(randn(2, 6, 6, seed=4), randn(2, 6, 6, seed=5))
    ),
}


@pytest.mark.parametrize("name", OPERATORS)
def test_adjoint(name):
    A = OPERATORS[name]()
    assert_adjoint(A)
    assert_adjoint(A.T, seed=5)


def test_adjoint_matrix_is_transpose():
    A = OPERATORS["multi-4-8x8"]()
    torch.testing.assert_close(A.T.to_matrix(), A.to_matrix().T, rtol=0, atol=1e-12)


def test_shapes_and_forward_is_masked_fft():
    mask = random_mask(6, 9)
    A = MRI(mask)
    assert A.in_shape == (1, 6, 9) and A.out_shape == (1, 6, 9, 2)
    x = randn(2, 1, 6, 9)
    k = torch.fft.fft2(x, norm="ortho") * mask
    torch.testing.assert_close(A(x), torch.stack([k.real, k.imag], -1))
    assert MRI(mask, coils=birdcage_maps(5, 6, 9)).out_shape == (5, 6, 9, 2)


def test_full_mask_single_coil_adjoint_is_inverse():
    A = OPERATORS["single-full-5x4"]()
    x = randn(3, 1, 5, 4)
    torch.testing.assert_close(A.gram(x), x)
    torch.testing.assert_close(A.pinv(A(x)), x)
    torch.testing.assert_close(A.adjoint(A(x)), x)


def test_full_mask_normalised_maps_gram_is_identity():
    maps = birdcage_maps(4, 8, 10)
    torch.testing.assert_close(maps.abs().square().sum(0), torch.ones(8, 10), rtol=1e-6, atol=1e-6)
    A = MRI(torch.ones(8, 10, dtype=torch.bool), coils=maps)
    x = randn(2, 1, 8, 10)
    torch.testing.assert_close(A.gram(x), x, rtol=1e-5, atol=1e-5)  # complex64 maps
    A64 = MRI(torch.ones(8, 10, dtype=torch.bool), coils=birdcage_maps(4, 8, 10, dtype=torch.complex128))
    torch.testing.assert_close(A64.gram(x), x)


@pytest.mark.parametrize("name", ["single-8x8", "single-random-6x9", "multi-4-8x8"])
def test_pinv(name):
    A = OPERATORS[name]()
    Ax = A(randn(2, *A.in_shape))
    x_plus = A.pinv(Ax, steps=200)
    torch.testing.assert_close(A(x_plus), Ax, rtol=1e-7, atol=1e-9)
    dense = torch.linalg.pinv(A.to_matrix(), rtol=1e-10)  # the minimum-norm solution
    torch.testing.assert_close(x_plus.reshape(2, -1), Ax.reshape(2, -1) @ dense.T, rtol=1e-6, atol=1e-8)


def test_cartesian_mask():
    mask = MRI.cartesian_mask((16, 32), acceleration=4, center_fraction=0.125, seed=3)
    assert mask.shape == (16, 32) and mask.dtype == torch.bool
    columns = mask[0]
    assert (mask == columns).all()  # whole phase-encoding lines
    assert int(columns.sum()) == 8
    centred = torch.fft.fftshift(columns)
    assert centred[14:18].all()  # the 4 = 0.125 * 32 lowest frequencies, DC at index 0 unshifted
    assert columns[0] and columns[1] and columns[-1]
    assert torch.equal(mask, MRI.cartesian_mask((16, 32), acceleration=4, center_fraction=0.125, seed=3))
    assert not torch.equal(mask, MRI.cartesian_mask((16, 32), acceleration=4, center_fraction=0.125, seed=4))
    assert MRI.cartesian_mask((4, 8), acceleration=1, center_fraction=0.0).all()


def test_float32_in_float32_out():
    for name in OPERATORS:
        A = OPERATORS[name]()
        y = A(randn(2, *A.in_shape, dtype=torch.float32))
        assert y.dtype == torch.float32 and A.adjoint(y).dtype == torch.float32, name
    assert OPERATORS["single-8x8"]().pinv(y.new_zeros(1, 1, 8, 8, 2)).dtype == torch.float32


def test_errors():
    with pytest.raises(ValueError, match="mask"):
        MRI(torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        MRI(torch.ones(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask.*0 and 1"):
        MRI(torch.full((4, 4), 0.5))
    with pytest.raises(ValueError, match="coils"):
        MRI(torch.ones(4, 4, dtype=torch.bool), coils=birdcage_maps(2, 4, 5))
    with pytest.raises(ValueError, match="x has shape"):
        MRI(torch.ones(4, 4, dtype=torch.bool))(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="y has shape"):
        MRI(torch.ones(4, 4, dtype=torch.bool)).pinv(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="acceleration"):
        MRI.cartesian_mask((4, 4), acceleration=0.5)
