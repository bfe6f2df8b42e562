"""Convergence and weight diagnostics: warnings fire on unconverged chains and stay silent otherwise."""

import math
import warnings

import pytest
import torch

import operators as ops
import posterior as post
from posterior.diagnostics import ConvergenceWarning
from posterior.priors import GaussianMixture


def test_silent_on_exact_draws_arranged_as_chains(overlapping_problem):
    """4 chains of 1000 independent exact posterior draws: converged by construction, so no warning
    (split R-hat of independent draws is 1 + O(1/n); measured max 1.001)."""
    prior, problem = overlapping_problem()
    draws = prior.posterior(problem).sample(4000, seed=0).reshape(4, 1000, 8)
    result = post.PosteriorSamples(draws, kind="mcmc")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        report = post.diagnostics.convergence(result)
    assert report.problems == [] and report.rhat_max < 1.01 and report.ess_bulk_min > 400
    assert report.rhat.shape == report.ess_tail.shape == (8,) and len(report.worst) == 5


def test_warns_on_a_short_unconverged_run(overlapping_problem):
    """Denoising Langevin Gibbs without burn-in, 4 chains of 10 consecutive draws: R-hat and ESS warnings."""
    prior, problem = overlapping_problem()
    result = post.samplers.DenoisingLangevinGibbs(burn_in=0, thin=1, init_steps=5, ode_steps=3).sample(
        problem, prior, 10, chains=4, seed=0, progress=False
    )
    with pytest.warns(ConvergenceWarning) as record:
        report = post.diagnostics.convergence(result)
    texts = [str(w.message) for w in record]
    assert any("ESS" in t for t in texts) and len(texts) == len(report.problems)
    assert "R-hat: max" in str(report)


def test_chains_in_different_places_fail_rhat():
    draws = torch.randn(4, 500, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    draws[3] += 1.0  # one chain stuck elsewhere
    with pytest.warns(ConvergenceWarning) as record:
        report = post.diagnostics.convergence(post.PosteriorSamples(draws))
    assert any("R-hat" in str(w.message) for w in record)
    assert report.rhat_max > 1.1 and report.fraction_rhat_above == 1.0


def test_weight_diagnostics_of_an_smc_run_and_refusals(overlapping_problem):
    prior, problem = overlapping_problem()
    result = post.samplers.MCGdiff(steps=20).sample(problem, prior, 64, chains=3, seed=0, progress=False)
    report = post.diagnostics.weights(result)
    # each entry against an independent computation from the run's weights and trace
    lw = result.log_weights.double()
    w = torch.exp(lw - lw.max(1, keepdim=True).values)  # unnormalised, largest 1
    torch.testing.assert_close(report["max_weight"], 1 / w.sum(1))
    torch.testing.assert_close(report["final_ess_fraction"], w.sum(1) ** 2 / (w**2).sum(1) / 64)
    ess_trace = result.trace["ess"]  # (steps + 1, 3)
    assert report["min_ess_fraction"].shape == (3,)
    assert all(float(report["min_ess_fraction"][b]) == min(ess_trace[:, b].tolist()) for b in range(3))
    # MCGdiff resamples a run when its ESS falls below N/2 (ess_threshold 0.5), never at the start or end
    expected = (ess_trace[1:-1] < 0.5).sum(0)
    assert report["resamplings"].tolist() == expected.tolist() and int(expected.sum()) > 0
    log_z = result.trace["log_evidence"][-1].tolist()
    mean = sum(log_z) / 3
    assert report["log_evidence_std"] == pytest.approx((sum((v - mean) ** 2 for v in log_z) / 2) ** 0.5)
    # a hand-made weighted result with known answers: uniform and degenerate weights, log Z 1 and 3
    known = post.PosteriorSamples(
        torch.zeros(2, 4, 1, dtype=torch.float64),
        log_weights=torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -math.inf, -math.inf, -math.inf]]).double(),
        trace={
            "ess": torch.tensor([[1.0, 1.0], [0.5, 0.25], [0.75, 0.3]], dtype=torch.float64),
            "resampled": torch.tensor([[False, False], [True, True], [False, False]]),
            "log_evidence": torch.tensor([[0.0, 0.0], [0.5, 0.5], [1.0, 3.0]], dtype=torch.float64),
        },
    )
    known_report = post.diagnostics.weights(known)
    assert known_report["max_weight"].tolist() == [0.25, 1.0]
    assert known_report["final_ess_fraction"].tolist() == [1.0, 0.25]
    assert known_report["min_ess_fraction"].tolist() == [0.5, 0.25]
    assert known_report["resamplings"].tolist() == [1, 1]
    assert known_report["log_evidence_std"] == pytest.approx(2**0.5)
    with pytest.raises(ValueError, match="Markov chains"):
        post.diagnostics.convergence(result)
    flat = post.samplers.MCGdiff(steps=20, resample=True).sample(problem, prior, 8, chains=2, progress=False)
    with pytest.raises(ValueError, match="no importance weights"):
        post.diagnostics.weights(flat)
    assert post.diagnostics.cost(result)["nfe"] == result.nfe


