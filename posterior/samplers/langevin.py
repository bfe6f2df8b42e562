"""Preconditioned Langevin moves on a level-``sigma`` posterior, shared by the LML, DLG and DPS samplers.

At a noise level ``sigma`` with target score ``s(x)`` (prior score plus a likelihood term), one
Levenberg-Marquardt-Langevin step (Wang, Yin et al., ICCV 2025, arXiv:2505.24222) is

    x' = x + h P s(x) + sqrt(2 h) P^(1/2) xi,        P = (lam I + V^T V)^-1,

with ``lam = 1 / (sigma^2 + tau^2)`` (the prior's curvature at that level, ``tau = prior_std``) and
``V`` a low-rank factor of the likelihood's Gauss-Newton matrix. With ``V = R diag(c)`` for
orthonormal directions ``R`` (rank ``k``), ``P u = R diag(1/(lam + c^2)) R^T u + (u - R R^T u) / lam``
and ``P^(1/2)`` takes square roots: ``O(d k)``; ``c = 0`` (no factor) gives plain Langevin with step
``h / lam``. The noise is preconditioned with ``P^(1/2)``: preconditioning only the drift changes the
stationary law (``docs/derivations.md``).

The level-``sigma`` likelihood is :class:`LikelihoodSurrogate`; :func:`lml_correct` is one corrector
step on the surrogate posterior (with an optional Metropolis test on exact targets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from posterior.samplers.guidance import default_tempering_scale, tempering, tweedie_guidance
from posterior.samplers.linear_gaussian import LinearGaussianSVD
from posterior.utils import per_row, randn


@dataclass
class Preconditioner:
    """``P = (lam I + R diag(c2) R^T)^-1`` for orthonormal directions ``R``, as maps on ``(n, *event_shape)``.

    ``coords(x)`` is ``R^T x`` of shape ``(n, k)`` and ``embed(z)`` is ``R z``; ``c2`` has shape ``(k,)``
    or ``(n, k)``; ``lam`` is a scalar or has shape ``(n,)``. ``coords = None`` means no factor
    (``P = I / lam``).
    """

    lam: Tensor
    c2: Tensor | None = None
    coords: object = None
    embed: object = None

    @classmethod
    def rank_one(cls, lam: Tensor, v: Tensor) -> Preconditioner:
        """``P = (lam I + v v^T)^-1`` with a per-particle ``v`` of shape ``(n, *event_shape)`` (Sherman-Morrison)."""
        n = v.shape[0]
        norm2 = (v.reshape(n, -1) ** 2).sum(1, keepdim=True)
        unit = v / norm2.clamp(min=torch.finfo(v.dtype).tiny).sqrt().reshape(n, *[1] * (v.dim() - 1))
        return cls(
            lam,
            norm2,
            lambda x: (x * unit).reshape(n, -1).sum(1, keepdim=True),
            lambda z: z.reshape(n, *[1] * (v.dim() - 1)) * unit,
        )

    def _scaled(self, x: Tensor, power: float) -> Tensor:
        """``P^power x`` for ``power`` in {1, 1/2, -1}."""
        out = x * per_row(self.lam, x.dim()) ** (-power)
        if self.coords is None:
            return out
        lam = per_row(self.lam, 2)
        return out + self.embed(self.coords(x) * ((lam + self.c2) ** (-power) - lam ** (-power)))

    def apply(self, x: Tensor) -> Tensor:
        return self._scaled(x, 1.0)

    def sqrt(self, x: Tensor) -> Tensor:
        return self._scaled(x, 0.5)

    def quadratic_inverse(self, r: Tensor) -> Tensor:
        """``r^T P^-1 r`` per particle, shape ``(n,)``."""
        return (r * self._scaled(r, -1.0)).reshape(r.shape[0], -1).sum(1)

    def log_det_inverse(self, d: int) -> Tensor:
        """``log det P^-1`` (a scalar or shape ``(n,)``)."""
        if self.coords is None:
            return d * torch.log(self.lam)
        return d * torch.log(self.lam) + torch.log1p(self.c2 / per_row(self.lam, 2)).sum(-1)


def lml_step(x: Tensor, score: Tensor, P: Preconditioner, h: float, generator) -> Tensor:
    """One preconditioned Langevin step ``x + h P s + sqrt(2h) P^(1/2) xi``."""
    return x + h * P.apply(score) + math.sqrt(2 * h) * P.sqrt(randn(x.shape, generator, x.dtype, x.device))


def log_proposal(x_to: Tensor, x_from: Tensor, score_from: Tensor, P: Preconditioner, h: float) -> Tensor:
    """``log q(x_to | x_from)`` of :func:`lml_step` (a Gaussian with covariance ``2 h P``), shape ``(n,)``."""
    r = x_to - x_from - h * P.apply(score_from)
    d = x_to[0].numel()
    return (
        -P.quadratic_inverse(r) / (4 * h) + 0.5 * P.log_det_inverse(d) - 0.5 * d * math.log(4 * math.pi * h)
    )


def lml_correct(
    problem,
    prior,
    surrogate,
    x: Tensor,
    sigma: Tensor,
    h: float,
    prior_std: float,
    generator,
    metropolis: bool = False,
) -> tuple[Tensor, int]:
    """One LML corrector step at level ``sigma`` on the surrogate posterior ``p_sigma(x) p_sigma(y | x)``.

    The preconditioner is ``surrogate.preconditioner(sigma, prior_std)``; with ``metropolis`` the step is
    accepted or rejected against that target (analytic priors). Returns the new states and the number
    of accepted proposals (0 without ``metropolis``). 1 NFE (2 with ``metropolis``).
    """
    P = surrogate.preconditioner(sigma, prior_std)
    score = surrogate.score(problem, prior, x, sigma)
    proposal = lml_step(x, score, P, h, generator)
    if not metropolis:
        return proposal, 0

    def log_target(z):
        return prior.log_prob(z, sigma) + surrogate.log_density(problem, z, sigma)

    log_alpha = (
        log_target(proposal)
        - log_target(x)
        + log_proposal(x, proposal, surrogate.score(problem, prior, proposal, sigma), P, h)
        - log_proposal(proposal, x, score, P, h)
    )
    u = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=generator.device).to(x.device)
    accept = torch.log(u) < log_alpha
    return torch.where(accept.reshape(-1, *[1] * (x.dim() - 1)), proposal, x), int(accept.sum())


def damping_scale(prior, prior_std: float | None) -> float:
    """``tau`` of the damping ``lam = 1 / (sigma^2 + tau^2)``: ``prior_std`` when given; otherwise the
    smallest component standard deviation of an analytic prior (``GaussianMixture.smallest_std``:
    within a component the curvature of ``-log p_sigma`` is then at most ``lam``), and 0 for any other
    prior. Data on a low-dimensional manifold give ``-log p_sigma`` a curvature of ``1 / sigma^2``
    across it, and a ``tau`` well above ``sigma`` makes the step diverge there; ``tau = 0`` is the
    stable choice (``docs/mcmc.md``)."""
    if prior_std is not None:
        return prior_std
    smallest = prior.smallest_std()
    return float(smallest) if smallest is not None else 0.0


@dataclass
class LikelihoodSurrogate:
    """``p_sigma(y | x)`` at noise level ``sigma`` (a scalar or one per sample, shape ``(n,)``).

    Linear-Gaussian problems (``svd`` set): the annealed Gaussian ``N(y; A x, sigma_y^2 I + gamma sigma^2
    A A^T)``, anisotropic in the SVD basis (``N(u_j; xbar_j, tau_j^2 + gamma sigma^2)``); no network
    derivative. Other problems (``tau_ref`` set): DPS's ``p(y | D(x, sigma))`` tempered by ``beta(sigma) =
    1 / (1 + sigma^2 / tau_ref^2)``; its gradient goes through the network (one VJP), and the shift
    ``sigma^2 beta grad`` of the posterior mean stays below ``tau_ref^2 |grad|``.
    """

    svd: LinearGaussianSVD | None
    tau_ref: float | None
    gamma: float

    @classmethod
    def of(cls, problem, prior, gamma: float, who: str) -> LikelihoodSurrogate:
        if LinearGaussianSVD.applies(problem):
            return cls(LinearGaussianSVD.of(problem, who), None, gamma)
        return cls(None, default_tempering_scale(problem, prior, None, who), gamma)

    def variance(self, sigma: Tensor) -> Tensor:
        """``tau_j^2 + gamma sigma^2``, shape ``(r,)`` or ``(n, r)``."""
        return self.svd.tau2 + self.gamma * per_row(sigma, 2) ** 2

    def denoise_and_guide(self, problem, prior, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """``D(x, sigma)`` (1 NFE) and ``grad_x log p_sigma(y | x)``, both of shape ``x.shape``."""
        if self.svd is not None:
            lg = self.svd
            return prior.denoise(x, sigma), lg.svd.v((lg.u - lg.coords(x)) / self.variance(sigma))
        x0_hat, grad = tweedie_guidance(problem, prior, x, sigma, "likelihood")
        return x0_hat, per_row(tempering(sigma, self.tau_ref), x.dim()) * grad

    def log_density(self, problem, x: Tensor, sigma: Tensor) -> Tensor:
        """``log p_sigma(y | x)``, shape ``(n,)``: normalised for the Gaussian surrogate (its log-det
        matters when ``sigma`` varies); ``beta(sigma) log p(y | x)`` otherwise (unnormalised in ``y``)."""
        if self.svd is not None:
            return self.svd.log_potential(self.svd.coords(x), self.variance(sigma)) + self.svd.log_const
        return tempering(sigma, self.tau_ref) * problem.log_likelihood(x)

    def preconditioner(self, sigma: Tensor, prior_std: float) -> Preconditioner:
        """``(lam I + G)^-1``, ``lam = 1/(sigma^2 + prior_std^2)``, ``G`` the surrogate's Gauss-Newton
        matrix (``V diag(1/(tau^2 + gamma sigma^2)) V^T``, or the scalar bound ``beta / tau_ref^2``)."""
        lam = 1.0 / (sigma**2 + prior_std**2)
        if self.svd is not None:
            return Preconditioner(lam, 1.0 / self.variance(sigma), self.svd.coords, self.svd.svd.v)
        return Preconditioner(lam + tempering(sigma, self.tau_ref) / self.tau_ref**2)

    def score(self, problem, prior, x: Tensor, sigma: Tensor) -> Tensor:
        """Posterior score at level ``sigma``: ``(D(x, sigma) - x) / sigma^2 + grad log p_sigma(y | x)``."""
        x0_hat, grad = self.denoise_and_guide(problem, prior, x, sigma)
        return (x0_hat - x) / per_row(sigma, x.dim()) ** 2 + grad
