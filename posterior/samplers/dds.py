"""The Decomposed Diffusion Sampler (DDS): data consistency by conjugate gradients, no network Jacobian.

Chung, Lee & Ye, "Decomposed Diffusion Sampler for Accelerating Large-Scale Inverse Problems",
ICLR 2024, arXiv:2303.05754.

At each noise level ``sigma_i``, with Tweedie's estimate ``x0_hat = D(x_i, sigma_i)``:

1. **Data consistency** (the paper's eq. 13, with the noise level written in): ``M`` conjugate-gradient
   steps, started at ``x0_hat``, on

       min_x  ||A x - y||^2 / sigma_y^2 + gamma ||x - x0_hat||^2,
       i.e.  (A^T A / sigma_y^2 + gamma I) x = A^T y / sigma_y^2 + gamma x0_hat.

   Started at ``x0_hat``, the iterates stay in ``x0_hat`` plus the Krylov subspace of the residual, which
   the paper argues stays close to the tangent space of the data manifold at ``x0_hat`` for small ``M``;
   no vector-Jacobian product through the network is needed. ``gamma`` defaults to ``1 / r^2`` with
   ``r^2 = sigma^2 s^2 / (sigma^2 + s^2)``, ``s`` the prior's scale: the variance of ``x0`` given ``x_i``
   for Gaussian data (PiGDM's), which makes the solve the posterior mean of ``x0`` under that Gaussian
   approximation when ``M`` is large; a number fixes it instead.
2. **DDIM re-noising** from the corrected ``x0_hat'`` with the network's noise estimate
   ``eps = (x_i - x0_hat) / sigma_i``:

       x_{i+1} = x0_hat' + sqrt(sigma_{i+1}^2 - c^2) eps + c z,
       c = eta sigma_{i+1} sqrt(1 - sigma_{i+1}^2 / sigma_i^2),

   ``eta = 1`` the ancestral step, ``eta = 0`` the deterministic DDIM step; the last step returns
   ``x0_hat'``.

Output: approximate posterior samples (``kind = "approximate"``): the Gaussian approximation and the
re-noising with the unconditioned ``eps`` do not make an exact sampler. Needs a linear operator with an
adjoint and Gaussian noise. Cost per step: 1 NFE and at most ``cg_steps + 1`` products with ``A^T A``
(the first for the starting residual) and one with ``A^T``; no vector-Jacobian products. The trace
records the CG iterations run at each step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from operators import GaussianNoise, LinearOperator
from operators.base import conjugate_gradient
from posterior.priors.integrators import sigma_grid
from posterior.problem import InverseProblem
from posterior.samplers.base import Sampler
from posterior.samplers.guidance import pigdm_variance
from posterior.samplers.kernel import Info, Kernel
from posterior.samplers.settings import FRACTION, NON_NEGATIVE, POSITIVE, RHO, at_least
from posterior.utils import randn


@dataclass
class DDS(Sampler):
    """Hyperparameters of DDS.

    Parameters
    ----------
    steps : int
        Number of noise levels; one NFE each.
    cg_steps : int
        Conjugate-gradient steps of the data-consistency solve at each noise level (the paper's ``M``,
        5 in most of its experiments); 0 skips it (the prior's own DDIM sampler).
    gamma : float, optional
        Weight of ``||x - x0_hat||^2`` against ``||A x - y||^2 / sigma_y^2``; ``None`` (default):
        ``1 / r^2`` at each noise level (module docstring).
    eta : float
        Stochasticity of the re-noising, in ``[0, 1]``: 1 (default) the ancestral step, 0 the
        deterministic DDIM step.
    rho : float
        Exponent of the EDM noise-level grid between the prior's ``sigma_max`` and ``sigma_min``.
    """

    steps: int = 50
    cg_steps: int = 5
    gamma: float | None = None
    eta: float = 1.0
    rho: float = 7.0

    kind = "approximate"
    divergence_hint = "use more steps, fewer cg_steps or a larger gamma"

    limits = {
        "steps": at_least(2),
        "cg_steps": NON_NEGATIVE,
        "gamma": POSITIVE,
        "eta": FRACTION,
        "rho": RHO,
    }

    def build_kernel(self, problem, prior, chains, num_samples, group=None):
        if not isinstance(problem.operator, LinearOperator) or not isinstance(problem.noise, GaussianNoise):
            raise TypeError(
                "DDS solves a least-squares problem by conjugate gradients: it needs a linear operator with "
                f"an adjoint and Gaussian noise, got {type(problem.operator).__name__} and "
                f"{type(problem.noise).__name__}; use AFDPS, TDS or DPS for other problems"
            )
        dtype, device = problem.y.dtype, problem.y.device
        sigmas = sigma_grid(
            prior.sigma_min, prior.sigma_max, self.steps, rho=self.rho, dtype=dtype, device=device
        )
        scale = prior.location_scale()[1]
        if self.gamma is None and not bool((torch.as_tensor(scale) > 0).all()):
            raise ValueError(
                "DDS: the prior's scale is 0 in some coordinate, so the default gamma = 1 / r^2 is infinite; "
                "give gamma"
            )
        return DDSKernel(
            self,
            problem,
            prior,
            chains * num_samples,
            torch.cat([sigmas, sigmas.new_zeros(1)]),
            torch.as_tensor(scale, dtype=dtype, device=device),
        )


def data_consistency(
    problem: InverseProblem, x0_hat: Tensor, gamma: Tensor | float, steps: int
) -> tuple[Tensor, int]:
    """``steps`` conjugate-gradient steps from ``x0_hat`` on ``(A^T A / sigma_y^2 + gamma I) x =
    A^T y / sigma_y^2 + gamma x0_hat``; the iterate and the steps run. x0_hat: (n, *in_shape); ``gamma``
    a number or broadcastable to ``x0_hat``."""
    if steps == 0:
        return x0_hat, 0
    A, variance = problem.operator, problem.noise.sigma.to(x0_hat) ** 2

    def normal(x: Tensor) -> Tensor:
        return A.adjoint(A(x) / variance) + gamma * x

    y = problem.y if problem.batched else problem.y[None]
    b = A.adjoint(y / variance) + gamma * x0_hat
    return conjugate_gradient(normal, b, x0_hat, steps)


@dataclass(frozen=True)
class DDSState:
    x: Tensor  # (n, *event_shape): the draws at the current noise level
    cg_steps: tuple[int, ...] = ()  # the conjugate-gradient steps run at each noise level so far
    carry: tuple[Tensor, ...] = ()  # what the data-consistency solve carries between levels (DiffusionMBIR)


@dataclass
class DDSKernel(Kernel):
    """DDS bound to one problem: ``sigmas`` the grid with a final 0, ``scale`` the prior's scale (for
    the default ``gamma``)."""

    settings: DDS
    problem: InverseProblem
    prior: object
    n: int
    sigmas: Tensor
    scale: Tensor

    State = DDSState

    def __post_init__(self):
        self.steps = self.settings.steps

    def init(self, generator):
        y = self.problem.y
        return DDSState(
            self.sigmas[0] * randn((self.n, *self.prior.event_shape), generator, y.dtype, y.device)
        )

    def solve(self, state: DDSState, x0_hat: Tensor, gamma) -> tuple[Tensor, int, tuple[Tensor, ...]]:
        """The data-consistency step: the corrected estimate, the CG steps run, what to carry on."""
        corrected, runs = data_consistency(self.problem, x0_hat, gamma, self.settings.cg_steps)
        return corrected, runs, ()

    def step(self, state, i, generator):
        settings = self.settings
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        x0_hat = self.prior.denoise(state.x, sigma)
        gamma = settings.gamma if settings.gamma is not None else 1 / pigdm_variance(sigma, self.scale)
        corrected, runs, carry = self.solve(state, x0_hat, gamma)
        if float(sigma_next) == 0:
            x = corrected
        else:
            eps = (state.x - x0_hat) / sigma
            c = settings.eta * sigma_next * (1 - (sigma_next / sigma) ** 2) ** 0.5
            noise = randn(x0_hat.shape, generator, x0_hat.dtype, x0_hat.device)
            x = corrected + (sigma_next**2 - c**2) ** 0.5 * eps + c * noise
        return DDSState(x, (*state.cg_steps, runs), carry), Info(
            sigma, check=(x,), view={"x": x, "x0_hat": x0_hat, "corrected": corrected}
        )

    def finish(self, state, generator):
        return state.x, {"sigma": self.sigmas[:-1].cpu(), "cg_steps": torch.tensor(state.cg_steps)}
