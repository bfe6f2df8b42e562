import math

import pytest
import torch

from operators.imaging import BandlimitedUpsample, Blur, Downsample, Inpainting, dct_matrix
from operators.testing import check_adjoint as assert_adjoint


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def kernel(kh, kw, seed=0):
    return randn(kh, kw, seed=seed).abs()


OPERATORS = {
    "inpaint-image": lambda: Inpainting.random((1, 8, 8), 0.4, seed=1),
    "inpaint-rgb": lambda: Inpainting.box((3, 5, 7), 1, 2, 3, 3),
    "inpaint-vector": lambda: Inpainting(torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1, 1])),
    "blur-circular": lambda: Blur.gaussian((1, 8, 8), std=1.0),
    "blur-circular-odd": lambda: Blur(kernel(3, 4), (2, 7, 9)),
    "blur-circular-even": lambda: Blur(kernel(2, 2), (1, 6, 6)),
    "blur-reflect": lambda: Blur.gaussian((1, 8, 8), std=1.0, boundary="reflect"),
    "blur-reflect-asym": lambda: Blur(kernel(4, 5), (2, 7, 9), boundary="reflect"),
    "blur-reflect-full": lambda: Blur(kernel(6, 6), (1, 6, 6), boundary="reflect"),
    "blur-motion": lambda: Blur.motion((1, 12, 12), length=5, angle_degrees=30, boundary="reflect"),
    "blur-uniform": lambda: Blur.uniform((3, 8, 8), size=3),
    "down-2": lambda: Downsample((1, 8, 8), 2),
    "down-3": lambda: Downsample((3, 6, 9), 3),
    "down-1": lambda: Downsample((2, 4, 4), 1),
    "bandlimited": lambda: BandlimitedUpsample((2, 3, 4), 11),
}


@pytest.mark.parametrize("name", OPERATORS)
def test_adjoint(name):
    A = OPERATORS[name]()
    assert_adjoint(A)
    assert_adjoint(A.T, seed=5)
    assert A.T.T is A


@pytest.mark.parametrize(
    "name", ["inpaint-rgb", "blur-circular-odd", "blur-reflect-asym", "down-3", "bandlimited"]
)
def test_adjoint_matrix_is_transpose(name):
    A = OPERATORS[name]()
    torch.testing.assert_close(A.T.to_matrix(), A.to_matrix().T, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "name", ["inpaint-image", "inpaint-rgb", "inpaint-vector", "down-2", "down-3", "bandlimited"]
)
def test_svd_reconstructs_operator(name):
    A = OPERATORS[name]()
    svd = A.svd()
    x = randn(4, *A.in_shape)
    torch.testing.assert_close(svd.u(svd.s * svd.vt(x)), A(x), rtol=1e-10, atol=1e-12)
    z = randn(4, svd.s.numel(), seed=3)  # orthonormal columns: V^T V = U^T U = I
    torch.testing.assert_close(svd.vt(svd.v(z)), z)
    torch.testing.assert_close(svd.ut(svd.u(z)), z)
    dense = torch.linalg.svdvals(A.to_matrix())
    torch.testing.assert_close(svd.s.sort(descending=True).values, dense[dense > 1e-10])


@pytest.mark.parametrize(
    "name",
    ["inpaint-image", "inpaint-rgb", "down-2", "down-3", "blur-circular", "blur-uniform", "bandlimited"],
)
def test_pinv(name):
    A = OPERATORS[name]()
    Ax = A(randn(2, *A.in_shape))
    x_plus = A.pinv(Ax)
    torch.testing.assert_close(A(x_plus), Ax, rtol=1e-8, atol=1e-10)
    dense = torch.linalg.pinv(A.to_matrix(), rtol=1e-10)  # the minimum-norm solution
    torch.testing.assert_close(x_plus.reshape(2, -1), Ax.reshape(2, -1) @ dense.T, rtol=1e-7, atol=1e-9)


