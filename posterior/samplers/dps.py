"""Diffusion Posterior Sampling (DPS): the common baseline.

Chung, Kim, McCann, Klasky & Ye, "Diffusion Posterior Sampling for General Noisy Inverse
Problems", ICLR 2023, arXiv:2209.14687.

DPS replaces the intractable ``p(y | x_sigma)`` by ``p(y | x0_hat(x_sigma))`` with Tweedie's
estimate ``x0_hat = D(x_sigma, sigma)``. After each ancestral step from ``sigma_i`` to ``sigma_{i+1}``

    x_{i+1} = x0_hat + (sigma_{i+1}^2 / sigma_i^2) (x_i - x0_hat) + sigma_{i+1} sqrt(1 - sigma_{i+1}^2 / sigma_i^2) z

it moves along a gradient taken through the denoiser:

- ``guidance="residual"`` (the paper, Algorithm 1): ``x_{i+1} -= zeta' grad_{x_i} ||y - A(x0_hat)||_2``,
  i.e. the step ``zeta_i = zeta' / ||y - A(x0_hat)||`` on the squared residual (up to the factor 2
  of the paper's notation, which the released code folds into ``zeta'``);
- ``guidance="likelihood"``: ``x_{i+1} += zeta (sigma_i^2 - sigma_{i+1}^2) grad_{x_i} log p(y | x0_hat)``,
  the ancestral step with the posterior score approximated as the prior score plus the DPS
  likelihood score; ``zeta = 1`` is the unscaled approximation, usable for any noise model.

Output: approximate posterior samples (``kind = "approximate"``); not a calibrated sampler (the
guidance is biased and the step size dominates). Cost per step: 1 NFE and 1 vector-Jacobian product through the network, plus
1 NFE per optional Levenberg-Marquardt-Langevin corrector step (``corrector_steps``).

The unscaled likelihood step (``zeta = 1``) overshoots, because DPS ignores the uncertainty of
``x0_hat``; it can diverge, which the run's range check reports (:func:`posterior.diagnostics.check`).
Retune ``step_size`` for every task and noise level; measured accuracy is in ``docs/baselines.md``
and ``docs/benchmarks.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from posterior.priors.integrators import ancestral_step, sigma_grid
from posterior.problem import InverseProblem
from posterior.samplers.base import Sampler
from posterior.samplers.guidance import tweedie_guidance
from posterior.samplers.kernel import Info, Kernel
from posterior.samplers.langevin import LikelihoodSurrogate, damping_scale, lml_correct
from posterior.samplers.settings import NON_NEGATIVE, POSITIVE, RHO, at_least
from posterior.utils import randn


@dataclass
class DPS(Sampler):
    """Hyperparameters of DPS.

    Parameters
    ----------
    steps : int
        Number of noise levels (the paper uses 1000 DDPM steps); one NFE each.
    step_size : float
        ``zeta'`` (residual guidance; the paper's 1.0 for Gaussian-noise FFHQ tasks, 0.3-0.4 for
        Poisson and nonlinear ones) or ``zeta`` (likelihood guidance; 1.0 is the unscaled score).
    guidance : str
        ``"residual"`` (the paper) or ``"likelihood"``.
    rho : float
        Exponent of the EDM noise-level grid between the prior's ``sigma_max`` and ``sigma_min``.
    corrector_steps : int
        Levenberg-Marquardt-Langevin corrector steps after each DPS step (0: plain DPS), on the
        surrogate posterior of :class:`~posterior.samplers.langevin.LikelihoodSurrogate`; 1 NFE each.
    corrector_step_size : float
        ``h`` of the corrector (see :func:`posterior.samplers.langevin.lml_correct`).
    """

    steps: int = 1000
    step_size: float = 1.0
    guidance: str = "residual"
    rho: float = 7.0
    corrector_steps: int = 0
    corrector_step_size: float = 0.2

    kind = "approximate"
    divergence_hint = 'lower step_size (zeta), use more steps, or guidance="residual"'

    limits = {
        "steps": at_least(2),
        "step_size": POSITIVE,
        "guidance": ("residual", "likelihood"),
        "rho": RHO,
        "corrector_steps": NON_NEGATIVE,
        "corrector_step_size": POSITIVE,
    }

    def build_kernel(self, problem, prior, chains, num_samples, group=None):
        dtype, device = problem.y.dtype, problem.y.device
        sigmas = sigma_grid(
            prior.sigma_min, prior.sigma_max, self.steps, rho=self.rho, dtype=dtype, device=device
        )
        surrogate = (
            LikelihoodSurrogate.of(problem, prior, 1.0, "DPS corrector") if self.corrector_steps else None
        )
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
        return DPSKernel(
            self, problem, prior, chains * num_samples, sigmas, surrogate, damping_scale(prior, None)
        )


@dataclass(frozen=True)
class DPSState:
    x: Tensor  # (n, *event_shape): the draws at the current noise level


@dataclass
class DPSKernel(Kernel):
    """DPS bound to one problem: ``sigmas`` the grid with a final 0, ``surrogate`` the corrector's
    likelihood (``None`` without corrector steps)."""

    settings: DPS
    problem: InverseProblem
    prior: object
    n: int
    sigmas: Tensor
    surrogate: LikelihoodSurrogate | None
    tau: float  # the corrector's damping scale

    State = DPSState

    def __post_init__(self):
        self.steps = self.settings.steps

    def init(self, generator):
        y = self.problem.y
        return DPSState(
            self.sigmas[0] * randn((self.n, *self.prior.event_shape), generator, y.dtype, y.device)
        )

    def step(self, state, i, generator):
        settings, problem, prior = self.settings, self.problem, self.prior
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        x0_hat, grad = tweedie_guidance(problem, prior, state.x, sigma, settings.guidance)
        x = ancestral_step(state.x, x0_hat, sigma, sigma_next, generator)
        if settings.guidance == "residual":  # Algorithm 1: zeta' grad of -||y - A(x0_hat)||
            x = x + settings.step_size * grad
        else:  # the posterior score's likelihood term over the step's variance
            x = x + settings.step_size * (sigma**2 - sigma_next**2) * grad
        for _ in range(settings.corrector_steps if float(sigma_next) > 0 else 0):
            x = lml_correct(
                problem,
                prior,
                self.surrogate,
                x,
                sigma_next,
                settings.corrector_step_size,
                self.tau,
                generator,
            )[0]
        return DPSState(x), Info(sigma, check=(x,), view={"x": x, "x0_hat": x0_hat})

    def finish(self, state, generator):
        return state.x, {"sigma": self.sigmas[:-1].cpu()}
