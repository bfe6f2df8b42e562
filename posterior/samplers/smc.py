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

from posterior.priors.integrators import sigma_grid
from posterior.samplers.base import Sampler, one_y_per_chain
from posterior.samplers.settings import FRACTION, NON_NEGATIVE, RHO, at_least
from posterior.samplers.shards import Shards
from posterior.utils import randn

RESAMPLING = ("systematic", "stratified", "multinomial", "residual")


def ess(log_weights: Tensor) -> Tensor:
    """Effective sample size ``1 / sum_i W_i^2`` of each run: ``(B, N) -> (B,)``."""
    w = torch.softmax(log_weights, dim=-1)
    return 1.0 / (w**2).sum(-1)


def log_mean_exp(log_weights: Tensor) -> Tensor:
    """``log(mean_i exp(log_w_i))`` of each run: ``(B, N) -> (B,)``."""
    return torch.logsumexp(log_weights, dim=-1) - math.log(log_weights.shape[-1])


def resample_indices(log_weights: Tensor, scheme: str, generator: torch.Generator | None) -> Tensor:
    """Ancestor indices ``(B, N)`` (within each run) drawn according to the normalised weights.

    ``systematic``: one uniform per run, ``u_i = (U + i) / N``; ``stratified``: ``u_i = (U_i + i) / N``;
    ``multinomial``: ``N`` independent draws; ``residual``: ``floor(N W_i)`` copies of each particle,
    the remaining ``R`` drawn multinomially from the residual weights. All are unbiased.
    """
    B, N = log_weights.shape
    W = torch.softmax(log_weights.double(), dim=-1)
    device = W.device
    source = generator.device if generator is not None else device

    def uniform(shape):
        return torch.rand(shape, generator=generator, dtype=torch.float64, device=source).to(device)

    if scheme in ("systematic", "stratified"):
        offsets = uniform((B, 1) if scheme == "systematic" else (B, N))
        u = (offsets + torch.arange(N, dtype=torch.float64, device=device)) / N
        cdf = torch.cumsum(W, dim=-1)
        cdf[:, -1] = 1.0  # round-off must not push u past the last particle
        return torch.searchsorted(cdf, u).clamp(max=N - 1)
    if scheme == "multinomial":
        return torch.multinomial(W.cpu(), N, replacement=True, generator=_cpu(generator)).to(device)
    if scheme == "residual":
        copies = torch.floor(N * W)
        remaining = N - copies.sum(-1)  # (B,)
        residual = N * W - copies
        has_rest = remaining > 0
        residual[~has_rest] = 1.0  # placeholder rows, their draws are discarded
        draws = torch.multinomial(residual.cpu(), N, replacement=True, generator=_cpu(generator)).to(device)
        keep = torch.arange(N, device=device) < remaining[:, None]
        copies = copies + torch.zeros_like(W).scatter_add_(1, draws, keep.double())
        flat = torch.repeat_interleave(torch.arange(B * N, device=device), copies.reshape(-1).long())
        return (flat % N).reshape(B, N)
    raise ValueError(f"resampling must be one of {RESAMPLING}, got {scheme!r}")


def _cpu(generator: torch.Generator | None) -> torch.Generator | None:
    """``torch.multinomial`` on CPU weights needs a CPU generator; a CUDA one is reseeded from it."""
    if generator is None or generator.device.type == "cpu":
        return generator
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator().manual_seed(seed)