def test_circular_blur_matches_direct_convolution():
    k, H, W = kernel(3, 4), 5, 6
    x = randn(1, 1, H, W)
    y = Blur(k, (1, H, W))(x)
    ref = torch.zeros(H, W, dtype=torch.float64)
    for i in range(H):
        for j in range(W):
            for a in range(3):
                for b in range(4):
                    ref[i, j] += k[a, b] * x[0, 0, (i - a + 1) % H, (j - b + 2) % W]
    torch.testing.assert_close(y[0, 0], ref)


def test_reflect_blur_matches_direct_convolution():
    k, H, W = kernel(3, 4), 5, 6
    x = randn(1, 1, H, W)
    y = Blur(k, (1, H, W), boundary="reflect")(x)

    def reflect(i, n):  # mirror about the edge pixel, which is not repeated
        return -i if i < 0 else 2 * (n - 1) - i if i >= n else i

    ref = torch.zeros(H, W, dtype=torch.float64)
    for i in range(H):
        for j in range(W):
            for a in range(3):
                for b in range(4):
                    ref[i, j] += k[a, b] * x[0, 0, reflect(i - a + 1, H), reflect(j - b + 2, W)]
    torch.testing.assert_close(y[0, 0], ref)


@pytest.mark.parametrize("boundary", ["circular", "reflect"])
def test_gaussian_blur_preserves_constant_image(boundary):
    A = Blur.gaussian((2, 16, 16), std=2.0, boundary=boundary)
    assert abs(float(A.kernel.sum()) - 1) < 1e-12
    x = torch.full((1, 2, 16, 16), 0.7, dtype=torch.float64)
    torch.testing.assert_close(A(x), x)


def test_kernels():
    g = Blur.gaussian((1, 32, 32), std=1.5).kernel
    assert g.shape == (11, 11) and torch.allclose(g, g.T) and torch.allclose(g, g.flip(0, 1))
    assert Blur.gaussian((1, 8, 8), std=3.0).kernel.shape == (7, 7)  # capped to fit the image
    u = Blur.uniform((1, 8, 8), size=3).kernel
    torch.testing.assert_close(u, torch.full((3, 3), 1 / 9, dtype=torch.float64))
    m = Blur.motion((1, 16, 16), length=7, angle_degrees=0).kernel
    box = torch.zeros(7, 7, dtype=torch.float64)
    box[3] = 1 / 7
    torch.testing.assert_close(m, box)  # a horizontal box through the centre
    m90 = Blur.motion((1, 16, 16), length=7, angle_degrees=90).kernel
    torch.testing.assert_close(m90, m.T)
    d = Blur.motion((1, 16, 16), length=5, angle_degrees=45).kernel
    assert d.shape[0] % 2 == 1 and abs(float(d.sum()) - 1) < 1e-12
    torch.testing.assert_close(d, d.T)  # a centred segment along the anti-diagonal
    torch.testing.assert_close(d, d.flip(0, 1))
    assert d.flip(1).diagonal().sum() > 0.5 and d.diagonal()[[0, -1]].sum() == 0


def test_inpainting_constructors():
    A = Inpainting.random((1, 10, 10), 0.3, seed=4)
    assert int(A.mask.sum()) == 30 and A.mask.dtype == torch.bool
    assert torch.equal(A.mask, Inpainting.random((1, 10, 10), 0.3, seed=4).mask)
    assert not torch.equal(A.mask, Inpainting.random((1, 10, 10), 0.3, seed=5).mask)
    B = Inpainting.box((2, 6, 6), top=1, left=2, height=3, width=2)
    assert not B.mask[:, 1:4, 2:4].any() and int(B.mask.sum()) == 2 * (36 - 6)
    x = randn(1, 2, 6, 6)
    assert (B(x)[:, ~B.mask] == 0).all() and torch.equal(B(x)[:, B.mask], x[:, B.mask])


def test_float32_in_float32_out():
    for name in OPERATORS:
        A = OPERATORS[name]()
        x = randn(2, *A.in_shape, dtype=torch.float32)
        y = A(x)
        assert y.dtype == torch.float32 and A.adjoint(y).dtype == torch.float32, name
        assert A.pinv(y).dtype == torch.float32, name


