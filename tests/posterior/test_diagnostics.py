"""Convergence and weight diagnostics: warnings fire on unconverged chains and stay silent otherwise."""

import warnings

import pytest
import torch

import operators as ops
import posterior as post
from posterior.diagnostics import ConvergenceWarning
from posterior.priors import GaussianMixture


def overlapping_problem():
    prior = GaussianMixture.random(8, num_components=10, separation=2.0, std=1.0, seed=0)
    g = torch.Generator().manual_seed(1000)
    A = ops.Matrix(torch.randn(1, 8, generator=g, dtype=torch.float64) / 8**0.5)
    noise = ops.GaussianNoise(0.5)
    y = noise.sample(A(prior.sample(1, seed=2000)), g)[0]
    return prior, post.InverseProblem(A, noise, y)


def test_silent_on_exact_draws_arranged_as_chains():
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


def test_warns_on_a_short_unconverged_run():
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


def test_weight_diagnostics_of_an_smc_run_and_refusals():
    prior, problem = overlapping_problem()
    result = post.samplers.MCGdiff(steps=20).sample(problem, prior, 64, chains=3, seed=0, progress=False)
    report = post.diagnostics.weights(result)
    assert report["min_ess_fraction"].shape == (3,) and bool((report["min_ess_fraction"] <= 1).all())
    assert bool((report["max_weight"] >= 1 / 64).all()) and report["log_evidence_std"] >= 0
    assert int(report["resamplings"].sum()) >= 0
    with pytest.raises(ValueError, match="Markov chains"):
        post.diagnostics.convergence(result)
    flat = post.samplers.MCGdiff(steps=20, resample=True).sample(problem, prior, 8, chains=2, progress=False)
    with pytest.raises(ValueError, match="no importance weights"):
        post.diagnostics.weights(flat)
    assert post.diagnostics.cost(result)["nfe"] == result.nfe
