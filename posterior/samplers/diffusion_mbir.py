"""DiffusionMBIR: 3D volumes from a 2D diffusion prior, with total variation along the third axis.

Chung, Kim, Kim & Ye, "Solving 3D Inverse Problems using Pre-trained 2D Diffusion Models", CVPR 2023,
arXiv:2211.10655.

The prior is a 2D one applied to every axial slice (:class:`~posterior.priors.SliceStackPrior`); alone
it knows nothing of how neighbouring slices relate. DiffusionMBIR adds a model-based prior along ``z``,
total variation, inside the data-consistency step of a DDS-type sampler (:mod:`~posterior.samplers.dds`):
at each noise level, with Tweedie's estimate ``x0_hat`` of the whole volume (the slices denoised as one
batch),

    min_x  ||A x - y||^2 / sigma_y^2 + gamma ||x - x0_hat||^2 + lambda ||D_z x||_1,

``D_z`` the forward difference between neighbouring slices, solved by ADMM on the split ``v = D_z x``
(scaled dual ``u``, penalty ``rho``):

    x <- CG on (A^T A / sigma_y^2 + gamma I + rho D_z^T D_z) x = A^T y / sigma_y^2 + gamma x0_hat + rho D_z^T (v - u)
    v <- soft-threshold(D_z x + u, lambda / (2 rho)),     u <- u + D_z x - v

with ``v`` and ``u`` carried from one noise level to the next (warm starts, as in the paper), then the
DDIM re-noising of DDS: a DDS-based DiffusionMBIR (the paper's x-update has no proximal term on
``x0_hat``; here it is DDS's). ``lambda = tv_weight * gamma`` and ``rho = admm_penalty * gamma`` (their
mean over coordinates when the prior's scale is per coordinate), so the soft threshold is
``tv_weight / (2 admm_penalty)`` in image units at every level (the default assumes data in [0, 1]).

One warm-started ADMM iteration is not the minimiser: its x-update keeps the quadratic coupling
``rho ||D_z x - v + u||^2`` to the previous level's split, which smooths along ``z`` whatever
``tv_weight`` is (``admm_penalty`` sets its strength). Only ``tv_weight = 0`` skips the ADMM and gives
DDS with the slice prior (the same draws): slice-by-slice reconstruction.

Output: approximate samples (``kind = "approximate"``). Needs a linear operator with an adjoint,
Gaussian noise, and a prior on volumes ``(C, D, H, W)``. Cost per step: 1 NFE (of the slice prior on
``D`` slices per volume) and ``admm_steps`` times at most ``cg_steps + 1`` products with ``A^T A``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from operators.base import conjugate_gradient
from posterior.samplers.dds import DDS, DDSKernel, DDSState
from posterior.samplers.settings import NON_NEGATIVE, POSITIVE, at_least


def z_difference(x: Tensor) -> Tensor:
    """``D_z x``: differences of neighbouring slices, ``(n, C, D, H, W) -> (n, C, D - 1, H, W)``."""
    return x[:, :, 1:] - x[:, :, :-1]


def z_difference_adjoint(v: Tensor) -> Tensor:
    """``D_z^T v``, ``(n, C, D - 1, H, W) -> (n, C, D, H, W)``."""
    zero = v.new_zeros((*v.shape[:2], 1, *v.shape[3:]))
    return torch.cat([zero, v], 2) - torch.cat([v, zero], 2)


def tv_admm(
    problem, x0_hat: Tensor, gamma, tv_weight: float, penalty: float, carry, admm_steps: int, cg_steps: int
):
    """``admm_steps`` ADMM iterations for the problem of the module docstring from ``x0_hat`` and the
    carried ``(v, u)``; returns the iterate, the CG steps run and the new ``(v, u)``."""
    A, variance = problem.operator, problem.noise.sigma.to(x0_hat) ** 2
    y = problem.y if problem.batched else problem.y[None]
    v, u = carry
    rho = penalty * gamma
    if isinstance(rho, Tensor) and rho.numel() > 1:  # a per-coordinate gamma: one rho keeps D^T D symmetric
        rho = rho.mean()
    data = A.adjoint(y / variance) + gamma * x0_hat

    def normal(x: Tensor) -> Tensor:
        return A.adjoint(A(x) / variance) + gamma * x + rho * z_difference_adjoint(z_difference(x))

    x, runs = x0_hat, 0
    for _ in range(admm_steps):
        x, done = conjugate_gradient(normal, data + rho * z_difference_adjoint(v - u), x, cg_steps)
        runs += done
        moved = z_difference(x) + u
        v = torch.sign(moved) * (moved.abs() - tv_weight / (2 * penalty)).clamp(min=0)
        u = moved - v
    return x, runs, (v, u)


@dataclass
class DiffusionMBIR(DDS):
    """Hyperparameters of DiffusionMBIR: those of :class:`~posterior.samplers.DDS`, and

    Parameters
    ----------
    tv_weight : float
        ``lambda / gamma``: the weight of the total variation along ``z`` (0: slice by slice).
    admm_steps : int
        ADMM iterations per noise level (the paper: 1, warm-started).
    admm_penalty : float
        ``rho / gamma``.
    """

    tv_weight: float = 0.01
    admm_steps: int = 1
    admm_penalty: float = 1.0

    limits = {
        **DDS.limits,
        "tv_weight": NON_NEGATIVE,
        "admm_steps": at_least(1),
        "admm_penalty": POSITIVE,
    }

    def build_kernel(self, problem, prior, chains, num_samples, group=None):
        if len(prior.event_shape) != 4 or prior.event_shape[1] < 2:
            raise ValueError(
                "DiffusionMBIR reconstructs volumes: the prior's event shape must be (C, D, H, W) with at "
                f"least 2 slices, e.g. a posterior.priors.SliceStackPrior; got {tuple(prior.event_shape)}"
            )
        if getattr(prior, "axis", 1) != 1:
            raise ValueError(
                "DiffusionMBIR's total variation runs along D, across the axial slices: use a "
                f"SliceStackPrior with axis=1, got axis={prior.axis}"
            )
        if self.tv_weight > 0 and self.cg_steps == 0:
            raise ValueError(
                "DiffusionMBIR: tv_weight > 0 needs cg_steps >= 1 (the ADMM x-update is a CG solve)"
            )
        kernel = super().build_kernel(problem, prior, chains, num_samples, group)
        return MBIRKernel(**{f: getattr(kernel, f) for f in kernel.__dataclass_fields__})


@dataclass
class MBIRKernel(DDSKernel):
    """DDS with the ADMM total-variation solve; carries ``(v, u)`` between noise levels."""

    def init(self, generator):
        state = super().init(generator)
        zeros = torch.zeros_like(z_difference(state.x))
        return DDSState(state.x, state.cg_steps, (zeros, zeros))

    def solve(self, state, x0_hat, gamma):
        s = self.settings
        if s.tv_weight == 0:  # the problem is DDS's: solved as DDS solves it, the ADMM split unused
            corrected, runs, _ = super().solve(state, x0_hat, gamma)
            return corrected, runs, state.carry
        return tv_admm(
            self.problem, x0_hat, gamma, s.tv_weight, s.admm_penalty, state.carry, s.admm_steps, s.cg_steps
        )