def test_differentiable():
    A = Blur.gaussian((1, 8, 8), std=1.0, boundary="reflect")
    x = randn(1, 1, 8, 8).requires_grad_()
    (A(x) ** 2).sum().backward()
    torch.testing.assert_close(x.grad, 2 * A.gram(x.detach()))


def test_errors():
    with pytest.raises(ValueError, match="mask"):
        Inpainting(torch.zeros(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask.*0 and 1"):
        Inpainting(torch.tensor([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="fraction_observed"):
        Inpainting.random((1, 4, 4), 0.0)
    with pytest.raises(ValueError, match="box"):
        Inpainting.box((1, 4, 4), 2, 2, 3, 1)
    with pytest.raises(ValueError, match="x has shape"):
        Inpainting.random((1, 4, 4), 0.5)(torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="kernel.*larger"):
        Blur(torch.ones(5, 5), (1, 4, 4))
    with pytest.raises(ValueError, match="kernel.*2-D"):
        Blur(torch.ones(3), (1, 4, 4))
    with pytest.raises(ValueError, match="kernel.*NaN"):
        Blur(torch.tensor([[1.0, float("nan")]]), (1, 4, 4))
    with pytest.raises(ValueError, match="boundary"):
        Blur.uniform((1, 4, 4), 3, boundary="zero")
    with pytest.raises(ValueError, match="shape"):
        Blur.uniform((4, 4), 3)
    with pytest.raises(ValueError, match="y has shape"):
        Blur.uniform((1, 4, 4), 3).pinv(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="factor"):
        Downsample((1, 6, 6), 4)
    with pytest.raises(ValueError, match="factor"):
        Downsample((1, 6, 6), 0)
    with pytest.raises(ValueError, match="x has shape"):
        Downsample((1, 6, 6), 2)(torch.zeros(1, 6, 6))


def test_bandlimited_upsample_is_an_isometry_onto_the_low_band():
    A = BandlimitedUpsample((1, 3, 4), 16)
    torch.testing.assert_close(dct_matrix(16) @ dct_matrix(16).T, torch.eye(16, dtype=torch.float64))
    ramp = torch.arange(16, dtype=torch.float64)  # the DCT-II of x_i = i: sum_i i cos(pi (i + 1/2) k / 16)
    k = torch.arange(16, dtype=torch.float64)
    direct = (ramp[None] * torch.cos(math.pi * (ramp[None] + 0.5) * k[:, None] / 16)).sum(-1)
    scale = torch.full((16,), math.sqrt(2 / 16))
    scale[0] = math.sqrt(1 / 16)
    torch.testing.assert_close(dct_matrix(16) @ ramp, scale * direct)
    torch.testing.assert_close(
        A(torch.ones(1, 1, 3, 4, dtype=torch.float64)), torch.full((1, 1, 3, 16), 0.5, dtype=torch.float64)
    )
    s = randn(2, 1, 3, 4)
    torch.testing.assert_close(A.adjoint(A(s)), s)  # A^T A = I
    torch.testing.assert_close(A(s).norm(), s.norm())
    coefficients = A(s) @ dct_matrix(16).T  # the lifted rows have no DCT content above 4 ...
    assert float(coefficients[..., 4:].abs().max()) < 1e-12
    x = randn(2, 1, 3, 16, seed=1)  # ... and A A^T removes exactly that content
    torch.testing.assert_close(
        A(A.adjoint(x)) @ dct_matrix(16).T, (x @ dct_matrix(16).T) * (torch.arange(16) < 4)
    )
    smooth = torch.cos(torch.pi * (torch.arange(16, dtype=torch.float64) + 0.5) * 2 / 16).expand(1, 1, 3, 16)
    torch.testing.assert_close(A(A.pinv(smooth)), smooth)
    with pytest.raises(ValueError, match="width"):
        BandlimitedUpsample((1, 3, 4), 3)
