"""Denoising Langevin Gibbs: the sigma-conditional draws, accuracy on exact posteriors, diagnostics."""

import math

import pytest
import torch
from scipy import stats

import operators as ops
import posterior as post
from posterior.samplers.dlg import draw_categorical


def test_sigma_draws_follow_the_exact_sigma_conditional(overlapping_problem):
    """For three fixed states x, 20000 Gibbs draws of sigma match P(sigma_g | x, y) ∝ p_sigma_g(x)
    N(y; A x, sigma_y^2 I + sigma_g^2 A A^T), computed here independently (noised mixture and a dense
    Gaussian), by a chi-square test (bins with expected count < 5 merged) at level 1e-3."""
    prior, problem = overlapping_problem(rows=2)
    sampler = post.samplers.DenoisingLangevinGibbs(levels=30, sigma_low=0.05, sigma_high=10.0)
    grid = sampler.grid(prior, torch.float64, "cpu")
    surrogate = post.samplers.lml.LikelihoodSurrogate.of(problem, prior, 1.0, "test")
    A = problem.operator.to_matrix()
    x = prior.sample(3, seed=4) + 0.3 * torch.randn(
        3, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )
    logits = sampler.sigma_logits(problem, prior, surrogate, x, grid)
    for i in range(3):
        exact = torch.stack(
            [
                prior.noised(s).log_prob(x[i : i + 1])[0]
                + torch.distributions.MultivariateNormal(
                    A @ x[i], 0.25 * torch.eye(2, dtype=torch.float64) + s**2 * A @ A.T
                ).log_prob(problem.y)
                for s in grid
            ]
        )
        p = torch.softmax(exact, 0)
        draws = draw_categorical(logits[i : i + 1].expand(20000, -1), torch.Generator().manual_seed(i))
        counts = torch.bincount(draws, minlength=grid.numel()).double()
        keep = 20000 * p >= 5
        observed = torch.cat([counts[keep], counts[~keep].sum(0, keepdim=True)])
        expected = torch.cat([20000 * p[keep], 20000 * p[~keep].sum(0, keepdim=True)])
        if float(expected[-1]) < 5:  # fold a tiny remainder into the largest bin
            observed, expected = observed[:-1], expected[:-1]
            observed[observed.argmax()] += counts[~keep].sum()
            expected[expected.argmax()] += 20000 * p[~keep].sum()
        assert stats.chisquare(observed.numpy(), expected.numpy()).pvalue > 1e-3
        assert int(keep.sum()) >= 3  # the conditional is spread over several levels: a draw, not an argmax


def test_overlapping_modes_within_three_times_the_floor(overlapping_problem):
    """100 chains x 10 draws (burn-in 100, thin 5): measured 1.4x the floor; the bar is 3x."""
    prior, problem = overlapping_problem()
    exact = prior.posterior(problem)
    result = post.samplers.DenoisingLangevinGibbs(burn_in=100).sample(
        problem, prior, 10, chains=100, seed=0, progress=False
    )
    assert result.kind == "mcmc" and result.samples.shape == (100, 10, 8)
    floor = post.metrics.floor(
        post.metrics.sliced_wasserstein, lambda k, s: exact.sample(k, seed=s), 1000, 1000
    )
    assert post.metrics.sliced_wasserstein(result.flat(), exact.sample(1000, seed=999)) < 3 * floor
    assert result.trace["chain_sigma"].shape == (100 + 5 * 10, 100)


def test_digits_inpainting_chains_report_rhat_and_ess():
    """Four chains on the digits prior with the bundled noise-level classifier: to_arviz carries the
    (chain, draw) structure, and R-hat and ESS come out finite for every pixel."""
    pytest.importorskip("sklearn")
    import arviz_stats as azs

    from posterior.data import digits
    from posterior.priors import noise_classifier, pretrained

    prior = pretrained("digits")
    operator = ops.Inpainting.box((1, 16, 16), 0, 0, 8, 16)
    noise = ops.GaussianNoise(0.05)
    y = noise.sample(operator(digits("test")[11:12]), torch.Generator().manual_seed(0))[0]
    sampler = post.samplers.DenoisingLangevinGibbs(
        classifier=noise_classifier("digits"), burn_in=10, thin=2, init_steps=10, ode_steps=3
    )
    result = sampler.sample(
        post.InverseProblem(operator, noise, y), prior, 6, chains=4, seed=0, progress=False
    )
    tree = result.to_arviz()
    rhat = azs.rhat(tree, var_names=["x"])["x"].values
    ess = azs.ess(tree, var_names=["x"], method="bulk")["x"].values
    assert rhat.shape == ess.shape == (1, 16, 16)
    assert bool(torch.isfinite(torch.as_tensor(rhat)).all()) and float(torch.as_tensor(ess).min()) > 0


def test_residual_sigma_posterior_and_argument_checks(overlapping_problem):
    prior, problem = overlapping_problem()
    net_like = post.priors.DiffusionPrior.from_denoiser(prior.denoise, (8,), 0.002, 80.0, dtype=torch.float64)
    result = post.samplers.DenoisingLangevinGibbs(
        levels=8, burn_in=3, thin=1, init_steps=5, ode_steps=2
    ).sample(problem, net_like, 2, chains=2, seed=0, progress=False)
    assert bool(torch.isfinite(result.samples).all())
    assert result.nfe > 8 * 5  # the residual estimator evaluates every level
    with pytest.raises(ValueError, match="classifier"):
        post.samplers.DenoisingLangevinGibbs(sigma_posterior="classifier")
    with pytest.raises(ValueError, match="sigma_low"):
        post.samplers.DenoisingLangevinGibbs(sigma_low=1.0, sigma_high=0.5)
    assert math.isfinite(float(result.samples.sum()))


def test_one_measurement_per_chain(overlapping_problem):
    """Two chains given two measurements (y and a copy shifted by 3) follow their own exact posteriors:
    the chain means of 60 draws lie within 5 posterior standard errors (ESS taken as 10) of the exact
    means; one measurement per draw is refused."""
    prior, problem = overlapping_problem()
    ys = torch.stack([problem.y, problem.y + 3.0])
    batched = post.InverseProblem(problem.operator, problem.noise, ys)
    result = post.samplers.DenoisingLangevinGibbs(burn_in=50, thin=2).sample(
        batched, prior, 60, chains=2, seed=0, progress=False
    )
    for c in range(2):
        exact = prior.posterior(post.InverseProblem(problem.operator, problem.noise, ys[c]))
        se = (exact.covariance().diagonal() / 10).sqrt()
        assert bool(((result.samples[c].mean(0) - exact.mean()).abs() < 5 * se).all())
    per_draw = post.InverseProblem(problem.operator, problem.noise, ys.repeat(3, 1))
    with pytest.raises(ValueError, match="one per chain"):
        post.samplers.DenoisingLangevinGibbs().sample(per_draw, prior, 3, chains=2, progress=False)
