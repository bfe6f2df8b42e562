"""Parallel-beam tomography: the discrete Radon transform as a sparse matrix, with an exact adjoint.

Each ray is sampled every pixel; at each sample the image is read by bilinear interpolation. The
interpolation weights of all samples form one sparse matrix ``R`` of shape
``(angles * detectors, size * size)``, built once, so the forward map is ``R x`` and the adjoint is
exactly ``R^T y``. Memory and build time grow like ``angles * detectors * size``; meant for ``size``
up to ~128 (with 180 angles, about 6M non-zeros at size 128). The matrices
are cast to each input's device and dtype once and cached.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .base import LinearOperator, check_batch
from .checks import as_int


class Radon(LinearOperator):
    """Parallel-beam projections ``(1, size, size) -> (1, len(angles), n_detectors)``.

    Geometry: pixel ``(i, j)`` has centre ``(x, y) = (j - c, c - i)`` with ``c = (size - 1) / 2``
    (rows point down). For angle ``theta``, detector ``d`` measures the line
    ``{x cos(theta) + y sin(theta) = s_d}`` with ``s_d = d - (n_detectors - 1) / 2``, as the sum of
    bilinear samples spaced one pixel apart along the line (a Riemann sum of the line integral).
    With the default ``n_detectors = size`` the disk inscribed in the image is seen at every angle;
    pass ``n_detectors = ceil(size * sqrt(2))`` to see the corners too.

    Parameters
    ----------
    angles : Tensor or sequence of float, shape (A,)
        Projection angles in degrees.
    size : int
        Image side length.
    n_detectors : int, optional
        Number of detector bins, spaced one pixel apart; defaults to ``size``.
    """

    _cached = ("_cast",)  # filled on use: not part of what the operator is (posterior fingerprints)

    def __init__(self, angles: Tensor | Sequence[float], size: int, n_detectors: int | None = None):
        angles = torch.as_tensor(angles, dtype=torch.float64).detach().cpu()
        if angles.dim() != 1 or angles.numel() == 0:
            raise ValueError(f"angles must be a non-empty 1-D sequence, got shape {tuple(angles.shape)}")
        if not torch.isfinite(angles).all():
            raise ValueError("angles contains NaN or inf")
        size = as_int(size, "size", minimum=1)
        n_detectors = size if n_detectors is None else as_int(n_detectors, "n_detectors", minimum=1)
        super().__init__((1, size, size), (1, angles.numel(), n_detectors))
        self.angles, self.size, self.n_detectors = angles, size, n_detectors
        self.matrix = _radon_matrix(angles, size, n_detectors)  # (A * D, size * size), sparse COO, float64
        self.matrix_t = self.matrix.t().coalesce()
        self._cast: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def _matrices(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``R`` and ``R^T`` on ``x``'s device and dtype, cast once and cached."""
        key = (x.device, x.dtype)
        if key not in self._cast:
            self._cast[key] = (self.matrix.to(x.device, x.dtype), self.matrix_t.to(x.device, x.dtype))
        return self._cast[key]

    def forward(self, x: Tensor) -> Tensor:
        R, _ = self._matrices(x)
        return torch.sparse.mm(R, x.reshape(x.shape[0], -1).T).T.reshape(x.shape[0], *self.out_shape)

    def adjoint(self, y: Tensor) -> Tensor:
        _, Rt = self._matrices(y)
        return torch.sparse.mm(Rt, y.reshape(y.shape[0], -1).T).T.reshape(y.shape[0], *self.in_shape)

    def fbp(self, y: Tensor) -> Tensor:
        """Filtered back-projection: Ram-Lak filter along detectors, then ``(pi / A) R^T``.

        A reasonable (not least-squares) reconstruction when the angles cover ``[0, 180)`` degrees
        evenly, accurate inside the disk the detectors see at every angle (with the default
        ``n_detectors = size``, the disk inscribed in the image; the corners come out biased).
        The filter is the band-limited ramp ``h[0] = 1/4``, ``h[m] = -1 / (pi m)^2`` for odd ``m``,
        ``0`` for even ``m``, applied by zero-padded FFT (no wrap-around).

        Parameters
        ----------
        y : Tensor, shape (n, 1, A, n_detectors)

        Returns
        -------
        Tensor, shape (n, 1, size, size)
        """
        check_batch(y, self.out_shape, "y")
        D = self.n_detectors
        P = 1 << (2 * D - 1).bit_length()  # FFT length >= 2 D - 1: linear, not circular, convolution
        m = torch.arange(P, device=y.device)
        m = torch.where(m < P // 2, m, m - P).to(y.dtype)  # signed offsets in FFT layout
        h = torch.where(m.remainder(2) == 1, -1 / (math.pi * m).square().clamp_min(1), 0.0)
        h[0] = 0.25
        filtered = torch.fft.irfft(torch.fft.rfft(y, n=P) * torch.fft.rfft(h), n=P)[..., :D]
        return self.adjoint(filtered) * (math.pi / len(self.angles))


def _radon_matrix(angles: Tensor, size: int, n_detectors: int) -> Tensor:
    """Sparse ``(A * D, size^2)`` matrix of bilinear ray-sample weights (row ``a * D + d``)."""
    c = (size - 1) / 2
    samples = math.ceil(size * math.sqrt(2)) + 1  # covers the image diagonal at unit spacing
    t = torch.arange(samples, dtype=torch.float64) - (samples - 1) / 2
    s = torch.arange(n_detectors, dtype=torch.float64) - (n_detectors - 1) / 2
    theta = torch.deg2rad(angles)
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    s, t = s[None, :, None], t[None, None, :]
    x = s * cos - t * sin  # (A, D, T): point s * (cos, sin) + t * (-sin, cos)
    y = s * sin + t * cos
    rows_f, cols_f = c - y, x + c  # fractional pixel coordinates (row, column)
    ray = torch.arange(angles.numel() * n_detectors).reshape(-1, n_detectors, 1).expand_as(x)
    r0, c0 = rows_f.floor(), cols_f.floor()
    fr, fc = rows_f - r0, cols_f - c0
    index, value = [], []
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            r, cc, w = (r0 + dr).long(), (c0 + dc).long(), wr * wc
            inside = (r >= 0) & (r < size) & (cc >= 0) & (cc < size) & (w > 0)
            index.append(torch.stack([ray[inside], r[inside] * size + cc[inside]]))
            value.append(w[inside])
    return torch.sparse_coo_tensor(
        torch.cat(index, 1),
        torch.cat(value),
        (angles.numel() * n_detectors, size * size),
        check_invariants=True,
    ).coalesce()