class Overconfident(post.samplers.ExactPosterior):
    """Exact draws shrunk halfway toward the posterior mean: a deliberately overconfident sampler."""

    def draw(self, exact, n, generator):
        x = exact.sample(n, seed=generator)
        return exact.mean() + 0.5 * (x - exact.mean())


def calibration_setup():
    prior = GaussianMixture.grid(2, seed=0)
    A = ops.Matrix(torch.tensor([[0.6, 0.8]], dtype=torch.float64))
    return prior, A, ops.GaussianNoise(0.5)


def test_exact_posterior_passes_calibration_at_the_nominal_rate():
    """20 seeds of 200 problems x 99 exact draws on a multimodal 2-D posterior. Each seed runs three ECDF
    tests at level 0.01 (SBC ranks, Bonferroni over coordinates; exact HPD ranks; TARP) and checks eight
    coverages (central intervals and HPD regions at four levels) to 3 standard errors. Over 300 seeds
    (``benchmarks/calibration.py --false-alarm 300``) 6.3% of seeds fail one of them, so at most 4 of
    20 may fail (P(>= 5) = 0.007 at that rate; the seeds are fixed, so the test is deterministic).
    The HPD coverage at 50% averages 0.499 (sd 0.036 over 100 seeds)."""
    prior, A, noise = calibration_setup()
    failures = 0
    for seed in range(20):
        report = post.diagnostics.calibrate(
            post.samplers.ExactPosterior(), prior, A, noise, n_problems=200, seed=seed
        )
        failures += not report.calibrated
    assert report.ranks.shape == (200, 2) and report.hpd_method == "exact"
    assert failures <= 4


def test_overconfident_sampler_fails_calibration():
    """Exact draws shrunk halfway toward the posterior mean: every ECDF test rejects at its resolution
    (p = 5e-5 for one statistic, 1e-4 after Bonferroni), and the 50% central interval covers 0.145 of the
    truths (measured). The HPD regions over-cover (0.785 at 50%): the posterior mean lies between the
    modes, so the shrunk draws have low density. The report says so."""
    prior, A, noise = calibration_setup()
    report = post.diagnostics.calibrate(Overconfident(), prior, A, noise, n_problems=200, seed=0)
    assert not report.calibrated and max(report.sbc_pvalue, report.hpd_pvalue, report.tarp_pvalue) < 0.01
    assert report.tarp.shape == report.hpd_ranks.shape == (200,)
    assert report.coverage[0.5] < 0.5 - 3 * report.coverage_se[0.5]
    assert "NOT calibrated" in str(report)
    with pytest.raises(ValueError, match="n_problems"):
        post.diagnostics.calibrate(post.samplers.ExactPosterior(), prior, A, noise, n_problems=10)


