"""Linear-Gaussian problems ``y = A x + sigma_y n`` in the SVD basis ``A = U diag(s) V^T`` of the operator.

The observed coordinates ``xbar = V^T x`` have pseudo-observations ``u_j = (U^T y)_j / s_j`` with noise
variance ``tau_j^2 = sigma_y^2 / s_j^2``, and ``log p(y | x) = sum_j log N(u_j; xbar_j, tau_j^2) + c(y)``:
the algebra of the SMC twists, MCGdiff's pinned coordinates and the Langevin preconditioners.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from operators.base import SVD
from posterior.utils import per_row, randn


def isotropic_log_density(x: Tensor, mean: Tensor | float, var: float | Tensor) -> Tensor:
    """``log N(x; mean, var I)`` summed over all but the first dimension: ``(n, ...) -> (n,)``."""
    var = torch.as_tensor(var, dtype=x.dtype, device=x.device)
    d = x[0].numel()
    sq = ((x - mean) ** 2).reshape(x.shape[0], -1).sum(1)
    return -0.5 * sq / var - 0.5 * d * torch.log(2 * math.pi * var)


@dataclass
class LinearGaussianSVD:
    """A linear-Gaussian problem in the SVD basis of its operator.

    Attributes
    ----------
    svd : operators.base.SVD
    u : Tensor, shape (1 or n, r)
        Pseudo-observations ``(U^T y)_j / s_j`` (one row per particle for a batched ``y``).
    tau2 : Tensor, shape (r,)
        Their noise variances ``sigma_y^2 / s_j^2``.
    log_const : Tensor, shape (1 or n,)
        ``log p(y | x) - sum_j log N(u_j; xbar_j, tau_j^2)``: the Jacobian ``-sum log s_j`` and the
        part of ``y`` outside the range of ``A``.
    """

    svd: SVD
    u: Tensor
    tau2: Tensor
    log_const: Tensor

    @staticmethod
    def applies(problem) -> bool:
        """Whether ``problem`` is linear-Gaussian with one noise level ``sigma_y`` (what :meth:`of` needs)."""
        sigma_y = problem.noise.sigma if problem.is_linear_gaussian else None
        return sigma_y is not None and bool((sigma_y == sigma_y.reshape(-1)[0]).all())

    @classmethod
    def of(cls, problem, who: str) -> LinearGaussianSVD:
        """Build it, or raise a ``ValueError`` naming ``who`` if the problem is not linear-Gaussian with one noise level."""
        if not problem.is_linear_gaussian:
            raise ValueError(
                f"{who} needs a linear operator with Gaussian noise (it works in the operator's SVD basis); "
                f"got {type(problem.operator).__name__} with {type(problem.noise).__name__}. "
                "Use AFDPS or TDS for non-linear operators and other noise models."
            )
        if not cls.applies(problem):
            raise ValueError(
                f"{who} needs one noise level sigma_y for all measurements, got a per-element sigma"
            )
        y, sigma_y = problem.y, problem.noise.sigma
        dtype, device = y.dtype, y.device
        svd = problem.operator.svd()
        s = svd.s.to(dtype=dtype, device=device)
        sigma2 = float(sigma_y.reshape(-1)[0]) ** 2
        ys = y.reshape(-1, *problem.operator.out_shape)
        coeffs = svd.ut(ys)  # (1 or n, r)
        outside = (ys.reshape(ys.shape[0], -1) ** 2).sum(1) - (coeffs**2).sum(1)
        m, r = ys[0].numel(), s.numel()
        log_const = (
            -torch.log(s).sum()
            - 0.5 * (m - r) * math.log(2 * math.pi * sigma2)
            - outside.clamp(min=0) / (2 * sigma2)
        )
        return cls(svd=svd, u=coeffs / s, tau2=sigma2 / s**2, log_const=log_const)

    def coords(self, x: Tensor) -> Tensor:
        """Observed coordinates ``V^T x``: ``(n, *event_shape) -> (n, r)``."""
        return self.svd.vt(x)

    def with_coords(self, x: Tensor, coords: Tensor) -> Tensor:
        """``x`` with its observed coordinates replaced by ``coords`` (the null-space part kept)."""
        return x + self.svd.v(coords - self.svd.vt(x))

    def log_potential(self, coords: Tensor, var: Tensor) -> Tensor:
        """``sum_j log N(u_j; coords_j, var_j)`` over the coordinates with ``0 < var_j < inf``: ``(n,)``."""
        active = torch.isfinite(var) & (var > 0)
        safe = torch.where(active, var, torch.ones_like(var))
        terms = -0.5 * (self.u - coords) ** 2 / safe - 0.5 * torch.log(2 * math.pi * safe)
        return torch.where(active, terms, torch.zeros_like(terms)).sum(-1)

    def product_move(self, m: Tensor, v: Tensor, var_next: Tensor, generator) -> tuple[Tensor, Tensor]:
        """Draw from ``N(m, v I) x prod_j N(u_j; xbar_j, var_next_j)`` exactly (the locally optimal proposal;
        ``v`` a number or one per row of ``m``).

        Observed coordinates with ``var_next = inf`` move freely, with ``var_next = 0`` are pinned to
        ``u_j``. Returns the new particles and ``log`` of the normaliser,
        ``sum_j log N(u_j; mbar_j, v + var_next_j)`` over the constrained coordinates.
        """
        v = torch.as_tensor(v, dtype=m.dtype, device=m.device)
        x = m + per_row(v, m.dim()).sqrt() * randn(m.shape, generator, m.dtype, m.device)
        v = per_row(v, 2)  # against the (n, r) coordinates
        mbar = self.coords(m)
        free = ~torch.isfinite(var_next)
        w = torch.where(free, torch.ones_like(var_next), var_next)
        total = v + w
        mean = torch.where(free, mbar, (w * mbar + v * self.u) / total)
        var = torch.where(free, v.expand_as(total), v * w / total)
        coords = mean + var.sqrt() * randn(mean.shape, generator, m.dtype, m.device)
        log_norm = -0.5 * (self.u - mbar) ** 2 / total - 0.5 * torch.log(2 * math.pi * total)
        log_norm = torch.where(free, torch.zeros_like(log_norm), log_norm).sum(-1)
        return self.with_coords(x, coords), log_norm
