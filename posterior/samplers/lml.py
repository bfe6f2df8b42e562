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

from dataclasses import dataclass

import torch
from torch import Tensor

from posterior.priors.integrators import ancestral_step, sigma_grid
from posterior.problem import InverseProblem
from posterior.samplers.base import Sampler
from posterior.samplers.guidance import posterior_tweedie
from posterior.samplers.kernel import Info, Kernel
from posterior.samplers.langevin import LikelihoodSurrogate, damping_scale, lml_correct
from posterior.samplers.population import smc_starts
from posterior.samplers.settings import NON_NEGATIVE, POSITIVE, RHO, Range, at_least
from posterior.utils import randn

STARTS = ("smc", "anneal")  # LML: an SMC population then the last level, or the annealing alone


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
    start : str
        ``"anneal"``: the annealing above from ``sigma_max`` (its particles commit to modes at high
        noise, with biased weights: ``docs/mcmc.md``, "Crossing modes"). ``"smc"``: each draw taken from
        an AFDPS population (``start_particles`` particles per draw, ``start_steps`` levels; its NFE
        count), noised exactly to the last level ``sigma_min``, then ``corrector_steps`` LML steps there
        and the Tweedie step: the annealing is replaced by the SMC population.
    start_particles, start_steps : int
        Particles per draw and levels of the ``"smc"`` start's population. With one ``y`` per draw each
        draw has its own population of ``start_particles``: raise it, or the weights play no part.
    """

    steps: int = 100
    corrector_steps: int = 1
    step_size: float = 0.2
    prior_std: float | None = None
    gamma: float = 1.0
    metropolis: bool = False
    kappa: float = 0.0
    rho: float = 7.0
    start: str = "anneal"
    start_particles: int = 1
    start_steps: int = 100

    kind = "approximate"

    limits = {
        "steps": at_least(2),
        "corrector_steps": NON_NEGATIVE,
        "step_size": POSITIVE,
        "prior_std": NON_NEGATIVE,
        "gamma": POSITIVE,
        "kappa": Range(0.0, 1.0, open_high=True),
        "rho": RHO,
        "start": STARTS,
        "start_particles": at_least(1),
        "start_steps": at_least(2),
    }

    def build_kernel(self, problem, prior, chains, num_samples, group=None):
        dtype, device = problem.y.dtype, problem.y.device
        surrogate = LikelihoodSurrogate.of(problem, prior, self.gamma, "LevenbergMarquardtLangevin")
        if self.metropolis and (surrogate.svd is None or not prior.has_log_prob):
            raise ValueError(
                "metropolis=True needs a linear-Gaussian problem (the surrogate's density) and a prior "
                "with log_prob (an analytic prior)"
            )
        sigmas = sigma_grid(
            prior.sigma_min, prior.sigma_max, self.steps, rho=self.rho, dtype=dtype, device=device
        )
        return LMLKernel(
            self,
            problem,
            prior,
            chains * num_samples,
            sigmas,
            surrogate,
            damping_scale(prior, self.prior_std),
        )


@dataclass(frozen=True)
class LMLState:
    x: Tensor  # (n, *event_shape): the draws at the current noise level
    increment: Tensor | None  # (n, *event_shape): the last predictor increment (kappa > 0), else None
    accepted: int  # corrector proposals accepted so far (metropolis)
    proposed: int  # corrector proposals made so far


@dataclass
class LMLKernel(Kernel):
    """Annealed LML bound to one problem: ``sigmas`` the EDM grid, shape ``(steps,)``; one step per
    level after the first."""

    settings: LevenbergMarquardtLangevin
    problem: InverseProblem
    prior: object
    n: int
    sigmas: Tensor
    surrogate: LikelihoodSurrogate
    tau: float  # the damping scale

    State = LMLState

    def __post_init__(self):
        smc = self.settings.start == "smc"
        self.steps = self.settings.corrector_steps if smc else self.settings.steps - 1

    def init(self, generator):
        y, settings = self.problem.y, self.settings
        if settings.start == "smc":  # an AFDPS population per y, noised to the last level
            runs = self.n if self.problem.batched else 1
            per_run = self.n // runs
            x = smc_starts(
                self.problem,
                self.prior,
                runs,
                per_run,
                settings.start_particles * per_run,
                settings.start_steps,
                generator,
            )
            return LMLState(x + self.sigmas[-1] * randn(x.shape, generator, y.dtype, y.device), None, 0, 0)
        x = self.sigmas[0] * randn((self.n, *self.prior.event_shape), generator, y.dtype, y.device)
        return LMLState(x, None, 0, 0)

    def step(self, state, i, generator):
        settings, problem, prior, surrogate = self.settings, self.problem, self.prior, self.surrogate
        if settings.start == "smc":  # one corrector step at the last level
            sigma = self.sigmas[-1]
            x, ok = lml_correct(
                problem,
                prior,
                surrogate,
                state.x,
                sigma,
                settings.step_size,
                self.tau,
                generator,
                settings.metropolis,
            )
            new = LMLState(x, None, state.accepted + ok, state.proposed + x.shape[0])
            return new, Info(sigma, check=(x,), view={"x": x})
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        x, increment, accepted, proposed = state.x, state.increment, state.accepted, state.proposed
        # predictor: an ancestral step with the posterior score
        x0_hat, grad = surrogate.denoise_and_guide(problem, prior, x, sigma)
        x_next = ancestral_step(x, posterior_tweedie(x0_hat, grad, sigma), sigma, sigma_next, generator)
        if settings.kappa > 0:  # the released code's direction reshaping
            new = reshape_direction(x_next - x, increment, settings.kappa, 1.0 / float(sigma) ** 2)
            increment, x_next = x_next - x, x + new
        x = x_next
        # corrector: LML steps at the new level
        for _ in range(settings.corrector_steps):
            x, ok = lml_correct(
                problem,
                prior,
                surrogate,
                x,
                sigma_next,
                settings.step_size,
                self.tau,
                generator,
                settings.metropolis,
            )
            accepted, proposed = accepted + ok, proposed + x.shape[0]
        return LMLState(x, increment, accepted, proposed), Info(sigma_next, check=(x,), view={"x": x})

    def finish(self, state, generator):
        sigma = self.sigmas[-1]
        x0_hat, grad = self.surrogate.denoise_and_guide(self.problem, self.prior, state.x, sigma)
        trace = {"sigma": self.sigmas.cpu()}
        if self.settings.metropolis:
            trace["acceptance"] = torch.tensor([state.accepted / max(state.proposed, 1)])
        return posterior_tweedie(x0_hat, grad, sigma), trace
