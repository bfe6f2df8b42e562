"""Denoising Langevin Gibbs: MCMC chains in (x, sigma) whose states are turned into posterior draws.

Kim & Ye, "Denoising MCMC for Accelerating Diffusion-Based Generative Models", ICML 2023,
arXiv:2209.14593; extended here to a posterior as verified in ``../shared/algorithms/mcmc_verified.md``
section 1.

Each chain targets ``pi(x, sigma | y) ∝ p(sigma) p_sigma(x) p_sigma(y | x)`` over a grid of noise
levels (``p(sigma)`` uniform over the grid, i.e. log-uniform in ``sigma``; ``p_sigma(y | x)`` the
:class:`~posterior.samplers.lml.LikelihoodSurrogate`). One iteration is two Gibbs blocks:

1. ``x`` given ``sigma``: a Levenberg-Marquardt-Langevin step (preconditioned by the likelihood's
   Gauss-Newton factor: within a mode the likelihood is stiff, and plain Langevin crawls);
2. ``sigma`` given ``x``: a *draw* (not the argmax) from
   ``P(sigma_g | x, y) ∝ p(sigma_g) p_{sigma_g}(x) p_{sigma_g}(y | x)`` with every normalising term.
   ``p_sigma(x)`` is exact for analytic priors (``sigma_posterior="exact"``), the bundled noise-level
   classifier's ``q(g | x)`` (trained on a uniform grid index, so it is ``p_sigma(x)`` up to a constant in
   ``g``; ``"classifier"``), or the classifier-free residual estimate ``log N(x; D(x, sigma), sigma^2 I)``
   (``"residual"``; one NFE per grid level).

Every ``thin`` iterations after ``burn_in``, each chain's current state is mapped to a draw: the
posterior probability-flow ODE (Karras Heun, ``ode_steps``) from its ``sigma`` down to the lowest
level, then a posterior Tweedie step. Chains start from a guided reverse integration (ancestral
steps with the posterior score) from the prior's ``sigma_max`` to the lowest level and persist across
draws, so the result's chains are Markov chains: ESS and R-hat (``to_arviz``) are meaningful.

Output: MCMC draws (correlated within a chain). Measured on exact posteriors (verified notes): even
with the exact score and the exact sigma-conditional, chains did not switch modes in a few hundred
iterations at d = 8 (the sigma walk is slow); do not expect mode switching. Cost per iteration:
1 NFE (``residual``: plus one per grid level), per draw ``2 ode_steps + 1`` NFE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from posterior.priors.integrators import ancestral_step, sigma_grid
from posterior.problem import InverseProblem
from posterior.samplers.base import Sampler, one_y_per_chain
from posterior.samplers.lml import LikelihoodSurrogate, lml_step, per_sample
from posterior.utils import randn

SIGMA_POSTERIORS = ("auto", "exact", "classifier", "residual")


@dataclass
class DenoisingLangevinGibbs(Sampler):
    """Hyperparameters of DLG.

    Parameters
    ----------
    levels : int
        Size of the log-spaced sigma grid (``"classifier"`` uses the classifier's own grid).
    sigma_low, sigma_high : float
        Lowest and highest grid levels.
    sigma_posterior : str
        ``"auto"`` (``"exact"`` for priors with ``log_prob``, else ``"classifier"`` when one is given,
        else ``"residual"``), ``"exact"``, ``"classifier"`` or ``"residual"``.
    classifier : NoiseLevelClassifier, optional
        For ``"classifier"`` (e.g. ``posterior.priors.noise_classifier("digits")``).
    burn_in, thin : int
        Iterations before the first draw, and between draws.
    step_size : float
        ``h`` of the preconditioned Langevin step.
    prior_std, gamma : float
        As for :class:`~posterior.samplers.lml.LevenbergMarquardtLangevin`.
    init_steps, ode_steps : int
        Guided reverse steps of the initialisation; Heun steps of each draw's ODE integration.
    """

    levels: int = 40
    sigma_low: float = 0.01
    sigma_high: float = 20.0
    sigma_posterior: str = "auto"
    classifier: object = None
    burn_in: int = 100
    thin: int = 5
    step_size: float = 0.2
    prior_std: float = 1.0
    gamma: float = 1.0
    init_steps: int = 50
    ode_steps: int = 10

    kind = "mcmc"

    def __post_init__(self):
        if self.sigma_posterior not in SIGMA_POSTERIORS:
            raise ValueError(
                f"sigma_posterior must be one of {SIGMA_POSTERIORS}, got {self.sigma_posterior!r}"
            )
        if self.sigma_posterior == "classifier" and self.classifier is None:
            raise ValueError("sigma_posterior='classifier' needs classifier=noise_classifier(...)")
        if not 0 < self.sigma_low < self.sigma_high:
            raise ValueError(f"need 0 < sigma_low < sigma_high, got {self.sigma_low}, {self.sigma_high}")
        for name in ("levels", "thin", "init_steps", "ode_steps"):
            if getattr(self, name) < (2 if name == "levels" else 1):
                raise ValueError(f"{name} is too small: {getattr(self, name)}")
        if self.burn_in < 0 or not self.step_size > 0:
            raise ValueError("burn_in must be >= 0 and step_size > 0")

    def mode(self, prior) -> str:
        if self.sigma_posterior != "auto":
            return self.sigma_posterior
        if hasattr(prior, "log_prob"):
            return "exact"
        return "classifier" if self.classifier is not None else "residual"

    def grid(self, prior, dtype, device) -> Tensor:
        """The sigma levels, ascending, shape ``(G,)``."""
        if self.mode(prior) == "classifier":
            return self.classifier.sigmas.to(dtype=dtype, device=device)
        return torch.logspace(
            math.log10(self.sigma_low), math.log10(self.sigma_high), self.levels, dtype=dtype, device=device
        )

    def sigma_logits(self, problem, prior, surrogate, x: Tensor, grid: Tensor) -> Tensor:
        """``log P(sigma_g | x, y)`` up to a constant per chain, shape ``(n, G)`` (uniform ``p(sigma_g)``)."""
        n, G = x.shape[0], grid.numel()
        repeated = x.repeat_interleave(G, 0)
        levels = grid.repeat(n)
        log_lik = surrogate.log_density(problem, repeated, levels).reshape(n, G)
        mode = self.mode(prior)
        if mode == "exact":
            log_px = prior.log_prob(repeated, levels).reshape(n, G)
        elif mode == "classifier":
            log_px = self.classifier.log_probs(x.to(self.classifier.sigmas.dtype)).to(x.dtype)
        else:
            with torch.no_grad():
                denoised = torch.cat([prior.denoise(x, s) for s in grid], 0)  # level-major
            resid = (x.repeat(G, *[1] * (x.dim() - 1)) - denoised).reshape(G, n, -1)
            d = resid.shape[-1]
            log_px = (-0.5 * (resid**2).sum(-1) / grid[:, None] ** 2 - d * torch.log(grid)[:, None]).T
        return log_px + log_lik

    def run(self, problem, prior, chains, num_samples, generator, loop):
        dtype, device = problem.y.dtype, problem.y.device
        n = chains * num_samples  # draws are taken from `chains` Markov chains; see below
        if self.mode(prior) == "exact" and not hasattr(prior, "log_prob"):
            raise ValueError("sigma_posterior='exact' needs a prior with log_prob (an analytic prior)")
        problem = one_y_per_chain(problem, chains, num_samples, "DenoisingLangevinGibbs")
        surrogate = LikelihoodSurrogate.of(problem, prior, self.gamma, "DenoisingLangevinGibbs")
        grid = self.grid(prior, dtype, device)
        level_problem, level_surrogate = problem, surrogate  # for sigma_logits: G rows per chain
        if problem.batched:
            level_problem = InverseProblem(
                problem.operator, problem.noise, problem.y.repeat_interleave(grid.numel(), 0)
            )
            level_surrogate = LikelihoodSurrogate.of(
                level_problem, prior, self.gamma, "DenoisingLangevinGibbs"
            )
        total = self.burn_in + self.thin * num_samples
        start, state = loop.resume(
            lambda: {
                "x": self._initialize(problem, prior, surrogate, chains, float(grid[0]), generator),
                "index": torch.zeros(chains, dtype=torch.long, device=device),
                "draws": [],
                "sigma_trace": [],
            },
            total,
        )
        x, index, draws, sigma_trace = (state[k] for k in ("x", "index", "draws", "sigma_trace"))
        for it in range(start, total):
            sigma = grid[index]
            P = surrogate.preconditioner(sigma, self.prior_std)
            x = lml_step(x, surrogate.score(problem, prior, x, sigma), P, self.step_size, generator)
            logits = self.sigma_logits(level_problem, prior, level_surrogate, x, grid)
            index = draw_categorical(logits, generator)
            sigma_trace.append(grid[index].cpu())
            if it >= self.burn_in and (it - self.burn_in + 1) % self.thin == 0:
                draws.append(self._to_draw(problem, prior, surrogate, x, grid[index], float(grid[0])))
            state = {"x": x, "index": index, "draws": draws, "sigma_trace": sigma_trace}
            loop.done(it, grid[index], state, check=(x,), view={"x": x})
        samples = torch.stack(draws, 1).reshape(n, *prior.event_shape)  # chain-major
        return samples, {"chain_sigma": torch.stack(sigma_trace)}

    def _initialize(self, problem, prior, surrogate, chains, sigma_end, generator):
        """Guided ancestral steps with the posterior score from ``prior.sigma_max`` to ``sigma_end``."""
        dtype, device = problem.y.dtype, problem.y.device
        sigmas = sigma_grid(sigma_end, prior.sigma_max, self.init_steps + 1, dtype=dtype, device=device)
        x = sigmas[0] * randn((chains, *prior.event_shape), generator, dtype, device)
        for i in range(self.init_steps):
            x0_hat, grad = surrogate.denoise_and_guide(problem, prior, x, sigmas[i])
            x = ancestral_step(x, x0_hat + sigmas[i] ** 2 * grad, sigmas[i], sigmas[i + 1], generator)
        return x

    def _to_draw(self, problem, prior, surrogate, x, sigma, sigma_end):
        """Posterior PF-ODE (Heun) from each chain's ``sigma`` to ``sigma_end``, then a posterior Tweedie step."""

        def velocity(z, s):
            x0_hat, grad = surrogate.denoise_and_guide(problem, prior, z, s)
            return (z - x0_hat - per_sample(s, z.dim()) ** 2 * grad) / per_sample(s, z.dim())

        ratio = torch.linspace(0, 1, self.ode_steps + 1, dtype=x.dtype, device=x.device)
        levels = sigma[None, :] * (sigma_end / sigma[None, :]) ** ratio[:, None]  # (steps + 1, chains)
        z = x
        for k in range(self.ode_steps):
            s, s_next = levels[k], levels[k + 1]
            step = per_sample(s_next - s, z.dim())
            d = velocity(z, s)
            z_euler = z + step * d
            z = z + step * 0.5 * (d + velocity(z_euler, s_next))
        x0_hat, grad = surrogate.denoise_and_guide(problem, prior, z, levels[-1])
        return x0_hat + per_sample(levels[-1], z.dim()) ** 2 * grad


def draw_categorical(logits: Tensor, generator) -> Tensor:
    """One draw per row from ``softmax(logits)`` by inverse CDF with the generator's uniforms: ``(n, G) -> (n,)``."""
    probs = torch.softmax(logits.double(), dim=-1)
    cdf = torch.cumsum(probs, -1)
    cdf[:, -1] = 1.0
    u = torch.rand(logits.shape[0], 1, generator=generator, dtype=torch.float64, device=generator.device)
    return torch.searchsorted(cdf, u.to(cdf.device)).clamp(max=logits.shape[1] - 1)[:, 0]
