"""Subsampled Fourier measurements for MRI, single coil or multi-coil with sensitivity maps.

Complex k-space data are stored as real tensors with a trailing dimension of size 2
``(real, imag)``, so every operator in the library keeps real inputs, real outputs and the real
inner product ``<u, v> = sum(u * v)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .base import LinearOperator, binary_mask, check_batch, like
from .checks import as_float, as_int, as_shape


class MRI(LinearOperator):
    """``y_c = mask * F(S_c x)`` for a real image ``x``, with ``F`` the orthonormal 2-D FFT.

    ``x`` has shape ``(n, 1, H, W)`` (real). ``y`` has shape ``(n, C, H, W, 2)``: coil ``c``'s k-space
    as (real, imaginary) parts, in the layout of ``torch.fft.fft2`` (zero frequency at index
    ``[0, 0]``, not fft-shifted), zero where ``mask`` is False. ``C = 1`` without sensitivity maps.
    The adjoint for the real inner product is ``x = Re(sum_c conj(S_c) * ifft2(mask * y_c))``.

    Parameters
    ----------
    mask : Tensor, shape (H, W)
        Boolean (or 0/1) k-space sampling mask in ``fft2`` layout; see :meth:`cartesian_mask`.
    coils : Tensor, shape (C, H, W), optional
        Complex coil sensitivity maps ``S_c`` (real ones are taken as complex); see :func:`birdcage_maps`.
        With maps normalised so that ``sum_c |S_c|^2 = 1`` and a full mask, ``A^T A = I``.
    """

    def __init__(self, mask: Tensor, coils: Tensor | None = None):
        mask = binary_mask(mask, "mask")
        if mask.dim() != 2:
            raise ValueError(f"mask must be a 2-D k-space mask (H, W), got shape {tuple(mask.shape)}")
        H, W = mask.shape
        if coils is not None:
            if not isinstance(coils, Tensor):
                raise TypeError(
                    f"coils must be a torch.Tensor of shape (C, H, W), got {type(coils).__name__}"
                )
            if coils.dim() != 3 or coils.shape[0] == 0 or tuple(coils.shape[1:]) != (H, W):
                raise ValueError(
                    f"coils must be sensitivity maps of shape (C, H, W) = (C, {H}, {W}), "
                    f"got {tuple(getattr(coils, 'shape', ()))}"
                )
            if not (coils.is_complex() or coils.is_floating_point()):
                raise TypeError(f"coils must be complex (or floating point), got dtype {coils.dtype}")
            if not torch.isfinite(torch.view_as_real(coils.to(torch.complex128))).all():
                raise ValueError("coils contains NaN or inf")
            coils = coils.detach().to(torch.complex128)
        num_coils = 1 if coils is None else coils.shape[0]
        super().__init__((1, H, W), (num_coils, H, W, 2))
        self.mask = mask
        self.coils = coils

    @staticmethod
    def cartesian_mask(
        shape: Sequence[int], acceleration: float, center_fraction: float = 0.08, seed: int = 0
    ) -> Tensor:
        """Random Cartesian mask: fully sampled columns (phase-encoding lines) along ``W``.

        The ``round(center_fraction * W)`` lowest-frequency columns are always sampled; further
        columns, drawn uniformly without replacement by a ``torch.Generator`` seeded with ``seed``,
        bring the total to ``round(W / acceleration)``.

        Parameters
        ----------
        shape : (H, W)
        acceleration : float
            At least 1.
        center_fraction : float in [0, 1]
        seed : int

        Returns
        -------
        Tensor, shape (H, W), bool
            In ``torch.fft.fft2`` layout (apply ``torch.fft.fftshift`` to view it centred).
        """
        shape = as_shape(shape, "shape")
        if len(shape) != 2:
            raise ValueError(f"shape must be (H, W), got {shape}")
        acceleration = as_float(acceleration, "acceleration", ge=1)
        center_fraction = as_float(center_fraction, "center_fraction", ge=0, le=1)
        seed = as_int(seed, "seed")
        H, W = shape
        total = max(1, round(W / acceleration))
        num_center = min(round(center_fraction * W), W)
        columns = torch.zeros(W, dtype=torch.bool)  # centred layout: zero frequency at index W // 2
        start = W // 2 - num_center // 2
        columns[start : start + num_center] = True
        rest = (~columns).nonzero().squeeze(1)
        gen = torch.Generator().manual_seed(seed)
        extra = max(0, total - num_center)
        columns[rest[torch.randperm(rest.numel(), generator=gen)[:extra]]] = True
        return torch.fft.ifftshift(columns, dim=0).expand(H, W).clone()

    def forward(self, x: Tensor) -> Tensor:
        z = x if self.coils is None else x * like(self.coils, x)  # (n, C, H, W), complex with maps
        k = torch.fft.fft2(z, norm="ortho") * like(self.mask, x)
        return torch.view_as_real(k)

    def adjoint(self, y: Tensor) -> Tensor:
        k = torch.complex(y[..., 0], y[..., 1]) * like(self.mask, y)  # (n, C, H, W)
        z = torch.fft.ifft2(k, norm="ortho")
        if self.coils is not None:
            z = z * like(self.coils, y).conj()
        return z.sum(1, keepdim=True).real

    def pinv(self, y: Tensor, **kwargs) -> Tensor:
        """Pseudo-inverse: closed form without sensitivity maps, CG (see the base class) with them.

        For real ``x``, ``A^T A = F^H diag(m_sym) F`` with ``m_sym(k) = (mask(k) + mask(-k)) / 2``,
        so ``A^+ y = F^H diag(1 / m_sym) F A^T y`` on the sampled frequencies.

        Parameters
        ----------
        y : Tensor, shape (n, C, H, W, 2)

        Returns
        -------
        Tensor, shape (n, 1, H, W)
        """
        if self.coils is not None:
            return super().pinv(y, **kwargs)
        check_batch(y, self.out_shape, "y")
        m = self.mask.double()
        m_sym = (m + torch.roll(m.flip(0, 1), (1, 1), dims=(0, 1))) / 2  # m(-k) = m[-i mod H, -j mod W]
        inverse = torch.where(m_sym > 0, 1 / m_sym.clamp_min(0.5), 0)
        b = torch.fft.fft2(self.adjoint(y), norm="ortho") * like(inverse, y)
        return torch.fft.ifft2(b, norm="ortho").real


def birdcage_maps(
    coils: int, H: int, W: int, *, normalize: bool = True, dtype: torch.dtype = torch.complex64
) -> Tensor:
    """Smooth synthetic complex coil sensitivities, coils evenly spaced on a ring around the image.

    Coil ``c`` sits at angle ``phi_c = 2 pi c / coils`` on a circle of radius 2 (the image spans
    ``[-1, 1]^2``); its map is ``exp(i (phi_c + angle(r - r_c))) / |r - r_c|``: magnitude falling
    off with distance, phase turning smoothly around the coil.

    Parameters
    ----------
    coils : int
        Number of coils ``C``.
    H, W : int
        Image size.
    normalize : bool
        Scale so that ``sum_c |S_c|^2 = 1`` at every pixel (then ``A^T A = I`` for a full mask).
    dtype : complex torch dtype

    Returns
    -------
    Tensor, shape (C, H, W), complex
    """
    coils, H, W = as_int(coils, "coils", minimum=1), as_int(H, "H", minimum=1), as_int(W, "W", minimum=1)
    if not isinstance(dtype, torch.dtype) or not dtype.is_complex:
        raise TypeError(f"dtype must be a complex torch dtype, got {dtype!r}")
    rows, cols = torch.linspace(-1, 1, H, dtype=torch.float64), torch.linspace(-1, 1, W, dtype=torch.float64)
    y, x = torch.meshgrid(-rows, cols, indexing="ij")
    phi = 2 * math.pi * torch.arange(coils, dtype=torch.float64)[:, None, None] / coils
    dx, dy = x - 2 * torch.cos(phi), y - 2 * torch.sin(phi)  # (C, H, W), never zero
    maps = torch.polar(1 / torch.hypot(dx, dy), phi + torch.atan2(dy, dx))
    if normalize:
        maps = maps / maps.abs().square().sum(0).sqrt()
    return maps.to(dtype)
