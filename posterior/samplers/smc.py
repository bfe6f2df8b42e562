"""The sequential Monte Carlo core shared by the particle samplers (AFDPS, TDS, MCGdiff).

A call runs ``B = chains`` independent SMC runs of ``N = num_samples`` particles each, batched as one
tensor of ``B * N`` particles. Each run moves its particles down a descending noise grid
``sigma_0 > ... > sigma_K = 0`` with a sampler-specific proposal and accumulates float64 log-weights
that make the weighted particles of every run target ``p(x | y)`` exactly as ``N`` grows.

Per run the core keeps

- the effective sample size ``ESS = 1 / sum_i W_i^2`` (``W`` the normalised weights);
- resampling (``systematic`` by default, ``stratified``, ``multinomial`` or ``residual``) when
  ``ESS < ess_threshold * N`` (``ess_threshold = 1``: every step; ``0``: never); a resampled run's
  particles all get the weight ``log Z_hat``, so that ``log Z_hat = logsumexp(log w) - log N`` holds
  at every step;
- the running estimate ``log Z_hat`` of the log evidence ``log p(y)`` (unbiased in ``Z``; exact up to
  the prior chain's discretisation when the start weight is exact, i.e. for analytic priors);
- optional adaptive steps: when the ESS of any run drops by more than half in one step, the step is
  redone as two (``max_bisections`` levels at most; the rejected attempt's NFE is counted).

A sampler subclasses :class:`ParticleSampler` and implements ``setup`` (problem-specific
precomputation), ``initialize`` (weights of the reference draws) and ``propagate`` (one step from
``sigma`` to ``sigma_next``: new particles, the per-particle cache, the log-weight increment). The
reference is ``N(0, sigma_0^2 I)``; analytic priors with a ``log_prob`` add the exact correction
``log p_{sigma_0}(x) - log N(x; 0, sigma_0^2 I)``, networks use 0 (an error of order
``|E x|^2 / sigma_0^2``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from posterior.priors.integrators import ancestral_moments, sigma_grid, x0_variance
from posterior.problem import InverseProblem
from posterior.samplers.base import Sampler, one_y_per_chain
from posterior.samplers.kernel import Divergence, Info, Kernel
from posterior.samplers.linear_gaussian import isotropic_log_density
from posterior.samplers.resampling import RESAMPLING, ess, log_mean_exp, resample_indices
from posterior.samplers.settings import FRACTION, NON_NEGATIVE, RHO, at_least
from posterior.samplers.shards import Shards
from posterior.utils import per_row, randn


@dataclass
class ParticleSampler(Sampler):
    """Hyperparameters of the SMC core (shared by every particle sampler).

    Parameters
    ----------
    steps : int
        Noise levels of the EDM grid (``rho``) between the prior's ``sigma_max`` and ``sigma_min``,
        followed by ``sigma = 0``; one NFE per particle each.
    rho : float
        Exponent of the EDM grid.
    resampling : str
        ``"systematic"`` (default), ``"stratified"``, ``"multinomial"`` or ``"residual"``.
    ess_threshold : float in [0, 1]
        Resample a run when its ``ESS < ess_threshold * N``; 1 resamples at every step, 0 never.
    max_bisections : int
        Adaptive steps: how many times a step may be halved (geometrically in ``sigma``) when the ESS
        of a run falls by more than half in it. 0 (default) keeps the grid fixed.
    resample : bool
        Return an unweighted set (each run resampled once at the end, ``log_weights = None``) instead
        of the weighted particles.
    x0_uncertainty : bool, optional
        Widen the prior's ancestral kernel by the variance of ``x0`` given ``x_sigma`` that the DDPM
        step leaves out, estimated per run from the particles (no NFE): a smaller discretisation error
        at a given number of steps (``docs/smc.md``). The kernel then adapts to the population, so the
        weights are exact for the chain that the run builds as it goes, and ``log Z_hat`` is no longer
        strictly unbiased. ``None`` (default): the sampler's choice (:meth:`widens_kernel`).
    """

    steps: int = 100
    rho: float = 7.0
    resampling: str = "systematic"
    ess_threshold: float = 0.5
    max_bisections: int = 0
    resample: bool = False
    x0_uncertainty: bool | None = None

    kind = "samples"
    shardable = True
    limits = {
        "steps": at_least(2),
        "rho": RHO,
        "resampling": RESAMPLING,
        "ess_threshold": FRACTION,
        "max_bisections": NON_NEGATIVE,
    }

    # -- the hooks of a particle sampler ---------------------------------------------------------
    def setup(self, problem, prior):
        """Problem-specific precomputation and checks (before any NFE); passed to the other hooks."""
        return None

    def grid(self, ctx, prior, dtype, device) -> Tensor:
        """Descending noise levels ending with 0, shape (K + 1,)."""
        sigmas = sigma_grid(
            prior.sigma_min, prior.sigma_max, self.steps, rho=self.rho, dtype=dtype, device=device
        )
        return torch.cat([sigmas, sigmas.new_zeros(1)])

    def initialize(self, ctx, problem, prior, x: Tensor, sigma: Tensor) -> tuple[dict, Tensor]:
        """Cache (dict of per-particle tensors) and log-weight increment ``(n,)`` of reference draws ``x``."""
        raise NotImplementedError

    def propagate(
        self, ctx, problem, prior, x, cache, sigma, sigma_next, generator, spread
    ) -> tuple[Tensor, dict, Tensor]:
        """One step ``sigma -> sigma_next`` of the particles ``x`` (run-major): new particles, their cache
        and the log-weight increment ``(n,)``. ``spread``: the variance of ``x0`` given ``x_sigma`` per
        particle, ``(n,)``, that widens the prior's kernel (:meth:`moments`), or 0.

        Returns a new cache dict; the one it is given belongs to the previous state and must not change."""
        raise NotImplementedError

    def widens_kernel(self) -> bool:
        """Whether the ancestral kernel is widened by the variance of ``x0`` given ``x_sigma``
        (``x0_uncertainty``; ``None`` means no for this class, AFDPS decides otherwise)."""
        return bool(self.x0_uncertainty)

    def moments(self, x: Tensor, x0_hat: Tensor, sigma: Tensor, sigma_next: Tensor, spread: Tensor | float):
        """Mean and variance of the prior's kernel from ``sigma`` to ``sigma_next``: the ancestral step,
        widened by ``spread``, the variance of ``x0`` given ``x_sigma`` (0, or one per particle that the SMC
        core estimates per run with :func:`posterior.priors.integrators.x0_variance`; no NFE)."""
        if not torch.is_tensor(spread) and spread == 0:
            return ancestral_moments(x, x0_hat, sigma, sigma_next)
        spread = torch.as_tensor(spread, dtype=x.dtype, device=x.device).expand(x.shape[0])
        m, v = ancestral_moments(x, x0_hat, sigma, sigma_next, per_row(spread, x.dim()))
        return m, v.reshape(-1)

    def build_kernel(self, problem, prior, chains, num_samples, group=None):
        one_y_per_chain(problem, chains, num_samples, type(self).__name__)  # refuses y varying in a run
        shards = Shards(group, num_samples)
        problem = shards.rows(problem, chains)
        ctx = self.setup(problem, prior)
        sigmas = self.grid(ctx, prior, problem.y.dtype, problem.y.device)
        return SMCKernel(self, problem, prior, ctx, sigmas, shards, chains, num_samples)


@dataclass(frozen=True)
class SMCState:
    sigma: Tensor  # (): the particles' noise level
    x: Tensor  # (B * n, *event_shape): this shard's particles, run-major
    cache: dict  # name -> (B * n, ...): what the sampler keeps per particle
    log_w: Tensor  # (B, N) float64: the log-weights of every shard's particles
    records: dict  # sigma, ess, resampled, log_evidence -> tuple, one entry per step: () or (B,)
    queue: tuple  # (target sigma, bisection depth, on the grid) of each step left
    moves: Tensor | None  # this shard's generator state for its moves (None for one process: the shared one)


@dataclass
class SMCKernel(Kernel):
    """``B = chains`` SMC runs of ``N = num_samples`` particles bound to one problem: ``settings`` the
    particle sampler whose hooks move and weight them, ``ctx`` what its ``setup`` returned, ``sigmas``
    its grid ``(K + 1,)`` ending with 0, ``shards`` the split of each run's particles across processes
    (``problem`` holds this shard's rows of ``y``)."""

    settings: ParticleSampler
    problem: InverseProblem
    prior: object
    ctx: object
    sigmas: Tensor
    shards: Shards
    B: int
    N: int

    State = SMCState

    def __post_init__(self):
        self.steps = len(self.sigmas) - 1

    def init(self, generator):
        problem, prior, shards, sigma = self.problem, self.prior, self.shards, self.sigmas[0]
        particles = shards.generator(generator)  # moves; `generator` (shared by all shards) resamples
        shape = (self.B * shards.n, *prior.event_shape)
        with torch.no_grad():
            x = sigma * randn(shape, particles, problem.y.dtype, problem.y.device)
            cache, increment = self.settings.initialize(self.ctx, problem, prior, x, sigma)
            if prior.has_log_prob:  # analytic prior: exact start weight
                increment = increment + prior.log_prob(x, sigma) - isotropic_log_density(x, 0.0, sigma**2)
        log_w = shards.gather(increment.double().reshape(self.B, shards.n))
        self._check_weights(log_w, sigma)
        records = {
            "sigma": (sigma,),
            "ess": (ess(log_w) / self.N,),
            "resampled": (torch.zeros(self.B, dtype=torch.bool),),
            "log_evidence": (log_mean_exp(log_w),),
        }
        queue = tuple((s, 0, True) for s in self.sigmas[1:])
        moves = None if shards.size == 1 else particles.get_state()
        return SMCState(sigma, x, cache, log_w, records, queue, moves)

    def step(self, state, k, generator):
        settings, shards, B, N = self.settings, self.shards, self.B, self.N
        particles = generator
        if state.moves is not None:
            particles = torch.Generator(generator.device).set_state(state.moves)
        queue = state.queue
        spread = 0.0  # the variance of x0 given the particles, per particle (x0_uncertainty)
        if settings.widens_kernel():
            spread = x0_variance(state.x, state.cache["x0_hat"], state.sigma, B, shards.gather)
        while True:  # adaptive steps: halve the step while the ESS of a run falls by more than half
            target, depth, on_grid = queue[0]
            with torch.no_grad():
                x, cache, increment = settings.propagate(
                    self.ctx,
                    self.problem,
                    self.prior,
                    state.x,
                    state.cache,
                    state.sigma,
                    target,
                    particles,
                    spread,
                )
            log_w = state.log_w + shards.gather(increment.double().reshape(B, shards.n))
            if depth >= settings.max_bisections or not bool((ess(log_w) < 0.5 * ess(state.log_w)).any()):
                break
            middle = (state.sigma * target).sqrt() if float(target) > 0 else state.sigma / 2
            queue = ((middle, depth + 1, False), (target, depth + 1, on_grid), *queue[1:])
        queue = queue[1:]
        if not shards.all_finite(x):
            raise Divergence(target, "non-finite values")
        self._check_weights(log_w, target)
        current_ess, old = ess(log_w), state.records
        resampled = (
            current_ess < settings.ess_threshold * N
            if settings.ess_threshold < 1
            else torch.ones_like(current_ess, dtype=torch.bool)
        )
        records = {
            "sigma": (*old["sigma"], target),
            "ess": (*old["ess"], current_ess / N),
            "resampled": (*old["resampled"], resampled.cpu() if queue else torch.zeros(B, dtype=torch.bool)),
            "log_evidence": (*old["log_evidence"], log_mean_exp(log_w)),
        }
        if queue and bool(resampled.any()):
            x, cache, log_w = self._resample(shards, x, cache, log_w, resampled, generator)
        moves = None if state.moves is None else particles.get_state()
        new = SMCState(target, x, cache, log_w, records, queue, moves)

        def view():  # gathers the particles only for a callback
            return {"x": shards.gather_rows(x, B), "log_weights": log_w}

        return new, Info(target, view=view, advance=on_grid)

    def finished(self, state, k):
        return not state.queue

    def shown(self, state, k):  # grid steps done (sub-steps do not count)
        return self.steps - sum(on_grid for *_, on_grid in state.queue)

    def finish(self, state, generator):
        x, log_w = self.shards.gather_rows(state.x, self.B), state.log_w
        if self.settings.resample:
            everything = torch.ones(self.B, dtype=torch.bool)
            x, _, log_w = self._resample(Shards(None, self.N), x, {}, log_w, everything, generator)
        trace = {k: torch.stack([torch.as_tensor(v).cpu() for v in vs]) for k, vs in state.records.items()}
        trace["log_weights"] = None if self.settings.resample else log_w
        return x, trace

    def _resample(self, shards: Shards, x: Tensor, cache: dict, log_w: Tensor, mask: Tensor, generator):
        """Resample the runs flagged in ``mask`` (``(B,)``) on the weights of all shards ``log_w``
        (``(B, N)``); each shard keeps its own slice of the new particles. Returns local particles and
        cache, and the new weights of all shards."""
        B, N = log_w.shape
        mask = mask.to(log_w.device)
        ancestors = resample_indices(log_w, self.settings.resampling, generator)
        ancestors = torch.where(mask[:, None], ancestors, torch.arange(N, device=log_w.device))
        ancestors = shards.local(ancestors)  # (B, n): indices into each run's N particles
        flat = (ancestors + N * torch.arange(B, device=log_w.device)[:, None]).reshape(-1).to(x.device)
        log_w = torch.where(mask[:, None], log_mean_exp(log_w)[:, None].expand(B, N), log_w)
        x = shards.gather_rows(x, B)[flat]
        cache = {k: shards.gather_rows(v, B)[flat] for k, v in cache.items()}
        return x, cache, log_w

    @staticmethod
    def _check_weights(log_w: Tensor, sigma: Tensor) -> None:
        """Raise :class:`Divergence` for NaN or ``+inf`` log-weights ``(B, N)`` or a run whose every weight is 0."""
        if bool(torch.isnan(log_w).any()) or bool((log_w == math.inf).any()):
            raise Divergence(sigma, "NaN or +inf log-weights")
        if bool((log_w == -math.inf).all(-1).any()):
            raise Divergence(
                sigma,
                "every particle of a run has zero weight",
                "the likelihood is too sharp for the twist: use more steps or particles",
            )
