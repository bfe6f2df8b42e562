"""The run report of an image problem, as ``posterior demo`` writes it: measurement panel, numbers,
configuration, links, one interval level."""

import re

import pandas as pd
import pytest
import torch

import operators as ops
import posterior as post
from posterior import plots
from posterior.cli import _held_out, solve


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    """The demo's box inpainting of a held-out digit, by AFDPS at 4 steps with 2 runs of 8 particles."""
    prior = post.priors.pretrained("digits")
    config = {
        "prior": prior,
        "prior_name": "digits",
        "operator": ops.Inpainting.box(prior.event_shape, 0, 0, 8, 16),
        "noise": ops.GaussianNoise(0.05),
        "truth": _held_out("digits", 3, 16),
        "sampler": post.samplers.AFDPS(steps=4),
        "num_samples": 8,
        "chains": 2,
    }
    path = solve(config, seed=7, device="cpu", progress=False, directory=tmp_path_factory.mktemp("afdps"))
    return path, config


def test_report_records_the_configuration_and_links_every_file(demo_report):
    path, _ = demo_report
    text = path.read_text()
    assert text.startswith("# AFDPS: Inpainting of a 1x16x16 image, GaussianNoise(sigma=0.05), digits prior")
    for line in (
        "- operator: `Inpainting(in_shape=(1, 16, 16), out_shape=(1, 16, 16))`; observes 128 of 256 pixels",
        "- noise: `GaussianNoise(sigma=0.05)`",
        "- prior: digits",
        "- seed: 7",
        f"- versions: posterior {post.__version__}, torch {torch.__version__}",
    ):
        assert line in text.splitlines(), line
    assert "settings `steps=4, " in text
    written = {p.name for p in path.parent.iterdir()} - {"report.md"}
    assert written == {"samples.safetensors", "summary.csv", "summary.png", "draws.png", "smc_ess.png"}
    for name in written:
        assert f"]({name})" in text, name
    levels = set(re.findall(r"(\d+)% interval", text))
    assert levels == {"90"}, levels


def test_report_numbers_agree_with_the_files(demo_report):
    """Coverage counted from summary.csv's own interval bounds: fails if the table and the report
    used different levels or the count were wrong."""
    path, config = demo_report
    text = path.read_text()
    truth = config["truth"].double().reshape(-1).numpy()
    table = pd.read_csv(path.parent / "summary.csv", index_col=0)
    covered = int(((table["lower"] <= truth) & (truth <= table["upper"])).sum())
    assert f"holds the truth at {covered} of 256 pixels ({100 * covered / 256:.1f}%)" in text
    result = post.PosteriorSamples.load(path.parent / "samples.safetensors")
    psnr = post.metrics.psnr(
        result.mean(), config["truth"], float(config["truth"].max() - config["truth"].min())
    )
    assert f"PSNR {psnr:.2f} dB, SSIM " in text
    assert f"{result.nfe} network evaluations (NFE)" in text


def test_summary_figure_shows_the_measurement_on_the_shared_scale(demo_report):
    path, config = demo_report
    assert (path.parent / "summary.png").read_bytes().startswith(b"\x89PNG")
    result = post.PosteriorSamples.load(path.parent / "samples.safetensors")
    y = config["operator"](config["truth"][None])[0]
    problem = post.InverseProblem(config["operator"], config["noise"], y)
    fig = plots.summary_maps(result, config["truth"], problem=problem)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:3] == ["measurement y (blue: hidden)", "truth", "posterior mean"]
    images = [ax.images[0] for ax in fig.axes[:3]]
    assert len({image.get_clim() for image in images}) == 1  # one grey scale
    hidden = images[0].get_array().mask  # the unobserved upper half, drawn in the "bad" colour
    assert hidden[:8].all() and not hidden[8:].any()
    assert "PSNR" in fig.get_suptitle() and "90% interval covers" in fig.get_suptitle()
    assert len(fig.axes) == 6 + 6  # six panels, each with its colour bar
    assert fig._repr_png_().startswith(b"\x89PNG")


def test_measurement_views():
    """Blur: y itself; a linear map to a vector: the adjoint A^T y as an image; MRI: log |k-space|."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 8, 8, generator=gen, dtype=torch.float64)
    blur = ops.Blur.gaussian((1, 8, 8), std=1.0)
    view, title = plots.measurement_view(post.InverseProblem(blur, ops.GaussianNoise(0.1), blur(x)[0]))
    assert title == "measurement y" and torch.equal(view, blur(x)[0])
    M = torch.randn(5, 64, generator=gen, dtype=torch.float64)
    A = ops.Matrix(M, in_shape=(1, 8, 8))
    view, title = plots.measurement_view(post.InverseProblem(A, ops.GaussianNoise(0.1), A(x)[0]))
    assert title.startswith("A^T y") and torch.allclose(view.reshape(-1), M.T @ A(x)[0])
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:, :3] = True
    mri = ops.MRI(mask)
    view, title = plots.measurement_view(post.InverseProblem(mri, ops.GaussianNoise(0.1), mri(x)[0]))
    assert view.shape == (8, 8) and "k-space" in title
    assert plots.summary_maps(post.PosteriorSamples(x[None].repeat(2, 3, 1, 1, 1)), x[0])._repr_png_()


def test_progress_bar_is_one_final_line_with_its_label(capsys):
    prior = post.priors.GaussianMixture.grid(2, seed=0)
    problem = post.InverseProblem(
        ops.Identity((2,)), ops.GaussianNoise(0.5), torch.zeros(2, dtype=torch.float64)
    )
    post.samplers.AFDPS(steps=5).sample(problem, prior, 4, seed=0, progress="AFDPS (1 of 2)")
    err = capsys.readouterr().err
    assert err.endswith("\n") and "AFDPS (1 of 2): 100%" in err.splitlines()[-1]  # kept (leave=True)
    post.samplers.AFDPS(steps=5).sample(problem, prior, 4, seed=0, progress=False)
    assert capsys.readouterr().err == ""
