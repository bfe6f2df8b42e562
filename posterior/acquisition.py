"""Active acquisition: choose each next measurement where the posterior is least sure of its outcome.

Active Diffusion Subsampling (Nolan et al., 2024) acquires, one at a time, the candidate measurement
whose outcome the current posterior predicts worst: under a Gaussian approximation of the predictive
distribution of candidate ``k``'s outputs ``y_k = A_k x + noise`` from the posterior's particles, the
one of largest entropy ``1/2 log det(C_k + sigma^2 I)``, ``C_k`` the particles' weighted covariance of
``A_k x``. For a Gaussian prior and a single-row candidate this is the row of largest posterior
predictive variance, the classical greedy design (``docs/acquisition.md``).

A :class:`MeasurementFamily` holds the candidates of one linear forward model (pixels or patches,
k-space columns, projection angles); :func:`acquire` alternates sampling, scoring, acquiring the best
candidate from ``y_source`` (a simulator or the user's instrument) and updating the posterior: by
reweighting the current particles with the new measurement's likelihood (exact importance sampling)
while each run keeps half its particles effective, by a fresh run otherwise.
"""

from __future__ import annotations

import dataclasses
import math
import time
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
    circular : bool
        Whether the candidates' indices wrap around (k-space columns: 0 neighbours ``K - 1``), for the
        ``"equispaced"`` baseline's distances.
    """

    full: LinearOperator
    groups: Tensor
    density: Tensor | None = None
    circular: bool = False

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

    @classmethod
    def pixels(cls, shape: Sequence[int]) -> MeasurementFamily:
        """Each pixel of an image (or entry of a vector) of ``shape`` is one candidate."""
        from operators import Identity

        d = math.prod(shape)
        return cls(Identity(tuple(shape)), torch.eye(d, dtype=torch.bool).reshape(d, *shape))

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
        return cls(full, groups, density=1 / (1 + frequency) ** 2, circular=True)

    @property
    def size(self) -> int:
        return self.groups.shape[0]

    def distance(self, i: int, j: int) -> int:
        """How far apart candidates ``i`` and ``j`` are in index (around the circle when ``circular``)."""
        gap = abs(i - j)
        return min(gap, self.size - gap) if self.circular else gap

    def operator(self, acquired: Sequence[int]) -> LinearOperator:
        """The forward model of the acquired candidates: ``full`` with every other output zeroed."""
        if not len(acquired):
            raise ValueError("no candidate acquired yet: the forward model measures nothing")
        mask = self.groups[list(acquired)].any(0)
        return Inpainting(mask) @ self.full


def scores(
    family: MeasurementFamily, result: PosteriorSamples, sigma: float, policy: str = "max_entropy"
) -> Tensor:
    """Each candidate's score under the (weighted) posterior draws of ``result``, shape ``(K,)``:
    ``max_entropy``, ``1/2 log det(C_k + sigma^2 I)`` with ``C_k`` the draws' weighted covariance of
    candidate ``k``'s outputs; ``max_variance``, ``trace(C_k)``."""
    if policy not in ("max_entropy", "max_variance"):
        raise ValueError(f"policy {policy!r} has no scores; use 'max_entropy' or 'max_variance'")
    if result.log_weights is None:
        w = torch.full(
            (result.chains * result.draws,), 1.0 / (result.chains * result.draws), dtype=torch.float64
        )
    else:  # the pooled weights in float64 (runs count equally)
        w = (torch.softmax(result.log_weights.double(), 1) / result.chains).reshape(-1)
    z = family.full(result.flat()).double().flatten(1)  # (n, outputs)
    w = w.to(z.device)
    centred = z - w @ z
    groups = family.groups.flatten(1).to(z.device)
    out = []
    for k in range(family.size):
        part = centred[:, groups[k]]  # (n, m_k)
        if policy == "max_variance":
            out.append((w @ part**2).sum())
            continue
        covariance = (w[:, None] * part).T @ part
        eye = torch.eye(part.shape[1], dtype=part.dtype, device=part.device)
        out.append(0.5 * torch.linalg.slogdet(covariance + sigma**2 * eye)[1])
    return torch.stack(out).cpu()


