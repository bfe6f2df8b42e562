"""Levenberg-Marquardt-Langevin: damped low-rank preconditioned Langevin, as a corrector and as a sampler.

Wang, Yin et al., "Levenberg-Marquardt-Langevin", ICCV 2025, arXiv:2505.24222.

At a noise level ``sigma`` with target score ``s(x)`` (prior score plus a likelihood term), one step is

    x' = x + h P s(x) + sqrt(2 h) P^(1/2) xi,        P = (lam I + V^T V)^-1,

with ``lam = 1 / (sigma^2 + tau^2)`` (the prior's curvature at that level, ``tau = prior_std``) and
``V`` a low-rank factor of the likelihood's Gauss-Newton matrix. With ``V = R diag(c)`` for
orthonormal directions ``R`` (rank ``k``), ``P u = R diag(1/(lam + c^2)) R^T u + (u - R R^T u) / lam``
and ``P^(1/2)`` takes square roots: ``O(d k)``, the Sherman-Morrison identity for ``k = 1``; ``c = 0``
(no factor) gives plain Langevin with step ``h / lam``. The noise is preconditioned with ``P^(1/2)``:
preconditioning only the drift changes the stationary law (``docs/derivations.md``).

Choices verified on exact posteriors (``docs/derivations.md``):

- ``V`` is a *constant* Gauss-Newton factor of the likelihood at the level: for ``y = A x + sigma_y n``
  and the annealed surrogate ``N(y; A x, sigma_y^2 I + gamma sigma^2 A A^T)``, ``V^T V = A^T S^-1 A``,
  i.e. ``R`` = the right singular vectors, ``c_j^2 = 1 / (tau_j^2 + gamma sigma^2)``. With it the chain is
  right up to the usual ``O(h)`` bias with much larger steps than plain Langevin.
- A state-dependent ``v`` (the current score, as first proposed) is far off without Metropolis;
  an EMA of past scores is wrong even with it: neither is offered.
- ``metropolis=True`` adds the MALA accept/reject step (exact for any ``h``; needs a prior with
  ``log_prob``, i.e. an analytic prior).

The released code's default (``kappa = 0``) is the identity. Its ``kappa > 0`` variant removes from
the predictor's increment its component along an EMA of past increments, then restores the norm:
a deterministic reshaping of the step direction, not a sampler. It is offered as ``kappa``.

The sampler :class:`LevenbergMarquardtLangevin` anneals over an EDM noise grid: an ancestral predictor
step with the posterior score, then ``corrector_steps`` LML steps at the new level, and a final
Tweedie step. For problems that are not linear-Gaussian the likelihood term is DPS's, tempered:
``beta(sigma) grad_x log p(y | D(x, sigma))`` through the network (one VJP), ``beta = 1 / (1 +
sigma^2 / tau_ref^2)`` with ``tau_ref`` from the likelihood's curvature (as for AFDPS), so that the
shift ``sigma^2 beta grad`` of the posterior mean stays below ``tau_ref^2 |grad|``; the preconditioner
is the scalar Gauss-Newton bound ``lam + beta / tau_ref^2``.

Output: approximate posterior samples (annealed Langevin with a surrogate likelihood; exact per
level only with ``metropolis=True`` on an exact target). Cost per level: ``1 + corrector_steps`` NFE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from posterior.priors.integrators import ancestral_step, sigma_grid
from posterior.samplers.base import Sampler, tweedie_guidance
from posterior.samplers.settings import NON_NEGATIVE, POSITIVE, RHO, Range, at_least
from posterior.samplers.twists import LinearGaussianSVD, default_tempering_scale, tempering
from posterior.utils import randn


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

    def _lam(self, dims: int) -> Tensor:
        return self.lam.reshape(-1, *[1] * (dims - 1)) if self.lam.dim() else self.lam

    def _scaled(self, x: Tensor, power: float) -> Tensor:
        """``P^power x`` for ``power`` in {1, 1/2, -1}."""
        out = x * self._lam(x.dim()) ** (-power)
        if self.coords is None:
            return out
        lam = self._lam(2)
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
        return d * torch.log(self.lam) + torch.log1p(self.c2 / self._lam(2)).sum(-1)


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


def reshape_direction(g: Tensor, g_previous: Tensor | None, kappa: float, lam: float) -> Tensor:
    """The released code's deterministic variant: remove from the increment ``g`` its component along
    ``v = kappa g_prev + (1 - kappa) g`` (damped by ``lam``), then restore the norm of ``g``. Not a sampler."""
    if g_previous is None or kappa == 0:
        return g
    n = g.shape[0]
    v = kappa * g_previous + (1 - kappa) * g
    dot = (g * v).reshape(n, -1).sum(1)
    norm2 = (v * v).reshape(n, -1).sum(1)
    shape = (n, *[1] * (g.dim() - 1))
    out = g - v * (dot / (lam + norm2)).reshape(shape)
    scale = g.reshape(n, -1).norm(dim=1) / out.reshape(n, -1).norm(dim=1).clamp(min=torch.finfo(g.dtype).tiny)
    return out * scale.reshape(shape)


def damping_scale(prior, prior_std: float | None) -> float:
    """``tau`` of the damping ``lam = 1 / (sigma^2 + tau^2)``: ``prior_std`` when given; otherwise the
    smallest component standard deviation of an analytic prior (``GaussianMixture.smallest_std``:
    within a component the curvature of ``-log p_sigma`` is then at most ``lam``), and 0 for any other
    prior. Data on a low-dimensional manifold give ``-log p_sigma`` a curvature of ``1 / sigma^2``
    across it, and a ``tau`` well above ``sigma`` makes the step diverge there; ``tau = 0`` is the
    stable choice (``docs/mcmc.md``)."""
    if prior_std is not None:
        return prior_std
    smallest = getattr(prior, "smallest_std", None)
    return float(smallest()) if smallest is not None else 0.0


def per_sample(value: Tensor, dims: int) -> Tensor:
    """A scalar, or shape ``(n,)`` reshaped to broadcast against ``(n, ...)`` with ``dims`` dimensions."""
    return value.reshape(-1, *[1] * (dims - 1)) if value.dim() else value


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
        try:
            return cls(LinearGaussianSVD.of(problem, who), None, gamma)
        except ValueError:
            return cls(None, default_tempering_scale(problem, prior, None, who), gamma)

    def variance(self, sigma: Tensor) -> Tensor:
        """``tau_j^2 + gamma sigma^2``, shape ``(r,)`` or ``(n, r)``."""
        return self.svd.tau2 + self.gamma * per_sample(sigma, 2) ** 2

    def denoise_and_guide(self, problem, prior, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """``D(x, sigma)`` (1 NFE) and ``grad_x log p_sigma(y | x)``, both of shape ``x.shape``."""
        if self.svd is not None:
            lg = self.svd
            return prior.denoise(x, sigma), lg.svd.v((lg.u - lg.coords(x)) / self.variance(sigma))
        x0_hat, grad = tweedie_guidance(problem, prior, x, sigma, "likelihood")
        return x0_hat, per_sample(tempering(sigma, self.tau_ref), x.dim()) * grad

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
        return (x0_hat - x) / per_sample(sigma, x.dim()) ** 2 + grad


@dataclass
class LevenbergMarquardtLangevin(Sampler):
    """Hyperparameters of the annealed LML sampler.

    Parameters
    ----------
    steps : int
        Noise levels of the EDM grid (``rho``) from the prior's ``sigma_max`` to ``sigma_min``.
    corrector_steps : int
        LML steps per level (1 NFE each).
    step_size : float
        ``h`` (dimensionless: ``P`` carries the scale ``sigma^2 + tau^2`` along flat directions).
    prior_std : float, optional
        ``tau``: the prior's scale in the damping ``lam = 1/(sigma^2 + tau^2)``; default
        :func:`damping_scale` (an analytic prior's smallest component std, 0 for networks).
    gamma : float
        Variance inflation of the annealed likelihood surrogate (linear-Gaussian problems).
    metropolis : bool
        Accept/reject each corrector step against the exact level-``sigma`` target (analytic priors).
    kappa : float
        > 0 applies the deterministic direction reshaping to the predictor (not a sampler).
    rho : float
        Exponent of the EDM grid.
    """

    steps: int = 100
    corrector_steps: int = 1
    step_size: float = 0.2
    prior_std: float | None = None
    gamma: float = 1.0
    metropolis: bool = False
    kappa: float = 0.0
    rho: float = 7.0

    kind = "approximate"

    limits = {
        "steps": at_least(2),
        "corrector_steps": NON_NEGATIVE,
        "step_size": POSITIVE,
        "prior_std": NON_NEGATIVE,
        "gamma": POSITIVE,
        "kappa": Range(0.0, 1.0, open_high=True),
        "rho": RHO,
    }

    def run(self, problem, prior, chains, num_samples, generator, loop):
        dtype, device = problem.y.dtype, problem.y.device
        surrogate = LikelihoodSurrogate.of(problem, prior, self.gamma, "LevenbergMarquardtLangevin")
        if self.metropolis and (surrogate.svd is None or not hasattr(prior, "log_prob")):
            raise ValueError(
                "metropolis=True needs a linear-Gaussian problem (the surrogate's density) and a prior "
                "with log_prob (an analytic prior)"
            )
        sigmas = sigma_grid(
            prior.sigma_min, prior.sigma_max, self.steps, rho=self.rho, dtype=dtype, device=device
        )
        start, state = loop.resume(
            lambda: {
                "x": sigmas[0] * randn((chains * num_samples, *prior.event_shape), generator, dtype, device),
                "increment": None,
                "accepted": 0,
                "proposed": 0,
            },
            self.steps - 1,
        )
        x, increment, accepted, proposed = (state[k] for k in ("x", "increment", "accepted", "proposed"))
        for i in range(start, self.steps - 1):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            x0_hat, grad = surrogate.denoise_and_guide(problem, prior, x, sigma)
            x_next = ancestral_step(x, x0_hat + sigma**2 * grad, sigma, sigma_next, generator)
            if self.kappa > 0:
                new = reshape_direction(x_next - x, increment, self.kappa, 1.0 / float(sigma) ** 2)
                increment, x_next = x_next - x, x + new
            x = x_next
            for _ in range(self.corrector_steps):
                x, ok = lml_correct(
                    problem,
                    prior,
                    surrogate,
                    x,
                    sigma_next,
                    self.step_size,
                    damping_scale(prior, self.prior_std),
                    generator,
                    self.metropolis,
                )
                accepted, proposed = accepted + ok, proposed + x.shape[0]
            state = {"x": x, "increment": increment, "accepted": accepted, "proposed": proposed}
            loop.done(i, sigma_next, state, check=(x,), view={"x": x})
        x0_hat, grad = surrogate.denoise_and_guide(problem, prior, x, sigmas[-1])
        trace = {"sigma": sigmas.cpu()}
        if self.metropolis:
            trace["acceptance"] = torch.tensor([accepted / max(proposed, 1)])
        return x0_hat + sigmas[-1] ** 2 * grad, trace
