"""Diagnostics of a sampler's output: convergence of Markov chains, health of importance weights, cost.

- :func:`convergence`: rank-normalised split R-hat and bulk/tail ESS per coordinate (pixel) from
  ArviZ, the worst coordinates, the fraction above thresholds, and warnings in the style of Stan and
  PyMC: R-hat above 1.01, or an ESS below 100 per chain (Vehtari et al. 2021, "Rank-normalization,
  folding, and localization", Bayesian Analysis 16(2)).
- :func:`weights`: for SMC results, each run's smallest ESS along the grid, its number of
  resamplings, the final largest normalised weight, and the spread of the runs' log-evidence.
- :func:`cost`: NFE, gradient evaluations and time, per draw.
- :func:`calibrate`: simulation-based calibration (Talts et al. 2018, arXiv:1804.06788), the
  coverage of central credible intervals and of highest-density regions, and TARP (Lemos et al., ICML
  2023, arXiv:2302.03026), each tested with :func:`ecdf_test` (Säilynoja et al. 2022), over many
  ``(x*, y)`` pairs drawn from the prior and the noise model, all solved in one batched call.

R-hat and ESS compare chains with each other. Chains that agree can still all be wrong (the quickstart
shows four RED-Diff fits with R-hat 1.00 far from the exact posterior): only exact posteriors or
calibration tests say whether a sampler is right.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from posterior.problem import InverseProblem
from posterior.results import PosteriorSamples, Verdict, agreement


class PosteriorWarning(UserWarning):
    """A run whose result should not be read as it is (the base of the warnings below)."""


class ConvergenceWarning(PosteriorWarning):
    """Chains that disagree (R-hat), carry too little information (ESS), or SMC runs whose weights
    degenerate or whose estimates disagree beyond their standard errors."""


class DivergenceWarning(PosteriorWarning):
    """Draws far outside the prior's range, or an optimisation that has not settled."""


class MeasurementWarning(PosteriorWarning):
    """A measurement that the prior predictive cannot explain (e.g. wrong units or scale)."""


RANGE_FACTOR = 10.0  # draws farther than this many prior scales from the prior mean have diverged
MIN_NODES = 4  # fewer effective quadrature nodes of the unknown parameters make their quantiles steps
PREDICTIVE_FACTOR = 30.0  # a measurement this many predictive spreads from the prior predictive mean
APPROXIMATE_KINDS = {
    "approximate": "an approximate sampler (guided, biased at any budget)",
    "variational": "a variational fit",
    "variational-modes": "variational modes (independent fits, not posterior draws)",
}


def rms(scale: float | Tensor) -> float:
    """The root mean square of a prior's scale (:meth:`DiffusionPrior.location_scale`): a float as it
    is, or over the coordinates of a per-coordinate tensor."""
    return float(torch.as_tensor(scale, dtype=torch.float64).pow(2).mean().sqrt())


def out_of_range(x: Tensor, center: Tensor, scale: float | Tensor, sigma: float | Tensor = 0.0) -> float:
    """The largest ``|x - center|`` over draws and coordinates, in units of ``sqrt(scale^2 + sigma^2)``
    (``scale`` a float or one per coordinate, floored at 1% of its root mean square; ``sigma`` the noise
    level of ``x``, the largest when one per draw); :data:`RANGE_FACTOR` and above is out of the prior's
    range."""
    sigma = float(torch.as_tensor(sigma).max())
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device).clamp_min(0.01 * rms(scale))
    unit = (scale**2 + sigma**2).sqrt()
    if not bool((unit > 0).all()):
        return math.inf
    return float(((x.detach() - center.to(x.device, x.dtype)).abs() / unit).max())