@dataclass
class Step:
    """One acquisition: the candidate, the scores that chose it, how the posterior was updated
    (``"fresh"`` run or ``"reweighted"`` particles) and that update's seconds."""

    candidate: int
    scores: Tensor | None
    update: str
    seconds: float


@dataclass
class Acquisition:
    """The outcome of :func:`acquire`: the acquired candidates in order (the initial ones first), the
    measurements, the posterior after the initial candidates and after each choice
    (``posteriors[0]``, then ``posteriors[i]`` after the ``i``-th), and each step (``steps[0]`` is the
    initial run)."""

    order: list[int]
    y: Tensor  # (*full.out_shape): the acquired outputs, zeros elsewhere
    posteriors: list[PosteriorSamples]
    steps: list[Step] = field(default_factory=list)

    def mask(self, family: MeasurementFamily) -> Tensor:
        """The outputs measured so far, shape ``full.out_shape``."""
        return family.groups[self.order].any(0)


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
    num_samples: int = 64,
    chains: int = 2,
    reweight: bool = True,
    ess_threshold: float = 0.5,
    seed: int | None = None,
    progress: bool = True,
) -> Acquisition:
    """Acquire ``budget`` candidates one at a time, each chosen by ``policy`` from the current posterior.

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
    num_samples, chains : int
        The sampler's draws per chain and chains.
    reweight : bool
        Update weighted particles by the new measurement's likelihood while every run keeps
        ``ess_threshold`` of its particles effective; otherwise (and for unweighted samplers) run afresh.
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
    posteriors, steps = [], []

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
        return sampler.sample(problem, prior, num_samples, chains=chains, seed=run_seed, progress=False)

    for k in initial:
        measure(k)
    start = time.perf_counter()
    posteriors.append(fresh())
    steps.append(Step(initial[-1], None, "fresh", time.perf_counter() - start))
    for _ in progress_bar(range(budget), progress, f"acquire ({policy})"):
        current = posteriors[-1]
        left = [k for k in range(family.size) if k not in order]
        if policy in ("max_entropy", "max_variance"):
            all_scores = scores(family, current, sigma, policy)
            chosen = max(left, key=lambda k: float(all_scores[k]))
        elif policy == "random":
            all_scores = None
            chosen = left[int(torch.randint(len(left), (), generator=generator))]
        elif policy == "variable_density":
            all_scores = None
            chosen = left[int(torch.multinomial(family.density[left].double(), 1, generator=generator))]
        else:  # equispaced: farthest in index from every acquired candidate
            all_scores = None
            chosen = max(left, key=lambda k: min(family.distance(k, a) for a in order))
        measure(chosen)
        start = time.perf_counter()
        updated = _reweighted(current, family, chosen, y, sigma, ess_threshold) if reweight else None
        posteriors.append(updated if updated is not None else fresh())
        steps.append(
            Step(
                chosen,
                all_scores,
                "reweighted" if updated is not None else "fresh",
                time.perf_counter() - start,
            )
        )
    return Acquisition(order, y, posteriors, steps)


def _reweighted(current, family, k, y, sigma, ess_threshold) -> PosteriorSamples | None:
    """``current`` reweighted by the likelihood of candidate ``k``'s outputs: exact importance sampling
    from the previous posterior to the next (the particles' ``log_likelihood`` updated, and each run's
    ``log_evidence`` given one more row, the update's); None when it holds no weights or a run's ESS
    would fall below ``ess_threshold`` of its particles. Its costs (``nfe``, ``wall_time``) stay those
    of the run it came from."""
    if current.log_weights is None:
        return None
    z = family.full(current.flat()).double()
    group = family.groups[k].to(z.device)
    residual = z[:, group] - y.to(z.device)[group].double()  # (n, m_k)
    # the acquired problem zeroes unmeasured outputs (y = A x = 0 there, a constant factor of the
    # likelihood): measuring them replaces that constant by the Gaussian factor, a ratio exp(-r^2 / 2 s^2)
    increment = (-0.5 * (residual**2).sum(1) / sigma**2).reshape(current.log_weights.shape)
    log_weights = current.log_weights.double() + increment
    if float((1 / (torch.softmax(log_weights, 1) ** 2).sum(1)).min()) < ess_threshold * current.draws:
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
