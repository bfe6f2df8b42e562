"""The verdict of every run: checks that fit the kind of sampler, divergence and measurement guards."""

import math
import warnings

import pytest
import torch

import operators as ops
import posterior as post
from posterior.diagnostics import ConvergenceWarning, DivergenceWarning, MeasurementWarning, PosteriorWarning


def quickstart_problem(y_value: float | None = None):
    """The README quick start: the 25-mode grid mixture in d = 8, one random row, sigma_y = 0.5."""
    prior = post.priors.GaussianMixture.grid(8, seed=0)
    A = ops.Matrix(torch.randn(1, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    noise = ops.GaussianNoise(sigma=0.5)
    y = noise.sample(A(prior.sample(1, seed=1)), torch.Generator().manual_seed(2))[0]
    if y_value is not None:
        y = torch.full_like(y, y_value)
    return prior, post.InverseProblem(A, noise, y)


def test_quickstart_dps_with_likelihood_guidance_warns():
    """DPS with the unscaled likelihood step (100 steps) diverges on the quick start: its largest |x| is
    about 1e3 where the exact posterior's is 20. The run warns, names the step where the draws left the
    prior's range, and its verdict fails; the paper's residual step stays in range and passes."""
    prior, problem = quickstart_problem()
    with pytest.warns(DivergenceWarning, match=r"diverged \(the run first left the range at step \d+"):
        result = post.samplers.DPS(steps=100, guidance="likelihood").sample(
            problem, prior, 250, chains=4, seed=0, progress=False
        )
    assert not result.verdict.ok and result.verdict.checks["range"] > 10
    assert "not a calibrated posterior" in result.verdict.line
    with warnings.catch_warnings():
        warnings.simplefilter("error", PosteriorWarning)
        fine = post.samplers.DPS(steps=100).sample(problem, prior, 250, chains=4, seed=0, progress=False)
    assert fine.verdict.ok and fine.verdict.checks["range"] < 3


@pytest.mark.parametrize(
    "sampler",
    [post.samplers.DPS(steps=5), post.samplers.AFDPS(steps=5), post.samplers.RedDiff(steps=5)],
    ids=["DPS", "AFDPS", "RedDiff"],
)
def test_implausible_measurement_warns_before_sampling(sampler):
    """``y = 1e20`` lies about 1e18 prior-predictive spreads from the prior predictive: every sampler
    warns before it starts; the quick start's own y is 1-2 spreads away and does not."""
    prior, problem = quickstart_problem(1e20)
    with pytest.warns(MeasurementWarning, match="prior-predictive spreads"):
        sampler.sample(problem, prior, 4, chains=2, seed=0, progress=False)
    assert post.diagnostics.check_measurement(quickstart_problem()[1], prior, warn=False) < 3


def test_smc_verdict_has_no_rhat_and_flags_runs_that_disagree():
    """An SMC result gets per-run ESS, log-evidence spread and agreement checks, never R-hat. Two
    hand-made runs of the same target agree; shifting one run by 20 of its standard errors fails the
    agreement check with a ConvergenceWarning."""
    x = torch.randn(2, 500, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    log_w = torch.zeros(2, 500, dtype=torch.float64)
    agree = post.PosteriorSamples(x, log_weights=log_w, sampler="toy")
    verdict = post.diagnostics.check(agree)
    assert verdict.ok and "rhat_max" not in verdict.checks and "agree within" in verdict.line
    shifted = x.clone()
    shifted[1] += 20 / 500**0.5
    with pytest.warns(ConvergenceWarning, match="disagree beyond their own standard errors"):
        verdict = post.diagnostics.check(post.PosteriorSamples(shifted, log_weights=log_w, sampler="toy"))
    assert not verdict.ok and verdict.checks["agreement_max"] > 10


def test_mcmc_verdict_uses_rhat_and_range_uses_the_prior():
    """Markov chains are judged by R-hat: 4 chains of the same normal pass, one chain elsewhere fails.
    Draws 50 prior scales from the prior mean fail the range check whatever the kind."""
    prior = post.priors.Gaussian(torch.zeros(3, dtype=torch.float64), 1.0)
    x = torch.randn(4, 200, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert post.diagnostics.check(post.PosteriorSamples(x, kind="mcmc"), prior=prior).ok
    stuck = x.clone()
    stuck[0] += 3.0
    with pytest.warns(ConvergenceWarning, match="R-hat"):
        assert not post.diagnostics.check(post.PosteriorSamples(stuck, kind="mcmc"), prior=prior).ok
    far = x.clone()
    far[0, 0, 0] = 50.0
    with pytest.warns(DivergenceWarning, match="50 prior standard deviations"):
        assert not post.diagnostics.check(post.PosteriorSamples(far), prior=prior).ok


def test_verdict_survives_save_and_load(tmp_path):
    prior, problem = quickstart_problem()
    result = post.samplers.ExactPosterior().sample(problem, prior, 10, chains=2, seed=0, progress=False)
    loaded = post.PosteriorSamples.load(result.save(tmp_path / "r.safetensors"))
    assert loaded.verdict == result.verdict and loaded.verdict.ok
    assert result.to_arviz().attrs["verdict"] == result.verdict.line


def test_location_scale_of_a_network_matches_the_analytic_prior():
    """The denoiser-based estimate of a prior's mean and scale (what network priors get) agrees with the
    exact values of the mixture it wraps (the root mean square of its per-coordinate standard
    deviations): measured 12.15 against 11.71, the mean to 1e-3."""
    prior = post.priors.GaussianMixture.grid(8, seed=0)
    net = post.priors.DiffusionPrior.from_denoiser(prior.denoise, (8,), 0.002, prior.sigma_max, dtype=torch.float64)
    (mean, scale), (exact_mean, exact_scale) = net.location_scale(), prior.location_scale()
    assert abs(scale / post.diagnostics.rms(exact_scale) - 1) < 0.1
    torch.testing.assert_close(mean, exact_mean, atol=1e-2, rtol=0)


def plain_mean_agreement(means, standard_errors):
    """Broken: the agreement statistic centred on the plain mean of the runs, which follows a run with a
    large standard error and makes the precise runs look as if they disagreed."""
    centred = means - means.mean(0)
    return ((centred**2 / standard_errors**2).sum(0) / (means.shape[0] - 1)).sqrt()


@pytest.mark.parametrize("variant, passes", [("cochran", True), ("broken: plain mean", False)])
def test_agreement_accepts_sound_runs_of_unequal_precision(variant, passes, monkeypatch):
    """Three runs of 2000 equally weighted draws of N(0, I_4) and one of 40: all sound, so the verdict
    must pass in at least 49 of 50 seeds (level 0.001 per seed). Cochran's Q (centred on the
    inverse-variance weighted mean) does; the plain mean of the runs fails most seeds."""
    if variant.startswith("broken"):
        monkeypatch.setattr(post.diagnostics, "agreement", plain_mean_agreement)
    passed = 0
    for seed in range(50):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(4, 2000, 4, generator=g, dtype=torch.float64)
        log_w = torch.zeros(4, 2000, dtype=torch.float64)
        log_w[3, 40:] = -math.inf  # the last run keeps 40 particles
        passed += post.diagnostics.check(post.PosteriorSamples(x, log_weights=log_w), warn=False).ok
    assert (passed >= 49) == passes, passed


def test_constant_coordinates_and_anisotropic_priors_do_not_warn():
    """A coordinate that is constant up to rounding (float32, uneven weights) agrees between runs; exact
    draws of a prior whose standard deviations range from 0.1 to 10 stay within its range."""
    x = torch.randn(4, 1000, 3, generator=torch.Generator().manual_seed(0))
    x[:, :, 2] = 0.37
    log_w = 0.5 * torch.randn(4, 1000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PosteriorWarning)
        assert post.diagnostics.check(post.PosteriorSamples(x, log_weights=log_w)).ok
        prior = post.priors.Gaussian(
            torch.zeros(100, dtype=torch.float64), torch.tensor([100.0] + [0.01] * 99, dtype=torch.float64)
        )
        draws = prior.sample(4000, seed=0).reshape(4, 1000, 100)
        assert post.diagnostics.check(post.PosteriorSamples(draws), prior=prior).ok
