import arviz_stats as azs
import numpy as np
import pytest
import torch

from posterior import PosteriorSamples


def make(weighted=False, event=(3,)):
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(4, 200, *event, generator=g, dtype=torch.float64)
    log_w = torch.randn(4, 200, generator=g, dtype=torch.float64) if weighted else None
    return PosteriorSamples(
        samples,
        log_weights=log_w,
        nfe=50,
        grad_evals=50,
        wall_time=1.5,
        trace={"sigma": torch.linspace(1, 0.1, 5)},
        sample_stats={"log_likelihood": -samples.reshape(4, 200, -1).pow(2).sum(-1)},
        sampler="DPS",
        config={"steps": 50},
    )


def test_shapes_and_summaries():
    r = make()
    assert (r.chains, r.draws, r.event_shape) == (4, 200, (3,))
    flat = r.samples.reshape(-1, 3)
    torch.testing.assert_close(r.mean(), flat.mean(0))
    torch.testing.assert_close(r.std(), flat.std(0, unbiased=False))
    q = r.quantile(torch.tensor([0.1003, 0.5007, 0.9001]))  # off the CDF steps k/800
    assert q.shape == (3, 3)
    ref = np.quantile(flat.numpy(), [0.1003, 0.5007, 0.9001], axis=0, method="inverted_cdf")
    np.testing.assert_allclose(q.numpy(), ref)
    assert r.quantile(0.5).shape == (3,)
    with pytest.raises(ValueError, match="q must lie in"):
        r.quantile(1.5)


def test_weighted_mean_matches_manual():
    r = make(weighted=True)
    w = torch.softmax(r.log_weights, dim=1) / r.chains
    ref = (w[..., None] * r.samples).sum((0, 1))
    torch.testing.assert_close(r.mean(), ref)


def test_validation():
    with pytest.raises(ValueError, match="chains, draws"):
        PosteriorSamples(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="log_weights has shape"):
        PosteriorSamples(torch.zeros(2, 5, 3), log_weights=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="sample_stats\\['ll'\\] has shape"):
        PosteriorSamples(torch.zeros(2, 5, 3), sample_stats={"ll": torch.zeros(5)})


@pytest.mark.parametrize("event, dims", [((3,), ("dim",)), ((1, 2, 2), ("channel", "row", "col"))])
def test_to_arviz_works_with_summary_ess_rhat(event, dims):
    r = make(weighted=True, event=event)
    tree = r.to_arviz()
    x = tree.posterior["x"]
    assert x.dims == ("chain", "draw", *dims)
    assert "log_weight" in tree.particles and "log_likelihood" in tree.sample_stats
    assert tree.particles["x"].shape == tree.posterior["x"].shape
    assert tree.attrs["nfe"] == 50
    summary = azs.summary(tree, var_names=["x"])
    assert len(summary) == int(np.prod(event))
    plain = make(event=event).to_arviz()
    ess = azs.ess(plain, var_names=["x"], method="bulk")["x"].values
    rhat = azs.rhat(plain, var_names=["x"])["x"].values
    # independent normal draws: ESS near 800 and R-hat near 1
    assert ess.min() > 400 and np.abs(rhat - 1).max() < 0.02
    # resampled weighted draws repeat particles: ArviZ's ESS falls to about Kish's (measured 0.9-1.3x)
    kish = float((1 / (torch.softmax(r.log_weights, 1) ** 2).sum(1)).sum())
    weighted_ess = azs.ess(tree, var_names=["x"], method="bulk")["x"].values
    assert 0.6 * kish < weighted_ess.min() and weighted_ess.max() < 1.6 * kish


def test_save_load_round_trip(tmp_path):
    r = make(weighted=True)
    path = r.save(tmp_path / "run" / "result.safetensors")
    loaded = PosteriorSamples.load(path)
    torch.testing.assert_close(loaded.samples, r.samples)
    torch.testing.assert_close(loaded.log_weights, r.log_weights)
    torch.testing.assert_close(loaded.trace["sigma"], r.trace["sigma"])
    torch.testing.assert_close(loaded.sample_stats["log_likelihood"], r.sample_stats["log_likelihood"])
    assert (loaded.nfe, loaded.grad_evals, loaded.sampler, loaded.config) == (50, 50, "DPS", {"steps": 50})
    assert [p.name for p in path.parent.iterdir()] == ["result.safetensors"]  # no temporary file left


def test_load_rejects_foreign_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not a file written by"):
        PosteriorSamples.load(tmp_path / "other.safetensors")


