"""Denoising Langevin Gibbs: MCMC chains in (x, sigma) whose states are turned into posterior draws.

Kim & Ye, "Denoising MCMC for Accelerating Diffusion-Based Generative Models", ICML 2023,
arXiv:2209.14593; extended here to a posterior (``docs/mcmc.md``).

Each chain targets ``pi(x, sigma | y) ∝ p(sigma) p_sigma(x) p_sigma(y | x)`` over a grid of noise
levels (``p(sigma)`` uniform over the grid, i.e. log-uniform in ``sigma``; ``p_sigma(y | x)`` the
:class:`~posterior.samplers.lml.LikelihoodSurrogate`). One iteration is two Gibbs blocks:

1. ``x`` given ``sigma``: a Levenberg-Marquardt-Langevin step (preconditioned by the likelihood's
   Gauss-Newton factor: within a mode the likelihood is stiff, and plain Langevin crawls);
2. ``sigma`` given ``x``, by one of:

   - ``"exact"`` or ``"classifier"``: a *draw* (not the argmax) from
     ``P(sigma_g | x, y) ∝ p(sigma_g) p_{sigma_g}(x) p_{sigma_g}(y | x)`` with every normalising term,
     ``p_sigma(x)`` exact for analytic priors or the bundled noise-level classifier's ``q(g | x)``
     (trained on a uniform grid index, so it is ``p_sigma(x)`` up to a constant in ``g``);
   - ``"flow"`` (any prior, only a denoiser needed): a Metropolis move to a neighbouring level
     ``g' = g +- 1`` that carries ``x`` along the prior's probability-flow ODE (Heun steps that
     change sigma by at most ``FLOW_RATIO``: one, 2 NFE, on the default grid). The flow maps
     ``p_sigma`` onto ``p_sigma'``, so ``p_sigma'(x') |dx'/dx| = p_sigma(x)`` and the prior and the
     Jacobian cancel from the acceptance ratio, which is just ``p_sigma'(y | x') / p_sigma(y | x)``:
     exact as the ODE step shrinks, with no density of the network needed. It moves one level per iteration (a random walk over the grid), slower than a
     draw from the full conditional.

Every ``thin`` iterations after ``burn_in``, each chain's current state is mapped to a draw: the
posterior probability-flow ODE (Karras Heun, ``ode_steps``) from its ``sigma`` down to the lowest
level, then a posterior Tweedie step. Chains start from a guided reverse integration (ancestral
steps with the posterior score) from the prior's ``sigma_max`` to the lowest level and persist across
draws, so the result's chains are Markov chains: ESS and R-hat (``to_arviz``) are meaningful.

Output: MCMC draws (correlated within a chain). Even with the exact score and the exact
sigma-conditional, chains do not switch between well-separated modes at practical budgets (see
``docs/mcmc.md``). Cost per iteration: 1 NFE (``"flow"``: plus 2), per draw ``2 ode_steps + 1`` NFE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from posterior.priors.integrators import ancestral_step, heun_step, sigma_grid
from posterior.problem import InverseProblem
from posterior.samplers.base import Sampler, one_y_per_chain
from posterior.samplers.lml import LikelihoodSurrogate, damping_scale, lml_step, per_sample
from posterior.samplers.settings import NON_NEGATIVE, POSITIVE, at_least
from posterior.utils import randn

SIGMA_POSTERIORS = ("auto", "exact", "classifier", "flow")
FLOW_RATIO = 1.25  # the largest change of sigma in one Heun step of the "flow" move


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
        else ``"flow"``), ``"exact"``, ``"classifier"`` or ``"flow"`` (see the module docstring).
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
    prior_std: float | None = None
    gamma: float = 1.0
    init_steps: int = 50
    ode_steps: int = 10

    kind = "mcmc"

    limits = {
        "levels": at_least(2),
        "sigma_low": POSITIVE,
        "sigma_high": POSITIVE,
        "sigma_posterior": SIGMA_POSTERIORS,
        "burn_in": NON_NEGATIVE,
        "thin": at_least(1),
        "step_size": POSITIVE,
        "prior_std": NON_NEGATIVE,
        "gamma": POSITIVE,
        "init_steps": at_least(1),
        "ode_steps": at_least(1),
    }

    def __post_init__(self):
        if self.sigma_posterior == "residual":
            raise ValueError(
                "DenoisingLangevinGibbs: sigma_posterior='residual' was removed (it targeted "
                "N(x; D(x, sigma), sigma^2 I), not p_sigma(x)); use 'flow'"
            )
        super().__post_init__()
        if self.classifier is not None and not callable(self.classifier):
            raise TypeError(
                f"DenoisingLangevinGibbs: classifier must be callable (noise_classifier(...)), got {self.classifier!r}"
            )
        if self.sigma_posterior == "classifier" and self.classifier is None:
            raise ValueError(
                "DenoisingLangevinGibbs: sigma_posterior='classifier' needs classifier=noise_classifier(...)"
            )
        if not self.sigma_low < self.sigma_high:
            raise ValueError(
                f"DenoisingLangevinGibbs: need sigma_low < sigma_high, got {self.sigma_low}, {self.sigma_high}"
            )

    def mode(self, prior) -> str:
        if self.sigma_posterior != "auto":
            return self.sigma_posterior
        if hasattr(prior, "log_prob"):
            return "exact"
        return "classifier" if self.classifier is not None else "flow"

    def grid(self, prior, dtype, device) -> Tensor:
        """The sigma levels, ascending, shape ``(G,)``."""
        if self.mode(prior) == "classifier":
            return self.classifier.sigmas.to(dtype=dtype, device=device)
        return torch.logspace(
            math.log10(self.sigma_low), math.log10(self.sigma_high), self.levels, dtype=dtype, device=device
        )

    def sigma_logits(self, problem, prior, surrogate, x: Tensor, grid: Tensor) -> Tensor:
        """``log P(sigma_g | x, y)`` up to a constant per chain, shape ``(n, G)`` (uniform ``p(sigma_g)``;
        modes ``"exact"`` and ``"classifier"``)."""
        n, G = x.shape[0], grid.numel()
        repeated = x.repeat_interleave(G, 0)
        log_lik = surrogate.log_density(problem, repeated, grid.repeat(n)).reshape(n, G)
        if self.mode(prior) == "exact":
            log_px = prior.log_prob(repeated, grid.repeat(n)).reshape(n, G)
        else:
            log_px = self.classifier.log_probs(x.to(self.classifier.sigmas.dtype)).to(x.dtype)
        return log_px + log_lik

    def flow_move(self, problem, prior, surrogate, x: Tensor, index: Tensor, grid: Tensor, generator):
        """The ``"flow"`` move: propose ``g' = g +- 1`` (probability 1/2 each; off the grid is
        rejected), carry ``x`` to ``sigma_g'`` along the prior's probability-flow ODE (Heun steps,
        geometric in sigma, each changing it by at most ``FLOW_RATIO``: one step on the default grid,
        2 NFE each), accept with probability ``min(1, p_sigma'(y | x') / p_sigma(y | x))``.

        Returns ``(x, index, accepted)``, ``accepted`` of shape ``(n,)``."""
        n = x.shape[0]
        up = torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device) < 0.5
        proposed = index + torch.where(up, 1, -1).to(index.device)
        inside = (proposed >= 0) & (proposed < grid.numel())
        proposed = torch.where(inside, proposed, index)
        sigma, sigma_next = grid[index], grid[proposed]
        ratio = float((grid[1:] / grid[:-1]).max())  # Heun sub-steps of at most FLOW_RATIO in sigma
        substeps = max(1, math.ceil(math.log(ratio) / math.log(FLOW_RATIO) - 1e-9))
        moved = x
        for k in range(substeps):
            moved = heun_step(
                prior.denoise,
                moved,
                sigma * (sigma_next / sigma) ** (k / substeps),
                sigma * (sigma_next / sigma) ** ((k + 1) / substeps),
            )
        log_ratio = surrogate.log_density(problem, moved, sigma_next) - surrogate.log_density(problem, x, sigma)
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device)
        accepted = inside & (torch.log(u).to(log_ratio.device) < log_ratio.double())
        x = torch.where(per_sample(accepted, x.dim()), moved, x)
        return x, torch.where(accepted, proposed, index), accepted

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
        tau = damping_scale(prior, self.prior_std)
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
            P = surrogate.preconditioner(sigma, tau)
            x = lml_step(x, surrogate.score(problem, prior, x, sigma), P, self.step_size, generator)
            if self.mode(prior) == "flow":
                x, index, _ = self.flow_move(problem, prior, surrogate, x, index, grid, generator)
            else:
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
