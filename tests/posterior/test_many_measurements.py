"""`posterior run` on many measurements: `measurement.files` (a glob) or a stacked `measurement.file`,
one run report per measurement, one summary, `--workers` through `run_many`, and the bad cases."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from posterior import cli
from posterior.results import PosteriorSamples

JOB = """
[prior]
name = "digits"

[operator]
type = "identity"

[noise]
sigma = 0.05

[measurement]
{measurement}

[truth]
files = "truths/*.npy"

[sampler]
name = "DPS"
steps = 3

[run]
num_samples = 2
chains = 2
"""


def make_job(
    folder: Path, count: int, measurement: str = 'files = "scans/*.npy"', truths: bool = True
) -> Path:
    """``count`` measurements y = x + noise of random images x (1, 16, 16) in scans/, their truths in truths/."""
    rng = np.random.default_rng(0)
    (folder / "scans").mkdir(parents=True)
    (folder / "truths").mkdir()
    for k in range(count):
        x = rng.uniform(0.0, 1.0, (1, 16, 16))
        np.save(folder / "truths" / f"scan{k}.npy", x)
        np.save(folder / "scans" / f"scan{k}.npy", x + 0.05 * rng.standard_normal(x.shape))
    text = JOB.format(measurement=measurement)
    if not truths:
        text = text.replace('[truth]\nfiles = "truths/*.npy"\n', "")
    path = folder / "job.toml"
    path.write_text(text)
    return path


def samples(folder: Path) -> torch.Tensor:
    return PosteriorSamples.load(folder / "samples.safetensors").samples


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    """A job of 8 measurement files, run with one worker."""
    folder = tmp_path_factory.mktemp("eight")
    cli.main(["run", str(make_job(folder, 8)), "--out", str(folder / "out"), "--no-progress"])
    return folder / "out"


def test_eight_files_give_eight_reports_and_one_summary(eight):
    names = [f"scan{k}" for k in range(8)]
    assert sorted(p.name for p in eight.iterdir() if p.is_dir()) == names
    for name in names:
        assert {"report.md", "samples.safetensors", "summary.png"} <= {
            p.name for p in (eight / name).iterdir()
        }
    with open(eight / "summary.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["measurement"] for row in rows] == names
    assert [int(row["seed"]) for row in rows] == list(range(8))  # the job's seed (0) + the index
    for row in rows:
        assert row["verdict"] in ("ok", "failed")
        assert np.isfinite(float(row["psnr_db"])) and float(row["wall_time_s"]) >= 0 and int(row["nfe"]) == 3
    table = (eight / "summary.md").read_text()
    assert table.count("/report.md)") == 8 and "mean PSNR" in table
    assert (eight / "job.toml").is_file()
    # every measurement its own draws
    assert not torch.equal(samples(eight / "scan0"), samples(eight / "scan1"))


def test_two_workers_give_the_draws_of_one(eight, tmp_path):
    """--workers 2 (spawned processes) on the first 3 files: measurement k has seed 0 + k whatever
    runs it, so its draws equal those of the one-worker run of the 8, bit for bit."""
    path = make_job(tmp_path, 3)
    cli.main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress", "--workers", "2"])
    for k in range(3):
        assert torch.equal(samples(tmp_path / "out" / f"scan{k}"), samples(eight / f"scan{k}"))


def test_a_stacked_file_runs_one_problem_per_row(eight, tmp_path):
    """`file` with `stacked = true`: its rows are the measurements, in folders y_0, y_1; the same
    draws as the same measurements given as files."""
    make_job(tmp_path, 2, 'file = "y.npy"\nstacked = true', truths=False)
    np.save(tmp_path / "y.npy", np.stack([np.load(tmp_path / "scans" / f"scan{k}.npy") for k in range(2)]))
    cli.main(["run", str(tmp_path / "job.toml"), "--out", str(tmp_path / "out"), "--no-progress"])
    for k in range(2):
        assert torch.equal(samples(tmp_path / "out" / f"y_{k}"), samples(eight / f"scan{k}"))
    with open(tmp_path / "out" / "summary.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["measurement"] for row in rows] == ["y_0", "y_1"] and rows[0]["psnr_db"] == ""  # no truth


def bad_shape(folder):
    path = make_job(folder, 2)
    np.save(folder / "scans" / "scan1.npy", np.zeros((1, 8, 8)))
    return path


def stacked_of_wrong_shape(folder):
    path = make_job(folder, 1, 'file = "y.npy"\nstacked = true', truths=False)
    np.save(folder / "y.npy", np.zeros((1, 16, 16)))
    return path


BAD = {
    "a glob matching nothing": (lambda t: make_job(t, 2, 'files = "scans/*.png"'), "measurement.files: "),
    "a file of the wrong shape": (
        bad_shape,
        "measurement.files: scans/scan1.npy has shape (1, 8, 8), expected the operator's output shape (1, 16, 16)",
    ),
    "files and file": (
        lambda t: make_job(t, 2, 'files = "scans/*.npy"\nfile = "scans/scan0.npy"'),
        "measurement.files: give either",
    ),
    "a stacked file of the wrong shape": (
        stacked_of_wrong_shape,
        "measurement.file: y.npy has shape (1, 16, 16)",
    ),
    "stacked files": (
        lambda t: make_job(t, 2, 'files = "scans/*.npy"\nstacked = true'),
        "measurement.stacked",
    ),
    "stacked not a bool": (lambda t: make_job(t, 2, 'file = "y.npy"\nstacked = 1'), "measurement.stacked"),
    "fewer truths": (
        lambda t: (make_job(t, 2), (t / "truths" / "scan1.npy").unlink())[0],
        "truth.files: ",
    ),
    "truths named otherwise": (  # sorted positions would pair scan10 with truth09: refused, not guessed
        lambda t: (make_job(t, 2), (t / "truths" / "scan1.npy").rename(t / "truths" / "truth1.npy"))[0],
        "truth.files: no truth of the same file name for ['scans/scan1.npy']",
    ),
    "truth files for one measurement": (
        lambda t: make_job(t, 2, 'file = "scans/scan0.npy"'),
        "truth.files: used with measurement.files",
    ),
    "checkpoints": (
        lambda t: (p := make_job(t, 2), p.write_text(p.read_text() + "checkpoint_every = 2\n"))[0],
        "run.checkpoint_every",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_jobs_give_one_line_naming_the_field(case, tmp_path, capsys):
    build, expected = BAD[case]
    path = build(tmp_path)
    with pytest.raises(SystemExit) as exit:
        cli.main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "out").exists()


def test_workers_on_a_job_of_one_measurement_is_refused(tmp_path, capsys):
    path = make_job(tmp_path, 1, 'file = "scans/scan0.npy"', truths=False)
    with pytest.raises(SystemExit) as exit:
        cli.main(["run", str(path), "--out", str(tmp_path / "out"), "--workers", "2"])
    assert exit.value.code == 2 and "--workers 2" in capsys.readouterr().err
