"""Imaging operators: inpainting masks, blur by convolution, downsampling (super-resolution) and
band-limited upsampling.

All are linear; images have shape ``(C, H, W)`` (inpainting accepts any shape) and batches
``(n, C, H, W)``. Buffers are stored once and cast to the input's device and dtype at use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import SVD, LinearOperator, binary_mask, check_batch, like
from .checks import as_float, as_int, as_seed, as_shape, short

_BOUNDARIES = ("circular", "reflect")


def _image_shape(shape: Sequence[int], name: str) -> tuple[int, int, int]:
    shape = as_shape(shape, name)
    if len(shape) != 3:
        raise ValueError(f"{name} must be an image shape (C, H, W), got {shape}")
    return shape  # type: ignore[return-value]


class Inpainting(LinearOperator):
    """Keep the observed pixels, zero the others: ``A(x) = mask * x``.

    The output keeps the input's shape (missing pixels are zeros), so ``A^T = A`` and the SVD has
    singular value 1 on every observed pixel.

    Parameters
    ----------
    mask : Tensor, shape in_shape
        Boolean (or 0/1) tensor, ``True`` where a pixel is observed, e.g. shape ``(1, H, W)`` or ``(d,)``.
    """

    def __init__(self, mask: Tensor):
        mask = binary_mask(mask, "mask")
        super().__init__(mask.shape, mask.shape)
        self.mask = mask
        self._observed = mask.flatten().nonzero().squeeze(1)  # (r,) flat indices of observed pixels

    @classmethod
    def random(cls, shape: Sequence[int], fraction_observed: float, seed: int = 0) -> Inpainting:
        """Observe ``round(fraction_observed * prod(shape))`` pixels (at least one), uniformly at random.

        Parameters
        ----------
        shape : tuple of int
            The image shape, e.g. ``(1, H, W)``.
        fraction_observed : float in (0, 1]
        seed : int
            Seeds the ``torch.Generator`` that draws the pixels.
        """
        shape = as_shape(shape, "shape")
        fraction_observed = as_float(fraction_observed, "fraction_observed", gt=0, le=1)
        d = math.prod(shape)
        keep = max(1, round(fraction_observed * d))
        gen = torch.Generator().manual_seed(as_seed(seed))
        mask = torch.zeros(d, dtype=torch.bool)
        mask[torch.randperm(d, generator=gen)[:keep]] = True
        return cls(mask.reshape(shape))

    @classmethod
    def box(cls, shape: Sequence[int], top: int, left: int, height: int, width: int) -> Inpainting:
        """Hide the box ``[top:top+height, left:left+width]`` of the last two dimensions (all channels).

        Parameters
        ----------
        shape : tuple of int
            The image shape ``(..., H, W)`` with at least two dimensions.
        top, left, height, width : int
            The MISSING region; it must lie inside the image.
        """
        shape = as_shape(shape, "shape")
        if len(shape) < 2:
            raise ValueError(f"shape must have at least two dimensions (..., H, W), got {shape}")
        H, W = shape[-2:]
        top, left = as_int(top, "top"), as_int(left, "left")
        height, width = as_int(height, "height"), as_int(width, "width")
        if height <= 0 or width <= 0 or top < 0 or left < 0 or top + height > H or left + width > W:
            raise ValueError(
                f"box (top={top}, left={left}, height={height}, width={width}) must be non-empty and "
                f"inside the image of size (H, W) = ({H}, {W})"
            )
        mask = torch.ones(shape, dtype=torch.bool)
        mask[..., top : top + height, left : left + width] = False
        return cls(mask)

    def forward(self, x: Tensor) -> Tensor:
        return x * like(self.mask, x)

    def adjoint(self, y: Tensor) -> Tensor:
        return y * like(self.mask, y)

    def svd(self) -> SVD:
        """``U = V`` = the observed coordinates, ``s = 1`` (``r`` = number of observed pixels)."""
        idx, shape = self._observed, self.in_shape

        def select(x: Tensor) -> Tensor:
            return x.reshape(x.shape[0], -1)[:, like(idx, x)]

        def embed(z: Tensor) -> Tensor:
            out = z.new_zeros(z.shape[0], math.prod(shape))
            out[:, like(idx, z)] = z
            return out.reshape(z.shape[0], *shape)

        return SVD(s=torch.ones(idx.numel(), dtype=torch.float64), u=embed, ut=select, v=embed, vt=select)

    def pinv(self, y: Tensor, **_) -> Tensor:
        """``A^+ y = mask * y``, shape ``(n, *in_shape)``."""
        check_batch(y, self.out_shape, "y")
        return self.adjoint(y)


class Blur(LinearOperator):
    """Per-channel 2-D convolution ``y = k * x`` of images ``(C, H, W)`` with a small kernel.

    The kernel's centre is ``(kh // 2, kw // 2)``:
    ``y[i, j] = sum_ab k[a, b] x[i - a + kh // 2, j - b + kw // 2]``.

    Parameters
    ----------
    kernel : Tensor, shape (kh, kw)
        Finite, floating point, no larger than the image.
    shape : tuple of int
        Image shape ``(C, H, W)``; the output has the same shape.
    boundary : {"circular", "reflect"}
        ``"circular"``: periodic images, computed by FFT; the adjoint is correlation (the conjugate
        spectrum) and :meth:`pinv` is closed form. ``"reflect"``: reflect-pad the image (edge pixel
        not repeated), then a valid convolution; the adjoint is the transposed convolution with the
        padded border folded back onto the pixels it copied.
    """

    def __init__(self, kernel: Tensor, shape: Sequence[int], boundary: str = "circular"):
        shape = _image_shape(shape, "shape")
        if boundary not in _BOUNDARIES:
            raise ValueError(f"boundary must be one of {_BOUNDARIES}, got {boundary!r}")
        if not isinstance(kernel, Tensor):
            raise TypeError(f"kernel must be a 2-D torch.Tensor (kh, kw), got {type(kernel).__name__}")
        if kernel.dim() != 2:
            raise ValueError(f"kernel must be a 2-D tensor (kh, kw), got shape {tuple(kernel.shape)}")
        if not kernel.is_floating_point():
            raise TypeError(f"kernel must be a real floating-point tensor, got dtype {kernel.dtype}")
        if not torch.isfinite(kernel).all():
            raise ValueError(f"kernel contains NaN or inf: {short(kernel)}")
        if not kernel.any():
            raise ValueError(f"kernel is all zeros (shape {tuple(kernel.shape)}), expected a non-zero entry")
        C, H, W = shape
        kh, kw = kernel.shape
        if kh > H or kw > W:
            raise ValueError(f"kernel of size {(kh, kw)} is larger than the image (H, W) = ({H}, {W})")
        super().__init__(shape, shape)
        self.kernel = kernel.detach().clone()
        self.boundary = boundary
        # padding (top, bottom, left, right) that centres the kernel at (kh // 2, kw // 2)
        self._pad = (kh - 1 - kh // 2, kh // 2, kw - 1 - kw // 2, kw // 2)
        if boundary == "circular":
            # the kernel on the periodic grid with its centre at (0, 0); its spectrum, (H, W // 2 + 1)
            k = torch.zeros(H, W, dtype=torch.float64, device=kernel.device)
            k[:kh, :kw] = kernel.to(torch.float64)
            self._spectrum = torch.fft.rfft2(torch.roll(k, (-(kh // 2), -(kw // 2)), dims=(0, 1)))

    # -- kernels ---------------------------------------------------------------------------------
    @classmethod
    def gaussian(
        cls, shape: Sequence[int], std: float, size: int | None = None, boundary: str = "circular"
    ) -> Blur:
        """Isotropic Gaussian kernel with standard deviation ``std`` pixels, normalised to sum 1.

        ``size`` defaults to ``2 * ceil(3 * std) + 1``, capped at the largest odd size that fits the image.
        """
        C, H, W = _image_shape(shape, "shape")
        std = as_float(std, "std", gt=0)
        if size is None:
            size = min(2 * math.ceil(3 * std) + 1, (min(H, W) - 1) // 2 * 2 + 1)
        size = as_int(size, "size", minimum=1)
        t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        g = torch.exp(-0.5 * (t / std) ** 2)
        kernel = torch.outer(g, g)
        return cls(kernel / kernel.sum(), shape, boundary)

    @classmethod
    def uniform(cls, shape: Sequence[int], size: int, boundary: str = "circular") -> Blur:
        """Box kernel of ``size x size`` pixels, each ``1 / size^2``."""
        size = as_int(size, "size", minimum=1)
        return cls(torch.full((size, size), 1.0 / size**2, dtype=torch.float64), shape, boundary)

    @classmethod
    def motion(
        cls, shape: Sequence[int], length: float, angle_degrees: float, boundary: str = "circular"
    ) -> Blur:
        """Linear motion blur along a centred segment at ``angle_degrees`` (counter-clockwise from
        the +x axis, image rows pointing down), normalised to sum 1.

        ``ceil(length)`` points, evenly spaced between the segment's ends ``(length - 1) / 2`` pixels
        from the centre, are drawn with bilinear weights: a horizontal motion of integer ``length``
        is a box of ``length`` pixels.
        """
        length = as_float(length, "length", ge=1)
        angle_degrees = as_float(angle_degrees, "angle_degrees")
        half = math.ceil((length - 1) / 2) + 1
        size = 2 * half + 1
        theta = math.radians(angle_degrees)
        end = (length - 1) / 2
        t = torch.linspace(-end, end, math.ceil(length), dtype=torch.float64)
        cols, rows = half + t * math.cos(theta), half - t * math.sin(theta)
        kernel = torch.zeros(size, size, dtype=torch.float64)
        r0, c0 = rows.floor(), cols.floor()
        fr, fc = rows - r0, cols - c0
        for dr, wr in ((0, 1 - fr), (1, fr)):
            for dc, wc in ((0, 1 - fc), (1, fc)):
                kernel.index_put_(((r0 + dr).long(), (c0 + dc).long()), wr * wc, accumulate=True)
        while size > 1 and kernel[[0, -1]].abs().sum() == 0 and kernel[:, [0, -1]].abs().sum() == 0:
            kernel, size = kernel[1:-1, 1:-1], size - 2  # drop empty outer rings, keep the centre
        return cls(kernel / kernel.sum(), shape, boundary)

    # -- maps ------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if self.boundary == "circular":
            return self._fourier(x, like(self._spectrum, x))
        n, C, H, W = x.shape
        top, bottom, left, right = self._pad
        xp = F.pad(x.reshape(n * C, 1, H, W), (left, right, top, bottom), mode="reflect")
        weight = like(self.kernel, x).flip(0, 1)[None, None]  # conv2d correlates; flip for convolution
        return F.conv2d(xp, weight).reshape(n, C, H, W)

    def adjoint(self, y: Tensor) -> Tensor:
        if self.boundary == "circular":
            return self._fourier(y, like(self._spectrum, y).conj())
        n, C, H, W = y.shape
        weight = like(self.kernel, y).flip(0, 1)[None, None]
        yp = F.conv_transpose2d(y.reshape(n * C, 1, H, W), weight)  # adjoint of the valid conv2d
        return _fold_reflect(yp, self._pad).reshape(n, C, H, W)

    def _fourier(self, x: Tensor, spectrum: Tensor) -> Tensor:
        return torch.fft.irfft2(torch.fft.rfft2(x) * spectrum, s=self.in_shape[1:])

    def pinv(self, y: Tensor, *, rtol: float | None = None, **kwargs) -> Tensor:
        """Pseudo-inverse; closed form in Fourier for circular boundaries, CG otherwise.

        Frequencies with ``|k_hat| <= rtol * max |k_hat|`` are treated as zero singular values;
        ``rtol`` defaults to ``1000 * eps`` of ``y``'s dtype.

        Parameters
        ----------
        y : Tensor, shape (n, C, H, W)

        Returns
        -------
        Tensor, shape (n, C, H, W)
        """
        if self.boundary != "circular":
            return super().pinv(y, **kwargs)
        check_batch(y, self.out_shape, "y")
        spectrum = like(self._spectrum, y)
        mag = spectrum.abs()
        rtol = 1e3 * torch.finfo(y.dtype).eps if rtol is None else rtol
        keep = mag > rtol * mag.max()
        inverse = torch.where(keep, 1 / torch.where(keep, spectrum, torch.ones_like(spectrum)), 0)
        return self._fourier(y, inverse)


def _fold_reflect(xp: Tensor, pad: tuple[int, int, int, int]) -> Tensor:
    """Adjoint of ``F.pad(x, (left, right, top, bottom), mode="reflect")`` on ``(..., H, W)``.

    Each padded row (column) is a copy of an interior one (the edge itself is not repeated), so its
    value is added back onto that row (column). Rows first, then columns, which covers the corners.
    """
    top, bottom, left, right = pad
    H = xp.shape[-2] - top - bottom
    rows = xp[..., top : top + H, :].clone()
    if top:
        rows[..., 1 : top + 1, :] += xp[..., :top, :].flip(-2)  # padded row i copies row top - i
    if bottom:
        rows[..., H - 1 - bottom : H - 1, :] += xp[..., top + H :, :].flip(-2)  # row top+H+r copies H-2-r
    W = xp.shape[-1] - left - right
    out = rows[..., left : left + W].clone()
    if left:
        out[..., 1 : left + 1] += rows[..., :left].flip(-1)
    if right:
        out[..., W - 1 - right : W - 1] += rows[..., left + W :].flip(-1)
    return out


class Downsample(LinearOperator):
    """Average pooling by an integer ``factor``: ``(C, H, W) -> (C, H / factor, W / factor)``.

    ``A A^T = I / factor^2``, so all singular values equal ``1 / factor``, ``A^T`` is nearest
    upsampling divided by ``factor^2`` and ``A^+ = factor^2 A^T`` is nearest upsampling.

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(C, H, W)`` with ``H`` and ``W`` divisible by ``factor``.
    factor : int
        Positive.
    """

    def __init__(self, shape: Sequence[int], factor: int):
        C, H, W = _image_shape(shape, "shape")
        factor = as_int(factor, "factor", minimum=1)
        if H % factor or W % factor:
            raise ValueError(f"shape {(C, H, W)} has H or W not divisible by factor {factor}")
        super().__init__((C, H, W), (C, H // factor, W // factor))
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.factor)

    def adjoint(self, y: Tensor) -> Tensor:
        return self._upsample(y) / self.factor**2

    def _upsample(self, y: Tensor) -> Tensor:
        return y.repeat_interleave(self.factor, dim=-2).repeat_interleave(self.factor, dim=-1)

    def svd(self) -> SVD:
        """``s = 1 / factor``, ``U = I`` on the low-resolution image, ``V^T = factor * A``."""
        f, out_shape = self.factor, self.out_shape
        return SVD(
            s=torch.full((math.prod(out_shape),), 1.0 / f, dtype=torch.float64),
            u=lambda z: z.reshape(z.shape[0], *out_shape),
            ut=lambda y: y.reshape(y.shape[0], -1),
            v=lambda z: f * self.adjoint(z.reshape(z.shape[0], *out_shape)),
            vt=lambda x: f * self.forward(x).reshape(x.shape[0], -1),
        )

    def pinv(self, y: Tensor, **_) -> Tensor:
        """``A^+ y``: nearest upsampling, shape ``(n, C, H, W)``."""
        check_batch(y, self.out_shape, "y")
        return self._upsample(y)


def dct_matrix(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """The orthonormal DCT-II matrix ``(n, n)``: ``C[k, i] = sqrt(2 / n) c_k cos(pi (i + 1/2) k / n)``,
    ``c_0 = 1 / sqrt(2)``, else 1."""
    i = torch.arange(n, dtype=torch.float64)
    c = torch.cos(math.pi * (i[None] + 0.5) * i[:, None] / n) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c.to(dtype)


class BandlimitedUpsample(LinearOperator):
    """Band-limited interpolation along the last axis: ``(C, H, m) -> (C, H, W)``, ``m <= W``.

    ``A s = s P`` with ``P = C_m^T [C_W]_{:m}`` (``m x W``): the DCT of ``s``'s rows, their ``m``
    coefficients as the lowest ``m`` of a length-``W`` DCT, the inverse. ``A`` is an isometry
    (``A^T A = I``), so it keeps the energy, not the values: a constant row of ones comes out as
    ``sqrt(m / W)`` (unlike :meth:`Downsample.pinv`, which keeps values). ``A A^T`` is the orthogonal
    projection onto the rows whose DCT vanishes above ``m``; the adjoint ``A^T`` is a band-limited
    downsampling by ``W / m`` whose values grow by ``sqrt(W / m)``. A prior on the small grid, lifted
    by ``A``, is a prior on laterally smooth frames (see :class:`posterior.priors.SubspacePrior`).

    Parameters
    ----------
    shape : tuple of int
        The small image shape ``(C, H, m)``.
    width : int
        ``W >= m``.
    """

    def __init__(self, shape: Sequence[int], width: int):
        C, H, m = _image_shape(shape, "shape")
        width = as_int(width, "width", minimum=m)
        super().__init__((C, H, m), (C, H, width))
        self.matrix = dct_matrix(m).T @ dct_matrix(width)[:m]  # (m, W), P P^T = I

    def forward(self, x: Tensor) -> Tensor:
        return x @ like(self.matrix, x)

    def adjoint(self, y: Tensor) -> Tensor:
        return y @ like(self.matrix, y).T

    def svd(self) -> SVD:
        """``s = 1``, ``U = A``, ``V = I`` on the small image (an isometry)."""
        in_shape = self.in_shape
        return SVD(
            s=torch.ones(math.prod(in_shape), dtype=torch.float64),
            u=lambda z: self.forward(z.reshape(z.shape[0], *in_shape)),
            ut=lambda y: self.adjoint(y).reshape(y.shape[0], -1),
            v=lambda z: z.reshape(z.shape[0], *in_shape),
            vt=lambda x: x.reshape(x.shape[0], -1),
        )

    def pinv(self, y: Tensor, **_) -> Tensor:
        """``A^+ = A^T`` (an isometry), shape ``(n, C, H, m)``."""
        check_batch(y, self.out_shape, "y")
        return self.adjoint(y)
