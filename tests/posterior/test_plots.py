"""Figures and the run report: the right files for each kind of result, readable back."""

import pytest
import torch

import operators as ops
import posterior as post
from posterior import plots
from posterior.priors import GaussianMixture


def image_problem():
    prior = GaussianMixture.random(16, num_components=3, seed=0, event_shape=(1, 4, 4))
    A = ops.Inpainting.box((1, 4, 4), 0, 0, 2, 4)
    y = ops.GaussianNoise(0.1).sample(A(prior.sample(1, seed=1)), torch.Generator().manual_seed(0))[0]
    return prior, post.InverseProblem(A, ops.GaussianNoise(0.1), y)


def test_report_of_an_smc_run(tmp_path):
    prior, problem = image_problem()
    result = post.samplers.AFDPS(steps=10).sample(problem, prior, 8, chains=2, seed=0, progress=False)
    path = plots.write_report(result, tmp_path / "run", truth=prior.sample(1, seed=1)[0])
    names = {p.name for p in path.parent.iterdir()}
    assert names == {
        "report.md",
        "samples.safetensors",
        "summary.csv",
        "draws.png",
        "summary.png",
        "smc_ess.png",
    }
    text = path.read_text()
    assert "AFDPS" in text and "final ESS/N" in text and "![smc_ess](smc_ess.png)" in text
    loaded = post.PosteriorSamples.load(path.parent / "samples.safetensors")
    assert torch.equal(loaded.samples, result.samples)


def test_report_of_markov_chains_has_convergence_maps(tmp_path):
    draws = torch.randn(4, 50, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    draws[0] += 2.0  # one chain elsewhere: the report carries the R-hat warning
    path = plots.write_report(post.PosteriorSamples(draws, sampler="toy", kind="mcmc"), tmp_path)
    assert (tmp_path / "convergence.png").stat().st_size > 1000
    assert "R-hat up to" in path.read_text()


def test_calibration_figures_and_vector_events(tmp_path):
    prior = GaussianMixture.grid(2, seed=0)
    A = ops.Matrix(torch.tensor([[0.6, 0.8]], dtype=torch.float64))
    report = post.diagnostics.calibrate(
        post.samplers.ExactPosterior(), prior, A, ops.GaussianNoise(0.5), n_problems=50
    )
    path = plots.write_report(report.result, tmp_path, calibration=report)
    assert {"ranks.png", "coverage.png", "summary.png"} <= {p.name for p in tmp_path.iterdir()}
    assert "HPD regions" in path.read_text()
    assert len(plots.rank_plots(report, coordinates=2).axes) >= 5
    with pytest.raises(ValueError, match="ESS trace"):
        plots.ess_trace(report.result)


def test_every_figure_renders_inline_and_saves(tmp_path):
    """Jupyter shows a figure through ``_repr_png_`` (or IPython's formatters): PNG bytes, not text."""
    prior = GaussianMixture.grid(2, seed=0)
    A = ops.Matrix(torch.tensor([[0.6, 0.8]], dtype=torch.float64))
    report = post.diagnostics.calibrate(
        post.samplers.ExactPosterior(), prior, A, ops.GaussianNoise(0.5), n_problems=20
    )
    image_prior, problem = image_problem()
    smc = post.samplers.AFDPS(steps=4).sample(problem, image_prior, 4, chains=2, seed=0, progress=False)
    draws = torch.randn(2, 400, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    chains = post.PosteriorSamples(draws, sampler="toy", kind="mcmc")
    figures = {
        "sample_grid": plots.sample_grid(smc, n=4),
        "summary_maps": plots.summary_maps(smc, truth=image_prior.sample(1, seed=1)[0]),
        "convergence_maps": plots.convergence_maps(post.diagnostics.convergence(chains)),
        "ess_trace": plots.ess_trace(smc),
        "rank_plots": plots.rank_plots(report, coordinates=2),
        "coverage_curve": plots.coverage_curve(report),
    }
    for name, fig in figures.items():
        assert isinstance(fig, plots.Figure), name
        assert fig._repr_png_().startswith(b"\x89PNG"), name
        fig.savefig(tmp_path / f"{name}.svg")
        assert (tmp_path / f"{name}.svg").read_text().lstrip().startswith("<?xml"), name
    formatters = pytest.importorskip("IPython.core.formatters")
    bundle, _ = formatters.DisplayFormatter().format(figures["summary_maps"])
    assert bundle["image/png"].startswith(b"\x89PNG")