def check_measurement(
    problem: InverseProblem, prior, who: str = "sampler", warn: bool = True, stacklevel: int = 2
) -> float:
    """How far ``y`` lies from the prior predictive, before any sampling: ``t = RMS(y - m) / s``, with
    ``m`` and ``s^2`` the mean and the per-element variance (averaged over elements) of ``A(x) + noise``
    over 16 probes ``x``: exact prior draws for analytic priors, else ``mean + scale z`` of
    :meth:`DiffusionPrior.location_scale` (independent coordinates: a prior with strong correlations
    seen through an averaging operator looks narrower than it is). A fixed seed, no NFE. A measurement
    ``t > PREDICTIVE_FACTOR`` predictive spreads away (per measurement when ``y`` is batched: the
    largest) warns with :class:`MeasurementWarning`, as does a forward model that is not finite on the
    probes (then ``t`` is NaN). Returns ``t``."""
    y = problem.y if problem.batched else problem.y.unsqueeze(0)
    if prior.has_posterior:  # analytic: exact draws carry the correlations
        probes = prior.sample(16, seed=0)
    else:
        center, scale = prior.location_scale()
        z = torch.randn((16, *prior.event_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        probes = center + scale * z.to(dtype=center.dtype, device=center.device)
    with torch.no_grad():
        predicted = problem.operator(probes.to(dtype=y.dtype, device=y.device))
        bad = int((~torch.isfinite(predicted.reshape(16, -1))).any(1).sum())
        if bad:
            if warn:
                warnings.warn(
                    f"{who}: the forward model returns non-finite values on {bad} of 16 prior draws: the "
                    "sampler will stop where it meets them; check the operator's domain",
                    MeasurementWarning,
                    stacklevel=stacklevel,
                )
            return math.nan
        try:
            predicted = problem.noise.sample(predicted, torch.Generator(y.device).manual_seed(1))
        except (ValueError, RuntimeError, NotImplementedError):  # e.g. Poisson rates of negative probes
            pass
    mean = predicted.mean(0)
    spread = predicted.double().var(0).mean().sqrt().clamp_min(torch.finfo(torch.float64).tiny)
    distance = ((y - mean).double().reshape(y.shape[0], -1) ** 2).mean(1).sqrt()
    t = float(distance.max() / spread)
    if warn and not t <= PREDICTIVE_FACTOR:  # also NaN
        warnings.warn(
            f"{who}: the measurement lies {t:.3g} prior-predictive spreads from what the prior and the "
            f"forward model predict (more than {PREDICTIVE_FACTOR:g}): check y's units and scale, the "
            "operator and the noise model; the draws will be prior-like or meaningless",
            MeasurementWarning,
            stacklevel=stacklevel,
        )
    return t


def check(
    result: PosteriorSamples,
    *,
    prior=None,
    departure: tuple[int, float] | None = None,
    hint: str = "lower the step size or use more steps",
    problems: Sequence[str] = (),
    warn: bool = True,
    stacklevel: int = 2,
) -> Verdict:
    """The checks that fit the kind of sampler, and one verdict line (also set as ``result.verdict``).

    The checks that compare chains run only when they answered one measurement
    (``result.shared_measurement``).

    - Markov chains (``kind="mcmc"``): rank-normalised R-hat and bulk/tail ESS (:func:`convergence`),
      when 2+ chains of 4+ draws share one measurement.
    - Weighted SMC runs: each run's final Kish ESS (fails below 10 particles or 1% of them), the spread
      of the runs' log-evidence (fails above 1), and, for 2+ runs on one measurement, their agreement
      (:func:`posterior.results.agreement`): fails when the chi-square test of the runs' means against
      their own standard errors rejects at level 0.001 after Bonferroni over coordinates. No R-hat.
    - Approximate samplers (``kind`` ``"approximate"``, ``"variational"``, ``"variational-modes"``):
      noted in the line: their spread is not a calibrated posterior.
    - Every sampler, given ``prior``: draws farther than :data:`RANGE_FACTOR` prior scales from the
      prior mean (:func:`out_of_range`) have diverged; ``departure = (step, sigma)`` is where the run
      first left the range, ``hint`` what to change.
    - A ``trace["unsettled"]`` entry (RED-Diff's tail check) is a failure.
    - Continuous unknown parameters (``trace["effective_nodes"]``, :func:`posterior.sample_with_parameters`):
      the Kish ESS of each chain's final round of nodes fails below :data:`MIN_NODES`.
    - ``problems``: failures the caller found (each becomes a :class:`ConvergenceWarning`).

    Failures warn (:class:`ConvergenceWarning` or :class:`DivergenceWarning`) when ``warn``,
    ``stacklevel`` frames up.
    """
    from scipy.stats import chi2

    name = result.sampler or "sampler"
    shared_measurement = result.shared_measurement
    failures: list[tuple[type, str]] = []
    checks: dict = {}
    said: list[str] = []
    if prior is not None and not rms(prior.location_scale()[1]) > 0:
        said.append("no range check (the prior's estimated scale is 0: an untrained network?)")
    elif prior is not None:
        center, scale = prior.location_scale()
        reach = out_of_range(result.samples, center, scale)
        scale = rms(scale)
        checks["range"] = reach
        if not reach < RANGE_FACTOR:
            where = f" (the run first left the range at step {departure[0]}, sigma={departure[1]:.3g})" if departure else ""
            failures.append(
                (
                    DivergenceWarning,
                    f"draws reach {reach:.3g} prior standard deviations (RMS {scale:.3g}) from the prior mean, beyond "
                    f"{RANGE_FACTOR:g}: the run diverged{where}; {hint}",
                )
            )
    if result.kind in APPROXIMATE_KINDS:
        said.append(f"{APPROXIMATE_KINDS[result.kind]}: its spread is not a calibrated posterior")
    if "unsettled" in result.trace:
        checks["unsettled"] = float(result.trace["unsettled"])
        if checks["unsettled"] > 1:
            failures.append(
                (
                    DivergenceWarning,
                    f"the fit had not settled over its averaging tail (drift {checks['unsettled']:.2g} of "
                    "its tolerance): use more steps",
                )
            )
    if result.log_weights is not None:
        health = weights(result)
        ess = health["final_ess_fraction"] * result.draws
        checks["final_ess"] = [round(float(v), 1) for v in ess]
        degenerate = int((ess < max(10.0, 0.01 * result.draws)).sum())
        said.append(f"{result.chains} weighted runs, final ESS {float(ess.min()):.0f}-{float(ess.max()):.0f} of {result.draws}")
        if degenerate:
            failures.append(
                (
                    ConvergenceWarning,
                    f"{degenerate} of {result.chains} runs end with degenerate weights (ESS below 10 "
                    "particles or 1%): use more particles",
                )
            )
        if "log_evidence_std" in health and result.chains >= 2 and shared_measurement:
            checks["log_evidence_std"] = health["log_evidence_std"]
            if health["log_evidence_std"] > 1:
                failures.append(
                    (
                        ConvergenceWarning,
                        f"the runs' log-evidence estimates spread by {health['log_evidence_std']:.2g} "
                        "(> 1): single runs are far from their limit, and log p(y) is unreliable; use more "
                        + (
                            "nodes, particles or steps"
                            if "node_weights" in result.trace
                            else "particles or steps"
                        ),
                    )
                )
        if result.chains >= 2 and shared_measurement:
            a = agreement(result.run_means().double(), result.run_standard_errors().double()).reshape(-1)
            dof = result.chains - 1
            adjusted = np.minimum(1.0, chi2.sf(a.cpu().numpy() ** 2 * dof, dof) * a.numel())  # Bonferroni
            checks["agreement_max"], checks["agreement_pvalue"] = float(a.max()), float(adjusted.min())
            if adjusted.min() >= 1e-3:
                said.append(f"the runs agree within their standard errors (largest ratio {float(a.max()):.2f})")
            else:
                failures.append(
                    (
                        ConvergenceWarning,
                        f"the runs disagree beyond their own standard errors on {int((adjusted < 1e-3).sum())} of "
                        f"{adjusted.size} coordinates (largest ratio {float(a.max()):.3g}): each run's error is larger than "
                        "it reports (resampled particles share ancestors, or runs settle in different modes); "
                        "pool more runs, and read mcse_mean of PosteriorSamples.summary(), which uses their spread",
                    )
                )
    if "effective_nodes" in result.trace:  # continuous unknown parameters (posterior.sample_with_parameters)
        per_round = result.trace["effective_nodes"].double()
        nodes = per_round[:, -1]  # each chain's final round
        checks["parameter_nodes_effective"] = [round(float(v), 1) for v in nodes]
        said.append(f"parameters on {float(nodes.min()):.1f}-{float(nodes.max()):.1f} effective nodes")
        if float(nodes.min()) < MIN_NODES:
            failures.append(
                (
                    ConvergenceWarning,
                    f"the posterior of the unknown parameters rests on {float(nodes.min()):.1f} effective "
                    f"nodes (< {MIN_NODES}) in a chain: its intervals are coarse; use more nodes or refinement rounds",
                )
            )
    failures += [(ConvergenceWarning, message) for message in problems]
    if result.log_weights is None and result.kind == "mcmc":
        if result.chains >= 2 and result.draws >= 4 and shared_measurement:
            report = convergence(result, warn=False)
            checks["rhat_max"], checks["ess_bulk_min"] = report.rhat_max, report.ess_bulk_min
            said.append(f"R-hat max {report.rhat_max:.3f}, bulk ESS min {report.ess_bulk_min:.0f}")
            failures += [(ConvergenceWarning, p) for p in report.problems]
        else:
            said.append("R-hat needs 2+ chains of 4+ draws on one measurement")
    problems = [message for _, message in failures]
    status = "OK" if not problems else f"{len(problems)} check{'s' * (len(problems) > 1)} failed"
    line = f"{name}: {status}; " + "; ".join(part for part in said if part)
    verdict = Verdict(ok=not problems, line=line.rstrip("; "), problems=problems, checks=checks)
    if warn:
        for category, message in failures:
            warnings.warn(f"{name}: {message}", category, stacklevel=stacklevel)
    result.verdict = verdict
    return verdict


@dataclass
class ConvergenceReport:
    """Per-coordinate R-hat and ESS, with summaries.

    Attributes
    ----------
    rhat, ess_bulk, ess_tail : Tensor, shape event_shape
    worst : list of tuple
        Up to five coordinates with the largest R-hat, as index tuples into ``event_shape``.
    problems : list of str
        The warnings' texts (empty when the chains look converged).
    """

    rhat: Tensor
    ess_bulk: Tensor
    ess_tail: Tensor
    rhat_threshold: float
    ess_threshold: float
    worst: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    @property
    def rhat_max(self) -> float:
        return float(self.rhat.max())

    @property
    def fraction_rhat_above(self) -> float:
        """Fraction of coordinates with R-hat above the threshold."""
        return float((self.rhat > self.rhat_threshold).double().mean())

    @property
    def ess_bulk_min(self) -> float:
        return float(self.ess_bulk.min())

    @property
    def ess_tail_min(self) -> float:
        return float(self.ess_tail.min())

    def __str__(self) -> str:
        lines = [
            f"R-hat: max {self.rhat_max:.3f}, {100 * self.fraction_rhat_above:.1f}% of coordinates above "
            f"{self.rhat_threshold}",
            f"ESS: smallest bulk {self.ess_bulk_min:.0f}, smallest tail {self.ess_tail_min:.0f} "
            f"(threshold {self.ess_threshold:.0f})",
            f"worst coordinates (largest R-hat): {self.worst}",
        ]
        return "\n".join(lines + [f"warning: {p}" for p in self.problems])


def convergence(
    result: PosteriorSamples, *, rhat_threshold: float = 1.01, ess_per_chain: float = 100.0, warn: bool = True
) -> ConvergenceReport:
    """R-hat and ESS of every coordinate of a multi-chain result, and warnings where they fail.

    Parameters
    ----------
    result : PosteriorSamples
        At least 2 chains of at least 4 draws; weighted (SMC) results are refused: their chains are
        independent runs of weighted particles, not Markov chains (see :func:`weights`).
    rhat_threshold : float
        Warn when any R-hat exceeds it (1.01, as Stan and ArviZ recommend).
    ess_per_chain : float
        Warn when a bulk or tail ESS is below ``ess_per_chain * chains``.
    warn : bool
        Emit :class:`ConvergenceWarning` for each problem found.
    """
    import arviz_stats as azs

    if result.log_weights is not None:
        raise ValueError(
            "convergence() is for Markov chains; for weighted SMC runs use diagnostics.weights()"
        )
    if result.chains < 2 or result.draws < 4:
        raise ValueError(f"need >= 2 chains of >= 4 draws, got {result.chains} chains of {result.draws}")
    tree = result.to_arviz()

    def stat(values) -> Tensor:
        return torch.as_tensor(values["x"].values, dtype=torch.float64)

    rhat = stat(azs.rhat(tree, var_names=["x"]))
    ess_bulk = stat(azs.ess(tree, var_names=["x"], method="bulk"))
    ess_tail = stat(azs.ess(tree, var_names=["x"], method="tail"))
    ess_threshold = ess_per_chain * result.chains
    order = torch.argsort(rhat.reshape(-1), descending=True)[:5]
    worst = [tuple(int(i) for i in torch.unravel_index(k, rhat.shape)) for k in order]
    report = ConvergenceReport(rhat, ess_bulk, ess_tail, rhat_threshold, ess_threshold, worst)
    if report.rhat_max > rhat_threshold:
        report.problems.append(
            f"R-hat up to {report.rhat_max:.3f} (> {rhat_threshold}) on {100 * report.fraction_rhat_above:.1f}% "
            "of coordinates: the chains disagree; run longer or check for chains stuck in different modes"
        )
    for name, value in (("bulk", report.ess_bulk_min), ("tail", report.ess_tail_min)):
        if value < ess_threshold:
            report.problems.append(
                f"{name} ESS as low as {value:.0f} (< {ess_per_chain:.0f} per chain): posterior "
                f"{'means' if name == 'bulk' else 'quantiles'} are unreliable; draw more"
            )
    if warn:
        for problem in report.problems:
            warnings.warn(problem, ConvergenceWarning, stacklevel=2)
    return report


def weights(result: PosteriorSamples) -> dict:
    """Importance-weight health of an SMC result (one entry per run where it applies).

    Returns
    -------
    dict with ``min_ess_fraction`` (smallest ESS/N along the grid, per run), ``resamplings`` (per run),
    ``final_ess_fraction``, ``max_weight`` (largest final normalised weight, per run) and
    ``log_evidence_std`` (spread of the runs' log Z estimates; 0 for one run).
    """
    if result.log_weights is None:
        raise ValueError("the result has no importance weights (not an SMC result, or resample=True)")
    trace = result.trace
    W = torch.softmax(result.log_weights.double(), dim=1)
    out = {
        "final_ess_fraction": (1.0 / (W**2).sum(1) / result.draws).cpu(),
        "max_weight": W.max(1).values.cpu(),
    }
    if "ess" in trace:
        out["min_ess_fraction"] = trace["ess"].min(0).values
        out["resamplings"] = trace["resampled"].sum(0)
    if "log_evidence" in trace:
        log_z = trace["log_evidence"][-1].double()
        out["log_evidence_std"] = float(log_z.std()) if log_z.numel() > 1 else 0.0
    return out


def cost(result: PosteriorSamples) -> dict:
    """NFE and gradient evaluations per draw (each batched call counts once), and wall time."""
    n = result.chains * result.draws
    return {
        "nfe": result.nfe,
        "grad_evals": result.grad_evals,
        "wall_time": result.wall_time,
        "seconds_per_draw": result.wall_time / n,
    }


def simulations(columns: int) -> int:
    """Simulated uniform sets behind the p-values of ``columns`` tests: enough that a Bonferroni-adjusted
    p-value can reach 0.001 (20,000 at least, 10^6 at most)."""
    return min(10**6, max(20_000, 1000 * columns))


@functools.lru_cache(maxsize=8)
def _ecdf_reference(n: int, k: int, sims: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ECDF test's ingredients for ``n`` uniform values evaluated at ``z_j = j / (k + 1)``:
    ``z`` (k,), the table ``P[c, j]`` (n + 1, k) of two-sided binomial tail probabilities of the count
    ``c = n F(z_j)``, and the sorted statistics ``T = min_j P[c_j, j]`` of ``sims`` uniform sets (a fixed seed: the p-values are deterministic)."""
    z = np.arange(1, k + 1) / (k + 1)
    c = np.arange(n + 1)[:, None]
    P = np.minimum(1.0, 2 * np.minimum(stats.binom.cdf(c, n, z), stats.binom.sf(c - 1, n, z)))
    rng = np.random.default_rng(0)
    T = []
    for _ in range(sims // 1000):
        cell = np.floor(rng.random((1000, n)) * (k + 1)).astype(np.int64) + (k + 1) * np.arange(1000)[:, None]
        counts = np.bincount(cell.ravel(), minlength=1000 * (k + 1)).reshape(1000, k + 1).cumsum(1)[:, :k]
        T.append(P[counts, np.arange(k)].min(1))
    return z, P, np.sort(np.concatenate(T))


def ecdf_test(u: Tensor, points: int = 100) -> tuple[Tensor, np.ndarray]:
    """Simultaneous ECDF test of uniformity (Säilynoja, Bürkner and Vehtari 2022, "Graphical test for
    discrete uniformity", Statistics and Computing 32:32), one column at a time.

    The ECDF ``F`` of each column of ``u`` (n, m) is evaluated at ``k = min(n, points)`` interior points;
    the statistic is the smallest two-sided binomial tail probability of ``n F(z_j)``, and its p-value
    the fraction of simulated uniform sets (:func:`simulations`) with a statistic as small. Returns the p-values ``(m,)`` and
    the statistics (for the band of :meth:`CalibrationReport.ecdf`).
    """
    n, m = u.shape
    z, P, T = _ecdf_reference(n, min(n, points), simulations(m))
    counts = (u.double().cpu().numpy()[:, :, None] <= z).sum(0)  # (m, k)
    statistic = P[counts, np.arange(len(z))].min(1)
    pvalues = (1 + np.searchsorted(T, statistic, side="right")) / (len(T) + 1)
    return torch.as_tensor(pvalues), statistic


@dataclass
class CalibrationReport:
    """What :func:`calibrate` measured, with the plot data.

    Attributes
    ----------
    ranks : Tensor, shape (n_problems, *event_shape)
        Randomised normalised ranks of ``x*`` among the draws, per coordinate: uniform on [0, 1] for
        a calibrated sampler.
    hpd_ranks : Tensor, shape (n_problems,)
        Posterior mass of higher density than ``x*`` (``x*`` lies in the level-``a`` highest-density
        region when it is below ``a``); uniform for a calibrated sampler.
    tarp : Tensor, shape (n_problems,)
        TARP's fraction of draws closer to a reference point than ``x*``; uniform when calibrated.
    coverage, hpd_coverage : dict
        ``{level: fraction}`` for central per-coordinate intervals and for highest-density regions.
    coverage_se : dict
        ``{level: sqrt(level (1 - level) / n_problems)}`` (conservative for the per-coordinate average).
    sbc_pvalue, hpd_pvalue, tarp_pvalue : float
        ECDF-band test p-values; ``sbc_pvalue`` is Bonferroni-adjusted over coordinates.
    hpd_method : str
        ``"exact"`` (the analytic posterior density) or ``"kde"`` (a leave-one-out kernel density of the
        draws: any statistic symmetric in ``x*`` and the draws is uniform when they are exchangeable).
    result : PosteriorSamples
    """

    ranks: Tensor
    hpd_ranks: Tensor
    tarp: Tensor
    coverage: dict
    hpd_coverage: dict
    coverage_se: dict
    sbc_pvalue: float
    hpd_pvalue: float
    tarp_pvalue: float
    hpd_method: str
    result: PosteriorSamples
    alpha: float = 0.01

    @property
    def calibrated(self) -> bool:
        """Every p-value above ``alpha`` and every coverage within 3 standard errors of its level."""
        within = all(
            abs(cov[a] - a) <= 3 * self.coverage_se[a]
            for cov in (self.coverage, self.hpd_coverage)
            for a in cov
        )
        return within and min(self.sbc_pvalue, self.hpd_pvalue, self.tarp_pvalue) > self.alpha

    def ecdf(self, which: str = "ranks", level: float = 0.95, points: int = 100) -> dict:
        """Plot data of the ECDF test: ``z`` (k,), the ECDFs ``F`` (m, k) of the chosen statistic
        (``"ranks"``: one per coordinate, ``"hpd"``, ``"tarp"``) and the simultaneous ``level`` band
        ``lower``, ``upper`` (k,) that one uniform ECDF leaves with probability ``1 - level``."""
        statistics = {
            "ranks": self.ranks.reshape(self.ranks.shape[0], -1),
            "hpd": self.hpd_ranks[:, None],
            "tarp": self.tarp[:, None],
        }
        if which not in statistics:
            raise ValueError(f"which must be one of {sorted(statistics)}, got {which!r}")
        u = statistics[which]
        n = u.shape[0]
        z, _, T = _ecdf_reference(n, min(n, points), simulations(1))
        gamma = T[int((1 - level) * len(T))]
        return {
            "z": z,
            "F": (u.double().numpy()[:, :, None] <= z).mean(0),
            "lower": stats.binom.ppf(gamma / 2, n, z) / n,
            "upper": stats.binom.isf(gamma / 2, n, z) / n,
        }

    def table(self) -> str:
        """A Markdown table: nominal level, central-interval and HPD coverage, standard error."""
        rows = ["| level | central intervals | HPD regions | s.e. |", "|---|---|---|---|"]
        rows += [
            f"| {a:.2f} | {self.coverage[a]:.3f} | {self.hpd_coverage[a]:.3f} | {self.coverage_se[a]:.3f} |"
            for a in self.coverage
        ]
        return "\n".join(rows)

    def __str__(self) -> str:
        verdict = "calibrated" if self.calibrated else "NOT calibrated"
        return (
            f"{self.table()}\n\nECDF p-values: SBC ranks {self.sbc_pvalue:.3g} (Bonferroni), HPD "
            f"({self.hpd_method}) {self.hpd_pvalue:.3g}, TARP {self.tarp_pvalue:.3g}: {verdict} at "
            f"level {self.alpha}"
        )


def calibrate(
    sampler,
    prior,
    operator,
    noise,
    *,
    n_problems: int = 200,
    num_samples: int = 99,
    levels: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95),
    truths: Tensor | None = None,
    seed: int = 0,
    progress: bool = False,
) -> CalibrationReport:
    """Calibration of ``sampler`` over ``n_problems`` simulated problems.

    Draws ``x*_b ~ prior`` (or takes ``truths``, e.g. held-out images) and ``y_b ~ noise(operator(x*_b))``,
    runs the sampler once with one measurement per chain (``chains = n_problems``, ``num_samples = L``
    draws each; SMC samplers use their weights ``W``), and per problem computes three statistics, each
    uniform on [0, 1] for exact draws:

    - per coordinate, the randomised rank ``u = (L sum_i W_i 1[x_i < x*] + U) / (L + 1)``, ``U ~ U(0, 1)``
      (simulation-based calibration, Talts et al. 2018, arXiv:1804.06788; the integer rank spread over
      its cell so that interval coverage is not biased by the grid ``k / L``);
    - the HPD rank: the same with ``1[p(x_i | y) > p(x* | y)]``, the density exact for analytic priors
      under linear-Gaussian problems and a leave-one-out kernel estimate otherwise;
    - TARP (Lemos et al., ICML 2023, arXiv:2302.03026): the same with ``1[|x_i - r| < |x* - r|]``, the
      reference ``r`` another problem's ``x*`` (a test of the whole joint in any dimension).

    Each is tested with :func:`ecdf_test`. ``x*`` lies in the level-``a`` central interval when
    ``(1 - a) / 2 <= u <= (1 + a) / 2`` and in the HPD region when its HPD rank is below ``a``.

    Returns
    -------
    CalibrationReport
    """
    if n_problems < 20:
        raise ValueError(f"n_problems must be >= 20 for the ECDF tests, got {n_problems}")
    generator = torch.Generator().manual_seed(seed)
    if truths is None:
        x_true = prior.sample(n_problems, seed=seed)
    elif truths.shape[0] != n_problems or tuple(truths.shape[1:]) != tuple(prior.event_shape):
        raise ValueError(
            f"truths must have shape ({n_problems}, *{tuple(prior.event_shape)}), got {tuple(truths.shape)}"
        )
    else:
        x_true = truths.to(dtype=prior.dtype, device=prior.device)
    y = noise.sample(operator(x_true), generator)
    result = sampler.sample(
        InverseProblem(operator, noise, y),
        prior,
        num_samples,
        chains=n_problems,
        seed=seed + 1,
        progress=progress,
    )
    L = num_samples
    x = result.samples.reshape(n_problems, L, -1).double()
    truth = x_true.reshape(n_problems, 1, -1).double().to(x.device)
    if result.log_weights is None:
        W = torch.full(x.shape[:2], 1.0 / L, dtype=torch.float64, device=x.device)
    else:
        W = torch.softmax(result.log_weights.double(), dim=1).to(x.device)
    jitter = torch.rand(n_problems, x.shape[2] + 2, generator=generator, dtype=torch.float64).to(x.device)

    def rank(indicator: Tensor, u: Tensor) -> Tensor:  # indicator (n_problems, L, ...) -> (n_problems, ...)
        weights = W.reshape(*W.shape, *[1] * (indicator.dim() - 2))
        return (L * (weights * indicator).sum(1) + u) / (L + 1)

    ranks = rank(x < truth, jitter[:, :-2])
    reference = truth.roll(1, 0)  # another problem's x*: a prior draw independent of this problem
    tarp = rank((x - reference).norm(dim=2) < (truth - reference).norm(dim=2), jitter[:, -1])
    hpd_method = (
        "exact"
        if prior.has_posterior and InverseProblem(operator, noise, y).is_linear_gaussian
        else "kde"
    )
    log_density = _log_density_exact if hpd_method == "exact" else _log_density_kde
    density_draws, density_truth = log_density(prior, operator, noise, y, x, truth, W)
    hpd_ranks = rank(density_draws > density_truth, jitter[:, -2])
    coverage = {a: float(((ranks >= (1 - a) / 2) & (ranks <= (1 + a) / 2)).double().mean()) for a in levels}
    sbc = ecdf_test(ranks)[0]
    return CalibrationReport(
        ranks=ranks.reshape(n_problems, *result.event_shape).cpu(),
        hpd_ranks=hpd_ranks.cpu(),
        tarp=tarp.cpu(),
        coverage=coverage,
        hpd_coverage={a: float((hpd_ranks < a).double().mean()) for a in levels},
        coverage_se={a: math.sqrt(a * (1 - a) / n_problems) for a in levels},
        sbc_pvalue=float(min(1.0, sbc.min() * len(sbc))),
        hpd_pvalue=float(ecdf_test(hpd_ranks[:, None])[0][0]),
        tarp_pvalue=float(ecdf_test(tarp[:, None])[0][0]),
        hpd_method=hpd_method,
        result=result,
    )


def _log_density_exact(prior, operator, noise, y, x, truth, W) -> tuple[Tensor, Tensor]:
    """The exact posterior log-density of the draws ``(n_problems, L)`` and of ``x*`` ``(n_problems, 1)``."""
    draws, true = [], []
    for b in range(y.shape[0]):
        exact = prior.posterior(InverseProblem(operator, noise, y[b]))
        shape = (-1, *prior.event_shape)
        draws.append(exact.log_prob(x[b].reshape(shape).to(prior.dtype)).double())
        true.append(exact.log_prob(truth[b].reshape(shape).to(prior.dtype)).double())
    return torch.stack(draws).to(x.device), torch.stack(true).to(x.device)


def _log_density_kde(prior, operator, noise, y, x, truth, W) -> tuple[Tensor, Tensor]:
    """Leave-one-out Gaussian kernel density at each of ``x*`` and the draws, from the other ``L`` points
    (``x*`` weighted like one draw, ``1 / L``), with Scott's bandwidth on coordinates scaled by their
    standard deviation over all ``L + 1`` points: symmetric in ``x*`` and the draws."""
    points = torch.cat([truth, x], 1)  # (n_problems, L + 1, d)
    L, d = x.shape[1], x.shape[2]
    scale = points.std(1, keepdim=True).clamp_min(1e-12) * (L + 1) ** (-1 / (d + 4))
    scaled = points / scale
    log_kernel = -0.5 * torch.cdist(scaled, scaled) ** 2
    log_kernel.diagonal(dim1=1, dim2=2).fill_(-math.inf)
    log_w = torch.cat([torch.full_like(W[:, :1], 1.0 / L), W], 1).log()
    density = torch.logsumexp(log_kernel + log_w[:, None, :], dim=2)
    return density[:, 1:], density[:, :1]