def gaussian_log_density(x: Tensor, mean: Tensor, var: float | Tensor) -> Tensor:
    """``log N(x; mean, var I)`` summed over all but the first dimension: ``(n, ...) -> (n,)``."""
    var = torch.as_tensor(var, dtype=x.dtype, device=x.device)
    d = x[0].numel()
    sq = ((x - mean) ** 2).reshape(x.shape[0], -1).sum(1)
    return -0.5 * sq / var - 0.5 * d * torch.log(2 * math.pi * var)


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
    """

    steps: int = 100
    rho: float = 7.0
    resampling: str = "systematic"
    ess_threshold: float = 0.5
    max_bisections: int = 0
    resample: bool = False

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
        self, ctx, problem, prior, x, cache, sigma, sigma_next, generator
    ) -> tuple[Tensor, dict, Tensor]:
        """One step ``sigma -> sigma_next``: new particles, their cache and the log-weight increment ``(n,)``."""
        raise NotImplementedError

    # -- the loop ------------------------------------------------------------------------------------
    def run(self, problem, prior, chains, num_samples, generator, loop):
        B, N = chains, num_samples
        name = type(self).__name__
        one_y_per_chain(problem, B, N, name)  # validates; the particles keep their rows of y
        shards = Shards(loop.group, N)
        problem = shards.rows(problem, B)
        particles = shards.generator(generator)  # moves; `generator` (shared by all shards) resamples
        dtype, device = problem.y.dtype, problem.y.device
        ctx = self.setup(problem, prior)
        sigmas = self.grid(ctx, prior, dtype, device)

        def initial():
            with torch.no_grad():
                x = sigmas[0] * randn((B * shards.n, *prior.event_shape), particles, dtype, device)
                cache, increment = self.initialize(ctx, problem, prior, x, sigmas[0])
                if hasattr(prior, "log_prob"):  # analytic prior: exact start weight
                    increment = (
                        increment
                        + prior.log_prob(x, sigmas[0])
                        - gaussian_log_density(x, 0.0, sigmas[0] ** 2)
                    )
            log_w = increment.double().reshape(B, shards.n)
            all_w = shards.gather(log_w)
            self._check_weights(all_w, loop, 0, sigmas[0])
            records = {
                "sigma": [sigmas[0]],
                "ess": [ess(all_w) / N],
                "resampled": [torch.zeros(B, dtype=torch.bool)],
                "log_evidence": [log_mean_exp(all_w)],
            }
            queue = [(s, 0, True) for s in sigmas[1:]]  # (target, depth, on the grid)
            return {
                "sigma": sigmas[0],
                "x": x,
                "cache": cache,
                "log_w": log_w,
                "records": records,
                "queue": queue,
            }

        total = len(sigmas) - 1
        start, state = loop.resume(  # start counts sub-steps; the bar shows grid steps
            initial, total, lambda _, st: total - sum(on_grid for *_, on_grid in st["queue"])
        )
        sigma, x, cache, log_w, records, queue = (
            state[k] for k in ("sigma", "x", "cache", "log_w", "records", "queue")
        )
        all_w = shards.gather(log_w)
        while queue:
            target, depth, on_grid = queue[0]
            with torch.no_grad():
                x_new, cache_new, increment = self.propagate(
                    ctx, problem, prior, x, cache, sigma, target, particles
                )
            log_w_new = log_w + increment.double().reshape(B, shards.n)
            all_w_new = shards.gather(log_w_new)
            if depth < self.max_bisections and bool((ess(all_w_new) < 0.5 * ess(all_w)).any()):
                middle = (sigma * target).sqrt() if float(target) > 0 else sigma / 2
                queue = [(middle, depth + 1, False), (target, depth + 1, on_grid), *queue[1:]]
                continue
            queue = queue[1:]
            step = len(records["sigma"]) - 1  # 0-based, counting sub-steps
            if not shards.all_finite(x_new):
                loop.fail(step, target, "non-finite values")
            self._check_weights(all_w_new, loop, step, target)
            sigma, x, cache, log_w, all_w = target, x_new, cache_new, log_w_new, all_w_new
            current_ess = ess(all_w)
            records["log_evidence"].append(log_mean_exp(all_w))
            records["ess"].append(current_ess / N)
            records["sigma"].append(sigma)
            mask = (
                current_ess < self.ess_threshold * N
                if self.ess_threshold < 1
                else torch.ones_like(current_ess, dtype=torch.bool)
            )
            if queue and bool(mask.any()):
                x, cache, log_w = self._resample(shards, x, cache, all_w, mask, generator)
                all_w = shards.gather(log_w)
            records["resampled"].append(mask.cpu() if queue else torch.zeros(B, dtype=torch.bool))
            state = {
                "sigma": sigma,
                "x": x,
                "cache": cache,
                "log_w": log_w,
                "records": records,
                "queue": queue,
            }
            view = {"x": shards.gather_rows(x, B), "log_weights": all_w} if loop.callback else None
            loop.done(step, sigma, state, view=view, advance=on_grid)
        x = shards.gather_rows(x, B)
        if self.resample:
            one = Shards(None, N)
            x, _, all_w = self._resample(one, x, {}, all_w, torch.ones(B, dtype=torch.bool), generator)
        trace = {k: torch.stack([torch.as_tensor(v).cpu() for v in values]) for k, values in records.items()}
        trace["log_weights"] = None if self.resample else all_w
        return x, trace

    def _resample(self, shards: Shards, x: Tensor, cache: dict, all_w: Tensor, mask: Tensor, generator):
        """Resample the runs flagged in ``mask`` on the weights of all shards ``all_w`` (``(B, N)``); each
        shard keeps its own slice of the new particles. Returns local particles, cache and log-weights."""
        B, N = all_w.shape
        mask = mask.to(all_w.device)
        ancestors = resample_indices(all_w, self.resampling, generator)
        ancestors = torch.where(mask[:, None], ancestors, torch.arange(N, device=all_w.device))
        ancestors = shards.local(ancestors)  # (B, n): indices into each run's N particles
        flat = (ancestors + N * torch.arange(B, device=all_w.device)[:, None]).reshape(-1).to(x.device)
        all_w = torch.where(mask[:, None], log_mean_exp(all_w)[:, None].expand(B, N), all_w)
        x = shards.gather_rows(x, B)[flat]
        cache = {k: shards.gather_rows(v, B)[flat] for k, v in cache.items()}
        return x, cache, shards.local(all_w)

    @staticmethod
    def _check_weights(log_w: Tensor, loop, step: int, sigma: Tensor) -> None:
        if bool(torch.isnan(log_w).any()) or bool((log_w == math.inf).any()):
            loop.fail(step, sigma, "NaN or +inf log-weights")
        if bool((log_w == -math.inf).all(-1).any()):
            loop.fail(
                step,
                sigma,
                "every particle of a run has zero weight",
                "the likelihood is too sharp for the twist: use more steps or particles",
            )
