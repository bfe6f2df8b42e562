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
    assert "log_weight" in tree.sample_stats and "log_likelihood" in tree.sample_stats
    assert tree.attrs["nfe"] == 50
    summary = azs.summary(tree, var_names=["x"])
    assert len(summary) == int(np.prod(event))
    ess = azs.ess(tree, var_names=["x"], method="bulk")["x"].values
    rhat = azs.rhat(tree, var_names=["x"])["x"].values
    # independent normal draws: ESS near 800 and R-hat near 1
    assert ess.min() > 400 and np.abs(rhat - 1).max() < 0.02


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