def test_sample_based_hpd_ranks_are_uniform_for_exact_draws_and_catch_overconfidence(monkeypatch):
    """The kernel-density HPD rank is symmetric in x* and the draws, so exact draws give uniform ranks
    (measured p-values 0.68, 0.97, 0.39 over seeds 0-2); shrunk draws give p = 5e-5."""
    prior, A, noise = calibration_setup()
    monkeypatch.setattr(post.diagnostics, "_log_density_exact", post.diagnostics._log_density_kde)
    exact = post.diagnostics.calibrate(post.samplers.ExactPosterior(), prior, A, noise, n_problems=200)
    shrunk = post.diagnostics.calibrate(Overconfident(), prior, A, noise, n_problems=200)
    assert exact.hpd_pvalue > 0.01 and abs(exact.hpd_coverage[0.9] - 0.9) < 3 * exact.coverage_se[0.9]
    assert shrunk.hpd_pvalue < 0.01


def test_ecdf_test_and_band():
    """Uniform columns pass, a column squeezed toward 1/2 fails; the band's plot data has the right
    shapes and contains a uniform ECDF."""
    g = torch.Generator().manual_seed(0)
    u = torch.rand(300, 3, generator=g, dtype=torch.float64)
    u[:, 2] = 0.5 + 0.6 * (u[:, 2] - 0.5)
    pvalues, _ = post.diagnostics.ecdf_test(u)
    assert bool((pvalues[:2] > 0.01).all()) and float(pvalues[2]) < 0.001
    prior, A, noise = calibration_setup()
    report = post.diagnostics.calibrate(post.samplers.ExactPosterior(), prior, A, noise, n_problems=200)
    band = report.ecdf("ranks")
    assert band["F"].shape == (2, 100) and band["lower"].shape == band["z"].shape == (100,)
    assert bool(((band["F"] >= band["lower"]) & (band["F"] <= band["upper"])).all())
    with pytest.raises(ValueError, match="which"):
        report.ecdf("coverage")


def test_calibrate_on_given_truths_and_batched_gaussian_reddiff():
    """Ground truths can be given (held-out images); Gaussian RED-Diff fits one q per problem."""
    prior, A, noise = calibration_setup()
    truths = prior.sample(20, seed=5)
    report = post.diagnostics.calibrate(
        post.samplers.RedDiff(mode="gaussian", steps=20), prior, A, noise, n_problems=20, truths=truths
    )
    assert report.result.samples.shape == (20, 99, 2)
    with pytest.raises(ValueError, match="truths"):
        post.diagnostics.calibrate(
            post.samplers.ExactPosterior(), prior, A, noise, n_problems=20, truths=truths[:5]
        )


def test_exact_posterior_sampler_on_a_single_measurement():
    prior, A, noise = calibration_setup()
    problem = post.InverseProblem(A, noise, torch.tensor([1.0], dtype=torch.float64))
    result = post.samplers.ExactPosterior().sample(problem, prior, 2000, chains=2, seed=0, progress=False)
    exact = prior.posterior(problem)
    assert result.samples.shape == (2, 2000, 2) and result.nfe == 0
    se = (exact.covariance().diagonal() / 4000).sqrt()
    assert bool(((result.mean() - exact.mean()).abs() < 4 * se).all())


def test_checks_that_compare_runs_read_whether_the_runs_share_y():
    """Runs whose means and log-evidences disagree fail the run-comparing checks when they answered one
    measurement, and pass them when each answered its own (``result.shared_measurement``)."""
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(4, 50, 2, generator=g, dtype=torch.float64) + 10 * torch.arange(4.0)[:, None, None]
    trace = {"log_evidence": torch.tensor([[0.0] * 4, [0.0, 5.0, 10.0, 15.0]], dtype=torch.float64)}

    def verdict(shared: bool):
        result = post.PosteriorSamples(
            samples, torch.zeros(4, 50), trace=trace, sampler="AFDPS", shared_measurement=shared
        )
        return post.diagnostics.check(result, warn=False)

    shared, separate = verdict(True), verdict(False)
    assert not shared.ok and "agreement_max" in shared.checks and "log_evidence_std" in shared.checks
    assert (
        separate.ok and "agreement_max" not in separate.checks and "log_evidence_std" not in separate.checks
    )
