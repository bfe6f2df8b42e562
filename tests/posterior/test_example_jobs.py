"""The example jobs of ``examples/jobs/`` run end to end through ``posterior run``, at small settings:
their inputs written by ``make_inputs.py`` into a copy of the folder, the sampler's ``steps`` and the
run's ``num_samples`` and ``chains`` cut down in the copied job files. Each writes its report; the CT
report compares the posterior mean with filtered back-projection on PSNR."""

import importlib.util
import re
import shutil
from pathlib import Path

import pytest
import torch

import operators as ops
import posterior as post
from posterior import cli, plots

EXAMPLES = Path(__file__).parents[2] / "examples" / "jobs"
JOBS = sorted(path.stem for path in EXAMPLES.glob("*.toml"))
SMALL = {"steps": 4, "num_samples": 4, "chains": 2}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A copy of examples/jobs with freshly written inputs and every job at the SMALL settings."""
    folder = tmp_path_factory.mktemp("jobs")
    for path in EXAMPLES.iterdir():
        if path.suffix in (".toml", ".py"):
            shutil.copy(path, folder / path.name)
    spec = importlib.util.spec_from_file_location("make_inputs", folder / "make_inputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.write(folder)
    assert written and all(path.is_file() and path.stat().st_size < 100_000 for path in written)
    for job in folder.glob("*.toml"):
        text = job.read_text()
        for key, value in SMALL.items():
            text, found = re.subn(rf"^{key} = \d+", f"{key} = {value}", text, flags=re.MULTILINE)
            assert found == 1, f"{job.name}: no line '{key} = N' to cut down"
        job.write_text(text)
    return folder


def test_the_examples_are_small_and_every_job_has_its_inputs():
    assert set(JOBS) == {"ct", "mri", "deblur", "detector"}
    for path in EXAMPLES.iterdir():
        assert path.stat().st_size < 100_000, path


@pytest.mark.parametrize("name", JOBS)
def test_example_job_writes_its_report(name, folder, tmp_path, recwarn):
    out = tmp_path / name
    cli.main(["run", str(folder / f"{name}.toml"), "--out", str(out), "--no-progress"])
    text = (out / "report.md").read_text()
    for file in ("summary.png", "draws.png", "samples.safetensors", "summary.csv", "job.toml"):
        assert (out / file).is_file(), file
    assert re.search(r"- posterior mean: PSNR \d+\.\d\d dB", text)  # every example has its truth
    if name == "ct":
        assert re.search(r"- FBP \(the classical reconstruction\): PSNR \d+\.\d\d dB", text)
    if name == "mri":
        assert "- pseudo-inverse (the classical reconstruction): PSNR" in text


def test_baseline_is_the_operators_classical_reconstruction():
    """FBP for CT, the pseudo-inverse for MRI, none for a blur (the report then shows no baseline)."""
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    radon = ops.Radon([0.0, 45.0, 90.0, 135.0], 8)
    image, name = plots.baseline(post.InverseProblem(radon, ops.GaussianNoise(0.1), radon(x)[0]))
    assert name == "FBP" and torch.equal(image, radon.fbp(radon(x))[0])
    mri = ops.MRI(ops.MRI.cartesian_mask((8, 8), 2.0, 0.25, 0))
    image, name = plots.baseline(post.InverseProblem(mri, ops.GaussianNoise(0.1), mri(x)[0]))
    assert name == "pseudo-inverse" and torch.equal(image, mri.pinv(mri(x))[0])
    blur = ops.Blur.gaussian((1, 8, 8), std=1.0)
    assert plots.baseline(post.InverseProblem(blur, ops.GaussianNoise(0.1), blur(x)[0])) is None
    result = post.PosteriorSamples(x[None].repeat(2, 3, 1, 1, 1))
    found = plots.scores(result, x[0], reference=radon.fbp(radon(x))[0])
    assert found["psnr"] == float("inf") or found["psnr"] > found["baseline_psnr"]
    fig = plots.summary_maps(
        result, x[0], problem=post.InverseProblem(radon, ops.GaussianNoise(0.1), radon(x)[0])
    )
    assert "FBP" in [ax.get_title() for ax in fig.axes] and "FBP PSNR" in fig.get_suptitle()