def importance_sampled(weighted: bool = True) -> PosteriorSamples:
    """4 runs of 2000 draws from N(0, I_3) weighted towards N(1, I_3): ``log w = sum(x) - 3/2``."""
    x = torch.randn(4, 2000, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return PosteriorSamples(x, log_weights=x.sum(-1) - 1.5 if weighted else None)


@pytest.mark.parametrize("variant, passes", [("weighted", True), ("broken: weights ignored", False)])
def test_arviz_and_summary_of_weighted_draws_match_the_target(variant, passes):
    """Every ArviZ summary of a weighted result describes the weighted target, N(1, I): the means of
    ``arviz_stats.summary(result.to_arviz())`` (systematic resamples) and of ``result.summary()`` lie
    within 4 of their own Monte-Carlo standard errors of 1, the sds within 10% of 1, and the weighted
    90% interval within 0.15 of 1 -+ 1.645. Dropping the weights (what ArviZ saw before) puts the means
    at 0, about 50 standard errors off."""
    result = importance_sampled(weighted=variant == "weighted")
    arviz_table = azs.summary(result.to_arviz(), var_names=["x"])
    table = result.summary(level=0.9)
    checks = []
    for t in (arviz_table, table):
        z = (t["mean"].to_numpy() - 1) / t["mcse_mean"].to_numpy()
        checks += [bool(np.abs(z).max() < 4), bool(np.abs(t["sd"].to_numpy() - 1).max() < 0.1)]
    lower, upper = result.interval(0.9)
    checks.append(bool(((lower - (1 - 1.645)).abs() < 0.15).all() and ((upper - (1 + 1.645)).abs() < 0.15).all()))
    assert all(checks) == passes, checks


def test_weighted_summary_columns_and_agreement():
    """The weighted table has one row per coordinate; ``ess_mean = sd^2 / mcse_mean^2``; runs of the
    same target agree (ratio near 1, measured below 2.5), and one run of four shifted by 1 (about 10 of its
    standard errors; the expected ratio is 5) is flagged above 4."""
    result = importance_sampled()
    table = result.summary()
    assert list(table.columns) == ["mean", "sd", "lower", "upper", "agreement", "mcse_mean", "ess_mean"]
    assert list(table.index) == ["x[0]", "x[1]", "x[2]"]
    np.testing.assert_allclose(table["ess_mean"], table["sd"] ** 2 / table["mcse_mean"] ** 2)
    assert table["agreement"].max() < 2.5
    shifted = result.samples.clone()
    shifted[0] += 1.0
    assert PosteriorSamples(shifted, log_weights=result.log_weights).summary()["agreement"].min() > 4
    kish = 1 / (torch.softmax(result.log_weights, 1) ** 2).sum(1)  # (4,)
    se = result.run_standard_errors()
    w = torch.softmax(result.log_weights, 1)
    ref = ((w[..., None] ** 2) * (result.samples - result.run_means()[:, None]) ** 2).sum(1).sqrt()
    torch.testing.assert_close(se, ref)
    assert bool((se > 0.5 * result.std() / kish.sqrt()[:, None]).all())


def test_quickstart_arviz_means_match_the_exact_posterior():
    """The README quick start's AFDPS run (4 runs of 512 particles, 100 steps): ArviZ's summary means lie
    within 4 of ArviZ's own Monte-Carlo standard errors of the exact posterior means (measured: at most
    2.0), and within its resampling error of the weighted mean."""
    import operators as ops
    import posterior as post

    prior = post.priors.GaussianMixture.grid(8, seed=0)
    A = ops.Matrix(torch.randn(1, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    noise = ops.GaussianNoise(sigma=0.5)
    y = noise.sample(A(prior.sample(1, seed=1)), torch.Generator().manual_seed(2))[0]
    problem = post.InverseProblem(A, noise, y)
    smc = post.samplers.AFDPS(steps=100).sample(problem, prior, num_samples=512, chains=4, seed=0, progress=False)
    table = azs.summary(smc.to_arviz(), var_names=["x"], round_to="none")
    exact = prior.posterior(problem).mean().numpy()
    assert np.abs((table["mean"].to_numpy() - exact) / table["mcse_mean"].to_numpy()).max() < 4
    assert np.abs(table["mean"].to_numpy() - smc.mean().numpy()).max() < table["mcse_mean"].to_numpy().max()
    assert smc.verdict.ok, smc.verdict
