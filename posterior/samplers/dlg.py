"""Denoising Langevin Gibbs: MCMC chains in (x, sigma) whose states are turned into posterior draws.

Kim & Ye, "Denoising MCMC for Accelerating Diffusion-Based Generative Models", ICML 2023,
arXiv:2209.14593; extended here to a posterior (``docs/mcmc.md``).

Each chain targets ``pi(x, sigma | y) ∝ p(sigma) p_sigma(x) p_sigma(y | x)`` over a grid of noise
levels (``p(sigma)`` uniform over the grid, i.e. log-uniform in ``sigma``; ``p_sigma(y | x)`` the
:class:`~posterior.samplers.langevin.LikelihoodSurrogate`). One iteration is two Gibbs blocks:

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
level, then a posterior Tweedie step. Chains start (``"guided"``, the default) from a guided reverse
integration (ancestral steps with the posterior score) from the prior's ``sigma_max``, or
(``start="smc"``) from draws of an AFDPS population noised to the lowest level, which gives them the
posterior's mode weights (with ``sigma_posterior="classifier"`` the grid is the classifier's, whose
top is not lowered); they persist across draws, so the result's chains are Markov chains: ESS and R-hat (``to_arviz``) are meaningful.

Output: MCMC draws (correlated within a chain). Even with the exact score and the exact
sigma-conditional, chains do not switch between well-separated modes at practical budgets: their
mode weights are their start's (``docs/mcmc.md``, "Crossing modes"). The ``"smc"`` start adds its
population's ``start_steps`` NFE. Cost per iteration: 1 NFE (``"flow"``: plus 2), per draw ``2 ode_steps + 1`` NFE.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from posterior.priors.integrators import ancestral_step, flow_velocity, heun_step, sigma_grid
from posterior.priors.noise_level import NoiseLevelClassifier
from posterior.priors.pretrained import NAMES, noise_classifier
from posterior.problem import InverseProblem
from posterior.samplers.base import Sampler, one_y_per_chain
from posterior.samplers.guidance import posterior_tweedie
from posterior.samplers.kernel import Info, Kernel
from posterior.samplers.langevin import LikelihoodSurrogate, damping_scale, lml_step
from posterior.samplers.population import smc_starts
from posterior.samplers.resampling import draw_categorical, uniforms
from posterior.samplers.settings import NON_NEGATIVE, POSITIVE, at_least
from posterior.utils import per_row, randn

SIGMA_POSTERIORS = ("auto", "exact", "classifier", "flow")


def load_classifier(name: str, device: str) -> NoiseLevelClassifier:
    """The noise-level classifier ``name`` (a bundled prior's name or a file) on ``device``, read once
    per version of its file (a file rewritten since is read again)."""
    if name in NAMES:
        return _read_classifier(name, 0, device)
    path = Path(name).resolve()
    return _read_classifier(str(path), path.stat().st_mtime_ns, device)


@functools.lru_cache(maxsize=4)
def _read_classifier(name: str, version: int, device: str) -> NoiseLevelClassifier:
    return noise_classifier(name, device=device)


SMC_SIGMA_HIGH, GUIDED_SIGMA_HIGH = 2.0, 20.0  # the default highest level for each start
FLOW_RATIO = 1.25  # the largest change of sigma in one Heun step of the "flow" move


@dataclass
class DenoisingLangevinGibbs(Sampler):
    """Hyperparameters of DLG.

    Parameters
    ----------
    levels : int
        Size of the log-spaced sigma grid (``"classifier"`` uses the classifier's own grid).
    sigma_low, sigma_high : float
        Lowest and highest grid levels; ``sigma_high`` defaults to 2 with the ``"smc"`` start (higher
        levels merge the modes, and draws integrated down from there lose the start's mode weights) and
        20 with the ``"guided"`` one.
    sigma_posterior : str
        ``"auto"`` (``"exact"`` for priors with an exact density, ``prior.has_log_prob``, else ``"classifier"`` when one is given,
        else ``"flow"``), ``"exact"``, ``"classifier"`` or ``"flow"`` (see the module docstring).
    classifier : str, optional
        For ``"classifier"``: the noise-level classifier of a bundled prior (``"digits"``, ...) or a
        classifier file written by ``posterior train`` (loaded by
        :func:`posterior.priors.noise_classifier`, once per device).
    burn_in, thin : int
        Iterations before the first draw, and between draws.
    step_size : float
        ``h`` of the preconditioned Langevin step.
    prior_std, gamma : float
        As for :class:`~posterior.samplers.lml.LevenbergMarquardtLangevin`.
    init_steps, ode_steps : int
        Guided reverse steps of the ``"guided"`` start; Heun steps of each draw's ODE integration.
    start : str
        Where the chains start (``docs/mcmc.md``, "Crossing modes"): ``"guided"`` (default) or ``"smc"``.
        ``"smc"`` draws each chain's start
        from an AFDPS population (``start_particles`` particles per chain, ``start_steps`` levels; its NFE
        count), noised to the lowest level, so that the chains' mode weights are the posterior's;
        ``"guided"`` integrates the posterior score from ``sigma_max`` (the chains keep the mode weights
        of that integration: they do not cross between well-separated modes).
    start_particles, start_steps : int
        Particles per chain and levels of the ``"smc"`` start's population.
    """

    levels: int = 40
    sigma_low: float = 0.01
    sigma_high: float | None = None
    sigma_posterior: str = "auto"
    classifier: str | None = None
    burn_in: int = 100
    thin: int = 5
    step_size: float = 0.2
    prior_std: float | None = None
    gamma: float = 1.0
    init_steps: int = 50
    ode_steps: int = 10
    start: str = "guided"
    start_particles: int = 10
    start_steps: int = 100

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
        "start": ("smc", "guided"),
        "start_particles": at_least(1),
        "start_steps": at_least(2),
    }

    def __post_init__(self):
        if self.sigma_posterior == "residual":
            raise ValueError(
                "DenoisingLangevinGibbs: sigma_posterior='residual' was removed (it targeted "
                "N(x; D(x, sigma), sigma^2 I), not p_sigma(x)); use 'flow'"
            )
        super().__post_init__()
        if (
            self.classifier is not None
            and self.classifier not in NAMES
            and not Path(self.classifier).is_file()
        ):
            raise ValueError(
                f"DenoisingLangevinGibbs: classifier must be a bundled prior's name {NAMES} or a classifier "
                f"file, got {self.classifier!r}"
            )
        if self.sigma_posterior == "classifier" and self.classifier is None:
            raise ValueError(
                "DenoisingLangevinGibbs: sigma_posterior='classifier' needs classifier= (e.g. \"digits\")"
            )
        if not self.sigma_low < self.highest:
            raise ValueError(
                f"DenoisingLangevinGibbs: need sigma_low < sigma_high, got {self.sigma_low}, {self.highest}"
            )

    @property
    def highest(self) -> float:
        """The highest grid level: ``sigma_high``, or its default for the start (2 for ``"smc"``, else 20)."""
        if self.sigma_high is not None:
            return self.sigma_high
        return SMC_SIGMA_HIGH if self.start == "smc" else GUIDED_SIGMA_HIGH

    def resources(self, prior) -> dict:
        """The classifier's network, when the sigma move uses it (checkpoints record its weights)."""
        return (
            {"classifier": load_classifier(self.classifier, str(prior.device))}
            if self.mode(prior) == "classifier"
            else {}
        )

    def mode(self, prior) -> str:
        if self.sigma_posterior != "auto":
            return self.sigma_posterior
        if prior.has_log_prob:
            return "exact"
        return "classifier" if self.classifier is not None else "flow"

    def grid(self, prior, dtype, device) -> Tensor:
        """The sigma levels, ascending, shape ``(G,)``."""
        if self.mode(prior) == "classifier":
            return load_classifier(self.classifier, str(device)).sigmas.to(dtype=dtype, device=device)
        return torch.logspace(
            math.log10(self.sigma_low), math.log10(self.highest), self.levels, dtype=dtype, device=device
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
            network = load_classifier(self.classifier, str(x.device))
            log_px = network.log_probs(x.to(network.sigmas.dtype)).to(x.dtype)
        return log_px + log_lik

    def build_kernel(self, problem, prior, chains, num_samples, group=None):
        dtype, device = problem.y.dtype, problem.y.device
        mode = self.mode(prior)
        if mode == "exact" and not prior.has_log_prob:
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
        return DLGKernel(
            self,
            problem,
            prior,
            chains,
            num_samples,
            mode,
            grid,
            surrogate,
            level_problem,
            level_surrogate,
            damping_scale(prior, self.prior_std),
        )


@dataclass(frozen=True)
class DLGState:
    x: Tensor  # (chains, *event_shape): each chain's state
    index: Tensor  # (chains,) long: each chain's level in the grid
    draws: tuple[Tensor, ...]  # the draws so far, each (chains, *event_shape)
    sigma_trace: tuple[Tensor, ...]  # each iteration's levels, each (chains,) on the CPU


@dataclass
class DLGKernel(Kernel):
    """DLG bound to one problem (one ``y`` per chain when batched): ``grid`` the levels, shape ``(G,)``;
    ``level_problem`` and ``level_surrogate`` have ``G`` rows per chain (for ``sigma_logits``)."""

    settings: DenoisingLangevinGibbs
    problem: InverseProblem
    prior: object
    chains: int
    num_samples: int
    mode: str  # the sigma move: "exact", "classifier" or "flow"
    grid: Tensor
    surrogate: LikelihoodSurrogate
    level_problem: InverseProblem
    level_surrogate: LikelihoodSurrogate
    tau: float  # the damping scale

    State = DLGState

    def __post_init__(self):
        self.steps = self.settings.burn_in + self.settings.thin * self.num_samples

    def init(self, generator):
        """``"smc"``: each chain's start drawn from an AFDPS population (one for all chains, or one per
        chain when each has its own ``y``), noised exactly to the lowest level, ``x + sigma_low z``.
        ``"guided"``: guided ancestral steps with the posterior score from ``prior.sigma_max`` to the
        lowest level."""
        problem, prior, surrogate = self.problem, self.prior, self.surrogate
        dtype, device = problem.y.dtype, problem.y.device
        index = torch.zeros(self.chains, dtype=torch.long, device=device)
        if self.settings.start == "smc":
            runs = self.chains if problem.batched else 1
            per_run = self.chains // runs
            x = smc_starts(
                problem,
                prior,
                runs,
                per_run,
                self.settings.start_particles * per_run,
                self.settings.start_steps,
                generator,
            )
            x = x + self.grid[0] * randn(x.shape, generator, dtype, device)
            return DLGState(x, index, (), ())
        sigmas = sigma_grid(
            float(self.grid[0]), prior.sigma_max, self.settings.init_steps + 1, dtype=dtype, device=device
        )
        x = sigmas[0] * randn((self.chains, *prior.event_shape), generator, dtype, device)
        for i in range(self.settings.init_steps):
            x0_hat, grad = surrogate.denoise_and_guide(problem, prior, x, sigmas[i])
            x = ancestral_step(
                x, posterior_tweedie(x0_hat, grad, sigmas[i]), sigmas[i], sigmas[i + 1], generator
            )
        return DLGState(x, index, (), ())

    def step(self, state, it, generator):
        settings, grid = self.settings, self.grid
        problem, prior, surrogate = self.problem, self.prior, self.surrogate
        # 1. x given sigma: a Levenberg-Marquardt-Langevin step
        x, sigma = state.x, grid[state.index]
        P = surrogate.preconditioner(sigma, self.tau)
        x = lml_step(x, surrogate.score(problem, prior, x, sigma), P, settings.step_size, generator)
        # 2. sigma given x: a flow move to a neighbouring level, or a draw from P(sigma_g | x, y)
        if self.mode == "flow":
            x, index = self.flow_move(x, state.index, generator)
        else:
            logits = settings.sigma_logits(self.level_problem, prior, self.level_surrogate, x, grid)
            index = draw_categorical(logits, generator)
        draws = state.draws
        if it >= settings.burn_in and (it - settings.burn_in + 1) % settings.thin == 0:
            draws = (*draws, self.to_draw(x, grid[index]))
        new = DLGState(x, index, draws, (*state.sigma_trace, grid[index].cpu()))
        return new, Info(grid[index], check=(x,), view={"x": x})

    def finish(self, state, generator):
        samples = torch.stack(state.draws, 1)  # (chains, num_samples, *event_shape): chain-major
        return samples.flatten(0, 1), {"chain_sigma": torch.stack(state.sigma_trace)}

    def flow_move(self, x: Tensor, index: Tensor, generator):
        """The ``"flow"`` move: propose ``g' = g +- 1`` (probability 1/2 each; off the grid is
        rejected), carry ``x`` to ``sigma_g'`` along the prior's probability-flow ODE (Heun steps,
        geometric in sigma, each changing it by at most ``FLOW_RATIO``: one step on the default grid,
        2 NFE each), accept with probability ``min(1, p_sigma'(y | x') / p_sigma(y | x))``.

        Returns the new ``(x, index)``."""
        problem, surrogate, grid = self.problem, self.surrogate, self.grid
        n = x.shape[0]
        up = uniforms((n,), generator, index.device) < 0.5
        proposed = index + torch.where(up, 1, -1)
        inside = (proposed >= 0) & (proposed < grid.numel())
        proposed = torch.where(inside, proposed, index)
        sigma, sigma_next = grid[index], grid[proposed]
        ratio = float((grid[1:] / grid[:-1]).max())  # Heun sub-steps of at most FLOW_RATIO in sigma
        substeps = max(1, math.ceil(math.log(ratio) / math.log(FLOW_RATIO) - 1e-9))
        moved = x
        for k in range(substeps):
            moved = heun_step(
                flow_velocity(self.prior.denoise),
                moved,
                sigma * (sigma_next / sigma) ** (k / substeps),
                sigma * (sigma_next / sigma) ** ((k + 1) / substeps),
            )
        log_ratio = surrogate.log_density(problem, moved, sigma_next) - surrogate.log_density(
            problem, x, sigma
        )
        u = uniforms((n,), generator, log_ratio.device)
        accepted = inside & (torch.log(u) < log_ratio.double())
        x = torch.where(per_row(accepted, x.dim()), moved, x)
        return x, torch.where(accepted, proposed, index)

    def to_draw(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Posterior PF-ODE (Heun) from each chain's ``sigma`` (shape ``(chains,)``) to the lowest level,
        then a posterior Tweedie step: the draws, shape ``(chains, *event_shape)``."""
        problem, prior, surrogate, sigma_end = self.problem, self.prior, self.surrogate, float(self.grid[0])

        def velocity(z, s):  # of the posterior's probability-flow ODE
            x0_hat, grad = surrogate.denoise_and_guide(problem, prior, z, s)
            return (z - x0_hat - per_row(s, z.dim()) ** 2 * grad) / per_row(s, z.dim())

        ratio = torch.linspace(0, 1, self.settings.ode_steps + 1, dtype=x.dtype, device=x.device)
        levels = sigma[None, :] * (sigma_end / sigma[None, :]) ** ratio[:, None]  # (steps + 1, chains)
        z = x
        for k in range(self.settings.ode_steps):
            z = heun_step(velocity, z, levels[k], levels[k + 1])
        return posterior_tweedie(*surrogate.denoise_and_guide(problem, prior, z, levels[-1]), levels[-1])
