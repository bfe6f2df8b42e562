"""Active acquisition: choose each next measurement where the posterior is least sure of its outcome.

Active Diffusion Subsampling (Nolan et al., 2024) acquires, one at a time, the candidate measurement
whose outcome the current posterior predicts worst: under a Gaussian approximation of the predictive
distribution of candidate ``k``'s outputs ``y_k = A_k x + noise`` from the posterior's particles, the
one of largest entropy ``1/2 log det(C_k + sigma^2 I)``, ``C_k`` the particles' weighted covariance of
``A_k x``. For a Gaussian prior and a single-row candidate this is the row of largest posterior
predictive variance, the classical greedy design (``docs/acquisition.md``).

A :class:`MeasurementFamily` holds the candidates of one linear forward model (pixels or patches,
k-space columns, projection angles); :func:`acquire` alternates sampling, scoring, acquiring the best
candidate (or a batch, each pick conditioned on the earlier ones) from ``y_source`` (a simulator or the
user's instrument) and updating the posterior: by reweighting the current particles with the new
measurements' likelihood (exact importance sampling) while each run keeps half its particles effective
(copies of one particle counted once), by a fresh run otherwise.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from operators import GaussianNoise, Inpainting, LinearOperator
from operators.checks import as_int
from posterior.problem import InverseProblem
from posterior.results import PosteriorSamples, measurement_digest
from posterior.utils import make_generator, progress_bar

POLICIES = ("max_entropy", "max_variance", "random", "equispaced", "variable_density")


@dataclass
class MeasurementFamily:
    """Candidate measurements of one linear forward model.

    Parameters
    ----------
    full : LinearOperator
        The forward model with every candidate acquired, ``(n, *in_shape) -> (n, *out_shape)``.
    groups : Tensor, shape (K, *full.out_shape), bool
        ``groups[k]`` marks the outputs that candidate ``k`` measures (one pixel, one k-space column,
        one projection angle); the acquired set measures the union of its candidates' outputs.
    density : Tensor, shape (K,), optional
        Relative probabilities of the candidates for the ``"variable_density"`` baseline (e.g. falling
        with the spatial frequency of a k-space column).
    positions : Tensor, shape (K, D), optional
        Where each candidate sits (a pixel's row and column; default: its index), for the
        ``"equispaced"`` baseline's distances.
    period : float, optional
        The positions wrap around with this period (k-space columns: column 0 neighbours ``K - 1``).
    """

    full: LinearOperator
    groups: Tensor
    density: Tensor | None = None
    positions: Tensor | None = None
    period: float | None = None

    def __post_init__(self):
        if not isinstance(self.full, LinearOperator):
            raise TypeError(f"full must be an operators.LinearOperator, got {type(self.full).__name__}")
        if not isinstance(self.groups, Tensor) or tuple(self.groups.shape[1:]) != tuple(self.full.out_shape):
            raise ValueError(
                f"groups must have shape (K, *full.out_shape) = (K, *{tuple(self.full.out_shape)}), got "
                f"{tuple(getattr(self.groups, 'shape', ()))}"
            )
        self.groups = self.groups.bool()
        if self.groups.shape[0] == 0 or not bool(self.groups.flatten(1).any(1).all()):
            raise ValueError("every candidate must measure at least one output (and there must be one)")
        if self.density is not None and (
            tuple(self.density.shape) != (self.size,)
            or not bool((torch.isfinite(self.density) & (self.density > 0)).all())
        ):
            raise ValueError(f"density must hold {self.size} positive numbers, one per candidate")
        if self.positions is None:
            self.positions = torch.arange(self.size, dtype=torch.float64)[:, None]
        if not isinstance(self.positions, Tensor) or tuple(self.positions.shape[:1]) != (self.size,):
            raise ValueError(
                f"positions must be a tensor of shape ({self.size}, D), got {tuple(getattr(self.positions, 'shape', ()))}"
            )
        self.positions = self.positions.double().reshape(self.size, -1)
        if self.period is not None and not float(self.period) > 0:
            raise ValueError(f"period must be positive, got {self.period}")

    @classmethod
    def pixels(cls, shape: Sequence[int]) -> MeasurementFamily:
        """Each pixel of an image (or entry of a vector) of ``shape`` is one candidate; its position is
        its index along every axis (channels included)."""
        from operators import Identity

        d = math.prod(shape)
        grid = torch.stack(torch.meshgrid(*(torch.arange(n) for n in shape), indexing="ij"), -1)
        return cls(
            Identity(tuple(shape)),
            torch.eye(d, dtype=torch.bool).reshape(d, *shape),
            positions=grid.reshape(d, -1),
        )

    @classmethod
    def rows(cls, matrix: Tensor) -> MeasurementFamily:
        """Each row ``a_k`` of ``matrix`` (shape ``(K, d)``) is one candidate ``y_k = a_k . x``."""
        from operators import Matrix

        K = matrix.shape[0]
        return cls(Matrix(matrix), torch.eye(K, dtype=torch.bool))

    @classmethod
    def mri_columns(cls, shape: Sequence[int], coils: Tensor | None = None) -> MeasurementFamily:
        """Each k-space column (phase-encoding line, all coils) of an ``(H, W)`` image is one candidate
        of :class:`operators.MRI`; the variable-density baseline draws column ``k`` with probability
        proportional to ``1 / (1 + f_k)^2``, ``f_k`` its distance to the zero frequency."""
        from operators import MRI

        H, W = (int(n) for n in shape)
        full = MRI(torch.ones(H, W, dtype=torch.bool), coils)
        groups = torch.zeros(W, *full.out_shape, dtype=torch.bool)
        for k in range(W):
            groups[k, :, :, k, :] = True
        frequency = torch.minimum(torch.arange(W), W - torch.arange(W)).double()
        return cls(full, groups, density=1 / (1 + frequency) ** 2, period=W)

    @property
    def size(self) -> int:
        return self.groups.shape[0]

    def distances(self, acquired: Sequence[int]) -> Tensor:
        """How far each candidate sits from the nearest of ``acquired``, shape ``(K,)``: Euclidean in
        ``positions``, each coordinate wrapped around ``period`` when there is one."""
        gap = (self.positions[:, None] - self.positions[list(acquired)][None]).abs()  # (K, acquired, D)
        if self.period is not None:
            gap = torch.remainder(gap, self.period)
            gap = torch.minimum(gap, self.period - gap)
        return gap.norm(dim=2).min(1).values

    def operator(self, acquired: Sequence[int]) -> LinearOperator:
        """The forward model of the acquired candidates: ``full`` with every other output zeroed."""
        if not len(acquired):
            raise ValueError("no candidate acquired yet: the forward model measures nothing")
        mask = self.groups[list(acquired)].any(0)
        return Inpainting(mask) @ self.full


def scores(
    family: MeasurementFamily,
    result: PosteriorSamples,
    sigma: float,
    policy: str = "max_entropy",
    given: Sequence[int] = (),
) -> Tensor:
    """Each candidate's score under the (weighted) posterior draws of ``result``, shape ``(K,)``:
    ``max_entropy``, ``1/2 log det(C_k + sigma^2 I)`` with ``C_k`` the draws' weighted covariance of
    candidate ``k``'s outputs; ``max_variance``, ``trace(C_k)``.

    ``given`` lists candidates chosen but not yet measured (the earlier picks of a batch): the Gaussian
    approximation is first conditioned on their outputs, so ``C_k`` is the covariance that would remain
    after measuring them (for ``max_entropy``, a batch picked so is the greedy maximiser of its joint
    entropy)."""
    if policy not in ("max_entropy", "max_variance"):
        raise ValueError(f"policy {policy!r} has no scores; use 'max_entropy' or 'max_variance'")
    return _scores(family, _spread(family, result), sigma, policy, given)


def _spread(family: MeasurementFamily, result: PosteriorSamples) -> Tensor:
    """The draws' outputs, centred and scaled by the square roots of their pooled weights, shape
    ``(n, outputs)``: their weighted covariance is ``spread^T spread``."""
    if result.log_weights is None:
        w = torch.full(
            (result.chains * result.draws,), 1.0 / (result.chains * result.draws), dtype=torch.float64
        )
    else:  # the pooled weights in float64 (runs count equally)
        w = (torch.softmax(result.log_weights.double(), 1) / result.chains).reshape(-1)
    z = family.full(result.flat()).double().flatten(1)  # (n, outputs)
    w = w.to(z.device)
    return w.sqrt()[:, None] * (z - w @ z)


def _scores(
    family: MeasurementFamily, spread: Tensor, sigma: float, policy: str, given: Sequence[int]
) -> Tensor:
    groups = family.groups.flatten(1).to(spread.device)
    if len(given):
        # conditioning on the given outputs G (noise sigma^2) turns C into spread^T K spread with
        # K = sigma^2 (spread_G spread_G^T + sigma^2 I)^-1 (Woodbury): replace spread by K^(1/2) spread,
        # K^(1/2) = I - U diag(1 - sigma / sqrt(s^2 + sigma^2)) U^T with spread_G = U diag(s) V^T
        U, s, _ = torch.linalg.svd(spread[:, groups[list(given)].any(0)], full_matrices=False)
        shrink = 1 - sigma / (s**2 + sigma**2).sqrt()
        spread = spread - U @ (shrink[:, None] * (U.T @ spread))
    sizes = groups.sum(1)
    out = torch.empty(family.size, dtype=torch.float64, device=spread.device)
    for m in sizes.unique().tolist():  # candidates with m outputs each, scored together
        ks = (sizes == m).nonzero()[:, 0]
        parts = spread[:, groups[ks].nonzero()[:, 1].reshape(len(ks), m)]  # (n, len(ks), m)
        if policy == "max_variance":
            out[ks] = (parts**2).sum((0, 2))
            continue
        covariance = torch.einsum("nki,nkj->kij", parts, parts)
        eye = torch.eye(m, dtype=spread.dtype, device=spread.device)
        out[ks] = 0.5 * torch.linalg.slogdet(covariance + sigma**2 * eye)[1]
    return out.cpu()


@dataclass
class Step:
    """One acquisition step: the candidates it acquired, the scores that chose the first of them (the
    policy's, before conditioning on the step's earlier picks; None for the baselines), how the
    posterior was updated (``"fresh"`` run or ``"reweighted"`` particles) and that update's seconds."""

    candidates: list[int]
    scores: Tensor | None
    update: str
    seconds: float


@dataclass
class Acquisition:
    """The outcome of :func:`acquire`: the acquired candidates in order (the initial ones first), the
    measurements, the posterior after the initial candidates and after each step (``posteriors[0]``,
    then ``posteriors[i]`` after the ``i``-th), and each step (``steps[0]`` is the initial run)."""

    order: list[int]
    y: Tensor  # (*full.out_shape): the acquired outputs, zeros elsewhere
    posteriors: list[PosteriorSamples]
    steps: list[Step] = field(default_factory=list)

    def mask(self, family: MeasurementFamily, count: int | None = None) -> Tensor:
        """The outputs measured by the first ``count`` acquired candidates (default: all), shape
        ``full.out_shape``."""
        return family.groups[self.order[: len(self.order) if count is None else count]].any(0)

    def posterior(self, count: int) -> PosteriorSamples:
        """The posterior given the first ``count`` acquired candidates (a step must end there)."""
        ends = list(itertools.accumulate(len(step.candidates) for step in self.steps))
        if count not in ends:
            raise ValueError(f"no step ends after {count} candidates; steps end after {ends}")
        return self.posteriors[ends.index(count)]


def acquire(
    family: MeasurementFamily,
    prior,
    sampler,
    budget: int,
    y_source: Callable[[int], Tensor],
    noise: GaussianNoise,
    *,
    policy: str = "max_entropy",
    initial: Sequence[int] = (),
    per_step: int = 1,
    num_samples: int = 64,
    chains: int = 2,
    reweight: bool = True,
    ess_threshold: float = 0.5,
    seed: int | None = None,
    progress: bool = True,
) -> Acquisition:
    """Acquire ``budget`` candidates, ``per_step`` at a time, chosen by ``policy`` from the current posterior.

    Parameters
    ----------
    family : MeasurementFamily
    prior : DiffusionPrior
    sampler : Sampler
        Any sampler; weighted particles (AFDPS, TDS, MCGdiff) are reweighted between acquisitions.
    budget : int
        Candidates to acquire after ``initial``.
    y_source : callable
        ``y_source(k)`` returns candidate ``k``'s measurement, the full output tensor
        (``full.out_shape``; only the entries of ``groups[k]`` are read): a simulator, or a callback
        that reads the user's instrument or a precomputed full acquisition.
    noise : GaussianNoise
        The measurement noise (its ``sigma`` enters the entropy).
    policy : str
        ``"max_entropy"`` (default), ``"max_variance"``, or the baselines ``"random"``,
        ``"equispaced"`` (the not-yet-acquired candidate farthest, in index, from the acquired ones)
        and ``"variable_density"`` (drawn by ``family.density``).
    initial : sequence of int
        Candidates acquired before the first choice (default: candidate 0, the zero frequency of
        ``mri_columns``).
    per_step : int
        Candidates acquired between two posterior updates (the last step takes what the budget leaves).
        A step's picks are greedy: each maximises the score conditioned on the step's earlier picks
        (:func:`scores` with ``given``), so a batch does not spend itself on correlated candidates;
        the baselines pick distinct candidates their own way.
    num_samples, chains : int
        The sampler's draws per chain and chains.
    reweight : bool
        Update weighted particles by the new measurement's likelihood while every run keeps
        ``ess_threshold`` of its particles effective (copies made by resampling counted as one particle);
        otherwise (and for unweighted samplers) run afresh.
    seed : int, optional
        The same seed gives the same acquisitions and draws on the same device.
    progress : bool
        A progress bar over the acquisitions.

    Returns
    -------
    Acquisition
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if policy == "variable_density" and family.density is None:
        raise ValueError(
            "the variable_density baseline needs family.density (e.g. MeasurementFamily.mri_columns)"
        )
    if not isinstance(noise, GaussianNoise) or noise.sigma.numel() != 1:
        raise TypeError("noise must be a GaussianNoise with one sigma (the entropy's measurement noise)")
    budget = as_int(budget, "budget", minimum=0)
    per_step = as_int(per_step, "per_step", minimum=1)
    initial = [int(k) for k in initial] or [0]
    ess_threshold = float(ess_threshold)
    if not 0 <= ess_threshold <= 1:
        raise ValueError(f"ess_threshold must lie in [0, 1], got {ess_threshold}")
    if len(set(initial)) != len(initial) or not all(0 <= k < family.size for k in initial):
        raise ValueError(f"initial must hold distinct candidates in [0, {family.size}), got {initial}")
    if len(initial) + budget > family.size:
        raise ValueError(f"{len(initial)} initial + {budget} to acquire exceed the {family.size} candidates")
    generator, _ = make_generator(seed)
    sigma = float(noise.sigma)
    order: list[int] = []
    y = torch.zeros(family.full.out_shape, dtype=prior.dtype, device=prior.device)
    posteriors, steps, runs_warned = [], [], []

    def measure(k: int) -> None:
        value = y_source(k)
        group = family.groups[k]
        if (
            not isinstance(value, Tensor)
            or tuple(value.shape) != tuple(family.full.out_shape)
            or not bool(torch.isfinite(value[group.to(value.device)]).all())
        ):
            raise ValueError(
                f"y_source({k}) must return a finite tensor of shape {tuple(family.full.out_shape)}, got "
                f"{tuple(getattr(value, 'shape', ()))}"
            )
        y[group.to(y.device)] = value[group.to(value.device)].to(y.device, y.dtype)
        order.append(k)

    def fresh() -> PosteriorSamples:
        problem = InverseProblem(family.operator(order), noise, y.clone())
        run_seed = int(torch.randint(2**31 - 1, (), generator=generator))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = sampler.sample(problem, prior, num_samples, chains=chains, seed=run_seed, progress=False)
        runs_warned.append(caught)
        return result

    try:  # the runs' warnings, once per kind, even when a later step fails
        for k in initial:
            measure(k)
        start = time.perf_counter()
        posteriors.append(fresh())
        steps.append(Step(list(initial), None, "fresh", time.perf_counter() - start))
        sizes = [min(per_step, budget - done) for done in range(0, budget, per_step)]
        for size in progress_bar(sizes, progress, f"acquire ({policy})"):
            current, before, chosen, first_scores = posteriors[-1], list(order), [], None
            spread = _spread(family, current) if policy in ("max_entropy", "max_variance") else None
            for _ in range(size):
                taken = torch.zeros(family.size, dtype=torch.bool)
                taken[before + chosen] = True
                left = (~taken).nonzero()[:, 0]
                if spread is not None:
                    found = _scores(family, spread, sigma, policy, chosen)
                    first_scores = found if first_scores is None else first_scores
                    pick = int(left[found[left].argmax()])
                elif policy == "random":
                    pick = int(left[torch.randint(len(left), (), generator=generator)])
                elif policy == "variable_density":
                    pick = int(left[torch.multinomial(family.density[left].double(), 1, generator=generator)])
                else:  # equispaced: farthest from every acquired (or already picked) candidate
                    pick = int(left[family.distances(before + chosen)[left].argmax()])
                chosen.append(pick)
            for k in chosen:
                measure(k)
            start = time.perf_counter()
            updated = (
                _reweighted(current, family, chosen, before, y, sigma, ess_threshold) if reweight else None
            )
            posteriors.append(updated if updated is not None else fresh())
            steps.append(
                Step(
                    chosen,
                    first_scores,
                    "reweighted" if updated is not None else "fresh",
                    time.perf_counter() - start,
                )
            )
    finally:
        _warn_once_per_kind(runs_warned)
    return Acquisition(order, y, posteriors, steps)


def _warn_once_per_kind(runs_warned: list[list[warnings.WarningMessage]]) -> None:
    """One warning per kind (category and text, numbers aside) for the sampler runs of an acquisition,
    saying how many runs gave it and the first one's text, instead of every run's own."""
    kinds: dict[tuple, tuple[warnings.WarningMessage, set[int]]] = {}
    for run, caught in enumerate(runs_warned):
        for w in caught:
            key = (w.category, re.sub(r"\d[\d.e+-]*", "#", str(w.message)))
            kinds.setdefault(key, (w, set()))[1].add(run)
    for (category, _), (first, runs) in kinds.items():
        warnings.warn(
            f"{len(runs)} of {len(runs_warned)} sampler runs of the acquisition warned; the first: "
            f"{first.message} (each posterior's verdict holds its own checks)",
            category,
            stacklevel=3,
        )


def _reweighted(current, family, new, before, y, sigma, ess_threshold) -> PosteriorSamples | None:
    """``current`` (the posterior given the candidates ``before``) reweighted by the likelihood of the
    outputs that the candidates ``new`` add (an output an earlier candidate measured counts once): exact
    importance sampling from the previous posterior to the next (the particles' ``log_likelihood``
    updated, and each run's ``log_evidence`` given the update's rows); None when it holds no weights or a run's ESS
    would fall below ``ess_threshold`` of its particles. Its costs (``nfe``, ``wall_time``) stay those
    of the run it came from."""
    if current.log_weights is None:
        return None
    z = family.full(current.flat()).double()
    group = (family.groups[list(new)].any(0) & ~family.groups[list(before)].any(0)).to(z.device)
    residual = z[:, group] - y.to(z.device)[group].double()  # (n, m_new)
    # the acquired problem zeroes unmeasured outputs (y = A x = 0 there, a constant factor of the
    # likelihood): measuring them replaces that constant by the Gaussian factor, a ratio exp(-r^2 / 2 s^2)
    increment = (-0.5 * (residual**2).sum(1) / sigma**2).reshape(current.log_weights.shape)
    log_weights = current.log_weights.double() + increment
    if not _distinct_ess(current.flat(), log_weights) >= ess_threshold * current.draws:
        return None
    trace = dict(current.trace)
    if "log_evidence" in trace:  # log Z_new = log Z_old + log sum_i W_i p(y_k | x_i)
        gained = torch.logsumexp(torch.log_softmax(current.log_weights.double(), 1) + increment, 1)
        last = trace["log_evidence"][-1].double() + gained.to(trace["log_evidence"].device)
        trace["log_evidence"] = torch.cat([trace["log_evidence"], last[None].to(trace["log_evidence"].dtype)])
    stats = dict(current.sample_stats)
    if "log_likelihood" in stats:
        stats["log_likelihood"] = stats["log_likelihood"] + increment.to(stats["log_likelihood"].dtype)
    return dataclasses.replace(
        current,
        log_weights=log_weights.to(current.log_weights.dtype),
        trace=trace,
        sample_stats=stats,
        measurement=measurement_digest(y),
        verdict=None,
    )


def _distinct_ess(particles: Tensor, log_weights: Tensor) -> float:
    """The smallest effective sample size over the runs, counting the copies of a particle (resampling
    makes them) as one particle with their summed weight: copies carry no more information than one.
    particles: (chains * draws, *event_shape); log_weights: (chains, draws)."""
    chains, draws = log_weights.shape
    weights = torch.softmax(log_weights, 1)
    smallest = math.inf
    for run, w in zip(particles.reshape(chains, draws, -1), weights, strict=True):
        _, which = torch.unique(run, dim=0, return_inverse=True)
        merged = torch.zeros(draws, dtype=w.dtype, device=w.device).index_add_(0, which.to(w.device), w)
        smallest = min(smallest, float(1 / (merged**2).sum()))
    return smallest
