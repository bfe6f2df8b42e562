"""MCGdiff: Monte Carlo guided diffusion for linear-Gaussian problems, in its noisy form.

Cardoso, Janati El Idrissi, Le Corff & Moulines, "Monte Carlo Guided Diffusion for Bayesian Linear
Inverse Problems", ICLR 2024, arXiv:2308.07983.

In the SVD basis of ``A`` the observed coordinate ``j`` has the pseudo-observation ``u_j = (U^T y)_j / s_j``
with noise level ``tau_j = sigma_y / s_j``: it has the law of the prior's forward-noised coordinate at
``sigma = tau_j``. So the posterior is the prior's reverse chain conditioned on ``xbar_j(tau_j) = u_j``
for every ``j``. The particles follow the prior's ancestral kernel ``N(m, v)`` with, per observed
coordinate, the potential

- ``N(xbar_j; u_j, sigma^2 - tau_j^2)`` while ``sigma > tau_j`` (the forward noising of ``u_j``);
- pinned, ``xbar_j = u_j``, at ``sigma = tau_j`` (every ``tau_j < sigma_max`` is inserted in the grid);
- none below ``tau_j`` (free prior moves);
- ``N(u_j; xbar_j, tau_j^2 - sigma^2)`` at all ``sigma`` when ``tau_j >= sigma_max`` (never pinned).

Each step draws the observed coordinates from the product of the kernel and the next potential
(the locally optimal proposal) and adds ``log N(u_j; mbar_j, v + w_j(sigma'))`` minus the current
potential to the log-weight. Unobserved coordinates move freely. No backprop through the network.

Output: weighted particles (or ``resample=True``), log-evidence in the trace. Cost per particle-step:
1 NFE. Refuses non-linear operators and non-Gaussian or per-element noise. Accuracy against exact
posteriors and cost: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from posterior.samplers.linear_gaussian import LinearGaussianSVD
from posterior.samplers.smc import ParticleSampler


@dataclass
class MCGdiff(ParticleSampler):
    """Hyperparameters of MCGdiff: those of the SMC core (``steps``, ``rho``, ``resampling``,
    ``ess_threshold``, ``max_bisections``, ``resample``); the grid gains one level per distinct
    ``tau_j < sigma_max``."""

    def setup(self, problem, prior):
        return LinearGaussianSVD.of(problem, "MCGdiff")

    def grid(self, lg, prior, dtype, device):
        sigmas = super().grid(lg, prior, dtype, device)
        taus = lg.tau2.sqrt().to(dtype)
        inserted = torch.cat([sigmas, taus[taus < sigmas[0]]])
        return torch.unique(inserted).flip(0)  # descending, duplicates merged

    @staticmethod
    def potential_variance(lg, sigma, sigma_max):
        """``w_j(sigma)``: ``inf`` for no potential, 0 for pinned (``sigma == tau_j``)."""
        tau2, s2 = lg.tau2, sigma**2
        pinned = torch.isclose(tau2, s2, rtol=1e-6, atol=0.0)
        never_pinned = tau2 >= sigma_max**2
        w = torch.where(s2 > tau2, s2 - tau2, torch.full_like(tau2, math.inf))
        w = torch.where(never_pinned, tau2 - s2, w)
        return torch.where(pinned & ~never_pinned, torch.zeros_like(w), w)

    def initialize(self, lg, problem, prior, x, sigma):
        w = self.potential_variance(lg, sigma, prior.sigma_max)
        return {"x0_hat": prior.denoise(x, sigma)}, lg.log_potential(lg.coords(x), w) + lg.log_const

    def propagate(self, lg, problem, prior, x, cache, sigma, sigma_next, generator, spread):
        m, v = self.moments(x, cache["x0_hat"], sigma, sigma_next, spread)
        w, w_next = (self.potential_variance(lg, s, prior.sigma_max) for s in (sigma, sigma_next))
        x_next, log_norm = lg.product_move(m, v, w_next, generator)
        x0_hat = prior.denoise(x_next, sigma_next) if float(sigma_next) > 0 else x_next
        return x_next, {"x0_hat": x0_hat}, log_norm - lg.log_potential(lg.coords(x), w)
