"""Nonlinear forward models."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .base import Operator
from .checks import as_float, as_shape


class PhaseRetrieval(Operator):
    """Fourier phase retrieval: ``y = |F(pad(x))|``, the magnitude of an oversampled 2-D FFT.

    Each channel of a real image ``(C, H, W)`` is zero-padded at the bottom and right to
    ``(ceil(H * oversampling), ceil(W * oversampling))`` and transformed with the orthonormal FFT
    (so ``sum(y^2) == sum(x^2)``). The magnitude is computed as ``sqrt(re^2 + im^2 + eps^2) - eps``:
    exact at zero, within ``eps`` elsewhere, and smooth, so its gradient stays finite (and zero) where
    a Fourier coefficient vanishes.

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(C, H, W)``.
    oversampling : float
        At least 1; ``2.0`` doubles each side.
    eps : float
        Smoothing of the modulus, default ``1e-12``.
    """

    def __init__(self, shape: Sequence[int], oversampling: float = 2.0, eps: float = 1e-12):
        shape = as_shape(shape, "shape")
        if len(shape) != 3:
            raise ValueError(f"shape must be an image shape (C, H, W), got {shape}")
        oversampling, eps = as_float(oversampling, "oversampling", ge=1), as_float(eps, "eps", gt=0)
        C, H, W = shape
        self.padded = (math.ceil(H * oversampling), math.ceil(W * oversampling))
        super().__init__(shape, (C, *self.padded))
        self.oversampling, self.eps = oversampling, eps

    def forward(self, x: Tensor) -> Tensor:
        k = torch.fft.fft2(x, s=self.padded, norm="ortho")  # zero-pads the last two dimensions
        return torch.sqrt(k.real.square() + k.imag.square() + self.eps**2) - self.eps
