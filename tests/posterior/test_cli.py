"""The command line: a run file end to end, errors that name the field, benchmark dispatch."""

import pytest
import torch

from posterior import cli

pytest.importorskip("sklearn")  # held-out digits

VALID = """
[prior]
name = "digits"

[operator]
type = "inpainting"
top = 0
left = 0
height = 8
width = 16

[noise]
sigma = 0.05

[truth]
dataset = "digits"
index = 2

[sampler]
name = "DPS"
steps = 3

[run]
num_samples = 2
chains = 2
"""


def write(tmp_path, text):
    path = tmp_path / "job.toml"
    path.write_text(text)
    return path


def test_run_file_writes_a_report(tmp_path):
    path = write(tmp_path, VALID)
    cli.main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"])
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"report.md", "samples.safetensors", "summary.png", "summary.csv", "draws.png"} <= names
    assert "DPS" in (tmp_path / "out" / "report.md").read_text()


def test_run_file_checkpoints_and_resumes(tmp_path, capsys):
    """A run with checkpoints, then --resume from its last checkpoint: the same samples."""
    from posterior.results import PosteriorSamples

    path = write(tmp_path, VALID.replace("steps = 3", "steps = 6") + "checkpoint_every = 4\nmax_batch = 3\n")
    out = tmp_path / "out"
    cli.main(["run", str(path), "--out", str(out), "--no-progress"])
    first = PosteriorSamples.load(out / "samples.safetensors")
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 4
    cli.main(["run", str(path), "--out", str(out), "--no-progress", "--resume"])
    assert (PosteriorSamples.load(out / "samples.safetensors").samples == first.samples).all()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        cli.main(["run", str(path), "--out", str(tmp_path / "elsewhere"), "--no-progress", "--resume"])
    assert exit.value.code == 2 and "no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("chains = 2", "chains = 2\nmax_batch = -1", "run.max_batch"),
        ("chains = 2", "chains = 2\ncheckpoint_every = -1", "run.checkpoint_every"),
        ("steps = 3", "stepz = 3", "sampler.stepz"),
        ('name = "DPS"', 'name = "DSP"', "sampler.name"),
        ("sigma = 0.05", "sigma = -1.0", "noise.sigma"),
        ("sigma = 0.05", 'sigma = "high"', "noise.sigma"),
        ('type = "inpainting"', 'type = "inpaint"', "operator.type"),
        ("width = 16", "width = 16\nfactor = 2", "operator"),
        ("index = 2", "index = 5000", "truth.index"),
        ('name = "digits"\n', 'name = "digitz"\n', "prior.name"),
        ("[run]", "[runs]", "runs"),
    ],
)
def test_config_errors_name_the_field(tmp_path, old, new, field):
    path = write(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(cli.ConfigError, match=field.replace(".", r"\.")):
        cli.load_config(path)


def test_shape_mismatch_names_the_operator(tmp_path, capsys):
    text = VALID.replace(
        'type = "inpainting"\ntop = 0\nleft = 0\nheight = 8\nwidth = 16', 'type = "downsample"\nfactor = 3'
    )
    with pytest.raises(cli.ConfigError, match="operator"):
        cli.load_config(write(tmp_path, text))
    with pytest.raises(SystemExit) as exit:
        cli.main(["run", str(write(tmp_path, text))])
    assert exit.value.code == 2 and "operator" in capsys.readouterr().err


def test_benchmark_dispatch(tmp_path, capsys):
    with pytest.raises(SystemExit):  # a script with dataclasses loads, and its own --help answers
        cli.main(["benchmark", "gmm", "--help"])
    assert "usage" in capsys.readouterr().out
    cli.main(
        [
            "benchmark",
            "calibration",
            "exact",
            "--problems",
            "20",
            "--draws",
            "9",
            "--out",
            str(tmp_path / "c.json"),
        ]
    )
    assert (tmp_path / "c.json").exists()


def test_smc_run_reports_weighted_summary_and_one_verdict(tmp_path, capsys):
    """An SMC job: summary.csv is the weighted table (no R-hat across independent runs), its agreement
    column gives the same answer as the printed verdict line, which also opens report.md."""
    import numpy as np
    import pandas as pd
    from scipy.stats import chi2

    from posterior.results import PosteriorSamples

    job = VALID.replace('name = "DPS"', 'name = "AFDPS"').replace("num_samples = 2", "num_samples = 8")
    out = tmp_path / "out"
    cli.main(["run", str(write(tmp_path, job)), "--out", str(out), "--no-progress"])
    line = capsys.readouterr().out.splitlines()[0]
    table = pd.read_csv(out / "summary.csv", index_col=0)
    assert "r_hat" not in table.columns and {"agreement", "mcse_mean", "lower", "upper"} <= set(table.columns)
    result = PosteriorSamples.load(out / "samples.safetensors")
    assert line == result.verdict.line and result.verdict.line in (out / "report.md").read_text()
    pvalue = chi2.sf(table["agreement"].to_numpy() ** 2 * (result.chains - 1), result.chains - 1) * len(table)
    assert ("disagree" in " ".join(result.verdict.problems)) == bool(np.min(pvalue) < 1e-3)
    np.testing.assert_allclose(
        table["mean"].to_numpy(), result.mean().reshape(-1).numpy(), rtol=1e-6, atol=1e-9
    )
