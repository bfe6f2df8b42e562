"""Diagnostics of a sampler's output: convergence of Markov chains, health of importance weights, cost.

- :func:`convergence`: rank-normalised split R-hat and bulk/tail ESS per coordinate (pixel) from
  ArviZ, the worst coordinates, the fraction above thresholds, and warnings in the style of Stan and
  PyMC: R-hat above 1.01, or an ESS below 100 per chain (Vehtari et al. 2021, "Rank-normalization,
  folding, and localization", Bayesian Analysis 16(2)).
- :func:`weights`: for SMC results, each run's smallest ESS along the grid, its number of
  resamplings, the final largest normalised weight, and the spread of the runs' log-evidence.
- :func:`cost`: NFE, gradient evaluations and time, per draw.
- :func:`calibrate`: simulation-based calibration (Talts et al. 2018, arXiv:1804.06788), the
  coverage of central credible intervals, and TARP (Lemos et al., ICML 2023, arXiv:2302.03026: the
  coverage of balls around random reference points, a test of the whole joint posterior in any
  dimension), over many ``(x*, y)`` pairs drawn from the prior and the noise model, all solved in
  one batched call.

R-hat and ESS compare chains with each other. Chains that agree can still all be wrong (the quickstart
shows four RED-Diff fits with R-hat 1.00 far from the exact posterior): only exact posteriors or
calibration tests say whether a sampler is right.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from scipy import stats
from torch import Tensor

from posterior.problem import InverseProblem
from posterior.results import PosteriorSamples


class ConvergenceWarning(UserWarning):
    """Chains that disagree (R-hat) or carry too little information (ESS)."""


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


def calibrate(
    sampler,
    prior,
    operator,
    noise,
    *,
    n_problems: int = 200,
    num_samples: int = 99,
    levels: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95),
    bins: int = 10,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Calibration of ``sampler`` over ``n_problems`` simulated problems.

    Draws ``x*_b ~ prior`` and ``y_b ~ noise(operator(x*_b))``, runs the sampler once with one
    measurement per chain (``chains = n_problems``, ``num_samples = L`` draws each; SMC samplers use
    their weights), and per problem and coordinate computes the randomised normalised rank
    ``u = (L sum_i W_i 1[x_i < x*] + U) / (L + 1)``, ``U ~ Uniform(0, 1)``: exactly uniform on [0, 1]
    for exact draws (the integer rank ``k`` of SBC, spread over its cell so that interval coverage is
    not biased by the grid ``k / L``).

    Returns
    -------
    dict with
        ``ranks``: Tensor ``(n_problems, *event_shape)``;
        ``coverage``: ``{level: fraction of (problem, coordinate) pairs whose x* lies in the central
        level-credible interval}``, and ``coverage_se``: its binomial standard error over problems
        (conservative: coordinates of one problem are correlated);
        ``sbc_pvalue``: the smallest chi-square p-value of the ``bins``-bin rank histograms of the
        coordinates, Bonferroni-adjusted (times their number, capped at 1);
        ``tarp``: Tensor ``(n_problems,)``, the (randomised) fraction of draws closer to a reference
        point than ``x*`` is, the reference being another problem's ``x*`` (a prior draw); uniform for a
        calibrated sampler, and ``tarp_pvalue`` its Kolmogorov-Smirnov p-value;
        ``calibrated``: ``sbc_pvalue > 0.01``, ``tarp_pvalue > 0.01`` and every coverage within 3
        standard errors;
        ``result``: the :class:`PosteriorSamples`.
    """
    if n_problems < 5 * bins:
        raise ValueError(
            f"n_problems must be >= 5 * bins = {5 * bins} for the chi-square test, got {n_problems}"
        )
    generator = torch.Generator().manual_seed(seed)
    x_true = prior.sample(n_problems, seed=seed)
    y = noise.sample(operator(x_true), generator)
    result = sampler.sample(
        InverseProblem(operator, noise, y),
        prior,
        num_samples,
        chains=n_problems,
        seed=seed + 1,
        progress=progress,
    )
    x = result.samples.reshape(n_problems, num_samples, -1).double()
    truth = x_true.reshape(n_problems, 1, -1).double().to(x.device)
    if result.log_weights is None:
        W = torch.full(x.shape[:2], 1.0 / num_samples, dtype=torch.float64, device=x.device)
    else:
        W = torch.softmax(result.log_weights.double(), dim=1).to(x.device)
    jitter = torch.rand(n_problems, x.shape[2] + 1, generator=generator, dtype=torch.float64).to(x.device)
    below = (W[:, :, None] * (x < truth)).sum(1)  # (n_problems, d)
    ranks = (num_samples * below + jitter[:, :-1]) / (num_samples + 1)
    reference = truth.roll(1, 0)  # another problem's x*: a prior draw independent of this problem
    closer = (x - reference).norm(dim=2) < (truth - reference).norm(dim=2)  # (n_problems, L)
    tarp = (num_samples * (W * closer).sum(1) + jitter[:, -1]) / (num_samples + 1)
    tarp_pvalue = float(stats.kstest(tarp.cpu().numpy(), "uniform").pvalue)
    coverage = {
        level: float(((ranks >= (1 - level) / 2) & (ranks <= (1 + level) / 2)).double().mean())
        for level in levels
    }
    coverage_se = {level: math.sqrt(level * (1 - level) / n_problems) for level in levels}
    edges = torch.clamp((ranks * bins).floor().long(), max=bins - 1)
    counts = torch.stack([torch.bincount(edges[:, j], minlength=bins) for j in range(edges.shape[1])])
    pvalues = stats.chisquare(counts.cpu().numpy(), axis=1).pvalue
    sbc_pvalue = float(min(1.0, pvalues.min() * len(pvalues)))
    calibrated = (
        sbc_pvalue > 0.01
        and tarp_pvalue > 0.01
        and all(abs(coverage[lv] - lv) <= 3 * coverage_se[lv] for lv in levels)
    )
    return {
        "ranks": ranks.reshape(n_problems, *result.event_shape).cpu(),
        "coverage": coverage,
        "coverage_se": coverage_se,
        "sbc_pvalue": sbc_pvalue,
        "tarp": tarp.cpu(),
        "tarp_pvalue": tarp_pvalue,
        "calibrated": calibrated,
        "result": result,
    }
